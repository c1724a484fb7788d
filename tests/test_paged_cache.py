"""A paged and an FP8 latent cache (MlaAttention contract version 2): the FP8 format, the reference ops, the
ONNX function body on ONNX Runtime, the page server validate uses, and whole exports validated."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from corpus import assert_one_message, run
from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.graph.export import export_onnx
from mla_export.graph.onnx_cache import FP8_CACHE_OPSET, cache_function_proto
from mla_export.model.cache_ops import (dequantize_cache_rows, fp8_cache_scales, mla_attention_fp8_cache_reference,
                                        mla_attention_paged_reference, quantize_cache_rows)
from mla_export.model.hf_config import load_preset
from mla_export.model.ops import mla_attention_reference
from mla_export.model.spec import ModelSpec
from mla_export.run.compare import verdict_for
from mla_export.run.fp8_cache_check import fp8_cache_comparisons
from mla_export.run.paged import UNUSED_SLOT, CacheServer
from mla_export.run.runners import OnnxRuntimeRunner
from mla_export.run.scenario import Scenario
from mla_export.run.validate import validate_onnx

B, S, H, DC, DR = 3, 5, 4, 40, 8  # Dc 40: one partial 128-value tile


# ---- the FP8 format -----------------------------------------------------------------------------------------

def oracle_scales(x: torch.Tensor) -> torch.Tensor:
    """The contract's scale rule written out per tile with Python's math: 2^ceil(log2(max(amax/448, 1e-4)))."""
    out = []
    for row in x.reshape(-1, x.shape[-1]).tolist():
        scales = []
        for start in range(0, len(row), 128):
            amax = float(np.float32(max(abs(v) for v in row[start:start + 128])))
            bound = max(float(np.float32(np.float32(amax) / np.float32(448.0))), float(np.float32(1e-4)))
            mantissa, exponent = math.frexp(bound)
            scales.append(2.0 ** (exponent - 1 if mantissa == 0.5 else exponent))
        out.append(scales)
    return torch.tensor(out, dtype=torch.float32).reshape(*x.shape[:-1], -1)


def test_fp8_cache_scales_follow_the_rule_on_its_edges():
    x = torch.randn(6, 300) * torch.logspace(-6, 3, 6)[:, None]  # three tiles, the last of 44 values
    x[0, :128] = 0.0  # an all-zero tile: the 1e-4 floor, 2^-13
    x[1, 5] = 448.0 * 8  # amax exactly 448 x 2^3 (and bigger than the rest)
    x[2, :] = -0.0
    x[3, 128:256] = 1e-40  # subnormal values
    assert torch.equal(fp8_cache_scales(x), oracle_scales(x))
    assert fp8_cache_scales(x)[0, 0] == 2.0**-13 and fp8_cache_scales(x)[1, 0] == 8.0
    codes, scales = quantize_cache_rows(x)
    back = dequantize_cache_rows(codes, scales, torch.float32)
    per_value = scales.repeat_interleave(128, -1)[..., :300]
    assert bool(((back - x).abs() <= per_value * 2.0**-10 + x.abs() * 2.0**-4).all())  # half a step at most
    assert torch.equal(torch.signbit(back[2]), torch.ones(300, dtype=torch.bool))  # -0.0 stays -0.0
    assert float(back.abs().max() / per_value.max()) <= 448.0


def test_fp8_judge_accepts_nearest_codes_and_refuses_truncated_ones():
    """The stored-row rule (within half an FP8 step of the unquantized value) fails a runtime that truncates."""
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(2, 16, DC + DR, generator=gen, dtype=torch.float64)
    nearest = ref.clone()
    nearest[..., :DC] = dequantize_cache_rows(*quantize_cache_rows(ref[..., :DC]), torch.float64)
    codes, scales = quantize_cache_rows(ref[..., :DC])
    per_value = scales.repeat_interleave(128, -1)[..., :DC].double()
    down = ref[..., :DC] / per_value  # value in code units; truncating toward zero on e4m3's grid:
    grid = torch.tensor(sorted({float(v) for v in torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
                                .float().tolist() if math.isfinite(v)}), dtype=torch.float64)
    index = torch.searchsorted(grid, down.abs().contiguous(), right=True) - 1
    truncated = ref.clone()
    truncated[..., :DC] = torch.sign(down) * grid[index] * per_value
    verdict = verdict_for("float32")
    assert all(c.passed for c in fp8_cache_comparisons("c", nearest, ref, verdict, None, None, DC))
    assert not fp8_cache_comparisons("c", truncated, ref, verdict, None, None, DC)[0].passed


# ---- references -----------------------------------------------------------------------------------------------

def _inputs(seed: int, seqlens: list[int], page: int, fp8: bool = False, dtype=torch.float64):
    """Op inputs with a shuffled pool whose pages interleave the sequences; unneeded slots hold garbage."""
    gen = torch.Generator().manual_seed(seed)
    max_pages = -(-128 // page)  # 128 rows per sequence
    pages = B * max_pages + 2
    order = torch.randperm(pages, generator=gen)
    table = torch.full((B, max_pages), UNUSED_SLOT, dtype=torch.int32)
    for j in range(max_pages):  # slot j of every sequence before slot j + 1 of any: interleaved
        for b in range(B):
            table[b, j] = order[j * B + b]
    q_latent = torch.randn(B, S, H, DC, generator=gen, dtype=dtype)
    q_pe = torch.randn(B, S, H, DR, generator=gen, dtype=dtype)
    kv, k_pe = torch.randn(B, S, DC, generator=gen, dtype=dtype), torch.randn(B, S, DR, generator=gen, dtype=dtype)
    contiguous = torch.full((B, max_pages * page, DC + DR), float("nan"), dtype=dtype)
    for b, rows in enumerate(seqlens):
        contiguous[b, :rows] = torch.randn(rows, DC + DR, generator=gen, dtype=dtype)
    pool = torch.full((pages, page, DC + DR), float("nan"), dtype=dtype)
    for b in range(B):
        for j in range(max_pages):
            pool[table[b, j]] = contiguous[b, j * page:(j + 1) * page]
    table_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # the rope table: float32 (or 64)
    cos_sin = torch.randn(max_pages * page, DR, generator=gen, dtype=table_dtype)
    return q_latent, q_pe, kv, k_pe, pool, torch.tensor(seqlens, dtype=torch.int32), cos_sin, table, contiguous


@pytest.mark.parametrize("page", [64, 16])
def test_paged_reference_equals_the_contiguous_one(page):
    """Prefill crossing page edges, a sequence at row page-1, one empty: the paged op's attention and the rows
    it writes are the contiguous op's (float64; the same sums over a view with more zeroed rows)."""
    lengths = [page - 1, 0, min(2 * page - 3, 122)]
    q, q_pe, kv, k_pe, pool, seqlens, cos_sin, table, contiguous = _inputs(0, lengths, page)
    attn, present = mla_attention_paged_reference(q, q_pe, kv, k_pe, pool, seqlens, cos_sin, table, 0.3)
    want, want_cache = mla_attention_reference(q, q_pe, kv, k_pe, contiguous, seqlens, cos_sin, 0.3)
    torch.testing.assert_close(attn, want, rtol=1e-12, atol=1e-12)
    for b in range(B):
        rows = int(seqlens[b]) + S
        got = torch.cat([present[table[b, j]] for j in range(-(-rows // page))])[:rows]
        torch.testing.assert_close(got, want_cache[b, :rows], rtol=0, atol=0)  # copies of the same rows
    owned = {int(i) for i in table.flatten() if i != UNUSED_SLOT}
    for p in set(range(pool.shape[0])) - owned:  # pages nobody owns: the same bits (NaN included)
        assert torch.equal(present[p].view(torch.int64), pool[p].view(torch.int64))


def test_a_block_table_pointing_past_the_pool_is_refused():
    q, q_pe, kv, k_pe, pool, seqlens, cos_sin, table, _ = _inputs(1, [3, 5, 7], 16)
    table[1, 0] = pool.shape[0]
    with pytest.raises(ValueError, match="outside the pool"):
        mla_attention_paged_reference(q, q_pe, kv, k_pe, pool, seqlens, cos_sin, table, 0.3)


# ---- the function body on ONNX Runtime ------------------------------------------------------------------------

def _one_node(fp8: bool, page: int, shapes: dict) -> bytes:
    names = contract.OP_FP8_CACHE_INPUTS if fp8 else contract.OP_PAGED_INPUTS
    outputs = contract.OP_FP8_CACHE_OUTPUTS if fp8 else contract.OP_OUTPUTS
    types = {"cache_seqlens": TensorProto.INT32, "block_table": TensorProto.INT32, "past_scale": TensorProto.FLOAT,
             "past_cache": TensorProto.FLOAT8E4M3FN if fp8 else TensorProto.FLOAT}
    ins = [helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), shapes[n]) for n in names]
    out_types = {"present_cache": TensorProto.FLOAT8E4M3FN if fp8 else TensorProto.FLOAT}
    outs = [helper.make_tensor_value_info(n, out_types.get(n, TensorProto.FLOAT), None) for n in outputs]
    node = helper.make_node(contract.OP_TYPE, list(names), list(outputs), domain=contract.OP_DOMAIN, num_heads=H,
                            kv_lora_rank=DC, qk_rope_head_dim=DR, softmax_scale=0.3, page_size=page,
                            kv_cache_dtype=int(fp8), **contract.PLUGIN_LOOKUP_ATTRIBUTES)
    model = helper.make_model(helper.make_graph([node], "one_op", ins, outs),
                              opset_imports=[helper.make_opsetid("", FP8_CACHE_OPSET), helper.make_opsetid("mla", 1)],
                              functions=[cache_function_proto(fp8)], ir_version=10)
    return model.SerializeToString()


def test_function_body_pages_match_the_reference():
    q, q_pe, kv, k_pe, pool, seqlens, cos_sin, table, _ = _inputs(2, [15, 0, 33], 16, dtype=torch.float32)
    args = dict(zip(contract.OP_PAGED_INPUTS, (q, q_pe, kv, k_pe, pool, seqlens, cos_sin, table)))
    session = ort.InferenceSession(_one_node(False, 16, {n: list(t.shape) for n, t in args.items()}),
                                   providers=["CPUExecutionProvider"])
    attn, present = session.run(None, {n: t.numpy() for n, t in args.items()})
    want, want_pool = mla_attention_paged_reference(*(t.double() if t.is_floating_point() else t
                                                      for t in (q, q_pe, kv, k_pe, pool, seqlens, cos_sin, table)), 0.3)
    np.testing.assert_allclose(attn, want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(present, want_pool.numpy(), rtol=1e-6, atol=1e-6, equal_nan=True)
    table[2, 1] = pool.shape[0] + 5  # a needed slot outside the pool: ONNX Runtime fails, reads nothing
    with pytest.raises(Exception, match="(?i)out of bounds|invalid|indices"):
        session.run(None, {n: t.numpy() for n, t in args.items()})


@pytest.mark.parametrize("page", [16, 0])
def test_function_body_fp8_cache_stores_the_references_codes(page):
    """FP8 (paged, and contiguous with its identity table): the codes and scales ONNX Runtime stores are the
    reference's bit for bit (the same float32 rule, one rounding), the attention to float32 rounding."""
    q, q_pe, kv, k_pe, pool, seqlens, cos_sin, table, contiguous = _inputs(3, [15, 0, 33], 16, dtype=torch.float32)
    if page == 0:
        pool, table = contiguous, torch.arange(B, dtype=torch.int32)[:, None]
    codes, scales = quantize_cache_rows(torch.nan_to_num(pool[..., :DC]))
    rope = pool[..., DC:].contiguous()
    args = dict(zip(contract.OP_FP8_CACHE_INPUTS, (q, q_pe, kv, k_pe, codes, seqlens, cos_sin, table, scales, rope)))
    session = ort.InferenceSession(_one_node(True, page, {n: list(t.shape) for n, t in args.items()}),
                                   providers=["CPUExecutionProvider"])
    runner_feeds = {n: t.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn) if t.dtype == torch.float8_e4m3fn
                    else t.numpy() for n, t in args.items()}
    runner = OnnxRuntimeRunner.__new__(OnnxRuntimeRunner)
    runner.session = session
    got = runner.run(runner_feeds)
    want = mla_attention_fp8_cache_reference(q, q_pe, kv, k_pe, codes, seqlens, cos_sin, table, scales, rope, 0.3, page)
    assert np.array_equal(got["present_cache"].view(np.uint8), want[1].view(torch.uint8).numpy())
    assert np.array_equal(got["present_scale"], want[2].numpy())
    np.testing.assert_allclose(got["present_rope"], want[3].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["attn_latent"], want[0].numpy(), rtol=1e-5, atol=1e-5)


# ---- the page server ------------------------------------------------------------------------------------------

class _Scribbler:
    """A runner that writes into the last page of every pool besides answering correctly."""

    def __init__(self, inner):
        self.inner, self.name = inner, "scribbler"

    def run(self, feeds):
        out = self.inner.run(feeds)
        for name, value in out.items():
            if name.startswith("present_latent_pages"):
                value[-1] = 0.0
        return out


@pytest.fixture(scope="module")
def tiny_paged(tmp_path_factory):
    return export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=64, cache="paged", page_size=16),
                       tmp_path_factory.mktemp("paged") / "tiny.onnx")


