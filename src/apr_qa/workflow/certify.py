"""Certify stage: each model/variant's status across the stages, and the model's certification.

Stage colours follow spec 2.2 (Andon board): green passed, yellow passed with warnings, red a
fail/halt gate tripped or the stage's command failed. The variant is CERTIFIED when every stage
is green or yellow, BLOCKED (with the first tripped gate and why) when one is red, SKIPPED when the
download skipped the model (D1/D2/G6), and PENDING when a stage has not produced anything yet.

The model's certification (results/certify/<model>/evidence.json) comes from `apr-qa certify` once
every variant of its tier passed the stage gates. A variant the gates blocked never reaches that
rule, so after a failed run `certify_blocked` writes the certification from the stage evidence
alone: the tripped gate fails the gateway its check belongs to (STAGE_GATEWAYS), which zeroes the
MQS (status BLOCKED), and its Five Whys lead with the gate's own chain.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import AprQaError

STAGES = ("download", "convert", "validate", "evaluate")
SLOW_CONVERSION_S = 600  # spec 2.2: yellow above 10 minutes


def paths(results: Path, model: str, variant: str | None = None) -> dict[str, Path]:
    p = {"manifest": results / "download" / model / "manifest.json"}
    if variant is not None:
        p.update({
            "apr": results / "apr" / model / f"{model}.{variant}.apr",
            "apr_record": results / "apr" / model / f"{model}.{variant}.apr.sha256.json",
            "convert": results / "convert" / model / f"{variant}.json",
            "validate": results / "validate" / model / f"{variant}.json",
            "evaluate": results / "evaluate" / model / f"{variant}.json",
            "certify": results / "certify" / model / f"{variant}.json",
        })
    else:
        p["certification"] = results / "certify" / model / "evidence.json"
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
    _check_artifacts(stages, p)
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


def _check_artifacts(stages: dict[str, dict[str, Any]], p: dict[str, Path]) -> None:
    """A stage whose files lost their recorded bytes is red (D4, halt); one whose .apr or record is
    gone has not produced anything (yet): the variant is not certified by evidence alone."""
    from .integrity import problem

    for stage, record in (("download", p["manifest"]), ("convert", p["apr_record"])):
        if stages[stage]["colour"] not in ("green", "yellow"):
            continue
        if stage == "convert" and not (p["apr"].exists() and record.exists()):
            missing = p["apr"] if not p["apr"].exists() else record
            stages[stage] = {"colour": None, "gates": [], "reason": f"{missing} is missing"}
            continue
        found = problem(record)
        if found is None:
            continue
        path, why = found
        if why == "missing":
            stages[stage] = {"colour": None, "gates": [], "reason": f"{path} is missing"}
            continue
        message = f"{path}: {why} ({record})"
        stages[stage] = {"colour": "red", "level": "halt", "reason": f"D4 checksum mismatch: {message}",
                         "gates": [{"id": "D4", "name": "checksum", "level": "halt", "passed": False,
                                    "measured": "mismatch", "threshold": "recorded sha256", "message": message}]}


# Andon policies the workflow knows; a playbook's fail-fast (halt + diagnostics) stops at the first failure.
ANDON_POLICY = {"stop-on-first": "stop-on-first", "stop-on-p0": "stop-on-p0", "collect-all": "collect-all",
                "fail-fast": "stop-on-first"}


def tier_variants(playbook: dict[str, Any], allowed: list[str], model: str = "") -> list[str]:
    """The .apr levels the tier builds for a model: the playbook's quantizations that `allowed`
    (the config's variants) permits, in the playbook's order, at most max_variants of them."""
    spec = playbook["variants"]
    if "apr" not in spec["formats"]:
        raise AprQaError(f"tier {playbook['name']}: the workflow certifies .apr variants, but the playbook's "
                         f"formats are {spec['formats']}")
    chosen = [q for q in spec["quantizations"] if q in allowed]
    if spec.get("max_variants"):
        chosen = chosen[: spec["max_variants"]]
    if not chosen:
        raise AprQaError(f"{model or 'config'}: none of the variants {allowed} is in tier {playbook['name']}'s "
                         f"quantizations {spec['quantizations']}")
    return chosen


def certification_fingerprint(variants: list[str]) -> str:
    """The certification's stack: the certify package and CLI, plus each variant's evaluate stack
    (runtime, codec, torch), which the scenarios run."""
    from .fingerprint import PACKAGE_ROOT, fingerprint

    h = hashlib.sha256()
    for v in sorted(variants):
        h.update(fingerprint("evaluate", v).encode())
    for path in sorted((PACKAGE_ROOT / "certify").glob("*.py")) + [PACKAGE_ROOT / "commands" / "certify.py"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"certification:{h.hexdigest()[:16]}"


# Which gateway a tripped stage gate fails, by what the gate checks (longest id prefix wins):
# the artifact does not describe/preserve its source -> G0 integrity; it cannot be fetched, parsed
# or loaded -> G1; inference produced nothing -> G2; wrong or diverging answers -> G4 quality.
# A stage command that died without naming a gate is a crash -> G3.
STAGE_GATEWAYS = {
    "D": "G1", "G6": "G1", "C1": "G1", "C2": "G1", "C4": "G1", "C5": "G1", "V1": "G1",
    "C3": "G0", "C6": "G0", "C7": "G0", "C8": "G0", "V2": "G0", "I-2": "G0", "I-3": "G0", "I-4": "G0",
    "T1": "G2", "T4": "G4", "T5": "G4", "I-1": "G4", "I-5": "G4",
}


def gateway_of(gate_id: str) -> str:
    best = max((p for p in STAGE_GATEWAYS if gate_id.startswith(p)), key=len, default=None)
    return STAGE_GATEWAYS[best] if best else "G3"


def _stage_records(results: Path, model: str, variant: str, upto: str | None) -> list:
    """The variant's stage evidence records up to (and including) the stage that blocked it; later
    stages' files, if any, are from an earlier run and are left out."""
    from ..certify.pipeline import load_records

    p = paths(results, model, variant)
    out = []
    for stage in ("validate", "evaluate"):
        if p[stage].exists():
            ctx, recs = load_records(p[stage])
            for r in recs:
                r.details.update(evidence_file=str(p[stage]), evidence_stage=ctx.get("stage") or stage, variant=variant)
            out += recs
        if stage == upto:
            break
    return out


def certify_blocked(results: Path, model: str, model_id: str, playbook: dict[str, Any], variants: list[str],
                    output: Path, family: str | None = None) -> dict[str, Any] | None:
    """The certification of a model whose tier variants the stage gates blocked, from the stage
    evidence alone (no scenario runs). None when no variant is blocked."""
    from ..certify import five_whys
    from ..certify.mqs import GATEWAYS, score
    from ..certify.pipeline import host_info, load_records, size_category, stack_info
    from ..evidence import Evidence, write_evidence

    started = time.time()
    events = _events(results)
    summaries = [summarize(results, model, v, events=events) for v in variants]
    blocked = [s for s in summaries if s["status"] == "BLOCKED"]
    if not blocked:
        return None
    records: list[Evidence] = []
    manifest = paths(results, model)["manifest"]
    if manifest.exists():
        ctx, recs = load_records(manifest)
        for r in recs:
            r.details.update(evidence_file=str(manifest), evidence_stage="download")
        records += recs
    for s in summaries:
        records += _stage_records(results, model, s["variant"], s.get("stage"))
    gateways = []
    for s in blocked:
        gw = gateway_of(s["gate"]) if s["gate"] != "?" else "G3"
        gateways.append(Evidence(gw, GATEWAYS[gw], False, f"{s['variant']} blocked in {s['stage']} by {s['gate']}",
                                 "every tier variant passes its stage gates", s.get("level") or "fail",
                                 f"{model}/{s['variant']}: {s['reason']}",
                                 {"variant": s["variant"], "stage": s["stage"], "gate": s["gate"], "workflow": True}))
    records = gateways + records
    five_whys.annotate(records, five_whys.Context(records))
    for g in gateways:  # lead with the tripped gate's own chain, derived from its evidence
        d = g.details
        gate = next((r for r in records if r.id == d["gate"] and r.details.get("variant") == d["variant"]
                     and not r.passed), None)
        fw = (gate.details.get("five_whys") if gate else None) or {}
        d["five_whys"] = {"gate": g.id,
                          "whys": [f"{g.id} ({g.name}) failed: {g.message}", *fw.get("whys", [])][:5],
                          "root_cause": fw.get("root_cause") or g.message,
                          "countermeasure": fw.get("countermeasure") or
                          f"read results/logs/{d['stage']}/{model}/{d['variant']}.log, fix the cause, rerun"}
    result = score(records)
    threshold = playbook["thresholds"]["mqs_pass"]
    aprs = [paths(results, model, v)["apr"] for v in variants]
    conversions = [read_json(paths(results, model, v)["convert"]) or {} for v in variants]
    parameters = next((c["param_count"] for c in conversions if c.get("param_count")), None)
    write_evidence(output, records, stage="certify", subject=model_id,
                   model={"id": model_id, "family": family or "", "parameters": parameters,
                          "size_category": size_category(parameters)},
                   tier=playbook["tier"], playbook=playbook["name"], pass_threshold=threshold,
                   tier_passed=False, variants=[{"name": v, "path": str(a), "format": "apr", "quant": v}
                                                for v, a in zip(variants, aprs) if a.exists()],
                   blocked=[{k: s.get(k) for k in ("variant", "stage", "gate", "level", "reason")} for s in blocked],
                   mqs=result.to_dict(), host=host_info(), stack=stack_info(), argv=sys.argv,
                   started=started, finished=time.time())
    return result.to_dict()
