"""Certify stage: one model/variant's status across all stages, read from the files the stages wrote.

Stage colours follow spec 2.2 (Andon board): green passed, yellow passed with warnings, red a
fail/halt gate tripped or the stage's command failed. The variant is CERTIFIED when every stage
is green or yellow, BLOCKED (with the first tripped gate and why) when one is red, SKIPPED when the
download skipped the model (D1/D2/G6), and PENDING when a stage has not produced anything yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STAGES = ("download", "convert", "validate", "evaluate")
SLOW_CONVERSION_S = 600  # spec 2.2: yellow above 10 minutes


def paths(results: Path, model: str, variant: str | None = None) -> dict[str, Path]:
    p = {"manifest": results / "download" / model / "manifest.json"}
    if variant is not None:
        p.update({
            "apr": results / "apr" / model / f"{model}.{variant}.apr",
            "convert": results / "convert" / model / f"{variant}.json",
            "validate": results / "validate" / model / f"{variant}.json",
            "evaluate": results / "evaluate" / model / f"{variant}.json",
            "certify": results / "certify" / model / f"{variant}.json",
        })
    return p


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _events(results: Path) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in (results / "andon" / "events").glob("*/*.json"):
        event = read_json(path)
        if event:
            out[(event["stage"], event["subject"])] = event
    return out


def _colour(gates: list[dict[str, Any]]) -> str:
    failed = [g for g in gates if not g.get("passed")]
    if any(g.get("level") in ("fail", "halt") for g in failed):
        return "red"
    return "yellow" if failed else "green"


def summarize(results: Path, model: str, variant: str, fingerprints: dict[str, str] | None = None,
              events: dict | None = None) -> dict[str, Any]:
    events = _events(results) if events is None else events
    p = paths(results, model, variant)
    subject = f"{model}/{variant}"
    stages: dict[str, dict[str, Any]] = {}
    manifest = read_json(p["manifest"])
    docs = {"download": manifest, "convert": read_json(p["convert"]), "validate": read_json(p["validate"]),
            "evaluate": read_json(p["evaluate"])}
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
            return {**summary, "status": "PENDING", "stage": stage}
    return {**summary, "status": "CERTIFIED"}
