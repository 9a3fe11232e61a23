"""The report's page and figures: numbered Pareto labels that never overlap, plain-decimal log
ticks, the renderer's coloured and sortable tables, collapsible sections and relative links, and
a page that loads in headless Chromium without console errors (the workflow's own report.html is
checked the same way in test_workflow_certify.py)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from apr_qa.certify import plots
from apr_qa.certify.pareto import Point, frontier
from apr_qa.report.render import Cell, to_html, to_markdown
from browser import visit


def crowded_points(n_models: int = 3) -> list[Point]:
    """Variants of several models, most of them within a few percent of each other on both axes."""
    rng = random.Random(7)
    points = []
    for m in range(n_models):
        for v, acc, lat in (("f32", .82, .30), ("f16", .82, .29), ("bf16", .81, .29), ("q8_0", .81, .16),
                            ("q6_k", .80, .14), ("q4_k_m", .78, .11), ("q4_0", .70, .10)):
            latency = lat * (1 + m) * rng.uniform(.97, 1.03)
            points.append(Point(f"model-{m}/{v}", acc + rng.uniform(-.004, .004), latency, 1e6 * (1 + m), None))
    return points


def _boxes(placed: list[plots.Placed], fig) -> list[tuple[float, float, float, float]]:
    renderer = fig.canvas.get_renderer()
    return [tuple(p.artist.get_window_extent(renderer).extents) for p in placed]


def _overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_pareto_labels_never_overlap(tmp_path):
    points = crowded_points()
    fig, placed = plots.pareto_figure(points)
    fig.canvas.draw()
    boxes = _boxes(placed, fig)
    assert sorted(p.number for p in placed) == list(range(1, len(points) + 1))
    clashes = [(placed[i].name, placed[j].name)
               for i in range(len(boxes)) for j in range(i) if _overlap(boxes[i], boxes[j])]
    assert clashes == []
    # the key beside the plot names every number, frontier points starred
    key = next(t.get_text() for t in fig.axes[1].texts)
    front = {p.name for p in frontier(points)}
    for i, p in enumerate(points, 1):
        assert re.search(rf"^ *{i}{re.escape('*' if p.name in front else ' ')} {re.escape(p.name)} ", key, re.M)
    plots.save(fig, tmp_path / "p.png", tmp_path / "p.svg")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and b"<svg" in (tmp_path / "p.svg").read_bytes()


def test_log_axis_ticks_are_plain_decimals():
    """Latencies over three decades get a log axis whose tick labels read as numbers, no 10^x."""
    points = [Point(f"m/v{i}", 0.5 + i / 20, 0.001 * 3 ** i, 1e6) for i in range(8)]
    fig, _ = plots.pareto_figure(points)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) >= 3 and all(re.fullmatch(r"[0-9.e+-]+", s) for s in labels), labels
    fig2, _ = plots.pareto_figure(points[:3])  # 0.001..0.009: under LOG_SPAN_MIN, a linear axis
    assert fig2.axes[0].get_xscale() == "linear"


def test_kld_and_latency_figures(tmp_path):
    rows = [{"name": f"m/{v}", "kld": k, "kld_se": k / 10, "top1": t, "top1_se": .01}
            for v, k, t in (("f16", 6e-8, 1.0), ("q8_0", 5e-5, .99), ("q4_0", 1.5e-2, .56))]
    fig = plots.kld_figure(rows)
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["m/f16", "m/q8_0", "m/q4_0"]  # top to bottom
    assert fig.axes[0].get_xscale() == "log"
    plots.save(fig, tmp_path / "kld.png")
    lat = [{"name": "m/f16", "samples": [0.010, 0.012, 0.011, 0.020]},
           {"name": "m/old", "mean": .2, "min": .1, "max": .3}]
    fig = plots.latency_figure(lat)
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["m/f16", "m/old (summary)"]
    plots.save(fig, tmp_path / "lat.png")
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("kld.png", "lat.png"))


def _blocks(tmp_path: Path) -> list[tuple]:
    plots.pareto_plot(crowded_points(1), tmp_path / "pareto.png", tmp_path / "pareto.svg")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/eval.log").write_text("log\n")
    return [("h1", "Report <1>"), ("h2", "Board"),
            ("html_only", ("table", ["model", "f16", "q8_0"],
                           [["m", Cell("PASS", "green", href="#v-f16"), Cell("FAIL", "red", title="T4: 0.1 vs > 0.5")]],
                           {"class": "board", "sortable": False})),
            ("table", ["variant", "latency s", "status"], [["b", 0.25, "x"], ["a", 10.0, "y"], ["c", "-", "z"]]),
            ("img", tmp_path / "pareto.png", "Pareto", tmp_path / "pareto.svg"),
            ("details", "m / f16: green",
             [("p", "Logs: [eval](logs/eval.log) and [bad](javascript:alert(1))")], "v-f16")]


def test_render_markdown_and_html(tmp_path):
    blocks = _blocks(tmp_path)
    md = to_markdown(blocks, tmp_path)
    assert "PASS" not in md and "![Pareto](pareto.png)" in md and "### m / f16: green" in md
    assert "[eval](logs/eval.log)" in md
    page = to_html(blocks)
    assert page.startswith("<!DOCTYPE html>") and "<body>" in page  # mark_not_current inserts after <body>
    assert "<title>Report &lt;1&gt;</title>" in page and 'href="#board"' in page
    assert 'class="t-red" title="T4: 0.1 vs &gt; 0.5"' in page and '<a href="#v-f16">PASS</a>' in page
    assert '<details id="v-f16">' in page and '<a href="logs/eval.log">eval</a>' in page
    assert 'href="javascript' not in page  # only relative links become anchors
    assert "data:image/svg+xml;base64," in page and "data:image/png" not in page
    # self-contained: nothing is fetched (no src/href to another host, no external script or style)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script src" not in page
    assert '<table class="sortable">' in page and '<table class="board">' in page


def test_page_sorts_and_loads_without_errors(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(to_html(_blocks(tmp_path)))

    def sort_by_latency(p):
        header = p.locator("table.sortable th", has_text="latency s")
        orders = []
        for _ in range(2):
            header.click()
            orders.append(p.locator("table.sortable tbody tr td:first-child").all_inner_texts())
        return orders

    shot = tmp_path / "page.png"
    seen = visit(page, shot, sort_by_latency)
    assert seen.errors == [] and [m for m in seen.console if m[0] in ("error", "warning")] == []
    assert seen.result == [["b", "a", "c"], ["a", "b", "c"]]  # numbers ascending then descending; "-" last
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000


@pytest.mark.parametrize("n_models", [1, 6])
def test_pareto_key_grows_with_the_points(n_models):
    fig, placed = plots.pareto_figure(crowded_points(n_models))
    assert len(placed) == 7 * n_models and fig.get_figheight() >= 1.4 + 0.2 * 7 * n_models - 1e-9
