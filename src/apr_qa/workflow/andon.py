"""Andon: turn tripped gates and failed stage commands into workflow decisions (Jidoka: stop on a defect).

State lives under one directory (default results/andon):
  events/<stage>/<subject>.json   why a stage failed for one model or model/variant (read by the report)
  STOP                            the line is stopped; heavy stages refuse to start until a human
                                  reviews the cause and runs `apr-qa andon reset`

Levels: warn flags only; fail skips that model/variant (its job fails, the rest continue);
halt stops the line under every policy (a halt gate means the line itself cannot be trusted:
checksums that do not match, a corrupt artifact). Failure policies decide what else pulls the cord:
  stop-on-first  any fail or halt stops the line
  stop-on-p0     halt-level gates stop the line, fail-level ones skip (default)
  collect-all    fail-level outcomes are collected in the report and the line goes on; halt still stops
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from ..errors import AprQaError
from ..fsutil import write_text_atomic

POLICIES = ("stop-on-first", "stop-on-p0", "collect-all")
EXIT_LEVEL = {1: "fail", 3: "halt"}
GATE_ID = re.compile(r"\b(?:[CDGTV]\d+|I-\d)\b")


def stops_line(level: str, policy: str) -> bool:
    if policy not in POLICIES:
        raise AprQaError(f"unknown failure policy {policy!r} (choose from {', '.join(POLICIES)})")
    return level == "halt" or (policy == "stop-on-first" and level == "fail")


def _slug(subject: str) -> str:
    return subject.replace("/", "__")


def event_path(state: Path, stage: str, subject: str) -> Path:
    return state / "events" / stage / f"{_slug(subject)}.json"


def record_event(state: Path, stage: str, subject: str, level: str, gates: list[dict[str, Any]],
                 message: str, policy: str) -> None:
    event = {"stage": stage, "subject": subject, "level": level, "gates": gates, "message": message}
    write_text_atomic(event_path(state, stage, subject), json.dumps(event, indent=2) + "\n")
    if stops_line(level, policy):
        write_text_atomic(state / "STOP", json.dumps({**event, "policy": policy}, indent=2) + "\n")
        print(f"ANDON: line stopped ({policy}): {level} in {stage} of {subject}. Review, then run "
              f"`apr-qa andon reset --state {state}` to restart.", file=sys.stderr)


def clear_event(state: Path, stage: str, subject: str) -> None:
    event_path(state, stage, subject).unlink(missing_ok=True)


def stop_reason(state: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state / "STOP").read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"message": "unreadable STOP file"}


def load_events(state: Path) -> list[dict[str, Any]]:
    events = []
    for path in sorted((state / "events").glob("*/*.json")):
        try:
            events.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return events


def gate_line(gate: dict[str, Any], subject: str) -> str:
    line = (f"{gate['level'].upper()} gate {gate['id']} ({gate.get('name', '')}) on {subject}: "
            f"measured {gate.get('measured')}, threshold {gate.get('threshold')}")
    return line + (f" - {gate['message']}" if gate.get("message") else "")


def enforce(evidence: Path, stage: str, subject: str, state: Path, policy: str, marker: Path) -> int:
    """Read an evidence JSON ({"gates": [...]}) and fail/halt on tripped gates; touch `marker` if none."""
    try:
        gates = json.loads(evidence.read_text())["gates"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AprQaError(f"not an evidence file: {exc}", evidence) from None
    failed = [g for g in gates if not g.get("passed")]
    for gate in failed:
        print(("ANDON " if gate["level"] != "warn" else "") + gate_line(gate, subject), file=sys.stderr)
    tripped = [g for g in failed if g["level"] in ("fail", "halt")]
    if not tripped:
        clear_event(state, stage, subject)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        print(f"{subject}: {stage} gates passed ({len(gates) - len(failed)}/{len(gates)}"
              f"{', ' + str(len(failed)) + ' warning(s)' if failed else ''})", file=sys.stderr)
        return 0
    level = "halt" if any(g["level"] == "halt" for g in tripped) else "fail"
    record_event(state, stage, subject, level, tripped, "; ".join(gate_line(g, subject) for g in tripped), policy)
    return 3 if level == "halt" else 1


def run(cmd: list[str], stage: str, subject: str, state: Path, policy: str, evidence: Path | None = None) -> int:
    """Run a stage command under the andon cord.

    Refuses to start while the line is stopped. A failing command is recorded as an event (exit 3
    = halt, anything else = fail) and may stop the line. With `evidence`, exits 1 and 3 mean "gates
    tripped, evidence written": the job succeeds so the evidence survives, and the gate rule decides.
    """
    stop = stop_reason(state)
    if stop is not None:
        print(f"ANDON: line stopped by {stop.get('stage')} of {stop.get('subject')} ({stop.get('message')}); "
              f"not starting {stage} of {subject}. Review, then `apr-qa andon reset --state {state}`.",
              file=sys.stderr)
        return 1
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            if line.strip():
                tail.append(line.strip())
    rc = proc.returncode
    if rc == 0 or (evidence is not None and rc in EXIT_LEVEL and evidence.exists()):
        clear_event(state, stage, subject)
        return 0
    level = EXIT_LEVEL.get(rc, "fail")
    message = next((ln for ln in reversed(tail) if "error" in ln.lower() or "gate" in ln.lower()),
                   tail[-1] if tail else f"exit status {rc}")
    gates = [{"id": gid, "level": level, "passed": False, "message": message} for gid in _gate_ids(tail)]
    print(f"ANDON {level.upper()}: {stage} of {subject} failed (exit {rc}): {message}", file=sys.stderr)
    record_event(state, stage, subject, level, gates, message, policy)
    return rc if rc in EXIT_LEVEL else 1


def _gate_ids(lines: Iterable[str]) -> list[str]:
    """Gate ids named on the command's `gate failed:` lines (the CLI's one-line gate messages)."""
    ids: list[str] = []
    for line in lines:
        if "gate" in line.lower():
            ids += [g for g in GATE_ID.findall(line) if g not in ids]
    return ids


def reset(state: Path) -> bool:
    stop = state / "STOP"
    existed = stop.exists()
    stop.unlink(missing_ok=True)
    return existed
