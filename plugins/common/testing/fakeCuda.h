/*
 * A recording stand-in for the CUDA driver, linked into the test programs instead of libcuda (the
 * shipped library resolves the real driver at run time, common/cudaDriver.cpp). It records module
 * loads, function look-ups, launches (kernel name, grid, block, shared memory, argument bytes),
 * copies and memsets, and can be told to fail a given entry point. Test code only.
 */
#pragma once

#include <cuda.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fake
{

enum class Kind
{
    kModuleLoad,
    kGetFunction,
    kModuleUnload,
    kLaunch,
    kMemcpy,
    kMemset,
    kFuncSetAttribute,
};

struct Event
{
    explicit Event(Kind k = Kind::kLaunch)
        : kind(k)
    {
    }
    Kind kind;
    std::string name;          //!< kernel name (launch, get-function)
    uint32_t grid[3]{};        //!< launch
    uint32_t block[3]{};       //!< launch
    uint32_t sharedMem{0};     //!< launch
    CUstream stream{nullptr};  //!< launch, memcpy, memset
    std::vector<std::vector<uint8_t>> args; //!< launch: bytes of each argument (per registered signature)
    uint64_t dst{0};           //!< memcpy/memset destination
    uint64_t src{0};           //!< memcpy source
    uint64_t bytes{0};         //!< memcpy/memset bytes
    void const* image{nullptr}; //!< module load
    CUmodule module{nullptr};   //!< module load/unload, get-function
};

//! All driver calls recorded since the last reset().
std::vector<Event> const& events();
//! Clears events, failures and live modules; device arch/SMs return to 90/132.
void reset();
//! Events of one kind, in order.
std::vector<Event> eventsOf(Kind kind);
//! The events recorded after the first `first` (events().size() taken before a call: the call's events).
std::vector<Event> eventsSince(size_t first);

//! The device the fake reports (compute capability major*10+minor, and SM count).
void setDevice(int32_t arch, int32_t numSms);
//! Makes the `nth` (0-based, counting from now) call of `entryPoint` (e.g. "cuModuleLoadData") return `result`.
void failCall(std::string const& entryPoint, CUresult result, int32_t nth = 0);
//! Makes every call of cuCtxGetDevice fail (no current context), until reset().
void setNoContext(bool noContext);

//! Argument sizes in bytes of kernel `name`, in order, so launches can record argument values.
void setSignature(std::string const& name, std::vector<uint32_t> const& argSizes);

//! Modules loaded and not yet unloaded.
int32_t liveModules();

//! Reads a recorded argument as T (its byte size must match).
template <typename T>
T argAs(Event const& e, size_t index)
{
    T value{};
    if (index < e.args.size() && e.args[index].size() == sizeof(T))
    {
        __builtin_memcpy(&value, e.args[index].data(), sizeof(T));
    }
    return value;
}

} // namespace fake
