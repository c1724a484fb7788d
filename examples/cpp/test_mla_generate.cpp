/*
 * Unit test of mla_generate's parts that need no TensorRT runtime (mlaGenerate.h): the command line, the
 * EOS ids read from a sidecar, and the token loop's bookkeeping over a fake step function that records
 * what it is fed. Prints "N passed, N failed" and returns nonzero on any failure.
 */
#include "mlaGenerate.h"

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

mla::runtime::Status parse(std::vector<char const*> args, mla::runtime::GenerateOptions& options)
{
    args.insert(args.begin(), "mla_generate");
    return mla::runtime::parseGenerateArgs(static_cast<int>(args.size()), args.data(), options);
}
} // namespace

int main()
{
    using namespace mla::runtime;
    GenerateOptions o;
    // Command line.
    expect(bool(parse({"--engine", "m.engine", "--plugin", "l.so", "--prompt-ids", "1,2,30", "--max-new-tokens",
               "5"}, o)), "a full command line parses");
    expect(o.session.enginePath == "m.engine" && o.session.pluginPath == "l.so" && o.maxNewTokens == 5
            && o.promptIds == std::vector<int64_t>{1, 2, 30} && !o.eosGiven && o.session.batch == 1,
        "its values");
    expect(bool(parse({"--engine", "m.engine", "--prompt-ids", "7"}, o)) && o.maxNewTokens == 32, "default budget");
    expect(bool(parse({"--engine", "m", "--prompt-ids", "7", "--eos", "2,3"}, o)) && o.eosGiven
            && o.eosIds == std::vector<int64_t>{2, 3}, "--eos");
    expect(!parse({"--prompt-ids", "1"}, o), "no --engine refused");
    expect(!parse({"--engine", "m"}, o), "no --prompt-ids refused");
    expect(!parse({"--engine", "m", "--prompt-ids", ""}, o), "empty id list refused");
    expect(!parse({"--engine", "m", "--prompt-ids", "1,,2"}, o), "empty id refused");
    expect(!parse({"--engine", "m", "--prompt-ids", "1,-2"}, o), "negative id refused");
    expect(!parse({"--engine", "m", "--prompt-ids", "1,x"}, o), "non-number refused");
    expect(!parse({"--engine", "m", "--prompt-ids", "1", "--max-new-tokens", "0"}, o), "zero budget refused");
    expect(!parse({"--engine", "m", "--prompt-ids", "1", "--max-new-tokens", "3x"}, o), "bad budget refused");
    expect(!parse({"--engine", "m", "--prompt-ids", "1", "--steps", "3"}, o), "unknown option refused");
    expect(!parse({"--engine", "m", "--prompt-ids"}, o), "option without a value refused");

    // EOS from the sidecar (its copy of the ONNX metadata).
    std::vector<int64_t> eos;
    expect(bool(eosIdsFromSidecar(R"({"onnx_metadata": {"mla_export.eos_token_ids": "1,128001"}})", eos))
            && eos == std::vector<int64_t>{1, 128001}, "sidecar EOS ids");
    expect(bool(eosIdsFromSidecar(R"({"onnx_metadata": {"mla_export.eos_token_ids": ""}})", eos)) && eos.empty(),
        "none recorded");
    expect(bool(eosIdsFromSidecar(R"({"onnx_metadata": {}})", eos)) && eos.empty(), "an older sidecar: none");
    expect(!eosIdsFromSidecar(R"({"onnx_metadata": {"mla_export.eos_token_ids": "1,a"}})", eos), "damaged refused");

    // The loop over a fake step: the model answers input.back() + 1 and records what it is fed.
    std::vector<std::vector<int64_t>> fed;
    StepFunction fake = [&](std::vector<int64_t> const& input, int64_t& next) {
        fed.push_back(input);
        next = input.back() + 1;
        return Status::success();
    };
    std::vector<int64_t> printed;
    auto print = [&](int64_t id) { printed.push_back(id); };
    LoopResult r;
    expect(bool(runTokenLoop({5, 6, 7}, 4, {}, 64, fake, print, r)), "loop runs");
    expect(r.ids == std::vector<int64_t>{8, 9, 10, 11} && !r.endedOnEos, "budget reached: 4 ids");
    expect(printed == r.ids, "each id printed as it came");
    expect(fed.size() == 4 && fed[0] == std::vector<int64_t>{5, 6, 7} && fed[1] == std::vector<int64_t>{8}
            && fed[3] == std::vector<int64_t>{10}, "prefill the prompt, then feed each id back alone");
    fed.clear();
    expect(bool(runTokenLoop({5}, 10, {3, 8}, 64, fake, nullptr, r)) && r.ids == std::vector<int64_t>{6, 7, 8}
            && r.endedOnEos && fed.size() == 3, "ends on EOS, EOS kept, not fed");
    expect(bool(runTokenLoop({1, 2, 3}, 6, {}, 8, fake, nullptr, r)), "3 + 6 - 1 = 8 rows fit 8");
    expect(!runTokenLoop({1, 2, 3}, 7, {}, 8, fake, nullptr, r), "9 rows refused for a cache of 8");
    expect(!runTokenLoop({}, 4, {}, 8, fake, nullptr, r), "empty prompt refused");
    StepFunction failing = [&](std::vector<int64_t> const& input, int64_t& next) {
        next = 0;
        return input.size() == 1 ? Status::error("boom") : Status::success();
    };
    Status const s = runTokenLoop({1, 2}, 5, {}, 64, failing, nullptr, r);
    expect(!s && s.message == "boom" && r.ids.size() == 1, "a failing step stops the loop with its message");

    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
