"""The accuracy-degradation Andon on a real evaluation: a variant whose weights are perturbed in the
test loses exactly the golden prompts whose tokens were touched, so its accuracy drop is known by
construction. T7/T8 are judged on the paired 95 % interval of the degradation: identical runs give
[0, 0] (green); 1 of 16 prompts lost (6.25 points, +-13.3 at 16 prompts) is inconclusive (yellow, never
green); 8 of 16 (50 points, [22.5, 77.5]) is red (T8 fail), each failure with a Five Whys record naming
the lost prompts. A tiny llama with trained-model-like logits shows a healthy q8_0 green (T5's top-k
agreement, which fails every healthy quantized level, is information) and a broken q8_0 (a wrong block
scale, transposed projections) red. Plus the interval arithmetic, the per-level logit limits (T9) with
the same-top-1 resolution, and the first-token part of I-5, on measured records."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from apr_qa import five_whys
from apr_qa.evaluation import accuracy_andon, conversion_limits, gates, protocol, stats, verdict
from apr_qa.evidence import worst_level
from apr_qa.evaluation.prompts import load_golden
from apr_qa.evaluation.runner import evaluate
from apr_edit import broken_block_scale, transposed_projections

N_PROMPTS = 16  # one lost prompt = 6.25 points: inside the yellow band (5, 10]
OPTS = dict(runs=1, max_new_tokens=6, greedy_tokens=6)


def _single_token_prompts(model, n: int) -> list[int]:
    """Token ids that encode back to themselves alone, one per prompt (ordinary text, no specials)."""
    tok = model.tokenizer
    chosen = []
    for t in range(40, 384):
        text = tok.decode([t])
        if text.strip() and text.isprintable() and tok.encode(text) == [t]:
            chosen.append(t)
    return chosen[: 3 * n]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    """A golden set whose expected answers are the reference's own sampled continuations (so the
    reference scores 100 %), and the token of each prompt, chosen so that no continuation of another
    prompt contains it: perturbing a prompt's token then changes that prompt's runs and no other."""
    from apr_qa.runtime import load_model

    root = tmp_path_factory.mktemp("andon")
    opts = protocol.EvalOptions(**OPTS)
    model = load_model(tiny_llama, device="cpu", dtype=torch.float32)
    candidates = _single_token_prompts(model, N_PROMPTS)
    runs = {}
    for t in candidates:
        g = model.generate([model.tokenizer.decode([t])], opts.max_new_tokens, temperature=opts.temperature,
                           top_k=opts.top_k, top_p=opts.top_p, seed=opts.seed, stop_on_eos=True)[0]
        runs[t] = g
    chosen: list[int] = []
    for t in candidates:  # greedy pick: t's continuation avoids chosen tokens, and theirs avoid t
        if t not in runs[t].token_ids and all(t not in runs[c].token_ids and c not in runs[t].token_ids
                                                for c in chosen) and runs[t].text:
            chosen.append(t)
        if len(chosen) == N_PROMPTS:
            break
    assert len(chosen) == N_PROMPTS, "the tiny model's vocabulary gives too few independent prompts"
    prompts = [{"id": f"p{i:02d}", "input": model.tokenizer.decode([t]), "category": "sanity",
                "expected_pattern": r"\A" + re.escape(runs[t].text) + r"\Z"} for i, t in enumerate(chosen)]
    golden_path = root / "golden.yaml"
    golden_path.write_text(yaml.safe_dump({"metadata": {"version": "test"}, "prompts": prompts}))
    return {"root": root, "golden": load_golden(golden_path), "tokens": chosen, "reference": tiny_llama,
            "texts": {p["id"]: runs[t].text for p, t in zip(prompts, chosen, strict=True)}}


def perturbed_variant(src: Path, dst: Path, rows: list[int]) -> Path:
    """The reference with the embedding rows of `rows` replaced by large seeded noise."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    emb = state["model.embed_tokens.weight"].clone()
    gen = torch.Generator().manual_seed(7)
    emb[rows] = 2.0 * torch.randn((len(rows), emb.shape[1]), generator=gen)
    state["model.embed_tokens.weight"] = emb
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def gate(ev, gate_id):
    return next(g for g in ev.gates if g.id == gate_id)


def t_interval_points(diffs: list[float]) -> tuple[float, float]:
    """The expected interval, computed here by hand: mean +- t(n-1, 0.975) * sd / sqrt(n), in points."""
    from scipy.stats import t

    n = len(diffs)
    m = sum(diffs) / n
    half = t.ppf(0.975, n - 1) * (sum((d - m) ** 2 for d in diffs) / (n - 1)) ** 0.5 / n ** 0.5
    return 100 * (m - half), 100 * (m + half)


