"""The per-variant summary: one model/variant's status across the stages (the Andon board's row).

Stage colours: green passed, yellow passed with warnings (or a conversion slower than
SLOW_CONVERSION_S), red a fail/halt gate tripped or the stage's command failed. The variant is
CERTIFIED when every stage is green or yellow, BLOCKED (with the first tripped gate and why) when one
is red, SKIPPED when the download skipped the model (D1/D2/G6), and PENDING when a stage has not
produced anything yet. The summary reads only the files it is given (apr_qa.layout names them);
Andon events, when given, mark the stages whose command failed in the latest run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..layout import STAGE_OUTPUT, STAGES, path, variant_files
from .andon import load_events
from .integrity import problem

SLOW_CONVERSION_S = 600  # a conversion above 10 minutes is yellow

Events = dict[tuple[str, str], dict[str, Any]]


def read_json(file: Path) -> dict[str, Any] | None:
    """The JSON document at `file`, or None when it is missing or unreadable."""
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def stage_events(andon_state: Path) -> Events:
    """The Andon events under a state folder, by (stage, subject)."""
    return {(e["stage"], e["subject"]): e for e in load_events(andon_state)}


def _colour(gates: list[dict[str, Any]]) -> str:
    failed = [g for g in gates if not g.get("passed")]
    if any(g.get("level") in ("fail", "halt") for g in failed):
        return "red"
    return "yellow" if failed else "green"


def summarize(files: dict[str, Path], model: str, variant: str, fingerprints: dict[str, str] | None = None,
              events: Events | None = None) -> dict[str, Any]:
    """The summary from the variant's files (keys as apr_qa.layout.variant_files: manifest, apr,
    apr_record, conversion, validation, evaluation)."""
    events = events or {}
    subject = f"{model}/{variant}"
    stages: dict[str, dict[str, Any]] = {}
    docs = {stage: read_json(files[STAGE_OUTPUT[stage]]) for stage in STAGES}
    manifest = docs["download"]
    for stage in STAGES:
        event = events.get((stage, model if stage == "download" else subject))
        doc = docs[stage]
        if event is not None:  # the stage's job failed (or its gate rule tripped) in the latest run
            stages[stage] = {"colour": "red", "gates": event.get("gates", []), "level": event["level"],
                             "reason": event["message"]}
        elif doc is None:
            stages[stage] = {"colour": None, "gates": []}
        else:
            gates = doc.get("gates", [])
            colour = _colour(gates)
            if stage == "convert" and doc.get("seconds", 0) > SLOW_CONVERSION_S and colour == "green":
                colour = "yellow"
            stages[stage] = {"colour": colour, "gates": gates}
    _check_artifacts(stages, files)
    summary: dict[str, Any] = {"model": model, "variant": variant, "stages": stages,
                               "fingerprints": fingerprints or {}}
    if manifest is not None and manifest.get("status") == "skipped":
        return {**summary, "status": "SKIPPED", "reason": manifest.get("skip_reason")}
    for stage in STAGES:
        s = stages[stage]
        if s["colour"] == "red":
            tripped = [g for g in s["gates"] if not g.get("passed") and g.get("level") in ("fail", "halt")]
            gate = tripped[0] if tripped else {}
            reason = s.get("reason") or "; ".join(
                f"{g['id']} measured {g.get('measured')} vs threshold {g.get('threshold')}"
                + (f" ({g['message']})" if g.get("message") else "") for g in tripped)
            return {**summary, "status": "BLOCKED", "stage": stage, "gate": gate.get("id", "?"),
                    "level": gate.get("level", s.get("level")), "reason": reason}
        if s["colour"] is None:
            why = {"reason": s["reason"]} if "reason" in s else {}
            return {**summary, "status": "PENDING", "stage": stage, **why}
    return {**summary, "status": "CERTIFIED"}


def summarize_results(results: Path, model: str, variant: str, events: Events | None = None) -> dict[str, Any]:
    """The summary of a model/variant from the results folder's layout, with the folder's Andon events
    (the report's view, written whatever happened; `events` when the caller already read them)."""
    if events is None:
        events = stage_events(path(results, "andon"))
    return summarize(variant_files(results, model, variant), model, variant, events=events)


def _check_artifacts(stages: dict[str, dict[str, Any]], files: dict[str, Path]) -> None:
    """A stage whose files lost their recorded bytes is red (D4, halt); one whose .apr or record is
    gone has not produced anything (yet): the variant is not certified by evidence alone."""
    for stage, record in (("download", files["manifest"]), ("convert", files["apr_record"])):
        if stages[stage]["colour"] not in ("green", "yellow"):
            continue
        if stage == "convert" and not (files["apr"].exists() and record.exists()):
            missing = files["apr"] if not files["apr"].exists() else record
            stages[stage] = {"colour": None, "gates": [], "reason": f"{missing} is missing"}
            continue
        found = problem(record)
        if found is None:
            continue
        where, why = found
        if why == "missing":
            stages[stage] = {"colour": None, "gates": [], "reason": f"{where} is missing"}
            continue
        message = f"{where}: {why} ({record})"
        stages[stage] = {"colour": "red", "level": "halt", "reason": f"D4 checksum mismatch: {message}",
                         "gates": [{"id": "D4", "name": "checksum", "level": "halt", "passed": False,
                                    "measured": "mismatch", "threshold": "recorded sha256", "message": message}]}
