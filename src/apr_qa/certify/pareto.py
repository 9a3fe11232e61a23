"""Pareto frontier of model variants: accuracy up; latency, size and cost down.

A dominates B when A is no worse in every objective and strictly better in at least one, so equal
points do not dominate each other and all stay on the frontier. Cost is the inference cost in USD
per 1k generated tokens (encoders: per 1k input tokens): the device time the evaluation measured
per 1k tokens (prefill included) times the configured price of one device-hour
(`cost.usd_per_device_hour`). It is optional: when any point lacks it, it is left out of the
comparison (and of the value score) rather than guessed, and the plot's x axis is latency instead.

Variants are compared only with variants of the same model (`Point.model`): an encoder's embedding
accuracy and a decoder's answer accuracy measure different things, and two models' variants are not
alternatives to each other, so each model has its own frontier and its own value-score reference.
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
    model: str = ""         # the model this is a variant of: points compare only within one model

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


def by_model(points: list[Point]) -> dict[str, list[Point]]:
    """The points grouped by model, models in order of first appearance."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.model, []).append(p)
    return groups


def dominates(a: Point, b: Point, with_cost: bool = True) -> bool:
    if a.model != b.model:  # another model's variant is never an alternative to this one
        return False
    with_cost = with_cost and a.cost is not None and b.cost is not None
    ka, kb = _keys(a, with_cost), _keys(b, with_cost)
    return all(x <= y for x, y in zip(ka, kb, strict=True)) and any(x < y for x, y in zip(ka, kb, strict=True))


def frontier(points: list[Point]) -> list[Point]:
    """Every model's frontier (in input order): the points no variant of their own model dominates.
    Cost is compared within a model when every variant of that model has one."""
    on: set[int] = set()
    for group in by_model(points).values():
        wc = _with_cost(group)
        on.update(id(p) for p in group if not any(dominates(q, p, wc) for q in group if q is not p))
    return [p for p in points if id(p) in on]


def frontier_best(points: list[Point]) -> Point:
    """The frontier's most accurate point (ties: the faster) - the reference of the value score.
    The points must be variants of one model."""
    if len(by_model(points)) > 1:
        raise ValueError(f"frontier_best compares one model's variants, got {sorted(by_model(points))}")
    return min(frontier(points), key=lambda p: (-p.accuracy, p.latency_s))


def value_score(p: Point, best: Point, with_cost: bool = True) -> float:
    """The value score: accuracy ratio x cost ratio x latency ratio, relative to the frontier's best."""
    accuracy = p.accuracy / best.accuracy if best.accuracy else 1.0
    latency = best.latency_s / p.latency_s
    cost = best.cost / p.cost if with_cost and p.cost and best.cost else 1.0
    return accuracy * latency * cost


def analyze(points: list[Point]) -> list[dict]:
    """One row per point, grouped by model: on its model's frontier?, value score against its model's
    frontier best, dominated by which variants of its model."""
    rows = []
    for model, group in by_model(points).items():
        wc = _with_cost(group)
        front = {id(p) for p in frontier(group)}
        best = frontier_best(group)
        rows += [{"model": model, "name": p.name, "accuracy": p.accuracy, "latency_s": p.latency_s,
                  "size_bytes": p.size_bytes, "cost": p.cost, "on_frontier": id(p) in front,
                  "value_score": round(value_score(p, best, wc), 6),
                  "dominated_by": [q.name for q in group if q is not p and dominates(q, p, wc)]} for p in group]
    return rows


def usd_per_1k_tokens(device_seconds_per_1k_tokens: float | None, usd_per_device_hour: float | None) -> float | None:
    if device_seconds_per_1k_tokens is None or usd_per_device_hour is None:
        return None
    return device_seconds_per_1k_tokens / 3600.0 * usd_per_device_hour


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def point_from_evaluation(name: str, evaluation: dict, size_bytes: int,
                          usd_per_device_hour: float | None, model: str = "") -> Point | None:
    """One point from an evaluation JSON (`apr-qa eval`): accuracy = its sampled golden-prompt
    accuracy (encoders: the share of pair combinations ordered right), latency = mean per request,
    cost = its device time per 1k tokens priced. None when it measured no accuracy or latency."""
    andon = evaluation.get("accuracy_andon") or {}
    accuracy = (andon.get("model") or {}).get("value")
    latency = (evaluation.get("latency") or {}).get("mean")
    if accuracy is None or not latency:
        return None
    cost = usd_per_1k_tokens((evaluation.get("cost") or {}).get("device_seconds_per_1k_tokens"), usd_per_device_hour)
    return Point(name, accuracy, latency, size_bytes, cost, model)


def points_from_certify(ctx: dict, records: list, usd_per_device_hour: float | None = None) -> list[Point]:
    """One point per certified variant: accuracy = share of its QUAL run scenarios passed, latency =
    their mean total time, size = the variant file's size (a folder: the sum of its files), cost =
    their device time per 1k generated tokens, priced (None without a price). One certification is
    one model: its subject names the points' model."""
    model = str(ctx.get("subject") or "")
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
                            _size(Path(v["path"])), usd_per_1k_tokens(per_1k, usd_per_device_hour), model))
    return points
