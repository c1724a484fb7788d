"""`profile`: latency percentiles of prefill and one decode step over a batch x context sweep.

Targets: an ONNX file on ONNX Runtime (CPU here), the eager PyTorch model in its export form
(`spec.absorb`: pre-folded or run-time absorbed; CPU or GPU, on a GPU its attention runs the Triton
kernels), a TensorRT engine (GPU), or the attention kernels alone (GPU). Each run also measures the
device's copy bandwidth, so achieved cache GB/s is reported as a fraction of what that device can move.
The results and their table, files and plot are `profile_report`.

Per (batch B, context L): `prefill` processes L new tokens from an empty cache; `decode` adds one
token to sequences already holding L tokens. Cache bytes of a decode step = B * (L+1) * (Dc+Dr) *
element size * layers (what the attention must read; an FP8 cache's bytes per token are its own).

A paged or FP8 latent cache (MlaAttention contract version 2: an export's own, or the spec's `cache` and
`kv_cache_dtype` for the eager model and the kernels) is timed on the pools and block table a
`paged.CacheServer` makes once per point from the random contiguous caches, outside the timing.
"""

from __future__ import annotations

import abc
import dataclasses
import statistics
from typing import Callable

import torch

from ..common.errors import UserError
from .measure import attention_inputs, copy_bandwidth_gb_s, percentile, time_calls
from .profile_report import ProfileReport, ProfileRow
from ..model.spec import ModelSpec, torch_dtype


