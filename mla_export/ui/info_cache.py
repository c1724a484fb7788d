"""`info`'s cache figures: cached values per token of MLA and MHA/GQA/MQA; the latent cache's bytes per token
for each `--cache` layout and `--kv-cache-dtype` (contract
version 2), and how many sequences of each context fit in a given memory, against the MHA/GQA/MQA caches
of the same dims. Cache only: the model's weights are not counted."""

from __future__ import annotations

from dataclasses import dataclass

from ..common import contract
from ..common.console import size_text
from ..model.config import MlaConfig
from ..model.footprint import contiguous_sequences, latent_cache_bytes_per_token, paged_sequences

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}


@dataclass(frozen=True)
class CacheRow:
    scheme: str
    elements: int
    note: str


def cache_table(c: MlaConfig, gqa_groups: int = 8) -> list[CacheRow]:
    """Cached values per token per layer for each attention scheme at this config's dims; GQA only where
    `gqa_groups` lies strictly between one group (MQA) and one per head (MHA), MQA only with several heads."""
    h, dh, dr, dv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    rows = [CacheRow("MHA", 2 * h * dh, f"K, V {h}x{dh}"),
            CacheRow("MHA (decoupled RoPE keys)", h * (dh + dr) + h * dv, f"K {h}x{dh + dr}, V {h}x{dv}")]
    if 1 < gqa_groups < h:
        rows.append(CacheRow(f"GQA ({gqa_groups} groups)", 2 * gqa_groups * dh, f"K, V {gqa_groups}x{dh}"))
    if h > 1:
        rows.append(CacheRow("MQA", 2 * dh, f"K, V 1x{dh}"))
    rows.append(CacheRow("MLA", c.cache_width, f"c_kv {c.kv_lora_rank} + k_pe {dr}"))
    return rows


CONTEXTS = (4096, 32768, 131072)  # the contexts of the --memory table (those up to max_position_embeddings)


def rope_bytes(dtype: str) -> int:
    """Bytes of a k_pe value in the FP8 cache: the model's dtype (bfloat16 beside --dtype fp8's FP8 weights)."""
    return 2 if dtype == "fp8" else DTYPE_BYTES[dtype]


def dtype_label(dtype: str, kv_cache_dtype: str, others: bool = False) -> str:
    """What the cache's bytes are, in a few words: bfloat16; fp8 codes + scales + bfloat16 rope (`others`: and
    the other schemes' one byte per value); or --dtype fp8's one byte per value."""
    if kv_cache_dtype == "fp8":
        mla = f"codes + scales + {'bfloat16' if dtype == 'fp8' else dtype} rope"
        return f"fp8: MLA {mla}, others 1 B per value" if others else f"--kv-cache-dtype fp8: {mla}"
    return "fp8: 1 B per value, no scales" if dtype == "fp8" else dtype


def scheme_bytes(c: MlaConfig, row: CacheRow, dtype: str, kv_cache_dtype: str) -> int:
    """Cache bytes per token per layer of one scheme of `cache_table`: MLA in contract version 2's formats;
    the others in `dtype`, or in FP8 as one byte per value (a scale per tensor, as vLLM's FP8 KV cache)."""
    if row.scheme == "MLA":
        element = rope_bytes(dtype) if kv_cache_dtype == "fp8" else DTYPE_BYTES[dtype]
        return latent_cache_bytes_per_token(c, element, kv_cache_dtype)
    return row.elements * (1 if kv_cache_dtype == "fp8" else DTYPE_BYTES[dtype])


def mla_row(c: MlaConfig) -> CacheRow:
    return next(row for row in cache_table(c) if row.scheme == "MLA")


