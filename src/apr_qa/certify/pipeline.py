"""`apr-qa certify`: G0 on every variant, the playbook's scenario matrix, G1-G4, the records derived
across scenarios (stability, regression, serve parity, throughput), Five Whys, the MQS, and one
evidence.json for the model on one stack.

The stack (`--stack`, default builtin) is what the verdict is about (docs/stacks.md, "Certifying a
stack"). Every stack goes through this one function: the same playbook, scenarios and scoring. What
differs is what it is given and where the scenarios run. The artifact's evidence (download manifest,
validation: the .apr file's own, shared by every stack) is the same for all; the evaluation evidence
must be the certified stack's own evaluations (an evaluation of another stack is refused), and the
scenarios run on that stack (certify/stack_model.py). A tripped (fail or halt) gate of the stage
evidence fails the gateway the gate catalogue assigns it, as a blocked variant's does
(workflow/blocked.py). A stack that does not run the model at all (an encoder on a decoder-only
stack) gets the status NOT_APPLICABLE, with the reason, and no score."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import AprQaError
from ..evidence import Evidence, write_evidence
from ..stacks.registry import StackSpec
from .. import five_whys
from .gateways import g0_integrity, scenario_gateways
from .mqs import GATEWAYS, NOT_APPLICABLE, MqsScore, score
from .playbooks import Variant, limits, plan, select_variants
from .scenarios import run_matrix
from .stack_model import not_applicable, stack_block


def load_records(path: str | Path) -> tuple[dict[str, Any], list[Evidence]]:
    """An evidence JSON of any stage: (its context keys, its records)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        records = [Evidence(**g) for g in data["gates"]]
    except FileNotFoundError:
        raise AprQaError("evidence file not found", path) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AprQaError(f"not an evidence JSON ({{..., 'gates': [records]}}): {exc}", path) from None
    return {k: v for k, v in data.items() if k != "gates"}, records


def _completed(records: list[Evidence], modality: str) -> dict[tuple, list[Evidence]]:
    """Completed (not crashed, not skipped) scenarios grouped by (variant, backend, prompt)."""
    out: dict[tuple, list[Evidence]] = defaultdict(list)
    for r in records:
        s = r.details.get("scenario")
        if s and s["modality"] == modality and "token_ids" in r.details:
            out[(s["variant"], s["backend"], s["prompt_id"])].append(r)
    return out


def derived_records(records: list[Evidence], playbook: dict[str, Any], reference: str | None) -> list[Evidence]:
    out = []
    greedy = playbook["test_matrix"].get("temperature", 0.0) == 0.0
    run = _completed(records, "run")
    # STAB: greedy reruns of one prompt produce the same tokens.
    for modality in ("run", "chat"):
        for (variant, backend, prompt), rs in _completed(records, modality).items():
            if greedy and len(rs) > 1:
                distinct = {tuple(r.details["token_ids"]) for r in rs}
                outputs = [r.details["output"][:40] for r in rs[:3]]
                out.append(Evidence(f"STAB:determinism:{variant}/{backend}/{modality}/{prompt}", "greedy reruns agree",
                                    len(distinct) == 1, f"{len(distinct)} distinct outputs in {len(rs)} runs", 1,
                                    "fail", "" if len(distinct) == 1 else f"outputs: {outputs}",
                                    {"category": "STAB"}))
    # REGR: each variant's first greedy token equals the reference variant's (I-5 style).
    if reference and greedy:
        for (variant, backend, prompt), rs in run.items():
            ref = run.get((reference, backend, prompt))
            if variant == reference or not ref or not ref[0].details["token_ids"] or not rs[0].details["token_ids"]:
                continue
            mine, theirs = rs[0].details["token_ids"][0], ref[0].details["token_ids"][0]
            out.append(Evidence(f"REGR:first-token:{variant}/{backend}/{prompt}",
                                f"first token agrees with {reference}",
                                mine == theirs, mine, theirs, "fail",
                                "" if mine == theirs else f"{variant} {rs[0].details['output'][:40]!r} vs "
                                                          f"{reference} {ref[0].details['output'][:40]!r}",
                                {"category": "REGR", "reference": reference}))
    # COMP: the server's greedy answer equals the run modality's.
    if greedy:
        for (variant, backend, prompt), rs in _completed(records, "serve").items():
            ref = run.get((variant, backend, prompt))
            if not ref:
                continue
            same = rs[0].details["output"] == ref[0].details["output"]
            out.append(Evidence(f"COMP:serve-parity:{variant}/{backend}/{prompt}", "serve answer equals run answer",
                                same, rs[0].details["output"][:80], ref[0].details["output"][:80], "fail",
                                "" if same else "the HTTP server and the run modality disagree", {"category": "COMP"}))
    # PERF: median decode throughput per variant and backend.
    minimum = playbook["thresholds"].get("min_tokens_per_s", 0.0)
    variant_format = {r.details["scenario"]["variant"]: r.details.get("format")
                      for r in records if "scenario" in r.details}
    tps: dict[tuple, list[float]] = defaultdict(list)
    for (variant, backend, _), rs in run.items():
        tps[(variant, backend)] += [r.details["metrics"]["decode_tokens_per_s"] for r in rs
                                    if r.details.get("metrics", {}).get("decode_tokens_per_s")]
    for (variant, backend), values in tps.items():
        median = statistics.median(values)
        out.append(Evidence(f"PERF:tokens-per-s:{variant}/{backend}", "decode throughput", median >= minimum,
                            round(median, 3), minimum, "warn",
                            "" if median >= minimum else "decode slower than the tier minimum",
                            {"category": "PERF", "variant": variant, "backend": backend,
                             "format": variant_format.get(variant), "tokens_per_s": median, "samples": len(values)}))
    return out


