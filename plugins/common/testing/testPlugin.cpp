/*
 * What the plugins' CPU tests share (testPlugin.h).
 */
#include "testPlugin.h"

#include "pluginLog.h"
#include "testUtil.h"

#include <algorithm>
#include <string>

namespace testutil
{
using nvinfer1::DataType;

nvinfer1::Dims dims(std::vector<int64_t> const& extents)
{
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(extents.size());
    for (size_t i = 0; i < extents.size(); ++i)
    {
        d.d[i] = extents[i];
    }
    return d;
}

bool sameDims(nvinfer1::Dims const& a, nvinfer1::Dims const& b)
{
    return a.nbDims == b.nbDims && std::equal(a.d, a.d + a.nbDims, b.d);
}

std::vector<DataType> const kAllTypes = {DataType::kFLOAT, DataType::kHALF, DataType::kINT8, DataType::kINT32,
    DataType::kBOOL, DataType::kUINT8, DataType::kFP8, DataType::kBF16, DataType::kINT64};

ShapeExprs::ShapeExprs(std::vector<nvinfer1::Dims> const& shapes)
    : mMarkers(shapes.size() * nvinfer1::Dims::MAX_DIMS)
    , mExprs(shapes.size())
{
    for (size_t i = 0; i < shapes.size(); ++i)
    {
        mExprs[i].nbDims = shapes[i].nbDims;
        for (int32_t a = 0; a < shapes[i].nbDims; ++a)
        {
            int const* marker = &mMarkers[i * nvinfer1::Dims::MAX_DIMS + static_cast<size_t>(a)];
            mExprs[i].d[a] = reinterpret_cast<nvinfer1::IDimensionExpr const*>(marker);
        }
    }
}

MatrixCounts checkFormatMatrix(nvinfer1::IPluginV3OneBuild& build, int32_t nbInputs, int32_t nbOutputs,
    std::function<std::vector<DataType>(DataType t0)> const& typesFor,
    std::function<bool(int32_t pos, std::vector<DataType> const& types, nvinfer1::TensorFormat)> const& expected)
{
    MatrixCounts counts;
    int32_t const positions = nbInputs + nbOutputs;
    for (DataType t0 : kAllTypes)
    {
        for (int32_t pos = 0; pos < positions; ++pos)
        {
            for (DataType tp : kAllTypes)
            {
                for (auto format : {nvinfer1::TensorFormat::kLINEAR, nvinfer1::TensorFormat::kHWC8})
                {
                    std::vector<DataType> types = typesFor(t0);
                    types[pos] = tp;
                    std::vector<nvinfer1::DynamicPluginTensorDesc> io(static_cast<size_t>(positions));
                    for (int32_t i = 0; i < positions; ++i)
                    {
                        io[i].desc.type = types[i];
                        io[i].desc.format = nvinfer1::TensorFormat::kLINEAR;
                    }
                    io[pos].desc.format = format;
                    bool const want = expected(pos, types, format);
                    bool const got = build.supportsFormatCombination(pos, io.data(), nbInputs, nbOutputs);
                    CHECK_MSG(got == want, "pos " + std::to_string(pos) + " type " + std::to_string(int(tp))
                            + " with T " + std::to_string(int(t0)));
                    ++counts.checked;
                    counts.accepted += got ? 1 : 0;
                }
            }
        }
    }
    return counts;
}

nvinfer1::IPluginV3OneRuntime* runtimeOf(nvinfer1::IPluginV3* plugin)
{
    return static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
}

int runTests(char const* name, CapturingLogger& logger, std::initializer_list<std::function<void()>> tests)
{
    mla::plugin::setLoggerFinder(&logger);
    for (auto const& test : tests)
    {
        test();
    }
    mla::plugin::setLoggerFinder(nullptr);
    return finish(name);
}

} // namespace testutil
