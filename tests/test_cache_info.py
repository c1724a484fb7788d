"""`info --kv-cache-dtype`, `--cache`, `--page-size`, `--memory` (issue 24): the latent cache's bytes per token
in contract version 2's formats and the sequences that fit in a given memory.

Expected figures are worked out here from the format's definition (contract.py, "Contract version 2"), not
through the functions under test: 656 B per token per layer at DeepSeek's dims (512 e4m3 codes, 4 float32
scales, 64 bfloat16 k_pe values, FlashMLA's number) against 1,152 in bfloat16.
"""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import pytest

from mla_export.common.errors import UserError
from mla_export.model.footprint import (contiguous_sequences, latent_cache_bytes_per_token, paged_sequences,
                                        rank_cache_bytes_per_token)
from mla_export.model.hf_config import load_preset
from mla_export.ui.cmd_info import file_cache, parse_memory

from corpus import run

GIB = 2**30


def joined(text: str) -> str:
    return " ".join(text.split())


def test_fp8_row_bytes_by_hand():
    v3, tiny = load_preset("deepseek-v3"), load_preset("tiny")
    assert (v3.kv_lora_rank, v3.qk_rope_head_dim, tiny.kv_lora_rank, tiny.qk_rope_head_dim) == (512, 64, 32, 8)
    assert latent_cache_bytes_per_token(v3, 2, "fp8") == 512 + 4 * 4 + 64 * 2 == 656  # FlashMLA's figure
    assert latent_cache_bytes_per_token(v3, 2, "model") == 576 * 2 == 1152
    assert latent_cache_bytes_per_token(tiny, 2, "fp8") == 32 + 4 * 1 + 8 * 2 == 52  # one partial 128-value tile
    assert latent_cache_bytes_per_token(tiny, 4, "fp8") == 32 + 4 + 8 * 4  # k_pe in float32
    odd = dataclasses.replace(tiny, kv_lora_rank=200)  # tiles of 128 and 72 values: two scales
    assert latent_cache_bytes_per_token(odd, 2, "fp8") == 200 + 2 * 4 + 8 * 2
    assert rank_cache_bytes_per_token(v3, 8, 2, "fp8") == {"tp": 8, "per_layer": 656, "model": 656 * 61}


@pytest.mark.parametrize("kv, expected", [("fp8", 656), ("model", 1152)])
def test_info_deepseek_v3_prints_the_cache_bytes_per_token_per_layer(kv, expected):
    result = run("info", "--preset", "deepseek-v3", "--kv-cache-dtype", kv)
    assert result.exit_code == 0, result.output
    assert re.search(rf"^MLA\s+c_kv 512 \+ k_pe 64\s+576\s+{expected:,}\s", result.stdout, re.MULTILINE), result.stdout
    assert f"= {expected:,} B per token per layer" in joined(result.stdout)
    if kv == "fp8":
        assert ("512 e4m3 codes + 4 float32 scales (16 B) + 64 k_pe values in bfloat16 (128 B) = 656 B"
                in joined(result.stdout))
        # MHA in FP8 at one byte per value: 2 x 128 heads x 128 = 32,768 B, 32,768 / 656 times MLA's
        assert re.search(rf"^MHA\s+K, V 128x128\s+32,768\s+32,768\s+.*{32768 / 656:.2f}x$", result.stdout,
                         re.MULTILINE)


def test_info_tiny_fp8_is_52_bytes_and_float32_rope_widens_it():
    text = joined(run("info", "--preset", "tiny", "--kv-cache-dtype", "fp8").stdout)
    assert "32 e4m3 codes + 1 float32 scales (4 B) + 8 k_pe values in bfloat16 (16 B) = 52 B" in text
    text = joined(run("info", "--preset", "tiny", "--kv-cache-dtype", "fp8", "--dtype", "float32").stdout)
    assert f"= {32 + 4 + 8 * 4} B per token per layer" in text


def test_sequence_formulas_by_hand():
    assert contiguous_sequences(1000, 10, 3) == 33  # 1000 / (10 rows x 3 B)
    assert paged_sequences(1000, 10, 4, 3) == 27  # 1000 / ((10 + 2) x 3) = 27.8
    assert paged_sequences(1000, 10, 1, 3) == 31  # 1000 / (10.5 x 3) = 31.7: half a one-row page


