"""The report's corpus section: each decoder variant's statistics on real text, per stack, the way
llama.cpp's `llama-perplexity --kl-divergence` prints them, with gate Q1's verdict and a figure of the
per-token KLD distribution (corpus_kld.png/.svg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# llama.cpp's published mean KLD for its quantization of Llama-3-8B (its perplexity tool's README) is
# shown beside a variant's figure as an anchor for reading it, not a limit (smaller models lose more).
from ..evaluation.conversion_limits import PUBLISHED_KLD
from ..layout import ARTIFACTS, path
from .render import Block, Cell
from .render import number as _num



def _read(file: Path) -> dict[str, Any] | None:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def corpus_rows(results: Path, models: list[str], variants: list[str]) -> list[dict[str, Any]]:
    """Every evaluation (builtin and the other stacks) that scored the corpus: {model, variant, stack, corpus, q1}."""
    out = []
    for model in models:
        for variant in variants:
            files = [("builtin", path(results, "evaluation", model=model, variant=variant))]
            stacks = path(results, "stack_evaluation", model=model, variant=variant, stack="-").parent
            files += [(f.stem, f) for f in sorted(stacks.glob("*.json"))] if stacks.is_dir() else []
            for stack, file in files:
                data = _read(file) or {}
                c = data.get("corpus")
                if not c:
                    continue
                q1 = next((g for g in data.get("gates", []) if g.get("id") == "Q1"), None)
                out.append({"model": model, "variant": variant, "stack": stack, "corpus": c, "q1": q1})
    return out


def _interval(low: Any, high: Any, scale: float = 1.0, fmt: str = ".2f") -> str:
    return "-" if low is None or high is None else f"[{scale * low:{fmt}}, {scale * high:{fmt}}]"


def _verdict(q1: dict[str, Any] | None) -> Cell | str:
    if not q1:
        return "-"
    v = (q1.get("details") or {}).get("verdict", "pass" if q1.get("passed") else "fail")
    return Cell(v, "green" if v == "pass" else "red" if v == "fail" else "yellow")


def corpus_blocks(results: Path, models: list[str], variants: list[str], out_dir: Path) -> list[Block]:
    """Blocks (apr_qa.report.render) for the corpus section; [] when no evaluation scored a corpus."""
    from ..certify import plots

    rows = corpus_rows(results, models, variants)
    decoders = [r for r in rows if "kld" in r["corpus"]]
    encoders = [r for r in rows if "cosine" in r["corpus"]]
    png, svg = out_dir / ARTIFACTS["corpus_kld_png"], out_dir / ARTIFACTS["corpus_kld_svg"]
    if not decoders:  # the report rule always has the figure as an output
        plots.placeholder("no decoder variant was scored on the corpus", png, svg)
    if not decoders and not encoders:
        return []
    first = rows[0]["corpus"]
    out: list[Block] = [("h2", "Corpus quality (real text)"),
                        ("p", f"Every variant scored teacher-forced on `{first['name']}` (sha256 "
                              f"`{first['sha256'][:16]}`), against its model's float32 reference on the same "
                              "tokens, as llama.cpp's `llama-perplexity --kl-divergence` does: windows of n_ctx "
                              "tokens, the second half of each scored. Intervals are 95 % (standard errors from "
                              "per-window means); the resolution of a statistic is its interval's half-width. "
                              "Q1 asks MLPerf's question: is the variant's next-token accuracy at least 99 % "
                              "(16-bit: 99.9 %) of the reference's? pass / fail when the interval is on one side "
                              "of the target, inconclusive (yellow) when it spans it (docs/corpus.md).")]
    if decoders:
        table = []
        for r in decoders:
            c, acc = r["corpus"], r["corpus"]["next_token_accuracy"]
            kld, top1, ln = c["kld"], c["same_top1"], c["ln_ppl_ratio"]
            anchor = PUBLISHED_KLD.get(r["variant"])
            table.append([r["model"], r["variant"], r["stack"], c["tokens_scored"], _num(c["ppl"], ".4g"),
                          _num(c["ppl_reference"], ".4g"), f"{ln['value']:+.4f} ± {ln['resolution']:.4f}",
                          f"{_num(kld['mean'], '.4g')} ± {_num(kld['resolution'], '.2g')}", _num(kld["median"]),
                          _num(kld["p99"]), _num(kld["max"]),
                          f"{100 * top1['rate']:.2f} % {_interval(top1['ci_low'], top1['ci_high'], 100)}",
                          f"{100 * c['delta_p']['rms']:.2f} %",
                          "-" if acc["value"] is None else
                          f"{100 * acc['value']:.2f} % {_interval(acc['ci_low'], acc['ci_high'], 100)}",
                          _verdict(r["q1"]), "-" if anchor is None else _num(anchor)])
        out.append(("table", ["model", "variant", "stack", "tokens", "PPL", "PPL ref", "ln(PPL ratio)",
                              "mean KLD", "KLD median", "KLD p99", "KLD max", "same top-1 [95 %]", "RMS Δp",
                              "accuracy vs reference [95 %]", "Q1", "llama.cpp Llama-3-8B KLD"], table))
        approx = [r["corpus"].get("top_k_approximation") for r in decoders if r["corpus"].get("top_k_approximation")]
        if approx:
            worst = max(a["relative_error_of_mean"] for a in approx)
            out.append(("p", f"KLD is computed from the reference's top-{first.get('top_k')} log-probabilities "
                             "plus one merged tail bucket, a lower bound of the exact value; on the first window "
                             f"of each evaluation the exact KLD was recomputed: the mean differs by at most "
                             f"{100 * worst:.2f} %."))
        plots.save(plots.corpus_kld_figure([{"name": f"{r['model']}/{r['variant']} ({r['stack']})",
                                             **r["corpus"]["kld_histogram"]} for r in decoders]), png, svg)
        out.append(("img", png, "Per-token KLD on the corpus", svg))
    if encoders:
        out.append(("table", ["model", "variant", "stack", "sentences", "cosine mean", "cosine p1", "cosine min"],
                    [[r["model"], r["variant"], r["stack"], r["corpus"]["texts"],
                      _num(r["corpus"]["cosine"]["mean"], ".6f"), _num(r["corpus"]["cosine"]["p1"], ".6f"),
                      _num(r["corpus"]["cosine"]["min"], ".6f")] for r in encoders]))
    return out
