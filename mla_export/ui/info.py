"""Sizes and costs of a config: parameters and weights, the cost of pre-folded vs run-time absorbed
projections, the per-rank figures of --tp; the cache figures come from `info_cache.py`."""

from __future__ import annotations

from dataclasses import dataclass

from ..common.console import size_text
from ..model.config import MlaConfig
from .info_cache import DTYPE_BYTES, cache_table, dtype_label, latent_cache_dict, mla_row, scheme_bytes

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


DIM_FIELDS = ("hidden_size", "num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
              "qk_rope_head_dim", "v_head_dim", "num_hidden_layers", "max_position_embeddings")


def info_dict(c: MlaConfig, dtype: str = "bfloat16", context: int = 4096, absorb: str | None = None,
              tp: int | None = None, io: str = "tokens", kv_cache_dtype: str = "model", cache: str = "contiguous",
              page_size: int = 64, memory: int | None = None) -> dict:
    """Everything `info` shows, as plain numbers (what `info --json` prints): dims, RoPE, parameters and sizes
    on disk, cache per token per layer by scheme (`kv_cache_dtype`), the latent cache of `cache` layout;
    projection costs of both `--absorb` forms; with `memory` (bytes), the sequences that fit
    (`info_cache.sizing_dict`); with `tp`, the per-rank figures of a `--tp` export (`tensor_parallel_dict`)."""
    from ..model.footprint import model_counts
    from .info_cache import sizing_dict

    nbytes = DTYPE_BYTES[dtype]
    counts = model_counts(c)
    moe_layers = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers))
    cost = projection_cost(c)
    runtime, prefolded = cost.shared + cost.absorbed, cost.shared + cost.prefolded
    q_even, o_even = prefold_break_even(c)
    parameters = {"total": counts.total, "activated_per_token": counts.activated, "moe_layers": moe_layers,
                  "layers": c.num_hidden_layers,
                  "on_disk_bytes": {name: {"prefolded": counts.exported * size, "runtime": counts.total * size}
                                    for name, size in DTYPE_BYTES.items() if name != "fp8"}}
    if moe_layers:
        parameters.update(routed_expert=counts.expert, experts_per_token=c.num_experts_per_tok,
                          expert_bytes_per_decode_token=counts.activated_expert * nbytes)
    from ..model.footprint import weight_bytes
    from ..weights.fp8_values import requantized_weights

    weight_element = nbytes if dtype != "fp8" else 2  # FP8 caches go with bfloat16 activations
    parameters["weights_by_quant"] = {f"{quant} {form}": weight_bytes(c, weight_element, quant, form)
                                      for quant in ("none", "fp8") for form in ("prefolded", "runtime")}
    parameters["fp8_requantized"] = {form: requantized_weights(c, form) for form in ("prefolded", "runtime")}
    parallel = {} if tp is None else {"tensor_parallel": tensor_parallel_dict(c, tp, dtype, context, io,
                                                                              kv_cache_dtype)}
    if memory is not None:
        parallel["cache_sizing"] = sizing_dict(c, dtype, kv_cache_dtype, cache, page_size, context, memory)
    mla_bytes = scheme_bytes(c, mla_row(c), dtype, kv_cache_dtype)
    return {
        "model": c.name, "dtype": dtype, "context": context, "absorb": absorb,
        "dims": {**{f: getattr(c, f) for f in DIM_FIELDS}, "softmax_scale": c.softmax_scale},
        "rope": dict(rope_rows(c)),
        "parameters": parameters,
        "cache_per_token_per_layer": [
            {"scheme": r.scheme, "layout": r.note, "values": r.elements, "bytes": nb,
             "whole_model_bytes": nb * context * c.num_hidden_layers, "vs_mla": nb / mla_bytes}
            for r, nb in ((r, scheme_bytes(c, r, dtype, kv_cache_dtype)) for r in cache_table(c))],
        "latent_cache": latent_cache_dict(c, dtype, kv_cache_dtype, cache, page_size, context),
        "projections_per_token_per_layer": {
            "runtime": {"multiply_adds": runtime, "weight_bytes": runtime * nbytes},
            "prefolded": {"multiply_adds": prefolded, "weight_bytes": prefolded * nbytes},
            "smaller_form": cost.smaller_form, "prefold_break_even": {"query": q_even, "output": o_even}},
        "attention_core_multiply_adds_per_token_per_layer": attention_core_macs(c, context),
    } | parallel


def count_text(n: int) -> str:
    """A parameter count, exact, with its order of magnitude: 15,706,484,224 (15.71 B)."""
    for scale, unit in ((1e9, "B"), (1e6, "M")):
        if n >= scale:
            return f"{n:,} ({n / scale:,.2f} {unit})"
    return f"{n:,}"


