"""The command line over a corpus of bad inputs (issue 11), one case each, by class:

1. outputs: bad output paths, an output equal to an input (the commits' faults are in test_faults.py);
2. NaN and inf: in configs, checkpoints, node attributes and model outputs;
3. what a file says against what it is: node attributes, metadata against the graph, data files, sidecars,
   engine/sidecar pairs;
4. every input class: checkpoints, configs, ONNX files, engines, options.

Each case asserts: a non-zero exit code, one message and no traceback, no new file at the destination and
every existing file there unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import pytest
import torch
from safetensors.torch import save_file

from mla_export.common import contract

from corpus import (RTX_BUILD, SMAX, TINY_JSON, Files, assert_refused, copy_model, data_file_of, edit_config,
                    edit_metadata, edit_node, fake_engine, fill_initializers, remove_attribute, run, sidecar_json,
                    snapshot, write_sidecar)

# ---------------------------------------------------------------------------------------------- the corpus

@dataclass(frozen=True)
class Case:
    """One bad input: `setup(directory, corpus_files)` prepares `directory` (the destination) and returns the
    command line; the command must fail with `message` (and exit `code`) and leave `directory` as it was."""

    name: str
    setup: Callable[[Path, Files], list]
    message: str
    code: int = 1


def _damaged_checkpoint(damage: Callable[[Path], None], command: str = "export"):
    """A case over a copy of the checkpoint damaged by `damage(directory)`: `export --checkpoint` (what fails
    before tracing: index, shard headers) or `validate` of a model exported from it (tensor contents)."""

    def setup(d: Path, f: Files):
        checkpoint = d / "ckpt"
        shutil.copytree(f.checkpoint, checkpoint)
        damage(checkpoint)
        if command == "export":
            return ["export", "--checkpoint", checkpoint, "--max-seq-len", SMAX, "-o", d / "out.onnx"]
        model = copy_model(f.checkpoint_onnx, d)
        edit_metadata(model, contract.META_CHECKPOINT, str(checkpoint))
        return ["validate", "--onnx", model, "--steps", 1, "--prefill-len", 2, "--batch", 1]

    return setup


def _shard(checkpoint: Path, index: int = 0) -> Path:
    return sorted(checkpoint.glob("*.safetensors"))[index]


def _index(checkpoint: Path) -> Path:
    return checkpoint / "model.safetensors.index.json"


def _edit_index(checkpoint: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(_index(checkpoint).read_text())
    result = change(data)
    _index(checkpoint).write_text(json.dumps(data if result is None else result))


def _replace_tensor(name_end: str, make: Callable[[torch.Tensor], dict]):
    """Damage: the tensor whose name ends with `name_end` replaced by `make(tensor)` ({name: tensor})."""

    def damage(checkpoint: Path):
        from safetensors.torch import load_file

        index = json.loads(_index(checkpoint).read_text())
        name = next(n for n in index["weight_map"] if n.endswith(name_end))
        shard = checkpoint / index["weight_map"][name]
        tensors = load_file(str(shard))
        new = make(tensors.pop(name))
        tensors.update({k if k != "_" else name: v for k, v in new.items()})
        save_file(tensors, str(shard))

    return damage


def _with_nan(t: torch.Tensor, value=float("nan")) -> dict:
    t = t.float().clone()
    t.view(-1)[3] = value
    return {"_": t}


def _config_case(changes: dict | str, command: str = "export"):
    def setup(d: Path, f: Files):
        path = d / "config.json"
        if isinstance(changes, str):
            path.write_text(changes)
        elif isinstance(changes, bytes):
            path.write_bytes(changes)
        else:
            data = {**TINY_JSON, **changes}
            path.write_text(json.dumps({k: v for k, v in data.items() if v is not ...}))
        if command == "export":
            return ["export", "--config", path, "--max-seq-len", SMAX, "-o", d / "out.onnx"]
        if command == "profile":
            return ["profile", "--eager", "--config", path, "--batches", 1, "--contexts", 4, "--iters", 1]
        return ["info", "--config", path]

    return setup


def _onnx_case(edit: Callable[[Path], None], command: str = "validate", source: str = "good"):
    def setup(d: Path, f: Files):
        model = copy_model(getattr(f, source), d)
        edit(model)
        if command == "validate":
            return ["validate", "--onnx", model, "--steps", 1, "--prefill-len", 2, "--batch", 1]
        if command == "build":
            return ["build", "--onnx", model, "-o", d / "m.engine", *RTX_BUILD]
        if command == "profile":
            return ["profile", "--onnx", model, "--batches", 1, "--contexts", 4, "--iters", 1, "--warmup", 0]
        return ["info", "--onnx", model]

    return setup


def _engine_case(edit: Callable[[Path], None], command: str = "validate"):
    def setup(d: Path, f: Files):
        engine = fake_engine(d, f.good)
        edit(engine)
        if command == "validate":
            return ["validate", "--engine", engine]
        return ["profile", "--engine", engine, "--batches", 1, "--contexts", 4]

    return setup


def _sidecar_edit(**changes):
    return lambda engine: write_sidecar(engine, {**sidecar_json(engine), **changes})


def _raw(top: dict, rope_scaling: dict | None = None) -> str:
    """tiny's config.json with JSON literals (NaN, Infinity, ...) at the given keys, as a file may hold them."""
    data = {**TINY_JSON, **{k: f"@{v}@" for k, v in top.items()}}
    if rope_scaling:
        data["rope_scaling"] = {**TINY_JSON["rope_scaling"], **{k: f"@{v}@" for k, v in rope_scaling.items()}}
    text = json.dumps(data)
    for value in list(top.values()) + list((rope_scaling or {}).values()):
        text = text.replace(f'"@{value}@"', value)
    return text


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _options(*args):
    """A case that is only a command line (its -o, if any, inside the destination)."""
    return lambda d, f: [a(d, f) if callable(a) else a for a in args]


