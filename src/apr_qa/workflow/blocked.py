"""The certification of a model whose tier variants the stage gates blocked.

The model's certification normally comes from `apr-qa certify` (rules/certify.smk) once every tier
variant passed its stage gates. A variant the gates blocked never reaches that rule, so after a
failed run the Snakefile's onerror handler calls `certify_blocked`: the certification is written
from the stage evidence alone. The tripped gate fails the gateway the gate catalogue assigns it
(docs/gates.md), which zeroes the MQS (status BLOCKED), and its Five Whys lead with the gate's own
chain.

Another stack's certification (docs/stacks.md) is blocked only by what blocks every stack: a variant
its download, conversion or validation gates stopped (the artifact's). A builtin evaluation gate is
builtin's own verdict; that stack's certification takes its own evaluations where they exist.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from ..gate_catalogue import CRASH_GATEWAY, gateway_of
from ..layout import path
from ..stacks.registry import StackSpec
from .summary import read_json, stage_events, summarize_results


def _stage_records(results: Path, model: str, variant: str, upto: str | None, stack: StackSpec | None = None) -> list:
    """The variant's stage evidence records up to (and including) the stage that blocked it; later
    stages' files, if any, are from an earlier run and are left out. Another stack's evaluation is its
    own file (stacks/<model>/<variant>/<stack>.json)."""
    from ..certify.pipeline import load_records

    out = []
    for stage, artifact in (("validate", "validation"), ("evaluate", "evaluation")):
        if stack is not None and stage == "evaluate":
            file = path(results, "stack_evaluation", model=model, variant=variant, stack=stack.name)
        else:
            file = path(results, artifact, model=model, variant=variant)
        if file.exists():
            ctx, recs = load_records(file)
            for r in recs:
                r.details.update(evidence_file=str(file), evidence_stage=ctx.get("stage") or stage, variant=variant)
            out += recs
        if stage == upto:
            break
    return out


def certify_blocked(results: Path, model: str, model_id: str, playbook: dict[str, Any], variants: list[str],
                    output: Path, family: str | None = None, stack: StackSpec | None = None) -> dict[str, Any] | None:
    """The certification of a model whose tier variants the stage gates blocked, from the stage
    evidence alone (no scenario runs). None when no variant is blocked. `stack`: another stack's
    certification, blocked by the artifact's gates only (download, conversion, validation)."""
    from .. import five_whys
    from ..certify.mqs import GATEWAYS, score
    from ..certify.pipeline import host_info, lead_with_gate, load_records, size_category, stack_info
    from ..certify.stack_model import other_stack, stack_block
    from ..evidence import Evidence, write_evidence

    started = time.time()
    stack = other_stack(stack)
    events = stage_events(path(results, "andon"))
    summaries = [summarize_results(results, model, v, events) for v in variants]
    blocked = [s for s in summaries if s["status"] == "BLOCKED" and (stack is None or s.get("stage") != "evaluate")]
    if not blocked:
        return None
    records: list[Evidence] = []
    manifest = path(results, "manifest", model=model)
    if not manifest.exists():  # a failed download leaves its D3/D4 records here instead
        manifest = path(results, "download_failure", model=model)
    if manifest.exists():
        ctx, recs = load_records(manifest)
        for r in recs:
            r.details.update(evidence_file=str(manifest), evidence_stage="download")
        records += recs
    for s in summaries:
        upto = s.get("stage") if s in blocked or stack is None else None
        records += _stage_records(results, model, s["variant"], upto, stack)
    gateways = []
    for s in blocked:
        gw = gateway_of(s["gate"]) if s["gate"] != "?" else CRASH_GATEWAY
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
        lead_with_gate(g, gate, f"read results/logs/{d['stage']}/{model}/{d['variant']}.log, fix the cause, rerun")
    result = score(records)
    threshold = playbook["thresholds"]["mqs_pass"]
    aprs = [path(results, "apr", model=model, variant=v) for v in variants]
    conversions = [read_json(path(results, "conversion", model=model, variant=v)) or {} for v in variants]
    parameters = next((c["param_count"] for c in conversions if c.get("param_count")), None)
    write_evidence(output, records, stage="certify", subject=model_id,
                   model={"id": model_id, "family": family or "", "parameters": parameters,
                          "size_category": size_category(parameters)},
                   tier=playbook["tier"], playbook=playbook["name"], pass_threshold=threshold,
                   certified_stack=stack_block(stack), tier_passed=False,
                   variants=[{"name": v, "path": str(a), "format": "apr", "quant": v}
                             for v, a in zip(variants, aprs, strict=True) if a.exists()],
                   blocked=[{k: s.get(k) for k in ("variant", "stage", "gate", "level", "reason")} for s in blocked],
                   mqs=result.to_dict(), host=host_info(), stack=stack_info(), argv=sys.argv,
                   started=started, finished=time.time())
    return result.to_dict()
