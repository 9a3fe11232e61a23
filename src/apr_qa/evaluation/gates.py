"""Test-stage gates (spec 9.1 T1-T5) and contract invariants I-1, I-5 as evidence records.

Levels follow spec 9.1: T1 and T4 fail, T2, T3 and T5 warn. I-1's expectation depends on the
variant: exact for f32 (and for a source evaluated as itself), the first greedy token for f16/bf16,
informational (warn) for quantized levels, whose greedy paths legitimately drift.
"""

from __future__ import annotations

from ..evidence import Evidence

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


def gate_t5_generation(consistency: dict) -> Evidence:
    ok = consistency["passed"]
    return Evidence("T5", "behavioural equivalence (spec 7.4 top-k agreement)", ok,
                    consistency["agreement_rate"], f">= {consistency['min_agreement']}", "warn",
                    "" if ok else f"{consistency['divergent_count']} of {consistency['total_prompts']} prompts diverge")


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


def gate_i5(check: dict) -> Evidence:
    n_bad = len(check["mismatches"])
    return Evidence("I-5", "tokenizer round trip (model vs reference tokenizer)", check["passed"],
                    f"{check['texts'] - n_bad}/{check['texts']} texts identical",
                    "identical ids and decoded text on every text", "fail",
                    "" if check["passed"] else f"first mismatch: {check['mismatches'][0]['text'][:40]!r} "
                    f"({', '.join(check['mismatches'][0]['problems'])})")