def evidence_stage(ctx: dict[str, Any]) -> str | None:
    """The stage an evidence file comes from: its own `stage`, or an evaluation JSON's (it has a protocol)."""
    return ctx.get("stage") or ("evaluate" if "protocol" in ctx else None)


def evidence_variant(ctx: dict[str, Any], variants: list[Variant]) -> str | None:
    """The variant an evidence file is about: the one whose file it names (validation: `apr`,
    evaluation: `model.path`); None for the model's own evidence (the download manifest)."""
    model = ctx.get("model")
    named = ctx.get("apr") or (model.get("path") if isinstance(model, dict) else None)
    if not named:
        return None
    target = Path(named).resolve()
    return next((v.name for v in variants if Path(v.path).resolve() == target), None)


def check_evidence_stack(ctx: dict[str, Any], path: str | Path, stack: str) -> None:
    """An evaluation is evidence for the stack it ran on only."""
    ran = ctx.get("stack")
    if isinstance(ran, dict) and isinstance(ran.get("name"), str) and ran["name"] != stack:
        raise AprQaError(f"an evaluation on stack {ran['name']!r}: the certification of stack {stack!r} takes its "
                         "own evaluations (the artifact's download and validation evidence is every stack's)", path)


def stage_gateway(r: Evidence) -> Evidence:
    """The gateway a tripped gate of the stage evidence fails (the gate catalogue's), as for a variant the
    workflow's gates blocked."""
    from ..gate_catalogue import gateway_of

    gw = gateway_of(r.id)
    where = r.details.get("variant") or Path(str(r.details.get("evidence_file", "?"))).name
    stage = r.details.get("evidence_stage") or "stage"
    return Evidence(gw, GATEWAYS[gw], False, f"{where}: {r.id} tripped in {stage}",
                    "every fail/halt gate of the stage evidence holds", r.level,
                    f"{where}: {r.id} ({r.name}) measured {r.measured}, threshold {r.threshold}"
                    + (f" - {r.message}" if r.message else ""),
                    {"variant": r.details.get("variant"), "stage": stage, "gate": r.id,
                     "evidence_file": r.details.get("evidence_file")})


def lead_with_gate(gateway: Evidence, gate: Evidence | None, countermeasure: str) -> None:
    """A stage gateway's Five Whys: its own symptom, then the tripped gate's chain (after annotate)."""
    fw = (gate.details.get("five_whys") if gate else None) or {}
    gateway.details["five_whys"] = {"gate": gateway.id,
                                    "whys": [f"{gateway.id} ({gateway.name}) failed: {gateway.message}",
                                             *fw.get("whys", [])][:5],
                                    "root_cause": fw.get("root_cause") or gateway.message,
                                    "countermeasure": fw.get("countermeasure") or countermeasure}