def _good(d: Path, f: Files) -> Path:
    return copy_model(f.good, d)


def _out(name: str):
    return lambda d, f: d / name


def _relocate(model_path: Path, location: str) -> None:
    model = onnx.load(str(model_path), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(model_path))


def _rename_input(model_path: Path) -> None:
    model = onnx.load(str(model_path))
    old = model.graph.input[0].name
    model.graph.input[0].name = "x"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = "x"
    onnx.save(model, str(model_path))


def _huge_offsets(checkpoint: Path) -> None:
    shard = _shard(checkpoint)
    raw = shard.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, 10**12]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    shard.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


CASES = [
    # 1. Outputs: checked before any work; never equal to an input.
    Case("export -o in a missing directory", _options("export", "--preset", "tiny", "-o", _out("no/x.onnx")),
         "does not exist"),
    Case("export -o is a directory", lambda d, f: (d / "x.onnx").mkdir() or
         ["export", "--preset", "tiny", "-o", d / "x.onnx"], "is a directory"),
    Case("export -o without .onnx", _options("export", "--preset", "tiny", "-o", _out("x.txt")), "ending in .onnx"),
    Case("export -o is its --config", lambda d, f: (d / "c.onnx").write_text(json.dumps(TINY_JSON)) and
         ["export", "--config", d / "c.onnx", "-o", d / "c.onnx"], "is also --config"),
    Case("build -o is its --onnx", lambda d, f: ["build", "--onnx", _good(d, f), "-o", d / "m.onnx", *RTX_BUILD],
         "is also --onnx"),
    Case("build -o is the data file of --onnx", lambda d, f: [
        "build", "--onnx", copy_model(f.external, d), "-o", data_file_of(d / "m.onnx"), *RTX_BUILD],
         "is also the weights file of --onnx"),
    Case("build -o is a directory", lambda d, f: (d / "e.engine").mkdir() or
         ["build", "--onnx", _good(d, f), "-o", d / "e.engine", *RTX_BUILD], "is a directory"),
    Case("build -o in a missing directory", lambda d, f: [
        "build", "--onnx", _good(d, f), "-o", d / "no" / "e.engine", *RTX_BUILD], "does not exist"),
    Case("build --timing-cache is its --onnx", lambda d, f: [
        "build", "--onnx", _good(d, f), "-o", d / "e.engine", "--timing-cache", d / "m.onnx"],
         "m.onnx: is also --onnx"),
    Case("build -o's sidecar is a directory", lambda d, f: (d / "e.engine.json").mkdir() or
         ["build", "--onnx", _good(d, f), "-o", d / "e.engine", *RTX_BUILD], "-o (its sidecar)"),
    Case("validate --report is its --onnx", lambda d, f: [
        "validate", "--onnx", _good(d, f), "--report", d / "m.onnx"], "is also --onnx"),
    Case("validate --report is a directory", lambda d, f: (d / "r.json").mkdir() or
         ["validate", "--onnx", _good(d, f), "--report", d / "r.json"], "is a directory"),
    Case("validate --report in a missing directory", lambda d, f: [
        "validate", "--onnx", _good(d, f), "--report", d / "no" / "r.json"], "does not exist"),
    Case("validate --report is the engine's sidecar", lambda d, f: [
        "validate", "--engine", fake_engine(d, f.good), "--report", d / "m.engine.json"],
         "is also the sidecar of --engine"),
    Case("profile --json is its --onnx", lambda d, f: [
        "profile", "--onnx", _good(d, f), "--json", d / "m.onnx"], "is also --onnx"),
    Case("profile --json is its --csv", lambda d, f: [
        "profile", "--onnx", _good(d, f), "--json", d / "p.out", "--csv", d / "p.out"], "is also --csv"),
    Case("profile --plot in a missing directory", lambda d, f: [
        "profile", "--onnx", _good(d, f), "--plot", d / "no" / "p.png"], "does not exist"),
    Case("profile --csv is a directory", lambda d, f: (d / "p.csv").mkdir() or
         ["profile", "--onnx", _good(d, f), "--csv", d / "p.csv"], "is a directory"),

    # 2. NaN and inf never pass: refused where they enter, failed where they come out.
    Case("validate an all-NaN model", _onnx_case(lambda m: fill_initializers(m, float("nan"))), "FAIL"),
    Case("validate an all-inf model", _onnx_case(lambda m: fill_initializers(m, float("inf"))), "FAIL"),
    Case("config rope_theta NaN", _config_case(_raw({"rope_theta": "NaN"})), "rope_theta=nan"),
    Case("config rms_norm_eps Infinity", _config_case(_raw({"rms_norm_eps": "Infinity"})), "rms_norm_eps=inf"),
    Case("config rope_scaling.factor NaN", _config_case(_raw({}, {"factor": "NaN"})), "rope_scaling.factor=nan"),
    Case("config rope_scaling.beta_fast -Infinity", _config_case(_raw({}, {"beta_fast": "-Infinity"})),
         "rope_scaling.beta_fast=-inf"),
    Case("config giving an infinite softmax_scale", _config_case(
        {"rope_scaling": {**TINY_JSON["rope_scaling"], "mscale_all_dim": 1e300}}), "softmax_scale inf"),
    Case("checkpoint weight with NaN", _damaged_checkpoint(
        _replace_tensor("layers.0.mlp.up_proj.weight", _with_nan), "validate"),
         "'model.layers.0.mlp.up_proj.weight' holds 1 NaN"),
    Case("checkpoint weight with inf", _damaged_checkpoint(
        _replace_tensor("layers.0.self_attn.o_proj.weight", lambda t: _with_nan(t, float("inf"))), "validate"),
         "'model.layers.0.self_attn.o_proj.weight' holds 0 NaN and 1 infinite"),
    Case("checkpoint FP8 scale NaN", _damaged_checkpoint(
        _replace_tensor("kv_b_proj.weight_scale_inv", lambda t: {"_": torch.tensor([[float("nan")]])}), "validate"),
         "kv_b_proj.weight_scale_inv': FP8 block scales must be finite"),
    Case("checkpoint FP8 scale zero", _damaged_checkpoint(
        _replace_tensor("kv_b_proj.weight_scale_inv", lambda t: {"_": torch.tensor([[0.0]])}), "validate"),
         "value(s) <= 0"),
    Case("node attribute softmax_scale NaN", _onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "softmax_scale", float("nan"))), "softmax_scale=nan is not finite"),

    # 3. What the file says against what it is.
    Case("validate: num_heads edited", _onnx_case(lambda m: edit_node(m, contract.OP_TYPE, "num_heads", 8)),
         "attribute num_heads=8 does not match the model in its metadata (num_heads=4)"),
    Case("validate: softmax_scale edited", _onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "softmax_scale", 0.5)), "attribute softmax_scale=0.5"),
    Case("build: kv_lora_rank edited", _onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "kv_lora_rank", 16), "build"), "attribute kv_lora_rank=16"),
    Case("profile: qk_rope_head_dim edited", _onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "qk_rope_head_dim", 4), "profile"), "attribute qk_rope_head_dim=4"),
    Case("info: num_heads removed", _onnx_case(
        lambda m: remove_attribute(m, contract.OP_TYPE, "num_heads"), "info"), "lacks its INT attribute num_heads"),
    Case("build: plugin_namespace edited", _onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "plugin_namespace", b"other"), "build"),
         "plugin_namespace='other', the contract says 'mla'"),
    Case("validate: DeepseekMoE top_k edited", _onnx_case(
        lambda m: edit_node(m, contract.MOE_OP_TYPE, "top_k", 3), source="moe"), "attribute top_k=3"),
    Case("build: DeepseekMoE weight_scale edited", _onnx_case(
        lambda m: edit_node(m, contract.MOE_OP_TYPE, "weight_scale", 1.0), "build", source="moe"),
         "attribute weight_scale=1 does not match the routing"),
    Case("metadata dtype says float16", _onnx_case(lambda m: edit_metadata(m, contract.META_DTYPE, "float16")),
         "its metadata says float16"),
    Case("metadata max_seq_len says 64", _onnx_case(lambda m: edit_metadata(m, contract.META_MAX_SEQ_LEN, "64")),
         "max_seq_len=64"),
    Case("metadata io says tokens", _onnx_case(lambda m: edit_metadata(m, contract.META_IO, "tokens")),
         "not the ones its metadata (io=tokens"),
    Case("metadata hidden_size says 128", _onnx_case(lambda m: edit_config(m, hidden_size=128), "info"),
         "hidden_size=128"),
    Case("metadata config nested too deeply", _onnx_case(
        lambda m: edit_metadata(m, contract.META_CONFIG, _nested(100000))), "metadata is damaged"),
    Case("metadata seed past 64 bits", _onnx_case(lambda m: edit_metadata(m, contract.META_SEED, str(2**70))),
         "metadata is damaged"),
    Case("data file missing", _onnx_case(lambda m: data_file_of(m).unlink(), source="external"),
         "is missing from"),
    Case("data file truncated", _onnx_case(
        lambda m: data_file_of(m).write_bytes(data_file_of(m).read_bytes()[:1000]), "build", source="external"),
         "truncated, or from another export"),
    Case("data file of another export", _onnx_case(
        lambda m: data_file_of(m).write_bytes(data_file_of(m).read_bytes() + b"\0" * 4096), source="external"),
         "truncated, or from another export"),
    Case("onnx names another export's data file", _onnx_case(
        lambda m: edit_metadata(m, contract.META_DATA_FILE, "m.onnx.0badc0de.data"), source="external"),
         "are from different exports"),
    Case("weights pointing outside the directory", _onnx_case(lambda m: _relocate(m, "../escape.data"),
                                                             source="external"), "outside the model's directory"),
    Case("graph input renamed", _onnx_case(lambda m: _rename_input(m), "info"), "graph inputs"),
    Case("onnx truncated", _onnx_case(lambda m: m.write_bytes(m.read_bytes()[:5000])), "not a readable ONNX"),
    Case("onnx of random bytes", _onnx_case(lambda m: m.write_bytes(os.urandom(3000))), "m.onnx"),
    Case("onnx is a directory", lambda d, f: (d / "dir.onnx").mkdir() or ["validate", "--onnx", d / "dir.onnx"],
         "is a directory"),
    Case("sidecar is a JSON list", _engine_case(lambda e: write_sidecar(e, [1, 2])), "expected a JSON object"),
    Case("sidecar profiles is a string", _engine_case(_sidecar_edit(profiles="decode")), "field profiles is str"),
    Case("sidecar io entries malformed", _engine_case(_sidecar_edit(io=[{"name": 1}]), "profile"),
         "io is not a list"),
    Case("sidecar nested too deeply", _engine_case(lambda e: write_sidecar(e, _nested(100000))),
         "not an mla-export engine sidecar"),
    Case("sidecar of an older format", _engine_case(_sidecar_edit(format_version=2)), "version '2'"),
    Case("sidecar missing", _engine_case(lambda e: Path(str(e) + ".json").unlink()), "is missing"),
    Case("engine of another build (size)", _engine_case(lambda e: e.write_bytes(b"x" * 10)),
         "not from the same build (the engine holds 10 bytes"),
    Case("engine of another build (same size)", _engine_case(lambda e: e.write_bytes(b"\x02" * e.stat().st_size)),
         "not from the same build (the engine's sha256"),
    Case("engine is a directory", lambda d, f: (d / "x.engine").mkdir() or ["validate", "--engine", d / "x.engine"],
         "is a directory"),

    # 4. Every input class. Checkpoints:
    Case("checkpoint shard truncated", _damaged_checkpoint(
        lambda c: _shard(c).write_bytes(_shard(c).read_bytes()[:-100])), "not a readable safetensors file"),
    Case("checkpoint shard empty", _damaged_checkpoint(lambda c: _shard(c).write_bytes(b"")), "header too small"),
    Case("checkpoint shard of random bytes", _damaged_checkpoint(lambda c: _shard(c).write_bytes(os.urandom(999))),
         "not a readable safetensors file"),
    Case("checkpoint shard header claims 2**60 bytes", _damaged_checkpoint(
        lambda c: _shard(c).write_bytes(struct.pack("<Q", 2**60) + _shard(c).read_bytes()[8:])),
         "not a readable safetensors file"),
    Case("checkpoint shard header offsets past the file", _damaged_checkpoint(_huge_offsets),
         "not a readable safetensors file"),
    Case("checkpoint shard missing", _damaged_checkpoint(lambda c: _shard(c, 1).unlink()), "is missing"),
    Case("checkpoint index weight_map a list", _damaged_checkpoint(
        lambda c: _edit_index(c, lambda d: {"weight_map": list(d["weight_map"])})), "expected an object with"),
    Case("checkpoint index maps to a number", _damaged_checkpoint(
        lambda c: _edit_index(c, lambda d: d["weight_map"].update({"x": 5}))), "is not a tensor name mapped"),
    Case("checkpoint index not JSON", _damaged_checkpoint(lambda c: _index(c).write_text("{weight_map")),
         "not valid JSON"),
    Case("checkpoint index nested too deeply", _damaged_checkpoint(lambda c: _index(c).write_text(_nested(100000))),
         "nested too deeply"),
    Case("checkpoint index points outside", _damaged_checkpoint(lambda c: _edit_index(
        c, lambda d: d["weight_map"].update({"model.norm.weight": "../../outside.safetensors"}))),
         "outside the checkpoint directory"),
    Case("checkpoint index points to an absolute path", _damaged_checkpoint(lambda c: _edit_index(
        c, lambda d: d["weight_map"].update({"model.norm.weight": "/etc/passwd"}))), "outside the checkpoint"),
    Case("checkpoint int32 weight", _damaged_checkpoint(_replace_tensor(
        "layers.0.mlp.gate_proj.weight", lambda t: {"_": t.to(torch.int32)}), "validate"), "holds int32 values"),
    Case("checkpoint bool weight", _damaged_checkpoint(_replace_tensor(
        "input_layernorm.weight", lambda t: {"_": t > 1}), "validate"), "holds bool values"),
    Case("checkpoint FP8 weight 1-D", _damaged_checkpoint(_replace_tensor(
        "kv_b_proj.weight", lambda t: {"_": t.reshape(-1)}), "validate"), "FP8 weights are 2-D"),
    Case("checkpoint FP8 scale of the wrong block shape", _damaged_checkpoint(_replace_tensor(
        "kv_b_proj.weight_scale_inv", lambda t: {"_": torch.ones(2, 1)}), "validate"), "does not match weight"),
    Case("checkpoint FP8 scale of integers", _damaged_checkpoint(_replace_tensor(
        "kv_b_proj.weight_scale_inv", lambda t: {"_": torch.ones(1, 1, dtype=torch.int64)}), "validate"),
         "int64 values; FP8 block scales are floating-point"),
    # Configs:
    Case("config hidden_size as a string", _config_case({"hidden_size": "64"}), "hidden_size='64'"),
    Case("config rope_theta as a string", _config_case({"rope_theta": "10000"}), "rope_theta='10000'"),
    Case("config moe_layer_freq 0", _config_case({"n_routed_experts": 4, "num_experts_per_tok": 2,
                                                  "moe_intermediate_size": 8, "first_k_dense_replace": 1,
                                                  "moe_layer_freq": 0}, "info"), "moe_layer_freq=0"),
    Case("config nested too deeply", _config_case('{"a": ' + _nested(100000) + "}"), "nested too deeply"),
    Case("config a JSON list", _config_case("[1, 2]"), "expected a JSON object"),
    Case("config not UTF-8", _config_case(b"\xff\xfe{}"), "not valid JSON"),
    Case("config null hidden_size", _config_case({"hidden_size": None}, "info"), "hidden_size=None"),
    Case("config too large for disk", _config_case({"hidden_size": 1 << 20, "intermediate_size": 1 << 22}),
         "of disk"),
    Case("config too large for memory", _config_case({"hidden_size": 1 << 18, "intermediate_size": 1 << 20,
                                                      "vocab_size": 1 << 20}, "profile"), "GiB of memory"),
    # Options:
    Case("--max-seq-len 1", _options("export", "--preset", "tiny", "--max-seq-len", 1, "-o", _out("x.onnx")),
         "--max-seq-len 1: expected at least 2 cache rows"),
    Case("a default cache of 1 row names the config field", lambda d, f: (d / "c.json").write_text(
        json.dumps({**TINY_JSON, "max_position_embeddings": 1})) and ["export", "--config", d / "c.json", "-o",
                                                                     d / "x.onnx"],
         "config field max_position_embeddings=1: the default cache of 1 rows is too small"),
    Case("--seed past 64 bits", _options("export", "--preset", "tiny", "--seed", 2**64, "-o", _out("x.onnx")),
         "'--seed'", code=2),
    Case("validate --seed -1", lambda d, f: ["validate", "--onnx", _good(d, f), "--seed", -1], "'--seed'", code=2),
    Case("info --context -1", _options("info", "--preset", "tiny", "--context", -1), "'--context'", code=2),
    Case("profile --contexts past the model", _options("profile", "--eager", "--preset", "tiny", "--contexts",
                                                       10**8), "--contexts 100000000: the cache would need"),
    Case("validate --batch 0", lambda d, f: ["validate", "--onnx", _good(d, f), "--batch", 0], "--batch 0"),
    Case("validate --batch 10**9", lambda d, f: ["validate", "--onnx", _good(d, f), "--batch", 10**9],
         "GiB of memory"),
    Case("profile --batches 10**9", lambda d, f: ["profile", "--onnx", _good(d, f), "--batches", 10**9, "--contexts",
                                                  4], "GiB of memory"),
    Case("export --layers -1", _options("export", "--preset", "tiny", "--layers", -1, "-o", _out("x.onnx")),
         "--layers -1"),
    Case("build --batch-range 0:1:2", lambda d, f: ["build", "--onnx", _good(d, f), "-o", d / "e.engine",
                                                    "--batch-range", "0:1:2"], "--batch-range 0:1:2"),
    Case("build --batch-range 8 (one number, not a range)", lambda d, f: [
        "build", "--onnx", _good(d, f), "-o", d / "e.engine", "--batch-range", "8"], "not one number"),
    Case("build --prefill-range 8 (one number, not a range)", lambda d, f: [
        "build", "--onnx", _good(d, f), "-o", d / "e.engine", "--prefill-range", "8"], "write 8:8:8"),
    Case("build --batch (renamed --batch-range)", lambda d, f: [
        "build", "--onnx", _good(d, f), "-o", d / "e.engine", "--batch", "1:2:4"],
         "No such option '--batch'. (Did you mean one of: '--backend', '--batch-range'?)", code=2),
    Case("profile --batches a,b", lambda d, f: ["profile", "--onnx", _good(d, f), "--batches", "a,b"],
         "--batches a,b"),
    Case("profile --plot with an unknown extension", lambda d, f: [
        "profile", "--onnx", _good(d, f), "--plot", d / "p.jpg"], "expected a file name ending in .png, .svg or .pdf"),
    Case("validate --prefill-len past the cache", lambda d, f: [
        "validate", "--onnx", _good(d, f), "--prefill-len", 40], "cache holds 32 rows"),
]


def test_the_corpus_is_large():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case, corpus_files, tmp_path):
    args = case.setup(tmp_path, corpus_files)
    before = snapshot(tmp_path)
    result = run(*args)
    if case.message == "FAIL":  # a validation that fails: its report, exit code 1, nothing written
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "FAIL" in result.output and "PASS" not in result.output
        assert snapshot(tmp_path) == before
        return
    assert_refused(result, case.message, before, tmp_path, case.code)
