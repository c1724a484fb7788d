"""The eager MLA model: the specification every other stage is tested against.

Parameter names follow DeepSeek's HF checkpoints (without the leading `model.`), so a checkpoint's
state dict loads directly. Attention has three interchangeable paths:

- `naive`: decompress per-head keys and values from the cached c_kv (the paper's form);
- `absorbed`: W_UK applied to the query and W_UV to the latent output at run time (per-head einsums);
- pre-folded: `FoldedMlaAttention`, whose weights come from `folding.fold_attention` and whose core is
  the `MlaAttention` op (`torch.ops.mla.mla_attention`), which export turns into the ONNX node;
- run-time absorbed for export: `RuntimeAbsorbedMlaAttention` (weights from `folding.absorb_attention`),
  W_UK and W_UV kept per head as batched matmuls around the same op.

All paths read and write the same latent cache `[B, Smax, Dc + Dr]` (c_kv, then the rotated k_pe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import ops  # noqa: F401  (registers torch.ops.mla.mla_attention)
from .config import MlaConfig
from .fp8 import KeepTypes
from .moe import RoutingRule  # also registers torch.ops.mla.deepseek_moe
from .parallel import TensorParallel, VocabParallelEmbedding, gather_ranks, reduce_ranks
from .cache_ops import Fp8LatentCache, LatentPages, attention_core
from .ops import (append_rows, causal_mask, check_cache_room, mla_attention_reference, readable_cache,
                  token_positions)
from .rope import rope_cos_sin, rotate_interleaved
from .spec import ABSORB_MODES

ATTENTION_PATHS = ("naive", "absorbed")


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in at least float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(work)
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(work)).to(x.dtype)


def hidden_norm(config: MlaConfig) -> RMSNorm:
    """A norm of the hidden state (input_layernorm, post_attention_layernorm, the final norm): the one place
    that gives them `config.rms_norm_eps`."""
    return RMSNorm(config.hidden_size, config.rms_norm_eps)


def latent_norm(config: MlaConfig, dim: int) -> RMSNorm:
    """A norm of a compressed latent (q_a_layernorm, kv_a_layernorm) of width `dim`, in every attention form:
    the one place that gives them `config.latent_norm_eps` (1e-6, not rms_norm_eps; see MlaConfig)."""
    return RMSNorm(dim, config.latent_norm_eps)


class SwiGluMlp(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class QueryCompression(nn.Module):
    """c_q = RMSNorm(W_DQ h), or h itself when q_lora_rank is None."""

    def __init__(self, config: MlaConfig):
        super().__init__()
        self.enabled = config.q_lora_rank is not None
        if self.enabled:
            self.q_a_proj = nn.Linear(config.hidden_size, config.q_lora_rank, bias=False)
            self.q_a_layernorm = latent_norm(config, config.q_lora_rank)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.q_a_layernorm(self.q_a_proj(hidden)) if self.enabled else hidden


def latent_kv(attn: nn.Module, hidden: torch.Tensor, d_c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[c_kv ; k_pe_raw] = W_DKV h; returns (RMSNorm(c_kv) [B,S,Dc], k_pe_raw [B,S,Dr])."""
    kv = attn.kv_a_proj_with_mqa(hidden)  # [B, S, Dc + Dr]
    c_kv, k_pe = kv[..., :d_c], kv[..., d_c:]
    return attn.kv_a_layernorm(c_kv), k_pe


