/*
 * A minimal check harness for the plugin's C++ tests: CHECK records a failure with its location
 * and goes on; main() returns the number of failures (ctest treats nonzero as failure).
 */
#pragma once

#include <cstdio>
#include <string>

namespace testutil
{
struct Counts
{
    int passed{0};
    int failed{0};
};

inline Counts& counts()
{
    static Counts c;
    return c;
}

inline void check(bool ok, char const* expr, char const* file, int line, std::string const& note = {})
{
    if (ok)
    {
        ++counts().passed;
        return;
    }
    ++counts().failed;
    std::printf("FAILED %s:%d: %s%s%s\n", file, line, expr, note.empty() ? "" : " -- ", note.c_str());
}

//! Prints "<passed> passed, <failed> failed" and returns the exit status.
inline int finish(char const* name)
{
    std::printf("%s: %d passed, %d failed\n", name, counts().passed, counts().failed);
    return counts().failed == 0 ? 0 : 1;
}
} // namespace testutil

#define CHECK(expr) ::testutil::check(static_cast<bool>(expr), #expr, __FILE__, __LINE__)
#define CHECK_MSG(expr, note) ::testutil::check(static_cast<bool>(expr), #expr, __FILE__, __LINE__, (note))
