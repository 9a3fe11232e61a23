"""The tokenizer.ggml.* keys of a GGUF, from the tokenizer.json and tokenizer_config a .apr embeds:
the inverse of sources/gguf_tokenizer.py, written the way convert_hf_to_gguf.py writes them.

- Byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2): `_set_vocab_gpt2` - "gpt2" model, tokens in id order
  (added tokens CONTROL when special or special-looking, else USER_DEFINED; ids no token holds become
  "[PAD{i}]" UNUSED), and `tokenizer.ggml.pre`, llama.cpp's name for the split. The converter finds
  that name by hashing the tokenization of a test text; here the pre-tokenizer itself is compared
  with the one the GGUF reader rebuilds for each name, so a round trip is exact by construction.
- SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama): `_set_vocab_llama_hf` - "llama"
  model, <0xXX> tokens BYTE, special tokens CONTROL, the unknown token UNKNOWN. Its converter gives
  every token the score -1000, which leaves llama.cpp's SentencePiece tokenizer nothing to rank merges
  by; here a token's score is minus the rank of the first merge that makes it (SentencePiece's own
  order), and the merges are written as well (llama.cpp ignores them, the GGUF reader prefers them).
- WordPiece (BERT): BertModel.set_vocab - "bert" model, the "phantom space" vocabulary (a word start
  "x" becomes "▁x", a continuation "##x" becomes "x", CONTROL tokens unchanged).
Special ids, add_bos/add_eos, merges and the chat template come from gguf-py's own SpecialVocab, the
converter's code, run on the embedded files.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path
from typing import Any

from ..errors import FormatError, UnsupportedError

# get_vocab_base_pre's test text and the hash of BERT WordPiece vocabularies' tokenization of it
# (bge-small, jina-v2-en, all-MiniLM); the converter's later "jina-v2-en" entry wins.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_BERT_CHKHSH = "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"
# One `pre` name per split the GGUF reader (and llama.cpp) distinguishes for byte-level BPE.
_BPE_PRE_NAMES = ("gpt-2", "smollm", "llama-bpe", "qwen2")
# Keys that do not change how text is split (ByteLevel's trim_offsets only moves offsets).
_NEUTRAL_KEYS = {"trim_offsets"}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def write_tokenizer(writer: Any, tokenizer_json: str | None, tokenizer_config: dict[str, Any],
                    hf_config: dict[str, Any], vocab_size: int) -> list[str]:
    """Add the tokenizer.ggml.* keys to `writer`; return what llama.cpp will do differently."""
    if tokenizer_json is None:
        return ["no tokenizer embedded: the GGUF has weights only (llama.cpp loads it without a vocabulary)"]
    tok = json.loads(tokenizer_json)
    model = tok.get("model") or {}
    kind = model.get("type")
    notes: list[str] = []
    if kind == "WordPiece":
        _wordpiece(writer, tok, tokenizer_json, vocab_size)
    elif kind == "BPE" and model.get("byte_fallback"):
        _sentencepiece(writer, tok, tokenizer_config, vocab_size)
    elif kind == "BPE" and "ByteLevel" in json.dumps([tok.get("pre_tokenizer"), tok.get("decoder")]):
        notes += _byte_level(writer, tok, vocab_size)
    else:
        raise UnsupportedError(f"tokenizer model {kind!r} without byte-level or byte-fallback pieces has no GGUF "
                               "form here (byte-level BPE, SentencePiece BPE with byte fallback and WordPiece do)")
    notes += _special_vocab(writer, tokenizer_json, tokenizer_config, hf_config, vocab_size,
                            load_merges=kind == "BPE")
    return notes


def _vocabulary(tok: dict[str, Any], vocab_size: int) -> tuple[list[str | None], dict[int, dict[str, Any]]]:
    """Token text by id (None where no token has the id) and the added tokens by id."""
    vocab = tok["model"].get("vocab") or {}
    added = {int(a["id"]): a for a in tok.get("added_tokens") or []}
    ids = [*vocab.values(), *added]
    if ids and max(ids) >= vocab_size:
        raise FormatError(f"tokenizer has token id {max(ids)}, beyond the model's vocab_size {vocab_size}")
    texts: list[str | None] = [None] * vocab_size
    for text, i in vocab.items():
        texts[i] = text
    for i, a in added.items():
        texts[i] = a["content"]
    return texts, added


def _looks_special(text: str) -> bool:
    """TextModel.does_token_look_special: added tokens some models forget to mark special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def _base_tokens(tok: dict[str, Any], vocab_size: int) -> tuple[list[str], list[Any]]:
    """TextModel.get_vocab_base: every id's text and llama.cpp token type."""
    import gguf

    texts, added = _vocabulary(tok, vocab_size)
    tokens, types = [], []
    for i, text in enumerate(texts):
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added and (added[i].get("special") or _looks_special(text)):
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL)
        elif i in added:
            tokens.append(text.replace("\u2581", " "))
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _byte_level(writer: Any, tok: dict[str, Any], vocab_size: int) -> list[str]:
    tokens, types = _base_tokens(tok, vocab_size)
    pre = bpe_pre_name(tok.get("pre_tokenizer"))
    notes = []
    if pre is None:
        pre = "default"
        notes.append("the tokenizer's pre-tokenizer has no llama.cpp name: written as 'default', whose split "
                     "differs, so llama.cpp may tokenize text differently")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    return notes


