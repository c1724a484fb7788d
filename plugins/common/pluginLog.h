/*
 * Logging and error reporting of the plugin library (MlaAttention, DeepseekMoE, BlockFp8MatMul).
 *
 * Messages go to the logger TensorRT hands the library through setLoggerFinder (the library's
 * entry point); errors also go to the execution context's error recorder when the plugin has one.
 * Without a logger (a test program, a loader that does not call setLoggerFinder), errors and
 * warnings go to stderr, and info/verbose messages too when MLA_PLUGIN_VERBOSE=1 is set.
 */
#pragma once

#include "NvInferRuntime.h"

#include <string>

namespace mla
{
namespace plugin
{

//! Remembers `finder` (nullptr clears it). Thread-safe.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Logs `message` at `severity`. Never throws.
void log(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

//! Logs an error and reports it to `recorder` (when not null) with `code`. Never throws.
void reportError(nvinfer1::IErrorRecorder* recorder, nvinfer1::ErrorCode code, std::string const& message) noexcept;

} // namespace plugin
} // namespace mla
