"""Per-feature drift statistics over any number of rows, in bounded memory: plain numpy and pandas.

The reference is read twice and the current window once, chunk by chunk. What each column keeps:

- **numeric**: count, mean and variance (Chan's parallel update), min, max; the exact counts of its values while
  it has at most ``exact_values`` distinct ones; and a histogram on edges taken from the reference: the
  reference's distinct values when they are few, else ``bins`` quantiles of a uniform sample of the reference
  plus its exact min and max. For every edge the histogram counts the values equal to it, and for every interval
  between edges the values inside and their sum. Both CDFs are then known exactly at each edge (from the left
  and at the edge), and the integral of each CDF over each interval is exact too (from the sums).
- **categorical**: the exact count of every category (at most ``max_categories``).

From that, per test (Evidently 0.7's formulas, ``evidently/legacy/calculations/stattests``):

- **chisquare, z, jensenshannon, psi, kl on categories** (and on numeric columns with few distinct values):
  exact, from exact counts.
- **ks**: the K-S statistic D is the largest CDF gap. Between two edges where only one side has values inside,
  the gap is monotone, so its extremes are at the edges: D is exact whenever the edges are the reference's own
  values (every reference of at most ``exact_values`` distinct values, hence every reference of <= 1000 rows,
  where Evidently picks K-S). Otherwise, inside an interval where both sides have values, the gap lies within
  ``[A(e_k) - C(e_k+1^-), A(e_k+1^-) - C(e_k)]``; so the exact D lies in ``[D_lo, D_hi]`` with ``D_lo`` the
  largest gap at the edges and ``D_hi`` the largest of those interval bounds. The p-value is scipy's ks_2samp's
  (exact or asymptotic by its rule) at the middle of the interval, and ``score_bounds`` holds the p-values at
  both ends.
- **wasserstein** (normed by the reference's population standard deviation, at least 0.001, as Evidently):
  W1 is the integral of ``|F_ref - F_cur|``. Over each interval the integral of the difference is exact (from
  the sums); where the difference cannot change sign (its bounds above have one sign) that is exactly the
  integral of its absolute value. In the other intervals the absolute integral exceeds it by at most
  ``2 * width * min(hi, -lo)``. The out-of-range tails are exact. So the exact W1 lies in
  ``[W_lo, W_lo + sum of those terms]``: ``score_bounds``; the score is the middle.
- **psi** and **jensenshannon** on numeric columns with more than 20 distinct reference values: on ``psi_bins``
  reference-quantile bins plus one bin below the reference's min and one above its max (Evidently bins the
  pooled data by Sturges' rule instead, which needs the current window's range before counting: a second pass).
- **kl**: the reference document's histogram KL divergence: ``kl_bins`` equal-width bins over the reference's
  range (current values outside it counted in the end bins), densities + 1e-10, ``scipy.stats.entropy(ref,
  cur)``; drift above 0.5. (The document bins each side on its own range, which compares unaligned bins.)

Tests are chosen per column as Evidently's ``_get_default_stattest`` does: reference (non-empty) rows <= 1000:
numeric with more than 5 distinct values (reference and current together) K-S, else chi-square (3-5 values) or
Z-test (<= 2); categorical chi-square, or Z-test when binary. Above 1000 rows: numeric Wasserstein, or
Jensen-Shannon with <= 5 distinct values; categorical Jensen-Shannon. Thresholds: 0.05 (p-values; K-S drifts
at p <= 0.05, chi-square and Z at p < 0.05), 0.1 (distances, drift at >=).

The parts, by job: ``columns`` (tests, thresholds, options, the bounded per-column state), ``profiles`` (the
reference profile, the current window, ``assess``), ``column_tests`` (choosing and running each test); this module
is the one-call entry, ``compute_drift``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pandas as pd

from kfops.components.contracts.monitoring import DriftResult
from kfops.components.monitor.columns import DriftOptions
from kfops.components.monitor.profiles import WindowAccumulator, profile_reference


def compute_drift(
    reference: pd.DataFrame | Callable[[], Iterable[pd.DataFrame]],
    current: pd.DataFrame | Iterable[pd.DataFrame],
    options: DriftOptions | None = None,
    features: Sequence[str] | None = None,
    kinds: dict[str, str] | None = None,
    ignore: Sequence[str] = (),
    chunk_rows: int = 131_072,
    target: str = "",
) -> DriftResult:
    """Drift of ``current`` against ``reference``: tables in memory, or chunk iterators (the reference as a
    function returning a fresh iterator, since it is read twice)."""
    from kfops.components.monitor.sources import frame_chunks

    options = options or DriftOptions()
    ref_chunks = (lambda: frame_chunks(reference, chunk_rows)) if isinstance(reference, pd.DataFrame) else reference
    profile = profile_reference(
        ref_chunks,
        options,
        features=features,
        kinds=kinds,
        ignore=ignore,
        need_kl=options.stattest == "kl",
        target=target,
    )
    window = WindowAccumulator(profile, options)
    for chunk in frame_chunks(current, chunk_rows) if isinstance(current, pd.DataFrame) else current:
        window.add(chunk)
    return window.result()
