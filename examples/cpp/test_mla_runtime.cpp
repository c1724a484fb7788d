/*
 * Unit test of mlaRuntime's parts that need no TensorRT runtime: option checks, cache size
 * arithmetic, cache room, I/O name matching against the contract, sidecar checks, the cache binding
 * read from the sidecar and its plan (which buffer past and present get, step after step), percentiles.
 * Prints "N passed, N failed" and returns nonzero on any failure.
 */
#include "mlaRuntime.h"

#include <cstdio>
#include <string>

namespace
{
int gPassed = 0, gFailed = 0;

void expect(bool condition, char const* what)
{
    if (condition) ++gPassed;
    else { ++gFailed; std::printf("FAILED: %s\n", what); }
}

using mla::runtime::IoPlan;
using mla::runtime::Status;
using mla::runtime::TensorInfo;

std::vector<TensorInfo> engineIo(int layers, bool tokens = false)
{
    std::vector<TensorInfo> io{{tokens ? "input_ids" : "hidden_states", true}, {"cache_seqlens", true}};
    for (int i = 0; i < layers; ++i) io.push_back({"past_latent_cache." + std::to_string(i), true});
    io.push_back({tokens ? "logits" : "output_hidden_states", false});
    for (int i = layers - 1; i >= 0; --i) io.push_back({"present_latent_cache." + std::to_string(i), false});
    return io;
}
} // namespace