PASS, FAIL, INCONCLUSIVE = verdict.PASS, verdict.FAIL, verdict.INCONCLUSIVE


@pytest.mark.parametrize("lost, verdicts, band", [
    (0, (PASS, PASS), "green"),                  # the same runs, the same seeds: [0, 0]
    (1, (INCONCLUSIVE, INCONCLUSIVE), "yellow"),  # 6.25 points, [-7.1, 19.6]: 16 prompts cannot tell
    (8, (FAIL, FAIL), "red"),                    # 50 points, [22.5, 77.5]: beyond 10 points for certain
])
def test_forced_accuracy_drop(setup, lost, verdicts, band):
    golden, tokens = setup["golden"], setup["tokens"]
    variant = perturbed_variant(setup["reference"], setup["root"] / f"variant-{lost}", tokens[:lost])
    ev = evaluate(variant, setup["reference"], golden, protocol.EvalOptions(**OPTS))
    andon = ev.sections["accuracy_andon"]
    assert andon["reference"]["value"] == 1.0  # the golden answers are the reference's own runs
    assert sorted(x["id"] for x in andon["lost"]) == [f"p{i:02d}" for i in range(lost)]
    assert andon["degradation_points"] == pytest.approx(100 * lost / N_PROMPTS)
    assert andon["paired_runs"] == {"pairs": N_PROMPTS, "lost": lost, "gained": 0}
    lo, hi = t_interval_points([1.0] * lost + [0.0] * (N_PROMPTS - lost))
    assert andon["degradation_ci95"] == pytest.approx([lo, hi], abs=1e-5)
    assert andon["resolution_points"] == pytest.approx((hi - lo) / 2, abs=1e-5)
    assert (andon["verdicts"]["T7"], andon["verdicts"]["T8"]) == verdicts and andon["band"] == band
    t7, t8 = gate(ev, "T7"), gate(ev, "T8")
    assert (t7.details["verdict"], t8.details["verdict"]) == verdicts
    assert (t7.passed, t8.passed) == (verdicts[0] == PASS, verdicts[1] == PASS)
    assert (t7.level, t8.level) == ("warn", "warn" if verdicts[1] == INCONCLUSIVE else "fail")
    assert t7.details["degradation_ci95"] == andon["degradation_ci95"]
    for g, v in zip((t7, t8), verdicts, strict=True):
        if v == INCONCLUSIVE:  # a warning that says so, with the interval and its resolution
            assert g.message.startswith("inconclusive") and f"[{lo:.1f}, {hi:.1f}]" in g.message
            assert f"resolution +-{(hi - lo) / 2:.1f} points" in g.message
    for g in (t7, t8):
        if g.passed:
            assert "five_whys" not in g.details
            continue
        fw = g.details["five_whys"]  # every failure has its chain, the warning included
        assert fw["gate"] == g.id and fw["root_cause"] and fw["countermeasure"]
        assert "lost: p00 1 -> 0" in " ".join(fw["whys"])
    # the report's view of the evaluation file: one Five Whys per failed gate, whatever its level
    dicts = [g.to_dict() for g in ev.gates]
    failed_ids = [g["id"] for g in dicts if not g["passed"]]
    assert [fw["gate"] for fw in five_whys.stage_failures(dicts)] == failed_ids


def test_a_prompt_set_too_small_for_the_band_is_inconclusive(setup, tmp_path):
    """Swap the roles: the reference evaluated against the variant that lost p00 scores 6.25 points
    better, which the old point rule called green. At 16 prompts x 1 run the paired interval is
    [-19.6, 7.1]: it resolves T8 (within 10 points) but not T7 (5 points), so the band is yellow."""
    variant = perturbed_variant(setup["reference"], tmp_path / "variant", setup["tokens"][:1])
    ev = evaluate(setup["reference"], variant, setup["golden"], protocol.EvalOptions(**OPTS))
    andon = ev.sections["accuracy_andon"]
    assert andon["degradation_points"] == pytest.approx(-100 / N_PROMPTS)
    assert andon["paired_runs"] == {"pairs": N_PROMPTS, "lost": 0, "gained": 1}
    assert andon["degradation_ci95"] == pytest.approx(list(t_interval_points([-1.0] + [0.0] * (N_PROMPTS - 1))),
                                                      abs=1e-5)
    assert andon["verdicts"] == {"T7": INCONCLUSIVE, "T8": PASS} and andon["band"] == "yellow"
    t7 = gate(ev, "T7")
    assert not t7.passed and t7.level == "warn" and t7.message.startswith("inconclusive")
    assert gate(ev, "T8").passed


