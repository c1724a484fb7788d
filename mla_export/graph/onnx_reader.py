"""Reading back an ONNX file written by `export`: is it ours, which model and settings made it, and does
the file say what it is.

`read_exported_model` (used by validate, build, profile and info) refuses, with one message each: a file
that is not ONNX or not ours; metadata that disagrees with the graph (I/O names, dtypes, hidden size,
cache rows and width); `MlaAttention`/`DeepseekMoE` nodes whose attributes disagree with the metadata's
config or with the tensors they take; and weights whose data file is missing, outside the model's
directory, shorter than the graph needs or not the one this export wrote (a mismatched pair).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..common import contract
from ..common.errors import UserError
from ..common.fileio import check_input_file
from ..model.spec import ModelSpec, spec_from_metadata

# ONNX TensorProto element types of the graph's tensors.
_ELEM = {"float32": 1, "float16": 10, "bfloat16": 16}
_INT32, _INT64 = 6, 7
_EXTERNAL = 1  # TensorProto.EXTERNAL


def load_onnx_header(path: str | Path):
    """The ModelProto of `path` without its weights (cheap even for multi-GB models)."""
    import onnx

    path = check_input_file("--onnx", path, "; pass the .onnx file `mla-export export` wrote")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        raise UserError(f"--onnx {path}: not a readable ONNX model ({type(exc).__name__}: "
                        f"{str(exc).strip()[:200]})") from None


@dataclass(frozen=True)
class ExportedModel:
    """An mla-export ONNX file read once and checked: its path, the spec in its metadata, the metadata
    itself, the header (ModelProto without weights) and the external data file it names (or None)."""

    path: Path
    spec: ModelSpec
    metadata: dict[str, str]
    header: object  # onnx.ModelProto, external data not loaded
    data_file: Path | None = None

    def attention_nodes(self) -> list:
        """The graph's `MlaAttention` nodes, in graph order."""
        return [n for n in self.header.graph.node if n.op_type == contract.OP_TYPE and n.domain == contract.OP_DOMAIN]

    def moe_nodes(self) -> list:
        """The graph's `DeepseekMoE` nodes, in graph order."""
        return [n for n in self.header.graph.node
                if n.op_type == contract.MOE_OP_TYPE and n.domain == contract.OP_DOMAIN]

    def fp8_nodes(self) -> list:
        """The graph's `BlockFp8MatMul` nodes, in graph order."""
        return [n for n in self.header.graph.node
                if n.op_type == contract.FP8_OP_TYPE and n.domain == contract.OP_DOMAIN]

    def weight_bytes(self) -> int:
        """Bytes of the file and of its external data file."""
        size = self.path.stat().st_size
        return size + (self.data_file.stat().st_size if self.data_file is not None else 0)


def read_exported_model(path: str | Path) -> ExportedModel:
    """Read an mla-export ONNX file's header and metadata, and check the file against them; UserError if the
    file is not ours, was edited, or is missing part of its weights."""
    header = load_onnx_header(path)
    source = f"--onnx {path}"
    metadata = {p.key: p.value for p in header.metadata_props}
    spec = spec_from_metadata(metadata, source)
    model = ExportedModel(Path(path), spec, metadata, header)
    nodes = len(model.attention_nodes())
    if nodes != spec.config.num_hidden_layers:
        raise UserError(f"{source}: {nodes} {contract.OP_TYPE} nodes for {spec.config.num_hidden_layers} "
                        "layers; the graph was modified after export")
    check_graph_io(header, spec, source)
    check_attention_nodes(model, source)
    check_moe_nodes(model, source)
    check_fp8_nodes(model, source)
    check_collective_nodes(model, source)
    data_file = check_weight_files(model, source)
    return ExportedModel(model.path, spec, metadata, header, data_file)


def read_export_spec(path: str | Path) -> ModelSpec:
    """The `ModelSpec` recorded in an mla-export ONNX file; UserError if the file is not ours."""
    return read_exported_model(path).spec


def _edited(source: str, what: str) -> UserError:
    return UserError(f"{source}: {what}; edited since export: re-export it")


