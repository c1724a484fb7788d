"""What a model is, independent of any runtime: `ModelSpec`, its dtypes, and its ONNX metadata.

Export records a `ModelSpec` in the ONNX file's metadata (`ModelSpec.metadata`); validate, build
and profile read it back (`spec_from_metadata`) to rebuild the same eager model or size the same
buffers. The engine sidecar carries the same metadata, copied as it is. No torch import here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..common import contract
from ..common.version import __version__
from .config import MlaConfig
from ..common.errors import FieldError, UserError
from .hf_config import config_from_hf_dict
from .tp_layout import check_tp

# Element types of weights, activations and caches, with their sizes in bytes.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DTYPE_NAMES = tuple(DTYPE_BYTES)
IO_KINDS = ("hidden", "tokens")  # graph I/O: hidden states, or input_ids -> logits
# Where W_UK and W_UV go in the exported graph: folded into the query and output projections at
# export, or kept per head and applied at run time (batched matmuls around the MlaAttention node).
ABSORB_MODES = ("prefolded", "runtime")
MAX_SEED = 2**63 - 1  # seeds are 64-bit (torch.Generator)


def torch_dtype(name: str):
    """The torch dtype of a DTYPE_NAMES entry (imports torch)."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


SPARE_PAGES = 3  # pages of a served pool beyond what its sequences can ever need (ModelSpec.pool_pages)


