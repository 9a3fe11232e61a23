"""The evaluation JSON (one per model x variant): stable key names, written atomically.

Keys listed in VOLATILE_KEYS change from run to run (clock, host, timing and memory figures);
`stable_view` drops them so that two evaluations of the same inputs compare equal.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import socket
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import AprQaError
from ..evidence import Evidence, exit_code, jsonable, worst_level
from ..fsutil import write_text_atomic
from .prompts import GoldenSet
from .protocol import EvalOptions
from .runner import Evaluation

SCHEMA_VERSION = 1
VOLATILE_KEYS = ("started", "finished", "duration_s", "host", "latency", "ttft", "throughput", "memory",
                 "cost")
VOLATILE_GATE_FIELDS = {"T2": ("measured", "message"), "T3": ("measured", "message"),
                        "T6": ("measured", "message", "passed", "details")}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def build_report(ev: Evaluation, golden: GoldenSet, opts: EvalOptions, device: str, started: str,
                 finished: str, duration_s: float) -> dict[str, Any]:
    import torch

    s = ev.sections
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "runtime": {"name": "apr-qa", "version": __version__, "torch": torch.__version__, "device": device,
                    "dtype": ev.model.get("runtime_dtype"), "threads": torch.get_num_threads()},
        "model": ev.model,
        "reference": {"path": ev.reference["path"], "format": ev.reference["format"],
                      "sha256": ev.reference["sha256"], "dtype": "float32",
                      "golden_reference": ev.reference.get("golden_reference")},
        "prompts": golden.summary(),
        "protocol": ev.protocol,
        "variant": s.get("variant"),
        "sampling": opts.sampling_block() if ev.protocol == "generation" else None,
        "config": {"runs": opts.runs, "confidence": opts.confidence, "timeout_s": opts.timeout_s,
                   "memory_limit_bytes": opts.memory_limit_bytes,
                   "agreement": {"top_k": opts.agreement.top_k, "logit_tolerance": opts.agreement.logit_tolerance,
                                 "min_agreement": opts.agreement.min_agreement}},
        "runs": s.get("runs"),
        "accuracy": s.get("accuracy"),
        "latency": s.get("latency"),
        "ttft": s.get("ttft"),
        "throughput": s.get("throughput"),
        "memory": s.get("memory"),
        "logit_consistency": s.get("logit_consistency"),
        "embedding_consistency": s.get("embedding_consistency"),
        "similarity": s.get("similarity"),
        "accuracy_andon": s.get("accuracy_andon"),
        "corpus": s.get("corpus"),
        "cost": s.get("cost"),
        "invariants": s.get("invariants"),
        "gates": [g.to_dict() for g in ev.gates],
        "verdict": {"worst_failed_level": worst_level(ev.gates), "exit_code": exit_code(ev.gates)},
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                 "python": platform.python_version(), "cpu_count": os.cpu_count()},
        "started": started,
        "finished": finished,
        "duration_s": duration_s,
        "volatile_keys": list(VOLATILE_KEYS) + [f"gates[{g}].{f}" for g, fs in VOLATILE_GATE_FIELDS.items()
                                                for f in fs],
    }
    return report


def stable_view(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the values that change between runs of the same evaluation."""
    out = copy.deepcopy(report)
    for key in VOLATILE_KEYS:
        out.pop(key, None)
    for gate in out.get("gates", []):
        for f in VOLATILE_GATE_FIELDS.get(gate["id"], ()):
            gate.pop(f, None)
    return out


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    # allow_nan=False: a NaN metric is a bug to surface, not a value to pass downstream
    try:
        text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False, default=jsonable)
    except ValueError as exc:
        raise AprQaError(f"evaluation report not written: {exc}", path) from None
    write_text_atomic(path, text + "\n")


def _fmt_ci(ci: list[float] | None, fmt: str) -> str:
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "[n/a]"


def summary_lines(report: dict[str, Any], gates: list[Evidence]) -> list[str]:
    """A short human summary for stderr."""
    m = report["model"]
    lines = [f"apr-qa eval: {m['path']} ({report['variant']}, {report['protocol']}) vs {report['reference']['path']}"]
    lat = report.get("latency") or {}
    if report["protocol"] == "generation" and report.get("accuracy"):
        acc = report["accuracy"]["overall"]
        greedy = report["accuracy"]["greedy"]
        f1 = report["accuracy"].get("f1")
        lines.append(f"  accuracy {acc['value']:.3f} {_fmt_ci(acc['ci95'], '.3f')} over {acc['n']} sampled runs"
                     + (f"; token F1 {f1['mean']:.3f} {_fmt_ci(f1['ci95'], '.3f')} over {f1['n']}" if f1 else "")
                     + f"; greedy {greedy['successes']}/{greedy['n']}")
        tps = report["throughput"]["decode_tokens_per_s"]
        if tps["n"]:
            lines.append(f"  latency mean {lat['mean']:.3f} s (p50 {lat['p50']:.3f}, p99 {lat['p99']:.3f}); "
                         f"decode {tps['mean']:.1f} tok/s {_fmt_ci(tps['ci95'], '.1f')}")
        lc = report["logit_consistency"]
        kld, agreement = lc["kl_divergence"], lc["top_k_agreement"]  # None where a stack returns top logits or none
        if kld:
            lines.append(f"  KLD mean {kld['kld']['mean']:.6f} +- {kld['kld']['se']:.6f} "
                         f"(max {kld['kld']['max']:.6f}); same top-1 {100 * kld['same_top1']['rate']:.2f} %")
        if agreement:
            lines.append(f"  top-k agreement rate {agreement['agreement_rate']:.3f} (information, not a gate)")
    elif report["protocol"] == "embedding" and report.get("embedding_consistency"):
        ec, sim = report["embedding_consistency"], report["similarity"]
        lines.append(f"  cosine vs reference min {ec['cosine_min']:.6f} mean {ec['cosine_mean']:.6f}; "
                     f"similarity margin {sim['margin']}")
        lines.append(f"  embed latency mean {lat['mean']:.4f} s (p99 {lat['p99']:.4f})")
    andon = report.get("accuracy_andon")
    if andon:
        ci = andon.get("degradation_ci95")
        lines.append(f"  accuracy vs reference: {andon['model'].get('value')} vs {andon['reference'].get('value')}, "
                     f"degradation {andon['degradation_points']} points, paired 95 % interval "
                     + (f"[{ci[0]:.1f}, {ci[1]:.1f}] (resolution +-{andon['resolution_points']:.1f})" if ci else "n/a")
                     + f" ({andon['band']})")
        f1 = andon.get("f1")
        if f1:
            fci, fhw = f1.get("degradation_ci95"), f1.get("resolution_points")
            lines.append(f"  token F1 vs reference: {f1['model']['mean']:.3f} vs {f1['reference']['mean']:.3f}, "
                         f"degradation {f1['degradation_points']} points, paired 95 % interval "
                         + (f"[{fci[0]:.1f}, {fci[1]:.1f}] (resolution +-{fhw:.1f})" if fci else "n/a")
                         + f"; T7/T8 on both: {andon['verdicts']['T7']} / {andon['verdicts']['T8']}")
    lines.append(f"  peak memory {report['memory']['peak_bytes'] / 2**20:.0f} MiB")
    lines.append("  gates: " + ", ".join(f"{g.id} {'pass' if g.passed else g.level.upper()}" for g in gates))
    for g in gates:
        if not g.passed:
            lines.append(f"  {g.level.upper()} {g.id} ({g.name}): measured {g.measured}, threshold {g.threshold}"
                         + (f" - {g.message}" if g.message else ""))
    return lines
