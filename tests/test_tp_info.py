"""`info --tp N` (issue 23): the per-rank figures of DeepSeek-V3's tensor-parallel layout.

The weights per rank are checked against the single-device model's own tensors, sliced here by the layout's
rules (which tensor is whole on every rank, which is split along which axis), not through the formula under test.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from click.testing import CliRunner

from mla_export.common.console import size_text
from mla_export.model.footprint import (collectives, rank_cache_bytes_per_token, rank_layer, rank_weight_bytes,
                                        weight_bytes)
from mla_export.model.fp8_forms import to_fp8_form
from mla_export.model.hf_config import load_preset
from mla_export.model.model import MlaModel
from mla_export.model.tp_layout import tp_problem
from mla_export.ui.cli import main
from mla_export.ui.info import info_dict

FORMS = [(quant, absorb) for quant in ("none", "fp8") for absorb in ("prefolded", "runtime")]

# The layout (DeepSeek-V3 inference/model.py), as the export's tensor names: the axis each split tensor is cut
# along; every other tensor (q_a_proj, kv_a_proj_with_mqa, the norms, the router) is whole on every rank.
SPLIT_AXIS = {"q_latent_proj.weight": 0, "q_pe_proj.weight": 0, "q_nope_proj.weight": 0, "q_up_proj.weight": 0,
              "out_proj.weight": 1, "o_proj.weight": 1, "w_uk": 0, "w_uk.weight": 0, "w_uv": 0, "w_uv.weight": 0,
              "gate_proj.weight": 0, "up_proj.weight": 0, "down_proj.weight": 1,  # dense MLP, shared experts
              "experts.gate_up_proj": 0, "experts.down_proj": 0,  # whole experts
              "embed_tokens.weight": 0, "lm_head.weight": 0}
ROUTER = ("mlp.gate.weight", "mlp.gate.e_score_correction_bias")  # float32 in every form


def split_axis(name: str) -> int | None:
    return next((axis for suffix, axis in SPLIT_AXIS.items() if name == suffix or name.endswith("." + suffix)), None)


def rank_bytes_by_hand(config, tp: int, quant: str, absorb: str, element_bytes: int = 2) -> dict[str, int]:
    """One rank's bytes from the single-device export model's tensors (meta), each sliced by SPLIT_AXIS: FP8
    weights one byte a value plus a float32 scale per 128x128 block of the slice, the router float32, the rest
    `element_bytes`. By part: attention (self_attn.*), mlp (mlp.*), the rest."""
    with torch.device("meta"):
        model = MlaModel(config, 8, folded=True, absorb=absorb, with_embeddings=True)
        if quant == "fp8":
            model = to_fp8_form(model)
    parts = {"attention": 0, "mlp": 0, "rest": 0}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if "scale" in name:  # recounted from the sliced weight below
            continue
        shape = list(tensor.shape)
        axis = split_axis(name)
        if axis is not None:
            assert shape[axis] % tp == 0, name
            shape[axis] //= tp
        if tensor.dtype == torch.float8_e4m3fn:
            *lead, rows, cols = shape
            count = int(torch.tensor(lead).prod()) if lead else 1
            nbytes = count * (rows * cols + 4 * -(-rows // 128) * -(-cols // 128))
        else:
            nbytes = int(torch.tensor(shape).prod()) * (4 if name.endswith(ROUTER) else element_bytes)
        part = "attention" if ".self_attn." in name else "mlp" if ".mlp." in name else "rest"
        parts[part] += nbytes
    return parts


def fp8_splittable():
    """tiny-moe with 128-aligned dims: at --tp 2 every rank's FP8 share starts on a block edge."""
    return dataclasses.replace(load_preset("tiny-moe"), hidden_size=256, q_lora_rank=256, kv_lora_rank=128,
                               qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64, intermediate_size=256,
                               moe_intermediate_size=128, n_shared_experts=2, vocab_size=256, name="tiny-fp8")


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe", "deepseek-v2-lite", "deepseek-v3", "kimi-k2"])
@pytest.mark.parametrize("quant, absorb", FORMS)
def test_tp_1_reproduces_the_single_device_figures(preset, quant, absorb):
    config = load_preset(preset)
    for with_embeddings in (True, False):
        single = weight_bytes(config, 2, quant, absorb, with_embeddings)
        rank = rank_weight_bytes(config, 1, 2, quant, absorb, with_embeddings)
        assert {key: rank[key] for key in single} == single
        assert rank["attention"] + rank["mlp"] + rank["embeddings_head_norms"] == rank["total"]
    assert collectives(config, 1, 2) == {"per_layer": [], "per_model": [], "bytes_per_token": 0}


