"""G4: is a model's output garbage?

Four signals, with precise definitions:
- repetition: 1 - distinct/total over the lower-cased word 3-grams; > 0.3 is garbage (needs >= 4
  trigrams, i.e. >= 6 words; a degenerate loop "the the the ..." scores near 1, prose near 0);
- fewer than 10 distinct characters, and Shannon entropy of the characters < 1.0 bit: both judged
  only on outputs of >= 20 characters, since a right short answer ("4", "Paris") is not garbage;
- non-printable characters: C0/C1 controls other than tab/newline/CR, unassigned or private-use
  code points, surrogates, U+FFFD (a byte sequence the tokenizer could not decode).
Plus one signal for the token salad a wrong tensor layout produces
("olumbia+lsi nunca/localENTS"): malformed words, words glueing two letter runs with + / \\ |
or switching from a lower-case run to an upper-case run ("localENTS"); > 0.3 of the words
(at least 2 words) is garbage. Numbers the runtime returns (embeddings) must be finite.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

MAX_REPETITION = 0.3
MIN_UNIQUE_CHARS = 10
MIN_ENTROPY_BITS = 1.0
MAX_MALFORMED = 0.3
MIN_DIVERSITY_LEN = 20  # characters before unique-char and entropy rules apply

_MALFORMED = re.compile(r"[A-Za-z]{2,}[+/\\|][A-Za-z]{2,}|[a-z]{2,}[A-Z]{2,}")
_ALLOWED_CONTROLS = {"\n", "\t", "\r"}


def repetition(text: str, n: int = 3) -> float:
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 4:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def entropy_bits(text: str) -> float:
    if not text:
        return 0.0
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def non_printable(text: str) -> list[str]:
    bad = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch == "\ufffd" or cat in ("Cs", "Co", "Cn") or (cat == "Cc" and ch not in _ALLOWED_CONTROLS):
            bad.append(f"U+{ord(ch):04X}")
    return bad


def malformed_ratio(text: str) -> float:
    words = text.split()
    if len(words) < 2:
        return 0.0
    return sum(bool(_MALFORMED.search(w)) for w in words) / len(words)


@dataclass
class GarbageVerdict:
    garbage: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def check_text(text: str) -> GarbageVerdict:
    stripped = text.strip()
    m = {
        "repetition": round(repetition(stripped), 4),
        "unique_chars": len(set(stripped)),
        "entropy_bits": round(entropy_bits(stripped), 4),
        "malformed_words": round(malformed_ratio(stripped), 4),
    }
    reasons = []
    if not stripped:
        reasons.append("empty output")
    if m["repetition"] > MAX_REPETITION:
        reasons.append(f"repetition {m['repetition']:.2f} > {MAX_REPETITION}")
    if len(stripped) >= MIN_DIVERSITY_LEN:
        if m["unique_chars"] < MIN_UNIQUE_CHARS:
            reasons.append(f"{m['unique_chars']} unique characters < {MIN_UNIQUE_CHARS}")
        if m["entropy_bits"] < MIN_ENTROPY_BITS:
            reasons.append(f"entropy {m['entropy_bits']:.2f} bits < {MIN_ENTROPY_BITS}")
    bad = non_printable(text)
    if bad:
        reasons.append(f"{len(bad)} non-printable characters ({', '.join(sorted(set(bad))[:5])})")
    if m["malformed_words"] > MAX_MALFORMED:
        reasons.append(f"malformed words {m['malformed_words']:.2f} > {MAX_MALFORMED} (token salad)")
    return GarbageVerdict(bool(reasons), reasons, m)


def check_values(values) -> GarbageVerdict:
    """Numeric output (an embedding): every value must be finite."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
    reasons = [f"{nan} NaN values"] * bool(nan) + [f"{inf} infinite values"] * bool(inf)
    if arr.size == 0:
        reasons.append("empty output")
    return GarbageVerdict(bool(reasons), reasons, {"nan": nan, "inf": inf, "size": int(arr.size)})
