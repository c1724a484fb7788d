"""How each case of the bad-input corpus (test_bad_inputs.py) prepares its destination and command line:
`setup(directory, corpus_files)` functions over the good inputs (corpus.py's `make_files`), by input
class (checkpoints, configs, ONNX files, engines, options)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mla_export.common import contract

from corpus import (RTX_BUILD, SMAX, TINY_JSON, Files, copy_model, edit_metadata, fake_engine, sidecar_json,
                    write_sidecar)


@dataclass(frozen=True)
class Case:
    """One bad input: `setup(directory, corpus_files)` prepares `directory` (the destination) and returns the
    command line; the command must fail with `message` (and exit `code`) and leave `directory` as it was."""

    name: str
    setup: Callable[[Path, Files], list]
    message: str
    code: int = 1


def damaged_checkpoint(damage: Callable[[Path], None], command: str = "export", *options):
    """A case over a copy of the checkpoint damaged by `damage(directory)`: `export --checkpoint` (what fails
    before tracing: index, shard headers, names; with `options`, e.g. `--dtype float16`), the same with
    `--config` tiny's first layer ("export --config"), or `validate` of a model exported from it (tensor
    contents)."""

    def setup(d: Path, f: Files):
        checkpoint = d / "ckpt"
        shutil.copytree(f.checkpoint, checkpoint)
        damage(checkpoint)
        given = options
        if command == "export --config":
            (d / "c.json").write_text(json.dumps({**TINY_JSON, "num_hidden_layers": 1}))
            given = ("--config", d / "c.json")
        if command.startswith("export"):
            return ["export", "--checkpoint", checkpoint, "--max-seq-len", SMAX, *given, "-o", d / "out.onnx"]
        model = copy_model(f.checkpoint_onnx, d)
        edit_metadata(model, contract.META_CHECKPOINT, str(checkpoint))
        return ["validate", "--onnx", model, "--steps", 1, "--prefill-len", 2, "--batch", 1]

    return setup


def with_nan(t: torch.Tensor, value=float("nan")) -> dict:
    t = t.float().clone()
    t.view(-1)[3] = value
    return {"_": t}


def config_case(changes: dict | str, command: str = "export"):
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


def onnx_case(edit: Callable[[Path], None], command: str = "validate", source: str = "good"):
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


def engine_case(edit: Callable[[Path], None], command: str = "validate"):
    def setup(d: Path, f: Files):
        engine = fake_engine(d, f.good)
        edit(engine)
        if command == "validate":
            return ["validate", "--engine", engine]
        return ["profile", "--engine", engine, "--batches", 1, "--contexts", 4]

    return setup


def sidecar_edit(**changes):
    return lambda engine: write_sidecar(engine, {**sidecar_json(engine), **changes})


def raw_json(top: dict, rope_scaling: dict | None = None) -> str:
    """tiny's config.json with JSON literals (NaN, Infinity, ...) at the given keys, as a file may hold them."""
    data = {**TINY_JSON, **{k: f"@{v}@" for k, v in top.items()}}
    if rope_scaling:
        data["rope_scaling"] = {**TINY_JSON["rope_scaling"], **{k: f"@{v}@" for k, v in rope_scaling.items()}}
    text = json.dumps(data)
    for value in list(top.values()) + list((rope_scaling or {}).values()):
        text = text.replace(f'"@{value}@"', value)
    return text


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def command_line(*args):
    """A case that is only a command line (its -o, if any, inside the destination)."""
    return lambda d, f: [a(d, f) if callable(a) else a for a in args]


def good_model(d: Path, f: Files) -> Path:
    return copy_model(f.good, d)


def path_in(name: str):
    return lambda d, f: d / name


def fifo(d: Path, name: str) -> Path:
    os.mkfifo(d / name)
    return d / name


def not_utf8(d: Path, name: bytes) -> Path:
    return d / os.fsdecode(name)


DECOMPOSED = ("--backend", "tensorrt-rtx", "--attention", "decomposed")


def tokens_model(d: Path, f: Files) -> Path:
    """A copy of an `--io tokens` export of the corpus checkpoint (made once, beside the corpus's files)."""
    from corpus import run

    source = f.checkpoint.parent / "tokens" / "m.onnx"
    if not source.exists():
        source.parent.mkdir(exist_ok=True)
        result = run("export", "--checkpoint", f.checkpoint, "--io", "tokens", "--max-seq-len", SMAX, "-q",
                     "-o", source)
        assert result.exit_code == 0, result.output
    return copy_model(source, d)


def word_tokenizer(d: Path, words: int = 20, config: dict | None = None) -> Path:
    """A word-level tokenizer.json of `words` words ("w0" ...) and "<unk>" in `d` (with a
    tokenizer_config.json when `config` is given); returns the file."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"w{i}": i + 1 for i in range(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(d / "tokenizer.json"))
    if config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d / "tokenizer.json"


def generate_case(*options, words: int = 20, config: dict | None = None, model=tokens_model):
    """`generate --onnx` of an --io tokens export with a word-level tokenizer beside it, and `options`
    (callables of (d, f) allowed)."""
    def setup(d: Path, f: Files):
        tokenizer = word_tokenizer(d, words, config)
        return ["generate", "--onnx", model(d, f), "--tokenizer", tokenizer,
                *[o(d, f) if callable(o) else o for o in options]]
    return setup
