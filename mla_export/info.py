"""Sizes and costs of a config: cache per token per layer (MLA vs MHA/GQA/MQA) and the cost of
pre-folded vs run-time absorbed projections."""

from __future__ import annotations

from dataclasses import dataclass

from .config import MlaConfig

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}


@dataclass(frozen=True)
class CacheRow:
    scheme: str
    elements: int
    note: str


def cache_table(c: MlaConfig, gqa_groups: int = 8) -> list[CacheRow]:
    """Cached values per token per layer for each attention scheme at this config's dims."""
    h, dh, dr, dv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    return [
        CacheRow("MHA", 2 * h * dh, f"K and V of {h} heads x {dh}"),
        CacheRow("MHA (decoupled RoPE keys)", h * (dh + dr) + h * dv, f"K {h}x{dh + dr}, V {h}x{dv}"),
        CacheRow(f"GQA ({gqa_groups} groups)", 2 * gqa_groups * dh, f"K and V of {gqa_groups} groups x {dh}"),
        CacheRow("MQA", 2 * dh, f"one K and V of {dh}"),
        CacheRow("MLA", c.cache_width, f"c_kv {c.kv_lora_rank} + k_pe {dr}"),
    ]


@dataclass(frozen=True)
class ProjectionCost:
    """Multiply-adds per token (= weight elements) of one layer's attention projections."""

    shared: int  # q_a_proj, the q_pe rows, kv_a_proj_with_mqa: identical in both forms
    absorbed: int  # W_UQ(nope), W_UK, W_UV, W_O applied at run time
    prefolded: int  # q_latent_proj and out_proj

    @property
    def ratio(self) -> float:
        return (self.shared + self.prefolded) / (self.shared + self.absorbed)

    @property
    def smaller_form(self) -> str:
        """The `--absorb` form with fewer weights, hence fewer multiply-adds and weight bytes read per
        token: smaller, and faster wherever the projections bound the step ("prefolded" on a tie)."""
        return "runtime" if self.absorbed < self.prefolded else "prefolded"


def projection_cost(c: MlaConfig) -> ProjectionCost:
    h, dh, dr, dv, dc, d = (c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                            c.kv_lora_rank, c.hidden_size)
    q_in = c.q_lora_rank if c.q_lora_rank is not None else d
    shared = (d * c.q_lora_rank if c.q_lora_rank is not None else 0) + q_in * h * dr + d * c.cache_width
    absorbed = q_in * h * dh + h * dh * dc + h * dc * dv + h * dv * d
    prefolded = q_in * h * dc + h * dc * d
    return ProjectionCost(shared, absorbed, prefolded)


def prefold_break_even(c: MlaConfig) -> tuple[float, float]:
    """(query, output) widths below which pre-folding pays, per head.

    Query: q_in*Dc (folded) < q_in*Dn + Dn*Dc (W_UQ then W_UK) iff q_in < Dn*Dc/(Dc-Dn); output:
    Dc*d < Dc*Dv + Dv*d iff d < Dv*Dc/(Dc-Dv). Infinite where Dc <= Dn (or Dv): folding always pays.
    """
    dn, dv, dc = c.qk_nope_head_dim, c.v_head_dim, c.kv_lora_rank
    return (dn * dc / (dc - dn) if dc > dn else float("inf"), dv * dc / (dc - dv) if dc > dv else float("inf"))


def absorb_advice(c: MlaConfig, dtype: str = "bfloat16") -> str:
    """One sentence saying which `--absorb` form is smaller and faster for `c`, with the numbers."""
    cost = projection_cost(c)
    runtime, prefolded = cost.shared + cost.absorbed, cost.shared + cost.prefolded
    best, other = ("runtime", "prefolded") if cost.smaller_form == "runtime" else ("prefolded", "runtime")
    sizes = {"runtime": runtime, "prefolded": prefolded}
    q_in, q_name = (c.q_lora_rank, "q_lora_rank") if c.q_lora_rank is not None else (c.hidden_size, "hidden_size")
    q_even, o_even = prefold_break_even(c)

    def size(elements: int) -> str:
        nbytes = elements * DTYPE_BYTES[dtype]
        return f"{nbytes / 2**20:,.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.1f} KiB"

    return (f"--absorb {best} is smaller and faster for {c.name}: {size(sizes[best])} of attention weights "
            f"({dtype}) and {sizes[best]:,} multiply-adds per token per layer, against {size(sizes[other])} and "
            f"{sizes[other]:,} with --absorb {other} ({max(runtime, prefolded) / min(runtime, prefolded):.2f}x). "
            f"Pre-folding pays only for narrow inputs: the query path where {q_name} ({q_in}) < Dn*Dc/(Dc-Dn) = "
            f"{q_even:.1f}, the output path where hidden_size ({c.hidden_size}) < Dv*Dc/(Dc-Dv) = {o_even:.1f}.")


