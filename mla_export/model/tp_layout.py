"""Whether a config splits over `--tp N` ranks in DeepSeek-V3's tensor-parallel layout (`inference/model.py`),
and if not, the one field that does not.

Every rank takes 1/N of: the attention heads (num_attention_heads), the dense MLP's intermediate_size, the
routed experts (n_routed_experts, whole experts), the shared experts' width (moe_intermediate_size *
n_shared_experts) and, with --io tokens, the vocabulary (embedding and LM head rows). With --quant fp8 each
rank's share of a split FP8 matrix must keep the whole model's 128x128 blocks, so that its block scales are
the whole model's: it starts on a block edge, or lies inside one block (whose scale it shares).
"""

from __future__ import annotations

from ..common.contract import MAX_TP
from ..common.errors import UserError
from .config import MlaConfig

FP8_BLOCK = 128  # DeepSeek's weight_block_size, rows and columns


def tp_choices(c: MlaConfig, io: str) -> list[int]:
    """The --tp values (powers of two up to MAX_TP) that split every field of `c`."""
    return [n for n in _powers_of_two() if split_fields(c, n, io) == []]


def _powers_of_two() -> list[int]:
    return [1 << i for i in range(MAX_TP.bit_length()) if 1 << i <= MAX_TP]


def split_fields(c: MlaConfig, tp: int, io: str) -> list[tuple[str, int]]:
    """The (field, value) pairs that `tp` ranks split and that are not a multiple of `tp`, in the order the
    layout splits them: heads, dense MLP, routed experts, shared experts, vocabulary."""
    layers = range(c.num_hidden_layers)
    fields = [("num_attention_heads", c.num_attention_heads)]
    if any(not c.is_moe_layer(i) for i in layers):
        fields.append(("intermediate_size", c.intermediate_size))
    if any(c.is_moe_layer(i) for i in layers):
        fields.append(("n_routed_experts", c.n_routed_experts))
        if c.n_shared_experts:
            fields.append(("moe_intermediate_size*n_shared_experts", c.moe_intermediate_size * c.n_shared_experts))
    if io == "tokens":
        fields.append(("vocab_size", c.vocab_size))
    return [(name, value) for name, value in fields if value % tp]


def fp8_shard_widths(c: MlaConfig, tp: int, absorb: str) -> list[tuple[str, int]]:
    """(what, values) of each rank's share of every split FP8 matrix, along the axis that is split."""
    h, dh, dr, dv, dc = (c.num_attention_heads // tp, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                         c.kv_lora_rank)
    if absorb == "prefolded":
        widths = [("q_latent_proj's rows and out_proj's columns", h * dc), ("q_pe_proj's rows", h * dr)]
    else:
        widths = [("q_up_proj's rows", h * (dh + dr)), ("o_proj's columns", h * dv)]
    layers = range(c.num_hidden_layers)
    if any(not c.is_moe_layer(i) for i in layers):
        widths.append(("the dense MLP's intermediate_size", c.intermediate_size // tp))
    if any(c.is_moe_layer(i) for i in layers) and c.n_shared_experts:
        widths.append(("the shared experts' width", c.moe_intermediate_size * c.n_shared_experts // tp))
    return widths


def block_slices_ok(share: int, tp: int, block: int = FP8_BLOCK) -> bool:
    """Whether each of `tp` consecutive `share`-wide slices of a dimension keeps whole blocks of it: it starts
    on a block edge, or lies inside one block."""
    return all(start % block == 0 or start // block == (start + share - 1) // block
               for start in range(0, share * tp, share))


def tp_problem(c: MlaConfig, tp: int, io: str = "tokens", quant: str = "none", absorb: str = "prefolded") -> str | None:
    """Why `c` does not split over `tp` ranks (one message naming the field and the fix), or None if it does."""
    if not (isinstance(tp, int) and 1 <= tp <= MAX_TP and tp & (tp - 1) == 0):
        return f"--tp {tp}: expected a power of two from 1 to {MAX_TP}"
    bad = split_fields(c, tp, io)
    if bad:
        name, value = bad[0]
        choices = ", ".join(str(n) for n in tp_choices(c, io))
        return (f"--tp {tp}: {c.name}'s {name}={value} is not a multiple of {tp} (each rank takes 1/{tp}); "
                f"pass --tp {choices}")
    if quant == "fp8" and tp > 1:
        for what, width in fp8_shard_widths(c, tp, absorb):
            if not block_slices_ok(width, tp):
                return (f"--quant fp8 --tp {tp}: a rank's share of {what} is {width} values, which cuts "
                        f"{FP8_BLOCK}-value FP8 blocks; pass a smaller --tp")
    return None


def check_tp(c: MlaConfig, tp: int, io: str = "tokens", quant: str = "none", absorb: str = "prefolded") -> None:
    """Refuse (UserError) a `tp` that does not split `c` (see `tp_problem`)."""
    problem = tp_problem(c, tp, io, quant, absorb)
    if problem:
        raise UserError(problem)
