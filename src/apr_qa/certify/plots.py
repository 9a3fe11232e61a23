"""The report's figures, drawn with matplotlib and written as PNG (report.md, Snakemake's report)
and SVG (embedded in report.html): the Pareto frontier, KLD and same-top-1 per variant, and the
latency distribution of each variant's measured runs.

Readability rules shared by all of them: names sit on a readable axis or in a numbered key, never
as free labels that collide; a log axis is used only when the values span more than
LOG_SPAN_MIN x, and its ticks are plain decimals at 1-2-5 steps (never bare powers of ten).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pareto import Point, by_model, frontier

LOG_SPAN_MIN = 20.0  # max/min ratio above which an axis goes logarithmic
FRONT_COLOUR, OTHER_COLOUR = "#1f6fb4", "#7a7a7a"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    # SVG element ids hash with a per-process random salt by default: a fixed one makes the same
    # figure the same bytes on every run (with no creation date, see save)
    matplotlib.rcParams["svg.hashsalt"] = "apr-qa"
    import matplotlib.pyplot as plt

    return plt


def _tick_text(v: float, _pos: Any = None) -> str:
    return f"{v:g}" if 1e-4 <= abs(v) < 1e6 or v == 0 else f"{v:.0e}"


def _scale_axis(ax: Any, values: Sequence[float], axis: str = "x") -> bool:
    """Log scale with 1-2-5 decimal ticks when the positive values span > LOG_SPAN_MIN x; True if log."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v > 0]
    log = bool(positive) and len(positive) == len(values) and max(positive) / min(positive) > LOG_SPAN_MIN
    target = ax.xaxis if axis == "x" else ax.yaxis
    if log:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        decades = math.log10(max(positive) / min(positive))
        subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0, 3.0) if decades <= 4 else (1.0,)
        target.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
        target.set_major_formatter(FuncFormatter(_tick_text))
        target.set_minor_formatter(NullFormatter())
    else:
        target.set_major_formatter(FuncFormatter(_tick_text))
    return log


def save(fig: Any, png: str | Path | None, svg: str | Path | None = None) -> None:
    """Write the figure (atomically) and close it."""
    from ..fsutil import atomic_path

    plt = _pyplot()
    try:
        for out, fmt in ((png, "png"), (svg, "svg")):
            if out is not None:
                with atomic_path(out) as tmp:
                    # no creation date in the SVG: the same figure gives the same bytes on every run
                    fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
    finally:
        plt.close(fig)


def placeholder(message: str, png: str | Path, svg: str | Path | None = None) -> None:
    """A figure that says why there is nothing to plot (the report rule declares the files)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2), dpi=110)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", color="#555")
    save(fig, png, svg)


# -- Pareto frontier -------------------------------------------------------------------------------

@dataclass
class Placed:
    """One point's number label and where it landed (display coordinates, for the overlap test)."""
    number: int
    name: str
    artist: Any


def _x(p: Point, by_cost: bool) -> float:
    return float(p.cost) if by_cost and p.cost is not None else p.latency_s


def _staircase(points: list[Point], by_cost: bool) -> list[Point]:
    """The points no other beats on both plotted axes (accuracy up, x down), by x: the drawn line."""
    def beaten(p: Point) -> bool:
        return any(q is not p and q.accuracy >= p.accuracy and _x(q, by_cost) <= _x(p, by_cost)
                   and (q.accuracy > p.accuracy or _x(q, by_cost) < _x(p, by_cost)) for q in points)
    return sorted((p for p in points if not beaten(p)), key=lambda p: (_x(p, by_cost), -p.accuracy))


# label offsets in points, tried in order (then farther out) until one overlaps nothing
_OFFSETS = ((7, 5), (7, -13), (-15, 5), (-15, -13), (9, -4), (-18, -4), (-4, 9), (-4, -19))


def _place_labels(fig: Any, ax: Any, points: list[Point], by_cost: bool) -> list[Placed]:
    """Number each point, greedily choosing an offset whose label box overlaps no placed label and no
    marker; a label pushed away from its point gets a leader line."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    markers = []
    for p in points:
        cx, cy = to_display((_x(p, by_cost), p.accuracy))
        markers.append((cx - 6, cy - 6, cx + 6, cy + 6))
    taken: list[tuple[float, float, float, float]] = []
    placed: list[Placed] = []

    def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    order = sorted(range(len(points)), key=lambda i: (_x(points[i], by_cost), -points[i].accuracy))
    for i in order:
        p = points[i]
        best = None
        for ring in (1, 2, 3, 4):
            for dx, dy in _OFFSETS:
                ann = ax.annotate(str(i + 1), (_x(p, by_cost), p.accuracy), textcoords="offset points",
                                  xytext=(dx * ring, dy * ring), fontsize=8, fontweight="bold", color="#222",
                                  annotation_clip=False)
                bb = ann.get_window_extent(renderer)
                box = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1)
                cost = sum(overlap(box, t) for t in taken) + sum(
                    overlap(box, m) for j, m in enumerate(markers) if j != i)
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, ann, box, ring)
                else:
                    ann.remove()
                if best[0] == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        cost, ann, box, ring = best
        if ring > 1:  # pushed away from its point: redraw it with a leader line
            dx, dy = ann.xyann
            ann.remove()
            ann = ax.annotate(str(i + 1), (_x(p, by_cost), p.accuracy), textcoords="offset points", xytext=(dx, dy),
                              fontsize=8, fontweight="bold", color="#222", annotation_clip=False,
                              arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6, "shrinkA": 0, "shrinkB": 3})
        taken.append(box)
        placed.append(Placed(i + 1, p.name, ann))
    return placed


def _panel_height(points: list[Point]) -> float:
    """Inches of one frontier panel: room for the key's lines."""
    return max(4.6, 1.4 + 0.2 * len(points))


