"""An engine's optimization profiles: the `MIN:OPT:MAX` ranges `build` takes, the input shapes of its two
profiles (decode: one new token; prefill), and the check that the largest of them can be built.

TensorRT refuses no profile: a profile whose MAX shapes give any tensor of the network more than 2^40
values (1,099,511,627,776) only draws the warning "Profile kMAX values are not self-consistent ... tensor
volume exceeds 1099511627776" (seen with TensorRT-RTX 1.7, whose builder shares TensorRT's shape checks),
and the build goes on. `check_profile_volumes` refuses such ranges before the build, naming the tensor,
the limit and the largest MAX that fits: the volumes come from the graph TensorRT parses (the export's
value_info with `batch` and `new_tokens` set, and for a build without the plugins the nodes' inlined
function bodies, whose shapes ONNX's shape inference computes).

A contract-2 export (`--cache paged` and/or `--kv-cache-dtype fp8`) declares its cache planes with their own
dims: a paged pool `[num_pages, page_size, width]` whose `num_pages` is a dynamic dim of the export (the pool a
server allocates, independent of the batch), `block_table [batch, max_pages]` (max_pages fixed by the export),
and a contiguous FP8 cache's planes `[batch, Smax, width]`. Both profiles give the pools the same pages range
(`--pages-range`, `default_pages`); `check_pool_volume` refuses a range whose pool is past TensorRT's limit.
"""

from __future__ import annotations

import math
from typing import Callable

from ..common import contract
from ..common.errors import UserError
from ..model.spec import ModelSpec

VOLUME_LIMIT = 1 << 40  # values in one tensor of a TensorRT profile's MAX shapes (TensorRT's shape machine)
BATCH, NEW_TOKENS = "batch", "new_tokens"  # the export's symbolic dims (a paged pool's num_pages: --pages-range)


