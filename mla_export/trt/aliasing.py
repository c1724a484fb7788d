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
"""

from __future__ import annotations

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
