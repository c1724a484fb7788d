"""The values of an FP8 export form's weights (`model/fp8_forms.py`), one layer (or one expert) at a time.

Each FP8 weight is made one of two ways:

- **kept**: it is a checkpoint weight, or whole 128-row blocks of one (q_a_proj, kv_a_proj_with_mqa,
  q_b_proj as the run-time form's q_up_proj, o_proj, the MLPs and experts; W_UK^T / W_UV per head from
  kv_b_proj when qk_nope_head_dim and v_head_dim are multiples of 128; an expert's gate and up rows when
  moe_intermediate_size is). From a DeepSeek FP8 checkpoint its bytes and scales are the checkpoint's, bit
  for bit (rows moved only within a 128-row block by the RoPE permutation, which leaves every block's
  scale valid); from any other source it is quantized from its float32 value (`fp8.quantize_blocks`).
- **re-quantized**: a product or a slice that cuts blocks (the pre-folded q_latent_proj = W_UK^T W_UQ,
  out_proj = W_O W_UV, computed in float64 from the dequantized factors; q_pe_proj, whose rows cut the
  checkpoint's blocks; W_UK / W_UV or gate/up when the dims are not multiples of 128): quantized from
  its float value, which adds an error that `requantized_weights` names and `info` reports.
"""

from __future__ import annotations

import torch

from ..model.config import MlaConfig
from ..model.fp8 import BLOCK, quantize_blocks
from ..model.folding import export_attention_state
from .weights import WeightSource, checkpoint_name

Fp8Pair = tuple[torch.Tensor, torch.Tensor]  # (q float8_e4m3fn [..., R, C], scale_inv float32 [..., R/128, C/128])
SCALE = ".weight_scale_inv"


def stored_fp8(source: WeightSource, name: str, shape: tuple[int, ...]) -> Fp8Pair | None:
    """The checkpoint's own FP8 bytes and scales of tensor `name` (RoPE rows moved as `read` moves them),
    or None when the source holds it in another type (then quantize its float value)."""
    reader = getattr(source, "read_fp8", None)
    return reader(name, shape) if reader is not None else None


def kept_fp8(source: WeightSource, name: str, shape: tuple[int, ...]) -> Fp8Pair:
    """Checkpoint tensor `name` as an FP8 pair: its own bytes where it is FP8, else quantized."""
    pair = stored_fp8(source, name, shape)
    return pair if pair is not None else quantize_blocks(source.read(name, shape))


def _heads_aligned(config: MlaConfig) -> bool:
    """Whether W_UK and W_UV per head are whole 128-row blocks of kv_b_proj."""
    return config.qk_nope_head_dim % BLOCK == 0 and config.v_head_dim % BLOCK == 0


