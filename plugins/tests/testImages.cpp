/*
 * Which kernel image each GPU gets (mla::kernels::imageChoice), and that Module::load on the fake
 * driver loads that kind of image: a cubin (ELF) or NUL-terminated PTX text for the chosen arch.
 */
#include "fakeCuda.h"
#include "mlaKernels.h"
#include "testUtil.h"

#include <cstdio>
#include <cstring>
#include <string>

using namespace mla;

namespace
{
struct Expected
{
    int32_t device;   //!< compute capability of the device, major*10+minor
    int32_t image;    //!< arch of the image it gets; 0: none
    bool ptx;
};

// Cubins for sm_80/86/89/90/100/120 (plan.AOT_ARCHS), PTX of sm_80 and sm_120.
Expected const kExpected[] = {
    {75, 0, false},   // Turing: older than every image
    {80, 80, false},  // A100
    {86, 86, false},  // RTX 30xx, A10
    {87, 86, false},  // Orin: sm_86's cubin, binary compatible within 8.x
    {89, 89, false},  // L4, L40S, RTX 40xx
    {90, 90, false},  // H100, H200
    {100, 100, false}, // B200
    {103, 80, true},  // B300: no cubin runs there (sm_100a is arch-specific); the sm_80 PTX is JIT-compiled
    {110, 80, true},  // Thor
    {120, 120, false}, // RTX 50xx
    {121, 120, true}, // GB10: the sm_120 PTX
};

void testChoice()
{
    for (Expected const& e : kExpected)
    {
        std::string const what = "sm_" + std::to_string(e.device);
        int32_t arch = -1;
        bool ptx = false;
        bool const found = kernels::imageChoice(e.device, arch, ptx);
        std::printf("choice %d %s %s\n", e.device, found ? std::to_string(arch).c_str() : "none",
            found ? (ptx ? "ptx" : "cubin") : "-"); // compared with aot.image_choice by tests/test_plugin.py
        CHECK_MSG(found == (e.image != 0), what);
        if (found && e.image != 0)
        {
            CHECK_MSG(arch == e.image, what + ": image sm_" + std::to_string(arch));
            CHECK_MSG(ptx == e.ptx, what);
        }
    }
}

void testLoadedImage()
{
    for (Expected const& e : kExpected)
    {
        std::string const what = "sm_" + std::to_string(e.device);
        fake::reset();
        fake::setDevice(e.device, 132);
        kernels::Module module;
        CUresult const r = module.load();
        if (e.image == 0)
        {
            CHECK_MSG(r == CUDA_ERROR_NO_BINARY_FOR_GPU, what);
            CHECK_MSG(!module.loaded() && fake::liveModules() == 0, what);
            continue;
        }
        CHECK_MSG(r == CUDA_SUCCESS && module.loaded() && module.arch() == e.device, what);
        auto const loads = fake::eventsOf(fake::Kind::kModuleLoad);
        CHECK_MSG(!loads.empty(), what);
        for (fake::Event const& load : loads)
        {
            auto const* bytes = static_cast<char const*>(load.image);
            bool const elf = std::memcmp(bytes, "\x7f" "ELF", 4) == 0;
            CHECK_MSG(elf == !e.ptx, what);
            if (e.ptx)
            {
                std::string const target = ".target sm_" + std::to_string(e.image) + "\n";
                CHECK_MSG(std::strstr(bytes, target.c_str()) != nullptr, what + ": PTX without " + target);
            }
        }
        module.unload();
        CHECK_MSG(fake::liveModules() == 0, what);
    }
}
} // namespace

int main()
{
    testChoice();
    testLoadedImage();
    return testutil::finish("test_mla_images");
}