def host_info() -> dict[str, Any]:
    import os

    return {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def stack_info() -> dict[str, str]:
    out = {"apr_qa": __version__}
    for pkg in ("torch", "numpy", "tokenizers"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def size_category(parameters: int | None) -> str:
    """tiny < 0.5B <= small < 2B <= medium < 10B <= large < 35B <= xlarge < 100B <= huge."""
    if not parameters:
        return "tiny"
    for edge, name in ((0.5e9, "tiny"), (2e9, "small"), (10e9, "medium"), (35e9, "large"), (100e9, "xlarge")):
        if parameters < edge:
            return name
    return "huge"


def certify(model_id: str, playbook: dict[str, Any], variants: list[Variant], output: str | Path, *,
            family: str | None = None, parameters: int | None = None, extra_evidence: Sequence[str | Path] = (),
            source_index: dict[str, Any] | None = None, policy: str | None = None,
            child: list[str] | None = None, server: list[str] | None = None,
            reference: str | None = None, stack: StackSpec | None = None) -> tuple[list[Evidence], MqsScore]:
    """`reference`: the source weights, whose embeddings an encoder's are compared with (default: a
    SafeTensors variant among `variants`, the source when it is certified too). `stack`: the stack
    certified (None: builtin, our runtime); `extra_evidence` must hold its own evaluations only."""
    started = time.time()
    chosen = select_variants(playbook, variants)
    if not chosen:
        raise AprQaError(f"no variant matches the {playbook['name']} playbook's formats "
                         f"{playbook['variants']['formats']} / levels {playbook['variants']['quantizations']}")
    certified = stack_block(stack)
    apr_meta: dict[str, Any] = {}
    apr = next((v for v in chosen if v.format == "apr"), None)
    if apr:
        from ..apr import AprReader

        with AprReader(apr.path) as reader:
            apr_meta = {k: reader.metadata.get(k) for k in ("provenance", "param_count", "quantization")}
            parameters = parameters or reader.metadata.get("param_count")
    loaded = []
    for path in extra_evidence:  # read (and checked) first: a wrong file is refused before any scenario runs
        ctx, recs = load_records(path)
        check_evidence_stack(ctx, path, certified["name"])
        variant = evidence_variant(ctx, chosen)
        for r in recs:
            r.details.setdefault("evidence_file", str(path))
            r.details.setdefault("evidence_stage", evidence_stage(ctx))
            if variant is not None:
                r.details.setdefault("variant", variant)
        loaded += recs
    context: dict[str, Any] = {
        "model": {"id": model_id, "family": family or "", "parameters": parameters,
                  "size_category": size_category(parameters)},
        "tier": playbook["tier"], "playbook": playbook["name"], "pass_threshold": playbook["thresholds"]["mqs_pass"],
        "certified_stack": certified, "variants": [v.__dict__ for v in chosen], "categories": playbook["categories"]}
    if (why := not_applicable(stack, [v.path for v in chosen])) is not None:
        result = score([])
        result.status, result.grade = NOT_APPLICABLE, "-"
        write_evidence(output, [], stage="certify", subject=model_id, **context, tier_passed=False,
                       not_applicable=why, mqs=result.to_dict(), host=host_info(), stack=stack_info(),
                       argv=sys.argv, started=started, finished=time.time())
        return [], result
    records: list[Evidence] = []
    for v in chosen:
        g0 = g0_integrity(v.path)
        g0.details["variant"] = v.name
        records.append(g0)
    if reference is None:
        reference = next((v.path for v in variants if v.format == "safetensors"), None)
    scenario_records = run_matrix(plan(playbook, chosen, reference), policy or playbook["failure_policy"],
                                  limits(playbook), child=child, server=server, stack=stack)
    formats = {v.name: v.format for v in chosen}
    for r in scenario_records:
        r.details["format"] = formats[r.details["scenario"]["variant"]]
    records += scenario_gateways(scenario_records) + scenario_records
    reference = playbook["variants"].get("reference") or chosen[0].name
    records += derived_records(scenario_records, playbook, reference)
    tripped = [(r, stage_gateway(r)) for r in loaded if r.tripped]
    records += [gw for _, gw in tripped] + loaded
    five_whys.annotate(records, five_whys.Context(records, apr_meta, source_index or {}))
    for gate, gw in tripped:
        lead_with_gate(gw, gate, f"read {gate.details.get('evidence_file')}, fix the cause, rerun")
    result = score(records)
    write_evidence(output, records, stage="certify", subject=model_id, **context,
                   tier_passed=result.tier_passed(context["pass_threshold"]), reference=reference,
                   mqs=result.to_dict(), host=host_info(), stack=stack_info(), argv=sys.argv,
                   started=started, finished=time.time())
    return records, result
