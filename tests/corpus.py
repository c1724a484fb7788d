"""Shared by the corpus of bad inputs (test_bad_inputs.py) and the faults (test_faults.py): running the CLI,
judging its failure (one message, no traceback, the destination unchanged, the message's own text within
two 80-column lines), the good inputs the cases damage (`make_files`), and editors of ONNX files, sidecars
and checkpoints."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import mla_export.graph.export as export_module
from mla_export.common import contract
from mla_export.ui.cli import main
from mla_export.common.errors import UserError
from mla_export.graph.export import export_onnx
from mla_export.model.hf_config import load_preset
from mla_export.model.model import MlaModel
from mla_export.model.spec import ModelSpec
from mla_export.trt import backend
from mla_export.trt.sidecar import Sidecar, bytes_sha256

ROOT = Path(__file__).resolve().parents[1]
SMAX = 32
TINY_JSON = json.loads((ROOT / "models" / "tiny.json").read_text())


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` (hidden and staging folders included) -> sha256 of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()} | \
        {str(p.relative_to(directory)) + "/": "dir" for p in sorted(directory.rglob("*")) if p.is_dir()}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("error:", "Error:"))]


def assert_one_message(result, message: str, code: int = 1):
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output, output
    assert len(error_lines(output)) == 1, output
    assert message in " ".join(output.split()), output


def assert_fits_two_lines(output: str, directory: Path, width: int = 80):
    """The error message's own text reads in two `width`-column lines: the paths under `directory` (the test's
    folder, a long one) and the name taken from it counted as three letters, as a user's short path would be."""
    message = error_lines(output)[0].replace(str(directory), "DIR").replace(directory.name, "DIR")
    assert len(message) <= 2 * width, f"{len(message)} characters: {message}"


def assert_refused(result, message: str, before: dict, directory: Path, code: int = 1):
    """One message, the exit code, and the destination exactly as it was."""
    assert_one_message(result, message, code)
    assert snapshot(directory) == before, "the destination changed"


def edit_node(path: Path, op_type: str, name: str, value) -> None:
    """Set attribute `name` of every `op_type` node of `path` (in place; external data left where it is)."""
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == op_type:
            for attr in node.attribute:
                if attr.name == name:
                    if attr.type == onnx.AttributeProto.INT:
                        attr.i = value
                    elif attr.type == onnx.AttributeProto.FLOAT:
                        attr.f = value
                    else:
                        attr.s = value
    onnx.save(model, str(path))


