"""The side files of a HuggingFace model folder: config.json and the tokenizer files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")  # Python's json would accept NaN/Infinity


def unpaired_surrogate(tree: Any) -> bool:
    """Whether a parsed JSON tree holds a string with an unpaired UTF-16 surrogate ("\\ud800"): Python's
    json accepts the escape, but the string can never be written as UTF-8 again."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        value = json.loads(text, parse_constant=_reject_constant)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON; RecursionError: deep nesting
        raise FormatError(f"cannot read JSON: {e}", path) from None
    if "\\u" in text and unpaired_surrogate(value):  # only a \u escape can make one
        raise FormatError("JSON string holds an unpaired UTF-16 surrogate escape", path)
    return value


@dataclass
class HfFiles:
    config: dict[str, Any]
    tokenizer_json: str | None
    tokenizer_config: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    pooling_config: dict[str, Any] | None = None  # sentence-transformers Pooling module, if any


def read_hf_files(folder: Path) -> HfFiles:
    """config.json (required), tokenizer.json and tokenizer_config.json (optional)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FormatError("config.json is missing from the model folder", folder)
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise FormatError("config.json is not a JSON object", config_path)
    files = [config_path]

    tokenizer_json = None
    tok_path = folder / "tokenizer.json"
    if tok_path.is_file():
        read_json(tok_path)  # validate first: a corrupt tokenizer must fail here, not at evaluation
        tokenizer_json = tok_path.read_text(encoding="utf-8")
        files.append(tok_path)

    tokenizer_config: dict[str, Any] = {}
    tc_path = folder / "tokenizer_config.json"
    if tc_path.is_file():
        tokenizer_config = read_json(tc_path)
        if not isinstance(tokenizer_config, dict):
            raise FormatError("tokenizer_config.json is not a JSON object", tc_path)
        files.append(tc_path)
    # Newer checkpoints keep the chat template beside tokenizer_config.json.
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and "chat_template" not in tokenizer_config:
        tokenizer_config["chat_template"] = jinja.read_text(encoding="utf-8")
        files.append(jinja)
    pooling_config = None
    if (pooling_path := _pooling_config_path(folder)) is not None:
        pooling_config = read_json(pooling_path)
        if not isinstance(pooling_config, dict):
            raise FormatError("pooling config is not a JSON object", pooling_path)
        files.append(pooling_path)
    return HfFiles(config, tokenizer_json, tokenizer_config, files, pooling_config)


def _pooling_config_path(folder: Path) -> Path | None:
    """The config of the Pooling module a sentence-transformers `modules.json` lists (conventionally
    1_Pooling/config.json)."""
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = read_json(modules_path)
        for module in modules if isinstance(modules, list) else []:
            if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
                candidate = folder / str(module.get("path", "")) / "config.json"
                if candidate.is_file():
                    return candidate
    candidate = folder / "1_Pooling" / "config.json"
    return candidate if candidate.is_file() else None