def _block(per_prompt: list[tuple[int, int]], runs: int) -> dict:
    """accuracy_block from (variant hits, reference hits) per prompt."""
    def prop(hits: list[int]) -> dict:
        return stats.proportion(sum(hits), runs * len(hits))

    items = [{"id": f"p{i}", "model": m, "reference": r, "runs": runs} for i, (m, r) in enumerate(per_prompt)]
    return accuracy_andon.accuracy_block("decoder", prop([m for m, _ in per_prompt]),
                                         prop([r for _, r in per_prompt]), items)


@pytest.mark.parametrize("prompts, lost_runs, verdicts, band", [
    # golden-v1's size, 9 prompts x 5 runs: one lost run is 2.2 points, [-2.9, 7.3]: within 10 points,
    # but not shown within 5
    (9, 1, (INCONCLUSIVE, PASS), "yellow"),
    # 2 prompts: even a 10-point loss cannot be told from nothing ([-100, 100] once clipped)
    (2, 1, (INCONCLUSIVE, INCONCLUSIVE), "yellow"),
    # 400 prompts x 5 runs, one lost run on each of the first prompts: the interval resolves the bands
    (400, 20, (PASS, PASS), "green"),          # 1 point, [0.6, 1.4]
    (400, 160, (FAIL, PASS), "yellow"),        # 8 points, [7.0, 9.0]: above 5, within 10
    (400, 200, (FAIL, INCONCLUSIVE), "yellow"),  # 10 points, [9.0, 11.0]: above 5, 10 unresolved
    (400, 300, (FAIL, FAIL), "red"),           # 15 points, [14.1, 15.9]
])
def test_degradation_verdict_follows_its_interval(prompts, lost_runs, verdicts, band):
    runs = 5
    per_prompt = [(runs - (1 if i < lost_runs else 0), runs) for i in range(prompts)]
    assert sum(r - m for m, r in per_prompt) == lost_runs
    block = _block(per_prompt, runs)
    lo, hi = (max(-100.0, min(100.0, v)) for v in t_interval_points([(r - m) / runs for m, r in per_prompt]))
    assert block["degradation_ci95"] == pytest.approx([lo, hi], abs=1e-5)
    assert block["degradation_points"] == pytest.approx(100 * lost_runs / (runs * prompts))
    assert (block["verdicts"]["T7"], block["verdicts"]["T8"]) == verdicts and block["band"] == band
    for g, v in zip((gates.gate_t7_accuracy(block), gates.gate_t8_accuracy(block)), verdicts, strict=True):
        assert g.details["verdict"] == v and g.passed == (v == PASS)
        assert g.measured["ci_low"] == block["degradation_ci95"][0]
        assert g.measured["resolution_points"] == block["resolution_points"]


def test_the_interval_is_paired():
    # variant == reference with very different accuracies per prompt: each accuracy has a wide interval of
    # its own, their difference none
    same = _block([(h, h) for h in (0, 1, 2, 3, 4, 5, 5, 0, 2)], 5)
    assert same["reference"]["ci95"][1] - same["reference"]["ci95"][0] > 0.25
    assert same["degradation_ci95"] == [0.0, 0.0] and same["resolution_points"] == 0.0
    assert same["verdicts"] == {"T7": PASS, "T8": PASS} and same["band"] == "green"
    # per prompt: a lost run and a gained run on the same prompt cancel, on different prompts they do not
    assert _block([(3, 3)] + [(5, 5)] * 8, 5)["degradation_ci95"] == [0.0, 0.0]
    assert _block([(2, 3), (5, 4)] + [(5, 5)] * 7, 5)["resolution_points"] > 5
    # run by run, the outcomes of the same prompt and seed are compared
    records = [{"prompt_id": p, "seed": s, "matched": m} for p, s, m in
               (("a", 42, True), ("a", 43, False), ("b", 42, True), ("b", 43, True))]
    ref = [{**r, "matched": not r["matched"] if r["prompt_id"] == "a" else r["matched"]} for r in records]
    assert accuracy_andon.paired_run_outcomes(records, ref) == {"pairs": 4, "lost": 1, "gained": 1}
    assert accuracy_andon.paired_run_outcomes(records, records) == {"pairs": 4, "lost": 0, "gained": 0}


def test_one_prompt_gives_no_interval():
    block = _block([(4, 5)], 5)
    assert block["degradation_points"] == pytest.approx(20.0) and block["degradation_ci95"] is None
    assert block["verdicts"] == {"T7": INCONCLUSIVE, "T8": INCONCLUSIVE} and block["band"] == "yellow"
    t8 = gates.gate_t8_accuracy(block)
    assert not t8.passed and t8.level == "warn" and "no interval" in t8.message
    unmeasured = accuracy_andon.accuracy_block("decoder", {"value": None}, {"value": 0.5}, [])
    assert unmeasured["band"] == "red" and gates.gate_t8_accuracy(unmeasured).level == "fail"