def _dims(value_type) -> list[int | None]:
    """Static dims of a tensor type (None for a symbolic or unknown one)."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value_type.tensor_type.shape.dim]


def _type_name(elem: int) -> str:
    names = {v: k for k, v in _ELEM.items()} | {_INT32: "int32", _INT64: "int64"}
    return names.get(elem, f"element type {elem}")


def _shape_text(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _dims_match(got: list[int | None], expected: list[int | None]) -> bool:
    return len(got) == len(expected) and all(e is None or g == e for g, e in zip(got, expected))


def check_graph_io(header, spec: ModelSpec, source: str) -> None:
    """Refuse a graph whose inputs/outputs disagree with the metadata: names (layers, --io), element types
    (dtype), hidden size or vocabulary, cache rows (max_seq_len) and width."""
    c, elem = spec.config, _ELEM[spec.dtype]
    inputs, outputs = spec.graph_io_names()
    got_in, got_out = [v.name for v in header.graph.input], [v.name for v in header.graph.output]
    if got_in != inputs or got_out != outputs:
        kind, got, want = ("input", got_in, inputs) if got_in != inputs else ("output", got_out, outputs)
        i = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
        found = f"{kind} {i} is {got[i]!r}" if i < len(got) else f"{len(got)} {kind}s"
        wanted = repr(want[i]) if i < len(want) else f"{len(want)} {kind}s"
        raise _edited(source, f"graph {found}, its metadata (io={spec.io}, {c.num_hidden_layers} layers) says "
                              f"{wanted}")
    cache = (elem, [None, spec.max_seq_len, c.cache_width])
    expected = {contract.CACHE_SEQLENS: (_INT32, [None]), **_cache_io(spec, elem)}
    if spec.io == "tokens":
        expected[contract.INPUT_IDS] = (_INT64, [None, None])
        expected[contract.LOGITS] = (elem, [None, None, c.vocab_size])
    else:
        expected[contract.HIDDEN_STATES_IN] = (elem, [None, None, c.hidden_size])
        expected[contract.HIDDEN_STATES_OUT] = (elem, [None, None, c.hidden_size])
    for value in list(header.graph.input) + list(header.graph.output):
        want_elem, want_dims = expected.get(value.name, cache)
        got_elem, got_dims = value.type.tensor_type.elem_type, _dims(value.type)
        if got_elem != want_elem or not _dims_match(got_dims, want_dims):
            field = (f"dtype={spec.dtype}" if got_elem != want_elem else
                     f"max_seq_len={spec.max_seq_len}" if value.name not in expected else
                     f"vocab_size={c.vocab_size}" if value.name == contract.LOGITS else f"hidden_size={c.hidden_size}")
            got, want = ((_type_name(got_elem), _type_name(want_elem)) if got_elem != want_elem else
                         (_shape_text(got_dims), _shape_text(want_dims)))
            raise _edited(source, f"graph tensor {value.name} is {got}, its metadata says {want} ({field})")


def _cache_io(spec: ModelSpec, elem: int) -> dict[str, tuple[int, list[int | None]]]:
    """(element type, dims) of a version-2 export's cache inputs and outputs, by name (none for version 1)."""
    import onnx

    c = spec.config
    if not spec.cache_contract:
        return {}
    rows = spec.page_size if spec.cache == "paged" else spec.max_seq_len
    table = {contract.BLOCK_TABLE: (_INT32, [None, spec.max_pages])} if spec.cache == "paged" else {}
    past, present = ((contract.past_pages_name, contract.present_pages_name) if spec.cache == "paged"
                     else (contract.past_cache_name, contract.present_cache_name))
    for i in range(c.num_hidden_layers):
        if spec.kv_cache_dtype == "fp8":
            tiles = -(-c.kv_lora_rank // contract.FP8_CACHE_TILE)
            planes = {past(i): (onnx.TensorProto.FLOAT8E4M3FN, c.kv_lora_rank),
                      contract.past_scales_name(i): (onnx.TensorProto.FLOAT, tiles),
                      contract.past_rope_name(i): (elem, c.qk_rope_head_dim)}
            names = {past(i): present(i), contract.past_scales_name(i): contract.present_scales_name(i),
                     contract.past_rope_name(i): contract.present_rope_name(i)}
        else:
            planes, names = {past(i): (elem, c.cache_width)}, {past(i): present(i)}
        for name, (kind, width) in planes.items():
            table[name] = table[names[name]] = (kind, [None, rows, width])
    return table


def _attributes(node) -> dict:
    return {a.name: a for a in node.attribute}


def _check_node_attributes(node, declared: dict[str, str], expected: dict, source: str, what: str) -> None:
    """Every attribute of `declared` ({name: "INT"|"FLOAT"}) present with its type and the `expected` value
    (floats: finite and equal to float32 rounding); the plugin look-up strings as the contract says."""
    import onnx

    attrs = _attributes(node)
    kinds = {"INT": onnx.AttributeProto.INT, "FLOAT": onnx.AttributeProto.FLOAT}
    for name, kind in declared.items():
        attr = attrs.get(name)
        if attr is None or attr.type != kinds[kind]:
            raise _edited(source, f"{node.op_type} node {node.name or '?'} lacks its {kind} attribute {name}")
        value = attr.i if kind == "INT" else attr.f
        want = expected[name]
        if kind == "FLOAT":
            if not math.isfinite(value):
                raise _edited(source, f"{node.op_type} node {node.name or '?'} attribute {name}={value} is not "
                                      "finite")
            ok = math.isclose(value, want, rel_tol=1e-6, abs_tol=0.0)
        else:
            ok = value == want
        if not ok:
            raise _edited(source, f"{node.op_type} node {node.name or '?'}: {name}={value:g}, {what} gives {want:g}")
    for name, want in contract.PLUGIN_LOOKUP_ATTRIBUTES.items():
        attr = attrs.get(name)
        if attr is None or attr.s != want.encode():
            got = attr.s.decode(errors="replace") if attr is not None else None
            raise _edited(source, f"{node.op_type} node {node.name or '?'}: {name}={got!r}, the contract says "
                                  f"{want!r}")


def _value_dims(header) -> dict[str, list[int | None]]:
    """Static dims of every value the header knows a shape for (value_info, graph I/O, initializers)."""
    dims = {v.name: _dims(v.type) for v in list(header.graph.value_info) + list(header.graph.input)}
    dims.update({i.name: list(i.dims) for i in header.graph.initializer})
    return dims


def check_attention_nodes(model: ExportedModel, source: str) -> None:
    """Each `MlaAttention` node: seven inputs, two outputs, attributes equal to the metadata's config
    (num_heads, kv_lora_rank, qk_rope_head_dim, softmax_scale with YaRN's mscale²) and to the static shapes of
    the tensors it takes; the file holds the node's function (what ONNX Runtime runs)."""
    c, spec = model.spec.config, model.spec
    heads, d_c, d_r = c.num_attention_heads // spec.tp_size, c.kv_lora_rank, c.qk_rope_head_dim  # a rank's heads
    expected = {"num_heads": heads, "kv_lora_rank": c.kv_lora_rank,
                "qk_rope_head_dim": c.qk_rope_head_dim, "softmax_scale": c.softmax_scale}
    shapes = {0: [None, None, heads, d_c], 1: [None, None, heads, d_r], 2: [None, None, d_c], 3: [None, None, d_r],
              4: [None, spec.max_seq_len, d_c + d_r], 6: [spec.max_seq_len, d_r]}
    declared, op_inputs, op_outputs = contract.OP_ATTRIBUTES, contract.OP_INPUTS, contract.OP_OUTPUTS
    if spec.cache_contract:  # version 2: the cache planes' shapes are the graph's (check_graph_io)
        del shapes[4]
        fp8 = spec.kv_cache_dtype == "fp8"
        declared = {**contract.OP_ATTRIBUTES, **contract.OP_CACHE_ATTRIBUTES}
        expected.update(page_size=spec.page_size if spec.cache == "paged" else 0,
                        kv_cache_dtype=contract.KV_CACHE_DTYPE_FP8 if fp8 else contract.KV_CACHE_DTYPE_MODEL)
        op_inputs = contract.OP_FP8_CACHE_INPUTS if fp8 else contract.OP_PAGED_INPUTS
        op_outputs = contract.OP_FP8_CACHE_OUTPUTS if fp8 else contract.OP_OUTPUTS
    dims = _value_dims(model.header)
    for node in model.attention_nodes():
        if len(node.input) != len(op_inputs) or len(node.output) != len(op_outputs):
            raise _edited(source, f"{contract.OP_TYPE} node {node.name or '?'} has {len(node.input)} inputs and "
                                  f"{len(node.output)} outputs, the contract {len(op_inputs)} and "
                                  f"{len(op_outputs)}")
        _check_node_attributes(node, declared, expected, source, "its metadata")
        for index, want in shapes.items():
            got = dims.get(node.input[index])
            if got is not None and not _dims_match(got, want):
                raise _edited(source, f"{contract.OP_TYPE} node {node.name or '?'} input "
                                      f"{contract.OP_INPUTS[index]} has shape {got}, its attributes and metadata "
                                      f"say {['?' if d is None else d for d in want]}")
    functions = {(f.domain, f.name) for f in model.header.functions}
    needed = [(contract.OP_DOMAIN, contract.OP_TYPE)]
    if model.moe_nodes():
        needed.append((contract.OP_DOMAIN, contract.MOE_OP_TYPE))
    if model.fp8_nodes():
        needed.append((contract.OP_DOMAIN, contract.FP8_OP_TYPE))
    for domain, name in needed:
        if (domain, name) not in functions:
            raise _edited(source, f"the model-local function of {name} (domain {domain}) is missing")


def check_moe_nodes(model: ExportedModel, source: str) -> None:
    """Each `DeepseekMoE` node: attributes equal to the routing rule of the metadata's config
    (`moe_rule.RoutingRule.from_config`) and expert weights of the config's shapes; one node per MoE layer."""
    c = model.spec.config
    nodes = model.moe_nodes()
    moe_layers = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers))
    if len(nodes) != moe_layers:
        raise _edited(source, f"{len(nodes)} {contract.MOE_OP_TYPE} nodes for {moe_layers} mixture-of-experts "
                              "layers in its metadata")
    if not nodes:
        return
    from ..common.moe_rule import RoutingRule

    expected = RoutingRule.from_config(c).attributes()
    experts, inter, d = c.n_routed_experts, c.moe_intermediate_size, c.hidden_size
    local = experts // model.spec.tp_size  # a rank's experts (the router covers all of them)
    first = model.spec.tp_rank * local  # DeepSeek-V3's layout: rank r holds [r * E/N, (r + 1) * E/N)
    shapes = {1: [experts, d], 2: [experts], 3: [local, 2 * inter, d], 4: [local, d, inter]}
    inputs = contract.MOE_INPUTS
    if model.spec.quant == "fp8":  # contract version 2: FP8 experts and their block scales
        inputs = contract.MOE_FP8_INPUTS
        shapes.update({5: list(_grid([local, 2 * inter, d])), 6: list(_grid([local, d, inter]))})
    dims = _value_dims(model.header)
    version = int(model.metadata.get(contract.META_MOE_CONTRACT_VERSION, contract.MOE_CONTRACT_VERSION))
    for node in nodes:
        if len(node.input) != len(inputs) or len(node.output) != len(contract.MOE_OUTPUTS):
            raise _edited(source, f"{contract.MOE_OP_TYPE} node {node.name or '?'} has {len(node.input)} inputs, "
                                  f"the contract {len(inputs)} for --quant {model.spec.quant}")
        _check_node_attributes(node, contract.MOE_ATTRIBUTES, expected, source,
                               "its config's routing")
        _check_expert_slice(node, dims, experts, first, version, source)
        for index, want in shapes.items():
            got = dims.get(node.input[index])
            if got is not None and not _dims_match(got, want):
                raise _edited(source, f"{contract.MOE_OP_TYPE} node {node.name or '?'} input "
                                      f"{contract.MOE_INPUTS[index]} has shape {got}, its metadata's config says "
                                      f"{want}")


