"""`build`: ONNX -> TensorRT engine + sidecar.

path -> (plugin library loaded) -> parsed network (plugin layers checked) -> two optimization
profiles (decode: one new token; prefill) -> strongly typed build -> engine bytes -> engine file and
sidecar, committed as one (`save_engine`). Works with TensorRT 10.8+ and with TensorRT-RTX (plugin-free
only). Contract-2 exports (a paged and/or FP8 cache) build the same way: their pools get a pages range
(`--pages-range`), every cache plane is aliased plugin I/O, and the sidecar records the cache layout; the
network's types, FP8 codes included, are the ONNX file's (strongly typed), and an FP8 cache builds only into
the plugin (TensorRT feeds FP8 network inputs to plugins, not to the reference function's Cast).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..common import contract
from ..common.errors import UserError
from ..common.fileio import atomic_write_bytes, check_output_file, staging_dir, write_failed, write_staged
from ..graph.onnx_reader import read_exported_model
from ..model.spec import ModelSpec
from .aliasing import alias_pairs, cache_binding, check_alias_pairs, enable_aliased_plugin_io
from .collectives import RankIdentity, check_collective_layers, enable_multidevice, parse_form
from .backend import file_sha256, find_plugin_library, import_backend, load_plugin_library, make_logger
from .profiles import (cache_shapes, check_cache_inputs, check_pool_volume, check_profile_volumes,  # noqa: F401
                       default_pages, default_prefill_tokens, optimization_profiles, parse_range, volume_function)
from .sidecar import ATTENTION_MODES, Sidecar, bytes_sha256, cache_fields, sidecar_path


def parse_size(text: str, option: str = "--workspace") -> int:
    """'4G', '512M', '1073741824' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise UserError(f"{option} {text}: expected a size such as 512M or 4G")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


@dataclass(frozen=True)
class BuildSpec:
    onnx: str
    output: str
    attention: str = "plugin"
    backend: str = "tensorrt"
    plugin_lib: str | None = None
    batch: tuple[int, int, int] = (1, 8, 32)
    prefill_tokens: tuple[int, int, int] | None = None  # None: default_prefill_tokens(the model's Smax)
    pages: tuple[int, int, int] | None = None  # pool pages of a paged export; None: default_pages
    workspace: int | None = None
    timing_cache: str | None = None
    verbose: bool = False  # TensorRT's info and verbose messages too (on stderr)


# Node types the plugin library replaces (domain mla).
PLUGIN_OPS = (contract.OP_TYPE, contract.MOE_OP_TYPE, contract.FP8_OP_TYPE)
UNKNOWN_PLUGIN = "?"  # a plugin layer whose plugin name the bindings cannot tell


def count_plugin_layers(trt, network) -> int:
    """Plugin layers in a parsed network (IPluginV3 and legacy V2)."""
    return sum(plugin_layers_by_name(trt, network).values())


def _plugin_name(trt, layer) -> str:
    """The plugin name of an IPluginV3 layer (its core capability), or UNKNOWN_PLUGIN."""
    try:
        layer.__class__ = trt.IPluginV3Layer  # TensorRT's Python API: downcast by class assignment
        core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        return str(core.plugin_name)
    except Exception:  # bindings without the V3 layer or capability API
        return UNKNOWN_PLUGIN


def plugin_layers_by_name(trt, network) -> dict[str, int]:
    """Plugin layers of a parsed network by plugin name (UNKNOWN_PLUGIN where the bindings cannot tell)."""
    v3 = getattr(trt.LayerType, "PLUGIN_V3", None)
    kinds = {getattr(trt.LayerType, k) for k in ("PLUGIN_V3", "PLUGIN_V2") if hasattr(trt.LayerType, k)}
    counts: dict[str, int] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            name = _plugin_name(trt, layer) if layer.type == v3 else UNKNOWN_PLUGIN
            counts[name] = counts.get(name, 0) + 1
    return counts


def plugin_nodes(header) -> dict[str, int]:
    """Nodes of each PLUGIN_OPS type in an exported graph (ONNX header)."""
    return {op: sum(n.op_type == op and n.domain == contract.OP_DOMAIN for n in header.graph.node) for op in PLUGIN_OPS}