int main()
{
    using namespace mla::runtime;
    // Options.
    expect(!checkOptions(SessionOptions{}), "empty engine path refused");
    SessionOptions o;
    o.enginePath = "m.engine";
    o.batch = 0;
    expect(!checkOptions(o), "batch 0 refused");
    o.batch = 4;
    expect(checkOptions(o).ok, "valid options accepted");

    // Cache bytes: DeepSeek-V3, batch 64, 4096 rows, 576 values, bf16 = 302 MB per layer.
    size_t bytes = 0;
    expect(latentCacheBytes(64, 4096, 576, 2, bytes).ok && bytes == 64ull * 4096 * 576 * 2, "V3 cache bytes");
    expect(latentCacheBytes(1, 3, 5, 2, bytes).ok && bytes == 256, "small cache rounded up to 256 bytes");
    expect(!latentCacheBytes(0, 1, 1, 1, bytes), "zero batch refused");
    expect(!latentCacheBytes(1ll << 40, 1ll << 20, 576, 2, bytes), "overflow refused");

    // Cache room.
    expect(checkCacheRoom({0, 10}, 54, 64).ok, "exactly full cache fits");
    Status room = checkCacheRoom({0, 11}, 54, 64);
    expect(!room && room.message.find("sequence 1") != std::string::npos, "overflowing sequence named");

    // Names.
    IoPlan plan;
    expect(matchIoNames(engineIo(3), plan).ok && plan.numLayers == 3 && !plan.tokens
            && plan.input == "hidden_states" && plan.output == "output_hidden_states", "hidden-state engine matched");
    expect(matchIoNames(engineIo(2, true), plan).ok && plan.tokens && plan.output == "logits", "token engine matched");
    auto extra = engineIo(2);
    extra.push_back({"attention_mask", true});
    Status foreign = matchIoNames(extra, plan);
    expect(!foreign && foreign.message.find("attention_mask") != std::string::npos, "foreign tensor named");
    auto gap = engineIo(3);
    gap[2].name = "past_latent_cache.7";
    expect(!matchIoNames(gap, plan), "cache numbering gap refused");
    auto unpaired = engineIo(2);
    unpaired.pop_back();
    expect(!matchIoNames(unpaired, plan), "past without present refused");
    expect(!matchIoNames({{"hidden_states", true}}, plan), "missing bindings refused");
    int32_t index = -1;
    expect(layerIndex("past_latent_cache.12", mla::contract::kPastCachePrefix, index) && index == 12, "layer index");
    expect(!layerIndex("past_latent_cache.x", mla::contract::kPastCachePrefix, index), "bad layer index");

    // Sidecar.
    std::string const good = "{\n  \"contract_version\": 1,\n  \"format\": \"mla-export-engine\",\n  \"format_version\": "
        + std::to_string(kSidecarFormatVersion) + "\n}";
    expect(checkSidecar(good).ok, "current sidecar accepted");
    std::string older = good;
    older.replace(older.rfind(std::to_string(kSidecarFormatVersion)), 1, "1");
    expect(!checkSidecar(older), "sidecar format 1 refused");
    std::string future = good;
    future.replace(future.find("\"contract_version\": 1"), 21, "\"contract_version\": 2");
    Status newer = checkSidecar(future);
    expect(!newer && newer.message.find("contract 2") != std::string::npos, "other contract refused");
    expect(!checkSidecar("{\"format\": \"something\"}"), "foreign sidecar refused");
    // A MoE model's engine: same I/O, same checks, plus the DeepseekMoE contract version of its ONNX metadata.
    std::string const moe = good.substr(0, good.size() - 2)
        + ",\n  \"onnx_metadata\": {\"mla_export.moe_contract_version\": \"1\"}\n}";
    expect(checkSidecar(moe).ok, "MoE engine sidecar (contract 1) accepted");
    std::string moeFp8 = moe;
    moeFp8.replace(moeFp8.find("version\": \"1\"") + 11, 1, "2");
    expect(checkSidecar(moeFp8).ok, "MoE engine sidecar (contract 2, FP8 experts) accepted");
    std::string moeSlice = moe;
    moeSlice.replace(moeSlice.find("version\": \"1\"") + 11, 1, "3");
    expect(checkSidecar(moeSlice).ok, "MoE engine sidecar (contract 3, a rank's experts) accepted");
    std::string moeFuture = moe;
    moeFuture.replace(moeFuture.find("version\": \"1\"") + 11, 1, "4");
    Status moeNewer = checkSidecar(moeFuture);
    expect(!moeNewer && moeNewer.message.find("DeepseekMoE contract 4") != std::string::npos, "other MoE contract refused");
    // A paged or FP8 latent cache (contract 2): refused by name, whatever its contract_version says.
    for (char const* layout : {"\"mla_export.cache\": \"paged\"", "\"mla_export.kv_cache_dtype\": \"fp8\""})
    {
        std::string const v2 = good.substr(0, good.size() - 2) + ",\n  \"onnx_metadata\": {" + layout + "}\n}";
        Status const refused = checkSidecar(v2);
        expect(!refused && refused.message.find("contract 2") != std::string::npos
                && refused.message.find("--cache contiguous --kv-cache-dtype model") != std::string::npos,
            (std::string("contract-2 cache refused: ") + layout).c_str());
    }
    std::string const contiguousModel = good.substr(0, good.size() - 2)
        + ",\n  \"onnx_metadata\": {\"mla_export.cache\": \"contiguous\", \"mla_export.kv_cache_dtype\": \"model\"}\n}";
    expect(checkSidecar(contiguousModel).ok, "contiguous model-dtype cache named in the metadata accepted");
    std::string const sized = "{\"engine_size\": 163840, \"engine_sha256\": \"ab\"}";
    expect(checkEngineSize(sized, 163840).ok, "engine of the recorded size accepted");
    Status other = checkEngineSize(sized, 163841);
    expect(!other && other.message.find("not from the same build") != std::string::npos, "engine of another size refused");
    expect(!checkEngineSize(good, 163840), "sidecar without engine_size refused");

    // Cache binding from the sidecar: aliased, copy, absent (older sidecars: copy), unknown (refused).
    CacheBinding binding{};
    std::string const aliasedSidecar = good.substr(0, good.size() - 2) + ",\n  \"cache_binding\": \"aliased\"\n}";
    expect(checkSidecar(aliasedSidecar).ok, "sidecar with cache_binding accepted");
    expect(cacheBindingOf(aliasedSidecar, binding).ok && binding == CacheBinding::kAliased, "aliased sidecar");
    expect(cacheBindingOf("{\"cache_binding\":\"copy\"}", binding).ok && binding == CacheBinding::kCopy, "copy sidecar");
    binding = CacheBinding::kAliased;
    expect(cacheBindingOf(good, binding).ok && binding == CacheBinding::kCopy, "sidecar without the field: copy");
    Status odd = cacheBindingOf("{\"cache_binding\": \"paged\"}", binding);
    expect(!odd && odd.message.find("paged") != std::string::npos, "unknown cache binding refused, named");
    expect(cacheBindingOf("{\"cache_binding\": 3}", binding).ok && binding == CacheBinding::kCopy,
        "non-string cache binding read as absent");
    std::string text;
    expect(!jsonString("{\"cache_binding\"", "cache_binding", text), "truncated JSON: no value");

    // The binding plan, step after step: aliased engines bind past and present of a layer to its one
    // buffer every step (fixed addresses, graph replay, no copy); copy engines get two buffers per layer,
    // never the same one for past and present, and the present of step n is the past of step n+1.
    CacheBindingPlan const aliased = planCacheBinding(CacheBinding::kAliased);
    expect(aliased.buffersPerLayer == 1 && aliased.fixedAddresses && !aliased.copiesPerStep, "aliased plan");
    CacheBindingPlan const copy = planCacheBinding(CacheBinding::kCopy);
    expect(copy.buffersPerLayer == 2 && !copy.fixedAddresses && copy.copiesPerStep, "copy plan");
    bool aliasedSame = true, copyDistinct = true, copyChained = true;
    for (int64_t step = 0; step < 9; ++step)
    {
        CacheSlots const a = cacheSlots(aliased, step);
        aliasedSame = aliasedSame && a.past == 0 && a.present == 0;
        CacheSlots const c = cacheSlots(copy, step);
        CacheSlots const next = cacheSlots(copy, step + 1);
        copyDistinct = copyDistinct && c.past != c.present && c.past >= 0 && c.past < 2 && c.present >= 0
            && c.present < 2;
        copyChained = copyChained && next.past == c.present;
    }
    expect(aliasedSame, "aliased: past and present on buffer 0 at every step");
    expect(copyDistinct, "copy: past and present on different buffers at every step");
    expect(copyChained, "copy: each step's present is the next step's past");
    expect(cacheSlots(copy, 0).past == 0, "copy: the first step reads buffer 0");
    expect(describeCacheBinding(aliased).find("aliased") != std::string::npos
            && describeCacheBinding(copy).find("copy") != std::string::npos, "the binding is described");
    expect(std::string(cacheBindingName(CacheBinding::kAliased)) == "aliased", "binding names");

    // Percentiles.
    expect(percentile({5.f, 1.f, 3.f, 2.f, 4.f}, 50) == 3.0, "p50");
    expect(percentile({1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f, 9.f, 10.f}, 90) == 9.0, "p90");
    expect(percentile({}, 50) == 0.0, "empty percentile");

    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