def render_info(c: MlaConfig, dtype: str = "bfloat16", context: int = 4096, console=None,
                absorb: str | None = None, requant_errors: list[dict[str, float]] | None = None,
                tp: int | None = None, io: str = "tokens", kv_cache_dtype: str = "model", cache: str = "contiguous",
                page_size: int = 64, memory: int | None = None) -> None:
    """Print dims, RoPE, parameters, weights by --quant, the cache table and the projection costs, laid out
    for 80 columns; `absorb` is the form an exported file holds (None for a config); `requant_errors`, per
    layer of an FP8 export, its re-quantized weights' measured errors; the latent cache of `cache` layout and
    `kv_cache_dtype`, with `memory` the sequences that fit; with `tp`, the per-rank figures of `export --tp`
    last."""
    from ..common.console import add_columns, make_console, prose, table
    from .info_cache import latent_cache_text, render_sizing

    console = console or make_console()
    data = info_dict(c, dtype, context, absorb, tp, io, kv_cache_dtype, cache, page_size, memory)
    dims = table(f"{c.name}: MLA dims", show_header=False)
    add_columns(dims, "field", "value", numbers_from=1)
    for key, value in data["dims"].items():
        dims.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    rope = table(f"{c.name}: RoPE", show_header=False)
    add_columns(rope, "field", "value", numbers_from=2)
    for key, value in data["rope"].items():
        rope.add_row(key, value)

    p = data["parameters"]
    params = table(f"{c.name}: parameters", show_header=False)
    add_columns(params, "what", "value", numbers_from=2)
    params.add_row("parameters", count_text(p["total"]))
    params.add_row("activated per token", count_text(p["activated_per_token"]))
    params.add_row("MoE layers", f"{p['moe_layers']} of {p['layers']}")
    if p["moe_layers"]:
        params.add_row("routed expert parameters", count_text(p["routed_expert"]))
        params.add_row(f"expert bytes per decode token ({dtype})",
                       f"{size_text(p['expert_bytes_per_decode_token'])} ({p['experts_per_token']} experts x "
                       f"{p['moe_layers']} layers)")
    disk = table(f"{c.name}: export on disk (with embeddings, LM head)")
    add_columns(disk, "dtype", "--absorb prefolded", "--absorb runtime")
    for name, sizes in p["on_disk_bytes"].items():
        disk.add_row(name, size_text(sizes["prefolded"]), size_text(sizes["runtime"]))

    element = "bfloat16" if dtype == "fp8" else dtype
    quant = table(f"{c.name}: weights by --quant (FP8: e4m3, 128x128 scales; others {element})")
    add_columns(quant, "--quant, --absorb", "first layer", "last layer", "whole model", "per decode token")
    for label, sizes in p["weights_by_quant"].items():
        quant.add_row(label, size_text(sizes["layers"][0]), size_text(sizes["layers"][-1]), size_text(sizes["total"]),
                      size_text(sizes["per_decode_token"]))

    cache = table(f"Cache per token per layer ({dtype_label(dtype, kv_cache_dtype, others=True)}), and for the "
                  f"whole model at {context:,} tokens")
    add_columns(cache, "scheme", "layout", "values", "bytes", "whole model", "vs MLA", numbers_from=2)
    for row in data["cache_per_token_per_layer"]:
        cache.add_row(row["scheme"], row["layout"], f"{row['values']:,}", f"{row['bytes']:,}",
                      size_text(row["whole_model_bytes"]), f"{row['vs_mla']:.2f}x")

    proj = table("Attention projections per token per layer")
    add_columns(proj, "--absorb", "multiply-adds", f"weights ({dtype})", "vs runtime")
    forms = data["projections_per_token_per_layer"]
    for form in ("runtime", "prefolded"):
        label = f"{form} (this file)" if form == absorb else form
        proj.add_row(label, f"{forms[form]['multiply_adds']:,}",
                     size_text(forms[form]["weight_bytes"], unit_of=forms["runtime"]["weight_bytes"]),
                     f"{forms[form]['multiply_adds'] / forms['runtime']['multiply_adds']:.2f}x")
    for i, part in enumerate((dims, rope, params, disk, quant, cache, proj)):
        if i:
            console.print()
        console.print(part)
    console.print()
    requantized = p["fp8_requantized"]
    console.print(prose("--quant fp8 keeps an FP8 checkpoint's bytes except where it re-quantizes (products, "
                        f"or cuts across 128-row blocks): --absorb prefolded: {', '.join(requantized['prefolded'])}; "
                        f"--absorb runtime: {', '.join(requantized['runtime']) or 'none'}.", console), markup=False)
    for layer, errors in enumerate(requant_errors or []):
        if errors:
            text = ", ".join(f"{name} {error:.2g}" for name, error in errors.items())
            console.print(prose(f"layer {layer}, re-quantization error (relative RMS vs the float64 value): {text}",
                                console), markup=False)
    if absorb is not None:
        console.print(f"absorb: {absorb} (recorded in the file's metadata)")
    console.print(prose(absorb_advice(c, dtype), console), markup=False)
    console.print(prose(f"Latent attention core at {context:,} cached tokens: "
                        f"{data['attention_core_multiply_adds_per_token_per_layer']:,} multiply-adds per new token "
                        "per layer (same in both forms).", console), markup=False)
    console.print(prose(latent_cache_text(c, data["latent_cache"], dtype, context), console), markup=False)
    if memory is not None:
        console.print()
        render_sizing(c, data["cache_sizing"], dtype, console)
    if tp is not None:
        console.print()
        render_tensor_parallel(c, data["tensor_parallel"], dtype, context, console, kv_cache_dtype)


