"""A statistic with a confidence interval, judged against a limit: pass, fail or inconclusive.

A quality gate is decided by where the statistic's 95 % interval lies, never by its point estimate alone:
- pass: the whole interval is on the good side of the limit: the data show the variant is good enough;
- fail: the whole interval is beyond the limit: the data show it is not;
- inconclusive: the interval spans the limit: the data cannot decide. It is a warning (yellow), never a
  pass: a certificate must not say green about what it did not resolve. The message says so and gives the
  interval, so a user knows to measure more (more corpus tokens, more prompts or runs).

The interval's half-width is the statistic's resolution; the evaluation JSON records it beside every
statistic a gate decides on.
"""

from __future__ import annotations

from typing import Any

from ..evidence import Evidence

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


def judge(low: float, high: float, *, at_most: float | None = None, at_least: float | None = None) -> str:
    """PASS / FAIL / INCONCLUSIVE for the interval [low, high] against one limit: `at_most` (the statistic
    must not exceed it, e.g. a KL divergence) or `at_least` (it must reach it, e.g. an agreement rate)."""
    if (at_most is None) == (at_least is None):
        raise ValueError("give exactly one of at_most and at_least")
    if not low <= high:
        raise ValueError(f"not an interval: [{low}, {high}]")
    if at_most is not None:
        return PASS if high <= at_most else FAIL if low > at_most else INCONCLUSIVE
    assert at_least is not None
    return PASS if low >= at_least else FAIL if high < at_least else INCONCLUSIVE


def worst(verdicts: list[str]) -> str:
    """FAIL if any failed, else INCONCLUSIVE if any could not decide, else PASS."""
    return FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS


def evidence(gate_id: str, name: str, verdict: str, measured: Any, threshold: Any, fail_level: str,
             problems: str = "", details: dict[str, Any] | None = None) -> Evidence:
    """The gate's record: passed only on PASS; a FAIL at `fail_level`, an INCONCLUSIVE as a warning whose
    message starts with "inconclusive". `details["verdict"]` keeps the three-way verdict."""
    details = {**(details or {}), "verdict": verdict}
    if verdict == PASS:
        return Evidence(gate_id, name, True, measured, threshold, fail_level, "", details)
    if verdict == FAIL:
        return Evidence(gate_id, name, False, measured, threshold, fail_level, problems, details)
    return Evidence(gate_id, name, False, measured, threshold, "warn",
                    f"inconclusive: {problems}" if problems else "inconclusive", details)
