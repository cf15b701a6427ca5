"""The statistics of a group of runs over their seeds: count, mean, standard deviation, range and
the 95% t-interval of a metric, and Welch's t-test of two groups' means."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Student's t at 97.5% by degrees of freedom; between them, interpolated in 1/df.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 22: 2.074, 24: 2.064, 26: 2.056, 28: 2.048, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980, math.inf: 1.960,
}  # fmt: skip


def t_critical(df: float) -> float:
    """The two-sided 95% critical value of Student's t with df (possibly fractional) degrees of freedom."""
    if df <= 1:
        return _T975[1]
    points = sorted(_T975)
    for lo, hi in zip(points, points[1:]):
        if lo <= df <= hi:
            if df == lo:
                return _T975[lo]
            weight = (1 / lo - 1 / df) / (1 / lo - (0 if hi == math.inf else 1 / hi))
            return _T975[lo] + weight * (_T975[hi] - _T975[lo])
    return _T975[math.inf]


@dataclass(frozen=True)
class Stats:
    """A metric over a group's complete runs. std is None for one run (no spread, rather than a zero
    one); the 95% t-interval's half-width is None below three runs."""

    n: int
    mean: float
    std: float | None
    low: float
    high: float
    half_width: float | None


def stats(values: Iterable[float]) -> Stats | None:
    """n, mean, sample standard deviation, range and 95% t-interval of some numbers; None for none."""
    xs = [float(v) for v in values]
    if not xs:
        return None
    n, mean = len(xs), math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    half = t_critical(n - 1) * std / math.sqrt(n) if std is not None and n >= 3 else None
    return Stats(n, mean, std, min(xs), max(xs), half)


@dataclass(frozen=True)
class Separation:
    """Whether the best group's metric is told apart from the runner-up's by Welch's t-test at 95%."""

    separable: bool | None  # None where it cannot be tested (a group with one run)
    t: float | None = None
    df: float | None = None
    critical: float | None = None


def welch(a: Stats, b: Stats) -> Separation:
    """Welch's two-sided t-test at 95% of two groups' means."""
    if a.std is None or b.std is None:
        return Separation(None)
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    if va + vb == 0:
        return Separation(a.mean != b.mean, math.inf if a.mean != b.mean else 0.0)
    t = abs(a.mean - b.mean) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va**2 / (a.n - 1) if va else 0) + (vb**2 / (b.n - 1) if vb else 0))
    critical = t_critical(df)
    return Separation(t > critical, t, df, critical)
