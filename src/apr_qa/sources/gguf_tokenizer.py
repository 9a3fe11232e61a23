"""Rebuild a HuggingFace `tokenizers` JSON from a GGUF file's tokenizer.ggml.* metadata.

A GGUF carries the vocabulary, merges, token types and special ids, but not the normalizer,
pre-tokenizer and decoder; those follow from `tokenizer.ggml.model` and `tokenizer.ggml.pre`, as
llama.cpp (llama-vocab.cpp) and transformers (integrations/gguf) interpret them:
- "gpt2": byte-level BPE; the split regex depends on `pre` (SmolLM's "smollm" isolates every digit
  before the GPT-2 regex, exactly as its original tokenizer.json does with a Digits pre-tokenizer).
- "llama": SentencePiece-style BPE with byte fallback, "▁" for spaces (Metaspace).
- "bert": WordPiece. llama.cpp's converter (BertModel.set_vocab) stores a "phantom space" vocabulary:
  a word-start piece "x" as "▁x", a continuation "##x" as "x", CONTROL tokens unchanged; it is
  turned back, and BERT's normalizer, pre-tokenizer, [CLS] $A [SEP] template and decoder restored.
"""

from __future__ import annotations

import bisect
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece

from ..errors import UnsupportedError

# llama.cpp token types (gguf-py TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `pre` values llama.cpp splits with "\p{N}" and then the GPT-2 regex.
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_REGEX_SPLITS = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"], _LLAMA3_SPLIT),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen"], _QWEN2_SPLIT),
}
_GPT2_PRE = {None, "default", "gpt2", "gpt-2"}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def library_failure(exc: BaseException) -> bool:
    """An error from building a tokenizer out of damaged arrays: `tokenizers` raises bare Exceptions
    ("Error while initializing BPE: Token ... out of vocabulary"), and pyo3's PanicException, a
    BaseException, when its Rust code panics."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def build_tokenizer(meta: dict[str, Any], notes: list[str]) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json text, tokenizer_config dict) from the GGUF `tokenizer.*` values in `meta`."""
    model = meta.get("tokenizer.ggml.model")
    tokens: list[str] = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise UnsupportedError("GGUF has no tokenizer.ggml.tokens")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if model == "bert":
        return _wordpiece(meta, tokens, types)
    if model == "gpt2":
        tok, add_bos_default = _byte_level(meta, tokens, notes), False
    elif model == "llama":
        tok, add_bos_default = _sentencepiece(meta, tokens), True  # llama.cpp's default for SPM vocabularies
    else:
        raise UnsupportedError(f"GGUF tokenizer model {model!r} is not supported (only 'gpt2', 'llama' and 'bert')")

    _add_special_tokens(tok, tokens, types, byte_level=model == "gpt2")
    special = {
        name: tokens[i]
        for name, key in [("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                          ("pad_token", "padding")]
        if (i := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None and 0 <= i < len(tokens)
    }
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    tok.post_processor = _post_processor(tok, special, add_bos, add_eos, byte_level=model == "gpt2")

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json describes it completely
        **special,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
    }
    if (template := meta.get("tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    return tok.to_str(), config


def _wordpiece(meta: dict[str, Any], phantom: list[str], types: list[int]) -> tuple[str, dict[str, Any]]:
    """BERT's WordPiece tokenizer from llama.cpp's phantom-space vocabulary."""
    # Undo BertModel.set_vocab's `phantom`: CONTROL as stored, "▁x" -> "x", "x" -> "##x".
    tokens = [t if ty == CONTROL else t[1:] if t.startswith("\u2581") else "##" + t
              for t, ty in zip(phantom, types, strict=True)]
    ids = {name: i for name, key in [("cls", "bos"), ("sep", "seperator"), ("unk", "unknown"), ("pad", "padding"),
                                     ("mask", "mask")]
           if (i := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None and 0 <= i < len(tokens)}
    # SpecialVocab writes [CLS] as bos and [SEP] as eos; the literal names are the last resort.
    if "sep" not in ids and (i := meta.get("tokenizer.ggml.eos_token_id")) is not None and 0 <= i < len(tokens):
        ids["sep"] = i
    for name, text in (("cls", "[CLS]"), ("sep", "[SEP]"), ("unk", "[UNK]")):
        if name not in ids and text in tokens:
            ids[name] = tokens.index(text)
    if "cls" not in ids or "sep" not in ids:
        raise UnsupportedError("GGUF WordPiece tokenizer names no [CLS]/[SEP] tokens")

    unk = tokens[ids["unk"]] if "unk" in ids else "[UNK]"
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(tokens)}, unk_token=unk, continuing_subword_prefix="##",
                              max_input_chars_per_word=100))
    # GGUF records no do_lower_case (llama.cpp always lower-cases); an uncased vocabulary has no
    # upper-case letters outside its CONTROL tokens and the converter's "[PAD{i}]" fillers (UNUSED),
    # so any there means the original was cased.
    cased = any(ty not in (CONTROL, UNUSED) and t != t.lower() for t, ty in zip(tokens, types, strict=True))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=not cased)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    _add_special_tokens(tok, tokens, types, byte_level=False)
    cls, sep = tokens[ids["cls"]], tokens[ids["sep"]]
    tok.post_processor = processors.TemplateProcessing(
        single=[cls, "$A:0", sep], pair=[cls, "$A:0", sep, "$B:1", f"{sep}:1"],
        special_tokens=[(cls, ids["cls"]), (sep, ids["sep"])],
    )
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": not cased,
        **{f"{name}_token": tokens[i] for name, i in ids.items()},
        "clean_up_tokenization_spaces": True,
    }
    return tok.to_str(), config


