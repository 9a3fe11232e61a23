"""Test-stage gates T1-T5, the accuracy Andon (T6-T9) and contract invariants I-1, I-5.

Levels (docs/gates.md): T1 and T4 fail, T2, T3 and T5 warn. T5 gates encoders only (the minimum
embedding cosine, calibrated per level); for decoders the top-k agreement of the next-token logits is
recorded as information (`logit_consistency.top_k_agreement`), not gated: its "logits within 0.1"
half asks every quantized level for the precision of f16 (SmolLM2 measured 0 to 0.11 at every quantized
level, q8_0 included), so it warned on every healthy variant, and an alarm that always fires is no
alarm. What it was meant to catch, a next-token distribution that moved more than the level allows, is
T9's job: mean KLD and same-top-1 over every prompt position (not only the last), with limits calibrated
per level, which a broken quantizer (a wrong block scale, a transposed projection) fails by orders of
magnitude. The accuracy Andon (accuracy_andon.py): T6 median latency per request over 5 s (warn), T7
accuracy more than 5 points below the reference's (warn: yellow), T8 more than 10 points below (fail:
red), both judged on the paired degradation's 95 % interval (inconclusive: a yellow warning) of exact
match and, where the prompts have reference answers, of token F1 (fail if either fails, pass only if
both pass), T9 the level's limits on mean KLD and same-top-1 (fail). I-1's expectation depends on the
variant: exact for f32 (and for a source evaluated as itself), the first greedy token for f16/bf16,
informational (warn) for quantized levels, whose greedy paths legitimately drift. I-5 checks the tokenizer round
trip and the first generated token (a first-token mismatch between formats means a broken conversion).
"""

from __future__ import annotations

from ..evidence import Evidence
from . import accuracy_andon, stats, verdict

FULL_PRECISION = ("source", "f32")
HALF_PRECISION = ("f16", "bf16")


def gate_t1(produced: int, total: int, error: str | None = None) -> Evidence:
    ok = error is None and total > 0 and produced == total
    msg = error or ("" if ok else f"{total - produced} of {total} runs produced no tokens")
    return Evidence("T1", "inference runs (output generated)", ok, f"{produced}/{total}",
                    "every run produces output", "fail", msg)


def gate_t2(max_latency_s: float | None, timeouts: int, timeout_s: float) -> Evidence:
    ok = max_latency_s is not None and timeouts == 0 and max_latency_s < timeout_s
    msg = "" if ok else (f"{timeouts} runs hit the timeout" if timeouts else "slowest run reached the timeout")
    return Evidence("T2", "latency bounded", ok, max_latency_s, f"< {timeout_s} s per prompt", "warn", msg)


def gate_t3(peak_bytes: int, limit_bytes: int) -> Evidence:
    ok = peak_bytes < limit_bytes
    return Evidence("T3", "memory bounded", ok, peak_bytes, f"< {limit_bytes} bytes", "warn",
                    "" if ok else f"peak {peak_bytes / 2**30:.2f} GiB")


def gate_t4_generation(sanity: dict | None) -> Evidence:
    if not sanity or not sanity.get("n"):
        return Evidence("T4", "accuracy threshold (sanity prompts)", False, None, "> 0.5", "fail",
                        "the golden set has no sanity prompts")
    ok = sanity["value"] > 0.5
    return Evidence("T4", "accuracy threshold (sanity prompts)", ok, sanity["value"], "> 0.5", "fail",
                    "" if ok else f"{sanity['successes']}/{sanity['n']} sanity runs matched")


def gate_t4_embedding(sanity: dict) -> Evidence:
    if sanity["passed"] is None:
        return Evidence("T4", "similarity sanity (paraphrases above unrelated pairs)", False, None, "> 0",
                        "fail", "the golden set has no embedding pairs")
    return Evidence("T4", "similarity sanity (paraphrases above unrelated pairs)", sanity["passed"],
                    sanity["margin"], "margin > 0", "fail",
                    "" if sanity["passed"] else "an unrelated pair scores at least as high as a paraphrase pair")


def gate_t5_embedding(consistency: dict, min_cosine: float) -> Evidence:
    ok = consistency["cosine_min"] >= min_cosine
    return Evidence("T5", "behavioural equivalence (embedding cosine vs reference)", ok,
                    consistency["cosine_min"], f">= {min_cosine}", "warn",
                    "" if ok else f"worst text: {consistency['worst']['text'][:40]!r}")


