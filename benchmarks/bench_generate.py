"""CPU tokens/s of `generate --onnx` (ONNX Runtime, the token loop of mla_export.run.generate) against
transformers' `generate` on the same weights: a transformers DeepSeek model with random weights is saved,
exported with `--checkpoint --io tokens`, and both decode greedily from the same prompt ids.

    python benchmarks/bench_generate.py [tiny] [v2-lite-2] [--new-tokens 64] [--prompt 32]

tiny: the `tiny` preset's dims (DeepseekV3, 2 layers). v2-lite-2: DeepSeek-V2-Lite's dims (hidden 2048,
16 heads, no q LoRA, 64 routed experts of which 6 per token, 2 shared, vocab 102400), 2 layers (one dense,
one MoE), plain RoPE. Both run float32 on the CPU, batch 1 (tiny also batch 4). Also times the ONNX
Runtime loop with the caches fed through numpy instead of IO-bound OrtValues. Prints one table; the
figures go to RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def model_dims(name: str) -> tuple[str, dict]:
    """(transformers model type, config keyword arguments) of a benchmark model."""
    if name == "tiny":
        c = json.loads((ROOT / "models" / "tiny.json").read_text())
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "kv_lora_rank",
                "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        return "deepseek_v3", {**{k: c[k] for k in keys}, "num_hidden_layers": 2, "num_key_value_heads":
                               c["num_attention_heads"], "first_k_dense_replace": 2, "max_position_embeddings": 8192}
    c = json.loads((ROOT / "models" / "deepseek-v2-lite.json").read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_attention_heads",
            "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
            "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace", "routed_scaling_factor")
    return "deepseek_v2", {**{k: c[k] for k in keys}, "num_hidden_layers": 2, "q_lora_rank": None,
                           "num_key_value_heads": c["num_attention_heads"], "topk_method": "greedy",
                           "norm_topk_prob": False, "max_position_embeddings": 8192}


def save_model(name: str, directory: Path):
    import transformers

    kind, dims = model_dims(name)
    config_class, model_class = {
        "deepseek_v2": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM),
        "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM)}[kind]
    config = config_class(**dims, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = model_class(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # std 1/sqrt(fan_in), norms 1: clear top logits (transformers' std 0.02 makes near-ties)
        for pname, param in model.named_parameters():
            if not pname.endswith("norm.weight") and param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5)
    model.save_pretrained(directory)
    return model


@torch.no_grad()
def time_transformers(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(seconds of generate, seconds of the prefill forward alone), best of 2 after a warm-up run."""
    best, prefill = float("inf"), float("inf")
    model.generate(input_ids=ids, max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
    for _ in range(2):
        start = time.perf_counter()
        model(input_ids=ids)
        prefill = min(prefill, time.perf_counter() - start)
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        best = min(best, time.perf_counter() - start)
    return best, prefill


def time_ours(onnx: Path, ids: torch.Tensor, new_tokens: int, io_binding: bool):
    """The Timings of the faster of 2 runs of the ONNX Runtime loop."""
    from mla_export.graph.onnx_reader import read_export_spec
    from mla_export.run.generate import generate
    from mla_export.run.generate_steps import OnnxRuntimeSteps
    from mla_export.run.sampling import Sampler, Sampling

    model = OnnxRuntimeSteps(onnx, read_export_spec(onnx), io_binding=io_binding)
    runs = [generate(model, ids.tolist(), new_tokens, Sampler(Sampling()), set()) for _ in range(2)]
    return min(runs, key=lambda r: r[1].prefill_s + r[1].decode_s)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["tiny", "v2-lite-2"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch's intra-op threads (transformers); "
                        "1 by default: on a 2-core machine shared with other work, 2 threads made transformers' "
                        "decode 20-35x slower (OpenMP threads waiting on each other); ONNX Runtime keeps its default")
    parser.add_argument("--max-seq-len", type=int, help="cache rows of the export [default: prompt + new tokens]")
    args = parser.parse_args()
    from click.testing import CliRunner

    from mla_export.ui.cli import main as cli

    torch.set_num_threads(args.torch_threads)

    print(f"torch threads {torch.get_num_threads()}; float32; greedy; prompt {args.prompt}, {args.new_tokens} new "
          f"tokens per sequence; cache rows {args.max_seq_len or args.prompt + args.new_tokens}")
    print("| model | batch | transformers tok/s (decode) | ours tok/s (decode) | ratio | ours, caches via numpy | "
          "prefill ours / transformers |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / "ckpt"
            model = save_model(name, directory)
            onnx = Path(tmp) / "m.onnx"
            result = CliRunner().invoke(cli, ["export", "--checkpoint", str(directory), "--io", "tokens",
                                              "--max-seq-len", str(args.max_seq_len or args.prompt + args.new_tokens), "-q",
                                              "-o", str(onnx)], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            for batch in ((1, 4) if name == "tiny" else (1,)):
                ids = torch.randint(2, model.config.vocab_size, (batch, args.prompt),
                                    generator=torch.Generator().manual_seed(1))
                total, prefill = time_transformers(model, ids, args.new_tokens)
                theirs = batch * (args.new_tokens - 1) / (total - prefill)
                bound, fed = [], []  # interleaved, best of 3 each: the machine's other work hits both alike
                for _ in range(3):
                    bound.append(time_ours(onnx, ids, args.new_tokens, io_binding=True))
                    fed.append(time_ours(onnx, ids, args.new_tokens, io_binding=False))
                sequences, timings = max(bound, key=lambda r: r[1].decode_tokens_per_s)
                numpy_timings = max(fed, key=lambda r: r[1].decode_tokens_per_s)[1]
                with torch.no_grad():
                    reference = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                               do_sample=False, pad_token_id=0)[:, args.prompt:].tolist()
                same = sum(s.ids == r for s, r in zip(sequences, reference))
                print(f"| {name} | {batch} | {theirs:.1f} | {timings.decode_tokens_per_s:.1f} | "
                      f"{timings.decode_tokens_per_s / theirs:.2f} | {numpy_timings.decode_tokens_per_s:.1f} | "
                      f"{timings.prefill_s * 1e3:.1f} ms / {prefill * 1e3:.1f} ms | (greedy ids equal: "
                      f"{same}/{batch})", flush=True)
            del model


if __name__ == "__main__":
    main()
