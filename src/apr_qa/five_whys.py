"""Five Whys (ask "why?" until the root cause) for every failed gate, derived from the evidence, not written by hand.

Each rule walks from the symptom to a cause using only what the records hold: the failed record,
its sibling records (C6 looks up C3/I-2's missing tensors) and the model's .apr metadata
(provenance files) or source index (weight_map). Rules are keyed by gate id; anything else gets a
generic chain that still quotes the record's measured value and threshold.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any
from collections.abc import Callable

from .evidence import Evidence


@dataclass
class FiveWhys:
    gate: str
    whys: list[str]
    root_cause: str
    countermeasure: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    records: list[Evidence] = field(default_factory=list)
    apr_metadata: dict[str, Any] = field(default_factory=dict)
    source_index: dict[str, Any] = field(default_factory=dict)  # a safetensors index: {"weight_map": {tensor: file}}

    def sibling(self, *ids: str) -> Evidence | None:
        return next((r for r in self.records if r.id in ids), None)


def _first(why1: str) -> list[str]:
    return [why1]


def _symptom(r: Evidence) -> str:
    return (f"{r.id} ({r.name}) failed: measured {r.measured}, threshold {r.threshold}"
            + (f" - {r.message}" if r.message else ""))


def _short(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _missing_tensors(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    src = r if "missing" in r.details else ctx.sibling("C3", "I-2")
    missing = list((src.details if src else {}).get("missing") or [])
    extra = list((src.details if src else {}).get("extra") or [])
    if not missing and not extra:
        meta_count = ctx.apr_metadata.get("param_count")
        whys.append(f"no tensor is missing or extra (C3/I-2), so the counts differ in the numbers: "
                    f".apr metadata param_count {meta_count}")
        return FiveWhys(r.id, whys, "metadata param_count disagrees with the tensors it describes",
                        "recompute param_count from the tensor table at write time")
    if missing:
        whys.append(f"{len(missing)} source tensors are missing from the .apr: {_short(missing)}")
    if extra:
        whys.append(f"{len(extra)} tensors in the .apr have no source: {_short(extra)}")
    weight_map = ctx.source_index.get("weight_map") or {}
    by_file: dict[str, list[str]] = defaultdict(list)
    for name in missing:
        by_file[weight_map.get(name, "")].append(name)
    prov = [f.get("path") for f in (ctx.apr_metadata.get("provenance") or {}).get("files", [])]
    listed = {f: names for f, names in by_file.items() if f}
    for f, names in listed.items():
        state = "was converted from" if f in prov else "is NOT among the converted files"
        whys.append(f"the source index puts {_short(names, 3)} in {f}, which the .apr provenance {state}")
    if "" in by_file:
        whys.append(f"{len(by_file[''])} missing tensors are in no source index entry; provenance files: "
                    f"{_short(prov) or 'none recorded'}")
    unconverted = [f for f in listed if f not in prov]
    if unconverted:
        root = f"source file(s) {_short(unconverted, 3)} were not read by the converter"
        fix = "download the complete shard set (check D3/D4) and re-convert"
    elif missing:
        root = f"the converter dropped {len(missing)} tensors present in the source"
        fix = "find why the converter skips these names (buffer/tied-weight filters) and re-convert"
    else:
        root = f"the converter wrote {len(extra)} tensors that the source does not have"
        fix = "check name mapping in the converter for the extra tensors"
    return FiveWhys(r.id, whys, root, fix)


def _precision(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    failures: dict[str, str] = r.details.get("failures") or {}
    c8 = ctx.sibling("C8")
    per_tensor = r.details.get("per_tensor") or (c8.details.get("per_tensor", {}) if c8 is not None else {})
    if not failures:
        return FiveWhys(r.id, whys, "the record lists no failing tensor", "rerun validate with full details")
    whys.append(f"{len(failures)} tensors exceeded their tolerance: "
                + "; ".join(f"{n}: {m}" for n, m in list(failures.items())[:3]))
    dtypes = Counter((per_tensor.get(n) or {}).get("dtype") or str(m).split()[0] for n, m in failures.items())
    whys.append("their stored dtypes: " + ", ".join(f"{d} x{c}" for d, c in dtypes.most_common()))
    worst = max(dtypes, key=lambda d: dtypes[d])
    return FiveWhys(r.id, whys, f"{worst} storage loses more precision than its tolerance allows on these tensors",
                    f"keep these tensors at a higher precision than {worst}, "
                    f"or justify a wider {worst} tolerance with measurements")


def _shapes(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    bad = r.details.get("mismatched") or {}
    for name, (src, apr) in list(bad.items())[:3]:
        transposed = list(src) == list(reversed(apr))
        whys.append(f"{name}: source {src}, .apr {apr}"
                    + (" (reversed: a layout/transpose error)" if transposed else ""))
    transposed = any(list(s) == list(reversed(a)) for s, a in bad.values())
    return FiveWhys(r.id, whys, "tensors were written in the wrong (column-major) layout" if transposed
                    else "tensor shapes changed in conversion", "fix the converter's layout handling for these tensors")


def _checksum(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    d = r.details
    rows = d.get("mismatches") or d.get("files") or ([d] if "expected" in d else [])
    bad = [x for x in rows if isinstance(x, dict) and x.get("expected") != x.get("actual") and not x.get("ok", False)]
    for x in bad[:3]:
        whys.append(f"{x.get('file') or x.get('path')}: sha256 expected {x.get('expected')}, actual {x.get('actual')}")
    if not bad:
        return FiveWhys(r.id, whys, "the record names no differing file",
                        "rerun verify-checksums with per-file details")
    files = [str(x.get("file") or x.get("path")) for x in bad]
    return FiveWhys(r.id, whys, f"{_short(files, 3)} differ from the pinned manifest (changed upstream or corrupted)",
                    "re-download at the pinned revision; if upstream changed, review and re-pin the manifest")


def _integrity(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    bad = [c for c in r.details.get("checks", []) if not c["ok"]]
    for c in bad[:3]:
        if c["field"] == "shape":
            whys.append(f"config implies {c['tensor']} of shape {c['config']} but the file holds {c['tensors']}")
        elif c["field"] == "present":
            whys.append(f"config implies {c['tensor']} of shape {c['config']} but the file lacks it")
        else:
            whys.append(f"the file holds {c['tensor']} {c['tensors']}, which the config does not explain")
    root = "config.json does not describe these tensors" if bad else (r.message or "nothing could be checked")
    return FiveWhys(r.id, whys, root,
                    "use the config.json of the same revision as the weights, or fix the config the converter embedded")


def _crash(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    crashes = r.details.get("crashes") or ([{"scenario": r.details.get("scenario", {}).get("id"),
                                              "returncode": r.details.get("returncode"),
                                              "signal": r.details.get("signal"),
                                              "stage": r.details.get("stage"),
                                              "stderr_tail": r.details.get("stderr_tail", "")}])
    for c in crashes[:3]:
        how = c.get("signal") or f"exit code {c.get('returncode')}"
        last = [ln for ln in (c.get("stderr_tail") or "").splitlines() if ln.strip()][-1:]
        whys.append(f"scenario {c.get('scenario')} died by {how} while {c.get('stage')}"
                    + (f"; last stderr line: {last[0][:200]}" if last else ""))
    c = crashes[0]
    return FiveWhys(r.id, whys, f"the runtime process died ({c.get('signal') or 'exit ' + str(c.get('returncode'))}) "
                    f"in {c.get('stage')} of {c.get('scenario')}",
                    "reproduce that scenario alone with faulthandler (stderr tail above) and fix the native fault")


def _garbage(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    for g in (r.details.get("garbage") or [])[:3]:
        whys.append(f"{g['scenario']} produced {g['output'][:80]!r}: {', '.join(g['reasons'])}")
    return FiveWhys(r.id, whys, "the model's outputs are not text (wrong layout, broken weights or tokenizer)",
                    "compare logits with the source model (I-1/T5) on one prompt to find the first diverging layer")


def _scenarios(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    failed = r.details.get("failed") or []
    by_id = {rec.details.get("scenario", {}).get("id"): rec for rec in ctx.records}
    for sid in failed[:3]:
        rec = by_id.get(sid)
        whys.append(f"{sid}: {rec.details.get('reason') if rec else 'no record'}")
    first = by_id.get(failed[0]) if failed else None
    return FiveWhys(r.id, whys, (first.details.get("reason") if first is not None else r.message)
                    or "see the scenario records", "fix the first failing scenario's error, then rerun the tier")


def _patterns(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    d = r.details
    rows = d.get("failures") or d.get("per_prompt") or d.get("prompts") or []
    if isinstance(rows, dict):
        rows = [{"id": k, **(v if isinstance(v, dict) else {"output": v})} for k, v in rows.items()]
    failed = [x for x in rows if isinstance(x, dict) and not x.get("passed", x.get("matched", False))]
    for x in failed[:3]:
        whys.append(f"prompt {x.get('id') or x.get('prompt_id')} "
                    f"expected /{x.get('expected_pattern') or x.get('pattern')}/, "
                    f"model produced {str(x.get('output') or x.get('text') or '')[:80]!r}")
    root = f"{len(failed)} prompts were answered wrongly" if failed else "the record lists no failing prompt"
    return FiveWhys(r.id, whys, root,
                    "check the answers against the source model's (T5): a shared wrong answer is the model, "
                    "a new one the conversion")


def _scenario(r: Evidence, ctx: Context) -> FiveWhys:
    d = r.details
    whys = _first(_symptom(r))
    whys.append(f"{d['scenario']['modality']} of prompt {d['scenario'].get('prompt_id')} on "
                f"{d['scenario']['variant']}/{d['scenario']['backend']} ended '{d['outcome']}' "
                f"during {d['stage']}: {d.get('reason')}")
    if d.get("output_excerpt"):
        whys.append(f"the model produced {d['output_excerpt'][:120]!r}")
    elif (d.get("stderr_tail") or "").strip():
        whys.append("last stderr: " + d["stderr_tail"].strip().splitlines()[-1][:200])
    return FiveWhys(r.id, whys, d.get("reason") or d["outcome"], "rerun this scenario alone (apr-qa run) and inspect")


def _lost(details: dict[str, Any]) -> str:
    """T7/T8's items the variant lost against its reference, as one why ("" when none)."""
    lost = details.get("lost") or []
    if not lost:
        return ""
    return ("lost: " + "; ".join(f"{x['id']} {x['reference']} -> {x['model']}" for x in lost[:4])
            + (f" and {len(lost) - 4} more" if len(lost) > 4 else ""))