class MlaAttention(nn.Module):
    """MLA with DeepSeek's weights (q_a/q_b or q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj)."""

    fp8_cache_check: dict = {}  # validate's FP8-cache reference (`ops.mla_attention_reference`'s keywords)

    def __init__(self, config: MlaConfig, path: str = "absorbed"):
        super().__init__()
        if path not in ATTENTION_PATHS:
            raise ValueError(f"attention path {path!r}: expected one of {ATTENTION_PATHS}")
        self.config, self.path = config, path
        c = config
        q_out = c.num_attention_heads * c.qk_head_dim
        self.q_compression = QueryCompression(c)
        q_in = c.q_lora_rank if c.q_lora_rank is not None else c.hidden_size
        if c.q_lora_rank is not None:
            self.q_b_proj = nn.Linear(q_in, q_out, bias=False)
        else:
            self.q_proj = nn.Linear(q_in, q_out, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.cache_width, bias=False)
        self.kv_a_layernorm = latent_norm(c, c.kv_lora_rank)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim),
                                   bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.v_head_dim, c.hidden_size, bias=False)

    # HF checkpoints name the query compression weights at the attention level.
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("q_a_proj.weight", "q_a_layernorm.weight"):
            if prefix + name in state_dict:
                state_dict[prefix + "q_compression." + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def query_up_weight(self) -> torch.Tensor:
        """W_UQ with the RoPE rows: `[H, d_h + d_r, q_in]`."""
        proj = self.q_b_proj if self.config.q_lora_rank is not None else self.q_proj
        return proj.weight.view(self.config.num_attention_heads, self.config.qk_head_dim, -1)

    def kv_up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_UK `[H, d_h, Dc]`, W_UV `[H, d_v, Dc]`) from kv_b_proj."""
        c = self.config
        w = self.kv_b_proj.weight.view(c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        return w[:, :c.qk_nope_head_dim], w[:, c.qk_nope_head_dim:]

    def forward(self, hidden: torch.Tensor, cache: torch.Tensor, cache_seqlens: torch.Tensor,
                cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B,S,d], cache [B,Smax,Dc+Dr], cache_seqlens [B], cos_sin [Smax,Dr] -> (out [B,S,d], new cache)."""
        c = self.config
        batch, new_tokens, _ = hidden.shape
        heads, d_h, d_c = c.num_attention_heads, c.qk_nope_head_dim, c.kv_lora_rank
        c_q = self.q_compression(hidden)  # [B, S, q_in]
        q = torch.einsum("bsi,hdi->bshd", c_q, self.query_up_weight())  # [B, S, H, d_h + d_r]
        q_nope, q_pe = q[..., :d_h], q[..., d_h:]  # [B, S, H, d_h], [B, S, H, d_r]
        c_kv, k_pe = latent_kv(self, hidden, d_c)  # [B, S, Dc], [B, S, Dr]
        w_uk, w_uv = self.kv_up_weights()  # [H, d_h, Dc], [H, d_v, Dc]

        if self.path == "absorbed":
            q_latent = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)  # [B, S, H, Dc]
            o_latent, present = mla_attention_reference(q_latent, q_pe, c_kv, k_pe, cache, cache_seqlens, cos_sin,
                                                        c.softmax_scale, **self.fp8_cache_check)  # [B, S, H, Dc]
            o = torch.einsum("bshc,hvc->bshv", o_latent, w_uv)  # [B, S, H, d_v]
            return self.o_proj(o.reshape(batch, new_tokens, -1)), present

        # naive: write the new rows, then decompress every readable cached row per head.
        check_cache_room(cache_seqlens, new_tokens, cache.shape[1])
        positions = token_positions(cache_seqlens, new_tokens, hidden.device)  # [B, S]
        pos_cos_sin = cos_sin.to(hidden.dtype)[positions]  # [B, S, Dr]
        q_pe = rotate_interleaved(q_pe, pos_cos_sin[:, :, None, :])  # [B, S, H, Dr]
        k_pe = rotate_interleaved(k_pe, pos_cos_sin)  # [B, S, Dr]
        present = append_rows(cache, positions, torch.cat([c_kv, k_pe], dim=-1))  # [B, Smax, Dc + Dr]
        cached = readable_cache(present, cache_seqlens, new_tokens, hidden.dtype)  # [B, Smax, Dc + Dr]
        c_all, k_pe_all = cached[..., :d_c], cached[..., d_c:]  # [B, Smax, Dc], [B, Smax, Dr]
        k_nope = torch.einsum("btc,hdc->bthd", c_all, w_uk)  # [B, Smax, H, d_h]
        v = torch.einsum("btc,hvc->bthv", c_all, w_uv)  # [B, Smax, H, d_v]
        scores = (torch.einsum("bshd,bthd->bsht", q_nope, k_nope)
                  + torch.einsum("bshr,btr->bsht", q_pe, k_pe_all)) * c.softmax_scale  # [B, S, H, Smax]
        causal = causal_mask(positions, cache.shape[1])  # [B, S, Smax]
        scores = scores.masked_fill(~causal[:, :, None, :], float("-inf"))
        probs = torch.softmax(scores.float() if hidden.dtype != torch.float64 else scores, dim=-1).to(hidden.dtype)
        o = torch.einsum("bsht,bthv->bshv", probs, v)  # [B, S, H, d_v]
        return self.o_proj(o.reshape(batch, new_tokens, heads * c.v_head_dim)), present