def test_bands_and_degradation():
    assert accuracy_andon.degradation_points(0.8, 0.8) == 0.0
    assert accuracy_andon.degradation_points(0.5, 0.6) == pytest.approx(-10.0)  # better than the reference
    assert [accuracy_andon.band(*v) for v in ((PASS, PASS), (INCONCLUSIVE, PASS), (FAIL, INCONCLUSIVE),
                                              (FAIL, PASS), (FAIL, FAIL), (INCONCLUSIVE, FAIL))] == \
        ["green", "yellow", "yellow", "yellow", "red", "red"]


def _kld(mean: float, same: float, positions: int = 215, ci=None, typical=None) -> dict:
    return {"positions": positions, "sequences": 9,
            "kld": {"mean": mean, "max": mean * 10, "p99": mean * 5, "mean_ci95": ci or [mean / 2, mean * 1.5],
                    "sequence_geometric_ci95": typical or [mean / 3, mean]},
            "same_top1": {"rate": same, "count": round(same * positions)}}


@pytest.mark.parametrize("level, mean, verdict_", [
    ("q8_0", 1.46e-3, "pass"),        # SmolLM2's q8_0: well inside 10 x llama.cpp's 0.00136
    ("q8_0", 0.39, "fail"),           # q4_0's figures are far beyond q8_0's limit
    ("q4_0", 0.39, "pass"),           # within 10 x llama.cpp's Q4_0 figure (0.072)
    ("q4_k", 0.5, "inconclusive"),    # mean interval [0.25, 0.75] spans 0.72, the typical prompt [0.17, 0.5] too
    ("f32", 1e-6, "fail"),            # f32 holds the reference's values: any divergence is a defect
    ("q9_9", 1e-6, "fail"),           # a level without a limit fails and says so
])
def test_conversion_limits(level, mean, verdict_):
    g = gates.gate_t9_logits(_kld(mean, 0.9), level)
    assert g.details["verdict"] == verdict_ and g.passed == (verdict_ == "pass")
    if verdict_ == "fail":
        assert g.level == "fail" and g.message and five_whys.analyze(g).root_cause
    if verdict_ == "inconclusive":
        assert g.level == "warn" and g.message.startswith("inconclusive")


def test_conversion_limits_come_from_published_figures():
    """10 x llama.cpp's published mean KLD (Llama-3-8B): Q8_0 0.00136, Q4_K_M 0.031, Q4_0 0.072, BF16 2.5e-5."""
    assert conversion_limits.max_mean_kld("q8_0") == pytest.approx(0.0136)
    assert conversion_limits.max_mean_kld("q4_k_m") == pytest.approx(0.31)
    assert conversion_limits.max_mean_kld("q4_0") == pytest.approx(0.72)
    assert conversion_limits.max_mean_kld("f16") == pytest.approx(2.5e-4)
    assert conversion_limits.max_mean_kld("q6_k") <= conversion_limits.max_mean_kld("q4_k_m")
    assert conversion_limits.max_mean_kld("nope") is None
    assert "Q4_0" in conversion_limits.basis("q4_k")


def test_same_top1_resolution_is_stated():
    """T9's evidence gives the same-top-1 rate's resolution: the half-width of its 95 % Wilson interval
    (SmolLM2 q8_0: 211 of 215 positions, [95.3 %, 99.3 %], +-2.0 points); it is recorded, not gated."""
    g = gates.gate_t9_logits(_kld(1.46e-3, 211 / 215), "q8_0")
    assert g.passed and g.measured["same_top1_resolution"] == pytest.approx(0.0198, abs=1e-4)
    assert g.details["same_top1_ci95"] == pytest.approx([0.953, 0.993], abs=1e-3)
    few = gates.gate_t9_logits(_kld(3e-5, 16 / 17, positions=17), "q8_0")
    assert few.passed and few.measured["same_top1_resolution"] > 0.1  # 17 positions resolve little


def test_cluster_interval_by_hand():
    # two clusters [1, 1] and [3]: mean 5/3; totals 2 and 3, residuals 2 - 10/3 and 3 - 5/3
    m, se, lo, hi = stats.cluster_interval([1.0, 1.0, 3.0], [2, 1])
    assert m == pytest.approx(5 / 3)
    assert se == pytest.approx(((2 * ((2 - 10 / 3) ** 2 + (3 - 5 / 3) ** 2)) ** 0.5) / 3)
    assert lo < m < hi
    assert stats.cluster_interval([1.0, 2.0], [2]) is None  # one cluster: no spread to estimate
    assert stats.geometric_interval([2.0, 8.0])[0] < 4.0 < stats.geometric_interval([2.0, 8.0])[1]


# -- a tiny llama with trained-model-like logits: the board of a healthy q8_0, and of a broken one ----------

