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
one lost run already gives [-2.9, +7.3] points; at golden-v2's (110 prompts x 3 runs, the default
workflow) [-0.3, +0.9].

T7 (warn) passes when the interval's upper end is at most 5 points; T8 (fail) fails when its lower end
is above 10 points. An interval that spans a limit is inconclusive: a yellow warning that says so with
the interval and its resolution, never green. Band: green when T7 passes, red when T8 fails, yellow
otherwise (degradation demonstrably above 5 points, or not resolved).

Token F1 beside exact match (decoders, prompts with a `reference_answer`): each run's F1 against the
prompt's reference answer (evaluation/f1.py) is paired with the reference's run of the same prompt and
seed; per prompt the reference's mean F1 minus the variant's is one difference, and the F1 degradation
(in points of F1 x 100, so the same 5- and 10-point bands apply) is judged on the Student-t 95 % interval
of those differences over the prompts, exactly as exact match is. It is reported with the same sign
convention as exact match (reference minus variant: positive is a loss; the variant-minus-reference
difference is its negative), so both metrics read and are judged alike. Exact match says whether the
answer is right; F1 also sees answers that changed without crossing the pattern's line (a lost word, a
garbled option text), so the two fail in different places. T7 and T8 judge both: a gate fails when
either metric fails, passes only when both pass, and is inconclusive otherwise (verdict.worst). Where
no prompt has a reference answer (golden-v1) or the model is an encoder, F1 is not measured and the
gates judge exact match alone, as before.

Gate T9 (conversion correctness, evaluation/conversion_limits.py) judges the logits; this module judges accuracy.
"""

from __future__ import annotations

import math

from . import f1, stats, verdict

WARN_POINTS = 5.0    # degradation above this: yellow
FAIL_POINTS = 10.0   # degradation above this: red
CONFIDENCE = 0.95    # of the paired degradation's interval
INTERVAL_METHOD = ("paired: per item (prompt, or encoder paraphrase pair) the reference's minus the variant's "
                   "success share on the same runs and seeds; Student-t 95 % interval of their mean over the items")
F1_INTERVAL_METHOD = ("paired: per prompt with a reference answer the reference's minus the variant's mean token F1 "
                      "over the same runs and seeds; Student-t 95 % interval of their mean over the prompts")
SLOW_REQUEST_S = 5.0  # a median request over 5 s is yellow (gate T6): too slow to serve interactively


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
    return _interval_points([(i["reference"] - i["model"]) / _trials(i) for i in per_item], confidence)


def _interval_points(diffs: list[float], confidence: float) -> tuple[float, float] | None:
    """Student-t interval of the mean of per-item differences (fractions), in points, clipped to [-100, 100]."""
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


def f1_block(per_prompt: list[dict], confidence: float = CONFIDENCE) -> dict | None:
    """The token-F1 half of the Andon from paired_f1's items: both mean F1s, the F1 degradation (reference
    minus variant, points of F1 x 100) with its paired 95 % interval and resolution, T7's and T8's verdicts
    on F1 alone, and the prompts whose mean F1 fell or rose (largest change first). None without items."""
    if not per_prompt:
        return None
    runs = sum(i["runs"] for i in per_prompt)
    model = math.fsum(i["model"] * i["runs"] for i in per_prompt) / runs
    reference = math.fsum(i["reference"] * i["runs"] for i in per_prompt) / runs
    points = degradation_points(reference, model)
    ci = _interval_points([i["reference"] - i["model"] for i in per_prompt], confidence)
    return {
        "definition": f1.DEFINITION,
        "model": {"mean": round(model, 6), "n": runs}, "reference": {"mean": round(reference, 6), "n": runs},
        "degradation_points": points, "degradation_ci95": list(ci) if ci else None,
        "resolution_points": round((ci[1] - ci[0]) / 2, 6) if ci else None,
        "interval_method": F1_INTERVAL_METHOD, "items": len(per_prompt),
        "verdicts": {"T7": degradation_verdict(points, ci, WARN_POINTS),
                     "T8": degradation_verdict(points, ci, FAIL_POINTS)},
        "lost": sorted((i for i in per_prompt if i["reference"] > i["model"]),
                       key=lambda i: i["model"] - i["reference"]),
        "gained": sorted((i for i in per_prompt if i["model"] > i["reference"]),
                         key=lambda i: i["reference"] - i["model"]),
    }


def combined_verdict(exact_match: str, f1_verdict: str | None) -> str:
    """T7/T8 on both metrics: FAIL if either fails, PASS only if both pass, INCONCLUSIVE otherwise;
    exact match alone where F1 was not measured (None)."""
    return exact_match if f1_verdict is None else verdict.worst([exact_match, f1_verdict])


def accuracy_block(kind: str, model: dict, reference: dict, per_item: list[dict],
                   paired_runs: dict | None = None, f1_items: list[dict] | None = None) -> dict:
    """The evaluation's `accuracy_andon` section: both accuracies, the degradation with its paired 95 %
    interval and resolution (half-width), T7's and T8's verdicts, the band, and the items (prompts or
    paraphrase pairs) the variant lost or gained against the reference. `per_item`: {"id", "model",
    "reference", "runs" (decoders) or "comparisons" (encoders)}, successes per item. `f1_items`
    (decoders, paired_f1): the token-F1 half (`f1`, f1_block); `verdicts` and the band then combine both
    metrics (combined_verdict), `verdicts_by_metric` keeps each one's."""
    points = degradation_points(reference.get("value"), model.get("value"))
    ci = paired_interval(per_item) if points is not None else None
    exact = {"T7": degradation_verdict(points, ci, WARN_POINTS), "T8": degradation_verdict(points, ci, FAIL_POINTS)}
    f1_part = f1_block(f1_items) if f1_items else None
    verdicts = {g: combined_verdict(v, f1_part["verdicts"][g] if f1_part else None) for g, v in exact.items()}
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
        "verdicts_by_metric": {"exact_match": exact, "f1": f1_part["verdicts"] if f1_part else None},
        "f1": f1_part,
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


