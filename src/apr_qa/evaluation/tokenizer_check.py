"""Invariant I-5, tokenizer round trip: the converted model tokenizes and detokenizes exactly as its source.

`probe` runs one tokenizer over the texts (so the model can be freed before the reference loads);
`compare` judges two probes.
"""

from __future__ import annotations

from collections.abc import Sequence

# Whitespace, normalization and multi-byte cases where tokenizer ports usually break.
EDGE_CASES = (
    "",
    " ",
    "  two leading spaces",
    "trailing spaces   ",
    "tab\tand\nnewline\n\nand blank line",
    "windows\r\nline ending",
    "café naïve résumé",
    "e\u0301 (combining acute) vs \u00e9 (precomposed)",
    "non-breaking\u00a0space and zero\u200bwidth",
    "日本語のテキストと中文",
    "emoji 🤖🚀 and ZWJ 👩\u200d💻",
    "עברית والعربية",
    "math ∑∫√∞ ≤ ≥ → ⇒",
    "numbers 1234567890 3.14159 -42 1e-9 $1,000.00",
    "code: def f(x):\n    return x ** 2  # comment",
    "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "repeated !!!!!!!!!!!!!!!! ........",
    "ALL CAPS and MiXeD CaSe",
)


def texts(golden) -> list[str]:
    """What the probe tokenizes: the golden inputs and the edge cases."""
    return [p.input for p in golden.prompts] + list(EDGE_CASES)


def probe(tokenizer, texts: Sequence[str]) -> list[dict]:
    """Per text: ids with the tokenizer's special tokens, ids without, and the decoded text."""
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=True)
        plain = tokenizer.encode(text, add_special_tokens=False)
        out.append({"text": text, "ids": ids, "plain_ids": plain, "decoded": tokenizer.decode(plain)})
    return out


def compare(model_probe: list[dict], reference_probe: list[dict]) -> dict:
    """Pass when ids and decoded text agree for every text, and the model round-trips every text the
    reference round-trips (decode(encode(x)) == x: the tokenizer is lossless on it)."""
    mismatches = []
    lossy = []
    for m, r in zip(model_probe, reference_probe, strict=True):
        reference_exact = r["decoded"] == r["text"]
        if not reference_exact:
            lossy.append(r["text"])
        problems = []
        if m["ids"] != r["ids"] or m["plain_ids"] != r["plain_ids"]:
            problems.append("token ids differ")
        if m["decoded"] != r["decoded"]:
            problems.append("decoded text differs")
        if reference_exact and m["decoded"] != m["text"]:
            problems.append("model does not round-trip a text the reference round-trips")
        if problems:
            mismatches.append({"text": m["text"], "problems": problems,
                               "model_ids": m["ids"], "reference_ids": r["ids"]})
    return {
        "passed": not mismatches,
        "texts": len(model_probe),
        "mismatches": mismatches,
        "lossless": not lossy,
        "reference_lossy_texts": lossy,
    }
