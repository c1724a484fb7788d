/*
 * mlaRuntime: run an mla-export TensorRT engine from C++ with the latent caches bound the way the
 * engine was built for (the sidecar's "cache_binding"):
 *   aliased  present_latent_cache.i is a declared alias of past_latent_cache.i (the plugin's
 *            IPluginV3OneBuildV2::getAliasedInput, built with PreviewFeature::kALIASED_PLUGIN_IO_10_03,
 *            TensorRT 10.3+): one buffer per layer, bound to both names; each step writes only its
 *            new rows, nothing is copied.
 *   copy     present is an output of its own (engines built without the preview feature, sidecars
 *            written before the field existed, --attention decomposed): two buffers per layer, past
 *            bound to one and present to the other, swapped every step; each step copies the cache.
 *
 * One header, one source (mlaRuntime.cpp). The pure parts (option checks, cache size arithmetic,
 * I/O name matching against the contract, sidecar checks, the cache binding plan) are inline below
 * and need no TensorRT runtime; MlaSession needs TensorRT 10.8+, the CUDA runtime and a GPU.
 *
 * Names come from the contract headers mirrored from mla_export/common/contract.py. A model with DeepSeek MoE layers
 * (DeepseekMoE nodes: the same plugin library, the same graph I/O) runs unchanged.
 */
#pragma once

