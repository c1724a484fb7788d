"""Our files in Polygraphy's standard workflows: `polygraphy inspect model` reads an export, and
`polygraphy run --onnxrt --data-loader-script` runs it with the inputs `mla_export.polygraphy_data` makes
(in-range cache_seqlens, caches filled below them)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mla_export.graph.export import export_onnx
from mla_export.model.hf_config import load_preset
from mla_export.polygraphy_data import feeds
from mla_export.model.spec import ModelSpec

POLYGRAPHY = Path(sys.executable).parent / "polygraphy"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    out = {}
    for name, preset, io, cache in (("tiny", "tiny", "hidden", "contiguous"),
                                    ("tiny-moe", "tiny-moe", "tokens", "contiguous"),
                                    ("tiny-paged", "tiny", "hidden", "paged")):
        path = tmp_path_factory.mktemp("poly") / f"{name}.onnx"
        export_onnx(ModelSpec(load_preset(preset), max_seq_len=48, io=io, cache=cache, page_size=16), path)
        out[name] = path
    return out


def polygraphy(*args) -> subprocess.CompletedProcess:
    if not POLYGRAPHY.exists() and shutil.which("polygraphy") is None:
        pytest.skip("polygraphy's command is not installed")
    command = str(POLYGRAPHY) if POLYGRAPHY.exists() else "polygraphy"
    return subprocess.run([command, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_feeds_are_valid_inputs(exports):
    for path in exports.values():
        steps = feeds(path)
        assert [f[next(iter(f))].shape[1] for f in steps] == [4, 1]  # a prefill, then a decode step
        for feed in steps:
            lengths = feed["cache_seqlens"]
            new_tokens = next(iter(feed.values())).shape[1]
            assert lengths.dtype == np.int32 and (lengths + new_tokens <= 48).all() and lengths.max() > 0
            for name, cache in feed.items():
                if name.startswith("past_latent_cache."):
                    for b, rows in enumerate(lengths):
                        assert np.isfinite(cache[b, :rows]).all() and cache[b, :rows].std() > 0.5


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe", "tiny-paged"])
def test_polygraphy_runs_an_export_with_our_data_loader(exports, preset):
    loader = subprocess.run([sys.executable, "-m", "mla_export.polygraphy_data"], capture_output=True,
                            text=True).stdout.strip()
    result = polygraphy("run", exports[preset], "--onnxrt", "--data-loader-script", loader)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASSED" in result.stdout + result.stderr
    present = "present_latent_pages.0" if preset == "tiny-paged" else "present_latent_cache.0"
    assert present in result.stdout + result.stderr


def test_polygraphy_inspects_an_export(exports):
    result = polygraphy("inspect", "model", exports["tiny-moe"])
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "input_ids" in text and "past_latent_cache.2" in text and "'mla': 1" in text