def pareto_figure(points: list[Point], title: str = "Pareto frontier") -> tuple[Any, list[Placed]]:
    """Accuracy vs cost per 1k tokens (latency when any point has no cost): frontier points as filled
    stars joined by the frontier's step line, dominated points hollow, each numbered; the key beside
    the plot maps numbers to variants with their values. The points should be one model's variants
    (pareto_models_figure draws one panel per model)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(10, _panel_height(points)), dpi=110)
    ax = fig.add_axes((0.08, 0.12, 0.55, 0.78))
    key = fig.add_axes((0.66, 0.12, 0.33, 0.78))
    return fig, _draw_pareto(fig, ax, key, points, title)


def pareto_models_figure(points: list[Point], title: str = "Pareto frontier") -> tuple[Any, dict[str, list[Placed]]]:
    """One frontier panel per model, stacked: variants are compared only within their model, so no
    panel mixes models (an encoder's frontier never holds a decoder's variant)."""
    plt = _pyplot()
    groups = by_model(points)
    heights = [_panel_height(g) for g in groups.values()]
    total = sum(heights)
    fig = plt.figure(figsize=(10, total), dpi=110)
    placed: dict[str, list[Placed]] = {}
    top = total
    for (model, group), height in zip(groups.items(), heights, strict=True):
        bottom = top - height
        y0, h = (bottom + 0.12 * height) / total, 0.78 * height / total  # the single panel's margins
        ax = fig.add_axes((0.08, y0, 0.55, h))
        key = fig.add_axes((0.66, y0, 0.33, h))
        placed[model] = _draw_pareto(fig, ax, key, group, f"{title}: {model}" if model else title)
        top = bottom
    return fig, placed


def _draw_pareto(fig: Any, ax: Any, key: Any, points: list[Point], title: str) -> list[Placed]:
    front = frontier(points)
    by_cost = all(p.cost is not None and p.cost > 0 for p in points)
    xs = [_x(p, by_cost) for p in points]
    key.axis("off")
    stairs = _staircase(points, by_cost)
    if len(stairs) > 1:
        ax.step([_x(p, by_cost) for p in stairs], [p.accuracy for p in stairs], where="post", color=FRONT_COLOUR,
                linewidth=1.4, alpha=0.8, label="frontier (best accuracy for the cost)", zorder=2)
    on = [p for p in points if p in front]
    off = [p for p in points if p not in front]
    ax.scatter([_x(p, by_cost) for p in on], [p.accuracy for p in on], marker="*", s=150, color=FRONT_COLOUR,
               label="on the Pareto frontier", zorder=4)
    if off:
        ax.scatter([_x(p, by_cost) for p in off], [p.accuracy for p in off], marker="o", s=45, facecolors="white",
                   edgecolors=OTHER_COLOUR, linewidths=1.2, label="dominated", zorder=3)
    log = _scale_axis(ax, xs)
    lo, hi = min(xs), max(xs)
    if log:
        ax.set_xlim(lo / 1.6, hi * 1.6)
    else:
        pad = (hi - lo) * 0.15 or hi * 0.2 or 1.0
        ax.set_xlim(max(0.0, lo - pad), hi + pad)
    accs = [p.accuracy for p in points]
    ypad = max(0.04, (max(accs) - min(accs)) * 0.15)
    ax.set_ylim(max(-0.02, min(accs) - ypad), min(1.04, max(accs) + ypad))
    unit = "cost per 1k tokens (USD)" if by_cost else "mean latency per request (s)"
    ax.set_xlabel(unit + (", log scale" if log else ""))
    ax.set_ylabel("accuracy (share of golden-prompt runs passed)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    placed = _place_labels(fig, ax, points, by_cost)
    head = f"{'#':>3}  {'variant':<28} {'acc':>5}  {'USD/1k' if by_cost else 'lat s':>8}"
    lines = [head] + [f"{i:>3}{'*' if p in front else ' '} {p.name[:28]:<28} {p.accuracy:5.3f}  "
                      f"{format(_x(p, by_cost), '.3g'):>8}" for i, p in enumerate(points, 1)]
    lines.append("* on the Pareto frontier")
    key.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8)
    return placed


def pareto_plot(points: list[Point], out_png: str | Path, out_svg: str | Path | None = None,
                title: str = "Pareto frontier") -> None:
    if not points:
        placeholder("no evaluated variant has accuracy and latency to compare", out_png, out_svg)
        return
    fig, _ = pareto_models_figure(points, title)
    save(fig, out_png, out_svg)


# -- per-variant figures ---------------------------------------------------------------------------

def kld_figure(rows: list[dict[str, Any]]) -> Any:
    """Mean KLD (+- SE, log axis) and same-top-1 rate (+- SE) of each variant against its fp32
    reference, one line per variant. rows: {name, kld, kld_se, top1, top1_se}."""
    plt = _pyplot()
    names = [r["name"] for r in rows]
    y = list(range(len(rows)))[::-1]
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(10, 1.3 + 0.34 * len(rows)), dpi=110,
                                      gridspec_kw={"wspace": 0.08})
    klds = [max(r["kld"], 1e-12) for r in rows]
    left.errorbar(klds, y, xerr=[r.get("kld_se") or 0 for r in rows], fmt="o", color="#b4441f", capsize=3)
    if _scale_axis(left, klds):
        left.set_xlim(min(klds) / 3, max(klds) * 3)
    for yy, r, k in zip(y, rows, klds, strict=True):
        left.annotate(f"{r['kld']:.3g}", (k, yy), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    left.set_xlabel("mean KLD vs the fp32 reference (nats, lower is better)")
    left.set_yticks(y, names)
    left.set_ylim(-0.7, len(rows) - 0.3)
    left.grid(True, axis="x", alpha=0.35)
    top1 = [r["top1"] for r in rows]
    right.errorbar(top1, y, xerr=[r.get("top1_se") or 0 for r in rows], fmt="s", color="#1f6fb4", capsize=3)
    for yy, t in zip(y, top1, strict=True):
        right.annotate(f"{t:.3f}", (t, yy), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    lo = min(top1)
    right.set_xlim(max(0.0, min(lo - 0.05, 0.9)), 1.02)
    right.set_xlabel("same top-1 token rate (higher is better)")
    right.grid(True, axis="x", alpha=0.35)
    right.xaxis.set_major_formatter(plt.FuncFormatter(_tick_text))
    fig.suptitle("Logit agreement with the reference, per variant", fontsize=11)
    return fig


def _horizontal() -> dict[str, Any]:
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def latency_figure(rows: list[dict[str, Any]]) -> Any:
    """The distribution of each variant's measured request latencies: a box (quartiles, whiskers to
    1.5 IQR) with every run as a dot; a variant whose evaluation kept no samples shows its mean with
    a min-max bar. rows: {name, samples | (mean, min, max)}."""
    plt = _pyplot()
    y = list(range(len(rows)))[::-1]
    fig, ax = plt.subplots(figsize=(10, 1.3 + 0.34 * len(rows)), dpi=110)
    values: list[float] = []
    for yy, r in zip(y, rows, strict=True):
        samples = r.get("samples")
        if samples:
            ax.boxplot([samples], positions=[yy], **_horizontal(), widths=0.55, showfliers=False,
                       patch_artist=True, boxprops={"facecolor": "#dbe8f5", "edgecolor": "#1f6fb4"},
                       medianprops={"color": "#b4441f", "linewidth": 1.6})
            jitter = [yy + 0.18 * ((i * 0.618) % 1 - 0.5) for i in range(len(samples))]
            ax.scatter(samples, jitter, s=8, color="#333", alpha=0.55, zorder=3)
            values += samples
        else:
            ax.errorbar([r["mean"]], [yy], xerr=[[r["mean"] - r["min"]], [r["max"] - r["mean"]]], fmt="D",
                        color=OTHER_COLOUR, capsize=3)
            values += [r["min"], r["max"]]
    _scale_axis(ax, values)
    ax.set_yticks(y, [r["name"] + ("" if r.get("samples") else " (summary)") for r in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("latency per request (s)")
    ax.grid(True, axis="x", alpha=0.35)
    ax.set_title("Request latency over the evaluation's runs (box: quartiles, line: median, dots: runs)",
                 fontsize=11)
    return fig


def corpus_kld_figure(rows: list[dict[str, Any]]) -> Any:
    """The distribution of per-token KL divergence on the corpus, one curve per variant and stack: the
    share of scored tokens whose KLD exceeds x (log x axis), from the evaluation's histogram.
    rows: {name, edges, counts}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    for r in rows:
        counts = r["counts"]
        total = sum(counts) or 1
        above = [sum(counts[i:]) / total for i in range(len(counts))]  # share with KLD >= the bin's left edge
        ax.step(r["edges"][:-1], above, where="post", label=r["name"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1.2)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(_tick_text))
    ax.yaxis.set_major_formatter(plt.FuncFormatter(_tick_text))
    ax.set_xlabel("per-token KL divergence from the reference (nats)")
    ax.set_ylabel("share of scored tokens above")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Per-token KLD on the corpus (lower curves are better)", fontsize=11)
    return fig