def test_a_page_past_the_pool_fails_onnx_runtime_with_one_message(tiny_paged):
    """The function body never reads outside the pool: a needed slot naming a page past it makes ONNX Runtime's
    Gather fail, and the runner says so in one line (the file, ORT's message), not a traceback."""
    spec = ModelSpec(load_preset("tiny"), max_seq_len=64, cache="paged", page_size=16)
    names = spec.step_io_names()[0]
    c = spec.config
    feeds = {names[0]: np.zeros((1, 3, c.hidden_size), np.float32), contract.CACHE_SEQLENS: np.array([5], np.int32)}
    feeds.update({n: np.zeros((1, 64, c.cache_width), np.float32) for n in names[2:]})
    runner = OnnxRuntimeRunner(tiny_paged)
    graph_feeds = CacheServer(runner, spec).graph_feeds(feeds)
    graph_feeds[contract.BLOCK_TABLE][0, 0] = 10**6
    with pytest.raises(UserError) as caught:
        runner.run(graph_feeds)
    message = str(caught.value)
    assert message.startswith("ONNX Runtime failed running tiny.onnx (") and "out of data bounds" in message
    assert "\n" not in message


def test_the_server_interleaves_pages_and_catches_writes_outside_them(tiny_paged):
    from mla_export.graph.onnx_reader import read_export_spec

    spec = read_export_spec(tiny_paged)
    report = validate_onnx(tiny_paged, Scenario(batch=3, prefill_len=20, steps=14))  # 34 rows: 3 pages
    assert report.passed
    server = CacheServer(OnnxRuntimeRunner(tiny_paged), spec, seed=0)
    feeds = {contract.HIDDEN_STATES_IN: np.random.default_rng(0).standard_normal((2, 18, 64)).astype(np.float32),
             contract.CACHE_SEQLENS: np.array([0, 3], np.int32)}
    feeds.update({contract.past_cache_name(i): np.zeros((2, 64, 40), np.float32) for i in range(2)})
    server.run(feeds)
    pages = [p for owned in server.owned for p in owned]
    assert len(pages) == 4 and pages != sorted(pages)  # 2 pages each, not in order
    table = server.block_table(2)
    assert (table[:, 2:] == UNUSED_SLOT).all()
    with pytest.raises(UserError, match="pages no sequence owns"):
        CacheServer(_Scribbler(OnnxRuntimeRunner(tiny_paged)), spec, seed=0).run(feeds)


