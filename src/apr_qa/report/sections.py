"""The parts of the workflow report meant to be looked at: the Andon board (one coloured tile per
model x variant), the per-variant figures (KLD / same-top-1, latency distributions, written next to
the report as PNG and SVG) and one detail section per variant with every gate and links to its
evidence and logs.

Input rows are the report's variant rows (apr_qa.report.board._variant_rows: a summary per
model/variant with "_eval", "_convert", "_validate", "_size" and, when the model has a
certification, "_certification": certification_view). Links are relative to the folder the report
is written to, so report.md and report.html work from a copy of the whole results folder.

A variant's stage gates passing is not its model's certification: the board shows the model's
certification status wherever the model has one (board_status), so a row never says CERTIFIED while
the model is PROVISIONAL or BLOCKED, and each tile counts the variant's failed scenarios.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..layout import ARTIFACTS, STAGE_OUTPUT, path
from ..layout import log as log_path
from .render import Block, Cell, anchor

# What each tone means on the board (the legend under it).
TONE_MEANING = {
    "green": "certified: every gate passed (and the model's certification, when it has one, is CERTIFIED)",
    "yellow": "certified with warnings: a warn-level gate did not pass (or a slow conversion), some of its "
              "certification scenarios failed, or the model's certification is PROVISIONAL",
    "red": "blocked by a tripped gate (fail or halt level), a failed stage command, or the model's certification "
           "(BLOCKED)",
    "blocked": "not run: the line stopped, an earlier stage is missing, or the model was skipped",
}

MAX_SCENARIO_IDS = 5  # ids named in a board cell; the variant's details list every one


def certification_view(ctx: dict[str, Any], records: list[Any], variant: str) -> dict[str, Any]:
    """What the board needs from a model's certification for one variant: the model's status, why it
    is not CERTIFIED, and the variant's failed scenarios (failed, crashed or timed out)."""
    from ..certify.mqs import BLOCKED_BELOW, CERTIFIED_FROM, outcome_of

    mqs = ctx["mqs"]
    reason = "; ".join(f"{g['id']}: {g['reason']}" for g in mqs["gateways"] if not g["passed"])
    if not reason and mqs["status"] != "CERTIFIED":
        reason = f"MQS {mqs['raw']} (certified from {CERTIFIED_FROM}, blocked below {BLOCKED_BELOW})"
    failed = [{"id": r.id, "outcome": outcome_of(r), "reason": r.details.get("reason") or r.message}
              for r in records if (r.details.get("scenario") or {}).get("variant") == variant
              and outcome_of(r) in ("fail", "crash", "timeout")]
    return {"status": mqs["status"], "tier": ctx.get("tier"), "raw": mqs["raw"], "reason": reason,
            "failed_scenarios": failed}


def board_status(row: dict[str, Any]) -> str:
    """The status the board shows: the variant's own (its stage gates) unless it passed them and its
    model's certification says PROVISIONAL or BLOCKED, which then stands for the row."""
    cert = row.get("_certification")
    if row["status"] == "CERTIFIED" and cert and cert["status"] != "CERTIFIED":
        return str(cert["status"])
    return str(row["status"])


def failed_scenarios(row: dict[str, Any]) -> list[dict[str, Any]]:
    return list((row.get("_certification") or {}).get("failed_scenarios", []))


def scenario_summary(row: dict[str, Any]) -> str:
    """"N: id, id, ..." of the variant's failed scenarios, or "-"."""
    failed = failed_scenarios(row)
    if not failed:
        return "-"
    ids = ", ".join(f["id"] for f in failed[:MAX_SCENARIO_IDS])
    return f"{len(failed)}: {ids}" + (f" (+{len(failed) - MAX_SCENARIO_IDS} more)" if len(failed) > MAX_SCENARIO_IDS
                                      else "")


def tone(row: dict[str, Any]) -> str:
    """green / yellow / red / blocked for one variant row."""
    status = board_status(row)
    if status == "BLOCKED":
        return "red"
    if status in ("SKIPPED", "PENDING"):
        return "blocked"
    if status == "PROVISIONAL" or failed_scenarios(row):
        return "yellow"
    return "yellow" if any(s["colour"] == "yellow" for s in row["stages"].values()) else "green"


def _num(x: Any) -> str:
    if isinstance(x, float):
        return format(x, ".4g")
    if isinstance(x, (dict, list)):
        return ", ".join(f"{k} {v}" for k, v in x.items()) if isinstance(x, dict) else ", ".join(map(str, x))
    return "-" if x is None else str(x)


