"""Gate Q1: is the variant good enough, judged on real text? (evaluation/corpus.py measures it.)

MLPerf's inference rules accept a quantized model when its accuracy is at least 99 % of the reference
model's (the "99 %" target) or 99.9 % (the "high accuracy" target). Q1 applies that rule to the task
every decoder does, predicting the next token of real text: the variant's top-1 accuracy over the
corpus's scored tokens, divided by the reference's on the same tokens. 16-bit levels are held to 99.9 %
(they should be indistinguishable from the reference), quantized ones to 99 %; a tier may raise either
(`quality_target`).

The verdict comes from the ratio's 95 % interval (evaluation/verdict.py): pass when its lower end is
at the target, fail when its upper end is below it, inconclusive (a yellow warning, never green) when it
spans the target, i.e. when the corpus was too small to tell. Q1 is the quality verdict; whether the
conversion itself is correct is a separate question (T9, C-gates), so a correct but lossy 4-bit
conversion shows "converted correctly" and "not good enough for the target" side by side.
"""

from __future__ import annotations

from typing import Any

from ..evidence import Evidence
from ..dtypes import QUANT_LEVELS
from . import verdict

STANDARD_TARGET = 0.99        # MLPerf's 99 % of reference accuracy
HIGH_ACCURACY_TARGET = 0.999  # MLPerf's 99.9 % ("high accuracy")
# the source, and the levels whose registry entry asks for it (dtypes.QUANT_LEVELS: high_accuracy)
HIGH_ACCURACY_LEVELS = ("source", *(name for name, level in QUANT_LEVELS.items() if level.high_accuracy))


def quality_target(level: str, tier_target: float | None = None) -> float:
    """The level's own target, raised (never lowered) by the tier's."""
    own = HIGH_ACCURACY_TARGET if level in HIGH_ACCURACY_LEVELS else STANDARD_TARGET
    return max(own, tier_target) if tier_target is not None else own


def gate_q1(corpus: dict[str, Any], target: float) -> Evidence:
    ratio = corpus["next_token_accuracy"]
    name = "corpus quality: next-token accuracy on real text relative to the reference"
    threshold = f">= {100 * target:g} % of the reference's (95 % interval)"
    measured = {"ratio": ratio["value"], "ci_low": ratio.get("ci_low"), "ci_high": ratio.get("ci_high"),
                "tokens": corpus["tokens_scored"]}
    if ratio["value"] is None:
        return verdict.evidence("Q1", name, verdict.INCONCLUSIVE, measured, threshold, "fail",
                                "the reference predicts no token of the corpus correctly")
    outcome = verdict.judge(ratio["ci_low"], ratio["ci_high"], at_least=target)
    problems = "" if outcome == verdict.PASS else (
        f"{100 * ratio['value']:.2f} % of the reference's accuracy ({100 * ratio['accuracy']:.2f} % vs "
        f"{100 * ratio['accuracy_reference']:.2f} %), 95 % interval [{100 * ratio['ci_low']:.2f}, "
        f"{100 * ratio['ci_high']:.2f}] % over {corpus['tokens_scored']} tokens of {corpus['name']}"
        + (": the interval spans the target; score more tokens to decide" if outcome == verdict.INCONCLUSIVE
           else ""))
    return verdict.evidence("Q1", name, outcome, measured, threshold, "fail", problems,
                            {"target": target, "resolution": ratio["resolution"]})