class Target(abc.ABC):
    """Something to time: `prepare(batch, context, new_tokens)` returns a zero-argument call."""

    name = "target"
    cuda = False

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def token_bytes(self) -> int:
        """Cache bytes of one token in one layer."""
        c = self.spec.config
        if self.spec.kv_cache_dtype == "fp8":  # e4m3 codes, a float32 scale per 128, k_pe in the dtype
            return c.kv_lora_rank + 4 * -(-c.kv_lora_rank // 128) + c.qk_rope_head_dim * self.spec.element_bytes
        return c.cache_width * self.spec.element_bytes

    def cache_bytes(self, batch: int, context: int) -> int:
        return batch * (context + 1) * self.token_bytes() * self.spec.config.num_hidden_layers

    def peak_bytes(self, batch: int, context: int) -> int:
        """Estimated memory of one point's inputs and step: every layer's cache (drawn in float32, held in the
        dtype, and the step's present copy) and the prefill's attention scores over the whole cache."""
        c, smax = self.spec.config, self.spec.max_seq_len
        caches = batch * smax * c.cache_width * c.num_hidden_layers * (4 + 2 * self.spec.element_bytes)
        scores = batch * context * c.num_attention_heads * smax * 4 * 3
        return caches + scores

    def inputs(self, batch: int, context: int, new_tokens: int) -> dict[str, torch.Tensor]:
        """Random inputs: empty caches for a prefill, caches holding `context` rows for a decode step (contiguous:
        a paged or FP8 cache's runner makes its own planes from them, `prepare`)."""
        c, dtype = self.spec.config, torch_dtype(self.spec.dtype)
        names, _ = self.spec.step_io_names()
        gen = torch.Generator().manual_seed(0)
        held = 0 if new_tokens > 1 else context
        if self.spec.io == "tokens":
            x = torch.randint(0, c.vocab_size, (batch, new_tokens), generator=gen)
        else:
            x = torch.randn(batch, new_tokens, c.hidden_size, generator=gen).to(dtype)
        feeds = {names[0]: x, names[1]: torch.full((batch,), held, dtype=torch.int32)}
        for name in names[2:]:
            feeds[name] = torch.randn(batch, self.spec.max_seq_len, c.cache_width, generator=gen).to(dtype)
        return feeds

    @abc.abstractmethod
    def prepare(self, batch: int, context: int, new_tokens: int) -> Callable[[], None]:
        """Set up inputs once; the returned call runs one timed step."""


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"

    def __init__(self, path, spec: ModelSpec | None = None):
        """`spec`: the file's, when the caller has read it already (else read here)."""
        from ..graph.onnx_reader import read_export_spec
        from .runners import OnnxRuntimeRunner

        super().__init__(spec or read_export_spec(path))
        self.runner = OnnxRuntimeRunner(path)

    def prepare(self, batch, context, new_tokens):
        from .runners import to_numpy

        feeds = {k: to_numpy(v) for k, v in self.inputs(batch, context, new_tokens).items()}
        if self.spec.cache_contract:  # the export's own pools and block table, made once, outside the timing
            from .paged import CacheServer

            feeds = CacheServer(None, self.spec).graph_feeds(feeds)
        return lambda: self.runner.run(feeds)


class EagerTarget(Target):
    """The eager model in its export form, `spec.absorb` (on the GPU its attention core is the Triton kernels)."""

    name = "eager"

    def __init__(self, spec: ModelSpec):
        from ..weights.eager import eager_model
        from ..model.folding import fold_model
        from ..model.footprint import GIB, check_memory, model_counts

        super().__init__(spec)
        self.cuda = torch.cuda.is_available()
        counts = model_counts(spec.config, with_embeddings=spec.io == "tokens")
        check_memory(4 * counts.total + spec.element_bytes * counts.exported + GIB,
                     f"the eager model of {spec.config.name} ({spec.config.num_hidden_layers} layers)",
                     "profile fewer layers (--layers N)")
        model = fold_model(eager_model(spec), torch_dtype(spec.dtype), spec.absorb, cache=spec.cache,
                           kv_cache_dtype=spec.kv_cache_dtype, page_size=spec.page_size)
        self.model = model.eval().to("cuda" if self.cuda else "cpu")

    def prepare(self, batch, context, new_tokens):
        device = "cuda" if self.cuda else "cpu"
        feeds = list(self.inputs(batch, context, new_tokens).values())
        if self.spec.cache_contract:  # x, cache_seqlens, then the block table and pools the model takes
            feeds = layout_feeds(self.spec, feeds)
        feeds = [t.to(device) for t in feeds]

        def call():
            with torch.no_grad():
                self.model(*feeds)
        return call


class EngineTarget(Target):
    name = "tensorrt"
    cuda = True

    def __init__(self, engine, plugin_lib=None):
        from ..model.spec import spec_from_metadata
        from .trt_runner import TensorRTRunner

        self.runner = TensorRTRunner(engine, plugin_lib)
        super().__init__(spec_from_metadata(self.runner.sidecar.onnx_metadata, f"--engine {engine}"))
        self.name = self.runner.name

    def prepare(self, batch, context, new_tokens):
        inputs = self.inputs(batch, context, new_tokens)
        if self.spec.cache_contract:  # the export's own pools and block table, made once, outside the timing
            from .paged import CacheServer
            from .runners import from_numpy, to_numpy

            graph = CacheServer(None, self.spec).graph_feeds({k: to_numpy(v) for k, v in inputs.items()})
            inputs = {k: from_numpy(v) for k, v in graph.items()}
        inputs = {k: v.cuda() for k, v in inputs.items()}
        self.runner.bind(inputs, new_tokens)
        execute = self.runner.execute
        if new_tokens == 1:  # decode: replay a CUDA graph of the step where TensorRT allows capture
            try:
                execute()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.runner.stream):
                    execute()
                return graph.replay
            except Exception:  # capture is refused by some TensorRT builds/plugins: time plain launches
                pass
        return execute


class KernelsTarget(Target):
    """The MlaAttention op alone through the Triton kernels (GPU)."""

    name = "triton kernels"
    cuda = True

    def __init__(self, spec: ModelSpec):
        if not torch.cuda.is_available():
            raise UserError("profile --kernels needs an NVIDIA GPU; none is available here "
                            "(the kernels are tested on the CPU under the Triton interpreter)")
        super().__init__(spec)
        from ..kernels import mla_attention_triton  # noqa: F401  (imported lazily: needs triton)
        self.op = mla_attention_triton
        self.spec = spec

    def cache_bytes(self, batch, context):
        return batch * (context + 1) * self.token_bytes()  # one layer's

    def prepare(self, batch, context, new_tokens):
        from ..common import contract
        from ..model.rope import rope_cos_sin

        c, spec = self.spec.config, self.spec
        held = 0 if new_tokens > 1 else context
        *args, seqlens = attention_inputs(batch, new_tokens, c.num_attention_heads, c.kv_lora_rank,
                                          c.qk_rope_head_dim, held, spec.max_seq_len, torch_dtype(spec.dtype), "cpu")
        layout = {}
        if spec.cache_contract:  # the cache [B, Smax, Dc+Dr] as one layer's pools (and the block table)
            one = dataclasses.replace(spec, config=c.with_layers(1))
            _, _, *planes = layout_feeds(one, [torch.zeros(batch, new_tokens), seqlens, args[4]])
            table = planes.pop(0) if spec.cache == "paged" else None  # [B, max_pages] int32
            args[4] = planes[0]  # [P, page, Dc+Dr] T, or FP8 codes [P, page, Dc]
            fp8 = spec.kv_cache_dtype == "fp8"
            layout = dict(block_table=table, page_size=spec.page_size if table is not None else 0,
                          past_scale=planes[1] if fp8 else None, past_rope=planes[2] if fp8 else None,
                          kv_cache_dtype=contract.KV_CACHE_DTYPE_FP8 if fp8 else contract.KV_CACHE_DTYPE_MODEL)
            layout = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in layout.items()}
        args, seqlens = [t.cuda() for t in args], seqlens.cuda()
        rope = rope_cos_sin(c, spec.max_seq_len).cuda()  # [Smax, Dr]
        out = torch.empty_like(args[0])
        return lambda: self.op(*args, seqlens, rope, c.softmax_scale, out=out, in_place=True, **layout)


