"""Running an export with a paged and/or FP8 latent cache behind the contiguous `Runner` interface, as a server
does: `CacheServer` keeps the page pools between calls, hands pages out as sequences grow, and answers each
call with the caches read back as contiguous `[B, Smax, Dc+Dr]` tensors that validate compares.

Pages come from a seeded shuffle of the pool, taken as each sequence needs them, so the pages of different
sequences interleave and no sequence's pages are in order. Every row nobody wrote holds NaN (FP8 codes: the
e4m3 NaN), block-table slots past a sequence's pages hold 2147480000 (never to be dereferenced), and after
each call the pages no sequence owns must be bit for bit as they were: `CacheServer.run` raises otherwise.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from ..common import contract
from ..common.errors import UserError
from ..model.cache_ops import dequantize_cache_rows, quantize_cache_rows
from ..model.spec import ModelSpec, torch_dtype
from .block_table import check_block_table
from .runners import from_numpy, to_numpy

UNUSED_SLOT = 2147480000  # a block-table entry no implementation may dereference (FlashMLA's tests use it)
E4M3_NAN = 0x7F


class CacheServer:
    """Wraps `runner` (the export's own graph I/O) so that it is fed and answers contiguous caches."""

    def __init__(self, runner, spec: ModelSpec, seed: int = 0):
        self.runner, self.spec, self.seed = runner, spec, seed
        kind = f"{spec.cache} cache" + (" (fp8)" if spec.kv_cache_dtype == "fp8" else "")
        self.name = f"{getattr(runner, 'name', 'onnxruntime')}, {kind}"  # runner None: feeds only (Polygraphy)
        self.paged = spec.cache == "paged"
        self.page = spec.page_size if self.paged else spec.max_seq_len
        self.planes: list[list[torch.Tensor]] | None = None  # per layer: [pool] or [codes, scales, rope]
        self.owned: list[list[int]] = []  # per sequence: its pages, in order
        self.free: list[int] = []

    def reset(self) -> None:
        """Forget every sequence: the next call starts new pools from its contiguous caches."""
        self.planes, self.owned, self.free = None, [], []

    # ---- state ---------------------------------------------------------------------------------------------
    def _start(self, caches: list[torch.Tensor], seqlens: torch.Tensor) -> None:
        """Make the pools and write each sequence's history rows (`caches[l][b, :seqlens[b]]`) into pages."""
        c, dtype = self.spec.config, torch_dtype(self.spec.dtype)
        batch = caches[0].shape[0]
        if self.paged:
            pages = self.spec.pool_pages(batch)  # SPARE_PAGES never owned, checked untouched
            order = torch.randperm(pages, generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.free, self.owned = order, [[] for _ in range(batch)]
        else:
            pages, self.free, self.owned = batch, [], [[b] for b in range(batch)]
        shape = (pages, self.page)
        self.planes = []
        for _ in range(c.num_hidden_layers):
            if self.spec.kv_cache_dtype == "fp8":
                tiles = -(-c.kv_lora_rank // contract.FP8_CACHE_TILE)
                codes = torch.full((*shape, c.kv_lora_rank), E4M3_NAN, dtype=torch.uint8).view(torch.float8_e4m3fn)
                self.planes.append([codes, torch.full((*shape, tiles), float("nan")),
                                    torch.full((*shape, c.qk_rope_head_dim), float("nan"), dtype=dtype)])
            else:
                self.planes.append([torch.full((*shape, c.cache_width), float("nan"), dtype=dtype)])
        self._grow(seqlens)
        for layer, cache in enumerate(caches):
            for b, rows in enumerate(seqlens.tolist()):
                self._write(layer, b, torch.arange(rows), cache[b, :rows])

    def _grow(self, filled: torch.Tensor) -> None:
        """Give each sequence the pages it needs to hold `filled[b]` rows (sequence by sequence: interleaved)."""
        if not self.paged:
            return
        for b, rows in enumerate(filled.tolist()):
            while len(self.owned[b]) * self.page < rows:
                if not self.free:
                    raise UserError("the page pool is exhausted (a sequence longer than --max-seq-len?)")
                self.owned[b].append(self.free.pop())

    def _where(self, b: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pages = torch.tensor(self.owned[b], dtype=torch.long)
        return pages[positions // self.page], positions % self.page

    def _write(self, layer: int, b: int, positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Store contiguous rows `[n, Dc+Dr]` of sequence b at `positions` (FP8: quantized)."""
        page, offset = self._where(b, positions)
        planes, d_c = self.planes[layer], self.spec.config.kv_lora_rank
        if self.spec.kv_cache_dtype == "fp8":
            codes, scales = quantize_cache_rows(rows[:, :d_c])
            planes[0][page, offset], planes[1][page, offset] = codes, scales
            planes[2][page, offset] = rows[:, d_c:].to(planes[2].dtype)
        else:
            planes[0][page, offset] = rows.to(planes[0].dtype)

    def _read(self, layer: int, b: int, rows: int) -> torch.Tensor:
        """Rows [0, rows) of sequence b, contiguous `[rows, Dc+Dr]` in the export's dtype."""
        page, offset = self._where(b, torch.arange(rows))
        planes, dtype = self.planes[layer], torch_dtype(self.spec.dtype)
        if self.spec.kv_cache_dtype == "fp8":
            return torch.cat([dequantize_cache_rows(planes[0][page, offset], planes[1][page, offset], dtype),
                              planes[2][page, offset].to(dtype)], dim=-1)
        return planes[0][page, offset]

    def block_table(self, batch: int) -> np.ndarray:
        table = np.full((batch, self.spec.max_pages), UNUSED_SLOT, dtype=np.int32)
        for b, pages in enumerate(self.owned):
            table[b, :len(pages)] = pages
        return table

    # ---- the Runner interface ------------------------------------------------------------------------------
    def graph_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The export's own feeds for a step given by the contiguous names (pages handed out as needed)."""
        step_in, _ = self.spec.step_io_names()
        graph_in, _ = self.spec.graph_io_names()
        seqlens = from_numpy(feeds[contract.CACHE_SEQLENS])
        if self.planes is None:
            self._start([from_numpy(feeds[name]) for name in step_in[2:]], seqlens)
        self._grow(seqlens + feeds[step_in[0]].shape[1])
        graph_feeds = {step_in[0]: feeds[step_in[0]], contract.CACHE_SEQLENS: feeds[contract.CACHE_SEQLENS]}
        if self.paged:
            table = self.block_table(len(self.owned))
            check_block_table(table, feeds[contract.CACHE_SEQLENS], feeds[step_in[0]].shape[1], self.page,
                              self.planes[0][0].shape[0])  # a guard: the server's own tables always pass
            graph_feeds[contract.BLOCK_TABLE] = table
        names = iter(graph_in[3:] if self.paged else graph_in[2:])
        for planes in self.planes:
            graph_feeds.update({next(names): to_numpy(plane) for plane in planes})
        return graph_feeds

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step: feeds and outputs by the contiguous names (`ModelSpec.step_io_names`)."""
        step_in, step_out = self.spec.step_io_names()
        _, graph_out = self.spec.graph_io_names()
        seqlens = from_numpy(feeds[contract.CACHE_SEQLENS])
        new_tokens = feeds[step_in[0]].shape[1]
        graph_feeds = self.graph_feeds(feeds)
        before = self._free_bytes()
        outputs = self.runner.run(graph_feeds)
        presents = iter(graph_out[1:])
        self.planes = [[from_numpy(outputs[next(presents)]) for _ in planes] for planes in self.planes]
        if self._free_bytes() != before:
            raise UserError(f"{self.runner.name} wrote into pages no sequence owns (outside the block table)")
        answer = {step_out[0]: outputs[graph_out[0]]}
        c, dtype = self.spec.config, torch_dtype(self.spec.dtype)
        filled = (seqlens + new_tokens).tolist()
        for layer, name in enumerate(step_out[1:]):
            cache = torch.full((len(filled), self.spec.max_seq_len, c.cache_width), float("nan"), dtype=dtype)
            for b, rows in enumerate(filled):
                cache[b, :rows] = self._read(layer, b, rows)
            answer[name] = to_numpy(cache)
        return answer

    def _free_bytes(self) -> list[bytes]:
        """The bytes of every page no sequence owns, every plane of every layer."""
        if not self.free:
            return []
        free = torch.tensor(sorted(self.free), dtype=torch.long)
        return [plane[free].contiguous().view(torch.uint8).numpy().tobytes()
                for planes in self.planes for plane in planes]


class LayerPartServer:
    """One decoder layer's part (`graph.parts.Part`) of a contract-2 export, fed and answering a contiguous cache
    as a version-1 layer part is (`self.part`: `past_latent_cache.i` in, `present_latent_cache.i` out): a
    one-layer `CacheServer` of its own keeps the layer's pools and block table. A graph input the part reads for
    its shape only (another layer's plane: every layer's pools are alike) is fed this layer's plane of its kind."""

    def __init__(self, runner, part, spec: ModelSpec, seed: int = 0):
        import dataclasses

        from ..graph.parts import Part

        self.runner, self.graph_part, self.name = runner, part, runner.name
        one = dataclasses.replace(spec, config=spec.config.with_layers(1))
        (self.one_in, self.one_out), (self.one_graph_in, self.one_graph_out) = one.step_io_names(), one.graph_io_names()
        full_in = spec.graph_io_names()[0]
        first, planes = (3 if spec.cache == "paged" else 2), (3 if spec.kv_cache_dtype == "fp8" else 1)
        # another layer's plane -> this layer's plane of the same kind
        self.alike = {n: part.inputs[first + (full_in.index(n) - first) % planes] for n in part.graph_inputs
                      if n in full_in[first:]}
        i = part.layer
        self.part = Part(part.label, (part.inputs[0], contract.CACHE_SEQLENS, contract.past_cache_name(i)),
                         (part.outputs[0], contract.present_cache_name(i)), i,
                         tuple(n for n in part.graph_inputs if n not in self.alike))
        self.server = CacheServer(SimpleNamespace(name=self.name, run=self.run_graph), one, seed)
        self.passed: dict[str, np.ndarray] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step, feeds and outputs by `self.part`'s names."""
        inputs, outputs = self.part.inputs, self.part.outputs
        self.passed = {n: feeds[n] for n in self.part.graph_inputs}
        answer = self.server.run({self.one_in[0]: feeds[inputs[0]], contract.CACHE_SEQLENS: feeds[inputs[1]],
                                  self.one_in[2]: feeds[inputs[2]]})
        return {outputs[0]: answer[self.one_out[0]], outputs[1]: answer[self.one_out[1]]}

    def run_graph(self, graph_feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The part on the one-layer graph's feeds (the server's), answered by the one-layer graph's names."""
        feeds = {part_name: graph_feeds[name] for name, part_name in zip(self.one_graph_in, self.graph_part.inputs,
                                                                         strict=True)}
        feeds.update(self.passed)
        feeds.update({name: feeds[plane] for name, plane in self.alike.items()})
        got = self.runner.run(feeds)
        missing = [n for n in self.graph_part.outputs if n not in got]
        if missing:
            raise UserError(f"{self.name}: the part lacks outputs {missing}; the graph does not match its metadata")
        return {name: got[part_name] for name, part_name in zip(self.one_graph_out, self.graph_part.outputs,
                                                                strict=True)}

