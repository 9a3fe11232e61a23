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
    # QUAL 3/4*200 = 150; PERF 1/3*150 = 50; STAB no tests = 200; COMP 2/2*150 = 150;
    # EDGE 0/1 = 0; REGR 2/3*150 = 100  -> 650; one timeout -10 -> 640.
    assert {k: c.points for k, c in s.categories.items()} == {
        "QUAL": 150, "PERF": 50, "STAB": 200, "COMP": 150, "EDGE": 0, "REGR": 100}
    assert (s.timeouts, s.crashes, s.penalty) == (1, 0, 10)
    assert s.raw == 640
    # 100 * ln(1 + 9*0.64) / ln(10) = 100 * ln(6.76) / ln(10) = 100 * 1.911023 / 2.302585 = 82.9947
    assert s.normalized == pytest.approx(82.9947, abs=1e-4)
    assert s.grade == "B-"              # 80 <= 82.99 < 83
    assert s.status == "BLOCKED"        # raw 640 < 700
    assert s.qualifies() and not s.is_production_ready()  # normalized >= 70 but < 90
    # tests: QUAL 4 + PERF 3 + COMP 2 + EDGE 1 + REGR 3 = 13; passed 3 + 1 + 2 + 0 + 2 = 8 (G1, G4 are gateways)
    assert s.tests == 13 and s.tests_passed == 8


def test_half_rounds_away_from_zero():
    # QUAL 1/16 * 200 = 12.5 -> 13 (half away from zero; Python's round() would give 12).
    # Everything else has no tests: 150 + 200 + 150 + 150 + 150 = 800 -> raw 813.
    s = score(many("QUAL", 1, 15))
    assert s.categories["QUAL"].points == 13
    assert s.raw == 813
    # 100 * ln(1 + 9*0.813) / ln(10) = 100 * ln(8.317) / ln(10) = 100 * 2.118299 / 2.302585 = 91.9966
    assert s.normalized == pytest.approx(91.9966, abs=1e-4)
    assert s.grade == "A-" and s.status == "PROVISIONAL"  # 700 <= 813 < 850


def test_no_tests_full_marks_and_crash_penalty_with_g3_zeroes():
    assert score([]).raw == 1000 and score([]).grade == "A+" and score([]).status == "CERTIFIED"
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
    # Two timeouts in STAB: STAB 3/5*200 = 120; others full 800 -> 920 - 20 = 900.
    s = score(many("STAB", 3, 0) + [rec("STAB", False, "timeout"), rec("STAB", False, "timeout")])
    assert s.raw == 900 and s.penalty == 20
    assert s.tier_passed(900) and not s.tier_passed(901)
    # skipped scenarios are not tests
    assert score([rec("QUAL", False, "skip")]).raw == 1000


def test_category_from_gate_id():
    records = [Evidence("C6", "params", False, 1, 2, "halt"), Evidence("T2", "latency", True, 1, 2, "warn"),
               Evidence("I-5", "tokenizer", True, 1, 1, "fail"), Evidence("D4", "sha", True, 1, 1, "halt"),
               Evidence("X9", "unknown", True, 1, 1, "fail")]
    s = score(records)
    # COMP 0/1 = 0; PERF 1/1 = 150; REGR 1/1 = 150; STAB 1/1 = 200; QUAL 1/1 = 200; EDGE none = 150 -> 850
    assert {k: (c.passed, c.total) for k, c in s.categories.items()} == {
        "QUAL": (1, 1), "PERF": (1, 1), "STAB": (1, 1), "COMP": (0, 1), "EDGE": (0, 0), "REGR": (1, 1)}
    assert s.raw == 850 and s.status == "CERTIFIED"


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
