"""Report sections that need no certification: the Five Whys of every failed stage gate, and each
model's Pareto frontier of its evaluated variants with their inference cost. So both appear whatever
the tier (tier null runs the stage gates only).

Input rows are the workflow report's variant rows (a summary per model/variant with its stages'
gate dicts, plus "_eval": the evaluation JSON and "_size": the .apr's bytes). Output is the report's
blocks: ("h2"|"h3"|"p", text) | ("table", headers, rows) | ("list", [(text, [sub items])]) | ("img", path, alt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import five_whys
from ..certify import pareto, plots

MAX_ITEMS = 100  # the rest stay in the evidence files


def stage_five_whys(rows: list[dict[str, Any]]) -> list[tuple]:
    """Every failed stage gate (warn, fail and halt alike) with its root-cause chain."""
    items = []
    for r in rows:
        for stage, s in r["stages"].items():
            failed = [g for g in s.get("gates", []) if not g.get("passed")]
            if not failed and s.get("colour") == "red":  # the stage's command died without naming a gate
                items.append((f"**{stage}** ({s.get('level', 'fail')}, {r['model']}/{r['variant']}): the stage failed",
                              [f"why 1: {s.get('reason') or 'the command exited non-zero'}",
                               "root cause: the stage command failed before any gate could judge its output; "
                               f"countermeasure: read the {stage} log of {r['model']}/{r['variant']} "
                               "(results/logs), fix the cause, rerun"]))
            for g, fw in zip(failed, five_whys.stage_failures(failed), strict=True):
                head = (f"**{g['id']}** ({g.get('level')}, {r['model']}/{r['variant']}, {stage}): measured "
                        f"`{g.get('measured')}`, threshold `{g.get('threshold')}`")
                subs = [f"why {i}: {w}" for i, w in enumerate(fw["whys"], 1)]
                subs.append(f"root cause: {fw['root_cause']}; countermeasure: {fw['countermeasure']}")
                items.append((head, subs))
    if not items:
        return []
    out: list[tuple] = [("h2", "Stage gate failures and their Five Whys"),
                        ("p", "Every stage gate that did not pass, warnings included, with its root-cause chain "
                              "derived from the evidence.")]
    out.append(("list", items[:MAX_ITEMS]))
    if len(items) > MAX_ITEMS:
        out.append(("p", f"... and {len(items) - MAX_ITEMS} more in the stage evidence files"))
    return out


def evaluation_points(rows: list[dict[str, Any]], usd_per_device_hour: float | None) -> list[pareto.Point]:
    points = []
    for r in rows:
        if r.get("_size") and r.get("_eval"):
            p = pareto.point_from_evaluation(f"{r['model']}/{r['variant']}", r["_eval"], r["_size"],
                                             usd_per_device_hour, model=r["model"])
            if p is not None:
                points.append(p)
    return points


def pareto_blocks(rows: list[dict[str, Any]], out_dir: Path, usd_per_device_hour: float | None) -> list[tuple]:
    """One frontier per model over its evaluated variants (a table each, one panel each in
    pareto.png/.svg, written into out_dir)."""
    points = evaluation_points(rows, usd_per_device_hour)
    table = pareto.analyze(points)
    priced = usd_per_device_hour is not None
    out: list[tuple] = [
        ("h2", "Pareto frontier"),
        ("p", "Accuracy (the evaluation's sampled golden-prompt accuracy; encoders: pair ordering) up; mean "
              "latency per request, .apr size and inference cost down. Cost = device time per 1k generated "
              "tokens (prefill included; encoders: per 1k input tokens) x "
              + (f"{usd_per_device_hour:g} USD per device-hour (config cost.usd_per_device_hour)." if priced else
                 "the price per device-hour, which is not configured (cost.usd_per_device_hour): no cost axis.")
              + " Value = accuracy x cost x speed ratios against the frontier's most accurate point."
              + " Each model has its own frontier: a variant is compared only with variants of the same model "
                "(an encoder's pair-ordering accuracy and a decoder's answer accuracy are different measures).")]
    if table:
        for model in dict.fromkeys(t["model"] for t in table):
            out += [("h3", f"Pareto frontier: {model}"),
                    ("table", ["variant", "accuracy", "latency s", "size MB", "USD / 1k tokens", "frontier", "value",
                               "dominated by"],
                     [[t["name"], f"{t['accuracy']:.3f}", f"{t['latency_s']:.3f}", f"{t['size_bytes'] / 1e6:.1f}",
                       "-" if t["cost"] is None else f"{t['cost']:.3g}", "yes" if t["on_frontier"] else "no",
                       f"{t['value_score']:.3f}", ", ".join(t["dominated_by"]) or "-"]
                      for t in table if t["model"] == model])]
        plots.pareto_plot(points, out_dir / "pareto.png", out_dir / "pareto.svg")
        out.append(("img", out_dir / "pareto.png", "Pareto frontier", out_dir / "pareto.svg"))
    else:
        out.append(("p", "No evaluated variant has accuracy and latency to compare."))
        # the plot files exist even with nothing to compare (the report rule declares them)
        plots.pareto_plot([], out_dir / "pareto.png", out_dir / "pareto.svg")
    return out
