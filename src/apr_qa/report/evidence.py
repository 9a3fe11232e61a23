"""The report of one certify evidence file (`apr-qa certify-report`): its summary, gateways, MQS
categories, failures with their Five Whys, Pareto frontier and every record, as blocks that
apr_qa.report.render writes as Markdown or as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..evidence import Evidence
from ..fsutil import write_text_atomic
from .render import Block, to_html, to_markdown
from ..certify.mqs import NOT_MEASURED, category_of, outcome_of

MAX_FAILURES_IN_MARKDOWN = 50  # the HTML page lists them all


def _summary(ctx: dict[str, Any]) -> list[list[Any]]:
    m = ctx["mqs"]
    return [["model", ctx["subject"]], ["tier", f"{ctx.get('tier')} (pass at raw >= {ctx.get('pass_threshold')})"],
            ["MQS raw", m["raw"]], ["MQS normalized", f"{m['normalized']:.1f}"], ["grade", m["grade"]],
            ["status", m["status"]], ["tier passed", ctx.get("tier_passed")],
            ["tests", f"{m['tests_passed']}/{m['tests']} passed, {m['crashes']} crashes, {m['timeouts']} timeouts"]]


def certification_blocks(ctx: dict[str, Any], records: list[Evidence], pareto_rows: list[dict] | None = None,
                         pareto_png: str | Path | None = None, max_failures: int | None = None,
                         all_records: bool = True) -> list[Block]:
    mqs = ctx["mqs"]
    out: list[Block] = [("h2", f"Certification: {ctx['subject']}"), ("table", ["", ""], _summary(ctx)),
                        ("h3", "Gateways"),
                        ("table", ["gate", "result", "reason"],
                         [[g["id"], "pass" if g["passed"] else "FAIL", g["reason"]] for g in mqs["gateways"]]),
                        ("h3", "MQS categories"),
                        ("p", "A category the tier did not test is not measured: it is left out of the MQS and "
                              "the measured categories' weights are scaled to the 1000 points."),
                        ("table", ["category", "passed", "points"],
                         [[k, f"{c['passed']}/{c['total']}", f"{c['points']}/{c['max']}"]
                          if c.get("measured", c["total"] > 0) else [k, "-", NOT_MEASURED]
                          for k, c in mqs["categories"].items()])]
    failures = [r for r in records if not r.passed and outcome_of(r) != "skip"]
    if failures:
        items = []
        for r in failures[:max_failures]:
            fw = r.details.get("five_whys") or {}
            subs = [f"why {i}: {w}" for i, w in enumerate(fw.get("whys", []), 1)]
            if fw:
                subs.append(f"root cause: {fw['root_cause']}; countermeasure: {fw['countermeasure']}")
            items.append((f"**{r.id}** ({category_of(r)}, {r.level}): measured `{r.measured}`, "
                          f"threshold `{r.threshold}`", subs))
        out += [("h3", "Failures and their Five Whys"), ("list", items)]
    if pareto_rows or pareto_png:
        out.append(("h3", "Pareto frontier"))
    if pareto_rows:
        out.append(("table", ["variant", "accuracy", "latency s", "bytes", "frontier", "value"],
                    [[p["name"], p["accuracy"], f"{p['latency_s']:.3f}", p["size_bytes"],
                      "yes" if p["on_frontier"] else "no", p["value_score"]] for p in pareto_rows]))
    if pareto_png:
        out.append(("img", Path(pareto_png), "Pareto frontier"))
    if all_records:
        out += [("h3", "All records"),
                ("table", ["id", "category", "outcome", "level", "measured", "threshold", "message"],
                 [[r.id, category_of(r), outcome_of(r), r.level, r.measured, r.threshold, r.message]
                  for r in records])]
    return out


def markdown_report(ctx: dict[str, Any], records: list[Evidence], pareto_rows: list[dict] | None = None,
                    base: Path = Path(".")) -> str:
    """The Markdown sections (the first failures, no record table) for a file written into `base`."""
    blocks = certification_blocks(ctx, records, pareto_rows, max_failures=MAX_FAILURES_IN_MARKDOWN,
                                  all_records=False)
    return to_markdown(blocks, base)


def html_report(ctx: dict[str, Any], records: list[Evidence], pareto_rows: list[dict] | None = None,
                pareto_png: str | Path | None = None) -> str:
    return to_html([("h1", f"{ctx['subject']} certification"),
                    *certification_blocks(ctx, records, pareto_rows, pareto_png)])


def write_reports(ctx: dict[str, Any], records: list[Evidence], pareto_rows: list[dict] | None,
                  markdown: Path | None, html: Path | None, pareto_png: Path | None) -> None:
    if markdown:
        write_text_atomic(markdown, markdown_report(ctx, records, pareto_rows, markdown.parent))
    if html:
        write_text_atomic(html, html_report(ctx, records, pareto_rows, pareto_png))