def gate_i1_generation(per_prompt: dict[str, dict], level_name: str) -> Evidence:
    n = len(per_prompt)
    identical = sum(r["identical"] for r in per_prompt.values())
    first_ok = sum(r["first_token_identical"] for r in per_prompt.values())
    divergences = [r["first_divergence"] for r in per_prompt.values() if r["first_divergence"] is not None]
    measured = (f"{identical}/{n} identical, first token identical {first_ok}/{n}, "
                f"earliest divergence {min(divergences) if divergences else None}")
    if level_name in HALF_PRECISION:
        ok, threshold, level = first_ok == n, "first greedy token identical on every prompt", "fail"
    else:
        ok, threshold = identical == n, "identical greedy tokens on every prompt"
        level = "fail" if level_name in FULL_PRECISION else "warn"
    return Evidence("I-1", "round-trip identity (greedy generation vs reference)", ok, measured, threshold,
                    level, "" if ok else f"{n - identical} prompts diverge from the reference")


def gate_i1_embedding(consistency: dict, level_name: str, min_cosine: float) -> Evidence:
    if level_name in FULL_PRECISION:
        ok = consistency["max_abs_diff"] == 0.0
        return Evidence("I-1", "round-trip identity (embeddings vs reference)", ok,
                        consistency["max_abs_diff"], "max |difference| == 0", "fail",
                        "" if ok else "embeddings differ from the reference at full precision")
    ok = consistency["cosine_min"] >= min_cosine
    return Evidence("I-1", "round-trip identity (embeddings vs reference)", ok, consistency["cosine_min"],
                    f"cosine >= {min_cosine}", "fail" if level_name in HALF_PRECISION else "warn",
                    "" if ok else "embeddings drift beyond the variant's tolerance")


def gate_i5(check: dict, first_token: tuple[int, int] | None = None, level_name: str = "source") -> Evidence:
    """Tokenizer round trip on every text, and the first greedy token: identical on every prompt at
    full and half precision. At quantized levels the first token is recorded, not gated: one position
    per prompt cannot resolve a quantized level's top-1 agreement, which T9 (conversion) and Q1 (quality)
    judge over every position."""
    n_bad = len(check["mismatches"])
    problems = []
    if not check["passed"]:
        problems.append(f"first mismatch: {check['mismatches'][0]['text'][:40]!r} "
                        f"({', '.join(check['mismatches'][0]['problems'])})")
    measured = f"{check['texts'] - n_bad}/{check['texts']} texts identical"
    threshold = "identical ids and decoded text on every text"
    if first_token is not None:
        same, n = first_token
        measured += f", first generated token identical {same}/{n}"
        if level_name in FULL_PRECISION + HALF_PRECISION:
            threshold += "; first generated token identical on every prompt"
            if same < n:
                problems.append(f"first generated token differs on {n - same} of {n} prompts")
        else:
            threshold += " (first generated token: recorded; T9 and Q1 judge a quantized level's distribution)"
    return Evidence("I-5", "tokenizer round trip (model vs reference tokenizer, first token)", not problems,
                    measured, threshold, "fail", "; ".join(problems))


def gate_t6_latency(median_s: float | None, what: str = "request") -> Evidence:
    limit = accuracy_andon.SLOW_REQUEST_S
    ok = median_s is not None and median_s <= limit
    return Evidence("T6", f"latency per {what} (median) within {limit:g} s", ok, median_s, f"<= {limit:g} s",
                    "warn", "" if ok else f"median {what} took {median_s} s")


def _metric_problems(block: dict, limit: float, outcome: str, what: str) -> str:
    """One metric's account for T7/T8: its degradation, interval, resolution, where the interval lies
    against `limit`, and the items it lost most on."""
    points, ci, hw, items = (block["degradation_points"], block.get("degradation_ci95"), block.get("resolution_points"),
                             block.get("items"))
    lost = ", ".join(i["id"] for i in block["lost"][:3])
    lost_text = f"; lost on {lost}" if lost else ""
    if points is None:
        return f"{what} not measured (variant or reference)"
    if ci is None:
        return (f"degradation {points:.1f} points, but {items} item(s) give no interval of the paired "
                f"difference{lost_text}")
    where = {verdict.FAIL: f"entirely above {limit:g} points",
             verdict.INCONCLUSIVE: f"spans the {limit:g}-point limit: more prompts or runs are needed to decide"}
    return (f"degradation {points:.1f} points, 95 % interval [{ci[0]:.1f}, {ci[1]:.1f}] "
            f"(resolution +-{hw:.1f} points over {items} items) {where.get(outcome, '')}".rstrip() + lost_text)


