"""Statistics and metric formulas on hand-computed numbers (no runtime involved)."""

import math

import pytest
import torch

from apr_qa.evaluation import encoder_eval, logit_consistency as lc, stats
from apr_qa.evaluation.prompts import TextPair


# -- intervals and percentiles -------------------------------------------------------------------

def test_wilson_interval_matches_hand_computation():
    # 8 of 10, z = 1.959964: centre = (0.8 + z^2/20) / (1 + z^2/10), half-width as in Wilson (1927)
    z = 1.959963984540054
    p, n = 0.8, 10
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(centre - half, abs=1e-12) and hi == pytest.approx(centre + half, abs=1e-12)
    assert (lo, hi) == pytest.approx((0.4901624, 0.9433178), abs=1e-6)  # published table value


def test_wilson_interval_edges():
    lo, hi = stats.wilson_interval(0, 5)
    assert lo == 0.0 and hi == pytest.approx(0.4345, abs=1e-4)
    lo, hi = stats.wilson_interval(5, 5)
    assert hi == 1.0 and lo == pytest.approx(0.5655, abs=1e-4)
    assert stats.wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        stats.wilson_interval(6, 5)


def test_t_interval_matches_hand_computation():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, s = sqrt(2.5), t(0.975, 4) = 2.776445
    lo, hi = stats.t_interval(values)
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (lo, hi) == pytest.approx((3 - half, 3 + half), abs=1e-9)
    assert stats.t_interval([1.0]) is None


def test_percentile_linear_interpolation():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert stats.percentile(values, 50) == 3.0
    assert stats.percentile(values, 90) == pytest.approx(4.6)   # pos 3.6 -> 4 + 0.6 * (5 - 4)
    assert stats.percentile(values, 0.1) == pytest.approx(1.004)
    assert stats.percentile(values, 0) == 1.0 and stats.percentile(values, 100) == 5.0
    assert stats.percentiles([1.0, 2.0], [99.9, 50]) == {"p99.9": pytest.approx(1.999), "p50": 1.5}


def test_summary_and_standard_error():
    s = stats.summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert s["mean"] == 5.0 and s["sd"] == pytest.approx(math.sqrt(32 / 7))
    assert stats.standard_error([2.0, 4.0]) == pytest.approx(1.0)   # s = sqrt(2), / sqrt(2)
    assert stats.summarize([])["mean"] is None
    assert stats.binomial_se(0.9, 101) == pytest.approx(0.03)


def test_pearson():
    assert stats.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.pearson([1, 1, 1], [1, 2, 3]) is None


# -- top-k agreement -------------------------------------------------------------------------------

def test_top_k_agreement_formula_on_crafted_lists():
    k, tol = 4, 0.1
    orig = [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.0)]
    assert lc.top_k_agreement(orig, orig, k, tol) == 1.0
    # same tokens, two logits off by more than the tolerance: 0.5 * 4/4 + 0.5 * 2/4
    conv = [(1, 5.05), (2, 4.2), (3, 2.5), (4, 2.0)]
    assert lc.top_k_agreement(orig, conv, k, tol) == 0.75
    # two tokens replaced, both shared ones within tolerance: 0.5 * 2/4 + 0.5 * 2/4
    conv = [(1, 5.0), (9, 4.5), (2, 3.95), (8, 1.0)]
    assert lc.top_k_agreement(orig, conv, k, tol) == 0.5
    assert lc.top_k_agreement(orig, [(7, 1.0)], k, tol) == 0.0
    # boundary: a difference equal to the tolerance agrees (<=)
    assert lc.top_k_agreement([(1, 1.0)], [(1, 1.5)], 1, 0.5) == 1.0


def test_top_k_is_descending_and_stable_on_ties():
    logits = torch.tensor([0.5, 2.0, 2.0, -1.0, 3.0])
    assert lc.top_k(logits, 3) == [(4, 3.0), (1, 2.0), (2, 2.0)]


