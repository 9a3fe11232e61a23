"""MQS arithmetic pinned on hand-computed cases (expected numbers written by hand, arithmetic in comments)."""

from __future__ import annotations

import pytest

from apr_qa.certify.mqs import grade, normalize, score, status
from apr_qa.evidence import Evidence


def rec(cat: str, passed: bool, outcome: str | None = None, gid: str | None = None) -> Evidence:
    details = {"category": cat}
    if outcome:
        details["outcome"] = outcome
    return Evidence(gid or f"{cat}:t", "test", passed, None, None, "fail", "", details)


def many(cat: str, passed: int, failed: int) -> list[Evidence]:
    return [rec(cat, True) for _ in range(passed)] + [rec(cat, False) for _ in range(failed)]


def test_mixed_case_with_timeout():
    records = (many("QUAL", 3, 1) + many("PERF", 1, 2) + many("COMP", 2, 0) + [rec("EDGE", False, "timeout")]
               + many("REGR", 2, 1) + [rec("QUAL", True, gid="G1"), rec("QUAL", True, gid="G4")])
    s = score(records)
    # QUAL 3/4*200 = 150; PERF 1/3*150 = 50; STAB no tests: not measured; COMP 2/2*150 = 150;
    # EDGE 0/1 = 0; REGR 2/3*150 = 100  -> 450 of the measured 800, scaled: 450 * 1000 / 800 = 562.5
    # -> 563 (half away from zero); one timeout -10 -> 553.
    assert {k: c.points for k, c in s.categories.items()} == {
        "QUAL": 150, "PERF": 50, "STAB": None, "COMP": 150, "EDGE": 0, "REGR": 100}
    assert s.not_measured == ["STAB"] and s.categories["STAB"].label() == "not measured"
    assert (s.timeouts, s.crashes, s.penalty) == (1, 0, 10)
    assert s.raw == 553
    # 100 * ln(1 + 9*0.553) / ln(10) = 100 * ln(5.977) / ln(10) = 100 * 1.787919 / 2.302585 = 77.6483
    assert s.normalized == pytest.approx(77.6483, abs=1e-4)
    assert s.grade == "C+"              # 77 <= 77.65 < 80
    assert s.status == "BLOCKED"        # raw 553 < 700
    assert s.qualifies() and not s.is_production_ready()  # normalized >= 70 but < 90
    d = s.to_dict()
    assert d["not_measured"] == ["STAB"] and d["categories"]["STAB"]["measured"] is False
    assert d["categories"]["STAB"]["points"] is None
    # tests: QUAL 4 + PERF 3 + COMP 2 + EDGE 1 + REGR 3 = 13; passed 3 + 1 + 2 + 0 + 2 = 8 (G1, G4 are gateways)
    assert s.tests == 13 and s.tests_passed == 8


def test_half_rounds_away_from_zero():
    # QUAL 1/16 * 200 = 12.5 -> 13 (half away from zero; Python's round() would give 12).
    # Nothing else is measured: 13 of the measured 200, scaled: 13 * 1000 / 200 = 65.
    s = score(many("QUAL", 1, 15))
    assert s.categories["QUAL"].points == 13
    assert s.raw == 65
    # 100 * ln(1 + 9*0.065) / ln(10) = 100 * ln(1.585) / ln(10) = 100 * 0.460584 / 2.302585 = 20.0029
    assert s.normalized == pytest.approx(20.0029, abs=1e-4)
    assert s.grade == "F" and s.status == "BLOCKED"


def test_untested_categories_are_not_full_marks():
    """A smoke-like certification: QUAL half passed, nothing tests EDGE, STAB, COMP, PERF or REGR.
    Counting the untested categories as full marks would give 100 + 800 = 900 (CERTIFIED); not
    measured, it is 100 of the measured 200: 500, BLOCKED."""
    s = score(many("QUAL", 1, 1))
    assert s.raw == 500 and s.status == "BLOCKED"
    assert s.not_measured == ["PERF", "STAB", "COMP", "EDGE", "REGR"]
    # the same QUAL result with EDGE measured and failed scores lower still: (100 + 0) * 1000 / 350 = 285.7
    assert score(many("QUAL", 1, 1) + many("EDGE", 0, 1)).raw == 286


