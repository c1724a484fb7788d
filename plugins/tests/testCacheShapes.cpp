/*
 * MlaAttention contract version 2's build-time answers (mlaCacheShapes.h through the plugin object): tensor counts by
 * attributes, output types and shapes, the type/format support matrix of a paged pool in T and of the FP8 cache, the
 * shape checks (each message naming the input and axis), the kernels' view of a call and the workspace of a profile.
 */
#include "mlaAttentionPlugin.h"
#include "mlaContract.h"
#include "mlaKernels.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <string>
#include <vector>

using namespace mla;
using nvinfer1::DataType;
using nvinfer1::Dims;
namespace c = mla::contract;

namespace
{
testutil::CapturingLogger gLogger;

plugin::MlaAttributes attrs(int32_t page, int32_t kvDtype, int32_t heads = 4, int32_t rank = 32, int32_t rope = 8)
{
    plugin::MlaAttributes a{heads, rank, rope, 0.125F};
    a.pageSize = page;
    a.kvCacheDtype = kvDtype;
    return a;
}

//! The ten input dims of a call: pool of `pages` x `rows`, block table [B, maxPages], rope table `ropeRows`.
std::vector<Dims> inputs(bool fp8, int64_t b, int64_t s, int64_t h, int64_t dc, int64_t dr, int64_t pages,
    int64_t rows, int64_t maxPages, int64_t ropeRows)
{
    int64_t const tiles = (dc + c::kFp8CacheTile - 1) / c::kFp8CacheTile;
    return {testutil::dims({b, s, h, dc}), testutil::dims({b, s, h, dr}), testutil::dims({b, s, dc}),
        testutil::dims({b, s, dr}), testutil::dims({pages, rows, fp8 ? dc : dc + dr}), testutil::dims({b}),
        testutil::dims({ropeRows, dr}), testutil::dims({b, maxPages}), testutil::dims({pages, rows, tiles}),
        testutil::dims({pages, rows, dr})};
}

void testCounts()
{
    plugin::MlaAttentionPlugin v1(attrs(0, 0));
    plugin::MlaAttentionPlugin paged(attrs(64, 0));
    plugin::MlaAttentionPlugin fp8(attrs(64, 1));
    plugin::MlaAttentionPlugin contiguousFp8(attrs(0, 1));
    CHECK(v1.getNbOutputs() == 2 && paged.getNbOutputs() == 2 && fp8.getNbOutputs() == 4);
    CHECK(contiguousFp8.getNbOutputs() == 4);
    CHECK(plugin::numInputsFor(attrs(0, 0)) == 7 && plugin::numInputsFor(attrs(16, 0)) == 8);
    CHECK(plugin::numInputsFor(attrs(16, 1)) == 10 && plugin::numInputsFor(attrs(0, 1)) == 10);
}

void testOutputTypesAndShapes()
{
    plugin::MlaAttentionPlugin p(attrs(64, 1));
    for (DataType t : {DataType::kHALF, DataType::kBF16})
    {
        DataType in[10] = {t, t, t, t, DataType::kFP8, DataType::kINT32, DataType::kFLOAT, DataType::kINT32,
            DataType::kFLOAT, t};
        DataType out[4] = {DataType::kINT8, DataType::kINT8, DataType::kINT8, DataType::kINT8};
        CHECK(p.getOutputDataTypes(out, 4, in, 10) == 0);
        CHECK(out[0] == t && out[1] == DataType::kFP8 && out[2] == DataType::kFLOAT && out[3] == t);
        DataType codesInT[10] = {t, t, t, t, t, DataType::kINT32, DataType::kFLOAT, DataType::kINT32,
            DataType::kFLOAT, t};
        gLogger.messages.clear();
        CHECK(p.getOutputDataTypes(out, 4, codesInT, 10) != 0);
        CHECK(gLogger.contains("past_cache must be fp8", nvinfer1::ILogger::Severity::kERROR));
        DataType ropeInFloat[10] = {t, t, t, t, DataType::kFP8, DataType::kINT32, DataType::kFLOAT, DataType::kINT32,
            DataType::kFLOAT, DataType::kFLOAT};
        if (t != DataType::kFLOAT)
        {
            CHECK(p.getOutputDataTypes(out, 4, ropeInFloat, 10) != 0);
        }
    }
    plugin::MlaAttentionPlugin paged(attrs(16, 0));
    DataType const h = DataType::kHALF;
    DataType in[8] = {h, h, h, h, h, DataType::kINT32, DataType::kFLOAT, DataType::kINT32};
    DataType out[2];
    CHECK(paged.getOutputDataTypes(out, 2, in, 8) == 0 && out[0] == h && out[1] == h);
    DataType badTable[8] = {h, h, h, h, h, DataType::kINT32, DataType::kFLOAT, DataType::kINT64};
    CHECK(paged.getOutputDataTypes(out, 2, badTable, 8) != 0);
    CHECK(paged.getOutputDataTypes(out, 2, in, 7) != 0); // a version-1 count on a paged node

    // Each output has the shape of the input it aliases.
    auto const shapes = inputs(true, 2, 3, 4, 32, 8, 9, 64, 5, 128);
    testutil::ShapeExprs exprs(shapes);
    nvinfer1::DimsExprs outs[4];
    CHECK(p.getOutputShapes(exprs.data(), 10, nullptr, 0, outs, 4, exprs.builder()) == 0);
    int32_t const sources[4] = {c::kQLatent, c::kPastCache, c::kPastScale, c::kPastRope};
    for (int32_t o = 0; o < 4; ++o)
    {
        CHECK(outs[o].nbDims == exprs[sources[o]].nbDims);
        for (int32_t a = 0; a < outs[o].nbDims; ++a)
        {
            CHECK(outs[o].d[a] == exprs[sources[o]].d[a]);
        }
    }
}

// The support matrix of a version-2 node (`fp8`: 10 inputs, else 8): int32 at 5 and 7, float32 at 6 (and 8), the FP8
// codes at 4 in an FP8 node, T elsewhere; each present plane exactly its input's type.
bool expectedSupport(bool fp8, int32_t pos, std::vector<DataType> const& types, nvinfer1::TensorFormat format)
{
    if (format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    int32_t const numInputs = fp8 ? 10 : 8;
    int32_t const sources[4] = {c::kQLatent, c::kPastCache, c::kPastScale, c::kPastRope};
    bool const activation
        = types[pos] == DataType::kHALF || types[pos] == DataType::kBF16 || types[pos] == DataType::kFLOAT;
    if (pos >= numInputs) // attn_latent holds T; a present plane its input's type
    {
        return pos == numInputs ? activation && types[pos] == types[0]
                                : types[pos] == types[sources[pos - numInputs]];
    }
    switch (pos)
    {
    case c::kCacheSeqlensIn:
    case c::kBlockTable: return types[pos] == DataType::kINT32;
    case c::kRopeCosSin: return types[pos] == DataType::kFLOAT;
    case c::kPastScale: return types[pos] == DataType::kFLOAT; // FP8 nodes only: an 8-input node has no input 8
    case c::kPastCache: return fp8 ? types[pos] == DataType::kFP8 : activation && types[pos] == types[0];
    default: return activation && types[pos] == types[0];
    }
}

void testFormatMatrix()
{
    plugin::MlaAttentionPlugin fp8(attrs(64, 1));
    auto const [checked, accepted] = testutil::checkFormatMatrix(
        fp8, 10, 4,
        [](DataType t0) {
            return std::vector<DataType>{t0, t0, t0, t0, DataType::kFP8, DataType::kINT32, DataType::kFLOAT,
                DataType::kINT32, DataType::kFLOAT, t0, t0, DataType::kFP8, DataType::kFLOAT, t0};
        },
        [](int32_t pos, std::vector<DataType> const& types, nvinfer1::TensorFormat format) {
            return expectedSupport(true, pos, types, format);
        });
    CHECK(checked == 14 * 9 * 9 * 2);
    CHECK(accepted > 0);
    plugin::MlaAttentionPlugin paged(attrs(16, 0));
    auto const pagedCounts = testutil::checkFormatMatrix(
        paged, 8, 2,
        [](DataType t0) {
            return std::vector<DataType>{t0, t0, t0, t0, t0, DataType::kINT32, DataType::kFLOAT, DataType::kINT32, t0,
                t0};
        },
        [](int32_t pos, std::vector<DataType> const& types, nvinfer1::TensorFormat format) {
            return expectedSupport(false, pos, types, format);
        });
    CHECK(pagedCounts.checked == 10 * 9 * 9 * 2);
    nvinfer1::DynamicPluginTensorDesc io[14]{};
    CHECK(!fp8.supportsFormatCombination(0, io, 8, 2)); // the counts of another layout
    CHECK(!paged.supportsFormatCombination(0, io, 10, 4));
}

//! validateInputDims through onShapeChange: "" expected when `mention` is empty, else a refusal naming it.
void expectShapes(plugin::MlaAttentionPlugin& p, std::vector<Dims> const& dims, bool fp8, std::string const& mention,
    int line)
{
    int32_t const n = fp8 ? 10 : 8;
    nvinfer1::PluginTensorDesc in[10]{};
    nvinfer1::PluginTensorDesc out[4]{};
    for (int32_t i = 0; i < n; ++i)
    {
        in[i].dims = dims[i];
    }
    int32_t const sources[4] = {c::kQLatent, c::kPastCache, c::kPastScale, c::kPastRope};
    for (int32_t o = 0; o < (fp8 ? 4 : 2); ++o)
    {
        out[o].dims = dims[sources[o]];
    }
    gLogger.messages.clear();
    int32_t const status = p.onShapeChange(in, n, out, fp8 ? 4 : 2);
    if (mention.empty())
    {
        testutil::check(status == 0, "accepted", __FILE__, line, gLogger.last());
    }
    else
    {
        testutil::check(status != 0 && gLogger.contains(mention, nvinfer1::ILogger::Severity::kERROR), "refused",
            __FILE__, line, "wanted '" + mention + "', got: " + gLogger.last());
    }
}

void testShapeChecks()
{
    plugin::MlaAttentionPlugin fp8(attrs(64, 1));
    auto good = [] { return inputs(true, 2, 3, 4, 32, 8, 9, 64, 5, 128); };
    expectShapes(fp8, good(), true, "", __LINE__);
    auto d = good();
    d[c::kPastCache].d[1] = 16;
    expectShapes(fp8, d, true, "input 4 (past_cache) has shape [9,16,32]: axis 1 is 16, expected 64 (the page_size", __LINE__);
    d = good();
    d[c::kPastCache].d[2] = 40;
    expectShapes(fp8, d, true, "expected 32 (kv_lora_rank (the FP8 cache's codes))", __LINE__);
    d = good();
    d[c::kPastScale].d[2] = 2;
    expectShapes(fp8, d, true, "input 8 (past_scale)", __LINE__);
    d = good();
    d[c::kPastRope].d[0] = 8;
    expectShapes(fp8, d, true, "input 9 (past_rope)", __LINE__);
    d = good();
    d[c::kBlockTable].d[0] = 3;
    expectShapes(fp8, d, true, "input 7 (block_table)", __LINE__);
    d = good();
    d[c::kBlockTable] = testutil::dims({2});
    expectShapes(fp8, d, true, "block_table", __LINE__);
    // More new tokens than the block table's pages hold (5 pages of 64 rows).
    d = inputs(true, 2, 321, 4, 32, 8, 9, 64, 5, 512);
    expectShapes(fp8, d, true, "at most max_pages * page_size new tokens", __LINE__);
    // A paged pool's rope table may be shorter or longer than max_pages * page_size: positions past it are not
    // written (the Python API's rule).
    expectShapes(fp8, inputs(true, 2, 3, 4, 32, 8, 9, 64, 5, 100), true, "", __LINE__);
    // Contiguous FP8: one page of Smax rows per sequence, the rope table at least Smax rows, the table not read.
    plugin::MlaAttentionPlugin contiguous(attrs(0, 1));
    expectShapes(contiguous, inputs(true, 2, 3, 4, 32, 8, 2, 64, 1, 64), true, "", __LINE__);
    expectShapes(contiguous, inputs(true, 2, 3, 4, 32, 8, 3, 64, 1, 64), true, "expected 2 (B of q_latent", __LINE__);
    expectShapes(contiguous, inputs(true, 2, 3, 4, 32, 8, 2, 64, 1, 63), true, "at least Smax rows", __LINE__);
    // A paged pool in T: rows of Dc+Dr values.
    plugin::MlaAttentionPlugin paged(attrs(16, 0));
    expectShapes(paged, inputs(false, 2, 3, 4, 32, 8, 30, 16, 4, 64), false, "", __LINE__);
    d = inputs(false, 2, 3, 4, 32, 8, 30, 16, 4, 64);
    d[c::kPastCache].d[2] = 32;
    expectShapes(paged, d, false, "expected 40 (kv_lora_rank + qk_rope_head_dim)", __LINE__);
}

void testKernelDimsAndWorkspace()
{
    auto const a = attrs(64, 1, 16, 512, 64);
    auto const shapes = inputs(true, 8, 1, 16, 512, 64, 300, 64, 32, 2048);
    kernels::Dims const d = plugin::cacheKernelDims(a, shapes.data(), kernels::DataType::kBFLOAT16);
    CHECK(d.batch == 8 && d.newTokens == 1 && d.numHeads == 16 && d.kvLoraRank == 512 && d.ropeDim == 64);
    CHECK(d.pageSize == 64 && d.kvCacheDtype == 1 && d.numPages == 300 && d.maxPages == 32 && d.ropeRows == 2048);
    CHECK(d.maxSeqLen == 32 * 64 && d.cacheV2());
    CHECK(kernels::supported(d, nullptr));
    auto const contiguous = inputs(true, 3, 2, 4, 32, 8, 3, 64, 1, 64);
    kernels::Dims const e = plugin::cacheKernelDims(attrs(0, 1), contiguous.data(), kernels::DataType::kFLOAT16);
    CHECK(e.maxSeqLen == 64 && e.maxPages == 0 && e.numPages == 3 && e.cacheV2());
    // The workspace of a profile covers its largest call (split partials grow with B and the table's pages).
    auto const lo = inputs(true, 1, 1, 16, 512, 64, 300, 64, 1, 2048);
    size_t const ws = plugin::cacheWorkspaceSize(a, lo.data(), shapes.data(), kernels::DataType::kBFLOAT16, 132);
    CHECK(ws >= kernels::workspaceBytes(d, 132) && ws > 0);
    kernels::Dims small = d;
    small.batch = 1;
    small.maxPages = 1;
    small.maxSeqLen = 64;
    CHECK(ws >= kernels::workspaceBytes(small, 132));
}
} // namespace

int main()
{
    return testutil::runTests("test_mla_cache_shapes", gLogger,
        {testCounts, testOutputTypesAndShapes, testFormatMatrix, testShapeChecks, testKernelDimsAndWorkspace});
}
