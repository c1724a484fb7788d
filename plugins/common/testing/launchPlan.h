/*
 * The launches an expectations file plans (written by tests/plugin_helpers.py from the Python plan), checked
 * against the launches the fake CUDA driver recorded (fakeCuda.h). One line per planned launch, in order:
 *
 *   launch name gx gy gz bx by bz sharedMem arg...
 *
 * arguments: p:<pointer> (a name the test resolves: PointerResolver), i:<int32>, f:<float32>. With
 * `wildcards`, name "*", block "0 0 0" and sharedMem "*" match anything (MlaAttention's plan does not fix
 * them); without, every field must match. Each test reads its own "case" lines (the call to plan for).
 */
#pragma once

#include "fakeCuda.h"

#include <cstdint>
#include <functional>
#include <istream>
#include <string>
#include <vector>

namespace testutil
{

//! sharedMem "*": any.
constexpr uint32_t kAnySharedMem = 0xFFFFFFFFu;

struct PlannedLaunch
{
    fake::Event event;             //!< name, grid, block, sharedMem
    std::vector<std::string> args; //!< the expected argument tokens, in order (may be none)
};

//! The address a "p:" token's name stands for in the call under test; false when any address matches.
using PointerResolver = std::function<bool(std::string const& name, uint64_t& address)>;

//! Reads the fields after "launch" of `line`, and registers the kernel's argument sizes (p: 8 bytes, i: and f:
//! 4) with the fake driver so that its launches record argument values.
PlannedLaunch readPlannedLaunch(std::istream& line);

//! Reads the expectations file `path` line by line: the fields after "case" of each case line to `onCase`, each
//! launch line after a case to `onLaunch`. False (after printing why) when the file cannot be read.
bool readPlanFile(char const* path, std::function<void(std::istream& fields)> const& onCase,
    std::function<void(PlannedLaunch launch)> const& onLaunch);

//! CHECKs the launches recorded for the call `what` against `plan`: their number, then each launch's kernel,
//! grid, block, shared memory and argument values.
void checkLaunches(std::vector<fake::Event> const& got, std::vector<PlannedLaunch> const& plan, std::string const& what,
    PointerResolver const& pointer, bool wildcards);

} // namespace testutil