def test_top_k_consistency_rate_and_divergent_samples():
    base = torch.arange(20, dtype=torch.float32)
    same, shifted = base.clone(), base.clone()
    shifted[19] -= 0.5                                  # top token's logit moves beyond 0.1: score 0.95
    reversed_ = -base                                   # a different top 10: score 0
    out = lc.top_k_consistency(["a", "b", "c"], [base, base, base], [same, shifted, reversed_])
    assert [p["agreement"] for p in out["per_prompt"]] == [1.0, 0.95, 0.0]
    assert out["agreement_rate"] == pytest.approx(2 / 3)
    assert out["passed"] is False and out["divergent_count"] == 1
    assert out["divergent_samples"][0]["id"] == "c"


# -- KLD statistics ---------------------------------------------------------------------------------

def test_kld_of_known_distributions():
    # reference p = (0.5, 0.5), model q = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64))
    mod = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]], dtype=torch.float64))
    ps = lc.position_stats([ref], [mod], [[0, 1]])
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert ps.kld == pytest.approx([expected, 0.0], abs=1e-12)
    assert ps.same_top == [False, True]                   # argmax 0 vs 1, then 0 vs 0
    assert ps.delta_p == pytest.approx([0.75 - 0.5])      # next token 1 after position 0
    summary = lc.kld_summary(ps)
    assert summary["kld"]["mean"] == pytest.approx(expected / 2)
    assert summary["kld"]["max"] == pytest.approx(expected)
    assert summary["same_top1"]["rate"] == 0.5
    ppl = summary["perplexity"]
    assert ppl["reference"] == pytest.approx(2.0) and ppl["model"] == pytest.approx(4 / 3)
    assert ppl["ratio"] == pytest.approx(2 / 3)


def test_kld_is_zero_for_identical_logits_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g)
    ids = torch.randint(0, 50, (6,), generator=g).tolist()
    same = lc.kld_summary(lc.position_stats([logits], [logits.clone()], [ids]))
    assert same["kld"]["max"] == 0.0 and same["same_top1"]["rate"] == 1.0
    assert same["delta_p"]["rms"] == 0.0 and same["perplexity"]["ratio"] == 1.0
    noisy = lc.kld_summary(lc.position_stats([logits], [logits + torch.randn(6, 50, generator=g)], [ids]))
    assert noisy["kld"]["min"] > 0 and noisy["delta_p"]["rms"] > 0
    assert set(noisy["kld"]) >= {"p99.9", "p99", "p95", "p90", "p50", "p10", "p5", "p1", "p0.1", "se"}


def test_position_stats_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        lc.position_stats([torch.zeros(2, 5)], [torch.zeros(2, 6)], [[0, 1]])


def test_greedy_identity():
    assert lc.greedy_identity([1, 2, 3], [1, 2, 3]) == {
        "identical": True, "first_divergence": None, "first_token_identical": True,
        "model_tokens": 3, "reference_tokens": 3}
    d = lc.greedy_identity([1, 2, 4], [1, 2, 3])
    assert d["first_divergence"] == 2 and d["first_token_identical"] and not d["identical"]
    assert lc.greedy_identity([5, 2], [1, 2])["first_token_identical"] is False
    assert lc.greedy_identity([1, 2], [1, 2, 7])["first_divergence"] == 2  # one stopped early


# -- embeddings ----------------------------------------------------------------------------------

def test_similarity_sanity_margin_and_failure():
    emb = {"a": torch.tensor([1.0, 0.0]), "a2": torch.tensor([0.9, 0.1]), "b": torch.tensor([0.0, 1.0])}
    para = encoder_eval.pair_scores([TextPair("p", "a", "a2")], emb)
    unrel = encoder_eval.pair_scores([TextPair("u", "a", "b")], emb)
    ok = encoder_eval.similarity_sanity(para, unrel)
    assert ok["passed"] and ok["margin"] == pytest.approx(0.9 / math.sqrt(0.82))
    bad = encoder_eval.similarity_sanity(unrel, para)
    assert bad["passed"] is False and bad["ordered_fraction"] == 0.0


def test_embedding_consistency():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = encoder_eval.embedding_consistency(["x", "y"], a, b)
    assert out["cosine_min"] == pytest.approx(1 / math.sqrt(2)) and out["worst"]["text"] == "y"
    assert encoder_eval.embedding_consistency(["x", "y"], a, a.clone())["max_abs_diff"] == 0.0
