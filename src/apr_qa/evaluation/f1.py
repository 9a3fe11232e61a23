"""Token-overlap F1 of a generation against a prompt's `reference_answer`, beside exact match.

The token F1 is SQuAD's: both texts are normalized (lower-cased; ASCII punctuation deleted; the
articles "a", "an", "the" removed as words; whitespace collapsed) and split on whitespace; with
`common` the size of the two token multisets' intersection, precision = common / generated tokens,
recall = common / reference tokens, F1 = 2 P R / (P + R), and 0 when nothing is shared (two empty
token lists score 1, one empty list 0).

Which part of the generation is scored: a golden run generates up to 32 new tokens and keeps going
after its answer ("Paris. It is the largest city of ..."), so the F1 of the whole output would
measure how long the model rambles, not whether it answered. The score is therefore the best F1
over the generation's *leading spans*: its first k normalized tokens, for k from 1 to the reference's
token count plus LEAD_SLACK. Why this rule and not another:
- the first line is no better a cut: a completion often runs on within its line (the example above),
  and a code completion's first line may be blank;
- prefixes, not windows anywhere: the answer must come first, as a reader would read it; a correct
  phrase that turns up only later in run-on text (a repeated option list, the next made-up question)
  is not an answer, and exact match's patterns in golden-v2 are anchored the same way;
- up to LEAD_SLACK extra tokens: a short lead-in ("the answer is", "C)") or a few tokens of a longer
  phrasing still score, at a precision cost, while an answer buried beyond them scores 0.
It is deterministic and depends only on the two texts, so the variant's and the reference's runs of
the same prompt and seed are scored alike and their F1s pair as their exact matches do.
"""

from __future__ import annotations

import re
import string
from collections import Counter

LEAD_SLACK = 5  # leading spans scored: up to the reference's token count plus this many tokens
DEFINITION = ("token F1 (SQuAD normalization: lower-case, no punctuation, no articles a/an/the, whitespace "
              f"tokens) of the generation's best leading span, its first 1 to len(reference) + {LEAD_SLACK} "
              "tokens, against the prompt's reference_answer")

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """SQuAD's answer normalization: lower-case, punctuation deleted, articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def token_f1(generated: list[str], reference: list[str]) -> float:
    """F1 of two normalized token lists (SQuAD's f1_score on tokens)."""
    if not generated or not reference:
        return float(generated == reference)
    common = sum((Counter(generated) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(generated), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def f1(generated: str, reference: str) -> float:
    """SQuAD token F1 of two whole texts."""
    return token_f1(tokens(generated), tokens(reference))


def leading_f1(generated: str, reference: str, slack: int = LEAD_SLACK) -> float:
    """The best token F1 over the generation's leading spans (its first 1 .. len(reference) + slack
    normalized tokens) against the reference answer; the module docstring says why."""
    gen, ref = tokens(generated), tokens(reference)
    if not gen or not ref:
        return float(gen == ref)
    return max(token_f1(gen[:k], ref) for k in range(1, min(len(gen), len(ref) + slack) + 1))
