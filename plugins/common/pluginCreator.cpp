/*
 * The creators' log lines (pluginCreator.h).
 */
#include "pluginCreator.h"

#include "pluginLog.h"

#include <exception>

namespace mla
{
namespace plugin
{
using Severity = nvinfer1::ILogger::Severity;

void logCreateRefused(char const* op, char const* layer, std::string const& why) noexcept
{
    try
    {
        log(Severity::kERROR,
            std::string(op) + ": cannot create plugin" + (layer != nullptr ? std::string(" ") + layer : "") + ": " + why);
    }
    catch (...)
    {
        // Logging must never throw across the TensorRT boundary.
    }
}

void logCreated(char const* op, std::string const& description, char const* layer, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        log(Severity::kINFO,
            std::string(op) + ":" + description + " (" + (phase == nvinfer1::TensorRTPhase::kBUILD ? "build" : "runtime")
                + " phase, layer " + (layer != nullptr ? layer : "?") + ")");
    }
    catch (...)
    {
        // as above
    }
}

void logCreateException(char const* op) noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        log(Severity::kERROR, std::string(op) + ": cannot create plugin: " + e.what());
    }
    catch (...)
    {
        log(Severity::kERROR, std::string(op) + ": cannot create plugin: unknown exception");
    }
}

} // namespace plugin
} // namespace mla
