/*
 * What the CPU tests of the plugins share beyond the CHECK harness (testUtil.h): dims from lists, shape
 * expressions TensorRT would hand getOutputShapes, the support matrix of supportsFormatCombination, a
 * resource context with an error recorder, and a test program's main (the library logging to a
 * CapturingLogger while the tests run).
 */
#pragma once

#include "NvInferRuntime.h"
#include "testLogger.h"

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <vector>

namespace testutil
{

//! Dims with these extents.
nvinfer1::Dims dims(std::vector<int64_t> const& extents);

//! The same rank and extents.
bool sameDims(nvinfer1::Dims const& a, nvinfer1::Dims const& b);

//! Every nvinfer1::DataType the support matrices try.
extern std::vector<nvinfer1::DataType> const kAllTypes;

//! Shape expressions of some input shapes, each extent a distinct marker (never evaluated), and an
//! expression builder that builds nothing: getOutputShapes may only pass the inputs' expressions on.
class ShapeExprs
{
public:
    explicit ShapeExprs(std::vector<nvinfer1::Dims> const& shapes);
    nvinfer1::DimsExprs const* data() const noexcept { return mExprs.data(); }
    nvinfer1::DimsExprs const& operator[](size_t i) const noexcept { return mExprs[i]; }
    nvinfer1::IExprBuilder& builder() noexcept { return mBuilder; }

private:
    struct Builder : nvinfer1::IExprBuilder
    {
    };
    std::vector<int> mMarkers;
    std::vector<nvinfer1::DimsExprs> mExprs;
    Builder mBuilder;
};

struct MatrixCounts
{
    int32_t checked{0};
    int32_t accepted{0};
};

//! Asks `build` about every type of kAllTypes at every position, linear and HWC8, the other positions holding
//! typesFor(t0) (linear) for every t0 of kAllTypes; CHECKs every answer against expected(pos, types, format).
MatrixCounts checkFormatMatrix(nvinfer1::IPluginV3OneBuild& build, int32_t nbInputs, int32_t nbOutputs,
    std::function<std::vector<nvinfer1::DataType>(nvinfer1::DataType t0)> const& typesFor,
    std::function<bool(int32_t pos, std::vector<nvinfer1::DataType> const& types, nvinfer1::TensorFormat)> const&
        expected);

//! A resource context whose error recorder is `recorder` (no allocator).
struct RecordingContext : nvinfer1::IPluginResourceContext
{
    explicit RecordingContext(nvinfer1::IErrorRecorder* r = nullptr)
        : recorder(r)
    {
    }
    nvinfer1::IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override { return recorder; }
    nvinfer1::IErrorRecorder* recorder;
};

//! The runtime capability of `plugin`.
nvinfer1::IPluginV3OneRuntime* runtimeOf(nvinfer1::IPluginV3* plugin);

//! Runs `tests` in order with the plugin library logging to `logger`, then prints "<name>: N passed, M failed";
//! returns the exit status (nonzero on a failure).
int runTests(char const* name, CapturingLogger& logger, std::initializer_list<std::function<void()>> tests);

} // namespace testutil
