"""Text <-> token ids from a source's HF `tokenizers` JSON, plus its jinja2 chat template."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

from ..errors import FormatError, UnsupportedError
from ..sources.gguf_tokenizer import library_failure


def _token_text(value: Any) -> str | None:
    """tokenizer_config writes special tokens either as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _as_id_set(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple)) else {int(value)}


class Tokenizer:
    def __init__(self, tokenizer_json: str | None, tokenizer_config: dict[str, Any] | None,
                 config: dict[str, Any] | None, path=None):
        from tokenizers import Tokenizer as HFTokenizer

        if not tokenizer_json:
            raise FormatError("the model has no tokenizer (tokenizer.json or GGUF tokenizer metadata)", path)
        try:
            self._tok = HFTokenizer.from_str(tokenizer_json)
        except Exception as exc:  # the tokenizers library raises bare Exceptions on bad JSON
            raise FormatError(f"tokenizer JSON does not load: {exc}", path) from exc
        self._tok.no_padding()  # we pad ourselves (left for generation, masked for encoders)
        self.path = path
        if not isinstance(tokenizer_config or {}, dict) or not isinstance(config or {}, dict):
            raise FormatError("tokenizer_config and the model config must be JSON objects", path)
        self.config = dict(tokenizer_config or {})
        model_config = config or {}
        self.special_tokens = {key: _token_text(self.config.get(key))
                               for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
        try:
            self.bos_id = self._id_of("bos_token", model_config.get("bos_token_id"))
            self.eos_ids = _as_id_set(model_config.get("eos_token_id"))
            eos_from_tokens = self._id_of("eos_token", None)
            if eos_from_tokens is not None:
                self.eos_ids.add(eos_from_tokens)
            pad = self._id_of("pad_token", model_config.get("pad_token_id"))
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. "eos_token_id": "x" or 1e400
            raise FormatError(f"special token ids are not integers: {exc}", path) from None
        if pad is None:
            pad = min(self.eos_ids) if self.eos_ids else 0
        self.pad_id: int = pad

    def _id_of(self, key: str, fallback: Any) -> int | None:
        text = self.special_tokens.get(key)
        if text is not None and self._tok.token_to_id(text) is not None:
            return self._tok.token_to_id(text)
        if isinstance(fallback, (list, tuple)):
            fallback = fallback[0] if fallback else None
        return int(fallback) if fallback is not None else None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        with self._library_errors("encoding"):
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        with self._library_errors("decoding"):
            return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @contextlib.contextmanager
    def _library_errors(self, doing: str):
        """A tokenizer JSON that loads can still fail on use (a post-processor template naming a
        token it does not define makes the Rust code panic): one line naming the model."""
        try:
            yield
        except BaseException as exc:
            if not library_failure(exc):
                raise
            raise FormatError(f"the tokenizer fails {doing}: {type(exc).__name__}: {exc}", self.path) from None

    @property
    def chat_template(self) -> str | None:
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = [t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"]
            template = named[0] if named else None
        return template or None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        template = self.chat_template
        if template is None:
            raise UnsupportedError("the model has no chat template (tokenizer_config chat_template)", self.path)
        if not isinstance(template, str):
            raise FormatError(f"the chat template is a {type(template).__name__}, not text", self.path)
        try:
            return _compile(template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                **{k: v for k, v in self.special_tokens.items() if v is not None})
        except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError, ArithmeticError) as exc:
            # a template that does not compile, or fails on the conversation (raise_exception gives AprQaErrors)
            raise FormatError(f"chat template failed: {type(exc).__name__}: {exc}", self.path) from None


def _compile(template: str):
    """Render like transformers does: sandboxed, trim/lstrip blocks, loop controls, tojson, raise_exception."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise UnsupportedError(f"chat template refused the conversation: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
