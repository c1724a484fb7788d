"""--tp N: rank files, their weights, their collectives, and validation of the ranks in lockstep (gloo)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from corpus import assert_one_message, run
from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.graph.collective_parts import CollectiveStep, rank_steps
from mla_export.graph.export import export_onnx
from mla_export.graph.parallel_export import export_parallel, read_parallel_export
from mla_export.graph.tp_shards import shard_dim
from mla_export.model.hf_config import load_preset
from mla_export.model.spec import ModelSpec
from mla_export.run.parallel import ParallelOnnxRunner
from mla_export.run.runners import OnnxRuntimeRunner
from mla_export.run.scenario import Scenario
from mla_export.run.validate import validate_onnx

SMAX = 32


def _spec(preset="tiny", tp=2, **kw) -> ModelSpec:
    return ModelSpec(load_preset(preset), max_seq_len=SMAX, tp_size=tp, **kw)


@pytest.fixture(scope="module")
def tiny_tp2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tp") / "tiny-tp2"
    export_parallel(_spec(io="tokens"), out)
    return out


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory) -> Path:
    return export_onnx(_spec(tp=1, io="tokens"), tmp_path_factory.mktemp("tp1") / "tiny.onnx")


def _initializers(path: Path) -> dict[str, np.ndarray]:
    """The weight initializers (the exporter's own constants, `val_<n>`, left out)."""
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if not re.fullmatch(r"val_\d+", t.name)}


def test_rank_files_hold_slices_of_the_single_device_weights(tiny_tp2, tiny_single):
    """Every rank initializer is its rank's slice of the single-device export's (the split ones concatenate
    back to it; the others are equal): a rank's weights are copies of the whole model's, so bit for bit."""
    whole = _initializers(tiny_single)
    ranks = [_initializers(tiny_tp2 / contract.rank_file_name(r)) for r in range(2)]
    assert set(ranks[0]) == set(ranks[1]) == set(whole)
    split = 0
    for name, value in whole.items():
        parts = [r[name] for r in ranks]
        if parts[0].shape == value.shape:
            assert all(np.array_equal(p, value) for p in parts), name
            continue
        axis = next(i for i, (a, b) in enumerate(zip(parts[0].shape, value.shape)) if a != b)
        assert parts[0].shape[axis] * 2 == value.shape[axis], name
        np.testing.assert_array_equal(np.concatenate(parts, axis=axis), value, err_msg=name)
        split += 1
    assert split >= 8  # q_latent_proj, q_pe_proj, out_proj (transposed), MLP x 3 per layer, embed, lm_head


def test_each_rank_holds_half_of_the_attention_and_expert_weights(tmp_path):
    """Measured on the rank files: the split tensors (per-head attention weights, MLP, experts) are 1/N."""
    out = tmp_path / "moe"
    export_parallel(_spec("tiny-moe", tp=2, absorb="runtime"), out)
    whole = _initializers(export_onnx(_spec("tiny-moe", tp=1, absorb="runtime"), tmp_path / "moe.onnx"))
    rank = _initializers(out / "rank1.onnx")

    def total(values, pattern):
        return sum(v.nbytes for n, v in values.items() if pattern in n)

    for pattern in ("self_attn.w_uk", "self_attn.w_uv", "self_attn.q_nope_proj", "self_attn.o_proj",
                    "mlp.experts.gate_up_proj", "mlp.experts.down_proj", "shared_experts.down_proj"):
        assert total(whole, pattern) > 0, pattern
        assert total(rank, pattern) * 2 == total(whole, pattern), pattern
    for pattern in ("kv_a_proj_with_mqa", "q_a_proj", "mlp.gate.weight"):  # replicated
        assert total(rank, pattern) == total(whole, pattern), pattern