# ---- whole exports --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,kw", [
    ("tiny", dict(cache="paged", page_size=16, dtype="float16")),
    ("tiny", dict(kv_cache_dtype="fp8", absorb="runtime", io="tokens")),
    ("tiny-moe", dict(cache="paged", page_size=16, kv_cache_dtype="fp8")),
    ("tiny-moe", dict(cache="paged", page_size=64, kv_cache_dtype="fp8", dtype="float16", quant="fp8")),
])
def test_validate_passes_on_paged_and_fp8_cache_exports(tmp_path, preset, kw):
    path = export_onnx(ModelSpec(load_preset(preset), max_seq_len=96, **kw), tmp_path / "m.onnx")
    report = validate_onnx(path, Scenario(batch=3, prefill_len=18, steps=6))
    assert report.passed, report.to_dict()
    if kw.get("kv_cache_dtype") == "fp8":
        assert any(c.name.endswith(" c_kv") for c in report.steps[0].comparisons)
        assert report.quantization_error  # the error against the unquantized model, reported


def test_graph_inputs_are_the_contracts(tiny_paged):
    header = onnx.load(str(tiny_paged), load_external_data=False)
    names = [i.name for i in header.graph.input]
    assert names == ModelSpec(load_preset("tiny"), max_seq_len=64, cache="paged", page_size=16).graph_io_names()[0]
    assert names[2] == contract.BLOCK_TABLE and names[3] == contract.past_pages_name(0)
    meta = {p.key: p.value for p in header.metadata_props}
    assert meta[contract.META_CONTRACT_VERSION] == str(contract.CACHE_CONTRACT_VERSION)
    assert meta[contract.META_PAGE_SIZE] == "16"