def bpe_pre_name(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """llama.cpp's `pre` name for a byte-level BPE pre-tokenizer: the name whose pre-tokenizer, as the
    GGUF reader rebuilds it, splits the same way; None when no name does."""
    from ..sources.gguf_tokenizer import build_tokenizer

    wanted = _split_behaviour(pre_tokenizer)
    for name in _BPE_PRE_NAMES:
        meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": name, "tokenizer.ggml.tokens": ["a"]}
        rebuilt = json.loads(build_tokenizer(meta, [])[0])["pre_tokenizer"]
        if _split_behaviour(rebuilt) == wanted:
            return name
    return None


def _split_behaviour(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _split_behaviour(v) for k, v in node.items() if k not in _NEUTRAL_KEYS}
    if isinstance(node, list):
        return [_split_behaviour(v) for v in node]
    return node


def _sentencepiece(writer: Any, tok: dict[str, Any], tokenizer_config: dict[str, Any], vocab_size: int) -> None:
    import gguf

    texts, added = _vocabulary(tok, vocab_size)
    unk = tok["model"].get("unk_token")
    special = {a["content"] for a in added.values() if a.get("special")}
    special |= {_content(tokenizer_config.get(f"{k}_token")) for k in ("bos", "eos", "unk", "pad")} - {None}
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(tok["model"].get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    tokens, scores, types = [], [], []
    for i, text in enumerate(texts):
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.UNKNOWN if text == unk else gguf.TokenType.BYTE if _BYTE_TOKEN.fullmatch(text)
                         else gguf.TokenType.CONTROL if text in special
                         else gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
        scores.append(-float(ranks[text]) if text in ranks else 0.0)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(_adds_space_prefix(tok))


def _content(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


def _adds_space_prefix(tok: dict[str, Any]) -> bool:
    """Whether "▁" is prepended to the text: a Metaspace pre-tokenizer's prepend scheme, or (newer
    tokenizer.json files) a Prepend("▁") normalizer."""
    def nodes(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield node
            for child in node.get("pretokenizers") or node.get("normalizers") or []:
                yield from nodes(child)

    for node in [*nodes(tok.get("pre_tokenizer")), *nodes(tok.get("normalizer"))]:
        if node.get("type") == "Metaspace":
            return node.get("prepend_scheme", "always" if node.get("add_prefix_space", True) else "never") != "never"
        if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
            return True
    return False


def _wordpiece(writer: Any, tok: dict[str, Any], tokenizer_json: str, vocab_size: int) -> None:
    import gguf
    from tokenizers import Tokenizer

    tokens, types = _base_tokens(tok, vocab_size)
    phantom = [t if ty == gguf.TokenType.CONTROL else t[2:] if t.startswith("##") else "\u2581" + t
               for t, ty in zip(tokens, types, strict=True)]
    ids = Tokenizer.from_str(tokenizer_json).encode(_CHKTXT).ids
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("jina-v2-en" if sha256(str(ids).encode()).hexdigest() == _BERT_CHKHSH else "default")
    writer.add_token_list(phantom)
    writer.add_token_types(types)


def _special_vocab(writer: Any, tokenizer_json: str, tokenizer_config: dict[str, Any], hf_config: dict[str, Any],
                   vocab_size: int, load_merges: bool) -> list[str]:
    """gguf.SpecialVocab over the embedded files (as the converter reads them from the model folder):
    special ids, add_bos/add_eos, merges, chat template. Its warnings become notes."""
    import gguf

    with tempfile.TemporaryDirectory(prefix="apr-qa-vocab-") as folder, _captured("gguf") as warnings:
        for name, text in (("tokenizer.json", tokenizer_json), ("tokenizer_config.json", json.dumps(tokenizer_config)),
                           ("config.json", json.dumps(hf_config))):
            (Path(folder) / name).write_text(text, encoding="utf-8")
        special = gguf.SpecialVocab(folder, load_merges=load_merges, n_vocab=vocab_size)
        notes = _follow_post_processor(special, tokenizer_json)
        special.add_to_gguf(writer, quiet=True)
    # overwritten keys (Phi's add_bos) and special types GGUF has no key for (cls) are the converter's
    # own behaviour, not news about this model
    return notes + [f"gguf-py: {w}" for w in warnings
                    if not w.startswith(("Duplicated key name", "No handler for special"))]


def _follow_post_processor(special: Any, tokenizer_json: str) -> list[str]:
    """add_bos/add_eos as the tokenizer.json's post-processor actually adds them (what our runtime
    does, and what the GGUF reader rebuilds), where SpecialVocab's reading of tokenizer_config's
    add_*_token flags or its template parsing says otherwise."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    plain, full = tok.encode("a", add_special_tokens=False).ids, tok.encode("a").ids
    adds = {"bos": len(full) > len(plain) and full[:1] != plain[:1],
            "eos": len(full) > len(plain) and full[-1:] != plain[-1:]}
    notes = []
    for typ, added in adds.items():
        if special.add_special_token.get(typ, added) != added:
            notes.append(f"add_{typ}_token written as {added} (the tokenizer's post-processor), not as "
                         "tokenizer_config says")
        special.add_special_token[typ] = added
    return notes


@contextmanager
def _captured(logger_name: str) -> Iterator[list[str]]:
    """Warnings of a library logger, collected instead of printed."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger(logger_name), Collect(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