def test_no_tests_measure_nothing_and_crash_penalty_with_g3_zeroes():
    # nothing measured: raw 0, never full marks
    assert score([]).raw == 0 and score([]).grade == "F" and score([]).status == "BLOCKED"
    assert score([]).not_measured == ["QUAL", "PERF", "STAB", "COMP", "EDGE", "REGR"]
    # A crashed scenario: G3 fails even without a G3 record, so the score is zeroed, not 1000 - 20.
    s = score([rec("QUAL", False, "crash")])
    assert not s.gateways_passed
    assert [g.id for g in s.gateways if not g.passed] == ["G3"]
    assert (s.raw, s.normalized, s.grade, s.status) == (0, 0.0, "F", "BLOCKED")


def test_any_gateway_failure_zeroes():
    for gid in ("G0", "G1", "G2", "G3", "G4"):
        s = score(many("QUAL", 10, 0) + [rec("QUAL", False, gid=gid)])
        assert s.raw == 0 and s.status == "BLOCKED" and not s.qualifies(), gid
        assert s.penalty == 1000


def test_penalties_only_when_gateways_hold():
    # Two timeouts in STAB: STAB 3/5*200 = 120; the other categories one passed test each, 800 -> 920 - 20 = 900.
    others = [rec(c, True) for c in ("QUAL", "PERF", "COMP", "EDGE", "REGR")]
    s = score(others + many("STAB", 3, 0) + [rec("STAB", False, "timeout"), rec("STAB", False, "timeout")])
    assert s.raw == 900 and s.penalty == 20
    assert s.tier_passed(900) and not s.tier_passed(901)
    # skipped scenarios are not tests: a category of skips only is not measured
    assert score(others + [rec("STAB", False, "skip")]).raw == 1000
    assert score(others + [rec("STAB", False, "skip")]).not_measured == ["STAB"]


def test_category_from_gate_id():
    records = [Evidence("C6", "params", False, 1, 2, "halt"), Evidence("T2", "latency", True, 1, 2, "warn"),
               Evidence("I-5", "tokenizer", True, 1, 1, "fail"), Evidence("D4", "sha", True, 1, 1, "halt"),
               Evidence("X9", "unknown", True, 1, 1, "fail")]
    s = score(records)
    # COMP 0/1 = 0; PERF 1/1 = 150; REGR 1/1 = 150; STAB 1/1 = 200; QUAL 1/1 = 200; EDGE not measured
    # -> 700 of the measured 850, scaled: 700 * 1000 / 850 = 823.5 -> 824
    assert {k: (c.passed, c.total) for k, c in s.categories.items()} == {
        "QUAL": (1, 1), "PERF": (1, 1), "STAB": (1, 1), "COMP": (0, 1), "EDGE": (0, 0), "REGR": (1, 1)}
    assert s.raw == 824 and s.status == "PROVISIONAL"


@pytest.mark.parametrize("value,expected", [
    (100, "A+"), (97, "A+"), (96.99, "A"), (93, "A"), (90, "A-"), (89.99, "B+"), (87, "B+"), (83, "B"),
    (82.99, "B-"), (80, "B-"), (77, "C+"), (73, "C"), (70, "C-"), (69.99, "D+"), (63, "D"), (60, "D-"),
    (59.99, "F"), (0, "F")])
def test_grade_edges(value, expected):
    assert grade(value) == expected


def test_normalize_and_status_edges():
    assert normalize(0) == 0.0 and normalize(1000) == pytest.approx(100.0)
    # 100 * ln(1 + 9*0.7) / ln(10) = 100 * ln(7.3) / ln(10) = 100 * 1.987874 / 2.302585 = 86.3323
    assert normalize(700) == pytest.approx(86.3323, abs=1e-4)
    # 100 * ln(9.1) / ln(10) = 100 * 2.208274 / 2.302585 = 95.9041
    assert normalize(900) == pytest.approx(95.9041, abs=1e-4)
    assert [status(r, True) for r in (699, 700, 849, 850)] == ["BLOCKED", "PROVISIONAL", "PROVISIONAL", "CERTIFIED"]
    assert status(1000, False) == "BLOCKED"