def paired_f1(model_records: list[dict], reference_records: list[dict]) -> list[dict]:
    """Per prompt with a reference answer, from run_generation's records: the variant's and the reference's
    mean token F1 over the runs both made (same prompt, same seed), and how many runs that is, in the order
    of the variant's records. Empty when no pair has an F1 on both sides (no reference answers, or records
    written before F1 existed)."""
    ref = {(r["prompt_id"], r["seed"]): r.get("f1") for r in reference_records}
    sums: dict[str, list[float]] = {}
    for r in model_records:
        ref_f1 = ref.get((r["prompt_id"], r["seed"]))
        if r.get("f1") is None or ref_f1 is None:
            continue
        acc = sums.setdefault(r["prompt_id"], [0.0, 0.0, 0])
        acc[0] += r["f1"]
        acc[1] += ref_f1
        acc[2] += 1
    return [{"id": pid, "model": round(m / n, 6), "reference": round(rf / n, 6), "runs": int(n)}
            for pid, (m, rf, n) in sums.items()]


def per_prompt_hits(records: list[dict]) -> dict[str, int]:
    """Matched runs per prompt id, from run_generation's records."""
    hits: dict[str, int] = {}
    for r in records:
        hits[r["prompt_id"]] = hits.get(r["prompt_id"], 0) + bool(r["matched"])
    return hits


def share_upper_bound(successes: int, n: int) -> float:
    """The upper end of the 95 % Wilson interval of successes/n: a share is judged below a limit only
    when even this is, so a few positions (a small model's near-ties) cannot fail a gate by one flip.
    A limit of 1.0 still fails on any miss (the bound of k < n is below 1)."""
    interval = stats.wilson_interval(successes, n)
    return float(interval[1]) if interval else 0.0