def latent_cache_dict(c: MlaConfig, dtype: str, kv_cache_dtype: str, cache: str, page_size: int,
                      context: int) -> dict:
    """The chosen layout's figures: bytes per token (per layer, all layers), the FP8 row's parts, a page's bytes
    and the pages a sequence of `context` tokens takes (paged), the bytes of one sequence of `context`."""
    per_layer = scheme_bytes(c, mla_row(c), dtype, kv_cache_dtype)
    layers = c.num_hidden_layers
    data = {"cache": cache, "kv_cache_dtype": kv_cache_dtype, "bytes_per_token_per_layer": per_layer,
            "bytes_per_token": per_layer * layers}
    if kv_cache_dtype == "fp8":
        scales = -(-c.kv_lora_rank // contract.FP8_CACHE_TILE)
        data["fp8_row"] = {"codes": c.kv_lora_rank, "scales": scales, "scale_bytes": 4 * scales,
                           "rope_values": c.qk_rope_head_dim, "rope_bytes": c.qk_rope_head_dim * rope_bytes(dtype)}
    rows = context
    if cache == "paged":
        pages = -(-context // page_size)
        rows = pages * page_size
        data |= {"page_size": page_size, "bytes_per_page_per_layer": page_size * per_layer, "pages_at_context": pages}
    return data | {"bytes_at_context": rows * per_layer * layers}


def sizing_dict(c: MlaConfig, dtype: str, kv_cache_dtype: str, cache: str, page_size: int, context: int,
                memory: int) -> dict:
    """Sequences of each context that `memory` bytes of cache hold (weights not counted): MLA in both layouts
    and both cache dtypes, then the other schemes in the chosen layout and dtype. Contiguous: every sequence
    reserves max_position_embeddings rows; paged: its context plus half a page on average."""
    smax, layers = c.max_position_embeddings, c.num_hidden_layers
    contexts = sorted({x for x in (*CONTEXTS, context) if x <= smax} | {smax})
    rows = []

    def add(scheme: str, layout: str, kv: str, per_layer: int) -> None:
        per_token = per_layer * layers
        sequences = [contiguous_sequences(memory, smax, per_token) if layout == "contiguous"
                     else paged_sequences(memory, x, page_size, per_token) for x in contexts]
        rows.append({"scheme": scheme, "cache": layout, "kv_cache_dtype": kv, "bytes_per_token_per_layer": per_layer,
                     "bytes_per_token": per_token, "tokens": memory // per_token, "sequences": sequences})

    for layout in contract.CACHE_LAYOUTS:
        for kv in contract.KV_CACHE_DTYPES:
            add("MLA", layout, kv, scheme_bytes(c, mla_row(c), dtype, kv))
    for row in cache_table(c):
        if row.scheme != "MLA":
            add(row.scheme, cache, kv_cache_dtype, scheme_bytes(c, row, dtype, kv_cache_dtype))
    return {"memory_bytes": memory, "weights_counted": False, "max_seq_len": smax, "page_size": page_size,
            "contexts": contexts, "rows": rows}


def latent_cache_text(c: MlaConfig, data: dict, dtype: str, context: int) -> str:
    """One paragraph on the chosen latent cache: its bytes per token and, paged, per page."""
    per_layer, layers = data["bytes_per_token_per_layer"], c.num_hidden_layers
    if data["kv_cache_dtype"] == "fp8":
        row = data["fp8_row"]
        what = (f"--kv-cache-dtype fp8 (FlashMLA's V3.2 format): {row['codes']} e4m3 codes + {row['scales']} float32 "
                f"scales ({row['scale_bytes']} B) + {row['rope_values']} k_pe values in "
                f"{'bfloat16' if dtype == 'fp8' else dtype} ({row['rope_bytes']} B) = {per_layer:,} B")
    else:
        what = f"{dtype_label(dtype, 'model')}: {c.cache_width} values = {per_layer:,} B"
    text = (f"Latent cache, --cache {data['cache']}, {what} per token per layer, {size_text(data['bytes_per_token'])} "
            f"per token for the {layers} layers. ")
    if data["cache"] == "paged":
        return text + (f"Pages of {data['page_size']} rows, {data['bytes_per_page_per_layer']:,} B per layer: "
                       f"{context:,} tokens take {data['pages_at_context']:,} pages, "
                       f"{size_text(data['bytes_at_context'])}.")
    return text + (f"A sequence reserves Smax rows (export --max-seq-len): {size_text(data['bytes_at_context'])} "
                   f"for Smax = {context:,}.")


def render_sizing(c: MlaConfig, data: dict, dtype: str, console) -> None:
    """Print `sizing_dict`'s figures for 80 columns: bytes and tokens per cache dtype, then sequences per
    layout and context, and what they count."""
    from ..common.console import add_columns, prose, table

    names = {"model": "fp8 (1 B)" if dtype == "fp8" else dtype, "fp8": "fp8"}
    memory = size_text(data["memory_bytes"])
    per_token = table(f"Cache per token, and tokens in {memory} (weights not counted)")
    add_columns(per_token, "scheme", "cache dtype", "B per layer", f"{c.num_hidden_layers} layers",
                f"tokens in {memory}", numbers_from=2)
    sequences = table(f"Sequences that fit in {memory}, by context (tokens per sequence)")
    add_columns(sequences, "scheme", "--cache", "cache dtype", *(f"{x:,}" for x in data["contexts"]), numbers_from=3)
    for row in data["rows"]:
        if row["cache"] == "paged" or row["scheme"] != "MLA":  # bytes per token: the same in both layouts
            per_token.add_row(row["scheme"], names[row["kv_cache_dtype"]], f"{row['bytes_per_token_per_layer']:,}",
                              size_text(row["bytes_per_token"]), f"{row['tokens']:,}")
        layout = f"paged {data['page_size']}" if row["cache"] == "paged" else row["cache"]
        sequences.add_row(row["scheme"], layout, names[row["kv_cache_dtype"]], *(f"{n:,}" for n in row["sequences"]))
    console.print(per_token)
    console.print()
    console.print(sequences)
    others_fp8 = any(row["scheme"] != "MLA" and row["kv_cache_dtype"] == "fp8" for row in data["rows"])
    console.print(prose(
        f"Cache only: the weights are not counted (subtract them from --memory: the weights by --quant are "
        f"above). Contiguous: every sequence reserves max_position_embeddings = {data['max_seq_len']:,} rows "
        f"whatever its length; paged: its context plus half a page on average."
        + (" MHA/GQA/MQA in fp8: one byte per value." if others_fp8 else ""), console), markup=False)
