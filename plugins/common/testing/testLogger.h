/*
 * Captures what the plugin logs (through mla::plugin::setLoggerFinder) and what it reports to an
 * error recorder, so tests can check the messages.
 */
#pragma once

#include "NvInferRuntime.h"

#include <atomic>
#include <string>
#include <vector>

namespace testutil
{

class CapturingLogger : public nvinfer1::ILogger, public nvinfer1::ILoggerFinder
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override
    {
        messages.emplace_back(severity, msg);
    }
    nvinfer1::ILogger* findLogger() override
    {
        return this;
    }
    //! True when a message at `severity` (or any, if kVERBOSE+1 is passed) contains `text`.
    bool contains(std::string const& text, Severity severity) const
    {
        for (auto const& m : messages)
        {
            if (m.first == severity && m.second.find(text) != std::string::npos)
            {
                return true;
            }
        }
        return false;
    }
    std::string last() const
    {
        return messages.empty() ? std::string() : messages.back().second;
    }
    std::vector<std::pair<Severity, std::string>> messages;
};

class CapturingRecorder : public nvinfer1::IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override
    {
        return static_cast<int32_t>(errors.size());
    }
    nvinfer1::ErrorCode getErrorCode(int32_t i) const noexcept override
    {
        return errors[i].first;
    }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override
    {
        return errors[i].second.c_str();
    }
    bool hasOverflowed() const noexcept override
    {
        return false;
    }
    void clear() noexcept override
    {
        errors.clear();
    }
    bool reportError(nvinfer1::ErrorCode code, ErrorDesc desc) noexcept override
    {
        errors.emplace_back(code, desc);
        return false;
    }
    RefCount incRefCount() noexcept override
    {
        return ++refs;
    }
    RefCount decRefCount() noexcept override
    {
        return --refs;
    }
    std::vector<std::pair<nvinfer1::ErrorCode, std::string>> errors;
    std::atomic<int32_t> refs{0};
};

} // namespace testutil