@pytest.mark.parametrize("preset, tp", [("tiny", 2), ("tiny", 4), ("tiny-moe", 2), ("tiny-moe", 4)])
@pytest.mark.parametrize("absorb", ["prefolded", "runtime"])
def test_rank_bytes_equal_the_sliced_tensors_of_the_model(preset, tp, absorb):
    config = load_preset(preset)
    hand = rank_bytes_by_hand(config, tp, "none", absorb)
    rank = rank_weight_bytes(config, tp, 2, "none", absorb)
    assert (rank["attention"], rank["mlp"], rank["embeddings_head_norms"]) == (
        hand["attention"], hand["mlp"], hand["rest"])
    assert rank["total"] == sum(hand.values())


@pytest.mark.parametrize("absorb", ["prefolded", "runtime"])
def test_fp8_rank_bytes_equal_the_sliced_tensors_with_their_block_scales(absorb):
    config = fp8_splittable()
    assert tp_problem(config, 2, quant="fp8", absorb=absorb) is None
    hand = rank_bytes_by_hand(config, 2, "fp8", absorb)
    rank = rank_weight_bytes(config, 2, 2, "fp8", absorb)
    assert (rank["attention"], rank["mlp"], rank["embeddings_head_norms"]) == (
        hand["attention"], hand["mlp"], hand["rest"])
    # rank 1's 96 of 192 dense MLP rows start mid-block and cross into the next one
    assert tp_problem(dataclasses.replace(config, intermediate_size=192), 2, quant="fp8", absorb=absorb) is not None


def replicated_bytes(config, element_bytes: int, quant: str) -> int:
    """What every rank holds whole: q_a_proj, kv_a_proj_with_mqa, the latent, layer and final norms, the router."""
    d, q, dc, dr = config.hidden_size, config.q_lora_rank, config.kv_lora_rank, config.qk_rope_head_dim

    def matrix(rows, cols):
        return rows * cols + 4 * -(-rows // 128) * -(-cols // 128) if quant == "fp8" else rows * cols * element_bytes

    per_layer = matrix(q, d) + matrix(dc + dr, d) + (q + dc + 2 * d) * element_bytes
    routers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers)) * config.n_routed_experts * (d + 1)
    return config.num_hidden_layers * per_layer + 4 * routers + d * element_bytes


@pytest.mark.parametrize("preset", ["deepseek-v3", "kimi-k2"])
@pytest.mark.parametrize("quant, absorb", FORMS)
def test_whole_models_at_tp_8_hold_an_eighth_plus_the_replicated_parts(preset, quant, absorb):
    config, tp = load_preset(preset), 8
    assert tp_problem(config, tp, quant=quant, absorb=absorb) is None
    single = weight_bytes(config, 2, quant, absorb)["total"]
    replicated = replicated_bytes(config, 2, quant)
    rank = rank_weight_bytes(config, tp, 2, quant, absorb)
    assert rank["total"] == pytest.approx(replicated + (single - replicated) / tp, rel=1e-9)
    assert single / tp < rank["total"] < single / tp * 1.05  # the replicated parts are small at these dims
    per_token = weight_bytes(config, 2, quant, absorb)["per_decode_token"]
    assert per_token / tp < rank["per_decode_token"] < per_token


def test_the_collectives_and_their_bytes_per_token_by_hand():
    config, tp = load_preset("tiny-moe"), 2  # d 64, vocab 128, 3 layers
    plan = collectives(config, tp, 2)
    assert [(op["op"], op["values"], op["bytes"]) for op in plan["per_layer"]] == [("AllReduce", 64, 128)] * 2
    assert [(op["op"], op["values"], op["bytes"]) for op in plan["per_model"]] == [
        ("AllReduce", 64, 128), ("AllGather", 64, 128)]
    assert plan["per_model"][1]["received_bytes"] == 128 * 2
    assert plan["bytes_per_token"] == 3 * 2 * 128 + 128 + 128
    hidden = collectives(config, tp, 4, with_embeddings=False)
    assert hidden["per_model"] == [] and hidden["bytes_per_token"] == 3 * 2 * 64 * 4


def test_every_rank_holds_the_whole_latent_cache():
    config = load_preset("deepseek-v3")
    for tp in (1, 8, 64):
        assert rank_cache_bytes_per_token(config, tp, 2)["per_layer"] == 576 * 2
    assert rank_cache_bytes_per_token(config, 8, 1)["model"] == 576 * 61


