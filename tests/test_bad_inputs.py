"""The command line over a corpus of bad inputs (issue 11), one case each, by class:

1. outputs: bad output paths, an output equal to an input (the commits' faults are in test_faults.py);
2. NaN and inf: in configs, checkpoints, node attributes and model outputs;
3. what a file says against what it is: node attributes, metadata against the graph, data files, sidecars,
   engine/sidecar pairs;
4. every input class: checkpoints, configs, ONNX files, engines, options;
5. inputs that were accepted or sent the user the wrong way (issue 29): checkpoints of another model, FP8
   of another format, weights past --dtype's range, ranges past TensorRT's limit, paths that are not what
   they are given as, names that are not UTF-8, free-text config fields of the wrong type (and, as tests
   of their own, the known checkpoint extras, size units, the plugin library, and TensorRT as the judge
   of the range limit).

Each case asserts: a non-zero exit code, one message and no traceback, the message's own text within two
80-column lines, no new file at the destination and every existing file there unchanged. How each case
prepares its input is in bad_input_setups.py.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from mla_export.common import contract

from bad_input_setups import (DECOMPOSED, Case, command_line, config_case, damaged_checkpoint, engine_case, fifo,
                              generate_case, good_model, nested_json, not_utf8, onnx_case, path_in, raw_json,
                              sidecar_edit, tokens_model, with_nan)
from corpus import (RTX_BUILD, SMAX, TINY_JSON, add_tensors, assert_fits_two_lines, assert_refused, copy_model,
                    data_file_of, edit_checkpoint_config, edit_config, edit_index, edit_metadata, edit_node,
                    fake_engine, fill_initializers, huge_offsets, index_file, relocate, remove_attribute, rename_input,
                    replace_tensor, run, shard, snapshot, write_sidecar)

# ---------------------------------------------------------------------------------------------- the corpus

CASES = [
    # 1. Outputs: checked before any work; never equal to an input.
    Case("export -o in a missing directory", command_line("export", "--preset", "tiny", "-o", path_in("no/x.onnx")),
         "does not exist"),
    Case("export -o is a directory", lambda d, f: (d / "x.onnx").mkdir() or
         ["export", "--preset", "tiny", "-o", d / "x.onnx"], "is a directory"),
    Case("export -o without .onnx", command_line("export", "--preset", "tiny", "-o", path_in("x.txt")),
         "ending in .onnx"),
    Case("export -o is its --config", lambda d, f: (d / "c.onnx").write_text(json.dumps(TINY_JSON)) and
         ["export", "--config", d / "c.onnx", "-o", d / "c.onnx"], "is also --config"),
    Case("build -o is its --onnx", lambda d, f: ["build", "--onnx", good_model(d, f), "-o", d / "m.onnx", *RTX_BUILD],
         "is also --onnx"),
    Case("build -o is the data file of --onnx", lambda d, f: [
        "build", "--onnx", copy_model(f.external, d), "-o", data_file_of(d / "m.onnx"), *RTX_BUILD],
         "is also the weights file of --onnx"),
    Case("build -o is a directory", lambda d, f: (d / "e.engine").mkdir() or
         ["build", "--onnx", good_model(d, f), "-o", d / "e.engine", *RTX_BUILD], "is a directory"),
    Case("build -o in a missing directory", lambda d, f: [
        "build", "--onnx", good_model(d, f), "-o", d / "no" / "e.engine", *RTX_BUILD], "does not exist"),
    Case("build --timing-cache is its --onnx", lambda d, f: [
        "build", "--onnx", good_model(d, f), "-o", d / "e.engine", "--timing-cache", d / "m.onnx"],
         "m.onnx: is also --onnx"),
    Case("build -o's sidecar is a directory", lambda d, f: (d / "e.engine.json").mkdir() or
         ["build", "--onnx", good_model(d, f), "-o", d / "e.engine", *RTX_BUILD], "-o (its sidecar)"),
    Case("validate --report is its --onnx", lambda d, f: [
        "validate", "--onnx", good_model(d, f), "--report", d / "m.onnx"], "is also --onnx"),
    Case("validate --report is a directory", lambda d, f: (d / "r.json").mkdir() or
         ["validate", "--onnx", good_model(d, f), "--report", d / "r.json"], "is a directory"),
    Case("validate --report in a missing directory", lambda d, f: [
        "validate", "--onnx", good_model(d, f), "--report", d / "no" / "r.json"], "does not exist"),
    Case("validate --report is the engine's sidecar", lambda d, f: [
        "validate", "--engine", fake_engine(d, f.good), "--report", d / "m.engine.json"],
         "is also the sidecar of --engine"),
    Case("profile --json is its --onnx", lambda d, f: [
        "profile", "--onnx", good_model(d, f), "--json", d / "m.onnx"], "is also --onnx"),
    Case("profile --json is its --csv", lambda d, f: [
        "profile", "--onnx", good_model(d, f), "--json", d / "p.out", "--csv", d / "p.out"], "is also --csv"),
    Case("profile --plot in a missing directory", lambda d, f: [
        "profile", "--onnx", good_model(d, f), "--plot", d / "no" / "p.png"], "does not exist"),
    Case("profile --csv is a directory", lambda d, f: (d / "p.csv").mkdir() or
         ["profile", "--onnx", good_model(d, f), "--csv", d / "p.csv"], "is a directory"),

    # 2. NaN and inf never pass: refused where they enter, failed where they come out.
    Case("validate an all-NaN model", onnx_case(lambda m: fill_initializers(m, float("nan"))), "FAIL"),
    Case("validate an all-inf model", onnx_case(lambda m: fill_initializers(m, float("inf"))), "FAIL"),
    Case("config rope_theta NaN", config_case(raw_json({"rope_theta": "NaN"})), "rope_theta=nan"),
    Case("config rms_norm_eps Infinity", config_case(raw_json({"rms_norm_eps": "Infinity"})), "rms_norm_eps=inf"),
    Case("config rope_scaling.factor NaN", config_case(raw_json({}, {"factor": "NaN"})), "rope_scaling.factor=nan"),
    Case("config rope_scaling.beta_fast -Infinity", config_case(raw_json({}, {"beta_fast": "-Infinity"})),
         "rope_scaling.beta_fast=-inf"),
    Case("config giving an infinite softmax_scale", config_case(
        {"rope_scaling": {**TINY_JSON["rope_scaling"], "mscale_all_dim": 1e300}}), "softmax_scale inf"),
    Case("checkpoint weight with NaN", damaged_checkpoint(
        replace_tensor("layers.0.mlp.up_proj.weight", with_nan), "validate"),
         "'model.layers.0.mlp.up_proj.weight' holds 1 NaN"),
    Case("checkpoint weight with inf", damaged_checkpoint(
        replace_tensor("layers.0.self_attn.o_proj.weight", lambda t: with_nan(t, float("inf"))), "validate"),
         "'model.layers.0.self_attn.o_proj.weight' holds 1 infinite value(s)"),
    Case("checkpoint FP8 scale NaN", damaged_checkpoint(
        replace_tensor("kv_b_proj.weight_scale_inv", lambda t: {"_": torch.tensor([[float("nan")]])}), "validate"),
         "kv_b_proj.weight_scale_inv' holds 1 NaN value(s), first at (0, 0); scales must be finite and > 0"),
    Case("checkpoint FP8 scale zero", damaged_checkpoint(
        replace_tensor("kv_b_proj.weight_scale_inv", lambda t: {"_": torch.tensor([[0.0]])}), "validate"),
         "value(s) <= 0"),
    Case("node attribute softmax_scale NaN", onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "softmax_scale", float("nan"))), "softmax_scale=nan is not finite"),

    # 3. What the file says against what it is.
    Case("validate: num_heads edited", onnx_case(lambda m: edit_node(m, contract.OP_TYPE, "num_heads", 8)),
         "MlaAttention node node_mla_attention__1: num_heads=8, its metadata gives 4"),
    Case("validate: softmax_scale edited", onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "softmax_scale", 0.5)),
         ": softmax_scale=0.5, its metadata gives 0.29"),
    Case("build: kv_lora_rank edited", onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "kv_lora_rank", 16), "build"),
         ": kv_lora_rank=16, its metadata gives 32"),
    Case("profile: qk_rope_head_dim edited", onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "qk_rope_head_dim", 4), "profile"),
         ": qk_rope_head_dim=4, its metadata gives 8"),
    Case("info: num_heads removed", onnx_case(
        lambda m: remove_attribute(m, contract.OP_TYPE, "num_heads"), "info"), "lacks its INT attribute num_heads"),
    Case("build: plugin_namespace edited", onnx_case(
        lambda m: edit_node(m, contract.OP_TYPE, "plugin_namespace", b"other"), "build"),
         "plugin_namespace='other', the contract says 'mla'; edited since export: re-export it"),
    Case("validate: DeepseekMoE top_k edited", onnx_case(
        lambda m: edit_node(m, contract.MOE_OP_TYPE, "top_k", 3), source="moe"),
         "DeepseekMoE node node_deepseek_moe: top_k=3, its config's routing gives 2"),
    Case("validate: DeepseekMoE first_expert past the experts", onnx_case(
        lambda m: edit_node(m, contract.MOE_OP_TYPE, "first_expert", 5), source="moe"),
         "DeepseekMoE node node_deepseek_moe: experts 5..12, not in the 8 routed"),
    Case("info: DeepseekMoE first_expert removed", onnx_case(
        lambda m: remove_attribute(m, contract.MOE_OP_TYPE, "first_expert"), "info", source="moe"),
         "lacks its INT attribute first_expert"),
    Case("build: DeepseekMoE weight_scale edited", onnx_case(
        lambda m: edit_node(m, contract.MOE_OP_TYPE, "weight_scale", 1.0), "build", source="moe"),
         "weight_scale=1, its config's routing gives 2.5"),
    Case("metadata dtype says float16", onnx_case(lambda m: edit_metadata(m, contract.META_DTYPE, "float16")),
         "graph tensor hidden_states is float32, its metadata says float16 (dtype=float16)"),
    Case("metadata max_seq_len says 64", onnx_case(lambda m: edit_metadata(m, contract.META_MAX_SEQ_LEN, "64")),
         "past_latent_cache.0 is [?, 32, 40], its metadata says [?, 64, 40] (max_seq_len=64)"),
    Case("metadata io says tokens", onnx_case(lambda m: edit_metadata(m, contract.META_IO, "tokens")),
         "graph input 0 is 'hidden_states', its metadata (io=tokens, 1 layers) says 'input_ids'"),
    Case("metadata hidden_size says 128", onnx_case(lambda m: edit_config(m, hidden_size=128), "info"),
         "hidden_states is [?, ?, 64], its metadata says [?, ?, 128] (hidden_size=128)"),
    Case("metadata config nested too deeply", onnx_case(
        lambda m: edit_metadata(m, contract.META_CONFIG, nested_json(100000))), "metadata is damaged"),
    Case("metadata seed past 64 bits", onnx_case(lambda m: edit_metadata(m, contract.META_SEED, str(2**70))),
         "metadata is damaged"),
    Case("data file missing", onnx_case(lambda m: data_file_of(m).unlink(), source="external"),
         "is missing from"),
    Case("data file truncated", onnx_case(
        lambda m: data_file_of(m).write_bytes(data_file_of(m).read_bytes()[:1000]), "build", source="external"),
         "(truncated, or another export's): copy it again"),
    Case("data file of another export", onnx_case(
        lambda m: data_file_of(m).write_bytes(data_file_of(m).read_bytes() + b"\0" * 4096), source="external"),
         "(truncated, or another export's): copy it again"),
    Case("onnx names another export's data file", onnx_case(
        lambda m: edit_metadata(m, contract.META_DATA_FILE, "m.onnx.0badc0de.data"), source="external"),
         "files of different exports; copy both again"),
    Case("weights pointing outside the directory", onnx_case(lambda m: relocate(m, "../escape.data"),
                                                             source="external"), "outside the model's directory"),
    Case("graph input renamed", onnx_case(lambda m: rename_input(m), "info"),
         "graph input 0 is 'x', its metadata (io=hidden, 1 layers) says 'hidden_states'"),
    Case("onnx truncated", onnx_case(lambda m: m.write_bytes(m.read_bytes()[:5000])), "not a readable ONNX"),
    Case("onnx of random bytes", onnx_case(lambda m: m.write_bytes(os.urandom(3000))), "m.onnx"),
    Case("onnx is a directory", lambda d, f: (d / "dir.onnx").mkdir() or ["validate", "--onnx", d / "dir.onnx"],
         "is a directory"),
    Case("sidecar is a JSON list", engine_case(lambda e: write_sidecar(e, [1, 2])), "expected a JSON object"),
    Case("sidecar profiles is a string", engine_case(sidecar_edit(profiles="decode")), "field profiles is str"),
    Case("sidecar io entries malformed", engine_case(sidecar_edit(io=[{"name": 1}]), "profile"),
         "io is not a list"),
    Case("sidecar nested too deeply", engine_case(lambda e: write_sidecar(e, nested_json(100000))),
         "not an mla-export engine sidecar"),
    Case("sidecar of an older format", engine_case(sidecar_edit(format_version=2)), "version '2'"),
    Case("sidecar missing", engine_case(lambda e: Path(str(e) + ".json").unlink()), "is missing"),
    Case("engine of another build (size)", engine_case(lambda e: e.write_bytes(b"x" * 10)),
         "are not from the same build (it holds 10 bytes, the sidecar says 700)"),
    Case("engine of another build (same size)", engine_case(lambda e: e.write_bytes(b"\x02" * e.stat().st_size)),
         "are not from the same build (sha256 "),
    Case("engine is a directory", lambda d, f: (d / "x.engine").mkdir() or ["validate", "--engine", d / "x.engine"],
         "is a directory"),

    # 4. Every input class. Checkpoints:
    Case("checkpoint shard truncated", damaged_checkpoint(
        lambda c: shard(c).write_bytes(shard(c).read_bytes()[:-100])), "not a readable safetensors file"),
    Case("checkpoint shard empty", damaged_checkpoint(lambda c: shard(c).write_bytes(b"")), "header too small"),
    Case("checkpoint shard of random bytes", damaged_checkpoint(lambda c: shard(c).write_bytes(os.urandom(999))),
         "not a readable safetensors file"),
    Case("checkpoint shard header claims 2**60 bytes", damaged_checkpoint(
        lambda c: shard(c).write_bytes(struct.pack("<Q", 2**60) + shard(c).read_bytes()[8:])),
         "not a readable safetensors file"),
    Case("checkpoint shard header offsets past the file", damaged_checkpoint(huge_offsets),
         "not a readable safetensors file"),
    Case("checkpoint shard missing", damaged_checkpoint(lambda c: shard(c, 1).unlink()), "is missing"),
    Case("checkpoint index weight_map a list", damaged_checkpoint(
        lambda c: edit_index(c, lambda d: {"weight_map": list(d["weight_map"])})), "expected an object with"),
    Case("checkpoint index maps to a number", damaged_checkpoint(
        lambda c: edit_index(c, lambda d: d["weight_map"].update({"x": 5}))), "is not a tensor name mapped"),
    Case("checkpoint index not JSON", damaged_checkpoint(lambda c: index_file(c).write_text("{weight_map")),
         "not valid JSON"),
    Case("checkpoint index nested too deeply", damaged_checkpoint(
        lambda c: index_file(c).write_text(nested_json(100000))),
         "nested too deeply"),
    Case("checkpoint index points outside", damaged_checkpoint(lambda c: edit_index(
        c, lambda d: d["weight_map"].update({"model.norm.weight": "../../outside.safetensors"}))),
         "outside the checkpoint directory"),
    Case("checkpoint index points to an absolute path", damaged_checkpoint(lambda c: edit_index(
        c, lambda d: d["weight_map"].update({"model.norm.weight": "/etc/passwd"}))), "outside the checkpoint"),
    Case("checkpoint int32 weight", damaged_checkpoint(replace_tensor(
        "layers.0.mlp.gate_proj.weight", lambda t: {"_": t.to(torch.int32)}), "validate"), "holds int32 values"),
    Case("checkpoint bool weight", damaged_checkpoint(replace_tensor(
        "input_layernorm.weight", lambda t: {"_": t > 1}), "validate"), "holds bool values"),
    Case("checkpoint FP8 weight 1-D", damaged_checkpoint(replace_tensor(
        "kv_b_proj.weight", lambda t: {"_": t.reshape(-1)}), "validate"), "FP8 weights are 2-D"),
    Case("checkpoint FP8 scale of the wrong block shape", damaged_checkpoint(replace_tensor(
        "kv_b_proj.weight_scale_inv", lambda t: {"_": torch.ones(2, 1)}), "validate"),
         "of shape (2, 1) does not match weight (128, 32): expected (1, 1), 128x128 blocks"),
    Case("checkpoint FP8 scale of integers", damaged_checkpoint(replace_tensor(
        "kv_b_proj.weight_scale_inv", lambda t: {"_": torch.ones(1, 1, dtype=torch.int64)}), "validate"),
         "int64 values; FP8 block scales are floating-point"),
    # Configs:
    Case("config hidden_size as a string", config_case({"hidden_size": "64"}), "hidden_size='64'"),
    Case("config rope_theta as a string", config_case({"rope_theta": "10000"}), "rope_theta='10000'"),
    Case("config moe_layer_freq 0", config_case({"n_routed_experts": 4, "num_experts_per_tok": 2,
                                                  "moe_intermediate_size": 8, "first_k_dense_replace": 1,
                                                  "moe_layer_freq": 0}, "info"), "moe_layer_freq=0"),
    Case("config nested too deeply", config_case('{"a": ' + nested_json(100000) + "}"), "nested too deeply"),
    Case("config a JSON list", config_case("[1, 2]"), "expected a JSON object"),
    Case("config not UTF-8", config_case(b"\xff\xfe{}"), "not valid JSON"),
    Case("config null hidden_size", config_case({"hidden_size": None}, "info"), "hidden_size=None"),
    Case("config too large for disk", config_case({"hidden_size": 1 << 20, "intermediate_size": 1 << 22}),
         "of disk"),
    Case("config too large for memory", config_case({"hidden_size": 1 << 18, "intermediate_size": 1 << 20,
                                                      "vocab_size": 1 << 20}, "profile"), "GiB of memory"),
    # Options:
    Case("--max-seq-len 1", command_line("export", "--preset", "tiny", "--max-seq-len", 1, "-o", path_in("x.onnx")),
         "--max-seq-len 1: expected at least 2 cache rows"),
    Case("a default cache of 1 row names the config field", lambda d, f: (d / "c.json").write_text(
        json.dumps({**TINY_JSON, "max_position_embeddings": 1})) and ["export", "--config", d / "c.json", "-o",
                                                                     d / "x.onnx"],
         "config field max_position_embeddings=1: the default cache of 1 rows is too small"),
    Case("--seed past 64 bits", command_line("export", "--preset", "tiny", "--seed", 2**64, "-o", path_in("x.onnx")),
         "'--seed'", code=2),
    Case("validate --seed -1", lambda d, f: ["validate", "--onnx", good_model(d, f), "--seed", -1], "'--seed'", code=2),
    Case("info --context -1", command_line("info", "--preset", "tiny", "--context", -1), "'--context'", code=2),
    Case("info --tp 0", command_line("info", "--preset", "tiny", "--tp", 0), "--tp 0: expected a power of two"),
    Case("info --tp 3 (not a power of two)", command_line("info", "--preset", "tiny", "--tp", 3),
         "--tp 3: expected a power of two from 1 to 64"),
    Case("info --tp past MAX_TP", command_line("info", "--preset", "deepseek-v3", "--tp", 128),
         "--tp 128: expected a power of two from 1 to 64"),
    Case("info --tp 8 of 4 heads", command_line("info", "--preset", "tiny", "--tp", 8),
         "tiny's num_attention_heads=4 is not a multiple of 8 (each rank takes 1/8); pass --tp 1, 2, 4"),
    Case("info --tp 4 of 6 routed experts", lambda d, f: (d / "c.json").write_text(json.dumps(
        {**json.loads((Path(__file__).parents[1] / "models" / "tiny-moe.json").read_text()), "n_routed_experts": 6,
         "n_group": 1, "topk_group": 1})) and ["info", "--config", d / "c.json", "--tp", 4],
         "n_routed_experts=6 is not a multiple of 4 (each rank takes 1/4); pass --tp 1, 2"),
    Case("info --tp 2 of vocab 129", lambda d, f: (d / "c.json").write_text(json.dumps(
        {**TINY_JSON, "vocab_size": 129})) and ["info", "--config", d / "c.json", "--tp", 2],
         "vocab_size=129 is not a multiple of 2 (each rank takes 1/2); pass --tp 1"),
    Case("info --io without --tp", command_line("info", "--preset", "tiny", "--io", "hidden"),
         "--io hidden chooses the ends of --tp's per-rank figures: pass it with --tp N"),
    Case("info --memory 0", command_line("info", "--preset", "tiny", "--memory", 0),
         "--memory 0: expected a size above zero, such as 80GiB or 500MiB"),
    Case("info --memory abc", command_line("info", "--preset", "tiny", "--memory", "abc"),
         "--memory abc: expected a size such as 512M or 4G"),
    Case("info --page-size 3", command_line("info", "--preset", "tiny", "--cache", "paged", "--page-size", 3),
         "--page-size 3: expected a power of two from 1 to 4096"),
    Case("info --page-size 0", command_line("info", "--preset", "tiny", "--memory", "1G", "--page-size", 0),
         "--page-size 0: expected a power of two from 1 to 4096"),
    Case("info --page-size past 4096", command_line("info", "--preset", "tiny", "--cache", "paged", "--page-size",
                                                    8192), "--page-size 8192: expected a power of two"),
    Case("info --page-size without paged rows", command_line("info", "--preset", "tiny", "--page-size", 16),
         "--page-size 16 sizes the pages of --cache paged"),
    Case("info --dtype fp8 --kv-cache-dtype fp8", command_line("info", "--preset", "tiny", "--dtype", "fp8",
                                                               "--kv-cache-dtype", "fp8"),
         "--dtype fp8 counts every cached value as one byte"),
    Case("info --kv-cache-dtype fp16", command_line("info", "--preset", "tiny", "--kv-cache-dtype", "fp16"),
         "'--kv-cache-dtype'", code=2),
    Case("profile --contexts past the model", command_line("profile", "--eager", "--preset", "tiny", "--contexts",
                                                       10**8), "--contexts 100000000: the cache would need"),
    Case("validate --batch 0", lambda d, f: ["validate", "--onnx", good_model(d, f), "--batch", 0], "--batch 0"),
    Case("validate --batch 10**9", lambda d, f: ["validate", "--onnx", good_model(d, f), "--batch", 10**9],
         "GiB of memory"),
    Case("profile --batches 10**9", lambda d, f: ["profile", "--onnx", good_model(d, f), "--batches", 10**9,
                                                  "--contexts",
                                                  4], "GiB of memory"),
    Case("export --layers -1", command_line("export", "--preset", "tiny", "--layers", -1, "-o", path_in("x.onnx")),
         "--layers -1"),
    Case("build --batch-range 0:1:2", lambda d, f: ["build", "--onnx", good_model(d, f), "-o", d / "e.engine",
                                                    "--batch-range", "0:1:2"], "--batch-range 0:1:2"),
    Case("build --batch-range 8 (one number, not a range)", lambda d, f: [
        "build", "--onnx", good_model(d, f), "-o", d / "e.engine", "--batch-range", "8"], "not one number"),
    Case("build --prefill-range 8 (one number, not a range)", lambda d, f: [
        "build", "--onnx", good_model(d, f), "-o", d / "e.engine", "--prefill-range", "8"], "write 8:8:8"),
    Case("build --batch (renamed --batch-range)", lambda d, f: [
        "build", "--onnx", good_model(d, f), "-o", d / "e.engine", "--batch", "1:2:4"],
         "No such option '--batch'. (Did you mean one of: '--backend', '--batch-range'?)", code=2),
    Case("profile --batches a,b", lambda d, f: ["profile", "--onnx", good_model(d, f), "--batches", "a,b"],
         "--batches a,b"),
    Case("profile --plot with an unknown extension", lambda d, f: [
        "profile", "--onnx", good_model(d, f), "--plot", d / "p.jpg"],
         "expected a file name ending in .png, .svg or .pdf"),
    Case("validate --prefill-len past the cache", lambda d, f: [
        "validate", "--onnx", good_model(d, f), "--prefill-len", 40], "cache holds 32 rows"),
]


CASES += [
    # 5. Inputs that were accepted or sent the user the wrong way (issue 29), a class each.
    # A checkpoint that does not match the model is refused, naming the tensor:
    Case("checkpoint with a stray self_attn tensor", damaged_checkpoint(add_tensors(
        "model.layers.0.self_attn.foo.weight")),
         "tensor model.layers.0.self_attn.foo.weight is not in the config's model"),
    Case("checkpoint with an unrelated top-level tensor", damaged_checkpoint(add_tensors(
        "transformer.h.0.attn.c_attn.weight")), "tensor transformer.h.0.attn.c_attn.weight is not in"),
    Case("checkpoint with experts in a dense layer", damaged_checkpoint(add_tensors(
        "model.layers.0.mlp.experts.0.up_proj.weight", "model.layers.0.mlp.gate.weight")),
         "tensor model.layers.0.mlp.experts.0.up_proj.weight (+1 more) is not in"),
    Case("checkpoint with layers past its MTP layer", damaged_checkpoint(lambda c: (
        edit_checkpoint_config(c, num_nextn_predict_layers=1),
        add_tensors("model.layers.1.eh_proj.weight", "model.layers.2.eh_proj.weight")(c))),
         "tensor model.layers.2.eh_proj.weight is not in the config's model"),
    Case("checkpoint of another config (--config)", damaged_checkpoint(add_tensors(
        "model.layers.0.self_attn.q_proj.weight"), "export --config"),
         "q_proj.weight is not in the config's model; the checkpoint is of another model"),
    # FP8 in a format other than DeepSeek's, refused by name:
    Case("checkpoint FP8 e5m2 weight", damaged_checkpoint(replace_tensor(
        "kv_b_proj.weight", lambda t: {"_": t.float().to(torch.float8_e5m2)})),
         "'model.layers.0.self_attn.kv_b_proj.weight' is F8_E5M2, not DeepSeek's FP8 (E4M3, block scales)"),
    Case("checkpoint FP8 e4m3 without its scale", damaged_checkpoint(replace_tensor(
        "kv_b_proj.weight_scale_inv", lambda t: {})),
         "is F8_E4M3 without DeepSeek's weight_scale_inv: convert the checkpoint to bfloat16"),
    Case("checkpoint config.json says e5m2 (--config)", damaged_checkpoint(lambda c: edit_checkpoint_config(
        c, quantization_config={"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}),
        "export --config"), "config.json field quantization_config.fmt='e5m2': not implemented"),
    # Weights that are not finite after the cast to --dtype:
    Case("checkpoint norm weight 1e30 exported as float16", damaged_checkpoint(replace_tensor(
        "layers.0.input_layernorm.weight", lambda t: with_nan(t, 1e30)), "export", "--dtype", "float16"),
         "weight model.layers.0.input_layernorm.weight holds 1e+30, past float16's largest value"),
    # Ranges past what TensorRT can build (checked before TensorRT is imported):
    Case("build --batch-range past TensorRT's 2^40 values", lambda d, f: [
        "build", "--onnx", good_model(d, f), "-o", d / "e.engine", *DECOMPOSED, "--batch-range", "1:1:2000000000",
        "--prefill-range", "2:4:8"], "past_latent_cache.0 [2000000000, 32, 40] exceeds TensorRT's 2^40 values; MAX"),
    Case("build --prefill-range past TensorRT's 2^40 values", lambda d, f: [
        "build", "--onnx", good_model(d, f), "-o", d / "e.engine", *DECOMPOSED, "--batch-range", "1:1:500000000",
        "--prefill-range", "2:4:32"], "--prefill-range 2:4:32: tensor"),
    # Paths say what they are:
    Case("validate --onnx /dev/null", command_line("validate", "--onnx", "/dev/null"), "/dev/null: not a regular file"),
    Case("info --config a FIFO", lambda d, f: ["info", "--config", fifo(d, "c.json")], "c.json: not a regular file"),
    Case("validate --engine a FIFO", lambda d, f: ["validate", "--engine", fifo(d, "m.engine")],
         "m.engine: not a regular file"),
    Case("export --checkpoint a file", lambda d, f: (d / "ckpt").write_text("{}") and [
        "export", "--checkpoint", d / "ckpt", "-o", d / "x.onnx"], "ckpt: is a file, expected a directory"),
    Case("profile --csv inside a file", lambda d, f: (d / "f").write_text("x") and [
        "profile", "--onnx", good_model(d, f), "--csv", d / "f" / "p.csv"], "f is a file, expected a directory"),
    Case("export -o not UTF-8", lambda d, f: [
        "export", "--preset", "tiny", "-o", not_utf8(d, b"\xff.onnx")], "\\xff.onnx: the path is not valid UTF-8"),
    Case("validate --onnx not UTF-8", lambda d, f: [
        "validate", "--onnx", copy_model(f.good, d, os.fsdecode(b"\xfd.onnx"))],
         "\\xfd.onnx: the path is not valid UTF-8; rename it"),
    Case("validate --json not UTF-8", lambda d, f: [
        "validate", "--onnx", good_model(d, f), "--json", not_utf8(d, b"r\xfe.json")], "the path is not valid UTF-8"),
    # Free-text config fields of the wrong type:
    Case("config mla_export_name a number", config_case({"mla_export_name": 5}, "info"), "mla_export_name=5"),
    Case("config mla_export_name on two lines", config_case({"mla_export_name": "a\nb"}), "mla_export_name='a\\nb'"),
    # generate (issue 25): the model, the tokenizer, the prompts, the sampling options.
    Case("generate an --io hidden export", generate_case("--prompt", "w1", model=good_model),
         "exported with --io hidden (hidden states in and out, no logits); generate"),
    Case("generate an --io hidden engine", lambda d, f: [
        "generate", "--engine", fake_engine(d, f.good), "--prompt", "w1"], "re-export it with --io tokens"),
    Case("generate from a checkpoint without a tokenizer", lambda d, f: [
        "generate", "--onnx", tokens_model(d, f), "--prompt", "w1"], "no tokenizer.json there; pass --tokenizer"),
    Case("generate --eager of random weights, no tokenizer", command_line(
        "generate", "--eager", "--preset", "tiny", "--prompt", "w1"), "no tokenizer: the model was not exported"),
    Case("generate --tokenizer a damaged file", lambda d, f: (d / "tokenizer.json").write_text("{\"model\": 3}") and [
        "generate", "--onnx", tokens_model(d, f), "--tokenizer", d / "tokenizer.json", "--prompt", "w1"],
         "not a tokenizer file the `tokenizers` package reads"),
    Case("generate prompt longer than the cache", generate_case("--prompt", " ".join(["w1"] * 40)),
         "prompt 1: 40 tokens + --max-new-tokens 64 need 103 cache rows, the model has 32"),
    Case("generate --max-new-tokens past the cache", generate_case("--prompt", "w1 w2", "--max-new-tokens", "40"),
         "2 tokens + --max-new-tokens 40 need 41 cache rows"),
    Case("generate tokenizer ids past the vocabulary", generate_case("--prompt", "w200", words=300),
         "outside the model's vocabulary of 128: the tokenizer is not this model's"),
    Case("generate --top-p 0", generate_case("--prompt", "w1", "--top-p", "0"), "--top-p 0.0: expected a number in (0, 1]"),
    Case("generate --top-p 1.5", generate_case("--prompt", "w1", "--top-p", "1.5"), "--top-p 1.5: expected"),
    Case("generate --temperature -1", generate_case("--prompt", "w1", "--temperature", "-1"),
         "--temperature -1.0: expected a finite number >= 0"),
    Case("generate --top-k -1", generate_case("--prompt", "w1", "--top-k", "-1"), "--top-k -1: expected"),
    Case("generate --max-new-tokens 0", generate_case("--prompt", "w1", "--max-new-tokens", "0"),
         "--max-new-tokens 0: expected at least 1"),
    Case("generate without a prompt", generate_case(), "no prompt: pass --prompt TEXT"),
    Case("generate an empty prompt", generate_case("--prompt", ""), "prompt 1 encodes to no tokens"),
    Case("generate --prompts-file /dev/null", generate_case("--prompts-file", "/dev/null"), "not a regular file"),
    Case("generate --onnx and --eager", generate_case("--prompt", "w1", "--eager"), "pass exactly one of --onnx"),
    Case("generate --absorb with --onnx", generate_case("--prompt", "w1", "--absorb", "runtime"),
         "--absorb, --quant and --dtype choose the --eager model's form"),
    Case("generate --chat without a chat template", generate_case("--prompt", "w1", "--chat", config={}),
         "has no chat_template; drop --chat"),
    Case("generate --json is its --onnx", generate_case("--prompt", "w1", "--json", lambda d, f: d / "m.onnx"),
         "is also --onnx"),
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
    assert_fits_two_lines(result.output, tmp_path)



# ------------------------------------------------------------- issue 29's classes that need more than a case

def test_known_checkpoint_extras_are_named_as_skipped(corpus_files, tmp_path):
    """DeepSeek's MTP layer (`model.layers.{num_hidden_layers}.*`) and RoPE's inv_freq buffers are not the
    model's, but known: the export names them as skipped in one line and writes the same weights; the layers
    past `--layers N` are the model's own and pass without a word."""
    from corpus import hf_checkpoint

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(corpus_files.checkpoint, checkpoint)
    edit_checkpoint_config(checkpoint, num_nextn_predict_layers=1)
    add_tensors("model.layers.1.eh_proj.weight", "model.layers.1.enorm.weight",
                "model.layers.1.self_attn.q_a_proj.weight", "model.layers.0.self_attn.rotary_emb.inv_freq")(checkpoint)
    result = run("export", "--checkpoint", checkpoint, "--max-seq-len", SMAX, "-q", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert notes == ["checkpoint: skipped what the export does not use: model.layers.1.* (multi-token prediction, "
                     "3 tensors), *.rotary_emb.inv_freq (recomputed, 1 tensor)"], result.stderr
    assert len(notes[0]) <= 160
    plain = run("export", "--checkpoint", corpus_files.checkpoint, "--max-seq-len", SMAX, "-q", "-o",
                tmp_path / "p.onnx")
    assert plain.exit_code == 0 and "skipped" not in plain.stderr, plain.output
    assert data_bytes_of(tmp_path / "m.onnx") == data_bytes_of(tmp_path / "p.onnx")  # the extras changed nothing

    two = tmp_path / "two-layers"
    hf_checkpoint(two, layers=2)
    result = run("export", "--checkpoint", two, "--layers", 1, "--max-seq-len", SMAX, "-q", "-o", tmp_path / "l.onnx")
    assert result.exit_code == 0 and "skipped" not in result.stderr, result.output


def data_bytes_of(model: Path) -> list[bytes]:
    import onnx

    return [init.raw_data for init in onnx.load(str(model)).graph.initializer]


def test_size_estimates_pick_their_unit(corpus_files, tmp_path, monkeypatch):
    """'needs X, has Y' in the unit each size calls for: a nearly full disk (200 KiB free, the export needs
    about 350 KiB) and a small memory read in KiB and MiB, never 0.0 GiB."""
    import mla_export.model.footprint as footprint

    real = footprint.shutil.disk_usage
    monkeypatch.setattr(footprint.shutil, "disk_usage", lambda path: real(path)._replace(free=200 << 10))
    before = snapshot(tmp_path)
    result = run("export", "--preset", "tiny", "--layers", 1, "--max-seq-len", SMAX, "-o", tmp_path / "x.onnx")
    assert_refused(result, "KiB of disk in", before, tmp_path)
    assert "which has 200.0 KiB free" in result.output and "0.0 GiB" not in result.output
    monkeypatch.setattr(footprint, "available_memory", lambda: 300 << 20)
    result = run("validate", "--onnx", corpus_files.good, "--batch", 1000)
    assert_refused(result, "of memory and 300.0 MiB is available", before, tmp_path)
    assert "0.0 GiB" not in result.output
    assert_fits_two_lines(result.output, tmp_path)


def test_plugin_library_that_is_not_a_file(tmp_path, monkeypatch):
    """--plugin-lib naming a directory or a device says what it is (TensorRT stood in for: it is checked first)."""
    from types import SimpleNamespace

    import mla_export.trt.build as build_module

    fp16 = tmp_path / "h.onnx"
    assert run("export", "--preset", "tiny", "--layers", 1, "--max-seq-len", SMAX, "--dtype", "float16", "-q", "-o",
               fp16).exit_code == 0
    monkeypatch.setattr(build_module, "import_backend", lambda name: SimpleNamespace(__version__="10.99"))
    (tmp_path / "lib").mkdir()
    before = snapshot(tmp_path)
    for lib, message in ((tmp_path / "lib", "lib: is a directory, expected a file; pass libmla_plugin.so"),
                         ("/dev/null", "--plugin-lib /dev/null: not a regular file")):
        result = run("build", "--onnx", fp16, "-o", tmp_path / "e.engine", "--plugin-lib", lib)
        assert_refused(result, message, before, tmp_path)
        assert_fits_two_lines(result.output, tmp_path)


def _refused_max(result) -> int:
    """The MAX a refused range's message says fits."""
    import re

    return int(re.search(r"MAX (\d+) fits", result.output)[1])


@pytest.mark.parametrize("option, ranges", [
    ("--batch-range", ("1:1:2000000000", "2:4:8")),  # the cache, [B, Smax, 40], is the largest tensor
    ("--prefill-range", ("1:1:70000", "2:4:2048")),  # a function body's scores, [B, 4*T, Smax], are
])
def test_range_limits_agree_with_tensorrt(option, ranges, tmp_path, monkeypatch):
    """The largest MAX the refusal names builds, without TensorRT's profile warning; one more, with the check
    before the build turned off, draws that warning from TensorRT(-RTX) itself, and build refuses after it:
    TensorRT is the judge of the limit, and its warning is never the only word."""
    from corpus import rtx

    import mla_export.trt.build as build_module

    rtx()
    model = tmp_path / "m.onnx"
    assert run("export", "--preset", "tiny", "--layers", 1, "--max-seq-len", 2048, "-q", "-o", model).exit_code == 0
    batch, prefill = ranges
    args = ["build", "--onnx", model, "-o", tmp_path / "e.engine", *DECOMPOSED, "-q"]
    before = snapshot(tmp_path)
    refused = run(*args, "--batch-range", batch, "--prefill-range", prefill)
    assert_refused(refused, f"{option} {batch if option == '--batch-range' else prefill}: tensor", before, tmp_path)
    assert_fits_two_lines(refused.output, tmp_path)
    fits = _refused_max(refused)
    lo, opt, _ = (batch if option == "--batch-range" else prefill).split(":")
    at = {"--batch-range": batch, "--prefill-range": prefill}

    at[option] = f"{lo}:{opt}:{fits}"
    built = run(*args, "--batch-range", at["--batch-range"], "--prefill-range", at["--prefill-range"])
    assert built.exit_code == 0 and "not self-consistent" not in built.output, built.output

    at[option] = f"{lo}:{opt}:{fits + 1}"
    monkeypatch.setattr(build_module, "check_profile_volumes", lambda *a: None)
    before = snapshot(tmp_path)
    warned = run(*args, "--batch-range", at["--batch-range"], "--prefill-range", at["--prefill-range"])
    assert "Profile kMAX values are not self-consistent" in warned.output
    assert_refused(warned, "past its limits for tensor", before, tmp_path)
