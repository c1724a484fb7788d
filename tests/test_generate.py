"""`mla-export generate` against transformers' own `generate` on DeepSeek-V3-architecture checkpoints that
transformers saves (random weights, scaled as in test_transformers.py), with a small byte-level BPE tokenizer
the test trains with `tokenizers` on a short text and saves beside them.

Greedy decoding must give exactly transformers' token ids (`model.generate(do_sample=False)`, each prompt
alone) for 3 prompts of different lengths, run as one ragged batch and one by one: the ids are the
argmax of float32 logits of two implementations, equal unless two logits of a step fall within float32
rounding of each other (the scaled weights make the top logits of a step differ by far more).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mla_export.ui.cli import main

from test_transformers import DIMS, scale_weights
from test_transformers_moe import MOE_DIMS, ROPE

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXT = ("Multi-head latent attention caches one compressed latent vector per token instead of keys and values "
        "for every head. The query is moved into the latent space, so every head attends over the same cache. "
        "DeepSeek and Kimi models use it; the cache is small and the decode step reads it once.")
PROMPTS = ["The cache", "Every head attends over the same latent", "Kimi models use the query, so"]
NEW_TOKENS, MAX_SEQ_LEN = 32, 64
BOS, EOS = "<s>", "</s>"


def train_tokenizer(directory: Path) -> int:
    """A byte-level BPE tokenizer trained on TEXT, saved as tokenizer.json (+ tokenizer_config.json) in
    `directory`; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    template = ("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "add_bos_token": True, "chat_template": template}))
    return tokenizer.get_vocab_size()


def save_checkpoint(directory: Path, moe: bool = False, seed: int = 0):
    """A DeepSeek-V3 model (dense, or MoE with the V3 router) with the tokenizer's vocabulary, saved by
    transformers with the tokenizer beside it; returns the model."""
    vocab = train_tokenizer(directory)
    dims = dict(MOE_DIMS if moe else DIMS, vocab_size=vocab)
    router = dict(n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5) if moe else {}
    config = transformers.DeepseekV3Config(**dims, **router, q_lora_rank=48, rope_parameters=ROPE,
                                           bos_token_id=0, eos_token_id=1, pad_token_id=0)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    scale_weights(model, seed)
    model.save_pretrained(directory)
    return model


def prompt_ids(directory: Path, text: str) -> list[int]:
    """The ids transformers' tokenizer would give: BOS, then the BPE's ids."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return [tokenizer.token_to_id(BOS)] + tokenizer.encode(text).ids


@torch.no_grad()
def transformers_greedy(model, ids: list[int]) -> list[int]:
    """transformers' greedy continuation of `ids`, up to and including an EOS."""
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=1, pad_token_id=0)
    new = out[0, len(ids):].tolist()
    return new[:new.index(1) + 1] if 1 in new else new


def run_generate(args: list[str], tmp_path: Path, prompts=PROMPTS) -> dict:
    """`mla-export generate ... --json F` in process; returns the JSON."""
    out = tmp_path / f"gen{len(list(tmp_path.glob('gen*.json')))}.json"
    argv = ["generate", *args, "--max-new-tokens", str(NEW_TOKENS), "--json", str(out), "-q"]
    for p in prompts:
        argv += ["--prompt", p]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def export(directory: Path, out: Path, *extra: str) -> Path:
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(directory), "--io", "tokens", "--max-seq-len",
                                       str(MAX_SEQ_LEN), "-q", "-o", str(out), *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """(checkpoint directory, transformers' greedy ids per prompt)."""
    directory = tmp_path_factory.mktemp("v3-dense")
    model = save_checkpoint(directory)
    return directory, [transformers_greedy(model, prompt_ids(directory, p)) for p in PROMPTS]


@pytest.fixture(scope="module")
def dense_onnx(dense, tmp_path_factory):
    return export(dense[0], tmp_path_factory.mktemp("onnx") / "v3.onnx")