def _accuracy_gate(gate_id: str, limit: float, level: str, block: dict) -> Evidence:
    """T7/T8 on the paired degradation's 95 % interval (accuracy_andon): pass when its upper end is
    within `limit` points, fail when its lower end is beyond, inconclusive (a warning) when it spans.
    Where the block has token F1 (decoders, prompts with reference answers) both metrics are judged so:
    fail if either fails, pass only if both pass, inconclusive otherwise."""
    points, ci, hw = block["degradation_points"], block.get("degradation_ci95"), block.get("resolution_points")
    exact = accuracy_andon.degradation_verdict(points, ci, limit)
    f1 = block.get("f1")
    f1_outcome = accuracy_andon.degradation_verdict(f1["degradation_points"], f1.get("degradation_ci95"), limit) \
        if f1 else None
    outcome = accuracy_andon.combined_verdict(exact, f1_outcome)
    problems = _metric_problems(block, limit, exact, "accuracy")
    measured = {"degradation_points": points, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None,
                "resolution_points": hw}
    bound = f"{'pass: upper end' if gate_id == 'T7' else 'fail: lower end beyond'} {limit:g}; spanning it: inconclusive"
    threshold = f"95 % interval of the paired degradation within {limit:g} points below the reference ({bound})"
    name = f"accuracy within {limit:g} points of the reference"
    if f1:
        problems = (f"exact match ({exact}): {problems}; token F1 ({f1_outcome}): "
                    f"{_metric_problems(f1, limit, f1_outcome or '', 'token F1')}")
        f1_ci = f1.get("degradation_ci95")
        measured.update({"f1_degradation_points": f1["degradation_points"],
                         "f1_ci_low": f1_ci[0] if f1_ci else None, "f1_ci_high": f1_ci[1] if f1_ci else None,
                         "f1_resolution_points": f1.get("resolution_points")})
        threshold = (f"95 % intervals of the paired degradations of exact match and of token F1 both within {limit:g} "
                     f"points below the reference ({bound}; fail if either fails, pass only if both pass)")
        name = f"accuracy (exact match and token F1) within {limit:g} points of the reference"
    return verdict.evidence(gate_id, name, outcome, measured, threshold, level, problems,
                            {"band": block["band"], "lost": block["lost"], "gained": block["gained"],
                             "model_accuracy": block["model"], "reference_accuracy": block["reference"],
                             "definition": block["definition"], "degradation_ci95": ci,
                             "resolution_points": hw, "limit_points": limit,
                             "interval_method": block.get("interval_method"),
                             "paired_runs": block.get("paired_runs"),
                             "verdicts_by_metric": {"exact_match": exact, "f1": f1_outcome},
                             **({"f1": f1} if f1 else {})})


def gate_t7_accuracy(block: dict) -> Evidence:
    return _accuracy_gate("T7", accuracy_andon.WARN_POINTS, "warn", block)


def gate_t8_accuracy(block: dict) -> Evidence:
    return _accuracy_gate("T8", accuracy_andon.FAIL_POINTS, "fail", block)


def gate_t9_logits(kld: dict, level_name: str) -> Evidence:
    """Conversion correctness (evaluation/conversion_limits.py): the mean KLD's clustered 95 % interval
    against one order of magnitude above llama.cpp's published figure for the level."""
    from . import conversion_limits, verdict

    limit = conversion_limits.max_mean_kld(level_name)
    mean, same = kld["kld"]["mean"], kld["same_top1"]["rate"]
    interval = stats.wilson_interval(kld["same_top1"]["count"], kld["positions"])
    same_resolution = round((interval[1] - interval[0]) / 2, 6) if interval else None
    ci = kld["kld"].get("mean_ci95")
    measured = {"mean_kld": mean, "mean_kld_ci95": ci, "same_top1": same, "positions": kld["positions"],
                "prompts": kld.get("sequences"), "same_top1_resolution": same_resolution}
    details = {"level": level_name, "basis": conversion_limits.basis(level_name), "kld_p99": kld["kld"].get("p99"),
               "kld_max": kld["kld"]["max"], "same_top1_ci95": list(interval) if interval else None,
               "kld_resolution": round((ci[1] - ci[0]) / 2, 9) if ci else None}
    name = "converted correctly: logit divergence within an order of magnitude of the level's published figure"
    if limit is None:
        return verdict.evidence("T9", name, verdict.FAIL, measured, f"limit for {level_name}", "fail",
                                f"no limit for level {level_name!r}", details)
    # pass: the mean's clustered interval is within the limit; fail: the typical prompt's mean KLD (geometric
    # interval over prompts) is beyond it. A mean KLD is heavy-tailed: one diverging prompt widens the
    # arithmetic interval below zero while every prompt diverges, which is why a fail is judged on the typical one
    typical = kld["kld"].get("sequence_geometric_ci95")
    high = ci[1] if ci else mean  # one prompt: no spread to estimate, the point value decides
    low = typical[0] if typical else mean
    judged = verdict.PASS if high <= limit else verdict.FAIL if low > limit else verdict.INCONCLUSIVE
    measured["typical_prompt_kld_ci95"] = typical
    problem = (f"mean KLD {mean:.3g} (95 % interval up to {high:.3g}; the typical prompt's at least {low:.3g}) vs at "
               f"most {limit:g} ({conversion_limits.basis(level_name)})")
    return verdict.evidence("T9", name, judged, measured, {"max_mean_kld": limit}, "fail",
                            problem if judged != verdict.PASS else "", details)