def check_plugin_layers(mode: str, layers: dict[str, int], nodes: dict[str, int], plugin_path: Path | None) -> None:
    """Fail when the parsed network does not use the plugins as `mode` requires: with --attention plugin, one
    plugin layer per MlaAttention and per DeepseekMoE node (TensorRT's parser silently inlines a node's function
    body when no creator matches); with decomposed, none. `layers`: plugin_layers_by_name; `nodes`: plugin_nodes."""
    found = sum(layers.values())
    if mode == "plugin":
        unknown = layers.get(UNKNOWN_PLUGIN, 0)
        missing = {op: n - layers.get(op, 0) for op, n in nodes.items() if layers.get(op, 0) != n}
        # Layers whose plugin name the bindings cannot tell may stand for the missing ones, no more.
        if found != sum(nodes.values()) or min(missing.values(), default=0) < 0 or sum(missing.values()) != unknown:
            counts = "; ".join(f"{layers.get(op, 0)} {op} plugin layer(s) for {n} {op} node(s)"
                               for op, n in nodes.items() if n or layers.get(op, 0))
            unnamed = f" (and {unknown} plugin layer(s) of unknown type)" if unknown else ""
            raise UserError(
                f"the parser created {counts}{unnamed}: TensorRT silently inlined the node's reference function "
                f"instead of using the plugin from {plugin_path}. Check that the library registers "
                + " and ".join(f"{op} v{contract.PLUGIN_VERSION}" for op in PLUGIN_OPS)
                + f" in namespace '{contract.PLUGIN_NAMESPACE}' (its log says so at load), or build with "
                "--attention decomposed")
    if mode == "decomposed" and found:
        raise UserError(f"--attention decomposed, but the parser created {found} plugin layer(s): a plugin "
                        f"library registering {' or '.join(PLUGIN_OPS)} is loaded in this process")


class _Progress:
    """TensorRT's build phases (IProgressMonitor protocol) told to `progress(what, done, total)`, the
    command's reporter (a bar on stderr, plain lines in a log, nothing with --quiet): the innermost active
    phase under the outermost, "Building engine > Timing graph nodes", and its steps done of its steps."""

    def __init__(self, trt, progress=None):
        report = progress or (lambda what, done, total: None)
        base = trt.IProgressMonitor

        class Monitor(base):
            def __init__(inner):
                base.__init__(inner)
                inner.active = {}  # phase -> [parent, steps, steps done]; phases nest, finish innermost first

            def _path(inner, phase_name):
                names = []
                while phase_name in inner.active and phase_name not in names:
                    names.append(phase_name)
                    phase_name = inner.active[phase_name][0]
                return " > ".join(reversed(names[:1] + names[1:][-1:]))

            def phase_start(inner, phase_name, parent_phase, num_steps):
                inner.active[phase_name] = [parent_phase, max(num_steps, 1), 0]
                report(inner._path(phase_name), 0, max(num_steps, 1))

            def step_complete(inner, phase_name, step):
                if phase_name in inner.active:
                    entry = inner.active[phase_name]
                    entry[2] = step + 1
                    report(inner._path(phase_name), entry[2], entry[1])
                return True  # False would cancel the build

            def phase_finish(inner, phase_name):
                parent = inner.active.pop(phase_name, [None])[0]
                if parent in inner.active:
                    _, steps, done = inner.active[parent]
                    report(inner._path(parent), done, steps)

        self.monitor = Monitor()


def check_fp8_supports(model: ModelSpec, header) -> None:
    """Refuse a BlockFp8MatMul node of `header` (the ONNX header) whose weight ([N, K] or [G, N, K], an
    initializer) the FP8 kernels lack, naming the node and the weight."""
    from ..kernels.fp8 import plan as fp8_plan  # pure Python: no Triton, no GPU

    shapes = {t.name: tuple(t.dims) for t in header.graph.initializer}
    for node in header.graph.node:
        if (node.op_type, node.domain) != (contract.FP8_OP_TYPE, contract.OP_DOMAIN) or len(node.input) < 2:
            continue
        weight = shapes.get(node.input[1])
        if weight is None or len(weight) not in (2, 3):
            continue  # not an initializer: the plugin's own checks speak at build time
        groups = weight[0] if len(weight) == 3 else 1
        why = fp8_plan.unsupported_reason(fp8_plan.Fp8Dims(groups, 1, weight[-2], weight[-1], model.dtype))
        if why is not None:
            raise UserError(f"--attention plugin: the {contract.FP8_OP_TYPE} plugin cannot run node {node.name} "
                            f"(weight {node.input[1]} {list(weight)}, {model.dtype}): {why}; re-export "
                            "without --quant fp8, or build with --attention decomposed")