class FoldedMlaAttention(nn.Module):
    """Pre-folded MLA: q_latent_proj = W_UK^T W_UQ(nope), out_proj = W_O W_UV; the core is the MlaAttention op."""

    fp8_cache_check: dict = {}  # validate's FP8-cache reference (`ops.mla_attention_reference`'s keywords)

    def __init__(self, config: MlaConfig):
        super().__init__()
        c = self.config = config
        q_in = c.q_lora_rank if c.q_lora_rank is not None else c.hidden_size
        self.q_compression = QueryCompression(c)
        self.q_latent_proj = nn.Linear(q_in, c.num_attention_heads * c.kv_lora_rank, bias=False)
        self.q_pe_proj = nn.Linear(q_in, c.num_attention_heads * c.qk_rope_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.cache_width, bias=False)
        self.kv_a_layernorm = latent_norm(c, c.kv_lora_rank)
        self.out_proj = nn.Linear(c.num_attention_heads * c.kv_lora_rank, c.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, cache: torch.Tensor, cache_seqlens: torch.Tensor,
                cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same signature and result as `MlaAttention.forward`."""
        c = self.config
        batch, new_tokens, _ = hidden.shape
        c_q = self.q_compression(hidden)  # [B, S, q_in]
        q_latent = self.q_latent_proj(c_q).unflatten(-1, (c.num_attention_heads, c.kv_lora_rank))  # [B,S,H,Dc]
        q_pe = self.q_pe_proj(c_q).unflatten(-1, (c.num_attention_heads, c.qk_rope_head_dim))  # [B, S, H, Dr]
        c_kv, k_pe = latent_kv(self, hidden, c.kv_lora_rank)  # [B, S, Dc], [B, S, Dr]
        attn, present = attention_core(
            q_latent, q_pe, c_kv, k_pe, cache, cache_seqlens, cos_sin,
            c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim, c.softmax_scale,
            **self.fp8_cache_check)  # [B, S, H, Dc]
        return self.out_proj(attn.reshape(batch, new_tokens, -1)), present


class RuntimeAbsorbedMlaAttention(nn.Module):
    """Run-time absorbed MLA for export: W_UQ(nope) then W_UK per head give the latent query, the core is
    the MlaAttention op, then W_UV per head and W_O. Same op, cache and result as `FoldedMlaAttention`,
    with the weights as the checkpoint holds them (no [H*Dc, q_in] or [d, H*Dc] products).

    Parameters: q_nope_proj [H*Dn, q_in], q_pe_proj [H*Dr, q_in], w_uk [H, Dn, Dc], w_uv [H, Dc, Dv],
    o_proj [d, H*Dv] (plus the query compression and kv_a_proj_with_mqa / kv_a_layernorm).
    """

    fp8_cache_check: dict = {}  # validate's FP8-cache reference (`ops.mla_attention_reference`'s keywords)

    def __init__(self, config: MlaConfig):
        super().__init__()
        c = self.config = config
        heads = c.num_attention_heads
        q_in = c.q_lora_rank if c.q_lora_rank is not None else c.hidden_size
        self.q_compression = QueryCompression(c)
        self.q_nope_proj = nn.Linear(q_in, heads * c.qk_nope_head_dim, bias=False)
        self.q_pe_proj = nn.Linear(q_in, heads * c.qk_rope_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.cache_width, bias=False)
        self.kv_a_layernorm = latent_norm(c, c.kv_lora_rank)
        self.w_uk = nn.Parameter(torch.zeros(heads, c.qk_nope_head_dim, c.kv_lora_rank))  # [H, Dn, Dc]
        self.w_uv = nn.Parameter(torch.zeros(heads, c.kv_lora_rank, c.v_head_dim))  # [H, Dc, Dv]
        self.o_proj = nn.Linear(heads * c.v_head_dim, c.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, cache: torch.Tensor, cache_seqlens: torch.Tensor,
                cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same signature and result as `MlaAttention.forward`."""
        c = self.config
        batch, new_tokens, _ = hidden.shape
        heads, d_h, d_c = c.num_attention_heads, c.qk_nope_head_dim, c.kv_lora_rank
        c_q = self.q_compression(hidden)  # [B, S, q_in]
        # Heads first, tokens as rows: each head is one [B*S, Dn] x [Dn, Dc] product (one batched MatMul).
        q_nope = self.q_nope_proj(c_q).reshape(batch * new_tokens, heads, d_h).transpose(0, 1)  # [H, B*S, Dn]
        q_latent = torch.matmul(q_nope, self.w_uk)  # [H, B*S, Dc]
        q_latent = q_latent.transpose(0, 1).reshape(batch, new_tokens, heads, d_c)  # [B, S, H, Dc]
        q_pe = self.q_pe_proj(c_q).unflatten(-1, (heads, c.qk_rope_head_dim))  # [B, S, H, Dr]
        c_kv, k_pe = latent_kv(self, hidden, d_c)  # [B, S, Dc], [B, S, Dr]
        attn, present = attention_core(
            q_latent, q_pe, c_kv, k_pe, cache, cache_seqlens, cos_sin,
            heads, d_c, c.qk_rope_head_dim, c.softmax_scale, **self.fp8_cache_check)  # [B, S, H, Dc]
        attn = attn.reshape(batch * new_tokens, heads, d_c).transpose(0, 1)  # [H, B*S, Dc]
        o = torch.matmul(attn, self.w_uv)  # [H, B*S, Dv]
        o = o.transpose(0, 1).reshape(batch, new_tokens, heads * c.v_head_dim)  # [B, S, H*Dv]
        return self.o_proj(o), present


class Float32Params(KeepTypes):
    """A module whose parameters stay float32 when the model is cast (`.to(dtype)` moves them, never rounds
    them): the router's weight and bias, as DeepSeek's and transformers' code keep them for routing."""


class Router(Float32Params):
    """`mlp.gate`: the router weight `[E, d]` and e_score_correction_bias `[E]` (float32; the bias is zero
    and unused unless the rule uses it)."""

    def __init__(self, config: MlaConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.n_routed_experts, config.hidden_size, dtype=torch.float32))
        self.e_score_correction_bias = nn.Parameter(torch.zeros(config.n_routed_experts, dtype=torch.float32))


