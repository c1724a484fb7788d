/*
 * Logging and error reporting of the plugin library (see pluginLog.h).
 */
#include "pluginLog.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace mla
{
namespace plugin
{
namespace
{
std::mutex gMutex;
nvinfer1::ILoggerFinder* gFinder{nullptr};

char const* severityName(nvinfer1::ILogger::Severity severity)
{
    switch (severity)
    {
    case nvinfer1::ILogger::Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case nvinfer1::ILogger::Severity::kERROR: return "ERROR";
    case nvinfer1::ILogger::Severity::kWARNING: return "WARNING";
    case nvinfer1::ILogger::Severity::kINFO: return "INFO";
    case nvinfer1::ILogger::Severity::kVERBOSE: return "VERBOSE";
    }
    return "?";
}

bool verboseToStderr()
{
    char const* v = std::getenv("MLA_PLUGIN_VERBOSE");
    return v != nullptr && std::strcmp(v, "0") != 0 && v[0] != '\0';
}
} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    bool hasLogger = false;
    {
        std::lock_guard<std::mutex> lock(gMutex);
        gFinder = finder;
        hasLogger = finder != nullptr && finder->findLogger() != nullptr;
    }
    log(nvinfer1::ILogger::Severity::kVERBOSE,
        std::string("libmla_plugin: setLoggerFinder called, ") + (hasLogger ? "logger found" : "no logger"));
}

void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        nvinfer1::ILogger* logger{nullptr};
        {
            std::lock_guard<std::mutex> lock(gMutex);
            if (gFinder != nullptr)
            {
                logger = gFinder->findLogger();
            }
        }
        if (logger != nullptr)
        {
            logger->log(severity, message.c_str());
            return;
        }
        if (severity <= nvinfer1::ILogger::Severity::kWARNING || verboseToStderr())
        {
            std::fprintf(stderr, "[mla_plugin] %s: %s\n", severityName(severity), message.c_str());
        }
    }
    catch (...)
    {
        // Logging must never throw across the TensorRT boundary.
    }
}

void reportError(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, std::string const& message) noexcept
{
    log(nvinfer1::ILogger::Severity::kERROR, message);
    if (recorder != nullptr)
    {
        recorder->reportError(code, message.c_str());
    }
}

} // namespace plugin
} // namespace mla