def test_rank_graphs_hold_one_collective_per_reduction_point(tiny_tp2):
    header = onnx.load(str(tiny_tp2 / "rank0.onnx"), load_external_data=False)
    ops = [(n.op_type, {a.name: a.i for a in n.attribute}) for n in header.graph.node if n.domain == "mla"
           and n.op_type in (contract.ALL_REDUCE_OP_TYPE, contract.ALL_GATHER_OP_TYPE)]
    layers = load_preset("tiny").num_hidden_layers
    # embedding + (attention, MLP) per layer, then the logits
    assert [op for op, _ in ops] == ["AllReduce"] * (1 + 2 * layers) + ["AllGather"]
    assert all(attrs["world_size"] == 2 for _, attrs in ops)
    heads = {a.i for n in header.graph.node if n.op_type == contract.OP_TYPE for a in n.attribute
             if a.name == "num_heads"}
    assert heads == {load_preset("tiny").num_attention_heads // 2}
    steps = rank_steps(header)
    assert sum(isinstance(s, CollectiveStep) for s in steps) == len(ops)
    assert isinstance(steps[0], type(steps[1])) is False  # a segment, then the embedding's AllReduce


def test_a_single_device_graph_is_one_segment(tiny_single):
    steps = rank_steps(onnx.load(str(tiny_single), load_external_data=False))
    assert len(steps) == 1 and not isinstance(steps[0], CollectiveStep)


def _feeds(spec: ModelSpec, seqlens: list[int], tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    c = spec.config
    inputs, _ = spec.graph_io_names()
    batch = len(seqlens)
    feeds = {inputs[0]: torch.randint(0, c.vocab_size, (batch, tokens), generator=gen).numpy(),
             inputs[1]: np.array(seqlens, dtype=np.int32)}
    for name in inputs[2:]:
        cache = torch.full((batch, spec.max_seq_len, c.cache_width), float("nan"))
        for b, rows in enumerate(seqlens):
            cache[b, :rows] = torch.randn(rows, c.cache_width, generator=gen)
        feeds[name] = cache.numpy()
    return feeds


def test_ranks_agree_and_equal_the_single_device_export(tiny_tp2, tiny_single):
    """Held-out check: the same feeds through both ranks and through the tp-1 export; the ranks' outputs are
    the same values, and the single-device file's to float32 rounding of a different summation order."""
    spec = _spec(io="tokens")
    feeds = _feeds(spec, [3, 0, 7], 5)
    single = OnnxRuntimeRunner(tiny_single).run(feeds)
    with ParallelOnnxRunner(read_parallel_export(tiny_tp2)) as ranks:
        got = ranks.run(feeds)
        peers = ranks.peer_outputs
    assert set(got) == set(single)
    for name, want in single.items():
        # equal up to float32 rounding (the collective sums rank partials in float64); NaN rows stay NaN
        np.testing.assert_allclose(got[name], want, rtol=2e-5, atol=2e-6, equal_nan=True, err_msg=name)
        np.testing.assert_allclose(peers[1][name], got[name], rtol=1e-6, atol=1e-7, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("preset,tp,absorb,quant,io,dtype", [
    ("tiny", 2, "prefolded", "none", "hidden", "float32"),
    ("tiny", 4, "runtime", "none", "tokens", "float16"),
    ("tiny", 2, "runtime", "fp8", "tokens", "float32"),
    ("tiny-moe", 2, "prefolded", "none", "tokens", "float32"),
    ("tiny-moe", 4, "runtime", "fp8", "hidden", "float32"),
    ("tiny-moe", 2, "prefolded", "fp8", "tokens", "float16"),
])
def test_validate_passes_on_rank_exports(tmp_path, preset, tp, absorb, quant, io, dtype):
    out = tmp_path / "ranks"
    export_parallel(_spec(preset, tp=tp, absorb=absorb, quant=quant, io=io, dtype=dtype), out)
    report = validate_onnx(out, Scenario(batch=3, prefill_len=6, steps=3))
    assert report.passed, report.to_dict()
    names = {c.name for s in report.steps for c in s.comparisons}
    assert {f"rank {r} vs 0: {contract.LOGITS if io == 'tokens' else contract.HIDDEN_STATES_OUT}"
            for r in range(1, tp)} <= names
    if quant == "fp8":
        assert report.quantization_error


def test_validate_passes_on_rank_exports_with_a_paged_fp8_cache(tmp_path):
    """--tp with MoE, the run-time form, FP8 weights and a paged FP8 cache, all at once."""
    out = tmp_path / "ranks"
    export_parallel(_spec("tiny-moe", tp=2, absorb="runtime", quant="fp8", io="tokens", cache="paged", page_size=16,
                          kv_cache_dtype="fp8"), out)
    report = validate_onnx(out, Scenario(batch=3, prefill_len=6, steps=3))
    assert report.passed, report.to_dict()
    assert any(c.name.endswith(" c_kv") for c in report.steps[0].comparisons)


def test_validate_fails_when_a_rank_holds_another_slice(tmp_path):
    """Swap the two ranks' weights of one layer's output projection: each file is still well formed (the
    manifest rewritten to match), but the model is not the eager one, and validate must say so."""
    out = tmp_path / "ranks"
    export_parallel(_spec(), out)
    models = [onnx.load(str(out / contract.rank_file_name(r))) for r in range(2)]
    name = next(t.name for t in models[0].graph.initializer if "out_proj" in t.name)
    tensors = [next(t for t in m.graph.initializer if t.name == name) for m in models]
    data = [t.raw_data for t in tensors]
    tensors[0].raw_data, tensors[1].raw_data = data[1], data[0]
    manifest = json.loads((out / contract.PARALLEL_MANIFEST).read_text())
    for r, model in enumerate(models):
        onnx.save(model, str(out / contract.rank_file_name(r)))
        from mla_export.graph.parallel_export import file_sha256

        manifest["ranks"][r]["sha256"] = file_sha256(out / contract.rank_file_name(r))
    (out / contract.PARALLEL_MANIFEST).write_text(json.dumps(manifest))
    report = validate_onnx(out, Scenario(batch=2, prefill_len=4, steps=1))
    assert not report.passed


def test_check_tp_refuses_layouts_that_do_not_divide():
    with pytest.raises(UserError, match="power of two"):
        _spec(tp=3)
    with pytest.raises(UserError, match="num_attention_heads=4 is not a multiple of 8"):
        _spec(tp=8)
    moe = dataclasses.replace(load_preset("tiny-moe"), num_attention_heads=16)
    with pytest.raises(UserError, match="n_routed_experts=8 is not a multiple of 16"):
        ModelSpec(moe, max_seq_len=SMAX, tp_size=16)
    with pytest.raises(UserError, match="cuts 128-value FP8 blocks"):  # V2-Lite: rank 1's 5472 MLP rows start mid-block
        ModelSpec(load_preset("deepseek-v2-lite"), max_seq_len=SMAX, tp_size=2, quant="fp8")
    ModelSpec(load_preset("deepseek-v3"), max_seq_len=SMAX, tp_size=8, quant="fp8")  # every share on a block edge
    ModelSpec(load_preset("tiny"), max_seq_len=SMAX, tp_size=4, quant="fp8")  # every share inside one block


def test_shard_rules_cover_the_export_forms():
    assert shard_dim("layers.0.self_attn.q_latent_proj.weight") == 0
    assert shard_dim("layers.0.self_attn.out_proj.weight_scale_inv") == 1
    assert shard_dim("layers.3.self_attn.w_uk.weight") == 0
    assert shard_dim("layers.1.mlp.experts.gate_up_proj") is None  # streamed by expert instead
    assert shard_dim("layers.1.mlp.gate.weight") is None
    assert shard_dim("layers.1.mlp.shared_experts.down_proj.weight") == 1
    assert shard_dim("layers.0.self_attn.kv_a_proj_with_mqa.weight") is None
    assert shard_dim("lm_head.weight") == 0


# ---- bad input ---------------------------------------------------------------------------------------------

def test_cli_refuses_a_tp_that_does_not_divide(tmp_path):
    assert_one_message(run("export", "--preset", "tiny", "--tp", "8", "-o", tmp_path / "d"),
                       "--tp 8: tiny's num_attention_heads=4 is not a multiple of 8")
    assert_one_message(run("export", "--preset", "tiny", "--tp", "3", "-o", tmp_path / "d"),
                       "--tp 3: expected a power of two")
    assert_one_message(run("export", "--preset", "tiny", "--tp", "2", "-o", tmp_path / "d.onnx"),
                       "expected a directory for the rank files")
    assert not (tmp_path / "d").exists()


@pytest.fixture()
def ranks_copy(tiny_tp2, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(tiny_tp2, out)
    return out


def test_missing_foreign_and_mixed_rank_files_are_refused(ranks_copy, tmp_path):
    (ranks_copy / "rank1.onnx").unlink()
    assert_one_message(run("validate", "--onnx", ranks_copy), "rank 1's file rank1.onnx is missing")
    other = tmp_path / "other"
    export_parallel(_spec(io="tokens", seed=1), other)
    shutil.copy(other / "rank1.onnx", ranks_copy / "rank1.onnx")
    assert_one_message(run("validate", "--onnx", ranks_copy), "rank1.onnx is not the file this export wrote")
    manifest = json.loads((ranks_copy / contract.PARALLEL_MANIFEST).read_text())
    manifest["ranks"][1]["sha256"] = json.loads((other / contract.PARALLEL_MANIFEST).read_text())["ranks"][1]["sha256"]
    (ranks_copy / contract.PARALLEL_MANIFEST).write_text(json.dumps(manifest))
    assert_one_message(run("validate", "--onnx", ranks_copy), "of another export")
    (ranks_copy / contract.PARALLEL_MANIFEST).unlink()
    assert_one_message(run("validate", "--onnx", ranks_copy), "is a directory without parallel.json")


def test_a_single_rank_file_is_validated_as_a_rank_not_a_model(tiny_tp2):
    """A rank file alone is not the whole model: refused before any work (its heads are the rank's)."""
    result = run("validate", "--onnx", tiny_tp2 / "rank0.onnx")
    assert_one_message(result, "rank 0 of 2")


def test_a_rank_that_dies_stops_the_others_with_one_message(tiny_tp2):
    spec = _spec(io="tokens")
    feeds = _feeds(spec, [2, 4], 3)
    runner = ParallelOnnxRunner(read_parallel_export(tiny_tp2))
    try:
        runner.run(feeds)
        os.kill(runner.processes[1].pid, signal.SIGKILL)
        others = runner.processes[:1]
        start = time.monotonic()
        with pytest.raises(UserError, match="rank 1 of 2 exited"):
            runner.run(feeds)
        assert time.monotonic() - start < 10
        assert not any(p.is_alive() for p in others)
    finally:
        runner.close()


def test_info_reads_a_tp_export_directory(tiny_tp2):
    """info --onnx DIR: the whole model's figures and the per-rank ones of the directory's own --tp."""
    result = run("info", "--onnx", tiny_tp2, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["tensor_parallel"]
    assert data["tp"] == 2 and data["io"] == "tokens"
    assert_one_message(run("info", "--onnx", tiny_tp2, "--tp", "4"), "is a --tp 2 export: drop --tp 4")
