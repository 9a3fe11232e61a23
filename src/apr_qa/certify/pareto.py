"""Pareto frontier of model variants (spec §8): accuracy up; latency, size and cost down.

A dominates B when A is no worse in every objective and strictly better in at least one, so equal
points do not dominate each other and all stay on the frontier. Cost is optional: when any point
lacks it, it is left out of the comparison (and of the value score) rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Point:
    name: str
    accuracy: float         # higher is better (e.g. fraction of golden prompts passed)
    latency_s: float        # lower is better (mean per request)
    size_bytes: float       # lower is better
    cost: float | None = None  # lower is better (e.g. CPU-seconds per 1k tokens)

    def __post_init__(self) -> None:
        if not self.latency_s > 0:
            raise ValueError(f"{self.name}: latency must be > 0 (got {self.latency_s})")


def _keys(p: Point, with_cost: bool) -> tuple[float, ...]:
    """Objectives as 'lower is better'."""
    return (-p.accuracy, p.latency_s, p.size_bytes) + ((p.cost,) if with_cost else ())


def _with_cost(points: list[Point]) -> bool:
    return bool(points) and all(p.cost is not None for p in points)


def dominates(a: Point, b: Point, with_cost: bool = True) -> bool:
    with_cost = with_cost and a.cost is not None and b.cost is not None
    ka, kb = _keys(a, with_cost), _keys(b, with_cost)
    return all(x <= y for x, y in zip(ka, kb)) and any(x < y for x, y in zip(ka, kb))


def frontier(points: list[Point]) -> list[Point]:
    wc = _with_cost(points)
    return [p for p in points if not any(dominates(q, p, wc) for q in points if q is not p)]


def frontier_best(points: list[Point]) -> Point:
    """The frontier's most accurate point (ties: the faster) - the reference of the value score."""
    return min(frontier(points), key=lambda p: (-p.accuracy, p.latency_s))


def value_score(p: Point, best: Point, with_cost: bool = True) -> float:
    """Spec §8.3: accuracy ratio x cost ratio x latency ratio, relative to the frontier's best."""
    accuracy = p.accuracy / best.accuracy if best.accuracy else 1.0
    latency = best.latency_s / p.latency_s
    cost = best.cost / p.cost if with_cost and p.cost and best.cost else 1.0
    return accuracy * latency * cost


def analyze(points: list[Point]) -> list[dict]:
    """One row per point: on the frontier?, value score, dominated by whom."""
    if not points:
        return []
    wc = _with_cost(points)
    front = frontier(points)
    best = frontier_best(points)
    return [{"name": p.name, "accuracy": p.accuracy, "latency_s": p.latency_s, "size_bytes": p.size_bytes,
             "cost": p.cost, "on_frontier": p in front, "value_score": round(value_score(p, best, wc), 6),
             "dominated_by": [q.name for q in points if q is not p and dominates(q, p, wc)]} for p in points]


def plot(points: list[Point], out_png: str | Path, out_svg: str | Path | None = None, title: str = "Pareto frontier") -> None:
    """Accuracy vs latency (log x): the 2-D frontier as a step line, frontier points as stars,
    dominated points as hollow circles, every point labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fsutil import atomic_path

    front = frontier(points)
    front2d = sorted((p for p in points if not any(
        q is not p and q.accuracy >= p.accuracy and q.latency_s <= p.latency_s
        and (q.accuracy > p.accuracy or q.latency_s < p.latency_s) for q in points)), key=lambda p: p.latency_s)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if front2d:
        ax.step([p.latency_s for p in front2d], [p.accuracy for p in front2d], where="post",
                color="tab:blue", linewidth=1.2, label="frontier (accuracy vs latency)")
    on = [p for p in points if p in front]
    off = [p for p in points if p not in front]
    ax.scatter([p.latency_s for p in on], [p.accuracy for p in on], marker="*", s=140, color="tab:blue",
               label="on the Pareto frontier", zorder=3)
    ax.scatter([p.latency_s for p in off], [p.accuracy for p in off], marker="o", s=50, facecolors="none",
               edgecolors="tab:gray", label="dominated", zorder=3)
    for p in points:
        ax.annotate(p.name, (p.latency_s, p.accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency (s, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        for out, fmt in ((out_png, "png"), (out_svg, "svg")):
            if out is not None:
                with atomic_path(out) as tmp:
                    fig.savefig(tmp, format=fmt)
    finally:
        plt.close(fig)


def points_from_certify(ctx: dict, records: list) -> list[Point]:
    """One point per certified variant: accuracy = share of its QUAL run scenarios passed, latency =
    their mean total time, size = the variant file's size (a folder: the sum of its files)."""
    points = []
    for v in ctx.get("variants", []):
        runs = [r for r in records if r.details.get("scenario", {}).get("variant") == v["name"]
                and r.details["scenario"]["modality"] == "run" and r.details.get("category") == "QUAL"
                and r.details.get("outcome") != "skip"]
        times = [r.details["metrics"]["total_time_s"] for r in runs if r.details.get("metrics", {}).get("total_time_s")]
        if not runs or not times:
            continue
        path = Path(v["path"])
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        points.append(Point(v["name"], sum(r.passed for r in runs) / len(runs), sum(times) / len(times), size))
    return points
