"""Prompts: the one prompt schema and expected-output matcher, and the golden prompt set (load,
validate, fingerprint). Playbook prompts (apr_qa.certify.playbooks) use the same schema and matcher.

Every evaluation records the file's sha256, so a result can always be traced to the exact prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..fsutil import sha256_file
from . import f1

# One prompt schema for the golden sets (`apr-qa eval`) and the playbooks' scenarios (`apr-qa certify`).
REQUIRED_PROMPT_KEYS = ("id", "input", "category")
# reference_answer: the short canonical answer text, scored by token F1 (evaluation/f1.py) beside the
# expected_pattern's exact match
OPTIONAL_PROMPT_KEYS = ("expected_pattern", "turns", "source", "difficulty", "reference_answer")
PLAYBOOK_CATEGORIES = ("QUAL", "EDGE")  # a playbook prompt's MQS category
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def matches(pattern: str | None, text: str) -> bool:
    """The expected-output matcher: a regex search anywhere in the output, `.` matching newlines.
    No pattern matches anything."""
    return pattern is None or re.search(pattern, text, re.DOTALL) is not None


@dataclass(frozen=True)
class Prompt:
    id: str
    input: str
    category: str
    expected_pattern: str | None = None
    turns: tuple[str, ...] | None = None  # chat: user turns sent one after another through the chat template
    source: str | None = None
    difficulty: str | None = None
    reference_answer: str | None = None  # token F1's reference (evaluation/f1.py)

    def matches(self, text: str) -> bool:
        return matches(self.expected_pattern, text)

    def to_dict(self) -> dict[str, Any]:
        """The prompt as its YAML entry (the fields that are set)."""
        out = {k: getattr(self, k) for k in (*REQUIRED_PROMPT_KEYS, *OPTIONAL_PROMPT_KEYS)
               if getattr(self, k) is not None}
        if self.turns is not None:
            out["turns"] = list(self.turns)
        return out


@dataclass(frozen=True)
class TextPair:
    id: str
    a: str
    b: str


@dataclass
class GoldenSet:
    path: Path
    sha256: str
    version: str
    metadata: dict[str, Any]
    prompts: list[Prompt]
    paraphrase_pairs: list[TextPair] = field(default_factory=list)
    unrelated_pairs: list[TextPair] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return sorted({p.category for p in self.prompts})

    def embedding_texts(self) -> list[str]:
        """Golden inputs plus every pair's texts, de-duplicated in first-seen order."""
        texts = [p.input for p in self.prompts]
        for pair in self.paraphrase_pairs + self.unrelated_pairs:
            texts += [pair.a, pair.b]
        return list(dict.fromkeys(texts))

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "version": self.version,
                "count": len(self.prompts), "categories": self.categories,
                "with_reference_answer": sum(p.reference_answer is not None for p in self.prompts),
                "paraphrase_pairs": len(self.paraphrase_pairs),
                "unrelated_pairs": len(self.unrelated_pairs)}


def _text(entry: dict, key: str, where: str, path: Path) -> str:
    value = entry.get(key)
    if value is None:
        raise FormatError(f"{where}: missing {key!r}", path)
    if not isinstance(value, str) or not value:
        raise FormatError(f"{where}: {key!r} must be a non-empty string", path)
    return value


def parse_prompt(entry: Any, index: int, path: Path, *, require_pattern: bool = True,
                 categories: tuple[str, ...] | None = None) -> Prompt:
    """One prompt entry, checked: a FormatError names the file, the entry and the problem."""
    where = f"prompts[{index}]"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: expected a mapping, got {type(entry).__name__}", path)
    if isinstance(entry.get("id"), str):
        where += f" (id {entry['id']!r})"
    keys = ("id", "category", "expected_pattern") if require_pattern else ("id", "category")
    fields: dict[str, Any] = {key: _text(entry, key, where, path) for key in keys}
    # an edge case may send nothing at all; every other prompt asks something
    if fields["category"] == "EDGE" and entry.get("input") == "":
        fields["input"] = ""
    else:
        fields["input"] = _text(entry, "input", where, path)
    unknown = sorted(set(entry) - {*REQUIRED_PROMPT_KEYS, *OPTIONAL_PROMPT_KEYS}, key=str)
    if unknown:
        raise FormatError(f"{where}: unknown key {unknown[0]!r} (known: "
                          f"{', '.join((*REQUIRED_PROMPT_KEYS, *OPTIONAL_PROMPT_KEYS))})", path)
    if not _ID.match(fields["id"]):
        raise FormatError(f"{where}: id may use only letters, digits, '_', '.' and '-'", path)
    if categories is not None and fields["category"] not in categories:
        raise FormatError(f"{where}: category must be one of {', '.join(categories)}", path)
    if entry.get("expected_pattern") is not None:
        fields["expected_pattern"] = _text(entry, "expected_pattern", where, path)
        try:
            re.compile(fields["expected_pattern"], re.DOTALL)
        except re.error as exc:
            raise FormatError(f"{where}: invalid expected_pattern regex: {exc}", path) from None
    if entry.get("turns") is not None:
        turns = entry["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise FormatError(f"{where}: 'turns' must be a non-empty list of strings", path)
        fields["turns"] = tuple(turns)
    if entry.get("reference_answer") is not None:
        fields["reference_answer"] = _text(entry, "reference_answer", where, path)
        if not f1.tokens(fields["reference_answer"]):
            raise FormatError(f"{where}: 'reference_answer' has no words left after F1's normalization "
                              "(lower case, no punctuation, no articles)", path)
    fields.update({k: str(entry[k]) for k in ("source", "difficulty") if entry.get(k) is not None})
    return Prompt(**fields)


def _pairs(section: dict, key: str, path: Path) -> list[TextPair]:
    entries = section.get(key) or []
    if not isinstance(entries, list):
        raise FormatError(f"embedding.{key}: expected a list", path)
    pairs = []
    for i, entry in enumerate(entries):
        where = f"embedding.{key}[{i}]"
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: expected a mapping", path)
        pairs.append(TextPair(*(_text(entry, k, where, path) for k in ("id", "a", "b"))))
    return pairs


def load_golden(path: str | Path) -> GoldenSet:
    """Parse and validate a golden prompt file; any problem is one FormatError naming the file."""
    import yaml

    from ..yamlsafe import load

    path = Path(path)
    try:
        doc = load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError("prompt file not found", path) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FormatError(f"not valid YAML: {' '.join(str(exc).split())}", path) from None
    if not isinstance(doc, dict):
        raise FormatError("expected a mapping with 'metadata' and 'prompts'", path)
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("version"):
        raise FormatError("missing metadata.version", path)
    entries = doc.get("prompts")
    if not isinstance(entries, list) or not entries:
        raise FormatError("'prompts' must be a non-empty list", path)
    prompts = [parse_prompt(entry, i, path) for i, entry in enumerate(entries)]

    section = doc.get("embedding") or {}
    if not isinstance(section, dict):
        raise FormatError("'embedding' must be a mapping", path)
    paraphrase = _pairs(section, "paraphrase_pairs", path)
    unrelated = _pairs(section, "unrelated_pairs", path)

    seen: set[str] = set()
    for item_id in [p.id for p in prompts] + [p.id for p in paraphrase + unrelated]:
        if item_id in seen:
            raise FormatError(f"duplicate id {item_id!r}", path)
        seen.add(item_id)

    return GoldenSet(path=path, sha256=sha256_file(path), version=str(metadata["version"]),
                     metadata=metadata, prompts=prompts, paraphrase_pairs=paraphrase,
                     unrelated_pairs=unrelated)
