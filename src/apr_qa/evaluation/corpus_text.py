"""A corpus definition (config/corpus/*.yaml): the articles of a real text, in a fixed order, as tokens.

The definition names its data file and pins its sha256 and the digest of the ordered articles, so the
corpus a certificate was measured on is exactly reproducible and a changed file is a one-line error.
Chunks follow llama.cpp's perplexity tool: the token stream is cut into windows of n_ctx tokens; where
the model's tokenizer starts a text with a BOS token, each window's first token is replaced by BOS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import AprQaError, FormatError
from ..fsutil import sha256_file
from .. import yamlsafe


@dataclass(frozen=True)
class Corpus:
    name: str
    definition: Path
    sha256: str              # of the ordered articles: the corpus identity a result records
    articles: tuple[tuple[str, str], ...]  # (title, extract)
    separator: str


def _require(data: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise FormatError(f"corpus definition needs `{key}` ({kind.__name__})", where)
    return value


def articles_digest(articles: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    h = hashlib.sha256()
    for title, extract in articles:
        h.update(f"{title}\t{extract}\n".encode())
    return h.hexdigest()


def load_corpus(definition: str | Path) -> Corpus:
    """The corpus a definition describes, its data file checked against the pinned digests."""
    definition = Path(definition)
    try:
        data = yamlsafe.load(definition.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AprQaError(f"corpus definition does not read: {exc.strerror}", definition) from None
    except yaml.YAMLError as exc:
        raise FormatError(f"corpus definition is not YAML: {exc}", definition) from None
    if not isinstance(data, dict):
        raise FormatError("a corpus definition is a mapping", definition)
    name = _require(data, "name", str, definition)
    source = _require(data, "source", dict, definition)
    path = Path(_require(source, "path", str, definition))
    path = path if path.is_absolute() else definition.parent / path  # relative to the definition
    if not path.is_file():
        raise AprQaError(f"corpus {name}: data file {path} is missing (run scripts/fetch_models.py)", definition)
    digest = sha256_file(path)
    if digest != _require(source, "sha256", str, definition):
        raise FormatError(f"corpus {name}: sha256 {digest} is not the pinned {source['sha256']}", path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"corpus data is not JSON: {exc}", path) from None
    if _require(data, "order", str, definition) != "sha256-of-title":
        raise FormatError(f"unknown corpus order {data['order']!r} (known: sha256-of-title)", definition)
    min_chars = _require(data, "min_chars", int, definition)
    entries = raw.values() if isinstance(raw, dict) else raw
    articles = [(str(e["title"]), str(e["extract"]).strip()) for e in entries
                if isinstance(e, dict) and isinstance(e.get("extract"), str) and len(e["extract"].strip()) >= min_chars]
    articles.sort(key=lambda a: (hashlib.sha256(a[0].encode()).hexdigest(), a[0]))
    pinned = _require(data, "articles_sha256", str, definition)
    actual = articles_digest(articles)
    if actual != pinned:
        raise FormatError(f"corpus {name}: the selected articles digest to {actual}, not the pinned {pinned}",
                          definition)
    return Corpus(name, definition, actual, tuple(articles), _require(data, "separator", str, definition))


def adds_bos(tokenizer) -> int | None:
    """The BOS id where the tokenizer starts every text with it (llama.cpp's add_bos), else None."""
    bos = getattr(tokenizer, "bos_id", None)
    if bos is None:
        return None
    with_special = tokenizer.encode("a", add_special_tokens=True)
    starts = with_special[:1] == [bos] and tokenizer.encode("a", add_special_tokens=False)[:1] != [bos]
    return bos if starts else None


def token_chunks(corpus: Corpus, tokenizer, n_ctx: int, n_chunks: int) -> list[list[int]]:
    """`n_chunks` windows of `n_ctx` tokens from the start of the corpus's token stream."""
    need = n_ctx * n_chunks
    stream: list[int] = []
    for _, extract in corpus.articles:
        stream += tokenizer.encode(extract + corpus.separator, add_special_tokens=False)
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise AprQaError(f"corpus {corpus.name} has {len(stream)} tokens; {n_chunks} chunks of {n_ctx} need {need}",
                         corpus.definition)
    bos = adds_bos(tokenizer)
    chunks = [stream[i * n_ctx:(i + 1) * n_ctx] for i in range(n_chunks)]
    if bos is not None:
        for chunk in chunks:
            chunk[0] = bos
    return chunks


def sentences(corpus: Corpus, tokenizer, tokens: int, max_tokens: int) -> list[str]:
    """Encoders: the first sentence of each article, in corpus order, until they hold `tokens` tokens;
    sentences longer than the encoder's `max_tokens` are passed over (an encoder cannot embed them whole)."""
    out: list[str] = []
    total = 0
    for _, extract in corpus.articles:
        first = extract.split(". ", 1)[0].strip()
        first = first if first.endswith(".") else first + "."
        n = len(tokenizer.encode(first))
        if n > max_tokens:
            continue
        out.append(first)
        total += n
        if total >= tokens:
            return out
    raise AprQaError(f"corpus {corpus.name} has {total} tokens of first sentences; {tokens} were asked for",
                     corpus.definition)