def not_passed(row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(stage, gate) of every gate that did not pass, tripped (fail/halt) ones first."""
    out = [(stage, g) for stage, s in row["stages"].items() for g in s.get("gates", []) if not g.get("passed")]
    return sorted(out, key=lambda sg: sg[1].get("level") not in ("fail", "halt"))


def headline(row: dict[str, Any]) -> str:
    """The failing gate with its expected vs actual value, why the variant did not run, or why its
    model's certification is not CERTIFIED (with the variant's failed scenarios)."""
    if board_status(row) != row["status"]:
        cert = row["_certification"]
        failed = failed_scenarios(row)
        return (f"model certification {cert['status']}: {cert['reason']}"
                + (f"; {len(failed)} failed scenarios of this variant" if failed else ""))
    bad = not_passed(row)
    if row["status"] == "BLOCKED" and not bad:
        return f"{row.get('stage')}: {row.get('reason') or 'the stage command failed'}"
    if bad:
        stage, g = bad[0]
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        return (f"{g['id']} {g.get('level', '')} in {stage}: expected {_num(g.get('threshold'))}, "
                f"actual {_num(g.get('measured'))}{more}")
    if row["status"] in ("SKIPPED", "PENDING"):
        return row.get("reason") or f"{row.get('stage', 'a stage')} not run"
    return "all gates passed"


def detail_anchor(row: dict[str, Any]) -> str:
    return "variant-" + anchor(f"{row['model']}-{row['variant']}")


def board_blocks(rows: list[dict[str, Any]], models: list[str], variants: list[str]) -> list[Block]:
    """The tile board (models down, variants across; a tile links to its variant's details) and the
    legend of its colours."""
    by_key = {(r["model"], r["variant"]): r for r in rows}
    table = []
    for model in models:
        line: list[Any] = [model]
        for variant in variants:
            r = by_key.get((model, variant))
            if r is None:
                line.append(Cell("-", "none"))
                continue
            t = tone(r)
            if r.get("_certification") and r["status"] not in ("SKIPPED", "PENDING"):
                label = board_status(r)  # the model's certification, never CERTIFIED above it
            else:
                label = {"green": "PASS", "yellow": "WARN", "red": "FAIL", "blocked": r["status"].lower()}[t]
            failed = failed_scenarios(r)
            title = headline(r)
            if failed:
                label += f" · {len(failed)} failed"
                title += "; failed scenarios: " + scenario_summary(r)
            line.append(Cell(label, t, href=f"#{detail_anchor(r)}", title=title))
        table.append(line)
    legend = "; ".join(f"**{t}**: {m}" for t, m in TONE_MEANING.items())
    # HTML only: report.md keeps its status table as the board (one row per variant)
    return [("html_only", ("table", ["model", *variants], table, {"class": "board", "sortable": False})),
            ("html_only", ("p", "Tiles link to each variant's details (hover for the failing gate and the failed "
                                f"scenarios; a certified model's tiles show its certification status). {legend}."))]


def _rel(file: Path, out_dir: Path) -> str:
    return os.path.relpath(file, out_dir).replace(os.sep, "/")


def _links(results: Path, row: dict[str, Any], out_dir: Path) -> str:
    """Links to the variant's evidence JSON and job logs that exist (relative to the report)."""
    model, variant = row["model"], row["variant"]
    wc = {"model": model, "variant": variant}
    evidence = [(stage, path(results, STAGE_OUTPUT[stage], **wc)) for stage in STAGE_OUTPUT]
    evidence += [("summary", path(results, "summary", **wc)), ("sha256 record", path(results, "apr_record", **wc)),
                 ("certification", path(results, "certification", model=model))]
    logs = [("download", log_path(results, "download", model))]
    logs += [(job, log_path(results, job, model, variant)) for job in ("convert", "validate", "evaluate")]
    logs += [(f"gate {stage}", log_path(results, "gate", stage, model, variant)) for stage in ("validate", "evaluate")]
    logs += [("summarize", log_path(results, "summarize", model, variant)),
             ("certify", log_path(results, "certify", model))]

    def present(files: list[tuple[str, Any]]) -> str:
        found = [f"[{label}]({_rel(Path(f), out_dir)})" for label, f in files if Path(f).exists()]
        return " · ".join(found) or "none written"

    return f"Evidence: {present(evidence)}. Logs: {present(logs)}."


def _gate_table(row: dict[str, Any]) -> Block:
    rows = []
    for stage, s in row["stages"].items():
        for g in s.get("gates", []):
            passed = g.get("passed")
            t = "green" if passed else "red" if g.get("level") in ("fail", "halt") else "yellow"
            rows.append([stage, g.get("id", "?"), g.get("name", ""), g.get("level", ""),
                         Cell("pass" if passed else "FAIL" if t == "red" else "warn", t),
                         _num(g.get("threshold")), _num(g.get("measured")), g.get("message", "")[:300]])
    return ("table", ["stage", "gate", "name", "level", "result", "expected", "actual", "message"], rows)


def _metrics(row: dict[str, Any]) -> list[list[Any]]:
    e = row["_eval"]
    kl = (e.get("logit_consistency") or {}).get("kl_divergence") or {}
    andon = e.get("accuracy_andon") or {}
    f1 = andon.get("f1")
    lat = e.get("latency") or {}
    pairs = [
        ("size", f"{row['_size'] / 1e6:.2f} MB" if row.get("_size") else None),
        ("accuracy (variant / reference)", f"{(andon.get('model') or {}).get('value')} / "
                                           f"{(andon.get('reference') or {}).get('value')}" if andon else None),
        ("token F1 (variant / reference)", f"{f1['model']['mean']} / {f1['reference']['mean']}" if f1 else None),
        ("token F1 degradation (points, 95 % interval)",
         f"{f1['degradation_points']} {f1['degradation_ci95']}" if f1 else None),
        ("accuracy band (exact match and F1)" if f1 else "accuracy band", andon.get("band")),
        ("mean KLD", (kl.get("kld") or {}).get("mean")),
        ("same top-1 rate", (kl.get("same_top1") or {}).get("rate")),
        ("latency mean / p50 / max (s)",
         " / ".join(format(lat[k], ".4g") for k in ("mean", "p50", "max")) if lat.get("mean") is not None else None),
        ("device s per 1k tokens", (e.get("cost") or {}).get("device_seconds_per_1k_tokens")),
    ]
    return [[k, _num(v)] for k, v in pairs if v is not None]


def detail_blocks(results: Path, rows: list[dict[str, Any]], out_dir: Path) -> list[Block]:
    """One collapsible section per variant: its status, headline, metrics, every gate and its files."""
    out: list[Block] = [("h2", "Variant details"),
                        ("p", "Every gate of each variant (expected vs actual), its key measurements, and links to "
                              "the evidence JSON and the job logs it came from.")]
    for r in rows:
        t = tone(r)
        inner: list[Block] = [("p", f"**{t}**: {headline(r)}")]  # the status word stays in the board only
        metrics = _metrics(r)
        if metrics:
            inner.append(("html_only", ("table", ["measurement", "value"], metrics, {"sortable": False})))
        failed = failed_scenarios(r)
        if failed:
            inner.append(("p", f"{len(failed)} failed certification scenarios of this variant (the model's "
                               f"certification: {r['_certification']['status']}):"))
            inner.append(("table", ["scenario", "outcome", "reason"],
                          [[f["id"], f["outcome"], str(f["reason"])[:300]] for f in failed], {"sortable": False}))
        inner.append(("p", _links(results, r, out_dir)))
        inner.append(("html_only", _gate_table(r)))
        out.append(("details", f"{r['model']} / {r['variant']}: {t}", inner, detail_anchor(r)))
    return out


# -- figures ------------------------------------------------------------------------------------------

def _kld_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        kl = ((r.get("_eval") or {}).get("logit_consistency") or {}).get("kl_divergence") or {}
        kld, top1 = kl.get("kld") or {}, kl.get("same_top1") or {}
        if kld.get("mean") is not None and top1.get("rate") is not None:
            out.append({"name": f"{r['model']}/{r['variant']}", "kld": kld["mean"], "kld_se": kld.get("se"),
                        "top1": top1["rate"], "top1_se": top1.get("se")})
    return out


def _latency_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        lat = (r.get("_eval") or {}).get("latency") or {}
        name = f"{r['model']}/{r['variant']}"
        if lat.get("samples"):
            out.append({"name": name, "samples": lat["samples"]})
        elif lat.get("mean") is not None and lat.get("min") is not None:
            out.append({"name": name, "mean": lat["mean"], "min": lat["min"], "max": lat["max"]})
    return out


def figure_blocks(rows: list[dict[str, Any]], out_dir: Path) -> list[Block]:
    """KLD / same-top-1 and latency figures (kld.png/.svg, latency.png/.svg in out_dir, always written)."""
    from ..certify import plots

    out: list[Block] = [("h2", "Per-variant figures")]
    files = {name: out_dir / ARTIFACTS[f"{name}_png"] for name in ("kld", "latency")}
    svgs = {name: out_dir / ARTIFACTS[f"{name}_svg"] for name in ("kld", "latency")}
    kld = _kld_rows(rows)
    out.append(("p", "Agreement of each variant's next-token distribution with its fp32 reference on the golden "
                     "prompts: mean KL divergence (+- standard error, llama.cpp's definition) and the rate at which "
                     "both pick the same top token."))
    if kld:
        plots.save(plots.kld_figure(kld), files["kld"], svgs["kld"])
    else:
        plots.placeholder("no evaluated variant measured KLD (encoders compare embeddings instead)", files["kld"],
                          svgs["kld"])
    out.append(("img", files["kld"], "KLD and same top-1 per variant", svgs["kld"]))
    lat = _latency_rows(rows)
    out.append(("p", "Request latency of every measured run (batch size 1, after one untimed warm-up)."))
    if lat:
        plots.save(plots.latency_figure(lat), files["latency"], svgs["latency"])
    else:
        plots.placeholder("no evaluated variant measured latency", files["latency"], svgs["latency"])
    out.append(("img", files["latency"], "Latency distribution per variant", svgs["latency"]))
    return out