def _byte_level(meta: dict[str, Any], tokens: list[str], notes: list[str]) -> Tokenizer:
    alphabet = set(bytes_to_unicode().values())
    spell = bytes_to_unicode()
    # A token outside the byte alphabet (mislabelled by some converters) is respelled byte by byte,
    # as transformers does, so the BPE model can reach it.
    vocab = {
        t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                        fuse_unk=False, byte_fallback=False))
    pre = meta.get("tokenizer.ggml.pre")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in _DIGITS_THEN_GPT2:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _REGEX_SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_REGEX_SPLITS[pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    else:
        if pre not in _GPT2_PRE:
            notes.append(f"GGUF pre-tokenizer {pre!r} is not known; the GPT-2 split regex is used")
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(meta: dict[str, Any], tokens: list[str]) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    if meta.get("tokenizer.ggml.merges"):
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    else:
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None:
            raise UnsupportedError("GGUF SentencePiece tokenizer has neither merges nor scores")
        merges = merges_from_scores(vocab, dict(zip(tokens, scores, strict=True)))
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    tok = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None))
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else "never",
                                                 split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges implied by a scored vocabulary: every split of a token into two
    vocabulary pieces is a merge ranked by the token's score (transformers' generate_merges)."""
    merges = []
    # Split only where the left piece has the length of some token: a (damaged) token of a million
    # characters then costs a few slices, not a million slices of up to a million characters each.
    lengths = sorted({len(t) for t in vocab} - {0})
    for token, score in scores.items():
        local = [(token[:i], token[i:], score) for i in lengths[: bisect.bisect_left(lengths, len(token))]
                 if token[:i] in vocab and token[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _add_special_tokens(tok: Tokenizer, tokens: list[str], types: list[int], byte_level: bool) -> None:
    """CONTROL tokens become special added tokens and USER_DEFINED ones plain added tokens, so both
    are matched whole in text instead of being cut into pieces."""
    alphabet = set(bytes_to_unicode().values()) if byte_level else None
    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, types, strict=True)
               if ty == CONTROL and (alphabet is None or set(t) <= alphabet)]
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types, strict=True) if ty == USER_DEFINED]
    if control:
        tok.add_special_tokens(control)
    if user:
        tok.add_tokens(user)


def _post_processor(tok: Tokenizer, special: dict[str, str], add_bos: bool, add_eos: bool, byte_level: bool):
    bos = [special["bos_token"]] if add_bos and "bos_token" in special else []
    eos = [special["eos_token"]] if add_eos and "eos_token" in special else []
    if not bos and not eos:
        return processors.ByteLevel(trim_offsets=False) if byte_level else None
    return processors.TemplateProcessing(
        single=[*bos, "$A:0", *eos],
        pair=[*bos, "$A:0", *eos, *bos, "$B:1", *eos],
        special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys(bos + eos)],
    )
