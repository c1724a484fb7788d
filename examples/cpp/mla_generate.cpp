/*
 * mla_generate: greedy generation from token ids on an mla-export engine built from an `--io tokens` export.
 * The prompt is prefilled in one step, then one token per step; each step's argmax runs on the device and
 * writes the next input id in place, so only the id itself (8 bytes) comes back to be printed. Ids are
 * printed as they come, space-separated, and the loop ends at an EOS id (the sidecar's, or --eos) or after
 * --max-new-tokens. Timings go to stderr. Text in and out is the tokenizer's job (README.md).
 *
 *   mla_generate --engine model.engine [--plugin libmla_plugin.so] --prompt-ids 1,2,3 [--max-new-tokens 32]
 *                [--eos 1,2]
 */
#include "mlaGenerate.h"

#include <chrono>
#include <cstdio>

int main(int argc, char** argv)
{
    using namespace mla::runtime;
    GenerateOptions options;
    if (Status s = parseGenerateArgs(argc, argv, options); !s)
    {
        std::fprintf(stderr, "error: %s\nusage: mla_generate --engine FILE [--plugin LIB] --prompt-ids 1,2,3 "
            "[--max-new-tokens N] [--eos 1,2]\n       [--rank R --world-size N --nccl-id-file PATH]\n", s.message.c_str());
        return 2;
    }
    std::unique_ptr<MlaSession> session;
    if (Status s = MlaSession::create(options.session, session); !s)
    {
        std::fprintf(stderr, "error: %s\n", s.message.c_str());
        return 1;
    }
    if (!session->plan().tokens)
    {
        std::fprintf(stderr, "error: the engine takes hidden states (an --io hidden export): re-export with --io "
            "tokens and rebuild\n");
        return 1;
    }
    std::vector<int64_t> eos = options.eosIds;
    if (!options.eosGiven)
    {
        if (Status s = eosIdsFromSidecar(session->sidecar(), eos); !s)
        {
            std::fprintf(stderr, "error: %s\n", s.message.c_str());
            return 1;
        }
    }
    float prefillMs = 0.f, decodeMs = 0.f;
    int64_t steps = 0;
    auto step = [&](std::vector<int64_t> const& input, int64_t& next) {
        float ms = 0.f;
        // The prompt comes from the host; each decode step's id is already on the device (the argmax wrote it).
        bool const prefill = steps == 0;
        Status s = session->step(prefill ? input.data() : nullptr, static_cast<int32_t>(input.size()), &ms, &next);
        (prefill ? prefillMs : decodeMs) += ms;
        ++steps;
        return s;
    };
    auto print = [](int64_t id) {
        std::printf("%lld ", static_cast<long long>(id));
        std::fflush(stdout);
    };
    LoopResult result;
    if (Status s = runTokenLoop(options.promptIds, options.maxNewTokens, eos, session->maxSeqLen(), step, print, result);
        !s)
    {
        std::fprintf(stderr, "\nerror: %s\n", s.message.c_str());
        return 1;
    }
    std::printf("\n");
    size_t const decoded = result.ids.size() - 1;
    std::fprintf(stderr, "prefill %zu ids: %.3f ms; decode %zu tokens: %.3f ms (%.1f tokens/s)%s\n",
        options.promptIds.size(), prefillMs, decoded, decodeMs, decoded > 0 ? decoded / (decodeMs * 1e-3) : 0.0,
        result.endedOnEos ? "; ended on EOS" : "");
    return 0;
}