# The overlay that evaluates on golden-v2 (110 prompts with reference answers).
GOLDEN_V2 = "--configfile config/config.yaml config/golden-v2.yaml"


def _accuracy(r: Evidence, ctx: Context) -> FiveWhys:
    """T7/T8: which prompts (or pairs) the variant lost against its reference, and whether its logits
    stayed within the level's limits (T9) - a quantization error beyond them, or sensitive prompts."""
    d = r.details
    whys = _first(_symptom(r))
    model, ref = d.get("model_accuracy") or {}, d.get("reference_accuracy") or {}
    whys.append(f"accuracy {model.get('value')} vs the reference's {ref.get('value')} ({d.get('definition', '')})")
    if lost := _lost(d):
        whys.append(lost)
    t9 = ctx.sibling("T9")
    if t9 is not None and not t9.passed:
        whys.append(f"the logits diverge beyond the level's conversion limit as well (T9: {t9.message})")
        root = "the quantization error of this level changes the model's answers"
        fix = ("use a higher-precision level, or keep the most sensitive tensors (embeddings, output) at "
               "higher precision")
    else:
        whys.append("the logits stay within the level's conversion limit (T9), so few positions changed: "
                    "the lost prompts have a small margin between their right and wrong continuations")
        root = "prompts with a small margin flip under this level's rounding"
        fix = "rerun with more runs per prompt to confirm; if it holds, prefer the next higher-precision level"
    return FiveWhys(r.id, whys, root, fix)