PEAKED_PROMPTS = ["The capital of France is", "Water boils at", "def add(a, b):", "The quick brown fox",
                  "Numbers such as", "A journey of a thousand", "Tokenizers split text", "Machine learning models",
                  "There are 365 days"]
PEAKED_OPTS = dict(runs=2, max_new_tokens=8, greedy_tokens=8)


@pytest.fixture(scope="module")
def peaked(tmp_path_factory, tiny_llama):
    """The tiny llama made to predict like a trained model: its token embeddings (x4) dominate the
    residual stream and the output head maps each token's direction to a fixed next token with logits
    of tens (SmolLM2's span), so the top-1 margin is wide and q8_0 rounding keeps every prediction,
    while the layers still move the logits (transposed projections show). The golden answers are its
    own sampled continuations, so the reference scores 100 % and T4 passes."""
    from safetensors.torch import load_file, save_file

    from apr_qa.convert import convert
    from apr_qa.runtime import load_model

    root = tmp_path_factory.mktemp("peaked")
    src = root / "source"
    shutil.copytree(tiny_llama, src)
    state = load_file(src / "model.safetensors")
    emb = 4.0 * state["model.embed_tokens.weight"]
    order = torch.randperm(emb.shape[0], generator=torch.Generator().manual_seed(3))
    state["model.embed_tokens.weight"] = emb
    state["lm_head.weight"] = 30.0 * (emb / emb.norm(dim=1, keepdim=True))[order]
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    opts = protocol.EvalOptions(**PEAKED_OPTS)
    model = load_model(src)
    prompts = []
    for i, text in enumerate(PEAKED_PROMPTS):
        g = model.generate([text], opts.max_new_tokens, temperature=opts.temperature, top_k=opts.top_k,
                           top_p=opts.top_p, seed=opts.seed, stop_on_eos=True)[0]
        prompts.append({"id": f"p{i}", "input": text, "category": "sanity",
                        "expected_pattern": r"\A" + re.escape(g.text) + r"\Z"})
    golden_path = root / "golden.yaml"
    golden_path.write_text(yaml.safe_dump({"metadata": {"version": "test"}, "prompts": prompts}))
    variants = {}
    for level in ("q8_0", "q4_k"):
        variants[level] = root / f"peaked.{level}.apr"
        convert(src, variants[level], level)
    return {"source": src, "golden": load_golden(golden_path), **variants}


@pytest.mark.parametrize("level", ["q8_0", "q4_k"])
def test_healthy_quantized_board_is_green(peaked, level):
    """A correct quantizer on a model with wide top-1 margins: every gate passes. T5's old top-k agreement
    (top-10 logits within 0.1) measures below its 0.9 here, as it did on SmolLM2 at every quantized level:
    it is recorded as information and gates nothing."""
    ev = evaluate(peaked[level], peaked["source"], peaked["golden"], protocol.EvalOptions(**PEAKED_OPTS))
    assert [(g.id, g.message) for g in ev.gates if not g.passed] == []  # the board is green
    assert "T5" not in {g.id for g in ev.gates}
    agreement = ev.sections["logit_consistency"]["top_k_agreement"]
    assert agreement["agreement_rate"] < agreement["min_agreement"] and "not a gate" in agreement["role"]
    kld = ev.sections["logit_consistency"]["kl_divergence"]
    assert 0 < kld["kld"]["mean"] < conversion_limits.max_mean_kld(level) / 10
    assert kld["same_top1"]["rate"] == 1.0
    assert gate(ev, "T9").measured["same_top1_resolution"] > 0
    andon = ev.sections["accuracy_andon"]
    assert andon["reference"]["value"] == 1.0 and andon["degradation_ci95"] == [0.0, 0.0]
    assert andon["band"] == "green"


@pytest.mark.parametrize("defect, verdict_", [(broken_block_scale, "fail"), (transposed_projections, "inconclusive")])
def test_broken_q8_0_is_never_green(peaked, defect, verdict_, tmp_path):
    """A wrong block scale diverges on every prompt: T9 fails (red). Transposed projections diverge on a
    few of the 9 prompts only (the peaked model's embeddings dominate the others), so the typical prompt
    cannot be shown beyond the limit: inconclusive, a warning that names the 250x mean, never green."""
    from apr_edit import rewrite

    broken = rewrite(peaked["q8_0"], tmp_path / "broken.q8_0.apr", defect(peaked["q8_0"]))
    ev = evaluate(broken, peaked["source"], peaked["golden"], protocol.EvalOptions(**PEAKED_OPTS))
    t9 = gate(ev, "T9")
    assert not t9.passed and t9.details["verdict"] == verdict_
    assert t9.measured["mean_kld"] > 10 * conversion_limits.max_mean_kld("q8_0")
    assert t9.measured["mean_kld_ci95"][1] > conversion_limits.max_mean_kld("q8_0")
    if verdict_ == "fail":
        assert t9.level == "fail" and worst_level(ev.gates) == "fail"  # red
        assert t9.measured["typical_prompt_kld_ci95"][0] > conversion_limits.max_mean_kld("q8_0")
        assert ev.sections["logit_consistency"]["top_k_agreement"]["agreement_rate"] == 0.0  # recorded
    else:
        assert t9.level == "warn" and t9.message.startswith("inconclusive")


