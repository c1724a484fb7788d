/*
 * mla_decode_demo: load an mla-export engine, run a prefill and decode steps with the latent caches
 * bound as the engine was built for (aliased: in place, one buffer per layer; copy: two buffers per
 * layer, swapped every step; it says which), print per-step latency percentiles.
 *
 *   mla_decode_demo --engine model.engine [--plugin libmla_plugin.so] [--batch 8] [--prompt 128]
 *                   [--steps 64] [--no-cuda-graph]
 *
 * A rank engine of `mla-export build --onnx DIR` (a --tp export) runs one process per rank, each on GPU
 * (rank % device count), all given the same id file (mlaNccl.h):
 *   for r in 0 1; do mla_decode_demo --engine engines/rank$r.engine --rank $r --world-size 2 \
 *       --nccl-id-file /tmp/run.id & done; wait
 */
#include "mlaRuntime.h"

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace
{

void usage()
{
    std::fprintf(stderr,
        "usage: mla_decode_demo --engine FILE [--plugin LIB] [--batch N] [--prompt N] [--steps N] [--no-cuda-graph]\n"
        "       [--rank R --world-size N --nccl-id-file PATH [--nccl-library libnccl.so.2] [--nccl-timeout S]]\n");
}

bool parseInt(char const* text, int32_t& value)
{
    char* end = nullptr;
    long const v = std::strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < 1 || v > (1 << 24))
        return false;
    value = static_cast<int32_t>(v);
    return true;
}

//! Random host input for `tokens` new tokens: token ids, or hidden states as float32/fp16 bit patterns
//! (the demo fills hidden states with small values valid in any float type: zeros plus ones).
std::vector<unsigned char> randomInput(mla::runtime::IoPlan const& plan, int32_t batch, int32_t tokens, size_t bytesPerToken)
{
    std::vector<unsigned char> data(bytesPerToken * batch * tokens, 0);
    std::mt19937 gen(0);
    if (plan.tokens)
    {
        auto* ids = reinterpret_cast<int64_t*>(data.data());
        for (size_t i = 0; i < data.size() / sizeof(int64_t); ++i)
            ids[i] = gen() % 100;
    }
    return data;
}

} // namespace

int main(int argc, char** argv)
{
    mla::runtime::SessionOptions options;
    int32_t prompt = 128, steps = 64;
    for (int i = 1; i < argc; ++i)
    {
        std::string const arg = argv[i];
        bool const hasValue = i + 1 < argc;
        if (arg == "--engine" && hasValue) options.enginePath = argv[++i];
        else if (arg == "--plugin" && hasValue) options.pluginPath = argv[++i];
        else if (arg == "--batch" && hasValue && parseInt(argv[++i], options.batch)) {}
        else if (arg == "--prompt" && hasValue && parseInt(argv[++i], prompt)) {}
        else if (arg == "--steps" && hasValue && parseInt(argv[++i], steps)) {}
        else if (arg == "--no-cuda-graph") options.useCudaGraph = false;
        else if (mla::runtime::Status st; hasValue && parseParallelFlag(arg, argv[i + 1], options.parallel, st))
        {
            ++i;
            if (!st) { std::fprintf(stderr, "error: %s\n", st.message.c_str()); return 2; }
        }
        else { usage(); return 2; }
    }
    std::unique_ptr<mla::runtime::MlaSession> session;
    if (auto status = mla::runtime::MlaSession::create(options, session); !status)
    {
        std::fprintf(stderr, "error: %s\n", status.message.c_str());
        return 1;
    }
    if (auto status = mla::runtime::checkCacheRoom(session->lengths(), prompt + steps, session->maxSeqLen()); !status)
    {
        std::fprintf(stderr, "error: %s\n", status.message.c_str());
        return 1;
    }
    std::printf("%s\n", mla::runtime::describeCacheBinding(session->cachePlan()).c_str());
    size_t const bytesPerToken = session->inputBytesPerToken();
    float prefillMs = 0.f;
    auto input = randomInput(session->plan(), options.batch, prompt, bytesPerToken);
    if (auto status = session->step(input.data(), prompt, &prefillMs); !status)
    {
        std::fprintf(stderr, "error in prefill: %s\n", status.message.c_str());
        return 1;
    }
    std::vector<float> decodeMs;
    auto token = randomInput(session->plan(), options.batch, 1, bytesPerToken);
    for (int32_t s = 0; s < steps; ++s)
    {
        float ms = 0.f;
        if (auto status = session->step(token.data(), 1, &ms); !status)
        {
            std::fprintf(stderr, "error in decode step %d: %s\n", s, status.message.c_str());
            return 1;
        }
        decodeMs.push_back(ms);
    }
    std::printf("layers %d, batch %d, prompt %d, cache rows %d\n", session->plan().numLayers, options.batch, prompt,
        session->maxSeqLen());
    std::printf("prefill: %.3f ms (%.0f tokens/s)\n", prefillMs, options.batch * prompt / (prefillMs * 1e-3));
    using mla::runtime::percentile;
    std::printf("decode (%d steps): p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, %.0f tokens/s at p50\n", steps,
        percentile(decodeMs, 50), percentile(decodeMs, 90), percentile(decodeMs, 99),
        options.batch / (percentile(decodeMs, 50) * 1e-3));
    return 0;
}
