"""The feature transform a FeatureSpec describes, applied: the one validator and encoder for frames and columns.

Training (preprocess, train), evaluation, the model itself (its pyfunc), serving and batch prediction all turn raw
rows into the model's float32 matrix here, so they cannot disagree. ``transform_features`` takes a DataFrame,
``transform_columns`` the columns a request already holds (no DataFrame built); both check values as they go and
name the column and row of a bad one. Fitting the transform is preprocess's job (``fit_feature_spec``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kfops.components.contracts import ColumnSpec, FeatureSpec, KfopsError

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