def check_plugin_supports(model: ModelSpec, header=None) -> None:
    """Refuse, before any TensorRT work, an export whose dtype or dims the plugins' kernels lack: MlaAttention's
    head dims, (for the DeepseekMoE nodes of `header`, the ONNX header) the expert dims and routing, and the
    BlockFp8MatMul nodes' weights."""
    from ..kernels.moe import plan as moe_plan  # pure Python: no Triton, no GPU
    from ..kernels.attention.plan import Dims, unsupported_reason

    c = model.config
    if model.quant == "fp8" and model.dtype == "float32":
        raise UserError("--attention plugin: --quant fp8 needs 16-bit activations; re-export with --dtype "
                        "bfloat16 or float16, or use --attention decomposed")
    paged = model.cache == "paged"  # contract 2: the cache kernels' layout (Smax: max_pages * page_size)
    why = unsupported_reason(Dims(1, 1, c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim,
                                  model.max_pages * model.page_size if paged else model.max_seq_len, model.dtype,
                                  page_size=model.page_size if paged else 0,
                                  kv_cache_dtype=contract.KV_CACHE_DTYPE_FP8 if model.kv_cache_dtype == "fp8"
                                  else contract.KV_CACHE_DTYPE_MODEL))
    if why is not None:
        raise UserError(f"--attention plugin: the MlaAttention plugin cannot run this export ({model.dtype}, "
                        f"kv_lora_rank={c.kv_lora_rank}, qk_rope_head_dim={c.qk_rope_head_dim}): {why}; "
                        "re-export with --dtype float16 or bfloat16, or build with --attention decomposed")
    for node in header.graph.node if header is not None else ():
        if (node.op_type, node.domain) != (contract.MOE_OP_TYPE, contract.OP_DOMAIN):
            continue
        import onnx

        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        fp8_experts = int(len(node.input) == len(contract.MOE_FP8_INPUTS))  # 7 inputs: FP8 experts, their scales
        dims = moe_plan.MoeDims(1, c.hidden_size, c.moe_intermediate_size or 0, attrs.get("num_experts", 0),
                                attrs.get("top_k", 0), attrs.get("n_group", 0), model.dtype, fp8_experts)
        why = moe_plan.unsupported_reason(dims)
        if why is not None:
            raise UserError(f"--attention plugin: the {contract.MOE_OP_TYPE} plugin cannot run this export "
                            f"({model.dtype}, hidden_size={c.hidden_size}, moe_intermediate_size="
                            f"{c.moe_intermediate_size}, num_experts={dims.num_experts}, top_k={dims.top_k}, "
                            f"n_group={dims.n_group}): {why}; re-export with --dtype float16 or bfloat16, or "
                            "build with --attention decomposed")
    if header is not None:
        check_fp8_supports(model, header)


def _detect_gpu() -> tuple[str | None, str | None]:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return torch.cuda.get_device_name(), f"{major}.{minor}"
    except Exception:  # no usable CUDA runtime: an engine built without a GPU
        pass
    return None, None


def inlined_graph(exported):
    """The exported graph (without its weights, which stay in their file) with the nodes' model-local
    functions inlined by ONNX's inliner (a ModelProto): what a build without the plugins parses, serialized.
    The inliner names every inlined value per call site; TensorRT's parser, inlining them itself, would give
    each layer's copy of a function the same node names (and warn once per node)."""
    import onnx.inliner

    return onnx.inliner.inline_local_functions(exported.header)


def parse_network(trt, logger, onnx: str | Path, plugin_path: Path | None, model_bytes: bytes | None = None):
    """Loader 1: the ONNX file parsed into a strongly typed network, with the plugin library (if any)
    loaded first; `model_bytes` (the file's graph, e.g. `inlined_graph`'s serialized) is parsed instead of the file, its
    external weights still read from beside `onnx`. Returns (builder, network, parser); the parser must
    outlive the network's use."""
    if plugin_path is not None:
        load_plugin_library(trt, plugin_path)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if plugin_path is not None and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    parsed = (parser.parse(model_bytes, str(Path(onnx).resolve())) if model_bytes is not None
              else parser.parse_from_file(str(onnx)))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx}: {errors}")
    return builder, network, parser


