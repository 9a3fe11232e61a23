"""The C8/I-4 comparison metrics on hand-computed cases."""

import math

import numpy as np
import pytest

from apr_qa.precision import KL_EPS, TensorStats, compare, cosine, kl_divergence_abs, relative_rmse, stats_drift


def test_identical_tensors_compare_exactly():
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    c = compare(x, x.copy())
    assert c.kl_divergence == 0.0
    assert c.cosine == pytest.approx(1.0, abs=1e-12)
    assert c.relative_rmse == 0.0
    assert c.stats_drift == 0.0


def test_kl_matches_hand_computation():
    p = np.array([1.0, -3.0])          # |p| normalized: 0.25, 0.75
    q = np.array([2.0, 2.0])           # |q| normalized: 0.5, 0.5
    a = np.array([0.25, 0.75]) + KL_EPS
    b = np.array([0.5, 0.5]) + KL_EPS
    assert kl_divergence_abs(p, q) == pytest.approx(float(np.sum(a * np.log(a / b))), rel=1e-12)
    assert kl_divergence_abs(p, q) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)


def test_cosine_and_rmse_hand_cases():
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(0.0)
    assert cosine(np.array([1.0, 1.0]), np.array([-1.0, -1.0])) == pytest.approx(-1.0)
    assert cosine(np.zeros(4), np.zeros(4)) == 1.0
    # error RMS = 1, source RMS = 2
    assert relative_rmse(np.array([2.0, -2.0]), np.array([3.0, -1.0])) == pytest.approx(0.5)
    assert relative_rmse(np.zeros(3), np.ones(3)) == math.inf


def test_stats_drift_normalization():
    src = TensorStats(mean=0.0, std=2.0, min=-4.0, max=8.0)
    conv = TensorStats(mean=0.1, std=2.0, min=-4.0, max=7.4)
    # mean drift 0.1/std 2 = 0.05; max drift 0.6/range 12 = 0.05
    assert stats_drift(src, conv) == pytest.approx(0.05)


def test_quantization_noise_is_detected():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4096).astype(np.float32)
    noisy = x + rng.standard_normal(4096).astype(np.float32) * 0.1
    c = compare(x, noisy)
    assert 0.05 < c.relative_rmse < 0.15
    assert c.cosine < 0.999
    assert c.kl_divergence > 1e-4