def check_matches(model_args: list[str], directory: Path, expected: list[list[int]], tmp_path: Path):
    """Batch of 3 and each prompt alone: prompt ids as transformers' tokenizer gives them, generated ids
    equal to transformers' greedy ones."""
    batch = run_generate(model_args, tmp_path)
    alone = [run_generate(model_args, tmp_path, [p])["sequences"][0] for p in PROMPTS]
    assert len({len(prompt_ids(directory, p)) for p in PROMPTS}) == 3  # three different lengths
    for b, prompt in enumerate(PROMPTS):
        assert batch["sequences"][b]["prompt_ids"] == prompt_ids(directory, prompt)
        assert batch["sequences"][b]["ids"] == expected[b], f"prompt {b + 1} in the batch"
        assert alone[b]["ids"] == expected[b], f"prompt {b + 1} alone"
    assert max(len(e) for e in expected) == NEW_TOKENS  # the budget was reached (not every prompt ended on EOS)
    return batch


def test_onnx_greedy_matches_transformers(dense, dense_onnx, tmp_path):
    directory, expected = dense
    batch = check_matches(["--onnx", str(dense_onnx)], directory, expected, tmp_path)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for seq in batch["sequences"]:
        assert seq["text"] == tokenizer.decode(seq["ids"], skip_special_tokens=True)
        assert seq["finish"] == ("eos" if seq["ids"][-1] == 1 else "length")
    timings = batch["timings"]
    assert timings["prefill_s"] > 0 and timings["decode_tokens_per_s"] > 0
    assert timings["decode_tokens"] == sum(len(s["ids"]) for s in batch["sequences"]) - len(PROMPTS)


def test_eager_greedy_matches_transformers(dense, tmp_path):
    directory, expected = dense
    check_matches(["--eager", "--checkpoint", str(directory)], directory, expected, tmp_path)


def test_runtime_absorbed_onnx_matches_transformers(dense, tmp_path):
    directory, expected = dense
    onnx = export(directory, tmp_path / "runtime.onnx", "--absorb", "runtime")
    check_matches(["--onnx", str(onnx)], directory, expected, tmp_path)


def test_moe_onnx_matches_transformers(tmp_path_factory, tmp_path):
    directory = tmp_path_factory.mktemp("v3-moe")
    model = save_checkpoint(directory, moe=True)
    expected = [transformers_greedy(model, prompt_ids(directory, p)) for p in PROMPTS]
    onnx = export(directory, tmp_path / "moe.onnx")
    check_matches(["--onnx", str(onnx)], directory, expected, tmp_path)


def test_fp8_onnx_equals_fp8_eager(dense, tmp_path):
    """An FP8 export generates on ONNX Runtime what the eager model holding the same FP8 weights does."""
    directory, _ = dense
    onnx = export(directory, tmp_path / "fp8.onnx", "--quant", "fp8")
    got = run_generate(["--onnx", str(onnx)], tmp_path)
    want = run_generate(["--eager", "--checkpoint", str(directory), "--quant", "fp8", "--max-seq-len",
                         str(MAX_SEQ_LEN)], tmp_path)
    assert [s["ids"] for s in got["sequences"]] == [s["ids"] for s in want["sequences"]]
    assert all(len(s["ids"]) > 0 for s in got["sequences"])


def test_sampling_is_seeded_and_temperature_zero_is_greedy(dense, dense_onnx, tmp_path):
    args = ["--onnx", str(dense_onnx)]
    sampled = ["--temperature", "1.5", "--top-k", "50", "--top-p", "0.95"]
    first = run_generate(args + sampled + ["--seed", "7"], tmp_path)
    again = run_generate(args + sampled + ["--seed", "7"], tmp_path)
    other = run_generate(args + sampled + ["--seed", "8"], tmp_path)
    ids = lambda r: [s["ids"] for s in r["sequences"]]  # noqa: E731
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)
    assert ids(first) != dense[1]  # sampling at temperature 1.5 is not greedy decoding
    assert ids(run_generate(args + ["--temperature", "0", "--seed", "7"], tmp_path)) == dense[1]


