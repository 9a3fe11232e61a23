"""Pareto frontier of model variants: accuracy up; latency, size and cost down.

A dominates B when A is no worse in every objective and strictly better in at least one, so equal
points do not dominate each other and all stay on the frontier. Cost is the inference cost in USD
per 1k generated tokens (encoders: per 1k input tokens): the device time the evaluation measured
per 1k tokens (prefill included) times the configured price of one device-hour
(`cost.usd_per_device_hour`). It is optional: when any point lacks it, it is left out of the
comparison (and of the value score) rather than guessed, and the plot's x axis is latency instead.
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
    cost: float | None = None  # lower is better: USD per 1k tokens

    def __post_init__(self) -> None:
        if not self.latency_s > 0:
            raise ValueError(f"{self.name}: latency must be > 0 (got {self.latency_s})")


def _keys(p: Point, with_cost: bool) -> tuple[float, ...]:
    """Objectives as 'lower is better'."""
    keys: tuple[float, ...] = (-p.accuracy, p.latency_s, p.size_bytes)
    if with_cost:
        if p.cost is None:
            raise ValueError(f"{p.name}: no cost to compare")
        keys += (p.cost,)
    return keys


def _with_cost(points: list[Point]) -> bool:
    return bool(points) and all(p.cost is not None for p in points)


def dominates(a: Point, b: Point, with_cost: bool = True) -> bool:
    with_cost = with_cost and a.cost is not None and b.cost is not None
    ka, kb = _keys(a, with_cost), _keys(b, with_cost)
    return all(x <= y for x, y in zip(ka, kb, strict=True)) and any(x < y for x, y in zip(ka, kb, strict=True))


def frontier(points: list[Point]) -> list[Point]:
    wc = _with_cost(points)
    return [p for p in points if not any(dominates(q, p, wc) for q in points if q is not p)]


def frontier_best(points: list[Point]) -> Point:
    """The frontier's most accurate point (ties: the faster) - the reference of the value score."""
    return min(frontier(points), key=lambda p: (-p.accuracy, p.latency_s))


def value_score(p: Point, best: Point, with_cost: bool = True) -> float:
    """The value score: accuracy ratio x cost ratio x latency ratio, relative to the frontier's best."""
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


def usd_per_1k_tokens(device_seconds_per_1k_tokens: float | None, usd_per_device_hour: float | None) -> float | None:
    if device_seconds_per_1k_tokens is None or usd_per_device_hour is None:
        return None
    return device_seconds_per_1k_tokens / 3600.0 * usd_per_device_hour


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def point_from_evaluation(name: str, evaluation: dict, size_bytes: int,
                          usd_per_device_hour: float | None) -> Point | None:
    """One point from an evaluation JSON (`apr-qa eval`): accuracy = its sampled golden-prompt
    accuracy (encoders: the share of pair combinations ordered right), latency = mean per request,
    cost = its device time per 1k tokens priced. None when it measured no accuracy or latency."""
    andon = evaluation.get("accuracy_andon") or {}
    accuracy = (andon.get("model") or {}).get("value")
    latency = (evaluation.get("latency") or {}).get("mean")
    if accuracy is None or not latency:
        return None
    cost = usd_per_1k_tokens((evaluation.get("cost") or {}).get("device_seconds_per_1k_tokens"), usd_per_device_hour)
    return Point(name, accuracy, latency, size_bytes, cost)


def points_from_certify(ctx: dict, records: list, usd_per_device_hour: float | None = None) -> list[Point]:
    """One point per certified variant: accuracy = share of its QUAL run scenarios passed, latency =
    their mean total time, size = the variant file's size (a folder: the sum of its files), cost =
    their device time per 1k generated tokens, priced (None without a price)."""
    points = []
    for v in ctx.get("variants", []):
        runs = [r for r in records if r.details.get("scenario", {}).get("variant") == v["name"]
                and r.details["scenario"]["modality"] == "run" and r.details.get("category") == "QUAL"
                and r.details.get("outcome") != "skip"]
        times = [r.details["metrics"]["total_time_s"] for r in runs if r.details.get("metrics", {}).get("total_time_s")]
        if not runs or not times:
            continue
        tokens = sum(r.details.get("metrics", {}).get("tokens") or 0 for r in runs)
        per_1k = 1000.0 * sum(times) / tokens if tokens else None
        points.append(Point(v["name"], sum(r.passed for r in runs) / len(runs), sum(times) / len(times),
                            _size(Path(v["path"])), usd_per_1k_tokens(per_1k, usd_per_device_hour)))
    return points