def attention_core_macs(c: MlaConfig, context: int) -> int:
    """Multiply-adds per new token of the latent attention core over `context` cached rows."""
    return c.num_attention_heads * context * (c.cache_width + c.kv_lora_rank)


def rope_rows(c: MlaConfig) -> list[tuple[str, str]]:
    """The effective RoPE parameters (what the export uses and records), defaults filled in."""
    rows = [(key, f"{value:g}" if isinstance(value, float) else str(value))
            for key, value in c.rope_parameters.items()]
    scale = 1.0 if c.rope_scaling is None else c.rope_scaling.cos_sin_scale
    rows.append(("cos/sin scale", f"{scale:.6g}"))
    rows.append(("rope_interleave", "true (pairs)" if c.rope_interleave else
                 "false (halves in the checkpoint, permuted to pairs at load)"))
    return rows


def rope_table(c: MlaConfig):
    from rich.table import Table

    table = Table(title=f"{c.name}: RoPE", show_header=False)
    for key, value in rope_rows(c):
        table.add_row(key, value)
    return table


def parameter_rows(c: MlaConfig, dtype: str) -> list[tuple[str, str]]:
    """Total and per-token parameters, routed-expert bytes a decode token reads, and the export's size on disk
    per dtype and form (embeddings and LM head included, as `--io tokens` exports them)."""
    from .footprint import model_counts

    counts = model_counts(c)
    moe_layers = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers))
    nbytes = DTYPE_BYTES[dtype]
    rows = [("parameters", f"{counts.total / 1e9:,.3f} B"),
            ("activated per token", f"{counts.activated / 1e9:,.3f} B"),
            ("MoE layers", f"{moe_layers} of {c.num_hidden_layers}")]
    if moe_layers:
        rows += [("routed expert parameters", f"{counts.expert / 1e9:,.3f} B"),
                 (f"expert bytes per decode token ({dtype})",
                  f"{counts.activated_expert * nbytes / 2**30:,.2f} GiB ({c.num_experts_per_tok} experts x "
                  f"{moe_layers} layers)")]
    for name in ("float32", "float16", "bfloat16"):
        size = DTYPE_BYTES[name]
        rows.append((f"on disk, {name}", f"{counts.exported * size / 2**30:,.1f} GiB pre-folded, "
                                         f"{counts.total * size / 2**30:,.1f} GiB runtime"))
    return rows


def render_info(c: MlaConfig, dtype: str = "bfloat16", context: int = 4096, console=None,
                absorb: str | None = None) -> None:
    """Print dims, the cache table and the projection costs with rich; `absorb` is the form an
    exported file holds (None for a config)."""
    from rich.table import Table

    from .console import make_console

    console = console or make_console()
    nbytes = DTYPE_BYTES[dtype]
    dims = Table(title=f"{c.name}: MLA dims", show_header=False)
    for field in ("hidden_size", "num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                  "qk_rope_head_dim", "v_head_dim", "num_hidden_layers", "max_position_embeddings"):
        dims.add_row(field, str(getattr(c, field)))
    dims.add_row("softmax_scale", f"{c.softmax_scale:.6g}")
    console.print(dims)
    console.print(rope_table(c))
    params = Table(title=f"{c.name}: parameters", show_header=False)
    for key, value in parameter_rows(c, dtype):
        params.add_row(key, value)
    console.print(params)

    cache = Table(title=f"Cache per token per layer ({dtype})")
    for column in ("scheme", "values", "bytes", f"whole model at {context} tokens", "vs MLA", "layout"):
        cache.add_column(column)
    mla = c.cache_width
    for row in cache_table(c):
        whole = row.elements * nbytes * context * c.num_hidden_layers
        cache.add_row(row.scheme, str(row.elements), str(row.elements * nbytes), f"{whole / 2**30:.2f} GiB",
                      f"{row.elements / mla:.2f}x", row.note)
    console.print(cache)

    cost = projection_cost(c)
    proj = Table(title="Attention projections per token per layer")
    for column in ("form", "multiply-adds", f"weight bytes ({dtype})", "vs absorbed"):
        proj.add_column(column)
    for form, name, value in (("runtime", "run-time absorbed", cost.shared + cost.absorbed),
                              ("prefolded", "pre-folded", cost.shared + cost.prefolded)):
        label = f"{name} (--absorb {form}{', this file' if form == absorb else ''})"
        proj.add_row(label, f"{value:,}", f"{value * nbytes / 2**20:,.1f} MiB",
                     f"{value / (cost.shared + cost.absorbed):.2f}x")
    console.print(proj)
    if absorb is not None:
        console.print(f"absorb: {absorb} (recorded in the file's metadata)")
    console.print(absorb_advice(c, dtype))
    console.print(f"Latent attention core at {context} cached tokens: {attention_core_macs(c, context):,} "
                  "multiply-adds per new token per layer (same in both forms).")