def parse_range(text: str, option: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' -> (min, opt, max), checked min <= opt <= max, min >= 1. One number is refused, not read
    as N:N:N: a profile of one size is written out as such."""
    parts = text.split(":")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        raise UserError(f"{option} {text}: not one number but MIN:OPT:MAX (write "
                        f"{values[0]}:{values[0]}:{values[0]})")
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise UserError(f"{option} {text}: expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return values


def default_prefill_tokens(max_seq_len: int) -> tuple[int, int, int]:
    """New tokens MIN:OPT:MAX of the prefill profile when none is given: 2:256:2048, capped at Smax."""
    return min(2, max_seq_len), min(256, max_seq_len), min(2048, max_seq_len)


def profile_shapes(spec_io: str, num_layers: int, hidden: int, max_seq_len: int, cache_width: int,
                   batch: tuple[int, int, int], tokens: tuple[int, int, int]) -> dict[str, list[tuple]]:
    """Input name -> [min, opt, max] shapes for one optimization profile."""
    inputs, _ = contract.graph_io_names(num_layers, spec_io)
    first = [(b, s) if spec_io == "tokens" else (b, s, hidden) for b, s in zip(batch, tokens)]
    shapes = {inputs[0]: first, inputs[1]: [(b,) for b in batch]}
    for name in inputs[2:]:
        shapes[name] = [(b, max_seq_len, cache_width) for b in batch]
    return shapes


def default_pages(model: ModelSpec, batch: tuple[int, int, int]) -> tuple[int, int, int]:
    """Pool pages MIN:OPT:MAX of a paged export when none is given: from one page to enough for every sequence
    of the batch at Smax plus the spare pages: the pools validate and profile make (ModelSpec.pool_pages)."""
    return 1, model.pool_pages(batch[1]), model.pool_pages(batch[2])


def cache_plane_widths(model: ModelSpec) -> dict[str, int]:
    """Past-cache input name -> its last dim (width), per layer: the whole row Dc+Dr, or for an FP8 cache the
    codes (Dc), scales (ceil(Dc/128)) and rope (Dr) planes. Present outputs alias these, plane for plane."""
    c = model.config
    widths = {}
    for i in range(c.num_hidden_layers):
        if model.kv_cache_dtype == "fp8":
            past = contract.past_pages_name(i) if model.cache == "paged" else contract.past_cache_name(i)
            widths[past] = c.kv_lora_rank
            widths[contract.past_scales_name(i)] = -(-c.kv_lora_rank // contract.FP8_CACHE_TILE)
            widths[contract.past_rope_name(i)] = c.qk_rope_head_dim
        elif model.cache == "paged":
            widths[contract.past_pages_name(i)] = c.cache_width
        else:
            widths[contract.past_cache_name(i)] = c.cache_width
    return widths


def cache_shapes(model: ModelSpec, batch: tuple[int, int, int],
                 pages: tuple[int, int, int] | None) -> dict[str, list[tuple]]:
    """Cache input name -> [min, opt, max] shapes of a contract-2 export: block_table [B, max_pages] and pools
    [pages, page_size, width] (paged; `pages` the pool's MIN:OPT:MAX), or planes [B, Smax, width]."""
    shapes: dict[str, list[tuple]] = {}
    if model.cache == "paged":
        shapes[contract.BLOCK_TABLE] = [(b, model.max_pages) for b in batch]
        for name, width in cache_plane_widths(model).items():
            shapes[name] = [(p, model.page_size, width) for p in pages]
    else:
        for name, width in cache_plane_widths(model).items():
            shapes[name] = [(b, model.max_seq_len, width) for b in batch]
    return shapes


def optimization_profiles(model: ModelSpec, batch: tuple[int, int, int],
                          prefill_tokens: tuple[int, int, int], pages: tuple[int, int, int] | None = None
                          ) -> list[dict]:
    """The engine's two profiles, decode (one new token) then prefill: [{"name", "shapes": {input: [min, opt,
    max]}}], as the sidecar records them, in the graph's input order. `pages`: a paged export's pool pages
    (default: `default_pages`)."""
    c = model.config
    if model.cache == "paged" and pages is None:
        pages = default_pages(model, batch)
    inputs, _ = model.graph_io_names()
    profiles = []
    for name, tokens in (("decode", (1, 1, 1)), ("prefill", prefill_tokens)):
        shapes = profile_shapes(model.io, c.num_hidden_layers, c.hidden_size, model.max_seq_len, c.cache_width,
                                batch, tokens)
        if model.cache_contract:  # contract 2: the cache inputs have names and dims of their own
            shapes = {**{k: shapes[k] for k in inputs[:2]}, **cache_shapes(model, batch, pages)}
            assert list(shapes) == inputs, (list(shapes), inputs)
        profiles.append({"name": name, "shapes": {k: [list(s) for s in v] for k, v in shapes.items()}})
    return profiles


def check_pool_volume(model: ModelSpec, pages: tuple[int, int, int], option: str = "--pages-range") -> None:
    """Refuse pool pages whose MAX gives a pool [pages, page_size, width] more than VOLUME_LIMIT values, naming
    the plane and the largest MAX that fits."""
    name, width = max(cache_plane_widths(model).items(), key=lambda item: item[1])
    per_page = model.page_size * width
    if pages[2] * per_page > VOLUME_LIMIT:
        raise UserError(f"{option} {':'.join(map(str, pages))}: pool {name} [{pages[2]}, {model.page_size}, "
                        f"{width}] exceeds TensorRT's 2^40 values; MAX {VOLUME_LIMIT // per_page} fits")


def check_cache_inputs(network, shapes: dict[str, list[tuple]], source: str) -> None:
    """Refuse (one message) a parsed network whose cache inputs (`shapes`: `profiles.cache_shapes`) are not of
    the profile's rank, or whose static dims (page size, plane width, max_pages) are not the profile's: TensorRT
    would refuse the profile with a message naming neither the export nor the fix."""
    inputs = {t.name: t for t in (network.get_input(i) for i in range(network.num_inputs))}
    for name, (low, _, high) in shapes.items():
        tensor = inputs.get(name)
        dims = list(tensor.shape) if tensor is not None else None
        if dims is None or len(dims) != len(low) or any(d != -1 and not lo <= d <= hi
                                                        for d, lo, hi in zip(dims, low, high)):
            want = [lo if lo == hi else f"{lo}..{hi}" for lo, hi in zip(low, high)]
            raise UserError(f"--onnx {source}: TensorRT parsed cache input {name} as "
                            f"{'nothing' if dims is None else dims}, its metadata gives {want} (page size, "
                            "plane width, pages); re-export the model")


Largest = tuple[int, str, list[int]]  # (volume, tensor name, dims)


def _largest(values, sizes: dict[str, int]) -> Largest:
    """The largest tensor of `values` (ValueInfoProtos) with its symbolic dims set from `sizes`; tensors with
    a dim of another name or none are left out."""
    best: Largest = (0, "", [])
    for value in values:
        dims = []
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.dim_param in sizes:
                dims.append(sizes[d.dim_param])
            else:
                break
        else:
            volume = math.prod(dims)
            if volume > best[0]:
                best = (volume, value.name, dims)
    return best


Dim = tuple[int, int, int, int]  # (c0, cb, ct, cbt): the dim c0 + cb*batch + ct*tokens + cbt*batch*tokens


class _Probe:
    """A weightless copy of a graph without model-local functions whose symbolic sizes can be set, and the
    shapes ONNX's shape inference (with data propagation, which computes Reshape targets) gives its values
    at those sizes. Data propagation materializes Range outputs: probe small sizes only."""

    def __init__(self, inlined):
        import onnx

        self.model = onnx.ModelProto()
        self.model.CopyFrom(inlined)
        for init in self.model.graph.initializer:  # float weights: their shapes are all inference needs
            if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
                init.ClearField("raw_data")
                init.ClearField("float_data")
                init.ClearField("int32_data")
        graph = self.model.graph
        self.symbolic = [(d, d.dim_param) for v in list(graph.value_info) + list(graph.input) + list(graph.output)
                         for d in v.type.tensor_type.shape.dim if d.dim_param in (BATCH, NEW_TOKENS)]

    def dims(self, sizes: dict[str, int]) -> dict[str, list[int]]:
        """name -> dims of every value whose shape inference fully determines at `sizes`."""
        import onnx

        for dim, name in self.symbolic:
            dim.dim_value = sizes[name]
        try:
            model = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception:  # a graph inference cannot follow: the recorded shapes are all there is
            return {}
        found = {}
        for value in list(model.graph.value_info) + list(model.graph.output):
            kind = value.type.tensor_type
            if kind.HasField("shape") and all(d.HasField("dim_value") for d in kind.shape.dim):
                found[value.name] = [d.dim_value for d in kind.shape.dim]
        return found


def _fit_dim(samples: list[tuple[int, int, int]]) -> Dim | None:
    """The dim as c0 + cb*b + ct*t + cbt*b*t from (b, t, dim) samples on a 2x2 grid (the first four) checked
    against the rest; None when no such integer form fits (the tensor is then left out)."""
    from fractions import Fraction

    (b1, t1, d11), (b2, _, d21), (_, t2, d12), (_, _, d22) = samples[:4]
    cbt = Fraction(d22 - d21 - d12 + d11, (b2 - b1) * (t2 - t1))
    cb = Fraction(d21 - d11, b2 - b1) - cbt * t1
    ct = Fraction(d12 - d11, t2 - t1) - cbt * b1
    c0 = d11 - cb * b1 - ct * t1 - cbt * b1 * t1
    if any(c.denominator != 1 for c in (c0, cb, ct, cbt)):
        return None
    dim = (int(c0), int(cb), int(ct), int(cbt))
    return dim if all(_at(dim, b, t) == d for b, t, d in samples) else None


def _at(dim: Dim, batch: int, tokens: int) -> int:
    return dim[0] + dim[1] * batch + dim[2] * tokens + dim[3] * batch * tokens


def function_body_dims(inlined, max_seq_len: int) -> dict[str, list[Dim]]:
    """name -> dims (as functions of batch and new tokens) of the values of `inlined` (the graph with the
    nodes' functions inlined), from shape inference at five small sizes: a 2x2 grid and a check."""
    t1, t2 = (2, 3) if max_seq_len >= 3 else (1, 2)
    grid = [(3, t1), (5, t1), (3, t2), (5, t2), (7, t2)]
    probe = _Probe(inlined)
    probes = [probe.dims({BATCH: b, NEW_TOKENS: t}) for b, t in grid]
    dims = {}
    for name, first in probes[0].items():
        shapes = [p.get(name) for p in probes]
        if any(s is None or len(s) != len(first) for s in shapes):
            continue
        fitted = [_fit_dim([(b, t, s[i]) for (b, t), s in zip(grid, shapes)]) for i in range(len(first))]
        if all(f is not None for f in fitted):
            dims[name] = fitted
    return dims


def volume_function(header, inlined=None, max_seq_len: int = 2) -> Callable[[int, int], Largest]:
    """(batch, new tokens) -> the largest tensor of the network TensorRT builds from `header` (the export's
    ONNX header, whose value_info records every graph tensor's shape in `batch` and `new_tokens`), and with
    `inlined` (the graph with the nodes' functions inlined, what a build without the plugins parses) of the
    function bodies' tensors too (`function_body_dims`; `max_seq_len` bounds the sizes it probes)."""
    recorded = list(header.graph.value_info) + list(header.graph.input) + list(header.graph.output)
    bodies = function_body_dims(inlined, max_seq_len) if inlined is not None else {}

    def largest(batch: int, tokens: int) -> Largest:
        best = _largest(recorded, {BATCH: batch, NEW_TOKENS: tokens})
        for name, dims in bodies.items():
            values = [_at(d, batch, tokens) for d in dims]
            volume = math.prod(values)
            if volume > best[0]:
                best = (volume, name, values)
        return best

    return largest


def _fit(volume_at: Callable[[int], int], top: int, top_volume: int) -> int:
    """The largest n < top with volume_at(n) <= VOLUME_LIMIT (0 if none), volume_at(top) being top_volume:
    the guess that volumes grow in proportion to n (batch and new tokens do) tried first, then bisection."""
    guess = min(top - 1, top * VOLUME_LIMIT // top_volume)
    if guess >= 1 and volume_at(guess) <= VOLUME_LIMIT < volume_at(guess + 1):
        return guess
    low, high = 0, top  # volume_at(low) fits (0: none), volume_at(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if volume_at(middle) <= VOLUME_LIMIT else (low, middle)
    return low


def check_profile_volumes(largest: Callable[[int, int], Largest], batch: tuple[int, int, int],
                          prefill_tokens: tuple[int, int, int]) -> None:
    """Refuse ranges whose largest profile (batch MAX, prefill MAX; the decode profile is the same batch with
    one token) gives a tensor more than VOLUME_LIMIT values; `largest` is `volume_function`'s. The message
    names the tensor, the limit and the largest MAX that fits."""
    b_max, t_max = batch[2], prefill_tokens[2]
    volume, name, dims = largest(b_max, t_max)
    if volume <= VOLUME_LIMIT:
        return
    tensor = f"tensor {name} {dims} exceeds TensorRT's 2^40 values"
    batch_fit = _fit(lambda b: largest(b, t_max)[0], b_max, volume)
    batch_text, tokens_text = ":".join(map(str, batch)), ":".join(map(str, prefill_tokens))
    if largest(b_max, 1)[0] > VOLUME_LIMIT or t_max == 1:  # the decode profile too: only the batch helps
        if not batch_fit:
            raise UserError(f"--batch-range {batch_text} and --prefill-range {tokens_text}: {tensor}; lower both "
                            "MAX values")
        raise UserError(f"--batch-range {batch_text}: {tensor}; MAX {batch_fit} fits")
    tokens_fit = _fit(lambda t: largest(b_max, t)[0], t_max, volume)
    instead = f", or --batch-range MAX {batch_fit}" if batch_fit else ""
    raise UserError(f"--prefill-range {tokens_text}: {tensor}; MAX {tokens_fit} fits{instead}")
