/*
 * Status: the result of every call of the C++ runtime (mlaRuntime.h, mlaNccl.h).
 */
#pragma once

#include <string>
#include <utility>

namespace mla
{
namespace runtime
{

//! Result of every call: ok, or a message saying what failed and what to do.
struct Status
{
    bool ok{true};
    std::string message;

    static Status success() { return {}; }
    static Status error(std::string text) { return {false, std::move(text)}; }
    explicit operator bool() const { return ok; }
};

} // namespace runtime
} // namespace mla
