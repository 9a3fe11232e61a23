"""Model Qualification Score (MQS): 0-1000 raw points over six categories, gated by G0-G4.

The arithmetic:
each category scores round(passed/total * max); a category with no tests (one the tier does not
test, such as EDGE in smoke) is "not measured": it is left out and the measured categories' points
are scaled to the 1000-point total, raw = round(sum of their points x 1000 / sum of their maxima),
so an untested category never counts as full marks and never drags a score down either. With no
measured category at all raw is 0. Crashes cost 20 points and timeouts 10, any gateway failure
zeroes the score, normalized = 100 ln(1+9x)/ln(10), x = raw/1000.

Grades use the usual US plus/minus scale. The coarse bands name the
lowest grade of each band: A- starts at 90, plain B at 83 (B- is 80-83), C- at 70, D- at
60; below 60 is F. So "B >= 83, C >= 70, D >= 60, F < 60" holds for those grades.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any
from collections.abc import Iterable

from ..evidence import Evidence
from ..gate_catalogue import BY_ID, GATE_ID

CATEGORY_MAX: dict[str, int] = {"QUAL": 200, "PERF": 150, "STAB": 200, "COMP": 150, "EDGE": 150, "REGR": 150}
MAX_RAW = sum(CATEGORY_MAX.values())  # 1000
CRASH_PENALTY, TIMEOUT_PENALTY = 20, 10
GATEWAYS: dict[str, str] = {
    "G0": "integrity: config matches tensor metadata",
    "G1": "model loads",
    "G2": "basic inference produces output",
    "G3": "no crashes",
    "G4": "output is not garbage",
}

# (lowest normalized score, grade), best first.
GRADE_EDGES: tuple[tuple[float, str], ...] = (
    (97, "A+"), (93, "A"), (90, "A-"), (87, "B+"), (83, "B"), (80, "B-"),
    (77, "C+"), (73, "C"), (70, "C-"), (67, "D+"), (63, "D"), (60, "D-"),
)

# Raw-MQS edges of the status state machine: below 700 BLOCKED, from 850 CERTIFIED.
BLOCKED_BELOW, CERTIFIED_FROM = 700, 850
# The status of a stack's certification when the stack does not run the model at all (an encoder on a
# decoder-only stack, docs/stacks.md): no score, not a failure.
NOT_APPLICABLE = "NOT_APPLICABLE"
QUALIFY_NORMALIZED, PRODUCTION_NORMALIZED = 70.0, 90.0

OUTCOMES = ("pass", "fail", "crash", "timeout", "skip")


def outcome_of(record: Evidence) -> str:
    """details["outcome"] when a scenario recorded one, else pass/fail from the record."""
    outcome = record.details.get("outcome")
    if outcome in OUTCOMES:
        return outcome
    return "pass" if record.passed else "fail"


def category_of(record: Evidence) -> str:
    """details["category"] when the record names one, else its gate's catalogue entry (an id that starts
    with a catalogued gate id counts as that gate); anything else, gateways included, counts as QUAL."""
    cat = record.details.get("category")
    if cat in CATEGORY_MAX:
        return cat
    named = GATE_ID.match(record.id)
    return (BY_ID[named.group(0)].category if named else None) or "QUAL"


def normalize(raw: float) -> float:
    x = min(max(raw / MAX_RAW, 0.0), 1.0)
    return 100.0 * math.log(1.0 + 9.0 * x) / math.log(10.0)


def grade(normalized: float) -> str:
    return next((g for edge, g in GRADE_EDGES if normalized >= edge), "F")


def status(raw: int, gateways_passed: bool) -> str:
    """PENDING -> BLOCKED / PROVISIONAL / CERTIFIED, on the raw score."""
    if not gateways_passed or raw < BLOCKED_BELOW:
        return "BLOCKED"
    return "PROVISIONAL" if raw < CERTIFIED_FROM else "CERTIFIED"


NOT_MEASURED = "not measured"


def category_label(category: dict[str, Any]) -> str:
    """CategoryScore.label of a category as MqsScore.to_dict writes it (evidence files)."""
    if not category.get("measured", category.get("total", 0) > 0):
        return NOT_MEASURED
    return f"{category['points']}/{category['max']} ({category['passed']}/{category['total']})"


@dataclass
class CategoryScore:
    passed: int
    total: int
    max: int

    @property
    def measured(self) -> bool:
        return self.total > 0

    @property
    def points(self) -> int | None:
        """None when not measured (never full marks for a category nothing tested)."""
        if not self.measured:
            return None
        # Half away from zero, like Rust's f64::round (Python's round() would halve to even).
        return math.floor(self.passed / self.total * self.max + 0.5)

    def label(self) -> str:
        """How reports show the category: "150/200 (3/4)" or "not measured"."""
        return f"{self.points}/{self.max} ({self.passed}/{self.total})" if self.measured else NOT_MEASURED


@dataclass
class Gateway:
    id: str
    passed: bool
    reason: str = ""


@dataclass
class MqsScore:
    raw: int
    normalized: float
    grade: str
    status: str
    gateways: list[Gateway]
    categories: dict[str, CategoryScore]
    crashes: int
    timeouts: int
    penalty: int
    tests: int = 0
    tests_passed: int = 0

    @property
    def gateways_passed(self) -> bool:
        return all(g.passed for g in self.gateways)

    def qualifies(self) -> bool:
        return self.gateways_passed and self.normalized >= QUALIFY_NORMALIZED

    def is_production_ready(self) -> bool:
        return self.gateways_passed and self.normalized >= PRODUCTION_NORMALIZED

    def tier_passed(self, threshold: int) -> bool:
        """A tier passes when the gateways hold and the raw MQS reaches its threshold (700; deep 900)."""
        return self.gateways_passed and self.raw >= threshold

    @property
    def not_measured(self) -> list[str]:
        return [k for k, c in self.categories.items() if not c.measured]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["categories"] = {k: {**asdict(c), "points": c.points, "measured": c.measured}
                           for k, c in self.categories.items()}
        d["not_measured"] = self.not_measured
        d.update(gateways_passed=self.gateways_passed, qualifies=self.qualifies(),
                 production_ready=self.is_production_ready())
        return d


def gateways_of(records: list[Evidence]) -> list[Gateway]:
    """G0-G4 from their records; a crash outcome anywhere also fails G3."""
    out = []
    for gid in GATEWAYS:
        failed = [r for r in records if r.id == gid and not r.passed]
        if gid == "G3":
            failed += [r for r in records if r.id != "G3" and outcome_of(r) == "crash"]
        reason = "; ".join(r.message or f"{r.id}: measured {r.measured}, threshold {r.threshold}" for r in failed[:3])
        out.append(Gateway(gid, not failed, reason))
    return out


def measured_points(categories: dict[str, CategoryScore]) -> int:
    """The measured categories' points scaled to MAX_RAW (their weights renormalised); 0 when none is
    measured: a certification that measured nothing has shown nothing."""
    measured = [c for c in categories.values() if c.measured]
    weight = sum(c.max for c in measured)
    if not weight:
        return 0
    return math.floor(sum(c.points or 0 for c in measured) * MAX_RAW / weight + 0.5)


def score(records: Iterable[Evidence]) -> MqsScore:
    records = list(records)
    gateways = gateways_of(records)
    tests = [r for r in records if r.id not in GATEWAYS and outcome_of(r) != "skip"]
    cats = {c: CategoryScore(0, 0, m) for c, m in CATEGORY_MAX.items()}
    for r in tests:
        c = cats[category_of(r)]
        c.total += 1
        c.passed += outcome_of(r) == "pass"
    crashes = sum(outcome_of(r) == "crash" for r in tests)
    timeouts = sum(outcome_of(r) == "timeout" for r in tests)
    penalty = CRASH_PENALTY * crashes + TIMEOUT_PENALTY * timeouts
    passed_gw = all(g.passed for g in gateways)
    raw = max(0, measured_points(cats) - penalty) if passed_gw else 0
    norm = normalize(raw)
    return MqsScore(raw, norm, grade(norm), status(raw, passed_gw), gateways, cats, crashes, timeouts,
                    penalty if passed_gw else MAX_RAW, len(tests), sum(outcome_of(r) == "pass" for r in tests))
