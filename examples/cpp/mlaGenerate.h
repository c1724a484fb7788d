/*
 * mlaGenerate: the parts of mla_generate (a greedy token loop over an mla-export engine) that need no
 * TensorRT runtime, header-only: its command line, the EOS ids the engine's sidecar records (the ONNX
 * metadata key mla_export.eos_token_ids, copied into the sidecar by `mla-export build`), and the loop's
 * bookkeeping over a step function (prefill the prompt, then one token per step, stop at EOS or the budget),
 * which the program drives with MlaSession::step and the unit test with a fake.
 */
#pragma once

#include "mlaRuntime.h"

#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

namespace mla
{
namespace runtime
{

struct GenerateOptions
{
    SessionOptions session;
    std::vector<int64_t> promptIds;
    int32_t maxNewTokens{32};
    bool eosGiven{false};        //!< --eos given: these ids, not the sidecar's
    std::vector<int64_t> eosIds;
};

//! Parses "1,2,3" (non-negative integers, at least one) into `ids`.
inline Status parseIdList(std::string const& text, std::vector<int64_t>& ids, char const* option)
{
    ids.clear();
    size_t start = 0;
    while (start <= text.size())
    {
        size_t const end = std::min(text.find(',', start), text.size());
        std::string const item = text.substr(start, end - start);
        char* stop = nullptr;
        long long const v = item.empty() ? -1 : std::strtoll(item.c_str(), &stop, 10);
        if (item.empty() || *stop != '\0' || v < 0)
            return Status::error(std::string(option) + " " + text + ": expected comma-separated token ids (integers >= 0)");
        ids.push_back(static_cast<int64_t>(v));
        start = end + 1;
    }
    return Status::success();
}

//! mla_generate's command line: --engine E [--plugin L] --prompt-ids 1,2,3 [--max-new-tokens N] [--eos 1,2]
//! [--rank R --world-size N --nccl-id-file F ...] (a --tp rank engine: mlaNccl.h; every rank gets the same ids).
inline Status parseGenerateArgs(int argc, char const* const* argv, GenerateOptions& options)
{
    options = GenerateOptions{};
    bool promptGiven = false;
    for (int i = 1; i < argc; ++i)
    {
        std::string const arg = argv[i];
        if (i + 1 >= argc)
            return Status::error("option " + arg + " needs a value (or is unknown)");
        std::string const value = argv[++i];
        if (arg == "--engine") options.session.enginePath = value;
        else if (arg == "--plugin") options.session.pluginPath = value;
        else if (arg == "--prompt-ids")
        {
            if (Status s = parseIdList(value, options.promptIds, "--prompt-ids"); !s) return s;
            promptGiven = true;
        }
        else if (arg == "--eos")
        {
            if (Status s = parseIdList(value, options.eosIds, "--eos"); !s) return s;
            options.eosGiven = true;
        }
        else if (arg == "--max-new-tokens")
        {
            char* stop = nullptr;
            long const v = std::strtol(value.c_str(), &stop, 10);
            if (value.empty() || *stop != '\0' || v < 1 || v > (1 << 24))
                return Status::error("--max-new-tokens " + value + ": expected an integer >= 1");
            options.maxNewTokens = static_cast<int32_t>(v);
        }
        else if (Status st; parseParallelFlag(arg, value, options.session.parallel, st))
        {
            if (!st) return st;
        }
        else
            return Status::error("unknown option " + arg);
    }
    if (Status s = checkParallelOptions(options.session.parallel); !s)
        return s;
    if (options.session.enginePath.empty())
        return Status::error("no --engine: pass the file written by `mla-export build`");
    if (!promptGiven)
        return Status::error("no --prompt-ids: pass the prompt's token ids, e.g. from the model's tokenizer");
    options.session.batch = 1;
    options.session.useCudaGraph = true;
    return Status::success();
}

//! The EOS ids the sidecar records (its copy of the export's metadata, "mla_export.eos_token_ids": "1,2");
//! empty when the export recorded none (random weights) or predates the key.
inline Status eosIdsFromSidecar(std::string const& sidecar, std::vector<int64_t>& ids)
{
    ids.clear();
    std::string text;
    if (!jsonString(sidecar, "mla_export.eos_token_ids", text) || text.empty())
        return Status::success();
    return parseIdList(text, ids, "the sidecar's mla_export.eos_token_ids");
}

//! One model call: `input` new token ids (the prompt, or one id) for the single sequence; returns the
//! argmax id of the last position's logits in `next`.
using StepFunction = std::function<Status(std::vector<int64_t> const& input, int64_t& next)>;

//! What the loop did: the generated ids (EOS included where it ended on one) and why it ended.
struct LoopResult
{
    std::vector<int64_t> ids;
    bool endedOnEos{false};
};

//! Prefill `prompt`, then decode until an EOS id or `maxNewTokens` ids; `onToken` sees each id as it comes.
//! Refuses a prompt the cache of `maxSeqLen` rows cannot hold with the new tokens (the last id is never fed).
inline Status runTokenLoop(std::vector<int64_t> const& prompt, int32_t maxNewTokens, std::vector<int64_t> const& eos,
    int32_t maxSeqLen, StepFunction const& step, std::function<void(int64_t)> const& onToken, LoopResult& result)
{
    result = LoopResult{};
    if (prompt.empty())
        return Status::error("the prompt has no token ids");
    if (maxNewTokens < 1)
        return Status::error("max new tokens must be >= 1");
    int64_t const need = static_cast<int64_t>(prompt.size()) + maxNewTokens - 1;
    if (need > maxSeqLen)
        return Status::error("the prompt's " + std::to_string(prompt.size()) + " ids + " + std::to_string(maxNewTokens)
            + " new tokens need " + std::to_string(need) + " cache rows, the engine has " + std::to_string(maxSeqLen)
            + ": shorten it, lower --max-new-tokens or export a larger --max-seq-len");
    std::vector<int64_t> input = prompt;
    for (int32_t made = 0; made < maxNewTokens; ++made)
    {
        int64_t next = -1;
        if (Status s = step(input, next); !s)
            return s;
        result.ids.push_back(next);
        if (onToken)
            onToken(next);
        if (std::find(eos.begin(), eos.end(), next) != eos.end())
        {
            result.endedOnEos = true;
            break;
        }
        input.assign(1, next);
    }
    return Status::success();
}

} // namespace runtime
} // namespace mla
