"""Drift's per-column tests on the summarised state: which test applies (as Evidently would choose), and the
statistic, p-value or distance with its bounds (K-S, chi-square, Z, Wasserstein, Jensen-Shannon, PSI, KL).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from kfops.components.contracts.monitoring import STATUS_INSUFFICIENT, FeatureDrift
from kfops.components.monitor.columns import (
    DEFAULT_THRESHOLDS,
    FEW_VALUES,
    KS_EXACT_MAX_N,
    SMALL_REFERENCE_ROWS,
    TEST_LABELS,
    TESTS_FOR_KIND,
    DriftOptions,
    _fill_zeroes,
    _Histogram,
)

if TYPE_CHECKING:  # the column types, for annotations only (profiles imports this module)
    from kfops.components.monitor.profiles import CurrentColumn, ReferenceColumn


def ks_pvalue(d: float, n1: int, n2: int) -> float:
    """The two-sided p-value scipy's ks_2samp(method="auto") gives for statistic ``d`` and sample sizes n1, n2:
    exact when both are at most 10,000 (falling back to asymptotic as scipy does), else Smirnov's asymptotic.

    The exact value depends on ``d``, n1 and n2 alone, and scipy computes it only through ks_2samp: two samples of
    those sizes whose statistic is ``d`` (on the lattice scipy rounds it to, multiples of 1/lcm(n1, n2)) give it.
    """
    from scipy.stats import distributions, ks_2samp

    if max(n1, n2) <= KS_EXACT_MAX_N:
        samples = _samples_with_statistic(d, n1, n2)
        if samples is not None:
            # where the exact count overflows scipy falls back to the asymptotic value with a warning: expected
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return float(np.clip(ks_2samp(*samples, method="auto").pvalue, 0.0, 1.0))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    return float(np.clip(distributions.kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))


def _samples_with_statistic(d: float, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Samples of sizes n1 and n2 whose KS statistic is ``d`` rounded to the nearest multiple of 1/lcm(n1, n2): i
    zeros among n1 and j among n2 with i/n1 - j/n2 = h/lcm, the rest ones in both."""
    g = math.gcd(n1, n2)
    a, b = n1 // g, n2 // g  # i/n1 - j/n2 = (i*b - j*a) / lcm
    h = round(min(max(d, 0.0), 1.0) * a * n2)
    i = np.arange(n1 + 1, dtype=np.int64)
    num = i * b - h
    fits = (num >= 0) & (num % a == 0) & (num // a <= n2)
    if not fits.any():
        return None
    zeros_1 = int(i[fits][0])
    zeros_2 = int(num[fits][0] // a)
    x = np.concatenate([np.zeros(zeros_1), np.ones(n1 - zeros_1)])
    y = np.concatenate([np.zeros(zeros_2), np.ones(n2 - zeros_2)])
    return x, y


def is_drift(test: str, score: float, threshold: float) -> bool:
    """Evidently's comparison for each test (``kl`` as the reference document: above the threshold)."""
    if test == "ks":
        return bool(score <= threshold)
    if test in ("chisquare", "z"):
        return bool(score < threshold)
    if test == "kl":
        return bool(score > threshold)
    return bool(score >= threshold)


# ------------------------------------------------------------------------------------------------ tests
def choose_test(ref: ReferenceColumn, cur: CurrentColumn, options: DriftOptions) -> tuple[str, str]:
    """``(test, note)``: Evidently's automatic choice, or the requested test where it applies to the kind."""
    if options.stattest != "auto":
        if options.stattest in TESTS_FOR_KIND[ref.kind]:
            return options.stattest, ""
        note = f"{options.stattest} does not apply to {ref.kind} columns: the automatic choice is used"
    else:
        note = ""
    values = _distinct_together(ref, cur)
    few = values is not None and values <= FEW_VALUES
    if ref.n <= SMALL_REFERENCE_ROWS:
        if ref.kind == "numeric" and not few:
            return "ks", note
        return ("chisquare" if values is None or values > 2 else "z"), note
    if ref.kind == "numeric" and not few:
        return "wasserstein", note
    return "jensenshannon", note


def _distinct_together(ref: ReferenceColumn, cur: CurrentColumn) -> int | None:
    if ref.kind == "categorical":
        if not (ref.categories.alive and cur.categories.alive):
            return None
        return len(set(ref.categories.counts) | set(cur.categories.counts))
    if not ref.exact.alive or cur.exact is None or not cur.exact.alive:
        return None
    return int(np.union1d(ref.exact.keys, cur.exact.keys).size)


def _value_counts(ref: ReferenceColumn, cur: CurrentColumn) -> tuple[np.ndarray, np.ndarray] | None:
    """Counts per value over the union of both sides' values (None when not counted exactly)."""
    if ref.kind == "categorical":
        keys = sorted(set(ref.categories.counts) | set(cur.categories.counts))
        r = np.array([ref.categories.counts.get(k, 0) for k in keys], dtype=np.float64)
        c = np.array([cur.categories.counts.get(k, 0) for k in keys], dtype=np.float64)
        return r, c
    if not ref.exact.alive or cur.exact is None or not cur.exact.alive:
        return None
    keys = np.union1d(ref.exact.keys, cur.exact.keys)
    r = np.zeros(keys.size)
    c = np.zeros(keys.size)
    r[np.searchsorted(keys, ref.exact.keys)] = ref.exact.counts
    c[np.searchsorted(keys, cur.exact.keys)] = cur.exact.counts
    return r, c


def _coarse_counts(ref: ReferenceColumn, cur: CurrentColumn) -> tuple[np.ndarray, np.ndarray]:
    """Counts in the reference-quantile bins (below min, [q0, q1), ..., [q_m-1, q_m], above max)."""
    edges = ref.edges
    index = np.searchsorted(edges, ref.psi_edges)  # each coarse edge is one of the edges

    def counts(hist: _Histogram) -> np.ndarray:
        before = np.cumsum(hist.inside)[: hist.k] + np.concatenate([[0], np.cumsum(hist.at)[:-1]])
        at_last = before[index[-1]] + hist.at[index[-1]]
        cuts = before[index]
        # [c0, c1), ..., [c_m-1, c_m]: the last bin holds the reference's max (one bin for a constant column).
        upper = np.concatenate([cuts[1:-1], [at_last]])
        inner = upper - (cuts[:-1] if cuts.size > 1 else cuts[:1])
        return np.concatenate([[cuts[0]], inner, [hist.at.sum() + hist.inside.sum() - at_last]]).astype(np.float64)

    return counts(ref.histogram), counts(cur.histogram)


def _ks(ref: ReferenceColumn, cur: CurrentColumn) -> tuple[float, list[float], float, bool]:
    """``(p-value, [p at D_hi, p at D_lo], D, exact)`` from the histograms."""
    n, m = ref.n, cur.n
    a_before, a_at = ref.histogram.cdf(n)
    c_before, c_at = cur.histogram.cdf(m)
    d_lo = float(max(np.abs(a_before - c_before).max(), np.abs(a_at - c_at).max(), 0.0))
    both = (ref.histogram.inside[1:-1] > 0) & (cur.histogram.inside[1:-1] > 0)
    d_hi = d_lo
    if both.any():
        inner = np.maximum(a_before[1:] - c_at[:-1], c_before[1:] - a_at[:-1])
        d_hi = max(d_lo, float(inner[both].max()))
    if d_hi == d_lo:  # exact: one p-value (scipy's asymptotic one costs O(n))
        p = ks_pvalue(d_lo, n, m)
        return p, [p, p], d_lo, True
    d = (d_lo + d_hi) / 2
    return ks_pvalue(d, n, m), [ks_pvalue(d_hi, n, m), ks_pvalue(d_lo, n, m)], d, False


def _wasserstein(ref: ReferenceColumn, cur: CurrentColumn) -> tuple[float, list[float], bool]:
    """``(normed W1, [low, high], exact)`` from the histograms (see the module docstring)."""
    n, m = ref.n, cur.n
    e = ref.edges
    hr, hc = ref.histogram, cur.histogram
    a_before, a_at = hr.cdf(n)
    c_before, c_at = hc.cdf(m)
    # Tails: no reference value lies below its min or above its max.
    total = -hc.offsets[0] / m + hc.offsets[-1] / m
    extra = estimate = 0.0
    if e.size > 1:
        width = np.diff(e)
        # Over (e_k, e_k+1): F = F(e_k) + (values inside <= x) / n, whose integral adds sum(e_k+1 - v) / n.
        integral_r = width * a_at[:-1] + (hr.inside[1:-1] * width - hr.offsets[1:-1]) / n
        integral_c = width * c_at[:-1] + (hc.inside[1:-1] * width - hc.offsets[1:-1]) / m
        gap = integral_r - integral_c
        low, high = a_at[:-1] - c_before[1:], a_before[1:] - c_at[:-1]
        crossing = (low < 0) & (high > 0)
        total += float(np.abs(gap).sum())
        if crossing.any():
            w, g = width[crossing], np.abs(gap[crossing])
            slack = 2 * w * np.minimum(high[crossing], -low[crossing])
            extra = float(slack.sum())
            # Point estimate: both CDFs straight within the interval (values spread evenly), kept in the bound.
            start = (a_at[:-1] - c_at[:-1])[crossing]
            end = (a_before[1:] - c_before[1:])[crossing]
            with np.errstate(divide="ignore", invalid="ignore"):
                straight = np.where(
                    start * end < 0, w * (start**2 + end**2) / (2 * np.abs(start - end)), w * np.abs(start + end) / 2
                )
            estimate = float((np.clip(np.nan_to_num(straight), g, g + slack) - g).sum())
    norm = max(ref.moments.std, 0.001)
    lo, hi = max(total, 0.0) / norm, (max(total, 0.0) + extra) / norm
    return (max(total, 0.0) + estimate) / norm, [lo, hi], extra == 0.0


def _chisquare(r: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    from scipy.stats import chisquare

    if r.size < 2:
        return 1.0, 0.0
    expected = r * (c.sum() / r.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic, p = chisquare(c, expected)
    return float(p), float(statistic)


def _z(r: np.ndarray, c: np.ndarray) -> float:
    """Evidently's two-proportion Z-test on the first value (in sorted order) against the rest."""
    from scipy.stats import norm

    n1, n2 = r.sum(), c.sum()
    if np.count_nonzero(r) == 1 and np.count_nonzero(c) == 1 and np.argmax(r) == np.argmax(c):
        return 1.0
    p1, p2 = (n1 - r[0]) / n1, (n2 - c[0]) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - norm.cdf(np.abs(z))))


def _jensenshannon(r: np.ndarray, c: np.ndarray) -> float:
    from scipy.spatial import distance

    return float(distance.jensenshannon(r / r.sum(), c / c.sum()))


def _psi(r: np.ndarray, c: np.ndarray) -> float:
    rp, cp = _fill_zeroes(r / r.sum()), _fill_zeroes(c / c.sum())
    return float(np.sum((rp - cp) * np.log(rp / cp)))


def _kl(ref: ReferenceColumn, cur: CurrentColumn, counts: tuple[np.ndarray, np.ndarray] | None) -> float:
    from scipy.stats import entropy

    if ref.kind == "categorical":
        r, c = counts
        rd, cd = r / r.sum(), c / c.sum()
    else:
        width = np.diff(ref.kl_edges)
        rd = ref.histogram.kl_counts / (ref.n * width)
        cd = cur.histogram.kl_counts / (cur.n * width)
    return float(entropy(rd + 1e-10, cd + 1e-10))


def test_column(ref: ReferenceColumn, cur: CurrentColumn, options: DriftOptions) -> FeatureDrift:
    """The drift verdict on one column."""
    test, note = choose_test(ref, cur, options)
    threshold = float(options.threshold if options.threshold is not None else DEFAULT_THRESHOLDS[test])
    item = FeatureDrift(
        name=ref.name,
        kind=ref.kind,
        test=test,
        threshold=threshold,
        score=None,
        drift_detected=False,
        test_label=TEST_LABELS[test],
        reference_rows=ref.n,
        current_rows=cur.n,
        current_missing=cur.missing,
        message=note,
    )
    if ref.kind == "numeric":
        item.reference_summary, item.current_summary = ref.moments.summary(), cur.moments.summary()
    else:
        item.reference_summary, item.current_summary = ref.categories.top(), cur.categories.top()
    short = [
        (side, count) for side, count in (("reference", ref.n), ("current window", cur.n)) if count < options.min_rows
    ]
    if short:
        item.status = STATUS_INSUFFICIENT
        item.message = "; ".join(
            f"the {side} has {count:,} non-empty value(s) of '{ref.name}'; the test needs at least {options.min_rows}"
            for side, count in short
        )
        return item
    if ref.kind == "categorical" and not cur.categories.alive:
        item.drift_detected = True
        item.message = (
            f"more than {options.max_categories:,} distinct values in the current window (the reference has "
            f"{len(ref.categories.counts):,}): not the same feature any more"
        )
        return item
    counts = _value_counts(ref, cur)
    if test == "ks":
        item.score, bounds, item.statistic, _ = _ks(ref, cur)
        item.score_bounds = bounds
    elif test == "wasserstein":
        item.score, bounds, _ = _wasserstein(ref, cur)
        item.score_bounds = bounds
    elif test in ("chisquare", "z", "jensenshannon", "psi") and counts is None:
        r, c = _coarse_counts(ref, cur)  # numeric with many values: reference-quantile bins
        item.score = _jensenshannon(r, c) if test == "jensenshannon" else _psi(r, c)
        item.message = item.message or f"binned on {ref.psi_edges.size - 1} reference-quantile bins and 2 tails"
    elif test == "chisquare":
        item.score, item.statistic = _chisquare(*counts)
    elif test == "z":
        item.score = _z(*counts)
    elif test == "jensenshannon":
        item.score = _jensenshannon(*counts)
    elif test == "psi":
        item.score = _psi(*counts)
    elif test == "kl":
        item.score = _kl(ref, cur, counts)
    item.drift_detected = is_drift(test, item.score, threshold) if item.score == item.score else False
    if item.score_bounds is not None:
        decisions = {is_drift(test, b, threshold) for b in item.score_bounds}
        item.exact = len(decisions) == 1
    return item