class RoutedExperts(nn.Module):
    """`mlp.experts`: every routed expert's SwiGLU, stacked: gate_up_proj `[E, 2I, d]` (gate rows, then up
    rows, as checkpoints' `experts.{j}.gate_proj` and `up_proj`), down_proj `[E, d, I]`; `experts` of them
    (a rank's share under --tp) when given."""

    def __init__(self, config: MlaConfig, experts: int | None = None):
        super().__init__()
        inter, d = config.moe_intermediate_size, config.hidden_size
        experts = config.n_routed_experts if experts is None else experts
        self.gate_up_proj = nn.Parameter(torch.zeros(experts, 2 * inter, d))
        self.down_proj = nn.Parameter(torch.zeros(experts, d, inter))

    def op_weights(self) -> dict[str, torch.Tensor]:
        """The `DeepseekMoE` op's expert arguments."""
        return {"gate_up_proj": self.gate_up_proj, "down_proj": self.down_proj}


class MoeMlp(nn.Module):
    """A DeepSeek MoE MLP: the routed experts through the `DeepseekMoE` op, plus the shared experts.
    Under --tp (`tp`): the router whole, the rank's experts `tp.part(E)`, 1/N of the shared experts' width;
    the output is the rank's part of the sum (the caller all-reduces it)."""

    def __init__(self, config: MlaConfig, tp: TensorParallel = TensorParallel()):
        super().__init__()
        self.rule = RoutingRule.from_config(config)
        self.gate = Router(config)
        local = tp.part(config.n_routed_experts)
        self.first_expert = local.start
        self.experts = RoutedExperts(config, len(local))
        shared = (config.n_shared_experts or 0) * config.moe_intermediate_size // tp.world_size
        self.shared_experts = SwiGluMlp(config.hidden_size, shared) if shared else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, S, d] -> [B, S, d]."""
        local = {"first_expert": self.first_expert} if self.first_expert else {}  # a rank's slice of the experts
        routed = torch.ops.mla.deepseek_moe(x, self.gate.weight, self.gate.e_score_correction_bias,
                                            **self.experts.op_weights(), **self.rule.attributes(),
                                            **local)  # [B, S, d]
        return routed + self.shared_experts(x) if self.shared_experts is not None else routed


class DecoderLayer(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(.)); the MLP is dense or, with `moe`, DeepSeek's MoE. Under --tp
    (`tp`) the attention and the MLP each give the rank's part of their output, summed over the ranks."""

    def __init__(self, config: MlaConfig, attention: nn.Module, moe: bool = False,
                 tp: TensorParallel = TensorParallel()):
        super().__init__()
        self.tp = tp
        self.input_layernorm = hidden_norm(config)
        self.self_attn = attention
        self.post_attention_layernorm = hidden_norm(config)
        dense = config.intermediate_size // tp.world_size
        self.mlp = MoeMlp(config, tp) if moe else SwiGluMlp(config.hidden_size, dense)

    def forward(self, x, cache, cache_seqlens, cos_sin):
        attn, present = self.self_attn(self.input_layernorm(x), cache, cache_seqlens, cos_sin)
        h = x + reduce_ranks(attn, self.tp)
        return h + reduce_ranks(self.mlp(self.post_attention_layernorm(h)), self.tp), present


