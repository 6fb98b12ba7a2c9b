"""Preprocess: fit the feature transform on the training split only, and apply it to any frame.

Numeric columns: impute with the training median, standardise with training mean and std, and add a
missing-value indicator where training saw missing values. Categorical columns: a frequency-ordered
vocabulary (capped, rare values folded away) one-hot encoded, plus one unknown bucket for values never seen in
training. The fitted transform is a FeatureSpec (JSON) that the model carries and serving reuses, so training
and serving transform rows with the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kfops.components.contracts import ColumnSpec, FeatureSpec, KfopsError

DEFAULT_MAX_CATEGORIES = 50
DEFAULT_MIN_FREQUENCY = 5


def fit_feature_spec(
    train: pd.DataFrame,
    target: str,
    numeric: list[str],
    categorical: list[str],
    positive_class: str,
    negative_class: str,
    dropped: list[str] | None = None,
    data_sha256: str = "",
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    min_frequency: int = DEFAULT_MIN_FREQUENCY,
) -> FeatureSpec:
    """Fit the transform's statistics and vocabularies on the training split."""
    if train.empty:
        raise KfopsError("preprocess: the training split is empty")
    absent = [c for c in [target, *numeric, *categorical] if c not in train.columns]
    if absent:
        raise KfopsError(
            f"preprocess: column(s) {absent} are not in the training split; it has {', '.join(map(str, train.columns))}"
        )
    columns: list[ColumnSpec] = []
    for name in numeric:
        values = pd.to_numeric(train[name], errors="coerce").astype(np.float64)
        present = values.dropna()
        if present.empty:
            raise KfopsError(f"preprocess: numeric column '{name}' is empty in the training split")
        std = float(present.std(ddof=0))
        missing = float(values.isna().mean())
        columns.append(
            ColumnSpec(
                name=name,
                kind="numeric",
                mean=float(present.mean()),
                std=std if std > 1e-12 else 1.0,
                median=float(present.median()),
                min=float(present.min()),
                max=float(present.max()),
                missing_fraction=missing,
                add_missing_indicator=missing > 0.0,
            )
        )
    for name in categorical:
        values = train[name]
        counts = values.dropna().astype(str).value_counts()
        # Sort by count then value so the vocabulary order is deterministic.
        counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
        kept = counts[counts >= min_frequency].head(max_categories)
        if kept.empty:
            kept = counts.head(max_categories)
        total = float(len(values))
        columns.append(
            ColumnSpec(
                name=name,
                kind="categorical",
                vocabulary=[str(v) for v in kept.index],
                frequencies=[float(c) / total for c in kept.to_numpy()],
                missing_fraction=float(values.isna().mean()),
            )
        )
    labels = train[target].astype(str)
    return FeatureSpec(
        target=target,
        positive_class=positive_class,
        negative_class=negative_class,
        columns=columns,
        dropped_columns=list(dropped or []),
        data_sha256=data_sha256,
        train_rows=len(train),
        positive_rate=float((labels == positive_class).mean()),
    )


# Below this many rows a dict lookup per value beats building a pandas Categorical (serving's small batches).
SMALL_BATCH_ROWS = 512


def category_codes(raw: pd.Series | Sequence, vocabulary: list[str]) -> np.ndarray:
    """Each value's index in the vocabulary, compared as text; missing or unseen values get len(vocabulary), the
    unknown bucket. ``raw`` is a Series or a plain sequence of values."""
    unknown = len(vocabulary)
    if len(raw) < SMALL_BATCH_ROWS:
        index = {v: i for i, v in enumerate(vocabulary)}
        codes = np.empty(len(raw), dtype=np.int64)
        for i, v in enumerate(raw.tolist() if isinstance(raw, pd.Series) else raw):
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                codes[i] = unknown
            else:
                codes[i] = index.get(v if isinstance(v, str) else str(v), unknown)
        return codes
    if not isinstance(raw, pd.Series):
        raw = pd.Series(raw, dtype=object)
    codes = pd.Categorical(raw.astype("string"), categories=vocabulary).codes
    return np.where(codes < 0, unknown, codes)