def _check_expert_slice(node, dims: dict, experts: int, want: int, version: int, source: str) -> None:
    """The node's expert slice (contract version 3; files of versions 1-2 carry no first_expert: 0): its experts
    first_expert .. first_expert + E_local - 1 (E_local: gate_up_proj's dim 0, when the file gives it) must lie in
    the num_experts routed ones, and first_expert be `want`, where its rank's slice starts."""
    import onnx

    attr = _attributes(node).get("first_expert")
    if (attr is None and version >= 3) or (attr is not None and attr.type != onnx.AttributeProto.INT):
        raise _edited(source, f"{node.op_type} node {node.name or '?'} lacks its INT attribute first_expert")
    first = attr.i if attr is not None else 0
    shape = dims.get(node.input[3])
    held = shape[0] if shape else None
    if first < 0 or (held is not None and (held < 1 or first + held > experts)):
        span = f"{first}..{first + held - 1}" if held is not None else f"from {first}"
        raise _edited(source, f"{node.op_type} node {node.name or '?'}: experts {span}, not in the {experts} "
                              "routed")
    if first != want:
        raise _edited(source, f"{node.op_type} node {node.name or '?'}: first_expert={first}, its --tp rank's "
                              f"slice starts at {want}")


def expected_collectives(spec: ModelSpec) -> dict[str, int]:
    """The collective nodes a rank's graph holds, by op type (none on a single device)."""
    if spec.tp_size == 1:
        return {}
    tokens = spec.io == "tokens"
    return {contract.ALL_REDUCE_OP_TYPE: 2 * spec.config.num_hidden_layers + tokens,
            contract.ALL_GATHER_OP_TYPE: int(tokens)}


