"""The latent cache as aliased plugin I/O: what `build` turns on and what the sidecar records.

`MlaAttention` declares `present_cache` (output 1) an alias of `past_cache` (input 4) through
`IPluginV3OneBuildV2::getAliasedInput`. TensorRT consults that only when the builder config enables
the preview feature `ALIASED_PLUGIN_IO_10_03` (TensorRT 10.3+). How an engine's caches are bound at
run time follows from it, and is recorded in the sidecar as `cache_binding`:

- "aliased": `past_latent_cache.i` and `present_latent_cache.i` bound to one buffer per layer; the
  plugin writes only the new rows, nothing is copied.
- "copy": `present_latent_cache.i` gets a buffer of its own, which each step fills with the past rows
  and the new ones (plugin-free engines, engines built without the feature, and sidecars written
  before the field existed).

Contract 2 (a paged and/or FP8 cache) aliases every cache plane the same way: the plugin's
getAliasedInput maps output 1 (present_cache) to input 4 (past_cache) and, with an FP8 cache, output 2
(present_scale) to input 8 (past_scale) and 3 (present_rope) to 9 (past_rope) (`PLUGIN_ALIASES`); at the
graph's level each `present_*.i` aliases its `past_*.i` (`alias_pairs`), which must then have the same
element type and dims (`check_alias_pairs`, on the parsed network).
"""

from __future__ import annotations

from ..common import contract
from ..common.errors import UserError

CACHE_BINDINGS = ("aliased", "copy")
ALIASED_PLUGIN_IO = "ALIASED_PLUGIN_IO_10_03"  # the PreviewFeature member, Python spelling


def enable_aliased_plugin_io(trt, builder_config) -> bool:
    """Enable aliased plugin I/O on `builder_config` when `trt` (a TensorRT module) has the preview feature;
    returns whether the config now has it on."""
    feature = getattr(getattr(trt, "PreviewFeature", None), ALIASED_PLUGIN_IO, None)
    if feature is None:  # TensorRT before 10.3: no aliasing, the plugin copies past to present
        return False
    builder_config.set_preview_feature(feature, True)
    return bool(builder_config.get_preview_feature(feature))


def cache_binding(attention: str, aliased_plugin_io: bool) -> str:
    """The sidecar's `cache_binding` for an engine built with `--attention attention`: "aliased" only where the
    plugin's alias took effect."""
    return "aliased" if attention == "plugin" and aliased_plugin_io else "copy"


# The MlaAttention node's output index -> the input index it aliases (contract 2, FP8 cache: all three planes;
# the model-dtype caches of both contracts: output 1 -> input 4 only).
PLUGIN_ALIASES = {contract.OP_FP8_CACHE_OUTPUTS.index(out): contract.OP_FP8_CACHE_INPUTS.index(past)
                  for out, past in (("present_cache", "past_cache"), ("present_scale", "past_scale"),
                                    ("present_rope", "past_rope"))}


def alias_pairs(num_layers: int, io: str, cache: str = "contiguous", kv_cache_dtype: str = "model"
                ) -> dict[str, str]:
    """Graph output -> the graph input it aliases: every cache plane's present_* -> its past_* (in order)."""
    inputs, outputs = contract.graph_io_names(num_layers, io, cache, kv_cache_dtype)
    pasts = [name for name in inputs[2:] if name != contract.BLOCK_TABLE]
    return dict(zip(outputs[1:], pasts, strict=True))


def check_alias_pairs(network, pairs: dict[str, str], source: str) -> None:
    """Refuse (one message) a parsed network in which a present output is not of its past input's element
    type and dims: TensorRT cannot bind the two to one buffer then. `network`: INetworkDefinition-like."""
    tensors = {}
    for count, get in ((network.num_inputs, network.get_input), (network.num_outputs, network.get_output)):
        for i in range(count):
            tensor = get(i)
            tensors[tensor.name] = tensor
    for present, past in pairs.items():
        if present not in tensors or past not in tensors:
            missing = present if present not in tensors else past
            raise UserError(f"--onnx {source}: the parsed network has no tensor {missing} (the cache planes are "
                            "the contract's I/O); re-export the model with this mla-export")
        a, b = tensors[present], tensors[past]
        if str(a.dtype) != str(b.dtype) or list(a.shape) != list(b.shape):
            raise UserError(f"--onnx {source}: TensorRT parsed {present} as {a.dtype} {list(a.shape)} but {past} "
                            f"as {b.dtype} {list(b.shape)}; an aliased cache plane needs one type and shape: "
                            "re-export the model")
