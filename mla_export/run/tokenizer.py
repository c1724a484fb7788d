"""Text <-> token ids for `generate`: a checkpoint directory's `tokenizer.json` through the `tokenizers`
package, with `tokenizer_config.json` (BOS, EOS, chat template) and `generation_config.json` / `config.json`
(EOS ids) beside it, as transformers reads them.

Prompts are encoded as transformers' `tokenizer(text)` does for DeepSeek's tokenizers: the tokenizer's own
post-processor first, then BOS put in front where `add_bos_token` asks for it and it is not there yet. A
chat prompt is the rendered chat template encoded without special tokens (the template writes them), as
`apply_chat_template(..., tokenize=True)` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{path}: not readable JSON ({str(exc)[:200]}); restore the file from the "
                        "checkpoint") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; restore the file from the checkpoint")
    return data


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": string, ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _ids(value) -> set[int]:
    """eos_token_id as config files write it: an int, a list of ints, or null."""
    values = value if isinstance(value, list) else [value]
    return {v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


@dataclass
class TextTokenizer:
    """A `tokenizers.Tokenizer` with the BOS/EOS and chat template transformers would use with it."""

    tokenizer: object  # tokenizers.Tokenizer
    source: str
    bos_id: int | None = None
    add_bos: bool = False
    eos_ids: set[int] = field(default_factory=set)
    chat_template: str | None = None
    special: dict[str, str] = field(default_factory=dict)  # bos_token/eos_token text, for the chat template

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """`text`'s ids with the tokenizer's special tokens (and BOS in front where the config asks for it)."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=True).ids)
        if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def encode_chat(self, text: str) -> list[int]:
        """`text` as one user turn of the chat template, with the assistant's turn opened."""
        if self.chat_template is None:
            raise UserError(f"{self.source}: its {TOKENIZER_CONFIG} has no chat_template; drop --chat")
        try:
            import jinja2
            import jinja2.sandbox
        except ImportError:
            raise UserError("--chat renders the checkpoint's chat template with jinja2, which is not installed: "
                            "`pip install jinja2`, or drop --chat") from None

        def raise_exception(message):
            raise jinja2.TemplateError(message)

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            rendered = env.from_string(self.chat_template).render(
                messages=[{"role": "user", "content": text}], add_generation_prompt=True, **self.special)
        except jinja2.TemplateError as exc:
            raise UserError(f"{self.source}: its chat template fails ({str(exc)[:200]}); fix the template or "
                            "drop --chat") from None
        return list(self.tokenizer.encode(rendered, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        """The text of generated `ids`, special tokens (EOS) left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(path: str | Path, option: str) -> TextTokenizer:
    """The tokenizer at `path`: a checkpoint directory holding tokenizer.json (and optionally its configs),
    or a tokenizer.json file (its directory's configs used where present). `option` names where the path
    came from in messages."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{option} {path}: no {TOKENIZER_FILE} there; pass --tokenizer PATH (the model's "
                        f"{TOKENIZER_FILE} or its directory)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("generate needs the `tokenizers` package: `pip install tokenizers`") from None
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises its own Exception type for every parse failure
        raise UserError(f"{file}: not a tokenizer file the `tokenizers` package reads ({str(exc)[:60]}); "
                        "restore it") from None
    directory = file.parent
    config = _read_json(directory / TOKENIZER_CONFIG) if (directory / TOKENIZER_CONFIG).is_file() else {}
    result = TextTokenizer(tokenizer, str(file))
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    result.special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v}
    if bos is not None:
        result.bos_id = tokenizer.token_to_id(bos)
    result.add_bos = bool(config.get("add_bos_token", False))
    if eos is not None and tokenizer.token_to_id(eos) is not None:
        result.eos_ids.add(tokenizer.token_to_id(eos))
    for name in ("generation_config.json", "config.json"):  # what transformers' generate stops at
        if (directory / name).is_file():
            result.eos_ids |= _ids(_read_json(directory / name).get("eos_token_id"))
            break
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    result.chat_template = template if isinstance(template, str) else None
    return result