def builder_config(trt, builder, profiles: list[dict], workspace: int | None, timing_cache: Path | None):
    """Loader 2: a builder config with `profiles` added in order, the workspace limit and the timing cache."""
    config = builder.create_builder_config()
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    for entry in profiles:
        profile = builder.create_optimization_profile()
        for tensor, (lo, opt, hi) in entry["shapes"].items():
            profile.set_shape(tensor, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    if timing_cache is not None:
        try:
            cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
            if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
                raise ValueError("TensorRT refused it")
        except (TypeError, ValueError, RuntimeError) as exc:  # TensorRT's bindings raise these for bad bytes
            raise UserError(f"--timing-cache {timing_cache}: not a timing cache of this TensorRT ({exc}); delete it "
                            "or pass another path") from None
    return config


def engine_bytes(trt, builder, network, config, progress=None) -> bytes:
    """Loader 3: the serialized engine, the build phases told to `progress(what, done, total)`."""
    config.progress_monitor = _Progress(trt, progress).monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT failed to build the engine (see its log above)")
    return bytes(memoryview(serialized))


def network_io(network) -> list[dict]:
    """The network's I/O table for the sidecar: {"name", "mode", "dtype", "shape"} per tensor, inputs first."""
    io = []
    for mode, count, get in (("input", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):
        for i in range(count):
            t = get(i)
            io.append({"name": t.name, "mode": mode, "dtype": str(t.dtype).split(".")[-1], "shape": list(t.shape)})
    return io


def save_engine(output: Path, serialized: bytes, sidecar: Sidecar) -> Path:
    """Loader 4: the engine file and its sidecar, committed as one.

    The sidecar records the engine's size and sha256, and readers refuse an engine that is not the one its
    sidecar records (`Sidecar.read`, `Sidecar.check_engine_bytes`). Both files are written into a staging
    folder beside `output`; the engine is renamed into place, then the sidecar: that second rename is the
    commit point. Before it, a reader sees the old pair, or (between the two renames) the new engine with the
    old sidecar, which it refuses; a failure between the renames puts the old engine back (kept as a hard link
    in the staging folder). A kill between them leaves the mismatched pair, refused until the next build.
    """
    output = Path(output)
    sidecar = dataclasses.replace(sidecar, engine_size=len(serialized), engine_sha256=bytes_sha256(serialized))
    try:
        with staging_dir(output.parent) as staging:
            engine = write_staged(staging, output.name, serialized)
            side = write_staged(staging, sidecar_path(output).name, sidecar.to_json().encode())
            previous = staging / "previous.engine"
            try:
                os.link(output, previous)
            except OSError:  # no old engine, or a file system without hard links: nothing to put back
                previous = None
            os.replace(engine, output)
            try:
                os.replace(side, sidecar_path(output))  # the commit point
            except BaseException:
                if previous is not None:
                    os.replace(previous, output)
                else:
                    output.unlink(missing_ok=True)
                raise
    except OSError as exc:
        raise write_failed(output, exc) from None
    return output


def build_engine(spec: BuildSpec, progress=None, rank: RankIdentity | None = None) -> Path:
    """Build `spec.onnx` into `spec.output` (+ sidecar). Raises UserError with the reason on failure.
    `progress(what, done, total)` is told TensorRT's build phases. `rank`: the rank of a `--tp` export that
    `spec.onnx` must be (build_parallel.build_rank_engines); a rank file on its own is refused."""
    if spec.attention not in ATTENTION_MODES:
        raise UserError(f"--attention {spec.attention}: expected one of {', '.join(ATTENTION_MODES)}")
    output = Path(spec.output)
    exported = read_exported_model(spec.onnx)
    inputs = {"--onnx": spec.onnx, "the weights file of --onnx": exported.data_file,
              "--timing-cache": spec.timing_cache}
    check_output_file("-o", output, inputs)
    check_output_file("-o (its sidecar)", sidecar_path(output), inputs)
    if spec.timing_cache:
        check_output_file("--timing-cache", spec.timing_cache, {k: v for k, v in inputs.items() if k != "--timing-cache"})
    model = exported.spec
    identity = RankIdentity(model.tp_size, model.tp_rank, exported.metadata.get(contract.META_TP_EXPORT_ID) or None)
    if identity != (rank or RankIdentity()):
        raise UserError(f"--onnx {spec.onnx} is rank {identity.rank} of a --tp {identity.size} export: pass its "
                        "directory (--onnx DIR) to build an engine per rank" if rank is None else
                        f"{spec.onnx}: its metadata says rank {identity.rank} of {identity.size} (export "
                        f"{identity.export_id}), not rank {rank.rank} of export {rank.export_id}; re-export DIR")
    if model.kv_cache_dtype == "fp8" and (spec.attention == "decomposed" or spec.backend == "tensorrt-rtx"):
        option = "--attention decomposed" if spec.attention == "decomposed" else "--backend tensorrt-rtx"
        raise UserError(f"{option}: {spec.onnx} has an FP8 cache, which TensorRT feeds to plugins only (not to "
                        "the reference function's Cast); build with --attention plugin --backend tensorrt, or "
                        "re-export with --kv-cache-dtype model")
    if spec.pages is not None and model.cache != "paged":
        raise UserError(f"--pages-range sizes the page pools of a --cache paged export; {spec.onnx} has a "
                        f"{model.cache} cache: drop the option")
    pages = (spec.pages or default_pages(model, spec.batch)) if model.cache == "paged" else None
    if pages is not None:
        check_pool_volume(model, pages)
    if spec.attention == "plugin" and spec.backend == "tensorrt-rtx":
        raise UserError("TensorRT-RTX cannot build engines with custom plugins (its ONNX parser aborts after "
                        "creating one); use --attention decomposed with --backend tensorrt-rtx, or --backend tensorrt")
    if spec.timing_cache and spec.backend == "tensorrt-rtx":
        raise UserError("--timing-cache: TensorRT-RTX has no timing cache (its timing-cache calls are no-ops); "
                        "drop the option or use --backend tensorrt")
    prefill_tokens = spec.prefill_tokens or default_prefill_tokens(model.max_seq_len)
    if prefill_tokens[2] > model.max_seq_len:
        raise UserError(f"--prefill-range max {prefill_tokens[2]} exceeds the cache ({model.max_seq_len} rows)")
    if spec.attention == "plugin":
        check_plugin_supports(model, exported.header)
    inlined = inlined_graph(exported) if spec.attention == "decomposed" else None
    check_profile_volumes(volume_function(exported.header, inlined, model.max_seq_len), spec.batch,
                          prefill_tokens)
    trt = import_backend(spec.backend)  # before the plugin library: no library helps without TensorRT
    plugin_path = find_plugin_library(spec.plugin_lib) if spec.attention == "plugin" else None

    logger = make_logger(trt, spec.verbose)
    rewritten, collectives = parse_form(trt, spec.backend, exported.header if inlined is None else inlined,
                                        identity, spec.onnx)
    builder, network, _parser = parse_network(trt, logger, spec.onnx, plugin_path, rewritten or (
        None if inlined is None else inlined.SerializeToString()))
    check_plugin_layers(spec.attention, plugin_layers_by_name(trt, network), plugin_nodes(exported.header),
                        plugin_path)
    if identity.size > 1:
        check_collective_layers(trt, network, collectives, identity.size, spec.onnx)
    profiles = optimization_profiles(model, spec.batch, prefill_tokens, pages)
    if model.cache_contract:  # contract 2: the parsed cache planes as the profiles and the aliases need them
        check_cache_inputs(network, cache_shapes(model, spec.batch, pages), spec.onnx)
        check_alias_pairs(network, alias_pairs(model.config.num_hidden_layers, model.io, model.cache,
                                               model.kv_cache_dtype), spec.onnx)
    timing_cache = Path(spec.timing_cache) if spec.timing_cache else None
    config = builder_config(trt, builder, profiles, spec.workspace, timing_cache)
    enable_multidevice(trt, config, spec.backend, identity.size)
    aliased_io = spec.attention == "plugin" and enable_aliased_plugin_io(trt, config)  # the cache updated in place
    serialized = engine_bytes(trt, builder, network, config, progress)
    if logger.profile_warnings:  # a limit the check above does not know: TensorRT's warning is not the only word
        found = re.search(r"self-consistent\.\s*(\S+?):", logger.profile_warnings[0])
        tensor = found[1] if found else "?"
        raise UserError(f"TensorRT: the profiles' MAX shapes are past its limits for tensor {tensor} (its warning "
                        "above); lower --batch-range or --prefill-range MAX")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    gpu_name, capability = _detect_gpu()
    sidecar = Sidecar(
        tensorrt_flavour=spec.backend, tensorrt_version=str(trt.__version__), attention=spec.attention,
        gpu_name=gpu_name, compute_capability=capability,
        plugin_sha256=file_sha256(plugin_path) if plugin_path else None,
        plugin_path=str(plugin_path) if plugin_path else None,
        profiles=profiles, io=network_io(network), onnx_metadata=dict(exported.metadata),
        cache_binding=cache_binding(spec.attention, aliased_io), tp_size=identity.size, tp_rank=identity.rank,
        tp_export_id=identity.export_id, **cache_fields(model))
    return save_engine(output, serialized, sidecar)