def remove_attribute(path: Path, op_type: str, name: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == op_type:
            keep = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend(keep)
    onnx.save(model, str(path))


def edit_metadata(path: Path, key: str, value: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
    onnx.save(model, str(path))


def edit_config(path: Path, **changes) -> None:
    model = onnx.load(str(path), load_external_data=False)
    prop = next(p for p in model.metadata_props if p.key == contract.META_CONFIG)
    prop.value = json.dumps({**json.loads(prop.value), **changes})
    onnx.save(model, str(path))


def fill_initializers(path: Path, value: float) -> None:
    """Every float32 initializer of an internal-weights model set to `value` (a model that computes NaN)."""
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            array = onnx.numpy_helper.to_array(init).copy()
            array[...] = value
            init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    onnx.save(model, str(path))


def data_file_of(path: Path) -> Path:
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return path.parent / meta[contract.META_DATA_FILE]


@dataclass
class Files:
    good: Path  # tiny, 1 layer, float32, weights inside
    external: Path  # the same with its weights in `<name>.<token>.data`
    moe: Path  # tiny-moe, 2 layers (dense, MoE)
    checkpoint: Path  # a HF checkpoint of tiny's first layer, one weight FP8
    checkpoint_onnx: Path  # exported from it


def hf_checkpoint(directory: Path, layers: int = 1) -> None:
    """tiny's first `layers` layers in DeepSeek's HF format: float32 tensors, kv_b_proj in FP8 with its block
    scale."""
    directory.mkdir()
    config = {**TINY_JSON, "num_hidden_layers": layers,
              "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}
    (directory / "config.json").write_text(json.dumps(config))
    model = MlaModel(load_preset("tiny").with_layers(layers), SMAX, with_embeddings=True)
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, param in model.state_dict().items():
        hf = name if name == "lm_head.weight" else "model." + name.replace(".q_compression.", ".")
        value = torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5
        if hf.endswith("norm.weight"):
            value = 1 + 0.1 * value
        if hf.endswith("kv_b_proj.weight"):
            tensors[hf] = value.to(torch.float8_e4m3fn)
            tensors[hf + "_scale_inv"] = torch.tensor([[0.5]])
        else:
            tensors[hf] = value
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k].contiguous() for k in keys}, str(directory / file))
        weight_map.update({k: file for k in keys})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def make_files(base: Path) -> Files:
    """The corpus's good inputs, made once per test session (conftest.py's `corpus_files`) under `base`."""
    for name in ("good", "ext", "moe", "from-ckpt"):
        (base / name).mkdir()
    spec = ModelSpec(load_preset("tiny").with_layers(1), max_seq_len=SMAX)
    good = export_onnx(spec, base / "good" / "m.onnx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
        external = export_onnx(spec, base / "ext" / "m.onnx")
    moe = export_onnx(ModelSpec(load_preset("tiny-moe").with_layers(2), max_seq_len=SMAX), base / "moe" / "m.onnx")
    checkpoint = base / "ckpt"
    hf_checkpoint(checkpoint)
    result = run("export", "--checkpoint", checkpoint, "--max-seq-len", SMAX, "-o", base / "from-ckpt" / "m.onnx")
    assert result.exit_code == 0, result.output
    return Files(good, external, moe, checkpoint, base / "from-ckpt" / "m.onnx")


def copy_model(source: Path, directory: Path, name: str = "m.onnx") -> Path:
    """`source` (and the data file it names, if any) copied into `directory` as `name`."""
    target = directory / name
    shutil.copy(source, target)
    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    if meta.get(contract.META_DATA_FILE):
        shutil.copy(source.parent / meta[contract.META_DATA_FILE], directory / meta[contract.META_DATA_FILE])
    return target


def fake_engine(directory: Path, source: Path, data: bytes = b"\x01engine" * 100) -> Path:
    """An engine file with a well-formed sidecar carrying `source`'s metadata (enough for every check that
    runs before TensorRT; executing it needs a GPU)."""
    engine = directory / "m.engine"
    engine.write_bytes(data)
    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    profiles = [{"name": name, "shapes": {"hidden_states": [[1, 1, 64]] * 3}} for name in ("decode", "prefill")]
    Sidecar(tensorrt_flavour="tensorrt", tensorrt_version="10.13.0", attention="decomposed", gpu_name=None,
            compute_capability=None, plugin_sha256=None, plugin_path=None, profiles=profiles, onnx_metadata=meta,
            engine_size=len(data), engine_sha256=bytes_sha256(data)).write(engine)
    return engine


def sidecar_json(engine: Path) -> dict:
    return json.loads((engine.parent / (engine.name + ".json")).read_text())


def write_sidecar(engine: Path, data) -> None:
    (engine.parent / (engine.name + ".json")).write_text(json.dumps(data) if not isinstance(data, str) else data)


def rtx():
    try:
        return backend.import_backend("tensorrt-rtx")
    except UserError as exc:
        pytest.skip(f"TensorRT-RTX is not installed here: {exc}")


RTX_BUILD = ("--backend", "tensorrt-rtx", "--attention", "decomposed", "--batch-range", "1:1:2", "--prefill-range",
             "2:4:8")


# ------------------------------------------------------------------------ editors of checkpoints (HF layout)

def shard(checkpoint: Path, index: int = 0) -> Path:
    return sorted(checkpoint.glob("*.safetensors"))[index]


def index_file(checkpoint: Path) -> Path:
    return checkpoint / "model.safetensors.index.json"


def edit_index(checkpoint: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(index_file(checkpoint).read_text())
    result = change(data)
    index_file(checkpoint).write_text(json.dumps(data if result is None else result))


def replace_tensor(name_end: str, make: Callable[[torch.Tensor], dict]):
    """Damage: the tensor whose name ends with `name_end` replaced by `make(tensor)` ({name: tensor}; the
    name "_" stands for the tensor's own, a missing one for its removal). New names join the index."""

    def damage(checkpoint: Path):
        from safetensors.torch import load_file

        index = json.loads(index_file(checkpoint).read_text())
        name = next(n for n in index["weight_map"] if n.endswith(name_end))
        path = checkpoint / index["weight_map"][name]
        tensors = load_file(str(path))
        new = {k if k != "_" else name: v for k, v in make(tensors.pop(name)).items()}
        tensors.update(new)
        save_file(tensors, str(path))
        if name not in new:
            del index["weight_map"][name]
        index["weight_map"].update({k: path.name for k in new})
        index_file(checkpoint).write_text(json.dumps(index))

    return damage


def add_tensors(*names: str, value: torch.Tensor | None = None):
    """Damage: tensors `names` (4x4 ones, or `value`) added to the first shard and the index."""
    return replace_tensor("model.norm.weight", lambda t: {"_": t, **{n: torch.ones(4, 4) if value is None else value
                                                                     for n in names}})


def edit_checkpoint_config(checkpoint: Path, **changes) -> None:
    path = checkpoint / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def huge_offsets(checkpoint: Path) -> None:
    path = shard(checkpoint)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, 10**12]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


# ---------------------------------------------------------------------------------------- editors of ONNX files

def relocate(model_path: Path, location: str) -> None:
    model = onnx.load(str(model_path), load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(model_path))


def rename_input(model_path: Path) -> None:
    model = onnx.load(str(model_path))
    old = model.graph.input[0].name
    model.graph.input[0].name = "x"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = "x"
    onnx.save(model, str(model_path))
