"""Pareto dominance on hand-made points; value score; the plot files."""

from __future__ import annotations

import pytest

from apr_qa.certify.pareto import Point, analyze, dominates, frontier, frontier_best, value_score
from apr_qa.certify.plots import pareto_plot

A = Point("a", accuracy=0.90, latency_s=0.10, size_bytes=100, cost=1.0)
B = Point("b", accuracy=0.80, latency_s=0.20, size_bytes=200, cost=2.0)   # dominated by a in everything
C = Point("c", accuracy=0.95, latency_s=0.50, size_bytes=400, cost=4.0)   # more accurate, slower: trade-off
D = Point("d", accuracy=0.90, latency_s=0.10, size_bytes=100, cost=1.5)   # a is equal except cheaper


def test_dominance():
    assert dominates(A, B) and not dominates(B, A)
    assert not dominates(A, C) and not dominates(C, A)
    assert dominates(A, D) and not dominates(D, A)             # tie everywhere but cost: strictly better once
    same = Point("a2", 0.90, 0.10, 100, 1.0)
    assert not dominates(A, same) and not dominates(same, A)   # equal points dominate nobody


def test_frontier():
    assert {p.name for p in frontier([A, B, C, D])} == {"a", "c"}
    assert frontier([B]) == [B]                                  # a single point is its own frontier
    same = Point("a2", 0.90, 0.10, 100, 1.0)
    assert {p.name for p in frontier([A, same, B])} == {"a", "a2"}  # equal points both stay
    # without cost on every point, cost is not compared: a and d tie and both stay
    a, d = Point("a", 0.9, 0.1, 100), Point("d", 0.9, 0.1, 100, 1.5)
    assert {p.name for p in frontier([a, d])} == {"a", "d"}


def test_value_score():
    best = frontier_best([A, B, C, D])
    assert best is C  # the frontier's most accurate
    # a relative to c: accuracy 0.90/0.95 x latency 0.50/0.10 x cost 4.0/1.0 = 0.947368 x 5 x 4 = 18.947368
    assert value_score(A, C) == pytest.approx(0.90 / 0.95 * 5 * 4)
    assert value_score(C, C) == pytest.approx(1.0)
    rows = {r["name"]: r for r in analyze([A, B, C, D])}
    assert rows["b"]["dominated_by"] == ["a", "d"] and not rows["b"]["on_frontier"]
    # b: 0.80/0.95 x 0.50/0.20 x 4.0/2.0 = 0.842105 x 2.5 x 2 = 4.210526
    assert rows["b"]["value_score"] == pytest.approx(4.210526, abs=1e-6)
    with pytest.raises(ValueError):
        Point("zero", 0.5, 0.0, 1)


def test_plot_files(tmp_path):
    png, svg = tmp_path / "p.png", tmp_path / "p.svg"
    pareto_plot([A, B, C, D], png, svg)
    assert png.read_bytes()[:4] == b"\x89PNG"
    text = svg.read_text()
    assert "<svg" in text and "cost per 1k tokens" in text  # every point has a cost: the cost axis
    pareto_plot([A, Point("e", 0.5, 0.3, 100)], png, svg)  # one point without a cost: latency instead
    assert "latency" in svg.read_text()


def test_cost_per_1k_tokens_and_evaluation_points():
    from apr_qa.certify.pareto import point_from_evaluation, usd_per_1k_tokens

    # 36 device-seconds per 1k tokens at 0.10 USD per device-hour: 0.01 h x 0.10 = 0.001 USD
    assert abs(usd_per_1k_tokens(36.0, 0.10) - 0.001) < 1e-12
    assert usd_per_1k_tokens(36.0, None) is None and usd_per_1k_tokens(None, 1.0) is None
    ev = {"accuracy_andon": {"model": {"value": 0.5}}, "latency": {"mean": 0.2},
          "cost": {"device_seconds_per_1k_tokens": 72.0}}
    p = point_from_evaluation("m/q8_0", ev, 1000, 0.5)
    assert (p.accuracy, p.latency_s, p.size_bytes) == (0.5, 0.2, 1000) and abs(p.cost - 0.01) < 1e-12
    assert point_from_evaluation("m/x", {"latency": {"mean": 0.2}}, 1, 0.5) is None  # no accuracy measured


# A decoder's variants and an encoder's: the encoder's pair-ordering accuracy is higher and it is faster,
# smaller and cheaper than every decoder variant, so one frontier over both would drop the decoders.
DECODER = [Point("smollm2/f16", 0.30, 1.2, 270e6, 0.02, model="smollm2"),
           Point("smollm2/q8_0", 0.31, 0.9, 145e6, 0.015, model="smollm2"),
           Point("smollm2/q4_0", 0.24, 0.7, 80e6, 0.012, model="smollm2")]
ENCODER = [Point("minilm/f16", 1.00, 0.02, 45e6, 0.001, model="minilm"),
           Point("minilm/q4_0", 0.96, 0.03, 15e6, 0.001, model="minilm")]


def test_frontiers_are_per_model():
    points = DECODER + ENCODER
    for enc in ENCODER:
        for dec in DECODER:
            assert not dominates(enc, dec) and not dominates(dec, enc)
    front = {p.name for p in frontier(points)}
    # each model keeps its own frontier: q8_0 beats f16 outright; q4_0 trades accuracy for speed
    assert front == {"smollm2/q8_0", "smollm2/q4_0", "minilm/f16", "minilm/q4_0"}
    rows = {r["name"]: r for r in analyze(points)}
    assert rows["smollm2/f16"]["dominated_by"] == ["smollm2/q8_0"]
    for r in rows.values():
        model = r["name"].split("/")[0]
        assert r["model"] == model and all(d.startswith(model + "/") for d in r["dominated_by"])
    # the value score's reference is the model's own most accurate frontier point
    assert rows["smollm2/q8_0"]["value_score"] == pytest.approx(1.0)
    assert rows["minilm/f16"]["value_score"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one model"):
        frontier_best(points)


def test_report_shows_one_frontier_per_model(tmp_path):
    from apr_qa.certify import plots
    from apr_qa.report import certification as andon_blocks

    rows = []
    for p in DECODER + ENCODER:
        model, variant = p.name.split("/")
        ev = {"accuracy_andon": {"model": {"value": p.accuracy}}, "latency": {"mean": p.latency_s},
              "cost": {"device_seconds_per_1k_tokens": p.cost * 36000}}
        rows.append({"model": model, "variant": variant, "_eval": ev, "_size": int(p.size_bytes), "stages": {}})
    blocks = andon_blocks.pareto_blocks(rows, tmp_path, usd_per_device_hour=0.10)
    heads = [b[1] for b in blocks if b[0] == "h3"]
    assert heads == ["Pareto frontier: smollm2", "Pareto frontier: minilm"]
    tables = [b[2] for b in blocks if b[0] == "table"]
    assert [{r[0].split("/")[0] for r in t} for t in tables] == [{"smollm2"}, {"minilm"}]
    for t in tables:
        assert all(d == "-" or d.split("/")[0] == t[0][0].split("/")[0] for r in t for d in r[7].split(", "))
    # the figure: one panel (plot and key) per model, each titled by its model and holding only its variants
    fig, placed = plots.pareto_models_figure(DECODER + ENCODER)
    assert len(fig.axes) == 4 and set(placed) == {"smollm2", "minilm"}
    assert {p.name.split("/")[0] for p in placed["minilm"]} == {"minilm"}
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["Pareto frontier: smollm2", "Pareto frontier: minilm"]
    assert "Pareto frontier: minilm" in (tmp_path / "pareto.svg").read_text()