def _logit_limits(r: Evidence, ctx: Context) -> FiveWhys:
    d = r.details
    whys = _first(_symptom(r))
    whys.append(f"level {d.get('level')}: KLD p99 {d.get('kld_p99')}, max {d.get('kld_max')} over "
                f"{(r.measured or {}).get('positions') if isinstance(r.measured, dict) else '?'} prompt positions")
    c8 = ctx.sibling("C8", "I-4")
    if c8 is not None and not c8.passed:
        whys.append(f"tensor values drift beyond their tolerance too ({c8.id}: {c8.message})")
        root = "the quantized tensors lose more precision than this level normally does"
    else:
        root = (f"the values are within their tolerance, yet the logits diverge beyond an order of magnitude over "
                f"llama.cpp's published figure for {d.get('level')}: a conversion defect, or a model far more "
                "sensitive to this rounding than an 8B one")
    return FiveWhys(r.id, whys, root, "check the quantizer on this model (validate's per-tensor errors); "
                    "if the values are right, use a higher-precision level")


def _slow(r: Evidence, ctx: Context) -> FiveWhys:
    whys = _first(_symptom(r))
    if r.details:
        whys.append("record details: " + ", ".join(f"{k}={str(v)[:60]}" for k, v in list(r.details.items())[:4]))
    what = "download" if r.id.startswith("D") else "inference"
    return FiveWhys(r.id, whys, f"the {what} is slower than the Andon's yellow bound on this machine",
                    "check the machine's load and network; for inference try packed weights, a smaller "
                    "quantization level or a GPU" if what == "inference" else
                    "use a closer mirror (hub.endpoint) or pre-fill the HF cache")