#include "mlaContract.h"
#include "mlaNccl.h"
#include "mlaStatus.h"
#include "moeContract.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace mla
{
namespace runtime
{

//! What the demo (or a server) asks for.
struct SessionOptions
{
    std::string enginePath;
    std::string pluginPath;  //!< libmla_plugin.so; empty for an engine built with --attention decomposed
    int32_t batch{1};
    bool useCudaGraph{true}; //!< capture the decode step once and replay it (aliased caches only)
    ParallelOptions parallel; //!< rank and world size of a --tp engine, the NCCL id file (mlaNccl.h)
};

//! Rejects options that cannot work before anything is loaded.
inline Status checkOptions(SessionOptions const& o)
{
    if (o.enginePath.empty())
        return Status::error("no engine path: pass the file written by `mla-export build`");
    if (o.batch < 1)
        return Status::error("batch must be >= 1, got " + std::to_string(o.batch));
    return checkParallelOptions(o.parallel);
}

//! Bytes of one layer's latent cache [batch, maxSeqLen, cacheWidth], rounded up to `alignment`.
inline Status latentCacheBytes(int64_t batch, int64_t maxSeqLen, int64_t cacheWidth, int64_t elementSize,
    size_t& bytes, size_t alignment = 256)
{
    if (batch < 1 || maxSeqLen < 1 || cacheWidth < 1 || elementSize < 1)
        return Status::error("cache dims must be positive");
    int64_t const limit = INT64_MAX / elementSize / cacheWidth / maxSeqLen;
    if (batch > limit)
        return Status::error("latent cache size overflows");
    uint64_t const raw = static_cast<uint64_t>(batch * maxSeqLen * cacheWidth * elementSize);
    bytes = static_cast<size_t>((raw + alignment - 1) / alignment * alignment);
    return Status::success();
}

//! Checks that `rows` more tokens fit in a cache of `maxSeqLen` rows for every sequence.
inline Status checkCacheRoom(std::vector<int32_t> const& lengths, int32_t rows, int32_t maxSeqLen)
{
    for (size_t b = 0; b < lengths.size(); ++b)
    {
        if (lengths[b] < 0 || static_cast<int64_t>(lengths[b]) + rows > maxSeqLen)
            return Status::error("sequence " + std::to_string(b) + " holds " + std::to_string(lengths[b])
                + " tokens; " + std::to_string(rows) + " more do not fit the cache of " + std::to_string(maxSeqLen)
                + " rows (export with a larger --max-seq-len)");
    }
    return Status::success();
}

//! One engine I/O tensor as TensorRT reports it.
struct TensorInfo
{
    std::string name;
    bool isInput;
};

//! The engine's I/O matched to the contract's names.
struct IoPlan
{
    bool tokens{false};  //!< input_ids/logits instead of hidden_states
    int32_t numLayers{0};
    std::string input;   //!< hidden_states or input_ids
    std::string output;  //!< output_hidden_states or logits
};

//! Parses "<prefix><i>" into i; false if `name` does not have that form.
inline bool layerIndex(std::string const& name, char const* prefix, int32_t& index)
{
    std::string const p(prefix);
    if (name.compare(0, p.size(), p) != 0 || name.size() == p.size())
        return false;
    index = 0;
    for (size_t i = p.size(); i < name.size(); ++i)
    {
        if (name[i] < '0' || name[i] > '9' || index > 100000)
            return false;
        index = index * 10 + (name[i] - '0');
    }
    return true;
}

//! Matches every I/O name against the contract: one first input/output, cache_seqlens, and
//! past/present caches 0..L-1 with nothing missing or extra.
inline Status matchIoNames(std::vector<TensorInfo> const& tensors, IoPlan& plan)
{
    namespace c = mla::contract;
    plan = IoPlan{};
    std::vector<int32_t> past, present;
    bool seqlens = false;
    for (auto const& t : tensors)
    {
        int32_t index = 0;
        if (t.isInput && t.name == c::kCacheSeqlens)
            seqlens = true;
        else if (t.isInput && (t.name == c::kHiddenStatesIn || t.name == c::kInputIds))
        {
            plan.tokens = t.name == c::kInputIds;
            plan.input = t.name;
        }
        else if (!t.isInput && (t.name == c::kHiddenStatesOut || t.name == c::kLogits))
            plan.output = t.name;
        else if (t.isInput && layerIndex(t.name, c::kPastCachePrefix, index))
            past.push_back(index);
        else if (!t.isInput && layerIndex(t.name, c::kPresentCachePrefix, index))
            present.push_back(index);
        else
            return Status::error(std::string("engine tensor '") + t.name + "' is not part of the MlaAttention "
                "contract: was this engine built by `mla-export build`?");
    }
    if (!seqlens || plan.input.empty() || plan.output.empty())
        return Status::error("engine lacks cache_seqlens or its hidden-state/token input or output");
    plan.numLayers = static_cast<int32_t>(past.size());
    std::vector<bool> seenPast(past.size(), false), seenPresent(past.size(), false);
    for (int32_t i : past)
        if (i >= plan.numLayers || seenPast[i]) return Status::error("past latent caches are not numbered 0..L-1");
        else seenPast[i] = true;
    if (present.size() != past.size())
        return Status::error("engine has " + std::to_string(past.size()) + " past and " + std::to_string(present.size())
            + " present latent caches");
    for (int32_t i : present)
        if (i >= plan.numLayers || seenPresent[i]) return Status::error("present latent caches are not numbered 0..L-1");
        else seenPresent[i] = true;
    if (plan.numLayers == 0)
        return Status::error("engine has no latent cache bindings");
    return Status::success();
}

//! Reads an integer field `"key": N` from the sidecar JSON text; false if absent.
inline bool jsonInt(std::string const& json, std::string const& key, int64_t& value)
{
    auto pos = json.find("\"" + key + "\"");
    if (pos == std::string::npos) return false;
    pos = json.find(':', pos);
    if (pos == std::string::npos) return false;
    char* end = nullptr;
    value = std::strtoll(json.c_str() + pos + 1, &end, 10);
    return end != json.c_str() + pos + 1;
}

//! Reads a string field `"key": "value"` from the sidecar JSON text; false if absent or not a string.
inline bool jsonString(std::string const& json, std::string const& key, std::string& value)
{
    auto pos = json.find("\"" + key + "\"");
    if (pos == std::string::npos) return false;
    pos = json.find(':', pos);
    if (pos == std::string::npos) return false;
    pos = json.find_first_not_of(" \t\r\n", pos + 1);
    if (pos == std::string::npos || json[pos] != '"') return false;
    auto const end = json.find('"', pos + 1);
    if (end == std::string::npos) return false;
    value = json.substr(pos + 1, end - pos - 1);
    return true;
}

//! The sidecar format this program reads: SIDECAR_VERSION in mla_export/trt/sidecar.py (a test compares them).
//! Format 3 records the engine's size and sha256 (`engine_size`, `engine_sha256`).
constexpr int64_t kSidecarFormatVersion = 3;

//! Refuses a sidecar whose format or contract versions this program does not know: MlaAttention's, and the
//! DeepseekMoE contract version the sidecar's copy of the ONNX metadata carries (absent: a model without MoE
//! layers, or exported before MoE; the engine's I/O is the same either way).
inline Status checkSidecar(std::string const& json)
{
    int64_t format = 0, contractVersion = 0;
    if (json.find("\"format\": \"mla-export-engine\"") == std::string::npos || !jsonInt(json, "format_version", format))
        return Status::error("not an mla-export engine sidecar (model.engine.json written by `mla-export build`)");
    if (format != kSidecarFormatVersion)
        return Status::error("sidecar format " + std::to_string(format) + " is unknown to this program (knows "
            + std::to_string(kSidecarFormatVersion) + "): rebuild the engine with this mla-export, or rebuild this program");
    // A paged or FP8 latent cache (MlaAttention contract 2): page pools, a block table and FP8 planes to bind, which
    // this program does not do yet (mlaPages.h allocates the pages; binding them is owed).
    std::string layout, kvDtype;
    bool const paged = jsonString(json, mla::contract::kMetaCache, layout) && layout != "contiguous";
    bool const fp8Cache = jsonString(json, mla::contract::kMetaKvCacheDtype, kvDtype) && kvDtype != "model";
    if (paged || fp8Cache)
        return Status::error(std::string("the engine's latent cache is ") + (paged ? "paged" : "contiguous")
            + (fp8Cache ? " FP8" : "") + " (MlaAttention contract 2); this program binds a contiguous cache in the "
            "model's dtype only: export with --cache contiguous --kv-cache-dtype model for it");
    if (!jsonInt(json, "contract_version", contractVersion) || contractVersion != mla::contract::kContractVersion)
        return Status::error("engine speaks MlaAttention contract " + std::to_string(contractVersion)
            + ", this program speaks " + std::to_string(mla::contract::kContractVersion)
            + ": re-export and rebuild the engine, or rebuild this program");
    std::string moeVersion;
    // Version 2 added FP8 experts (7 inputs), version 3 a rank's slice of the experts (first_expert); engines of
    // every earlier version still run.
    bool const hasMoe = jsonString(json, "mla_export.moe_contract_version", moeVersion);
    bool knownMoe = false;
    for (int32_t v = 1; v <= mla::moe_contract::kContractVersion; ++v)
        knownMoe = knownMoe || moeVersion == std::to_string(v);
    if (hasMoe && !knownMoe)
        return Status::error("engine speaks DeepseekMoE contract " + moeVersion + ", this program speaks "
            + std::to_string(mla::moe_contract::kContractVersion)
            + ": re-export and rebuild the engine, or rebuild this program");
    return Status::success();
}

//! Refuses an engine of `engineBytes` bytes whose sidecar records another size: the two files are not from
//! the same build (an interrupted build, or files copied from two builds). mla-export's own readers also
//! compare the sha256; the size is what this program checks.
inline Status checkEngineSize(std::string const& json, size_t engineBytes)
{
    int64_t recorded = -1;
    if (!jsonInt(json, "engine_size", recorded) || recorded < 0)
        return Status::error("the sidecar records no engine_size: rebuild the engine with this mla-export");
    if (static_cast<uint64_t>(recorded) != engineBytes)
        return Status::error("the engine holds " + std::to_string(engineBytes) + " bytes, its sidecar records "
            + std::to_string(recorded) + ": the two files are not from the same build; rebuild the engine");
    return Status::success();
}

//! Refuses an engine that is not rank `o.rank` of `o.worldSize` ranks: the sidecar's tp_size and tp_rank
//! (absent: a single-device engine, 1 and 0), written by `mla-export build --onnx DIR` per rank.
inline Status checkSidecarRank(std::string const& json, ParallelOptions const& o)
{
    int64_t size = 1, rank = 0;
    jsonInt(json, "tp_size", size);
    jsonInt(json, "tp_rank", rank);
    if (size == o.worldSize && rank == o.rank)
        return Status::success();
    if (size == 1)
        return Status::error("a single-device engine, run with --world-size " + std::to_string(o.worldSize)
            + ": drop --rank/--world-size, or pass a rank engine of `mla-export build --onnx DIR`");
    return Status::error("the engine is rank " + std::to_string(rank) + " of " + std::to_string(size) + " (its sidecar), "
        "this process is rank " + std::to_string(o.rank) + " of " + std::to_string(o.worldSize) + ": pass rank"
        + std::to_string(o.rank) + ".engine of the same build and --world-size " + std::to_string(size));
}

//! How the latent caches of an engine are bound (see the top of this file).
enum class CacheBinding
{
    kAliased, //!< one buffer per layer, bound to past and present; no copy per step
    kCopy,    //!< two buffers per layer, past and present swapped every step; the step copies the cache
};

inline char const* cacheBindingName(CacheBinding binding)
{
    return binding == CacheBinding::kAliased ? "aliased" : "copy";
}

//! The sidecar's "cache_binding": "aliased" or "copy"; a sidecar without the field was written before
//! engines declared the alias, so its engine is run as "copy". Refuses any other value.
inline Status cacheBindingOf(std::string const& sidecar, CacheBinding& binding)
{
    std::string value;
    if (!jsonString(sidecar, "cache_binding", value) || value == "copy")
        binding = CacheBinding::kCopy;
    else if (value == "aliased")
        binding = CacheBinding::kAliased;
    else
        return Status::error("sidecar cache_binding \"" + value + "\" is unknown to this program (knows aliased, "
            "copy): rebuild this program or the engine");
    return Status::success();
}

//! The buffers a binding needs and how they are bound, step after step.
struct CacheBindingPlan
{
    CacheBinding binding{CacheBinding::kCopy};
    int32_t buffersPerLayer{2};
    bool fixedAddresses{false}; //!< the same addresses every step: a captured decode graph can be replayed
    bool copiesPerStep{true};   //!< each step copies every layer's cache (B x Smax x width elements)
};

inline CacheBindingPlan planCacheBinding(CacheBinding binding)
{
    bool const aliased = binding == CacheBinding::kAliased;
    return CacheBindingPlan{binding, aliased ? 1 : 2, aliased, !aliased};
}

//! Which of a layer's buffers (0 or 1) past and present are bound to for step `step` (0-based count of
//! the steps run so far). Aliased: both to buffer 0. Copy: present to the buffer past was not bound
//! to, so that the present written by one step is the past of the next.
struct CacheSlots
{
    int32_t past;
    int32_t present;
};

inline CacheSlots cacheSlots(CacheBindingPlan const& plan, int64_t step)
{
    if (plan.buffersPerLayer == 1)
        return {0, 0};
    int32_t const past = static_cast<int32_t>(step % 2);
    return {past, 1 - past};
}

//! One line saying how the caches are bound, for logs.
inline std::string describeCacheBinding(CacheBindingPlan const& plan)
{
    if (plan.binding == CacheBinding::kAliased)
        return "cache binding: aliased (present_latent_cache.i aliases past_latent_cache.i: one buffer per layer "
               "bound to both, each step writes only its new rows)";
    return "cache binding: copy (engine declares no alias: two buffers per layer, past and present swapped every "
           "step, each step copies the whole cache; no CUDA graph)";
}

//! Latency percentile (q in [0,100]) of `samples`, nearest-rank; 0 for none.
inline double percentile(std::vector<float> samples, double q)
{
    if (samples.empty())
        return 0.0;
    std::sort(samples.begin(), samples.end());
    double const rank = std::ceil(q / 100.0 * static_cast<double>(samples.size()));
    size_t const index = rank < 1.0 ? 0 : static_cast<size_t>(rank) - 1;
    return samples[std::min(index, samples.size() - 1)];
}

//! A loaded engine with its caches, bound per the sidecar's cache_binding (cachePlan()): prefill, then
//! decode steps.
class MlaSession
{
public:
    static Status create(SessionOptions const& options, std::unique_ptr<MlaSession>& session);
    ~MlaSession();

    IoPlan const& plan() const { return mPlan; }
    CacheBindingPlan const& cachePlan() const { return mCachePlan; }
    int32_t maxSeqLen() const { return mMaxSeqLen; }
    std::vector<int32_t> const& lengths() const { return mLengths; }
    size_t inputBytesPerToken() const; //!< bytes of one token of the first input for one sequence

    std::string const& sidecar() const { return mSidecar; } //!< the engine's sidecar JSON, as read

    //! Runs `newTokens` tokens per sequence; `input` points to host data of the engine's first input
    //! ([B,S,d] hidden states in the engine's dtype, or [B,S] int64 token ids). Updates the caches.
    //! Token engines only: `input` nullptr (with newTokens 1) feeds the ids the previous step's argmax left
    //! in the input buffer on the device; `nextIds` (host, [B]) asks for that argmax of the last position's
    //! logits, ties to the lower id (needs the kernel, built where CMake found nvcc).
    Status step(void const* input, int32_t newTokens, float* milliseconds = nullptr, int64_t* nextIds = nullptr);

private:
    MlaSession() = default;
    struct Impl;
    std::unique_ptr<Impl> mImpl;
    IoPlan mPlan;
    CacheBindingPlan mCachePlan;
    int32_t mMaxSeqLen{0};
    std::vector<int32_t> mLengths;
    std::string mSidecar;
};

} // namespace runtime
} // namespace mla
