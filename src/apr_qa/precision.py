"""Numerical comparison of a converted tensor against its source tensor (gates C8 and I-4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KL_EPS = 1e-10  # added to both normalized distributions to avoid log(0)


@dataclass(frozen=True)
class TensorStats:
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, x: np.ndarray) -> TensorStats:
        x64 = x.astype(np.float64, copy=False).ravel()
        return cls(float(x64.mean()), float(x64.std()), float(x64.min()), float(x64.max()))


@dataclass(frozen=True)
class Comparison:
    kl_divergence: float
    cosine: float
    relative_rmse: float
    stats_drift: float  # worst normalized drift of mean/std/min/max (I-4)


def kl_divergence_abs(p: np.ndarray, q: np.ndarray) -> float:
    """D_KL(P||Q) with P, Q the tensors' absolute values normalized to sum 1, plus eps."""
    a = np.abs(p.astype(np.float64, copy=False).ravel())
    b = np.abs(q.astype(np.float64, copy=False).ravel())
    sa, sb = a.sum(), b.sum()
    if sa == 0 and sb == 0:
        return 0.0
    pa = a / sa + KL_EPS if sa else np.full_like(a, KL_EPS)
    pb = b / sb + KL_EPS if sb else np.full_like(b, KL_EPS)
    return float(np.sum(pa * np.log(pa / pb)))


def cosine(p: np.ndarray, q: np.ndarray) -> float:
    a = p.astype(np.float64, copy=False).ravel()
    b = q.astype(np.float64, copy=False).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0  # two all-zero tensors are identical
    return float(np.dot(a, b) / (na * nb + 1e-30))


def relative_rmse(p: np.ndarray, q: np.ndarray) -> float:
    """RMS of the error divided by the RMS of the source (0 = exact)."""
    a = p.astype(np.float64, copy=False).ravel()
    b = q.astype(np.float64, copy=False).ravel()
    err = float(np.sqrt(np.mean((a - b) ** 2)))
    ref = float(np.sqrt(np.mean(a**2)))
    if ref == 0:
        return 0.0 if err == 0 else float("inf")
    return err / ref


def stats_drift(src: TensorStats, conv: TensorStats) -> float:
    """Worst drift of mean/std/min/max, normalized so a tolerance reads as a fraction of scale.

    Mean and std drift are measured against the source std (a weight mean sits near zero, so a
    relative error of the mean itself is meaningless); min and max against the source's value
    range (max - min).
    """
    std_scale = src.std if src.std > 0 else 1.0
    mag_scale = (src.max - src.min) or 1.0
    return max(
        abs(conv.mean - src.mean) / std_scale,
        abs(conv.std - src.std) / std_scale,
        abs(conv.min - src.min) / mag_scale,
        abs(conv.max - src.max) / mag_scale,
    )


def compare(source: np.ndarray, converted: np.ndarray) -> Comparison:
    return Comparison(
        kl_divergence=kl_divergence_abs(source, converted),
        cosine=cosine(source, converted),
        relative_rmse=relative_rmse(source, converted),
        stats_drift=stats_drift(TensorStats.of(source), TensorStats.of(converted)),
    )