def layout_feeds(spec: ModelSpec, feeds: list[torch.Tensor]) -> list[torch.Tensor]:
    """The inputs of a contract-2 model (`spec.cache_contract`) for the contiguous ones `feeds` (x, cache_seqlens,
    a cache [B, Smax, Dc+Dr] per layer): x, cache_seqlens, the block table (paged) and every layer's planes,
    made by a `paged.CacheServer` (shuffled pages, NaN where nothing was written)."""
    from .paged import CacheServer
    from .runners import from_numpy, to_numpy

    names, _ = spec.step_io_names()
    graph = CacheServer(None, spec).graph_feeds({n: to_numpy(t) for n, t in zip(names, feeds, strict=True)})
    return [from_numpy(v) for v in graph.values()]


def run_profile(target: Target, batches: list[int], contexts: list[int], warmup: int = 2, iters: int = 10,
                phases: tuple[str, ...] = ("prefill", "decode"),
                progress: Callable[[str, float, float], None] | None = None) -> ProfileReport:
    """Time every (phase, batch, context); contexts must leave room in the cache. `progress(what, done, total)`
    is told each case as it starts ("case 3/8: decode, batch 4, context 256", cases done, cases)."""
    from ..model.footprint import check_memory

    smax = target.spec.max_seq_len
    too_long = [c for c in contexts if c + 1 > smax]
    if too_long:
        raise UserError(f"--contexts {too_long[0]}: the cache holds {smax} rows (context + 1 new token must fit); "
                        "export with a larger --max-seq-len")
    if not target.cuda:  # host memory; a GPU target's device memory is its runtime's to refuse
        check_memory(target.peak_bytes(max(batches), max(contexts)),
                     f"profiling --batches {max(batches)} --contexts {max(contexts)}", "lower --batches or --contexts")
    report_progress = progress or (lambda what, done, total: None)
    cases = [(phase, batch, context) for phase in phases for batch in batches for context in contexts]
    report_progress("measuring the copy bandwidth", 0, len(cases))
    device = torch.cuda.get_device_name() if target.cuda else "cpu"
    c = target.spec.config
    model = f"{c.name}, {c.num_hidden_layers} layer{'s' if c.num_hidden_layers > 1 else ''}"
    spec = target.spec
    report = ProfileReport(device, copy_bandwidth_gb_s(target.cuda), model=model, dtype=spec.dtype, cache=spec.cache,
                           page_size=spec.page_size if spec.cache == "paged" else None,
                           kv_cache_dtype=spec.kv_cache_dtype)
    for i, (phase, batch, context) in enumerate(cases):
        report_progress(f"case {i + 1}/{len(cases)}: {phase}, batch {batch}, context {context}", i, len(cases))
        new_tokens = context if phase == "prefill" else 1
        samples = time_calls(target.prepare(batch, context, new_tokens), warmup, iters, target.cuda)
        median = statistics.median(samples)
        row = ProfileRow(target.name, phase, batch, context, new_tokens, median, percentile(samples, 90),
                         percentile(samples, 99), batch * new_tokens / (median * 1e-3))
        if phase == "decode":
            row.cache_gb_s = target.cache_bytes(batch, context) / (median * 1e-3) / 1e9
            row.percent_of_copy = 100 * row.cache_gb_s / report.copy_gb_s
        report.rows.append(row)
    return report