def _kv_b_pairs(config: MlaConfig, source: WeightSource, prefix: str) -> tuple[Fp8Pair, Fp8Pair] | None:
    """(W_UK^T [H, Dc, Dn], W_UV [H, Dv, Dc]) cut from kv_b_proj's FP8 bytes and scales, or None when the
    checkpoint does not hold kv_b_proj in FP8 or the heads cut its blocks."""
    c = config
    heads, d_h, d_v, d_c = c.num_attention_heads, c.qk_nope_head_dim, c.v_head_dim, c.kv_lora_rank
    pair = stored_fp8(source, checkpoint_name(prefix + "kv_b_proj.weight"), (heads * (d_h + d_v), d_c))
    if pair is None or not _heads_aligned(c):
        return None
    q, scale = pair[0].view(heads, d_h + d_v, d_c), pair[1].view(heads, (d_h + d_v) // BLOCK, -1)
    w_uk = (q[:, :d_h].transpose(1, 2).contiguous(), scale[:, :d_h // BLOCK].transpose(1, 2).contiguous())
    w_uv = (q[:, d_h:].contiguous(), scale[:, d_h // BLOCK:].contiguous())
    return w_uk, w_uv


def attention_fp8_state(config: MlaConfig, source: WeightSource, unfolded: dict[str, torch.Tensor], prefix: str,
                        absorb: str) -> dict[str, torch.Tensor]:
    """The FP8 form's attention parameters of one layer (names relative to `self_attn.`, each FP8 weight as
    `<name>.weight` and `<name>.weight_scale_inv`; the norms float32) from the unfolded attention's float32
    parameters `unfolded` (names relative to `self_attn.`) and the source (`prefix`: `layers.{i}.self_attn.`)."""
    c = config
    heads, d_h, d_c = c.num_attention_heads, c.qk_nope_head_dim, c.kv_lora_rank
    out = {name: unfolded[name] for name in ("q_compression.q_a_layernorm.weight", "kv_a_layernorm.weight")
           if name in unfolded}
    kept = {"kv_a_proj_with_mqa": "kv_a_proj_with_mqa.weight"}
    if c.q_lora_rank is not None:
        kept["q_compression.q_a_proj"] = "q_compression.q_a_proj.weight"
    pairs: dict[str, Fp8Pair] = {}
    if absorb == "prefolded":
        folded = export_attention_state(c, unfolded, torch.float32, absorb)
        for name in ("q_latent_proj", "q_pe_proj", "out_proj"):
            pairs[name] = quantize_blocks(folded[name + ".weight"])
    else:
        kept["q_up_proj"] = "q_b_proj.weight" if c.q_lora_rank is not None else "q_proj.weight"
        kept["o_proj"] = "o_proj.weight"
        cut = _kv_b_pairs(c, source, prefix)
        if cut is not None:
            pairs["w_uk"], pairs["w_uv"] = cut
        else:
            kv_b = unfolded["kv_b_proj.weight"].view(heads, d_h + c.v_head_dim, d_c)  # [H, Dn + Dv, Dc]
            pairs["w_uk"] = quantize_blocks(kv_b[:, :d_h].transpose(1, 2))  # [H, Dc, Dn]
            pairs["w_uv"] = quantize_blocks(kv_b[:, d_h:])  # [H, Dv, Dc]
    for name, param in kept.items():
        value = unfolded[param]
        pairs[name] = kept_fp8(source, checkpoint_name(prefix + param), tuple(value.shape))
    for name, (q, scale) in pairs.items():
        out[name + ".weight"], out[name + SCALE] = q, scale
    return out


def expert_fp8(source: WeightSource, prefix: str, kind: str, expert: int, config: MlaConfig) -> Fp8Pair:
    """Routed expert `expert`'s FP8 pair: gate_up [2I, d] (gate rows, then up rows) or down [d, I]; `prefix`
    is the checkpoint's `model.layers.{i}.mlp.experts`."""
    inter, d = config.moe_intermediate_size, config.hidden_size
    if kind == "down_proj":
        return kept_fp8(source, f"{prefix}.{expert}.down_proj.weight", (d, inter))
    names = [f"{prefix}.{expert}.{half}.weight" for half in ("gate_proj", "up_proj")]
    stored = [stored_fp8(source, name, (inter, d)) for name in names]
    if inter % BLOCK == 0 and all(pair is not None for pair in stored):
        return torch.cat([stored[0][0], stored[1][0]]), torch.cat([stored[0][1], stored[1][1]])
    return quantize_blocks(torch.cat([source.read(name, (inter, d)) for name in names]))


def requantized_weights(config: MlaConfig, absorb: str) -> list[str]:
    """The FP8 weights of a layer that are re-quantized (never a checkpoint's bytes): folded products and
    slices that cut 128-row blocks."""
    names = ["q_latent_proj", "q_pe_proj", "out_proj"] if absorb == "prefolded" else []
    if absorb == "runtime" and not _heads_aligned(config):
        names += ["w_uk", "w_uv"]
    if config.n_routed_experts and config.moe_intermediate_size % BLOCK:
        names.append("experts.gate_up_proj")
    return names