def test_io_binding_equals_numpy_feeds(dense, dense_onnx):
    """The OrtValue caches (IO binding, two per layer swapped) give the logits of caches fed through numpy."""
    from mla_export.graph.onnx_reader import read_export_spec
    from mla_export.run.generate import generate
    from mla_export.run.generate_steps import OnnxRuntimeSteps
    from mla_export.run.sampling import Sampler, Sampling

    spec = read_export_spec(dense_onnx)
    prompts = [prompt_ids(dense[0], p) for p in PROMPTS]
    results = []
    for io_binding in (True, False):
        logits = []
        model = OnnxRuntimeSteps(dense_onnx, spec, io_binding=io_binding)
        step = model.step
        model.step = lambda *a: logits.append(step(*a)) or logits[-1]
        sequences, _ = generate(model, prompts, 8, Sampler(Sampling()), set())
        results.append((sequences, logits))
    (seq_a, logits_a), (seq_b, logits_b) = results
    assert [s.ids for s in seq_a] == [s.ids for s in seq_b]
    for a, b in zip(logits_a, logits_b):  # the same graph on the same inputs: the same kernels, the same bits
        assert torch.equal(a, b)


def test_streamed_text_and_stop(dense, dense_onnx):
    """One prompt streams its text to stdout; --stop ends it where the text holds the stop string."""
    args = ["generate", "--onnx", str(dense_onnx), "--prompt", PROMPTS[1], "--max-new-tokens", str(NEW_TOKENS)]
    result = CliRunner().invoke(main, args + ["-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(dense[0] / "tokenizer.json"))
    text = tokenizer.decode(dense[1][1], skip_special_tokens=True)
    assert result.stdout == text + "\n"
    stop = text[len(text) // 2:len(text) // 2 + 3]
    stopped = CliRunner().invoke(main, args + ["-q", "--stop", stop], catch_exceptions=False)
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout == text[:text.index(stop)] + "\n"


def test_chat_template(dense, dense_onnx, tmp_path):
    """--chat feeds the rendered template (BOS written by it, not added twice)."""
    got = run_generate(["--onnx", str(dense_onnx), "--chat"], tmp_path, [PROMPTS[0]])
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(dense[0] / "tokenizer.json"))
    want = tokenizer.encode(f"{BOS}<user>{PROMPTS[0]}<assistant>", add_special_tokens=False).ids
    assert got["sequences"][0]["prompt_ids"] == want
    assert want[0] == tokenizer.token_to_id(BOS) and want[1] != want[0]


def test_prompts_file_prints_each_completion_when_it_ends(dense, dense_onnx, tmp_path):
    """Several prompts: each completion printed once, numbered, as its sequence ends; timings on stderr."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[2]}\n")
    result = CliRunner().invoke(main, ["generate", "--onnx", str(dense_onnx), "--prompts-file", str(prompts),
                                       "--max-new-tokens", str(NEW_TOKENS)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(dense[0] / "tokenizer.json"))
    texts = [tokenizer.decode(dense[1][b], skip_special_tokens=True) for b in (0, 2)]
    order = sorted(range(2), key=lambda i: len(dense[1][(0, 2)[i]]))  # the shorter one ends (is printed) first
    assert result.stdout == "".join(f"[{i + 1}] {texts[i]}\n" for i in order)
    assert "prefill 2 x up to" in result.stderr and "tokens/s" in result.stderr


def test_tp_onnx_matches_transformers(dense, tmp_path):
    """A --tp 2 export of the checkpoint: its two ranks in lockstep generate transformers' greedy ids."""
    directory, expected = dense
    ranks = export(directory, tmp_path / "tp2", "--tp", "2")
    check_matches(["--onnx", str(ranks)], directory, expected, tmp_path)
    result = CliRunner().invoke(main, ["generate", "--onnx", str(ranks / "rank1.onnx"), "--prompt", "hi"])
    assert result.exit_code == 1 and "rank 1 of 2 of a --tp export" in result.output


def test_paged_cache_onnx_matches_transformers(dense, tmp_path):
    """A paged cache (pages of 16: prompts and their continuations cross pages), served from a shuffled pool."""
    directory, expected = dense
    onnx = export(directory, tmp_path / "paged.onnx", "--cache", "paged", "--page-size", "16")
    check_matches(["--onnx", str(onnx)], directory, expected, tmp_path)