QUANT_FORMS = tuple((quant, form) for quant in ("none", "fp8") for form in ("prefolded", "runtime"))


def tensor_parallel_dict(c: MlaConfig, tp: int, dtype: str = "bfloat16", context: int = 4096,
                         io: str = "tokens", kv_cache_dtype: str = "model") -> dict:
    """The per-rank figures of `export --tp N` (every rank the same): weights by --quant and --absorb (an FP8
    form whose blocks do not split: `refused` and why), the latent cache per token per rank, the collectives
    and their payload per token. Raises UserError where `tp` does not split `c` (`tp_layout.check_tp`)."""
    from ..model.footprint import collectives, rank_cache_bytes_per_token, rank_weight_bytes, weight_bytes
    from ..model.tp_layout import check_tp, tp_problem

    check_tp(c, tp, io)
    nbytes = DTYPE_BYTES[dtype]
    activation = nbytes if dtype != "fp8" else 2  # FP8 caches go with bfloat16 activations (and weights)
    with_embeddings = io == "tokens"
    weights = {}
    for quant, form in QUANT_FORMS:
        problem = tp_problem(c, tp, io, quant, form)
        weights[f"{quant} {form}"] = {"refused": problem} if problem else (
            rank_weight_bytes(c, tp, activation, quant, form, with_embeddings)
            | {"single_device_total": weight_bytes(c, activation, quant, form, with_embeddings)["total"]})
    cache = rank_cache_bytes_per_token(c, tp, nbytes if kv_cache_dtype == "model" else activation, kv_cache_dtype)
    return {"tp": tp, "io": io, "weights_per_rank": weights,
            "cache_per_token_per_rank": cache | {"context_bytes": cache["model"] * context},
            "collectives": collectives(c, tp, activation, with_embeddings)}


def render_tensor_parallel(c: MlaConfig, data: dict, dtype: str, context: int, console,
                           kv_cache_dtype: str = "model") -> None:
    """Print `tensor_parallel_dict`'s figures for 80 columns: a table of weights per rank, the cache line, a
    table of the collectives."""
    from ..common.console import add_columns, prose, table

    tp, element = data["tp"], "bfloat16" if dtype == "fp8" else dtype
    weights = table(f"{c.name}: weights per rank of --tp {tp}, --io {data['io']} (FP8: e4m3, 128x128 scales; "
                    f"others {element})")
    add_columns(weights, "--quant, --absorb", "attention", "MLP, experts", "embed, head,\nnorms", "total",
                "per decode\ntoken")
    refused = []
    for label, sizes in data["weights_per_rank"].items():
        if "refused" in sizes:
            weights.add_row(label, *["-"] * 5)
            refused.append(f"{label}: {sizes['refused']}")
            continue
        weights.add_row(label, *(size_text(sizes[key]) for key in ("attention", "mlp", "embeddings_head_norms",
                                                                    "total", "per_decode_token")))
    console.print(weights)
    for line in refused:
        console.print(prose(line, console), markup=False)
    cache = data["cache_per_token_per_rank"]
    console.print(prose(f"Latent cache per token per rank ({dtype_label(dtype, kv_cache_dtype)}): "
                        f"{cache['per_layer']:,} B per layer, "
                        f"{size_text(cache['model'])} for the {c.num_hidden_layers} layers, "
                        f"{size_text(cache['context_bytes'])} at {context:,} tokens: every rank holds the whole "
                        "cache, as one device does.", console), markup=False)
    collective = data["collectives"]
    if not collective["per_layer"]:
        console.print("--tp 1: one device, no collectives.")
        return
    console.print()
    ops = table(f"Collectives of --tp {tp}: payload per token per rank ({element})")
    add_columns(ops, "collective", "after", "how often", "values", "bytes", numbers_from=3)
    for op in collective["per_layer"]:
        ops.add_row(op["op"], op["after"], "every layer", f"{op['values']:,}", f"{op['bytes']:,}")
    for op in collective["per_model"]:
        values = f"{op['values']:,}" + (" sent" if "received_bytes" in op else "")
        ops.add_row(op["op"], op["after"], "once", values, f"{op['bytes']:,}")
    console.print(ops)
    count = len(collective["per_layer"]) * c.num_hidden_layers + len(collective["per_model"])
    gather = [op for op in collective["per_model"] if "received_bytes" in op]
    received = f"; the logits' AllGather receives {gather[0]['received_bytes']:,} B" if gather else ""
    console.print(prose(f"{count} collectives per forward step, {size_text(collective['bytes_per_token'])} sent "
                        f"per token per rank{received}.", console), markup=False)
