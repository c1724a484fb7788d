"""The float64 reference one layer at a time, and the inputs of a validation scenario.

`ScenarioInputs` fixes everything a scenario feeds: each step's new tokens (ids or hidden states), the
ragged history lengths, and each layer's starting cache, drawn from (seed, layer) alone so a layer's cache
can be made when that layer is reached. `reference_layer` builds decoder layer i of the unfolded eager
model in float64 with its weights read from the spec's source (checkpoint or seed), as `export` reads them:
memory holds one layer. The embedding and the head (final norm, LM head) are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.model import DecoderLayer, Float32Params, MlaAttention, hidden_norm
from ..model.rope import rope_cos_sin
from ..model.spec import ModelSpec, torch_dtype
from ..weights.weights import WeightSource, checkpoint_name, expert_chunks, is_expert_stack

HEAD_ROWS = 8192  # LM-head rows multiplied at a time in float64 (a V3 head is 129,280 rows)


@dataclass
class ScenarioInputs:
    """What a scenario feeds, the same for every runtime and the reference.

    `runtime_inputs[s]`: step s's new tokens as the runtime takes them (int64 ids, or hidden states in the
    export's dtype); `reference_inputs[s]`: the same in float64 (ids as they are); `seqlens[s]` [B] int32,
    the cache rows each sequence holds before step s."""

    spec: ModelSpec
    seed: int
    histories: list[int]
    runtime_inputs: list[torch.Tensor]
    reference_inputs: list[torch.Tensor]
    seqlens: list[torch.Tensor]

    @classmethod
    def make(cls, spec: ModelSpec, batch: int, prefill_len: int, steps: int, seed: int,
             histories: list[int]) -> "ScenarioInputs":
        config, dtype = spec.config, torch_dtype(spec.dtype)
        gen = torch.Generator().manual_seed(seed)
        runtime, reference, seqlens = [], [], []
        lengths = torch.tensor(histories, dtype=torch.int32)
        for step in range(steps + 1):
            new_tokens = prefill_len if step == 0 else 1
            if spec.io == "tokens":
                x = torch.randint(0, config.vocab_size, (batch, new_tokens), generator=gen)  # [B, S]
                runtime.append(x)
                reference.append(x)
            else:
                x = torch.randn(batch, new_tokens, config.hidden_size, generator=gen).to(dtype)  # [B, S, d]
                runtime.append(x)
                reference.append(x.to(torch.float64))
            seqlens.append(lengths)
            lengths = lengths + new_tokens
        return cls(spec, seed, histories, runtime, reference, seqlens)

    @property
    def steps(self) -> int:
        return len(self.runtime_inputs)

    def new_tokens(self, step: int) -> int:
        return self.runtime_inputs[step].shape[1]

    def step_name(self, step: int) -> str:
        return "prefill" if step == 0 else f"decode {step}"

    def initial_cache(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s cache before the prefill, `[B, Smax, Dc+Dr]` float64: random history rows (values
        the export's dtype holds exactly, so both sides start equal), NaN past them (never read)."""
        config, dtype = self.spec.config, torch_dtype(self.spec.dtype)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + layer + 1) % (1 << 63))
        cache = torch.full((len(self.histories), self.spec.max_seq_len, config.cache_width), float("nan"),
                           dtype=torch.float64)
        for b, rows in enumerate(self.histories):
            cache[b, :rows] = torch.randn(rows, config.cache_width, generator=gen, dtype=torch.float64)
        return cache.to(dtype).to(torch.float64)


def _fill(module: torch.nn.Module, source: WeightSource, prefix: str) -> None:
    """Every parameter of `module` from `source`, named `prefix + name`; stacked experts one at a time."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            full = prefix + name
            if is_expert_stack(full):
                for j, chunk in enumerate(expert_chunks(source, full, tuple(param.shape))):
                    param[j].copy_(chunk)
            else:
                param.copy_(source.read(checkpoint_name(full), tuple(param.shape)))


def reference_model(spec: ModelSpec):
    """The whole float64 reference of `spec`: the unfolded eager model; for `--quant fp8`, the export form
    holding the export's own FP8 weights (`graph.export_form`: the export's numerics, not another model)."""
    from ..weights.eager import eager_model, weight_source

    if spec.quant == "fp8":
        from ..graph.export_form import export_form_model

        return export_form_model(spec, weight_source(spec), torch.float64)
    return eager_model(spec, torch.float64)


def reference_layer(spec: ModelSpec, source: WeightSource, index: int) -> DecoderLayer:
    """Decoder layer `index` of the float64 reference (as `reference_model`: the unfolded eager model, or an
    FP8 export's own form), eval mode, weights from `source`."""
    if spec.quant == "fp8":
        from ..graph.export_form import export_form_layer

        return export_form_layer(spec, source, index, torch.float64)
    config = spec.config
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # parameters made in float64 at once: no float32 copy beside them
    try:
        layer = DecoderLayer(config, MlaAttention(config), moe=config.is_moe_layer(index))
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():  # the router's parameters are float32 in every form (Float32Params), as DeepSeek's
        for module in layer.modules():
            if isinstance(module, Float32Params):
                for param in module.parameters(recurse=False):
                    param.data = param.data.float()
    _fill(layer, source, f"layers.{index}.")
    return layer.eval()


def reference_cos_sin(spec: ModelSpec) -> torch.Tensor:
    """The float64 RoPE table `[Smax, Dr]` the reference layers take."""
    return rope_cos_sin(spec.config, spec.max_seq_len, torch.float64)


def reference_embedding(source: WeightSource, spec: ModelSpec, ids: list[torch.Tensor]) -> list[torch.Tensor]:
    """The embedding of each step's ids, float64 `[B, S, d]` (the table is read once, in float32)."""
    config = spec.config
    table = source.read("model.embed_tokens.weight", (config.vocab_size, config.hidden_size))  # [V, d]
    return [table[x].to(torch.float64) for x in ids]


def reference_head(source: WeightSource, spec: ModelSpec, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits `[B, S, V]` float64 of each step's last hidden state: final norm then LM head, the head's rows
    taken HEAD_ROWS at a time so float64 never holds the whole [V, d] matrix."""
    config = spec.config
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        norm = hidden_norm(config)
    finally:
        torch.set_default_dtype(previous)
    _fill(norm, source, "norm.")
    head = source.read("lm_head.weight", (config.vocab_size, config.hidden_size))  # [V, d] float32
    logits = []
    with torch.no_grad():
        for h in hidden:
            normed = norm(h)  # [B, S, d]
            logits.append(torch.cat([normed @ head[r:r + HEAD_ROWS].to(torch.float64).T
                                     for r in range(0, config.vocab_size, HEAD_ROWS)], dim=-1))  # [B, S, V]
    return logits