def test_i5_gates_the_first_token():
    check = {"passed": True, "mismatches": [], "texts": 12}
    assert gates.gate_i5(check, (9, 9), "f16").passed
    assert not gates.gate_i5(check, (8, 9), "f16").passed   # half precision: every prompt
    # quantized: recorded, not gated (one position per prompt; T9 and Q1 judge the distribution)
    assert gates.gate_i5(check, (2, 9), "q4_0").passed
    assert "2/9" in gates.gate_i5(check, (2, 9), "q4_0").measured
    assert not gates.gate_i5({"passed": False, "texts": 12, "mismatches": [{"text": "x", "problems": ["ids"]}]},
                             (9, 9), "q4_0").passed  # the tokenizer round trip still gates every level


def test_report_sections_without_a_certification(setup, tmp_path):
    """The report's tier-independent sections from a real evaluation JSON: the Five Whys of every
    failed stage gate (the yellow T7 included) and the Pareto frontier priced per device-hour."""
    from apr_qa.report import certification as andon_blocks
    from apr_qa.evaluation.report_json import build_report

    golden = setup["golden"]
    opts = protocol.EvalOptions(**OPTS)
    variant = perturbed_variant(setup["reference"], tmp_path / "variant", setup["tokens"][:1])
    rows = []
    for name, model in (("yellow", variant), ("ref", setup["reference"])):
        ev = evaluate(model, setup["reference"], golden, opts)
        doc = build_report(ev, golden, opts, "cpu", "start", "end", 1.0)
        assert doc["cost"]["device_seconds_per_1k_tokens"] > 0 and doc["accuracy_andon"]["band"] in ("green", "yellow")
        rows.append({"model": "tiny", "variant": name, "stages": {"evaluate": {"gates": doc["gates"]}},
                     "_eval": doc, "_size": 1000 + len(rows)})
    blocks = andon_blocks.stage_five_whys(rows)
    items = blocks[2][1]
    heads = [head for head, _ in items]
    assert any(h.startswith("**T7** (warn, tiny/yellow, evaluate)") for h in heads)
    assert all(subs[-1].startswith("root cause: ") for _, subs in items)
    pareto_out = andon_blocks.pareto_blocks(rows, tmp_path, usd_per_device_hour=0.10)
    table = next(b for b in pareto_out if b[0] == "table")
    by_name = {r[0]: r for r in table[2]}
    assert by_name["tiny/ref"][1] == "1.000" and by_name["tiny/yellow"][1] == "0.938"  # 15/16 runs
    assert all(r[4] != "-" for r in table[2])  # priced: a cost per 1k tokens for every variant
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "cost per 1k tokens" in (tmp_path / "pareto.svg").read_text()


def test_five_whys_for_stage_failures_without_details():
    """Gates from an Andon event (a failed command) or an old evidence file: a chain is derived anyway."""
    from apr_qa.report import certification as andon_blocks

    fws = five_whys.stage_failures([{"id": "C2", "level": "fail", "passed": False, "message": "bad header"},
                                    {"id": "T1", "level": "fail", "passed": True}])
    assert len(fws) == 1 and fws[0]["gate"] == "C2" and "bad header" in fws[0]["whys"][0]
    rows = [{"model": "m", "variant": "q4_0", "stages": {
        "convert": {"colour": "red", "level": "fail", "gates": [], "reason": "exit status 137"}}}]
    (_, _, (_, items)) = andon_blocks.stage_five_whys(rows)
    assert "exit status 137" in items[0][1][0] and items[0][1][1].startswith("root cause: ")


# -- token F1 beside exact match ------------------------------------------------------------------------

def _f1_block(em: list[tuple[int, int]], f1s: list[tuple[float, float]], runs: int = 5) -> dict:
    """accuracy_block from (variant hits, reference hits) and (variant mean F1, reference mean F1) per prompt."""
    def prop(hits: list[int]) -> dict:
        return stats.proportion(sum(hits), runs * len(hits))

    items = [{"id": f"p{i}", "model": m, "reference": r, "runs": runs} for i, (m, r) in enumerate(em)]
    f1_items = [{"id": f"p{i}", "model": m, "reference": r, "runs": runs} for i, (m, r) in enumerate(f1s)]
    return accuracy_andon.accuracy_block("decoder", prop([m for m, _ in em]), prop([r for _, r in em]), items,
                                         None, f1_items)