def _scale_needed(n: float | None, half_width: float | None, distance: float) -> str:
    """How many items would resolve the interval, were the point estimate to hold: a 95 % interval's
    half-width shrinks as 1/sqrt(n), so it clears the limit at about n x (half-width / distance)^2."""
    if not n or not half_width:
        return ""
    if distance <= 0:
        return "; the estimate sits on the limit itself, so no sample size decides it"
    return f"; at this estimate about {math.ceil(n * (half_width / distance) ** 2)} would decide it (now {n:g})"


def _inconclusive(r: Evidence, ctx: Context) -> FiveWhys:
    """A gate whose 95 % interval spans its limit (evaluation/verdict.py): the data cannot decide, so the
    chain says by how much the interval misses and what measuring more would take."""
    m = r.measured if isinstance(r.measured, dict) else {}
    whys = _first(_symptom(r))
    if r.id in ("T7", "T8"):
        limit = float(r.details["limit_points"])
        runs = (r.details.get("paired_runs") or {}).get("pairs")
        whys.append(f"the paired degradation {m.get('degradation_points')} points has the 95 % interval "
                    f"[{m.get('ci_low')}, {m.get('ci_high')}]: it spans the {limit:g}-point limit")
        whys.append(f"its resolution is +-{m.get('resolution_points')} points over {runs or 'the'} paired runs"
                    + _scale_needed(runs, m.get("resolution_points"),
                                    abs((m.get("degradation_points") or 0.0) - limit)))
        if lost := _lost(r.details):
            whys.append(lost)
        root = "too few golden prompts (or runs per prompt) to resolve a band this narrow"
        fix = f"evaluate on golden-v2 (110 prompts with reference answers: {GOLDEN_V2}) or raise evaluation.runs"
    elif r.id == "Q1":
        target = r.details.get("target")
        whys.append(f"the variant's corpus accuracy is {m.get('ratio')} of the reference's, 95 % interval "
                    f"[{m.get('ci_low')}, {m.get('ci_high')}]: it spans the target {target}")
        whys.append(f"its resolution is +-{r.details.get('resolution')} over {m.get('tokens')} scored tokens"
                    + _scale_needed(m.get("tokens"), r.details.get("resolution"),
                                    abs((m.get("ratio") or 0.0) - (target or 0.0))))
        root = "too few corpus tokens scored to tell this variant's quality from the target"
        fix = "raise corpus.tokens (a GPU or cluster run can score 300000, as llama.cpp users do)"
    elif r.id == "T9":
        whys.append(f"the mean KLD's clustered interval reaches {m.get('mean_kld_ci95')}, above the limit "
                    f"{r.threshold}, while the typical prompt's interval {m.get('typical_prompt_kld_ci95')} starts "
                    "below it: a few prompts diverge far more than the rest")
        whys.append(f"{m.get('prompts')} prompts, {m.get('positions')} positions: too few prompts to tell a "
                    "heavy tail from a broken conversion")
        root = "the golden prompts are too few to tell a heavy-tailed but correct conversion from a broken one"
        fix = ("read the corpus's KLD (Q1's evaluation, thousands of positions) for this level, and evaluate on "
               f"golden-v2 ({GOLDEN_V2})")
    else:
        whys.append("its 95 % interval spans the limit: the data cannot tell pass from fail")
        root = "too little data to resolve this gate's limit"
        fix = "measure more (prompts, runs or corpus tokens) and rerun"
    whys.append("a certificate never turns an undecided gate green: it is a warning until measured further")
    return FiveWhys(r.id, whys, root, fix)