def check_collective_nodes(model: ExportedModel, source: str) -> None:
    """As many `AllReduce` / `AllGather` nodes as the metadata's --tp layout places, each with one input,
    one output and world_size = tp_size (AllGather: along the last axis)."""
    from .onnx_collective import collective_nodes

    nodes = collective_nodes(model.header.graph)
    want = expected_collectives(model.spec)
    for op_type in (contract.ALL_REDUCE_OP_TYPE, contract.ALL_GATHER_OP_TYPE):
        count = sum(n.op_type == op_type for n in nodes)
        if count != want.get(op_type, 0):
            raise _edited(source, f"{count} {op_type} nodes, its metadata (tp {model.spec.tp_size}, io "
                                  f"{model.spec.io}) places {want.get(op_type, 0)}")
    for node in nodes:
        attrs = _attributes(node)
        world = attrs["world_size"].i if "world_size" in attrs else None
        axis = attrs["axis"].i if "axis" in attrs else -1
        if len(node.input) != 1 or len(node.output) != 1 or world != model.spec.tp_size or axis != -1:
            raise _edited(source, f"{node.op_type} node {node.name or '?'} does not match its metadata "
                                  f"(world_size {world}, tp {model.spec.tp_size})")


def _grid(shape: list[int]) -> tuple[int, ...]:
    """The FP8 block-scale shape of a weight of `shape` [..., R, C]."""
    *lead, rows, cols = shape
    return (*lead, -(-rows // contract.FP8_BLOCK), -(-cols // contract.FP8_BLOCK))


def check_fp8_nodes(model: ExportedModel, source: str) -> None:
    """`BlockFp8MatMul` nodes exist iff the metadata says --quant fp8; each has three inputs, block_size 128,
    an FP8 weight initializer and a scale initializer of one float32 per 128x128 block of it."""
    nodes = model.fp8_nodes()
    if bool(nodes) != (model.spec.quant == "fp8"):
        raise _edited(source, f"{len(nodes)} {contract.FP8_OP_TYPE} nodes in a --quant {model.spec.quant} export")
    from onnx import TensorProto

    initializers = {i.name: i for i in model.header.graph.initializer}
    for node in nodes:
        label = f"{contract.FP8_OP_TYPE} node {node.name or '?'}"
        if len(node.input) != len(contract.FP8_INPUTS) or len(node.output) != len(contract.FP8_OUTPUTS):
            raise _edited(source, f"{label} has {len(node.input)} inputs, the contract {len(contract.FP8_INPUTS)}")
        _check_node_attributes(node, contract.FP8_ATTRIBUTES, {"block_size": contract.FP8_BLOCK}, source,
                               "the FP8 format")
        weight, scale = initializers.get(node.input[1]), initializers.get(node.input[2])
        if weight is None or scale is None or weight.data_type != TensorProto.FLOAT8E4M3FN \
                or scale.data_type != TensorProto.FLOAT or tuple(scale.dims) != _grid(list(weight.dims)):
            raise _edited(source, f"{label} does not take an FP8 weight and its 128x128 block scales")


def _external(initializer) -> dict[str, str]:
    return {e.key: e.value for e in initializer.external_data}


def check_weight_files(model: ExportedModel, source: str) -> Path | None:
    """The external data file the graph's initializers point into: beside the model, the one its metadata
    names (export writes a file unique to each export, so an .onnx paired with another export's data is
    refused), and as long as the graph needs. Returns its path, or None when the weights are inside."""
    named = model.metadata.get(contract.META_DATA_FILE)  # None: a file from before the key existed
    ends: dict[str, int] = {}
    for init in model.header.graph.initializer:
        if init.data_location != _EXTERNAL:
            continue
        info = _external(init)
        location = info.get("location", "")
        parts = PurePosixPath(location.replace("\\", "/")).parts
        if not location or os.path.isabs(location) or ".." in parts or len(parts) != 1:
            raise _edited(source, f"weight {init.name} points to {location!r}, outside the model's directory")
        if named is not None and location != named:
            expected = f"its metadata names {named!r}" if named else "its metadata says inside it"
            raise UserError(f"{source}: its weights are in {location!r}, {expected}: files of different exports; "
                            "copy both again")
        try:
            end = int(info.get("offset", 0)) + int(info["length"])
        except (KeyError, ValueError):
            raise _edited(source, f"weight {init.name} has no valid offset/length into {location!r}") from None
        ends[location] = max(ends.get(location, 0), end)
    if named and not ends:
        raise _edited(source, f"its metadata names the data file {named!r} but no weight is stored there")
    for location, need in ends.items():
        data = model.path.parent / location
        if not data.is_file():
            raise UserError(f"{source}: its weights file {location} is missing from {model.path.parent}; copy it "
                            "beside the .onnx (or re-export)")
        size = data.stat().st_size
        if size < need or (named and size != need):
            raise UserError(f"{source}: its weights file {location} holds {size:,} bytes, the graph needs "
                            f"{need:,} (truncated, or another export's): copy it again")
    if not ends:
        return None
    return model.path.parent / next(iter(ends))