def test_combined_verdict():
    combine = accuracy_andon.combined_verdict
    assert [combine(e, f) for e, f in ((PASS, None), (INCONCLUSIVE, None), (FAIL, None))] == \
        [PASS, INCONCLUSIVE, FAIL]  # no F1: exact match alone, as before
    assert [combine(e, f) for e, f in ((PASS, PASS), (PASS, FAIL), (FAIL, PASS), (PASS, INCONCLUSIVE),
                                       (INCONCLUSIVE, PASS), (INCONCLUSIVE, FAIL))] == \
        [PASS, FAIL, FAIL, INCONCLUSIVE, INCONCLUSIVE, FAIL]


def test_f1_and_exact_match_both_pass():
    # 100 prompts: exact match identical ([0, 0]); F1 0.01 lower on half the prompts: 0.5 points, [0.40, 0.60]
    f1s = [(0.79, 0.8) if i % 2 else (0.8, 0.8) for i in range(100)]
    block = _f1_block([(3, 3)] * 100, f1s)
    f1b = block["f1"]
    lo, hi = t_interval_points([r - m for m, r in f1s])
    assert f1b["degradation_points"] == pytest.approx(0.5)
    assert f1b["degradation_ci95"] == pytest.approx([lo, hi], abs=1e-5)
    assert f1b["model"] == {"mean": pytest.approx(0.795), "n": 500} and f1b["items"] == 100
    assert block["verdicts_by_metric"] == {"exact_match": {"T7": PASS, "T8": PASS}, "f1": {"T7": PASS, "T8": PASS}}
    assert block["verdicts"] == {"T7": PASS, "T8": PASS} and block["band"] == "green"
    t7 = gates.gate_t7_accuracy(block)
    assert t7.passed and t7.measured["f1_ci_high"] == pytest.approx(hi, abs=1e-5)
    assert "exact match and of token F1" in t7.threshold and "exact match and token F1" in t7.name


def test_f1_alone_fails_the_gates():
    # the same runs match the patterns (exact match [0, 0]), but the answers lost 15 points of F1 on every
    # prompt (a garbled option text, a lost word): red, and the evidence says which metric failed
    f1s = [(0.85 if i % 2 else 0.83, 0.99) for i in range(100)]
    block = _f1_block([(4, 4)] * 100, f1s)
    assert block["degradation_ci95"] == [0.0, 0.0]
    assert block["verdicts_by_metric"]["exact_match"] == {"T7": PASS, "T8": PASS}
    assert block["verdicts_by_metric"]["f1"] == {"T7": FAIL, "T8": FAIL}
    assert block["verdicts"] == {"T7": FAIL, "T8": FAIL} and block["band"] == "red"
    assert block["lost"] == [] and [i["id"] for i in block["f1"]["lost"][:2]] == ["p0", "p2"]  # largest first
    t7, t8 = gates.gate_t7_accuracy(block), gates.gate_t8_accuracy(block)
    assert not t8.passed and t8.level == "fail" and t8.details["verdict"] == FAIL
    assert t8.details["verdicts_by_metric"] == {"exact_match": PASS, "f1": FAIL}
    assert t8.message.startswith("exact match (pass): degradation 0.0 points")
    assert "token F1 (fail): degradation 15.0 points" in t8.message and "entirely above 10 points" in t8.message
    assert "lost on p0, p2, p4" in t8.message
    assert t8.measured["degradation_points"] == 0.0 and t8.measured["f1_ci_low"] > 10
    assert not t7.passed and t7.level == "warn"
    # the Five Whys of the failed gate still has its chain
    assert five_whys.stage_failures([t8.to_dict()])[0]["root_cause"]


def test_f1_unresolved_is_inconclusive():
    # exact match passes ([0, 0]); F1 lost half a point of F1 (50 points) on one of 10 prompts: 5 points,
    # [-6.3, 16.3]: neither band resolved, so neither gate may pass
    f1s = [(0.5, 1.0)] + [(1.0, 1.0)] * 9
    block = _f1_block([(5, 5)] * 10, f1s)
    lo, hi = t_interval_points([0.5] + [0.0] * 9)
    assert block["f1"]["degradation_ci95"] == pytest.approx([lo, hi], abs=1e-5)
    assert block["verdicts_by_metric"]["f1"] == {"T7": INCONCLUSIVE, "T8": INCONCLUSIVE}
    assert block["verdicts"] == {"T7": INCONCLUSIVE, "T8": INCONCLUSIVE} and block["band"] == "yellow"
    for g in (gates.gate_t7_accuracy(block), gates.gate_t8_accuracy(block)):
        assert not g.passed and g.level == "warn" and g.message.startswith("inconclusive: exact match (pass)")
        assert f"token F1 (inconclusive): degradation 5.0 points, 95 % interval [{lo:.1f}, {hi:.1f}]" in g.message