def _generic(r: Evidence, ctx: Context) -> FiveWhys:
    whys = [_symptom(r)]
    if r.details:
        whys.append("record details: " + ", ".join(f"{k}={str(v)[:60]}" for k, v in list(r.details.items())[:4]))
    return FiveWhys(r.id, whys, f"{r.name}: measured {r.measured} against {r.threshold}",
                    "no rule for this gate: review the record")


RULES: dict[str, Callable[[Evidence, Context], FiveWhys]] = {
    "C3": _missing_tensors, "C6": _missing_tensors, "I-2": _missing_tensors,
    "C7": _shapes, "C8": _precision, "I-4": _precision,
    "D4": _checksum, "G0": _integrity, "G1": _scenarios, "G2": _scenarios, "G3": _crash, "G4": _garbage,
    "T4": _patterns, "T6": _slow, "T7": _accuracy, "T8": _accuracy, "T9": _logit_limits, "D6": _slow,
}


def analyze(record: Evidence, ctx: Context | None = None) -> FiveWhys:
    ctx = ctx or Context()
    rule: Callable[[Evidence, Context], FiveWhys]
    if record.details.get("verdict") == "inconclusive":
        rule = _inconclusive
    elif record.id in RULES:
        rule = RULES[record.id]
    elif "scenario" in record.details:
        rule = _crash if record.details.get("outcome") == "crash" else _scenario
    else:
        rule = _generic
    result = rule(record, ctx)
    result.whys = result.whys[:5]
    return result


def annotate(records: list[Evidence], ctx: Context | None = None) -> None:
    """Attach details["five_whys"] to every failed record, whatever its level (warnings too)."""
    ctx = ctx or Context(records=records)
    if not ctx.records:
        ctx.records = records
    for r in records:
        if not r.passed and r.details.get("outcome") != "skip":
            r.details["five_whys"] = analyze(r, ctx).to_dict()


def stage_failures(gates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Five Whys of every failed gate of a stage evidence file (gate dicts), whatever its level:
    the chain recorded in the evidence, or one derived now for files written without it."""
    records = [Evidence(g["id"], g.get("name", ""), bool(g.get("passed")), g.get("measured"), g.get("threshold"),
                        g.get("level", "fail"), g.get("message", ""), dict(g.get("details") or {})) for g in gates]
    ctx = Context(records=records)
    return [r.details.get("five_whys") or analyze(r, ctx).to_dict() for r in records if not r.passed]