def test_bad_cache_options_get_one_message(tmp_path, tiny_paged):
    assert_one_message(run("export", "--preset", "tiny", "--cache", "paged", "--page-size", "3", "-o",
                           tmp_path / "m.onnx"), "--page-size 3: expected a power of two")
    assert_one_message(run("export", "--preset", "tiny", "--page-size", "16", "-o", tmp_path / "m.onnx"),
                       "--page-size 16 sizes the pages of --cache paged")
    assert not (tmp_path / "m.onnx").exists()


def test_build_refuses_a_pool_past_tensorrts_limit_with_one_message(tiny_paged, tmp_path):
    """`build` takes contract-2 exports (tests/test_build_cache.py); a pages range TensorRT cannot hold is refused
    before any TensorRT work, with one message."""
    assert_one_message(run("build", "--onnx", tiny_paged, "-o", tmp_path / "m.engine", "--attention", "decomposed",
                           "--pages-range", f"1:2:{1 << 40}"), "exceeds TensorRT's 2^40 values; MAX")
    assert not (tmp_path / "m.engine").exists()


def test_profile_runs_a_paged_fp8_export(tmp_path):
    """profile --onnx on a contract-2 export: its pools and block table made once from the random caches."""
    path = export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=64, cache="paged", page_size=16,
                                 kv_cache_dtype="fp8"), tmp_path / "m.onnx")
    result = run("profile", "--onnx", path, "--batches", "1,2", "--contexts", "16,40", "-q")
    assert result.exit_code == 0, result.output
    assert "decode" in result.output and "prefill" in result.output
