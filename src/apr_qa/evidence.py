"""Evidence records: one per quality gate, the unit every stage reports and the workflow enforces.

Levels escalate (Jidoka: stop on a defect): `warn` flags and continues, `fail` skips this
model/variant, `halt` stops the line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from .fsutil import write_text_atomic

LEVELS = ("warn", "fail", "halt")


@dataclass
class Evidence:
    id: str                 # gate id: "C5", "I-4", "T2" ...
    name: str               # what the gate checks, in words
    passed: bool
    measured: Any           # the observed value (number, count, string)
    threshold: Any          # what was required
    level: str              # "warn" | "fail" | "halt": what a failure means
    message: str = ""       # one line: on what, expected vs actual
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown gate level {self.level!r}")

    @property
    def tripped(self) -> bool:
        return not self.passed and self.level in ("fail", "halt")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst_level(records: Iterable[Evidence]) -> str | None:
    """The most severe level among failed gates (None when nothing failed above warn)."""
    tripped = [r.level for r in records if not r.passed]
    for level in ("halt", "fail", "warn"):
        if level in tripped:
            return level
    return None


def exit_code(records: Iterable[Evidence]) -> int:
    """CLI exit status for a set of gates: 3 halt, 1 fail, 0 otherwise (warnings only flag)."""
    level = worst_level(records)
    return {"halt": 3, "fail": 1}.get(level or "", 0)


def failure_lines(records: Iterable[Evidence], subject: str) -> list[str]:
    """Andon lines: which gate, on what, expected vs actual."""
    return [
        f"{r.level.upper()} gate {r.id} ({r.name}) on {subject}: measured {r.measured}, threshold {r.threshold}"
        + (f" - {r.message}" if r.message else "")
        for r in records
        if not r.passed
    ]


def write_evidence(path: str | Path, records: list[Evidence], **context: Any) -> None:
    payload = {**context, "gates": [r.to_dict() for r in records]}
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=jsonable) + "\n")


def jsonable(value: Any) -> Any:
    """json.dumps `default`: numpy scalars and paths."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