class MlaModel(nn.Module):
    """A stack of `config.num_hidden_layers` decoder layers over hidden states, or over tokens
    (embed_tokens -> layers -> norm -> lm_head) when `with_embeddings`.

    Unfolded (`MlaAttention`, DeepSeek's weights, `path` naive or absorbed), or `folded` for export:
    `absorb` "prefolded" (`FoldedMlaAttention`) or "runtime" (`RuntimeAbsorbedMlaAttention`).

    forward(x, cache_seqlens, *past_caches) -> (y, *present_caches), all functional:
    x is hidden_states [B,S,d] (float) or input_ids [B,S] (int64); y is hidden states [B,S,d] or
    logits [B,S,vocab]; caches [B,Smax,Dc+Dr]; cache_seqlens [B] int32.

    With `tp` (a folded model only): rank `tp.rank`'s part of the model (`parallel.py`), its outputs and
    caches the whole model's once the ranks' collectives have run.
    """

    def __init__(self, config: MlaConfig, max_seq_len: int, *, folded: bool = False, absorb: str = "prefolded",
                 path: str = "absorbed", with_embeddings: bool = False, tp: TensorParallel = TensorParallel(),
                 cache: str = "contiguous", kv_cache_dtype: str = "model", page_size: int = 64):
        super().__init__()
        if (tp.enabled or cache != "contiguous" or kv_cache_dtype != "model") and not folded:
            raise ValueError("tensor parallelism and paged or FP8 caches apply to the export form (folded=True)")
        # the cache the forward takes (`cache_ops`): contiguous, or paged (a block table, then a pool per layer);
        # FP8: per layer its codes, scales and rope planes
        self.cache_layout, self.kv_cache_dtype, self.page_size = cache, kv_cache_dtype, page_size
        self.tp = tp
        self.attention_config = local = tp.local_config(config)  # the shapes of this rank's attention
        if absorb not in ABSORB_MODES:
            raise ValueError(f"absorb {absorb!r}: expected one of {ABSORB_MODES}")
        self.config, self.max_seq_len, self.folded, self.with_embeddings = config, max_seq_len, folded, with_embeddings
        self.absorb = absorb  # the export form of a folded model (see `folding.fold_model`)
        self.quant = "none"  # "fp8" once `fp8_forms.to_fp8_form` has made the large projections FP8

        def attention():
            if not folded:
                return MlaAttention(config, path)
            return FoldedMlaAttention(local) if absorb == "prefolded" else RuntimeAbsorbedMlaAttention(local)

        self.layers = nn.ModuleList(DecoderLayer(config, attention(), moe=config.is_moe_layer(i), tp=tp)
                                    for i in range(config.num_hidden_layers))
        if with_embeddings:
            vocab, dim = config.vocab_size, config.hidden_size
            self.embed_tokens = VocabParallelEmbedding(vocab, dim, tp) if tp.enabled else nn.Embedding(vocab, dim)
            self.norm = hidden_norm(config)
            self.lm_head = nn.Linear(dim, vocab // tp.world_size, bias=False)
        # Plain attributes, not buffers: `.to(dtype)` must not round the table (the op takes it in float32).
        self.rope_cos_sin_float64 = rope_cos_sin(config, max_seq_len, torch.float64)  # [Smax, Dr]
        self.rope_cos_sin_float32 = self.rope_cos_sin_float64.float()  # [Smax, Dr]

    @property
    def rope_cos_sin(self) -> torch.Tensor:
        """The op's `rope_cos_sin` table `[Smax, Dr]` on the model's device: float64 in a float64 model,
        else float32 (moved with the model on first use after `.to(device)`)."""
        weight = self.layers[0].input_layernorm.weight
        name = "rope_cos_sin_float64" if weight.dtype == torch.float64 else "rope_cos_sin_float32"
        table = getattr(self, name)
        if table.device != weight.device:
            table = table.to(weight.device)
            setattr(self, name, table)
        return table

    def set_attention_path(self, path: str) -> None:
        """Switch every unfolded attention module between 'naive' and 'absorbed'."""
        if self.folded or path not in ATTENTION_PATHS:
            raise ValueError(f"attention path {path!r}: expected one of {ATTENTION_PATHS} on an unfolded model")
        for layer in self.layers:
            layer.self_attn.path = path

    def _layer_caches(self, batch: int, caches: tuple) -> list:
        """Each layer's cache as the attention takes it (a tensor, `LatentPages` or `Fp8LatentCache`)."""
        if self.cache_layout == "contiguous" and self.kv_cache_dtype == "model":
            return list(caches)
        paged = self.cache_layout == "paged"
        block_table, planes = (caches[0], caches[1:]) if paged else (None, caches)
        if self.kv_cache_dtype == "model":
            return [LatentPages(pool, block_table) for pool in planes]
        if block_table is None:  # contiguous FP8: the identity table, page b = sequence b
            block_table = torch.arange(batch, dtype=torch.int32, device=planes[0].device)[:, None]
        page = self.page_size if paged else 0
        return [Fp8LatentCache(*planes[i:i + 3], block_table, page) for i in range(0, len(planes), 3)]

    def forward(self, x: torch.Tensor, cache_seqlens: torch.Tensor, *past_caches: torch.Tensor):
        h = self.embed_tokens(x) if self.with_embeddings else x  # [B, S, d]
        presents = []
        for layer, cache in zip(self.layers, self._layer_caches(x.shape[0], past_caches), strict=True):
            h, present = layer(h, cache, cache_seqlens, self.rope_cos_sin)
            if isinstance(present, LatentPages):
                presents.append(present.pool)
            elif isinstance(present, Fp8LatentCache):
                presents += [present.codes, present.scales, present.rope]
            else:
                presents.append(present)
        if self.with_embeddings:
            h = gather_ranks(self.lm_head(self.norm(h)), self.tp, -1)  # [B, S, vocab] (from N x [B, S, vocab/N])
        return (h, *presents)

    def new_cache(self, batch: int, dtype: torch.dtype | None = None, fill: float = 0.0) -> "LatentCache":
        """An empty cache for `batch` sequences (unused rows hold `fill`; NaN makes stray reads loud)."""
        weight = next(self.parameters())
        return LatentCache.empty(self.config, batch, self.max_seq_len, dtype or weight.dtype, fill, weight.device)

    def step(self, x: torch.Tensor, cache: "LatentCache") -> torch.Tensor:
        """Run S new tokens per sequence (prefill or decode), updating `cache` in place of its tensors."""
        out, *presents = self(x, cache.seqlens, *cache.layers)
        cache.layers = list(presents)
        cache.seqlens = cache.seqlens + x.shape[1]
        return out


@dataclass
class LatentCache:
    """Per-layer latent caches `[B, Smax, Dc + Dr]` and the valid rows per sequence `seqlens [B] int32`."""

    layers: list[torch.Tensor]
    seqlens: torch.Tensor

    @classmethod
    def empty(cls, config: MlaConfig, batch: int, max_seq_len: int, dtype: torch.dtype,
              fill: float = 0.0, device: torch.device | str = "cpu") -> "LatentCache":
        shape = (batch, max_seq_len, config.cache_width)
        return cls([torch.full(shape, fill, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)],
                   torch.zeros(batch, dtype=torch.int32, device=device))
