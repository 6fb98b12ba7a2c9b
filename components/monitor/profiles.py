"""Drift's two sides: the reference profile (one pass over the training snapshot, columns and their kinds) and
the current window accumulated chunk by chunk in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kfops.components import roles
from kfops.components.contracts import KfopsError
from kfops.components.contracts.monitoring import (
    STATUS_INSUFFICIENT,
    STATUS_OK,
    VERDICT_DRIFT,
    VERDICT_INSUFFICIENT,
    VERDICT_NO_DRIFT,
    DriftResult,
)
from kfops.components.monitor.column_tests import test_column
from kfops.components.monitor.columns import (
    BINNED_AS_VALUES,
    KINDS,
    META_COLUMNS,
    PREDICTION_COLUMNS,
    DriftOptions,
    _all_values,
    _Categories,
    _ExactValues,
    _Histogram,
    _Moments,
    canonical,
    numeric_values,
    prediction_kind,
)


# ------------------------------------------------------------------------------------------------ columns
@dataclass
class ReferenceColumn:
    """What the reference says about one column after both passes."""

    name: str
    kind: str
    moments: _Moments = field(default_factory=_Moments)
    exact: _ExactValues | None = None
    categories: _Categories | None = None
    missing: int = 0
    edges: np.ndarray | None = None
    psi_edges: np.ndarray | None = None
    kl_edges: np.ndarray | None = None
    histogram: _Histogram | None = None
    sample: list[np.ndarray] = field(default_factory=list)
    integer: bool = False  # integer dtype in the reference (Evidently: <= 10 distinct integers are categories)

    @property
    def n(self) -> int:
        return self.moments.n if self.kind == "numeric" else self.categories.n

    @property
    def distinct(self) -> int | None:
        """Distinct non-empty values, or None when more than are counted."""
        if self.kind == "numeric":
            return int(self.exact.keys.size) if self.exact.alive else None
        return len(self.categories.counts) if self.categories.alive else None


@dataclass
class ReferenceProfile:
    columns: dict[str, ReferenceColumn]
    all_columns: list[str]  # every column the reference has
    rows: int
    skipped: dict[str, str] = field(default_factory=dict)  # features that cannot be tested: why
    left_out: dict[str, str] = field(default_factory=dict)  # columns that are no features: why

    @property
    def features(self) -> list[str]:
        return [c for c in self.columns if c not in PREDICTION_COLUMNS]


def infer_kind(series: pd.Series) -> str | None:
    """A column's kind as Evidently 0.7 infers it (``evidently.core.datasets.infer_column_type``), decided on
    one chunk: floats numeric; integers categorical with at most 10 distinct values (re-checked on all rows
    later), else numeric; booleans and text categorical (text with more distinct values than half its
    non-empty rows is free text or an id: None); timestamps and anything else: None."""
    if pd.api.types.is_bool_dtype(series):
        return "categorical"
    if pd.api.types.is_float_dtype(series) or pd.api.types.is_integer_dtype(series):
        return "numeric"
    if isinstance(series.dtype, pd.CategoricalDtype):
        return "categorical"
    if pd.api.types.is_datetime64_any_dtype(series):
        return None
    present = series.dropna()
    if not present.size:
        return "pending"
    first, last = present.iloc[0], present.iloc[-1]
    if isinstance(first, str) and isinstance(last, str):
        return None if present.nunique() > 0.5 * present.size else "categorical"
    if isinstance(first, bool) and isinstance(last, bool):
        return "categorical"
    if isinstance(first, int | float) and isinstance(last, int | float):
        return "numeric"
    return None


def profile_reference(
    chunks: Callable[[], Iterable[pd.DataFrame]],
    options: DriftOptions,
    features: Sequence[str] | None = None,
    kinds: dict[str, str] | None = None,
    ignore: Sequence[str] = (),
    need_kl: bool = False,
    target: str = "",
) -> ReferenceProfile:
    """Two passes over the reference (``chunks()`` is called twice): statistics, exact counts and a sample;
    then the histogram on the edges the first pass placed.

    ``features``: the columns to test (None: every column but ``ignore``, the payload-log metadata and those that
    are no features by training's rule, decided on the first chunk: ``target``, timestamps and ids, see
    components/roles.py). ``kinds``: a kind per column where known (a model's feature spec); the rest are inferred
    as Evidently does. Prediction columns are profiled when present. ``left_out`` names every other column of the
    reference and why."""
    options.check()
    kinds = dict(kinds or {})
    for name, kind in kinds.items():
        if kind not in KINDS:
            raise KfopsError(f"column '{name}': kind must be numeric or categorical, got {kind!r}")
    ignored = set(ignore) | set(META_COLUMNS)
    rng = np.random.default_rng(options.seed)
    columns: dict[str, ReferenceColumn] = {}
    skipped: dict[str, str] = {}
    pending: set[str] = set()
    all_columns: list[str] = []
    left_out: dict[str, str] = {}
    rows = 0
    sample_keys = np.empty(0)

    def make(name: str, kind: str, series: pd.Series | None = None) -> ReferenceColumn:
        col = ReferenceColumn(name=name, kind=kind)
        if kind == "numeric":
            col.exact = _ExactValues(options.exact_values)
            col.integer = series is not None and pd.api.types.is_integer_dtype(series)
            col.sample = [np.full(sample_keys.size, np.nan)]  # aligned with the rows sampled so far
        else:
            col.categories = _Categories(options.max_categories)
        return col

    for chunk in chunks():
        new_columns = [str(c) for c in chunk.columns if str(c) not in all_columns]
        if all_columns:
            all_columns += new_columns  # a later file's columns (features were chosen on the first chunk)
        else:
            all_columns = new_columns
            if features is None:
                if target and target not in all_columns:
                    raise KfopsError(
                        f"target column '{target}' is not in the reference; its columns: {', '.join(all_columns)}"
                    )
                left_out = {c: "ignored" for c in all_columns if c in set(ignore)}
                left_out |= roles.not_features(chunk, target=target, skip=ignored | set(PREDICTION_COLUMNS))
                wanted = [c for c in all_columns if c not in ignored and c not in left_out]
            else:
                wanted = list(features)
            for name in [*wanted, *(p for p in PREDICTION_COLUMNS if p in all_columns and p not in wanted)]:
                if name not in all_columns:
                    continue  # named in the result as missing from the reference
                kind = prediction_kind(name, chunk[name]) or kinds.get(name) or infer_kind(chunk[name])
                if kind == "pending":
                    pending.add(name)
                elif kind is None:
                    skipped[name] = _skip_reason(chunk[name])
                else:
                    columns[name] = make(name, kind, chunk[name])
        for name in list(pending):
            if name in chunk.columns:
                kind = infer_kind(chunk[name])
                if kind not in ("pending", None):
                    pending.discard(name)
                    columns[name] = make(name, kind, chunk[name])
                    columns[name].missing = rows  # the rows before were all empty
                elif kind is None:
                    pending.discard(name)
                    skipped[name] = _skip_reason(chunk[name])
        n = len(chunk)
        # A uniform sample of rows (bottom-k by random key) for the histogram edges of numeric columns.
        keys = rng.random(n)
        keep = None
        if sample_keys.size + n > options.sample_rows:
            cutoff = np.partition(np.concatenate([sample_keys, keys]), options.sample_rows - 1)[options.sample_rows - 1]
            keep = keys <= cutoff
        for name, col in columns.items():
            series = chunk[name] if name in chunk.columns else pd.Series(np.nan, index=chunk.index)
            if col.kind == "categorical":
                col.categories.add(series)
                continue
            values = _all_values(series)
            finite_mask = np.isfinite(values)
            finite = values if finite_mask.all() else values[finite_mask]
            col.missing += int(values.size - finite.size)
            ordered = np.sort(finite)
            col.moments.add(ordered)
            col.exact.add(ordered)
            col.sample.append(values.copy() if keep is None else values[keep])
        sample_keys = np.concatenate([sample_keys, keys if keep is None else keys[keep]])
        if sample_keys.size > options.sample_rows:
            order = np.argpartition(sample_keys, options.sample_rows - 1)[: options.sample_rows]
            sample_keys = sample_keys[order]
            for col in columns.values():
                if col.kind == "numeric":
                    col.sample = [np.concatenate(col.sample)[order]]
        rows += n
    for name in pending:
        skipped[name] = "empty in every reference row"
    if features is not None:
        left_out = left_out_of(all_columns, features, {target: roles.TARGET} if target else {})
        for name in features:
            if name not in all_columns and name not in skipped:
                skipped[name] = "not in the reference"

    # Integer columns with at most 10 distinct values are categories (Evidently's INTEGER_CARDINALITY_LIMIT).
    for name, col in list(columns.items()):
        if col.kind == "numeric" and name not in kinds and name not in PREDICTION_COLUMNS and col.exact.alive:
            keys = col.exact.keys
            if col.integer and 0 < keys.size <= 10:
                cat = make(name, "categorical")
                cat.categories.counts = {canonical(int(k)): int(c) for k, c in zip(keys, col.exact.counts, strict=True)}
                cat.categories.n, cat.categories.missing = col.moments.n, col.missing
                columns[name] = cat
        if col.kind == "categorical" and not col.categories.alive:
            skipped[name] = f"more than {options.max_categories:,} distinct values: an id or free text"
            del columns[name]
    for col in columns.values():
        if col.kind == "numeric":
            _place_edges(col, options, need_kl)

    # Second pass: the reference's own histogram on those edges.
    numeric = [c for c in columns.values() if c.kind == "numeric" and c.n]
    if numeric:
        for chunk in chunks():
            for col in numeric:
                if col.name in chunk.columns:
                    values, _ = numeric_values(chunk[col.name])
                    col.histogram.add(np.sort(values))
    return ReferenceProfile(columns=columns, all_columns=all_columns, rows=rows, skipped=skipped, left_out=left_out)


def left_out_of(
    columns: Iterable[str], features: Sequence[str], why: dict[str, str], default: str = "not among the features"
) -> dict[str, str]:
    """The reference's columns that are not among the ``features`` given (nor the payload log's or the
    predictions), each with ``why`` it is left out, else ``default``."""
    chosen = set(features) | set(META_COLUMNS) | set(PREDICTION_COLUMNS)
    return {c: why.get(c, default) for c in columns if c not in chosen}


def _skip_reason(series: pd.Series) -> str:
    if pd.api.types.is_datetime64_any_dtype(series):
        return "timestamps are not tested for drift"
    present = series.dropna()
    if present.size and isinstance(present.iloc[0], str):
        return "free text or an id: more distinct values than half its rows"
    return f"values of type {type(present.iloc[0]).__name__ if present.size else series.dtype} are not tested"


def _place_edges(col: ReferenceColumn, options: DriftOptions, need_kl: bool) -> None:
    if not col.n:
        col.edges = np.empty(0)
        col.histogram = _Histogram(col.edges, None)
        return
    lo, hi = col.moments.min, col.moments.max
    if col.exact.alive:
        col.edges = col.exact.keys
        col.psi_edges = col.exact.keys
        if col.exact.keys.size > BINNED_AS_VALUES:
            cumulative = np.cumsum(col.exact.counts) / col.n
            targets = np.arange(1, options.psi_bins) / options.psi_bins
            inner = col.exact.keys[np.searchsorted(cumulative, targets, side="left")]
            col.psi_edges = np.unique(np.concatenate([[lo], inner, [hi]]))
    else:
        sample = np.concatenate(col.sample) if col.sample else np.empty(0)
        sample = sample[np.isfinite(sample)]
        # Inverted-CDF quantiles (each one a sampled value: the smallest with F >= i / bins), as the exact
        # branch above takes them.
        ordered = np.sort(sample)
        index = np.clip(-(-ordered.size * np.arange(options.bins + 1) // options.bins) - 1, 0, None)
        quantiles = ordered[index] if ordered.size else np.empty(0)
        # Quantiles put equal reference mass in each interval; evenly spaced edges as well keep the intervals
        # of long tails narrow (the Wasserstein bound grows with interval width).
        even = np.linspace(lo, hi, options.bins + 1)
        col.edges = np.unique(np.concatenate([[lo], np.clip(quantiles, lo, hi), even, [hi]]))
        step = options.bins // options.psi_bins
        col.psi_edges = np.unique(np.concatenate([[lo], np.clip(quantiles[::step], lo, hi), [hi]]))
    col.sample = []
    col.kl_edges = np.linspace(lo, hi, options.kl_bins + 1) if need_kl and hi > lo else None
    if need_kl and hi == lo:
        col.kl_edges = np.array([lo, lo + 1.0])  # one bin: a constant column
    col.histogram = _Histogram(col.edges, col.kl_edges)


# ------------------------------------------------------------------------------------------------ current
@dataclass
class CurrentColumn:
    name: str
    kind: str
    moments: _Moments = field(default_factory=_Moments)
    histogram: _Histogram | None = None
    exact: _ExactValues | None = None
    categories: _Categories | None = None
    missing: int = 0
    seen: bool = False

    @property
    def n(self) -> int:
        return self.moments.n if self.kind == "numeric" else self.categories.n


class WindowAccumulator:
    """The current window's side: one pass, chunk by chunk, on the reference's edges."""

    def __init__(self, profile: ReferenceProfile, options: DriftOptions) -> None:
        self.profile = profile
        self.options = options
        self.rows = 0
        self.seen_columns: list[str] = []
        self._seen: set[str] = set()
        self.columns: dict[str, CurrentColumn] = {}
        for name, ref in profile.columns.items():
            col = CurrentColumn(name=name, kind=ref.kind)
            if ref.kind == "numeric":
                col.histogram = _Histogram(ref.edges, ref.kl_edges)
                distinct = ref.distinct
                # Exact current counts matter only where the reference has few values (tests on values).
                if distinct is not None and distinct <= BINNED_AS_VALUES:
                    col.exact = _ExactValues(options.exact_values)
            else:
                col.categories = _Categories(options.max_categories)
            self.columns[name] = col

    def add(self, chunk: pd.DataFrame) -> None:
        n = len(chunk)
        if not n:
            return
        self.rows += n
        self.note_columns(chunk.columns)
        for name, col in self.columns.items():
            if name not in chunk.columns:
                col.missing += n
                continue
            col.seen = True
            series = chunk[name]
            if col.kind == "categorical":
                col.categories.add(series)
                col.missing = col.categories.missing
                continue
            values, empty = numeric_values(series)
            col.missing += empty
            ordered = np.sort(values)
            col.moments.add(ordered)
            col.histogram.add(ordered)
            if col.exact is not None:
                col.exact.add(ordered)

    def note_columns(self, names: Iterable[Any]) -> None:
        """Columns the window has (a Parquet file's schema names them all, even those not read)."""
        for name in names:
            if str(name) not in self._seen:
                self._seen.add(str(name))
                self.seen_columns.append(str(name))
        for name, col in self.columns.items():
            col.seen = col.seen or name in self._seen

    def result(self, reference: str = "", current: str = "") -> DriftResult:
        return assess(self.profile, self, self.options, reference=reference, current=current)


def assess(
    profile: ReferenceProfile,
    window: WindowAccumulator,
    options: DriftOptions,
    reference: str = "",
    current: str = "",
) -> DriftResult:
    """Per-feature verdicts, prediction drift, and the dataset's: the share of drifted features among those
    tested, drift when it reaches ``options.drift_share``, insufficient_data when no feature could be tested."""
    features, predictions, messages = [], [], []
    missing = [name for name, col in window.columns.items() if not col.seen and name not in PREDICTION_COLUMNS]
    skipped = dict(profile.skipped)
    for name, ref in profile.columns.items():
        cur = window.columns[name]
        if name in PREDICTION_COLUMNS:
            if cur.seen:
                predictions.append(test_column(ref, cur, options))
            continue
        if not cur.seen:
            continue
        features.append(test_column(ref, cur, options))
    known = set(profile.all_columns) | set(META_COLUMNS) | set(PREDICTION_COLUMNS)
    extra = [c for c in window.seen_columns if c not in known]
    for name in PREDICTION_COLUMNS:
        if name in window.seen_columns and name not in profile.columns:
            skipped.setdefault(name, "prediction drift needs the reference's predictions too")
    tested = [f for f in features if f.status == STATUS_OK]
    drifted = [f for f in tested if f.drift_detected]
    share = len(drifted) / len(tested) if tested else 0.0
    if not window.rows:
        messages.append("the current window is empty: no rows to compare")
    elif not profile.rows:
        messages.append("the reference is empty: no rows to compare with")
    elif not tested:
        if not features:
            messages.append("no feature of the reference is in the current window")
        else:
            messages.append(f"too little data: no feature has {options.min_rows} non-empty values on both sides")
    insufficient = [f for f in features if f.status == STATUS_INSUFFICIENT]
    if insufficient and tested:
        messages.append(
            f"{len(insufficient)} feature(s) not tested for too little data: " + ", ".join(f.name for f in insufficient)
        )
    if missing:
        messages.append("features missing from the current window: " + ", ".join(missing))
    uncertain = [f.name for f in [*features, *predictions] if not f.exact]
    if uncertain:
        messages.append(
            "the streaming bound of " + ", ".join(uncertain) + " straddles the threshold: the decision is the "
            "midpoint's (raise bins for a tighter bound)"
        )
    verdict = (
        VERDICT_INSUFFICIENT if not tested else (VERDICT_DRIFT if share >= options.drift_share else VERDICT_NO_DRIFT)
    )
    return DriftResult(
        verdict=verdict,
        dataset_drift=verdict == VERDICT_DRIFT,
        drift_share=share,
        drift_share_threshold=options.drift_share,
        tested_features=len(tested),
        drifted_features=len(drifted),
        features=features,
        prediction_drift=predictions,
        missing_columns=missing,
        extra_columns=extra,
        skipped_columns=skipped,
        left_out=dict(profile.left_out),
        reference=reference,
        current=current,
        reference_rows=profile.rows,
        current_rows=window.rows,
        stattest=options.stattest,
        messages=messages,
    )