@dataclass(frozen=True)
class ModelSpec:
    """A model and how it is laid out: the config, element type, cache rows, weights and graph I/O.

    dtype: weights, activations and cache type (DTYPE_NAMES).
    max_seq_len: cache rows per sequence (Smax).
    seed: seed of the random weights when `checkpoint` is None.
    checkpoint: a HF checkpoint directory the weights come from, or None.
    io: "hidden" (hidden states in and out) or "tokens" (input_ids -> logits).
    absorb: "prefolded" (W_UK^T W_UQ and W_O W_UV multiplied at export) or "runtime" (W_UQ, W_UK
        [H, Dn, Dc], W_UV [H, Dc, Dv] and W_O stored as they are, applied per head); both feed the
        same MlaAttention node (ABSORB_MODES).
    quant: "none" (every weight in `dtype`) or "fp8" (the large projections as FP8 blocks with float32
        scales, `model/fp8_forms.py`; embedding, norms, router, head and cache in `dtype`) (QUANT_MODES).
    tp_size, tp_rank: with tp_size N > 1, rank `tp_rank`'s part of the model split over N devices
        (`model/parallel.py`, DeepSeek-V3's layout); the weights, scenario and eager reference stay the
        whole model's (`single_device`).
    cache: "contiguous" ([B, Smax, Dc+Dr] per layer) or "paged" (a pool of `page_size`-row pages per layer
        and a block table; MlaAttention contract version 2) (contract.CACHE_LAYOUTS).
    kv_cache_dtype: "model" (cache rows in `dtype`) or "fp8" (c_kv as e4m3 codes with a power-of-two float32
        scale per 128 values, k_pe in `dtype`; contract version 2) (contract.KV_CACHE_DTYPES).
    """

    config: MlaConfig
    dtype: str = "float32"
    max_seq_len: int = 4096
    seed: int = 0
    checkpoint: str | None = None
    io: str = "hidden"
    absorb: str = "prefolded"
    quant: str = "none"
    tp_size: int = 1
    tp_rank: int = 0
    cache: str = "contiguous"
    page_size: int = contract.DEFAULT_PAGE_SIZE
    kv_cache_dtype: str = "model"

    def __post_init__(self):
        if self.dtype not in DTYPE_NAMES:
            raise FieldError("dtype", self.dtype, f"expected one of {', '.join(DTYPE_NAMES)}")
        if self.io not in IO_KINDS:
            raise FieldError("io", self.io, f"expected one of {', '.join(IO_KINDS)}")
        if self.absorb not in ABSORB_MODES:
            raise FieldError("absorb", self.absorb, f"expected one of {', '.join(ABSORB_MODES)}")
        if self.quant not in contract.QUANT_MODES:
            raise FieldError("quant", self.quant, f"expected one of {', '.join(contract.QUANT_MODES)}")
        if isinstance(self.max_seq_len, bool) or not isinstance(self.max_seq_len, int) or self.max_seq_len < 2:
            raise FieldError("max_seq_len", self.max_seq_len, "expected at least 2 cache rows (a prefill takes 2 "
                             "tokens or more)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise FieldError("seed", self.seed, f"expected an integer from 0 to {MAX_SEED}")
        if self.max_seq_len > self.config.max_position_embeddings:
            raise FieldError("max_seq_len", self.max_seq_len,
                             f"exceeds the model's max_position_embeddings ({self.config.max_position_embeddings})")
        check_tp(self.config, self.tp_size, self.io, self.quant, self.absorb)
        if self.cache not in contract.CACHE_LAYOUTS:
            raise FieldError("cache", self.cache, f"expected one of {', '.join(contract.CACHE_LAYOUTS)}")
        if self.kv_cache_dtype not in contract.KV_CACHE_DTYPES:
            raise FieldError("kv_cache_dtype", self.kv_cache_dtype,
                             f"expected one of {', '.join(contract.KV_CACHE_DTYPES)}")
        page = self.page_size
        bad = isinstance(page, bool) or not isinstance(page, int) or page < 1 or page & (page - 1)
        if bad or page > contract.MAX_PAGE_SIZE:
            raise FieldError("page_size", page, f"expected a power of two from 1 to {contract.MAX_PAGE_SIZE} (rows "
                             "per page)")
        if isinstance(self.tp_rank, bool) or not isinstance(self.tp_rank, int) or not 0 <= self.tp_rank < self.tp_size:
            raise FieldError("tp_rank", self.tp_rank, f"expected a rank from 0 to {self.tp_size - 1}")

    def single_device(self) -> "ModelSpec":
        """The whole model this spec is a rank of (itself when tp_size is 1)."""
        return dataclasses.replace(self, tp_size=1, tp_rank=0)

    def rank(self, rank: int) -> "ModelSpec":
        """Rank `rank`'s part of the same model."""
        return dataclasses.replace(self, tp_rank=rank)

    @property
    def element_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def cache_contract(self) -> bool:
        """Whether the graph's MlaAttention nodes are contract version 2 (a paged or FP8 cache)."""
        return self.cache == "paged" or self.kv_cache_dtype == "fp8"

    @property
    def max_pages(self) -> int:
        """Block-table slots per sequence of a paged export: enough pages for Smax rows."""
        return -(-self.max_seq_len // self.page_size)

    def pool_pages(self, batch: int) -> int:
        """Pages of the pool a server of `batch` sequences makes (validate, profile, build's default profile):
        every sequence at Smax, plus SPARE_PAGES that no sequence ever owns (checked untouched)."""
        return batch * self.max_pages + SPARE_PAGES

    def graph_io_names(self) -> tuple[list[str], list[str]]:
        """(input names, output names) of the exported graph, in order."""
        return contract.graph_io_names(self.config.num_hidden_layers, self.io, self.cache, self.kv_cache_dtype)

    def step_io_names(self) -> tuple[list[str], list[str]]:
        """The names a `Runner` is fed and answers with: the graph's own for a contiguous cache in the model's
        dtype; for the other caches, their contiguous equivalent (a runner adapts: `run/paged.py`)."""
        return contract.graph_io_names(self.config.num_hidden_layers, self.io)

    def metadata(self) -> dict[str, str]:
        """The ONNX metadata_props that record this spec (read back by `spec_from_metadata`)."""
        return {
            contract.META_PRODUCER: __version__,
            contract.META_CONTRACT_VERSION: str(contract.CACHE_CONTRACT_VERSION if self.cache_contract
                                                else contract.CONTRACT_VERSION),
            contract.META_CONFIG: json.dumps(self.config.to_hf_dict(), sort_keys=True),
            contract.META_DTYPE: self.dtype,
            contract.META_NUM_LAYERS: str(self.config.num_hidden_layers),
            contract.META_MAX_SEQ_LEN: str(self.max_seq_len),
            contract.META_IO: self.io,
            contract.META_SEED: str(self.seed),
            contract.META_CHECKPOINT: self.checkpoint or "",
            contract.META_WEIGHTS: contract.WEIGHTS_SCHEME,
            contract.META_MOE_CONTRACT_VERSION: str(contract.MOE_CONTRACT_VERSION),
            contract.META_ABSORB: self.absorb,
            contract.META_QUANT: self.quant,
            **({contract.META_FP8_CONTRACT_VERSION: str(contract.FP8_CONTRACT_VERSION)} if self.quant == "fp8" else {}),
            **({contract.META_CACHE: self.cache, contract.META_KV_CACHE_DTYPE: self.kv_cache_dtype,
                **({contract.META_PAGE_SIZE: str(self.page_size)} if self.cache == "paged" else {})}
               if self.cache_contract else {}),
            **({contract.META_TP_SIZE: str(self.tp_size), contract.META_TP_RANK: str(self.tp_rank),
                contract.META_COLLECTIVE_CONTRACT_VERSION: str(contract.COLLECTIVE_CONTRACT_VERSION)}
               if self.tp_size > 1 else {}),
        }


def spec_from_metadata(meta: dict[str, str], source: str) -> ModelSpec:
    """The `ModelSpec` recorded in mla-export metadata (an ONNX file's, or an engine sidecar's copy).

    `source` names where the metadata came from in error messages (e.g. "--onnx m.onnx").
    """
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise UserError(f"{source}: mla-export metadata is damaged (expected a table of strings); re-export the "
                        "model")
    if contract.META_PRODUCER not in meta or contract.META_CONFIG not in meta:
        raise UserError(f"{source}: not written by mla-export (no mla_export metadata); "
                        "export it with `mla-export export`")
    version = meta.get(contract.META_CONTRACT_VERSION)
    if version not in {str(v) for v in contract.READABLE_CONTRACT_VERSIONS}:
        raise UserError(f"{source}: MlaAttention contract version {version}, this mla-export speaks "
                        f"{' and '.join(str(v) for v in contract.READABLE_CONTRACT_VERSIONS)}; re-export it with "
                        "this version")
    try:
        config = config_from_hf_dict(json.loads(meta[contract.META_CONFIG]))
        spec = ModelSpec(config=config, dtype=meta[contract.META_DTYPE],
                         max_seq_len=int(meta[contract.META_MAX_SEQ_LEN]), seed=int(meta[contract.META_SEED]),
                         checkpoint=meta.get(contract.META_CHECKPOINT) or None, io=meta[contract.META_IO],
                         absorb=meta.get(contract.META_ABSORB, "prefolded"),
                         quant=meta.get(contract.META_QUANT, "none"),
                         tp_size=int(meta.get(contract.META_TP_SIZE, "1")),
                         tp_rank=int(meta.get(contract.META_TP_RANK, "0")),
                         cache=meta.get(contract.META_CACHE, "contiguous"),
                         page_size=int(meta.get(contract.META_PAGE_SIZE, str(contract.DEFAULT_PAGE_SIZE))),
                         kv_cache_dtype=meta.get(contract.META_KV_CACHE_DTYPE, "model"))
    except RecursionError:
        raise UserError(f"{source}: mla-export metadata is damaged (its config is nested too deeply); "
                        "re-export the model") from None
    except (KeyError, ValueError, TypeError, json.JSONDecodeError, UserError) as exc:
        raise UserError(f"{source}: mla-export metadata is damaged ({str(exc)[:300]}); re-export the model") from None
    if (version == str(contract.CACHE_CONTRACT_VERSION)) != spec.cache_contract:
        raise UserError(f"{source}: mla-export metadata is damaged (MlaAttention contract version {version} with "
                        f"cache {spec.cache}, kv_cache_dtype {spec.kv_cache_dtype}); re-export the model")
    if spec.checkpoint is None and meta.get(contract.META_WEIGHTS) != contract.WEIGHTS_SCHEME:
        raise UserError(f"{source}: its random weights were made by an older mla-export (scheme "
                        f"{meta.get(contract.META_WEIGHTS, 'from before schemes')}, this one makes "
                        f"{contract.WEIGHTS_SCHEME}), so they cannot be rebuilt to compare; re-export the model")
    moe_version = meta.get(contract.META_MOE_CONTRACT_VERSION, str(contract.MOE_CONTRACT_VERSION))
    if moe_version not in {str(v) for v in contract.MOE_READABLE_VERSIONS}:
        raise UserError(f"{source}: DeepseekMoE contract version {moe_version}, this mla-export speaks "
                        f"{contract.MOE_CONTRACT_VERSION}; re-export it with this version")
    fp8_version = meta.get(contract.META_FP8_CONTRACT_VERSION, str(contract.FP8_CONTRACT_VERSION))
    if spec.quant == "fp8" and fp8_version != str(contract.FP8_CONTRACT_VERSION):
        raise UserError(f"{source}: BlockFp8MatMul contract version {fp8_version}, this mla-export speaks "
                        f"{contract.FP8_CONTRACT_VERSION}; re-export it with this version")
    collective_version = meta.get(contract.META_COLLECTIVE_CONTRACT_VERSION, str(contract.COLLECTIVE_CONTRACT_VERSION))
    if spec.tp_size > 1 and collective_version != str(contract.COLLECTIVE_CONTRACT_VERSION):
        raise UserError(f"{source}: collective contract version {collective_version}, this mla-export speaks "
                        f"{contract.COLLECTIVE_CONTRACT_VERSION}; re-export it with this version")
    if meta.get(contract.META_NUM_LAYERS) != str(config.num_hidden_layers):
        raise UserError(f"{source}: mla-export metadata is damaged ({contract.META_NUM_LAYERS}="
                        f"{meta.get(contract.META_NUM_LAYERS)!r} for a {config.num_hidden_layers}-layer config); "
                        "re-export the model")
    return spec

