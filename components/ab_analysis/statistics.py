"""The tests an A/B analysis runs: Welch's t-test for a continuous metric, the two-proportion z-test for a
conversion, Cohen's h, and the sample sizes and minimum detectable effects they imply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# ------------------------------------------------------------------------------------------------- statistics
@dataclass
class TestResult:
    """A two-sided test of treatment minus control."""

    test: str
    difference: float
    statistic: float
    p_value: float
    ci_low: float
    ci_high: float
    df: float | None  # degrees of freedom (Welch); None for the z-test
    effect_size: float
    effect_size_name: str


def _z(p: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(p))


def welch_test(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> TestResult:
    """Welch's t-test of ``mean(treatment) - mean(control)`` (each needs 2+ values, not both constant)."""
    from scipy import stats

    a, b = np.asarray(control, dtype=float), np.asarray(treatment, dtype=float)
    n1, n2 = len(a), len(b)
    m1, m2 = float(a.mean()), float(b.mean())
    v1, v2 = float(a.var(ddof=1)), float(b.var(ddof=1))
    se1, se2 = v1 / n1, v2 / n2
    se = math.sqrt(se1 + se2)
    diff = m2 - m1
    df = (se1 + se2) ** 2 / (se1**2 / (n1 - 1) + se2**2 / (n2 - 1))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    margin = float(stats.t.ppf(1 - alpha / 2, df)) * se
    pooled = math.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
    d = diff / pooled if pooled > 0 else math.copysign(math.inf, diff) if diff else 0.0
    return TestResult("Welch's t-test", diff, t, p, diff - margin, diff + margin, df, d, "Cohen's d")


def cohens_h(p_control: float, p_treatment: float) -> float:
    return 2 * math.asin(math.sqrt(p_treatment)) - 2 * math.asin(math.sqrt(p_control))


def two_proportion_test(
    successes_control: int, n_control: int, successes_treatment: int, n_treatment: int, alpha: float = 0.05
) -> TestResult:
    """Two-proportion z-test of ``rate(treatment) - rate(control)``: pooled standard error for the statistic,
    unpooled (Wald) for the confidence interval."""
    from scipy import stats

    x1, n1, x2, n2 = successes_control, n_control, successes_treatment, n_treatment
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    diff = p2 - p1
    z = diff / se_pooled
    p = float(2 * stats.norm.sf(abs(z)))
    margin = _z(1 - alpha / 2) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return TestResult(
        "two-proportion z-test", diff, z, p, diff - margin, diff + margin, None, cohens_h(p1, p2), "Cohen's h"
    )


def required_n_continuous(effect: float, sd_control: float, sd_treatment: float, alpha: float, power: float) -> float:
    """Sample per variant (equal allocation) for a two-sided test to detect a mean difference ``effect``."""
    if effect == 0:
        return math.inf
    return (_z(1 - alpha / 2) + _z(power)) ** 2 * (sd_control**2 + sd_treatment**2) / effect**2


def required_n_conversion(p_control: float, effect: float, alpha: float, power: float) -> float:
    """Sample per variant to detect a rate change ``effect`` from ``p_control`` (Cohen's h, equal allocation)."""
    target = p_control + effect
    if effect == 0 or not 0.0 <= target <= 1.0:
        return math.inf if effect == 0 else math.nan
    h = cohens_h(p_control, target)
    return 2 * ((_z(1 - alpha / 2) + _z(power)) / h) ** 2


def mde_continuous(n1: int, n2: int, sd_control: float, sd_treatment: float, alpha: float, power: float) -> float:
    """The smallest mean difference a two-sided test detects with ``power`` at these sample sizes."""
    return (_z(1 - alpha / 2) + _z(power)) * math.sqrt(sd_control**2 / n1 + sd_treatment**2 / n2)


def mde_conversion(n1: int, n2: int, p_control: float, alpha: float, power: float) -> float:
    """The smallest rate increase from ``p_control`` detectable with ``power`` (via Cohen's h)."""
    h = (_z(1 - alpha / 2) + _z(power)) * math.sqrt(1 / n1 + 1 / n2)
    angle = min(math.asin(math.sqrt(p_control)) + h / 2, math.pi / 2)
    return math.sin(angle) ** 2 - p_control
