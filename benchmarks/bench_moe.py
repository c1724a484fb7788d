"""Time the DeepseekMoE Triton kernels on a GPU: decode GB/s of expert weights and prefill TFLOP/s against the
device's own peaks, measured in the same run, and against two PyTorch baselines.

    python benchmarks/bench_moe.py [--presets deepseek-v2-lite deepseek-v3] [--decode 1,8,64] [--prefill 4096]
                                   [--dtype bfloat16] [--experts fp8] [--no-baselines] [--json out.json]
    python benchmarks/bench_moe.py --dry-run      # tiny-moe on the CPU under the Triton interpreter (tests)

Measured in the same run: device-to-device copy bandwidth (bytes read + written, as bench_kernels.py) and the
dense matmul rate of the dtype. One MoE layer of each preset (its routed experts only: the DeepseekMoE op),
random weights, random tokens, the preset's own routing rule:
- decode (T = 1, 8, 64 tokens): weight GB/s = bytes of the experts the tokens route to (3 * I * d * elem each,
  counted from the routing of these very tokens) / time; against the copy bandwidth (issue 15: bar 70%, goal
  85%). The step is timed as a CUDA graph replay (how an engine runs it) and also as plain launches.
- prefill (T = 4096): TFLOP/s = 2 * T * top_k * 3 * I * d / time; against the matmul rate (bar 40%, goal 60%),
  and against the roofline max(flops / matmul rate, weight bytes / copy bandwidth): at V3's sizes 4096 tokens
  still read every expert (22.5 GB), so the weights, not the flops, bound the time.
- baselines: the ONNX function body's dense computation (every expert for every token, a dense routing
  matrix; onnx_moe.py) in PyTorch, and moe.moe_reference (a PyTorch loop over the routed experts), each where
  it fits in memory; ratios are their time / the kernels' time. Every row also reports the kernels' max error
  against the PyTorch loop (float32 accumulation) on the same inputs.
--experts fp8 (issue 22): the experts as float8_e4m3fn with 128 x 128 block scales (quantized here from the same
random weights), the device's FP8 path (FP8 x FP8 on sm_89+, weight-only on sm_80/86); weight bytes are then the
FP8 bytes plus the scales, and the error column is against the PyTorch loop on the dequantized weights (so it
holds the activation quantization of the native path).
Exits with a message on a machine without a CUDA GPU (unless --dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

DECODE_TOKENS = (1, 8, 64)
PREFILL_TOKENS = (4096,)
PRESETS = ("deepseek-v2-lite", "deepseek-v3")
DECODE_BAR, DECODE_GOAL = 0.70, 0.85  # of copy bandwidth
PREFILL_BAR, PREFILL_GOAL = 0.40, 0.60  # of the matmul rate


def expert_bytes(config, elem: int, fp8: bool = False) -> int:
    """Bytes of one routed expert's weights: gate, up and down, each I x d (FP8: 1 byte each plus the float32
    scales, one per 128 x 128 block)."""
    d, i = config.hidden_size, config.moe_intermediate_size
    if fp8:
        blocks = -(-2 * i // 128) * -(-d // 128) + -(-d // 128) * -(-i // 128)
        return 3 * i * d + 4 * blocks
    return 3 * i * d * elem


def quantize_experts(w):
    """w [E, R, C] -> (float8_e4m3fn [E, R, C], float32 scales [E, ceil(R/128), ceil(C/128)]): amax / 448 per
    128 x 128 block (1 for an all-zero block), DeepSeek's convention; one expert at a time (V3: 30 GB at once)."""
    import torch

    e, r, c = w.shape
    rb, cb = -(-r // 128), -(-c // 128)
    q = torch.empty(w.shape, device=w.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty(e, rb, cb, device=w.device, dtype=torch.float32)
    for j in range(e):
        padded = torch.zeros(rb * 128, cb * 128, device=w.device, dtype=torch.float32)
        padded[:r, :c] = w[j]
        amax = padded.view(rb, 128, cb, 128).abs().amax(dim=(1, 3))  # [Rb, Cb]
        scale[j] = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
        q[j] = (w[j].float() / scale[j].repeat_interleave(128, 0)[:r].repeat_interleave(128, 1)[:, :c]).to(q.dtype)
    return q, scale


def dequantize_experts(q, scale, dtype):
    """quantize_experts' output as weights in `dtype`, one expert at a time."""
    import torch

    r, c = q.shape[-2:]
    out = torch.empty(q.shape, device=q.device, dtype=dtype)
    for j in range(q.shape[0]):
        out[j] = (q[j].float() * scale[j].repeat_interleave(128, 0)[:r].repeat_interleave(128, 1)[:, :c]).to(dtype)
    return out


def moe_flops(tokens: int, config) -> float:
    """Multiply-adds x 2 of the routed experts for `tokens` tokens (router excluded)."""
    return 2.0 * tokens * config.num_experts_per_tok * 3 * config.moe_intermediate_size * config.hidden_size


def make_layer(config, dtype, device, seed: int = 0):
    """Random DeepseekMoE inputs of one layer: (router_weight, score_bias, gate_up_proj, down_proj) and the rule."""
    import torch

    from mla_export.model.moe import RoutingRule

    g = torch.Generator(device=device).manual_seed(seed)
    e, d, i = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
    router = torch.randn(e, d, generator=g, device=device) / d ** 0.5  # [E, d] float32
    bias = 0.01 * torch.randn(e, generator=g, device=device)  # [E]
    gate_up = torch.randn(e, 2 * i, d, generator=g, device=device, dtype=dtype).div_(d ** 0.5)  # [E, 2I, d]
    down = torch.randn(e, d, i, generator=g, device=device, dtype=dtype).div_(i ** 0.5)  # [E, d, I]
    return (router, bias, gate_up, down), RoutingRule.from_config(config)


def dense_body(x, router, bias, gate_up, down, rule):
    """The ONNX function body's computation (onnx_moe.py) in PyTorch: every expert for every token."""
    import torch

    from mla_export.model.moe import route, router_logits

    weights, experts = route(router_logits(x, router), rule, bias)  # [T, K], [T, K]
    dense = torch.zeros(x.shape[0], rule.num_experts, device=x.device).scatter(1, experts, weights)  # [T, E]
    inter = down.shape[-1]
    gu = torch.matmul(x, gate_up.transpose(1, 2))  # [E, T, 2I]
    act = torch.nn.functional.silu(gu[..., :inter]) * gu[..., inter:]  # [E, T, I]
    out = torch.matmul(act, down.transpose(1, 2))  # [E, T, d]
    return (out.float() * dense.T[..., None]).sum(0).to(x.dtype)  # [T, d]


def dense_bytes(tokens: int, config, elem: int) -> int:
    """Peak extra memory of dense_body (its [E, T, .] intermediates), roughly."""
    e, d, i = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
    return e * tokens * (3 * i + d) * elem + 2 * e * tokens * d * 4


def loop_bytes(tokens: int, config) -> int:
    return tokens * config.hidden_size * 4 * 4 + tokens * config.num_experts_per_tok * config.moe_intermediate_size * 8


class Timer:
    """Median seconds of a call: CUDA events on a GPU, wall time on the CPU (--dry-run)."""

    def __init__(self, cuda: bool, iters: int):
        self.cuda, self.iters = cuda, iters

    def seconds(self, fn, iters: int | None = None) -> float:
        from mla_export.run.measure import time_calls

        n = iters or self.iters
        return statistics.median(time_calls(fn, warmup=min(3, n), iters=n, cuda=self.cuda)) * 1e-3


def graph_call(fn, cuda: bool):
    """`fn` captured once in a CUDA graph (replayed per call), or fn itself when capture fails or off the GPU."""
    if not cuda:
        return fn, False
    import torch

    try:
        fn()  # compile and warm up outside the capture
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        return graph.replay, True
    except Exception as exc:  # capture refused: time plain launches and say so
        print(f"  (CUDA graph capture failed: {type(exc).__name__}: {exc}; timing plain launches)", file=sys.stderr)
        return fn, False


def bench_case(preset: str, config, layer, rule, tokens: int, phase: str, dtype, device, timer: Timer, peaks: dict,
               baselines: bool, fp8=None) -> dict:
    """One timed row. fp8: (gate_up q, gate_up scale, down q, down scale) to run FP8 experts (layer then holds
    their dequantization in `dtype`, for the loop's reference and the baselines)."""
    import torch

    from mla_export.run.compare import compare
    from mla_export.kernels.moe.api import deepseek_moe_triton
    from mla_export.model.moe import moe_reference, route, router_logits

    router, bias, gate_up, down = layer
    elem = torch.finfo(dtype).bits // 8
    g = torch.Generator(device=device).manual_seed(tokens)
    x = torch.randn(tokens, config.hidden_size, generator=g, device=device, dtype=dtype)  # [T, d]
    out = torch.empty_like(x)
    if fp8 is None:
        run = lambda: deepseek_moe_triton(x, router, bias, gate_up, down, rule, out=out)  # noqa: E731
    else:
        run = lambda: deepseek_moe_triton(x, router, bias, fp8[0], fp8[2], rule, fp8[1], fp8[3], out=out)  # noqa: E731
    launches = timer.seconds(run)
    replay, graphed = graph_call(run, timer.cuda)
    seconds = timer.seconds(replay) if graphed else launches
    _, experts = route(router_logits(x, router), rule, bias)
    read = int(experts.unique().numel()) * expert_bytes(config, elem, fp8 is not None)
    flops = moe_flops(tokens, config)
    row = {"preset": preset, "phase": phase, "tokens": tokens, "experts_read": int(experts.unique().numel()),
           "experts": "fp8" if fp8 is not None else str(dtype).removeprefix("torch."),
           "weight_bytes": read, "us": seconds * 1e6, "us_plain_launches": launches * 1e6, "cuda_graph": graphed,
           "weight_GB/s": read / seconds / 1e9, "of_copy_bw": read / seconds / peaks["copy"],
           "TFLOP/s": flops / seconds / 1e12, "of_matmul": flops / seconds / peaks["matmul"]}
    roofline = max(flops / peaks["matmul"], read / peaks["copy"])
    row["of_roofline"] = roofline / seconds
    if phase == "decode":
        row.update(bar=DECODE_BAR, goal=DECODE_GOAL, meets_bar=row["of_copy_bw"] >= DECODE_BAR)
    else:
        row.update(bar=PREFILL_BAR, goal=PREFILL_GOAL, meets_bar=row["of_matmul"] >= PREFILL_BAR)
    free = torch.cuda.mem_get_info()[0] if timer.cuda else 8 << 30
    reference = None
    if loop_bytes(tokens, config) < 0.5 * free:
        loop = lambda: moe_reference(x, router, bias, gate_up, down, rule)  # noqa: E731
        reference = loop()
        check = compare("routed_output", run(), reference, 0.0, 0.0)
        row["max_abs_err_vs_loop"] = check.max_abs_err
        row["cosine_vs_loop"] = check.cosine
        if baselines:
            row["loop_us"] = timer.seconds(loop, iters=max(1, timer.iters // 4)) * 1e6
            row["x_vs_loop"] = row["loop_us"] / row["us"]
    if baselines and dense_bytes(tokens, config, elem) < 0.5 * free:
        dense = lambda: dense_body(x, router, bias, gate_up, down, rule)  # noqa: E731
        row["dense_us"] = timer.seconds(dense, iters=max(1, timer.iters // 4)) * 1e6
        row["x_vs_dense"] = row["dense_us"] / row["us"]
    if timer.cuda:
        torch.cuda.empty_cache()
    return row


def describe(row: dict) -> str:
    share = (f"{100 * row['of_copy_bw']:.0f}% of copy bw" if row["phase"] == "decode"
             else f"{100 * row['of_matmul']:.0f}% of matmul, {100 * row['of_roofline']:.0f}% of roofline")
    extra = "".join(f", x{row[k]:.1f} vs {k[5:]}" for k in ("x_vs_dense", "x_vs_loop") if k in row)
    return (f"{row['preset']} {row['phase']} T={row['tokens']}: {row['us']:.1f} us "
            f"({'graph' if row['cuda_graph'] else 'launches'}; {row['us_plain_launches']:.1f} us launched), "
            f"{row['experts_read']} experts, {row['weight_GB/s']:.0f} GB/s, {row['TFLOP/s']:.1f} TFLOP/s, "
            f"{share}{extra}, max err {row.get('max_abs_err_vs_loop', float('nan')):.3g}")


def peaks_of(cuda: bool, dtype) -> dict:
    """The device's copy bandwidth (bytes/s, read + written) and dense matmul rate (FLOP/s) of `dtype`."""
    import torch

    from mla_export.run.measure import copy_bandwidth_gb_s, matmul_tflops, time_calls

    if cuda:
        return {"copy": copy_bandwidth_gb_s(cuda=True, nbytes=1 << 30, iters=20) * 1e9,
                "matmul": matmul_tflops(dtype) * 1e12}
    a = torch.randn(256, 256, dtype=dtype)
    ms = statistics.median(time_calls(lambda: a @ a, warmup=1, iters=3))
    return {"copy": copy_bandwidth_gb_s(cuda=False, nbytes=16 << 20, iters=3) * 1e9,
            "matmul": 2 * 256 ** 3 / (ms * 1e-3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="model presets whose MoE layer to time")
    parser.add_argument("--decode", default=",".join(map(str, DECODE_TOKENS)), help="decode token counts")
    parser.add_argument("--prefill", default=",".join(map(str, PREFILL_TOKENS)), help="prefill token counts")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--experts", choices=["dtype", "fp8"], default="dtype",
                        help="expert weights in --dtype, or FP8 with 128x128 block scales [default: %(default)s]")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per measurement (median)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the PyTorch baselines")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny-moe on the CPU under the Triton interpreter, 2 calls each: checks the script")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        args.presets, args.decode, args.prefill, args.iters, args.dtype = ["tiny-moe"], "1,8", "300", 2, "float16"
    import torch

    from mla_export.model.hf_config import load_preset

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("bench_moe.py needs an NVIDIA GPU with a CUDA build of torch; none is available here. The kernels "
              "are tested on the CPU by tests/test_moe_kernels.py under the Triton interpreter (and this script's "
              "code by --dry-run).", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, args.dtype)
    peaks = peaks_of(cuda, dtype)
    name = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter, --dry-run)"
    print(f"{name}: copy {peaks['copy'] / 1e9:.0f} GB/s, {args.dtype} matmul {peaks['matmul'] / 1e12:.1f} TFLOP/s")
    timer = Timer(cuda, args.iters)
    rows = []
    for preset in args.presets:
        config = load_preset(preset)
        if not config.n_routed_experts:
            raise SystemExit(f"--presets {preset}: not a MoE model")
        layer, rule = make_layer(config, dtype, device)
        fp8 = None
        if args.experts == "fp8":  # quantized one expert tensor at a time; the layer keeps the dequantized copy
            router, bias, gate_up, down = layer
            gq, gs = quantize_experts(gate_up)
            del gate_up
            dq, ds = quantize_experts(down)
            del down
            fp8 = (gq, gs, dq, ds)
            layer = (router, bias, dequantize_experts(gq, gs, dtype), dequantize_experts(dq, ds, dtype))
        for phase, counts in (("decode", args.decode), ("prefill", args.prefill)):
            for tokens in (int(t) for t in counts.split(",") if t.strip()):
                rows.append(bench_case(preset, config, layer, rule, tokens, phase, dtype, device, timer, peaks,
                                       not args.no_baselines, fp8))
                print(describe(rows[-1]), flush=True)
        layer = fp8 = None
        if cuda:
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "copy_GB/s": peaks["copy"] / 1e9, "matmul_TFLOP/s": peaks["matmul"] / 1e12,
                       "dtype": args.dtype, "experts": args.experts, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
