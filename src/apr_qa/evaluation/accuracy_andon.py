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
A variant that does better than its reference has negative degradation.

The bands are judged on the degradation's 95 % interval, never on its point value (evaluation/verdict.py):
with golden-v1's 9 prompts x 5 runs each accuracy alone has an interval some 25 points wide, so a point
value inside 5 points says nothing. The interval is the paired one: each item (a prompt: its `runs`
seeded runs, made by the variant and the reference with the same seeds; encoders: a paraphrase pair and
its comparisons with every unrelated pair) gives one difference, reference share minus variant share,
and the interval is the Student-t interval of the mean of those differences over the items. Why this
one: (1) it is paired, so what both models do alike cancels run by run and a variant identical to its
reference gets exactly [0, 0]; (2) the items, not the runs, are the independent units: the runs of one
prompt share its difficulty, so an interval over the 45 runs as if independent (Newcombe's or Tango's
for paired proportions) would be too narrow where a whole prompt flips, and too wide (about 8 points
at 0 of 45 discordant) where nothing changed; (3) with a handful of prompts the t quantile (2.31 at
9 prompts) keeps the interval honest where a bootstrap over 9 prompts would be too narrow; (4) it is
closed-form and deterministic. Its half-width is the measurement's resolution: at golden-v1's size
one lost run already gives [-2.9, +7.3] points.

T7 (warn) passes when the interval's upper end is at most 5 points; T8 (fail) fails when its lower end
is above 10 points. An interval that spans a limit is inconclusive: a yellow warning that says so with
the interval and its resolution, never green. Band: green when T7 passes, red when T8 fails, yellow
otherwise (degradation demonstrably above 5 points, or not resolved).

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

from . import stats, verdict

WARN_POINTS = 5.0    # degradation above this: yellow
FAIL_POINTS = 10.0   # degradation above this: red
CONFIDENCE = 0.95    # of the paired degradation's interval
INTERVAL_METHOD = ("paired: per item (prompt, or encoder paraphrase pair) the reference's minus the variant's "
                   "success share on the same runs and seeds; Student-t 95 % interval of their mean over the items")
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


def _trials(item: dict) -> int:
    """How many paired trials an item stands for: a prompt's runs, an encoder pair's comparisons."""
    return int(item["runs"] if "runs" in item else item["comparisons"])


def paired_interval(per_item: list[dict], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The 95 % interval of the paired degradation in points (INTERVAL_METHOD), clipped to [-100, 100];
    None when fewer than two items can be compared (no spread between items to estimate)."""
    if any(_trials(i) <= 0 for i in per_item):
        return None
    diffs = [(i["reference"] - i["model"]) / _trials(i) for i in per_item]
    interval = stats.t_interval(diffs, confidence)
    if interval is None:
        return None
    lo, hi = (max(-100.0, min(100.0, round(100.0 * float(v), 6))) for v in interval)
    return (lo, hi)


def degradation_verdict(points: float | None, ci: list[float] | tuple[float, float] | None, limit: float) -> str:
    """verdict.PASS / FAIL / INCONCLUSIVE of "degradation at most `limit` points": judged on the interval;
    FAIL when nothing was measured, INCONCLUSIVE when no interval could be formed."""
    if points is None:
        return verdict.FAIL
    if ci is None:
        return verdict.INCONCLUSIVE
    return verdict.judge(ci[0], ci[1], at_most=limit)


def band(warn_verdict: str, fail_verdict: str) -> str:
    """green (T7 passes) / red (T8 fails) / yellow (anything between, unresolved included)."""
    if fail_verdict == verdict.FAIL:
        return "red"
    return "green" if warn_verdict == verdict.PASS else "yellow"


def accuracy_block(kind: str, model: dict, reference: dict, per_item: list[dict],
                   paired_runs: dict | None = None) -> dict:
    """The evaluation's `accuracy_andon` section: both accuracies, the degradation with its paired 95 %
    interval and resolution (half-width), T7's and T8's verdicts, the band, and the items (prompts or
    paraphrase pairs) the variant lost or gained against the reference. `per_item`: {"id", "model",
    "reference", "runs" (decoders) or "comparisons" (encoders)}, successes per item."""
    points = degradation_points(reference.get("value"), model.get("value"))
    ci = paired_interval(per_item) if points is not None else None
    verdicts = {"T7": degradation_verdict(points, ci, WARN_POINTS), "T8": degradation_verdict(points, ci, FAIL_POINTS)}
    return {
        "definition": ("share of the sampled golden-prompt runs matching the expected pattern, variant and "
                       "reference on the same prompts and seeds" if kind == "decoder" else
                       "share of (paraphrase, unrelated) pair combinations ordered correctly by cosine"),
        "model": model, "reference": reference, "degradation_points": points,
        "degradation_ci95": list(ci) if ci else None,
        "resolution_points": round((ci[1] - ci[0]) / 2, 6) if ci else None,
        "interval_method": INTERVAL_METHOD, "items": len(per_item),
        "paired_runs": paired_runs,
        "verdicts": verdicts, "band": band(verdicts["T7"], verdicts["T8"]),
        "warn_above_points": WARN_POINTS, "fail_above_points": FAIL_POINTS,
        "lost": [i for i in per_item if i["reference"] > i["model"]],
        "gained": [i for i in per_item if i["model"] > i["reference"]],
    }


def paired_run_outcomes(model_records: list[dict], reference_records: list[dict]) -> dict:
    """Run by run (same prompt, same seed): how many runs both models got right or wrong alike, how many
    only the reference got right (lost), how many only the variant (gained)."""
    ref = {(r["prompt_id"], r["seed"]): bool(r["matched"]) for r in reference_records}
    pairs = [(bool(r["matched"]), ref[(r["prompt_id"], r["seed"])]) for r in model_records
             if (r["prompt_id"], r["seed"]) in ref]
    return {"pairs": len(pairs), "lost": sum(r and not m for m, r in pairs),
            "gained": sum(m and not r for m, r in pairs)}


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