def _fill_numeric(out: np.ndarray, at: int, col: ColumnSpec, values: np.ndarray) -> None:
    """Scaled values (the median for missing) into column ``at``, the missing indicator beside it."""
    is_missing = np.isnan(values)
    out[:, at] = (np.where(is_missing, col.median, values) - col.mean) / col.std
    if col.add_missing_indicator:
        out[:, at + 1] = is_missing


def _fill_categorical(out: np.ndarray, at: int, col: ColumnSpec, raw) -> None:
    codes = category_codes(raw, col.vocabulary)
    out[np.arange(len(codes)), at + codes] = 1.0


def transform_features(spec: FeatureSpec, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
    """Turn raw feature rows into the model's float32 matrix. Missing feature columns are an error."""
    missing = [c.name for c in spec.columns if c.name not in frame.columns]
    if missing:
        raise KfopsError(f"{source}: missing feature column(s) {missing}; the model expects {spec.feature_names}")
    n = len(frame)
    out = np.zeros((n, spec.input_width), dtype=np.float32)
    at = 0
    for col in spec.columns:
        raw = frame[col.name]
        if col.kind == "numeric":
            values = (
                raw.to_numpy(dtype=np.float64, na_value=np.nan)
                if pd.api.types.is_numeric_dtype(raw)
                else pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
            )
            if not pd.api.types.is_numeric_dtype(raw):
                bad = raw.notna().to_numpy() & np.isnan(values)
                if bad.any():
                    first = int(np.flatnonzero(bad)[0])
                    raise KfopsError(
                        f"{source}: column '{col.name}' must be numeric; row {first} has {raw.iloc[first]!r}"
                    )
            _fill_numeric(out, at, col, values)
        else:
            _fill_categorical(out, at, col, raw)
        at += col.width
    return out


def transform_columns(spec: FeatureSpec, columns: Mapping[str, Sequence], rows: int) -> np.ndarray:
    """``transform_features`` for already-validated columns, with no DataFrame: numeric features as float
    sequences (NaN for missing), categorical ones as str or None. The same matrix, for serving's small batches,
    where building a frame costs more than the model."""
    out = np.zeros((rows, spec.input_width), dtype=np.float32)
    at = 0
    for col in spec.columns:
        if col.kind == "numeric":
            _fill_numeric(out, at, col, np.asarray(columns[col.name], dtype=np.float64))
        else:
            _fill_categorical(out, at, col, columns[col.name])
        at += col.width
    return out


def model_input_frame(spec: FeatureSpec, frame: pd.DataFrame, source: str = "input") -> pd.DataFrame:
    """The feature columns typed as the model's signature declares them: numeric as float64, categorical as
    str (missing as None). MLflow refuses to widen int64 to float64 by itself."""
    missing = [c.name for c in spec.columns if c.name not in frame.columns]
    if missing:
        raise KfopsError(f"{source}: missing feature column(s) {missing}; the model expects {spec.feature_names}")
    out = {}
    for col in spec.columns:
        raw = frame[col.name]
        if col.kind == "numeric":
            values = pd.to_numeric(raw, errors="coerce")
            bad = raw.notna() & values.isna()
            if bad.any():
                first = bad.idxmax()
                raise KfopsError(f"{source}: column '{col.name}' must be numeric; row {first} has {raw[first]!r}")
            out[col.name] = values.astype("float64")
        else:
            out[col.name] = raw.astype("string").astype(object).where(raw.notna(), None)
    return pd.DataFrame(out, index=frame.index)


def encode_labels(spec: FeatureSpec, labels: pd.Series, source: str = "input") -> np.ndarray:
    """1 for the positive class, 0 for the negative; unknown labels are an error."""
    text = labels.astype(str)
    unknown = ~text.isin([spec.positive_class, spec.negative_class])
    if unknown.any():
        raise KfopsError(
            f"{source}: target '{spec.target}' has value(s) {sorted(text[unknown].unique())[:5]} "
            f"besides {spec.negative_class!r} and {spec.positive_class!r}"
        )
    return (text == spec.positive_class).to_numpy(dtype=np.float32)


def save_matrix(path: str, features: np.ndarray, labels: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, features=features, labels=labels)


def load_matrix(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["features"], data["labels"]
