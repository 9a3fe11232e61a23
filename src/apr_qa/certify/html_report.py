"""Reports of a certify evidence file: Markdown sections (for the workflow's report) and one
self-contained HTML page (every value escaped, the Pareto plot embedded as a base64 PNG)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..evidence import Evidence
from ..fsutil import write_text_atomic
from .mqs import category_of, outcome_of


def _summary(ctx: dict[str, Any]) -> list[list[Any]]:
    m = ctx["mqs"]
    return [["model", ctx["subject"]], ["tier", f"{ctx.get('tier')} (pass at raw >= {ctx.get('pass_threshold')})"],
            ["MQS raw", m["raw"]], ["MQS normalized", f"{m['normalized']:.1f}"], ["grade", m["grade"]],
            ["status", m["status"]], ["tier passed", ctx.get("tier_passed")],
            ["tests", f"{m['tests_passed']}/{m['tests']} passed, {m['crashes']} crashes, {m['timeouts']} timeouts"]]


def _gateways(ctx: dict[str, Any]) -> list[list[Any]]:
    return [[g["id"], "pass" if g["passed"] else "FAIL", g["reason"]] for g in ctx["mqs"]["gateways"]]


def _categories(ctx: dict[str, Any]) -> list[list[Any]]:
    return [[k, f"{c['passed']}/{c['total']}", f"{c['points']}/{c['max']}"] for k, c in ctx["mqs"]["categories"].items()]


def _failures(records: list[Evidence]) -> list[tuple[Evidence, dict]]:
    return [(r, r.details.get("five_whys") or {}) for r in records if not r.passed and outcome_of(r) != "skip"]


def markdown_sections(ctx: dict[str, Any], records: list[Evidence], pareto_rows: list[dict] | None = None) -> str:
    from tabulate import tabulate

    parts = [f"## Certification: {ctx['subject']}", "", tabulate(_summary(ctx), tablefmt="github", headers=["", ""]), "",
             "### Gateways", "", tabulate(_gateways(ctx), headers=["gate", "result", "reason"], tablefmt="github"), "",
             "### MQS categories", "", tabulate(_categories(ctx), headers=["category", "passed", "points"], tablefmt="github")]
    failures = _failures(records)
    if failures:
        parts += ["", "### Failures and their Five Whys", ""]
        for r, fw in failures[:50]:
            parts.append(f"- **{r.id}** ({category_of(r)}, {r.level}): measured `{r.measured}`, threshold `{r.threshold}`")
            for i, why in enumerate(fw.get("whys", []), 1):
                parts.append(f"  {i}. {why}")
            if fw:
                parts.append(f"  - root cause: {fw['root_cause']}; countermeasure: {fw['countermeasure']}")
    if pareto_rows:
        parts += ["", "### Pareto frontier", "", tabulate(
            [[p["name"], p["accuracy"], f"{p['latency_s']:.3f}", p["size_bytes"], "yes" if p["on_frontier"] else "no",
              p["value_score"]] for p in pareto_rows],
            headers=["variant", "accuracy", "latency s", "bytes", "frontier", "value"], tablefmt="github")]
    return "\n".join(parts) + "\n"


def _table(rows: list[list[Any]], headers: list[str] | None = None) -> str:
    e = html.escape
    head = "<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in headers) + "</tr>" if headers else ""
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def html_report(ctx: dict[str, Any], records: list[Evidence], pareto_png: str | Path | None = None) -> str:
    e = html.escape
    sections = [f"<h1>Certification: {e(ctx['subject'])}</h1>", _table(_summary(ctx)),
                "<h2>Gateways</h2>", _table(_gateways(ctx), ["gate", "result", "reason"]),
                "<h2>MQS categories</h2>", _table(_categories(ctx), ["category", "passed", "points"])]
    failures = _failures(records)
    if failures:
        sections.append("<h2>Failures and their Five Whys</h2>")
        for r, fw in failures:
            whys = "".join(f"<li>{e(w)}</li>" for w in fw.get("whys", []))
            root = f"<p>root cause: {e(fw['root_cause'])}<br>countermeasure: {e(fw['countermeasure'])}</p>" if fw else ""
            sections.append(f"<details><summary>{e(r.id)}: measured {e(str(r.measured))}, threshold "
                            f"{e(str(r.threshold))}</summary><ol>{whys}</ol>{root}</details>")
    if pareto_png:
        data = base64.b64encode(Path(pareto_png).read_bytes()).decode("ascii")
        sections.append(f'<h2>Pareto frontier</h2><img alt="Pareto frontier" src="data:image/png;base64,{data}">')
    sections.append("<h2>All records</h2>" + _table(
        [[r.id, category_of(r), outcome_of(r), r.level, r.measured, r.threshold, r.message] for r in records],
        ["id", "category", "outcome", "level", "measured", "threshold", "message"]))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%;text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{e(ctx['subject'])} certification</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")


def write_html(path: str | Path, ctx: dict[str, Any], records: list[Evidence], pareto_png: str | Path | None = None) -> None:
    write_text_atomic(path, html_report(ctx, records, pareto_png))