def test_info_memory_80gib_deepseek_v3_json_by_hand():
    result = run("info", "--preset", "deepseek-v3", "--memory", "80GiB", "--cache", "paged", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["cache_sizing"]
    memory = 80 * GIB
    assert data["memory_bytes"] == memory and data["weights_counted"] is False and data["page_size"] == 64
    assert data["contexts"] == [4096, 32768, 131072, 163840]  # up to max_position_embeddings, which is added
    rows = {(r["scheme"], r["cache"], r["kv_cache_dtype"]): r for r in data["rows"]}
    for kv, per_layer in (("model", 1152), ("fp8", 656)):
        per_token = per_layer * 61
        contiguous, paged = rows["MLA", "contiguous", kv], rows["MLA", "paged", kv]
        assert contiguous["bytes_per_token_per_layer"] == per_layer and contiguous["bytes_per_token"] == per_token
        assert contiguous["tokens"] == int(memory / per_token)
        assert contiguous["sequences"] == [int(memory / (163840 * per_token))] * 4
        assert paged["sequences"] == [int(memory / ((x + 32) * per_token)) for x in data["contexts"]]
    assert rows["MLA", "paged", "fp8"]["sequences"][0] == 520 and rows["MLA", "paged", "model"]["sequences"][0] == 296
    mha = rows["MHA", "paged", "model"]  # the other schemes in the chosen layout and dtype: 2 x 128 x 128 values
    assert mha["sequences"][0] == int(memory / ((4096 + 32) * 2 * 128 * 128 * 2 * 61))
    assert ("GQA (8 groups)", "paged", "model") in rows and ("MQA", "contiguous", "model") not in rows


@pytest.mark.parametrize("preset", ["tiny", "deepseek-v3", "kimi-k2"])
def test_info_memory_tables_fit_80_columns(preset):
    result = run("info", "--preset", preset, "--memory", "80G", "--cache", "paged", "--page-size", 16,
                 "--kv-cache-dtype", "fp8", "--tp", 1 if preset == "tiny" else 8)
    assert result.exit_code == 0, result.output
    assert max(len(line.rstrip()) for line in result.stdout.splitlines()) <= 80
    assert "Cache only: the weights are not counted" in joined(result.stdout)
    assert re.search(r"^MLA\s+paged 16\s+fp8\s+[\d,]+", result.stdout, re.MULTILINE)
    assert "Pages of 16 rows" in joined(result.stdout)


def test_page_size_changes_only_the_paged_rows():
    def sizing(page):
        result = run("info", "--preset", "deepseek-v3", "--memory", "80GiB", "--page-size", page, "--json")
        return {(r["scheme"], r["cache"], r["kv_cache_dtype"]): r["sequences"]
                for r in json.loads(result.stdout)["cache_sizing"]["rows"]}

    small, large = sizing(16), sizing(4096)
    assert small["MLA", "contiguous", "fp8"] == large["MLA", "contiguous", "fp8"]
    memory, per_token = 80 * GIB, 656 * 61
    assert large["MLA", "paged", "fp8"][0] == int(memory / ((4096 + 2048) * per_token))
    assert large["MLA", "paged", "fp8"][0] < small["MLA", "paged", "fp8"][0]


def test_memory_sizes_parse_in_binary_units():
    assert parse_memory("80GiB") == parse_memory("80G") == 80 * GIB
    assert parse_memory("500MiB") == 500 * 2**20
    for bad in ("0", "abc", "0.1"):
        with pytest.raises(UserError, match="--memory"):
            parse_memory(bad)


def test_onnx_files_cache_is_used_and_another_refused():
    """What `info --onnx` takes from a file's spec: a file from before contract version 2 (no such fields) is
    contiguous in the model's dtype."""
    old = SimpleNamespace()
    assert file_cache("m.onnx", old, None, None, None) == ("contiguous", "model", None)
    paged = SimpleNamespace(cache="paged", kv_cache_dtype="fp8", page_size=16)
    assert file_cache("m.onnx", paged, None, "fp8", None) == ("paged", "fp8", 16)
    with pytest.raises(UserError, match="holds a --cache paged export: drop --cache contiguous"):
        file_cache("m.onnx", paged, "contiguous", None, None)
