"""Small statistics on plain numbers: confidence intervals, percentiles, summaries.

Kept free of torch so it can be tested on hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# llama.cpp `--kl-divergence` prints these percentiles (in percent).
KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
# ... and these for delta-p.
DELTA_P_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 75.0, 50.0, 25.0, 10.0, 5.0, 1.0, 0.1)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (None when n == 0)."""
    from scipy.stats import norm

    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    z = norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # exact bounds at the edges (the formula leaves ~1e-17 of rounding there)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def cluster_interval(values: Sequence[float], sizes: Sequence[int],
                     confidence: float = 0.95) -> tuple[float, float, float, float] | None:
    """(mean, se, low, high) of the mean of `values`, which come in consecutive clusters of `sizes` (the
    positions of one prompt share its context, so they are not independent). The ratio estimator's
    standard error from the cluster totals, se^2 = n/(n-1) * sum((t_i - mean m_i)^2) / N^2, and a Student-t
    interval with n - 1 degrees of freedom (n clusters). None below two clusters."""
    from scipy.stats import t

    if sum(sizes) != len(values):
        raise ValueError(f"cluster sizes sum to {sum(sizes)}, not the {len(values)} values")
    sizes = [m for m in sizes if m > 0]
    n, total = len(sizes), len(values)
    if n < 2:
        return None
    m = math.fsum(values) / total
    residuals, start = [], 0
    for size in sizes:
        residuals.append(math.fsum(values[start:start + size]) - m * size)
        start += size
    se = math.sqrt(n / (n - 1) * math.fsum(r * r for r in residuals)) / total
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * se
    return (m, se, m - half, m + half)


def geometric_interval(values: Sequence[float], confidence: float = 0.95,
                       floor: float = 1e-12) -> tuple[float, float] | None:
    """Student-t interval of the geometric mean of positive values (the t interval of their logs,
    exponentiated; values below `floor` count as `floor`). For a heavy-tailed non-negative statistic,
    such as one prompt's mean KLD, the arithmetic interval's lower end can fall below zero while every
    value is large; this bound describes the typical value instead. None below two values."""
    logs = [math.log(max(v, floor)) for v in values]
    interval = t_interval(logs, confidence)
    return None if interval is None else (math.exp(interval[0]), math.exp(interval[1]))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval for the mean: mean +- t(n-1) * s / sqrt(n). None below two samples."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return None
    m = mean(values)
    s = stdev(values)
    half = t.ppf(0.5 + confidence / 2, n - 1) * s / math.sqrt(n)
    return (m - half, m + half)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 denominator)."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean, as llama.cpp's mean_and_uncertainty computes it."""
    n = len(values)
    return stdev(values) / math.sqrt(n) if n > 1 else 0.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default; llama.cpp's KLD percentiles)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    if pct <= 0:
        return ordered[0]
    if pct >= 100:
        return ordered[-1]
    pos = pct / 100 * (len(ordered) - 1)
    lo = int(pos)
    frac = pos - lo
    hi = min(lo + 1, len(ordered) - 1)
    return (1 - frac) * ordered[lo] + frac * ordered[hi]


def percentile_key(pct: float) -> str:
    """Stable JSON key for a percentile: 99.9 -> "p99.9", 50 -> "p50"."""
    return "p" + (f"{pct:g}")


def percentiles(values: Sequence[float], pcts: Sequence[float]) -> dict[str, float]:
    return {percentile_key(p): percentile(values, p) for p in pcts}


def binomial_se(p: float, n: int) -> float:
    """llama.cpp's "Same top p" uncertainty: sqrt(p (1 - p) / (n - 1))."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict:
    """n, mean, sd, Student-t CI of the mean, p50/p90/p99, min, max (None fields when empty)."""
    if not values:
        return {"n": 0, "mean": None, "sd": None, "ci95": None, "p50": None, "p90": None,
                "p99": None, "min": None, "max": None}
    ci = t_interval(values, confidence)
    return {
        "n": len(values),
        "mean": mean(values),
        "sd": stdev(values),
        "ci95": list(ci) if ci else None,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }


def proportion(successes: int, n: int, confidence: float = 0.95) -> dict:
    ci = wilson_interval(successes, n, confidence)
    return {"value": successes / n if n else None, "successes": successes, "n": n,
            "ci95": list(ci) if ci else None}


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation (None when either side is constant or there are < 2 points)."""
    n = len(xs)
    if n != len(ys):
        raise ValueError("pearson: length mismatch")
    if n < 2:
        return None
    mx, my = mean(xs), mean(ys)
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)