def test_without_reference_answers_exact_match_alone_decides():
    block = _block([(4, 5)] + [(5, 5)] * 8, 5)
    assert block["f1"] is None and block["verdicts_by_metric"]["f1"] is None
    assert block["verdicts"] == block["verdicts_by_metric"]["exact_match"]
    t7 = gates.gate_t7_accuracy(block)
    assert "F1" not in t7.threshold + t7.name + t7.message and "f1_ci_low" not in t7.measured


def test_paired_f1_pairs_runs_by_prompt_and_seed():
    model = [{"prompt_id": "a", "seed": 42, "f1": 1.0}, {"prompt_id": "a", "seed": 43, "f1": 0.5},
             {"prompt_id": "b", "seed": 42, "f1": None}, {"prompt_id": "c", "seed": 42, "f1": 0.25}]
    reference = [{"prompt_id": "a", "seed": 43, "f1": 1.0}, {"prompt_id": "a", "seed": 42, "f1": 1.0},
                 {"prompt_id": "b", "seed": 42, "f1": None}, {"prompt_id": "c", "seed": 42}]  # no F1 recorded
    assert accuracy_andon.paired_f1(model, reference) == [{"id": "a", "model": 0.75, "reference": 1.0, "runs": 2}]
    assert accuracy_andon.paired_f1(model, []) == []


@pytest.mark.parametrize("lost", [0, 8])
def test_f1_on_a_real_evaluation(setup, tmp_path, lost):
    """The reference's own sampled continuations as reference answers: the reference scores F1 1.0 on every
    run; a variant identical to it too ([0, 0], green), one that lost 8 prompts loses F1 exactly there."""
    from apr_qa.evaluation import f1

    doc = yaml.safe_load(setup["golden"].path.read_text())
    for p in doc["prompts"]:
        if f1.tokens(setup["texts"][p["id"]]):  # F1 needs words; a continuation of punctuation has none
            p["reference_answer"] = setup["texts"][p["id"]]
    with_f1 = [p["id"] for p in doc["prompts"] if "reference_answer" in p]
    assert len(with_f1) >= 8
    path = tmp_path / "golden.yaml"
    path.write_text(yaml.safe_dump(doc))
    golden = load_golden(path)
    variant = perturbed_variant(setup["reference"], tmp_path / "variant", setup["tokens"][:lost])
    ev = evaluate(variant, setup["reference"], golden, protocol.EvalOptions(**OPTS))
    records = ev.sections["runs"]["records"]
    assert [r["f1"] is not None for r in records] == [r["prompt_id"] in with_f1 for r in records]
    andon = ev.sections["accuracy_andon"]
    f1b = andon["f1"]
    assert f1b["reference"]["mean"] == 1.0 and f1b["items"] == len(with_f1)
    assert ev.sections["accuracy"]["f1"]["mean"] == pytest.approx(f1b["model"]["mean"])
    # the evaluation JSON, its summary lines and the report's variant details show F1 beside accuracy
    from apr_qa.evaluation.report_json import build_report, summary_lines
    from apr_qa.report import sections as report_sections

    doc = build_report(ev, golden, protocol.EvalOptions(**OPTS), "cpu", "start", "end", 1.0)
    assert doc["prompts"]["with_reference_answer"] == len(with_f1) and doc["accuracy"]["f1"]["n"] == len(with_f1)
    lines = "\n".join(summary_lines(doc, ev.gates))
    assert "; token F1 " in lines and "token F1 vs reference: " in lines
    metrics = dict(report_sections._metrics({"_eval": doc, "_size": 1000}))
    assert metrics["token F1 (variant / reference)"].endswith(" / 1.0")
    assert metrics["accuracy band (exact match and F1)"] == andon["band"]
    if lost == 0:
        assert f1b["degradation_ci95"] == [0.0, 0.0] and andon["verdicts"] == {"T7": PASS, "T8": PASS}
        assert gate(ev, "T7").passed and gate(ev, "T8").passed
    else:
        perturbed = {f"p{i:02d}" for i in range(lost)}
        assert f1b["lost"] and {i["id"] for i in f1b["lost"]} <= perturbed and f1b["gained"] == []
        assert f1b["degradation_points"] > 0
        assert all(r["f1"] == 1.0 for r in records if r["prompt_id"] in with_f1 and r["prompt_id"] not in perturbed)
        assert andon["band"] == "red" and "token F1" in gate(ev, "T8").message

