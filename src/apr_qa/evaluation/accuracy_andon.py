"""Accuracy-degradation Andon: a variant's accuracy against its reference's on the same prompts.

Accuracy (decoders) is the share of the sampled golden-prompt runs whose continuation matches the
prompt's expected pattern: every prompt `runs` times, run i seeded `seed + i`. The reference (the
source weights at float32) makes exactly the same runs with the same seeds, so the two are paired:
where the two next-token distributions agree, the same seed draws the same token, and what differs
between the two accuracies comes from the weights, not from sampling luck. Encoders have no
generation: their accuracy is the share of (paraphrase pair, unrelated pair) combinations that the
embeddings order correctly (the paraphrase scores higher), over the golden set's pairs.

Degradation = reference accuracy - variant accuracy, in percentage points of the run count
(absolute, not relative: relative to a low reference accuracy one flipped run would look huge).
A variant that does better than its reference has negative degradation. Bands: <= 5 points green,
more than 5 and at most 10 yellow (gate T7, warn), more than 10 red (gate T8, fail).

Per-level logit limits (gate T9, decoders): mean KL(reference || variant) per position and the
share of positions whose top-1 token is the reference's, teacher-forced on the golden prompts
(judged by the upper end of its 95 % Wilson interval, so a handful of positions cannot fail it by one
near-tie).
Calibrated on SmolLM2-135M-Instruct (models/derived) and golden-v1 (215 prompt positions); the
measured value is beside each limit (docs/accuracy-andon.md has the full table). The limits leave
room for other models (small models are the most sensitive to quantization, so one of 135M
parameters is near the worst case) and catch a broken quantizer, which lands orders of magnitude
beyond (a wrong block scale gives KLD >> 1 and same-top-1 near chance).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import stats

WARN_POINTS = 5.0    # degradation above this: yellow
FAIL_POINTS = 10.0   # degradation above this: red
SLOW_REQUEST_S = 5.0  # a median request over 5 s is yellow (gate T6): too slow to serve interactively


@dataclass(frozen=True)
class LogitLimits:
    max_mean_kld: float
    min_same_top1: float


# level -> limits. Measured on SmolLM2-135M-Instruct vs its float32 source (golden-v1, 215 positions):
LOGIT_LIMITS: dict[str, LogitLimits] = {
    "source": LogitLimits(1e-9, 1.0),    # the reference itself: identical logits
    "f32": LogitLimits(1e-9, 1.0),       # measured 0 and 100 %: same values, same kernels
    "f16": LogitLimits(1e-4, 0.99),      # measured 2.3e-6, 100 %
    "bf16": LogitLimits(1e-3, 0.98),     # measured 5.0e-5, 100 %
    "q8_0": LogitLimits(0.01, 0.95),     # measured 1.5e-3, 98.1 %
    "q6_k": LogitLimits(0.1, 0.85),      # measured 0.021, 94.0 %
    "q4_k_m": LogitLimits(0.1, 0.85),    # measured 0.020, 94.0 %
    "q4_k": LogitLimits(0.25, 0.80),     # measured 0.062, 88.4 %
    "q4_0": LogitLimits(1.0, 0.55),      # measured 0.39, 68.4 %
}


def degradation_points(reference: float | None, model: float | None) -> float | None:
    """Reference minus model accuracy (fractions in [0, 1]) in percentage points; None if either is unknown."""
    if reference is None or model is None:
        return None
    return round(100.0 * (reference - model), 6)


def band(points: float | None) -> str:
    """green / yellow / red for a degradation in percentage points (None: red, nothing was measured)."""
    if points is None or points > FAIL_POINTS:
        return "red"
    return "yellow" if points > WARN_POINTS else "green"


def accuracy_block(kind: str, model: dict, reference: dict, per_item: list[dict]) -> dict:
    """The evaluation's `accuracy_andon` section: both accuracies, the degradation, its band, and
    the items (prompts or pair combinations) the variant lost or gained against the reference."""
    points = degradation_points(reference.get("value"), model.get("value"))
    return {
        "definition": ("share of the sampled golden-prompt runs matching the expected pattern, variant and "
                       "reference on the same prompts and seeds" if kind == "decoder" else
                       "share of (paraphrase, unrelated) pair combinations ordered correctly by cosine"),
        "model": model, "reference": reference, "degradation_points": points, "band": band(points),
        "warn_above_points": WARN_POINTS, "fail_above_points": FAIL_POINTS,
        "lost": [i for i in per_item if i["reference"] > i["model"]],
        "gained": [i for i in per_item if i["model"] > i["reference"]],
    }


def per_prompt_hits(records: list[dict]) -> dict[str, int]:
    """Matched runs per prompt id, from run_generation's records."""
    hits: dict[str, int] = {}
    for r in records:
        hits[r["prompt_id"]] = hits.get(r["prompt_id"], 0) + bool(r["matched"])
    return hits


def limits_for(level: str) -> LogitLimits | None:
    return LOGIT_LIMITS.get(level)


def share_upper_bound(successes: int, n: int) -> float:
    """The upper end of the 95 % Wilson interval of successes/n: a share is judged below a limit only
    when even this is, so a few positions (a small model's near-ties) cannot fail a gate by one flip.
    A limit of 1.0 still fails on any miss (the bound of k < n is below 1)."""
    interval = stats.wilson_interval(successes, n)
    return float(interval[1]) if interval else 0.0
