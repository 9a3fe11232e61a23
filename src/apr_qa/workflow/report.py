"""results/report.md: the Andon board of a workflow run, written whatever happened.

Built only from the files the stages left behind (manifests, conversion summaries, evidence,
evaluations, andon events), so the same code writes the report after a green run (the report
rule) and after a failed one (the Snakefile's onerror handler).
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..fsutil import sha256_file, write_text_atomic
from .andon import stop_reason
from .certify import _events, paths, read_json, summarize
from .fingerprint import STAGES as FP_STAGES, fingerprint

COLOUR = {"green": "green", "yellow": "YELLOW", "red": "RED", None: "-"}
STACK = ("apr-qa", "numpy", "torch", "gguf", "safetensors", "tokenizers", "huggingface_hub", "snakemake")


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _num(x: Any, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt) if isinstance(x, (int, float)) else str(x)


def _with_ci(block: Any, fmt: str = ".3g", scale: float = 1.0) -> str:
    if not isinstance(block, dict):
        return "-"
    value = block.get("value", block.get("mean"))
    if value is None:
        return "-"
    ci = block.get("ci95")
    text = format(value * scale, fmt)
    return text + (f" [{format(ci[0] * scale, fmt)}, {format(ci[1] * scale, fmt)}]" if ci else "")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def _variant_rows(results: Path, models: list[str], variants: list[str]) -> list[dict[str, Any]]:
    events = _events(results)
    rows = []
    for model in models:
        for variant in variants:
            s = summarize(results, model, variant, events=events)
            p = paths(results, model, variant)
            s["_convert"] = read_json(p["convert"]) or {}
            s["_eval"] = read_json(p["evaluate"]) or {}
            s["_validate"] = read_json(p["validate"]) or {}
            s["_size"] = p["apr"].stat().st_size if p["apr"].exists() else None
            rows.append(s)
    return rows


def render(results: Path, models: list[str], variants: list[str], prompts: Path | None) -> tuple[str, str]:
    rows = _variant_rows(results, models, variants)
    counts = {k: sum(r["status"] == k for r in rows) for k in ("CERTIFIED", "BLOCKED", "SKIPPED", "PENDING")}
    overall = "RED" if counts["BLOCKED"] else "YELLOW" if counts["SKIPPED"] or counts["PENDING"] else "GREEN"
    out = ["# apr-qa certification report", ""]
    stop = stop_reason(results / "andon")
    if stop is not None:
        out += [f"**LINE STOPPED** ({stop.get('policy')}): {stop.get('level')} in {stop.get('stage')} of "
                f"{stop.get('subject')}: {stop.get('message')}", "",
                "Review the cause (Five Whys), then `apr-qa andon reset` to restart the line.", ""]
    out += [f"Overall: **{overall}** - " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()), ""]

    out += ["## Status (Andon board)", ""]
    table = []
    for r in rows:
        st = r["stages"]
        why = ""
        if r["status"] == "BLOCKED":
            why = f"{r['gate']} ({r['level']}, {r['stage']}): {r['reason']}"
        elif r["status"] in ("SKIPPED",):
            why = r.get("reason") or ""
        elif r["status"] == "PENDING":
            why = f"{r['stage']} not run"
        table.append([r["model"], r["variant"], r["status"], *(COLOUR[st[s]["colour"]] for s in st), why])
    out += [tabulate(table, ["model", "variant", "status", "download", "convert", "validate", "evaluate",
                             "blocking gate / reason"], tablefmt="github"), ""]

    out += ["## Metrics", "", "Intervals are 95 % (Wilson for proportions, Student t for means).", ""]
    table = []
    for r in rows:
        c, e = r["_convert"], r["_eval"]
        lc = _get(e, "logit_consistency", "spec_7_4") or _get(e, "embedding_consistency") or {}
        kld = _get(e, "logit_consistency", "kl_divergence") or {}
        table.append([
            r["model"], r["variant"], _num(r["_size"] / 1e6 if r["_size"] else None, ".1f"),
            _num(c.get("seconds"), ".1f"), _num(c.get("param_count"), ","),
            _with_ci(_get(e, "accuracy", "overall")), _with_ci(e.get("latency")),
            _num(lc.get("agreement_rate", lc.get("cosine_min"))),
            _num(kld.get("mean") if isinstance(kld, dict) else None),
            _num(_get(e, "memory", "peak_bytes") and _get(e, "memory", "peak_bytes") / 2**20, ".0f"),
        ])
    out += [tabulate(table, ["model", "variant", "size MB", "convert s", "params", "accuracy", "latency s",
                             "logit agreement / cos min", "mean KLD", "peak MiB"], tablefmt="github"), ""]

    out += ["## Gates", "", "Failed and warning gates (measured vs threshold); passing gates are counted.", ""]
    table = []
    for r in rows:
        for stage, s in r["stages"].items():
            gates = s["gates"]
            if not gates:
                continue
            bad = [g for g in gates if not g.get("passed")]
            table.append([r["model"], r["variant"], stage, f"{len(gates) - len(bad)}/{len(gates)}",
                          "; ".join(f"{g['id']} {g.get('level', '')}: {_num(g.get('measured'))} vs "
                                    f"{_num(g.get('threshold'))}" for g in bad) or "-"])
    out += [tabulate(table, ["model", "variant", "stage", "passed", "not passed"], tablefmt="github"), ""]

    out += ["## Provenance", ""]
    table = []
    for model in models:
        m = read_json(paths(results, model)["manifest"]) or {}
        table.append([model, m.get("repo", "-"), m.get("commit", "-"), m.get("status", "not downloaded"),
                      len(m.get("files", [])), _num(m.get("total_bytes") and m["total_bytes"] / 1e6, ".1f")])
    out += [tabulate(table, ["model", "repo", "commit", "download", "files", "MB"], tablefmt="github"), ""]
    if prompts is not None and prompts.exists():
        out += [f"Golden set: `{prompts}` sha256 `{sha256_file(prompts)}`", ""]

    out += ["## Stack", ""]
    table = [[stage, v or "-", fingerprint(stage, v).split(":")[1]]
             for stage, (_, _, per_variant) in FP_STAGES.items() for v in (variants if per_variant else [None])]
    out += [tabulate(table, ["stage", "variant", "fingerprint"], tablefmt="github"), ""]
    out += ["Host: " + ", ".join([platform.node(), f"{platform.system()} {platform.release()}", platform.machine(),
                                  f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}"]), "",
            "Versions: " + ", ".join(f"{d} {_version(d)}" for d in STACK), "",
            f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}", ""]
    return "\n".join(out), overall


def write_report(results: Path, models: list[str], variants: list[str], out: Path, prompts: Path | None) -> str:
    text, overall = render(results, models, variants, prompts)
    write_text_atomic(out, text)
    return overall