def test_rank_layer_splits_heads_mlp_and_experts():
    config = load_preset("deepseek-v3")
    dense, moe = rank_layer(config, 0, 8, "runtime"), rank_layer(config, 3, 8, "runtime")
    assert (16 * 192, 1536, 1) in dense.attention and (128, 512, 16) in dense.attention  # 16 heads per rank
    assert dense.mlp == [(2304, 7168, 2), (7168, 2304, 1)] and dense.local_experts == 0
    assert moe.local_experts == 32 and moe.mlp == [(256, 7168, 2), (7168, 256, 1)]


@pytest.mark.parametrize("tp, field", [(8, "num_attention_heads"), (3, None), (0, None), (128, None)])
def test_tp_problem_names_the_field_or_the_range(tp, field):
    problem = tp_problem(load_preset("tiny"), tp)
    assert problem is not None and (field in problem if field else "power of two from 1 to 64" in problem)


def test_tp_problem_checks_each_split_field():
    moe = load_preset("tiny-moe")
    assert "intermediate_size=98" in tp_problem(dataclasses.replace(moe, intermediate_size=98), 4)  # the dense layer
    shared = dataclasses.replace(moe, moe_intermediate_size=30)
    assert "moe_intermediate_size*n_shared_experts=30" in tp_problem(shared, 4)
    odd_vocab = dataclasses.replace(moe, vocab_size=130)
    assert "vocab_size=130" in tp_problem(odd_vocab, 4) and tp_problem(odd_vocab, 4, io="hidden") is None
    assert "128-value FP8 blocks" in tp_problem(load_preset("deepseek-v3"), 64, quant="fp8")
    assert tp_problem(load_preset("deepseek-v3"), 64) is None


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "80"})


@pytest.mark.parametrize("preset", ["deepseek-v3", "kimi-k2"])
@pytest.mark.parametrize("dtype", ["bfloat16", "fp8"])
def test_info_tp_8_prints_the_per_rank_figures_in_80_columns(preset, dtype):
    result = run("info", "--preset", preset, "--tp", 8, "--dtype", dtype)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    config = load_preset(preset)
    for quant, absorb in FORMS:
        sizes = rank_weight_bytes(config, 8, 2, quant, absorb)
        cells = [size_text(sizes[k]) for k in ("attention", "mlp", "embeddings_head_norms", "total",
                                                "per_decode_token")]
        assert re.search(rf"^{quant} {absorb}\s+" + r"\s+".join(map(re.escape, cells)) + "$", result.stdout,
                         re.MULTILINE), result.stdout
    cache = 576 * (1 if dtype == "fp8" else 2)
    label = "fp8: 1 B per value, no scales" if dtype == "fp8" else dtype  # --dtype fp8: every value one byte
    assert f"Latent cache per token per rank ({label}): {cache:,} B per layer" in " ".join(result.stdout.split())
    assert re.search(r"^AllReduce\s+the attention output projection\s+every layer\s+7,168\s+14,336$", result.stdout,
                     re.MULTILINE)
    assert f"{2 * 61 + 2} collectives per forward step" in result.stdout


def test_info_tp_json_and_refused_fp8_forms():
    import json

    result = run("info", "--preset", "tiny-moe", "--tp", 2, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["tensor_parallel"]
    assert data["tp"] == 2 and data["weights_per_rank"]["none runtime"]["total"] == rank_weight_bytes(
        load_preset("tiny-moe"), 2, 2, "none", "runtime")["total"]
    assert "refused" not in data["weights_per_rank"]["fp8 prefolded"]  # tiny's shares lie inside one block each
    data = json.loads(run("info", "--preset", "deepseek-v2-lite", "--tp", 2, "--json").stdout)["tensor_parallel"]
    assert "cuts 128-value FP8 blocks" in data["weights_per_rank"]["fp8 prefolded"]["refused"]
    text = run("info", "--preset", "deepseek-v2-lite", "--tp", 2).stdout
    assert re.search(r"^fp8 prefolded(\s+-){5}$", text, re.MULTILINE)
    assert "tensor_parallel" not in info_dict(load_preset("tiny"))  # without --tp, info is as before


def test_info_onnx_tp_follows_the_files_ends(tmp_path):
    """An --io hidden export has no embedding or head: --tp's figures leave them and their collectives out."""
    import json

    from mla_export.graph.export import export_onnx
    from mla_export.model.spec import ModelSpec

    path = tmp_path / "tiny.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=16), path)
    data = json.loads(run("info", "--onnx", path, "--tp", 2, "--json").stdout)["tensor_parallel"]
    assert data["io"] == "hidden" and data["collectives"]["per_model"] == []
    assert data["weights_per_rank"]["none prefolded"]["total"] == rank_weight_bytes(
        load_preset("tiny"), 2, 2, "none", "prefolded", with_embeddings=False)["total"]
