"""The feature transform a FeatureSpec describes, applied: the one validator and encoder for frames and columns.

Training (preprocess, train), evaluation, the model itself (its pyfunc), serving and batch prediction all turn raw
rows into the model's float32 matrix here, so they cannot disagree. ``transform_features`` takes a DataFrame,
``transform_columns`` the columns a request already holds (no DataFrame built); both check values as they go and
name the column and row of a bad one. ``request_value``/``request_column`` check the values a request sends (JSON or
V2 tensors) for serving, with the same rules: numbers finite and within float32, categories text, null missing.
Fitting the transform is preprocess's job (``fit_feature_spec``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from kfops.components.contracts import TASK_MULTICLASS, TASK_REGRESSION, ColumnSpec, FeatureSpec, KfopsError

MAX_ABS_NUMBER = 1e38  # float32 holds about 3.4e38; larger values would become inf inside the model
_SHOWN = 60  # characters of a bad value quoted in a message
# Below this many rows a dict lookup per value beats building a pandas Categorical (serving's small batches).
SMALL_BATCH_ROWS = 512
_TEXT_OR_NONE = frozenset({str, type(None)})


def show_value(value: Any) -> str:
    """A value as quoted in an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def category_codes(raw: pd.Series | Sequence, vocabulary: list[str]) -> np.ndarray:
    """Each value's index in the vocabulary, compared as text; missing or unseen values get len(vocabulary), the
    unknown bucket. ``raw`` is a Series or a plain sequence of values."""
    unknown = len(vocabulary)
    if len(raw) < SMALL_BATCH_ROWS:
        index = {v: i for i, v in enumerate(vocabulary)}
        values = raw.tolist() if isinstance(raw, pd.Series) else raw
        if set(map(type, values)) <= _TEXT_OR_NONE:  # serving's checked columns: one C-level pass, not a loop
            return np.fromiter(map(index.get, values, repeat(unknown)), dtype=np.int64, count=len(values))
        codes = np.empty(len(raw), dtype=np.int64)
        for i, v in enumerate(values):
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


def _require_features(spec: FeatureSpec, frame: pd.DataFrame, source: str) -> None:
    missing = [c.name for c in spec.columns if c.name not in frame.columns]
    if missing:
        raise KfopsError(f"{source}: missing feature column(s) {missing}; the model expects {spec.feature_names}")


def numeric_column(raw: pd.Series, name: str, source: str = "input") -> np.ndarray:
    """A numeric feature as float64 (NaN for missing); text that is not a number is an error naming the row."""
    if pd.api.types.is_numeric_dtype(raw):
        return raw.to_numpy(dtype=np.float64, na_value=np.nan)
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = raw.notna().to_numpy() & np.isnan(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise KfopsError(f"{source}: column '{name}' must be numeric; row {first} has {raw.iloc[first]!r}")
    return values


def feature_columns(spec: FeatureSpec, frame: pd.DataFrame, source: str = "input") -> dict[str, Sequence]:
    """The frame's features checked, as ``transform_columns`` takes them: numeric ones as float64 arrays,
    categorical ones as they are. Missing feature columns and non-numeric text are errors."""
    _require_features(spec, frame, source)
    return {
        col.name: numeric_column(frame[col.name], col.name, source) if col.kind == "numeric" else frame[col.name]
        for col in spec.columns
    }


def transform_features(spec: FeatureSpec, frame: pd.DataFrame, source: str = "input") -> np.ndarray:
    """Turn raw feature rows into the model's float32 matrix (``feature_columns``, then ``transform_columns``)."""
    return transform_columns(spec, feature_columns(spec, frame, source), len(frame))


def transform_columns(spec: FeatureSpec, columns: Mapping[str, Sequence], rows: int) -> np.ndarray:
    """The model's float32 matrix from checked columns, with no DataFrame: numeric features as float sequences
    (NaN for missing), categorical ones as a Series or a sequence of str or None. Serving's small batches come
    here directly, where building a frame costs more than the model."""
    out = np.zeros((rows, spec.input_width), dtype=np.float32)
    at = 0
    for col in spec.columns:
        if col.kind == "numeric":
            _fill_numeric(out, at, col, np.asarray(columns[col.name], dtype=np.float64))
        else:
            _fill_categorical(out, at, col, columns[col.name])
        at += col.width
    return out


def matrix_columns(spec: FeatureSpec) -> list[str]:
    """The names of the model matrix's columns, in order: a numeric feature's own name (and ``<name>_missing``, its
    indicator), a categorical one's ``<name>=<value>`` per vocabulary value and ``<name>=<other>``."""
    names: list[str] = []
    for col in spec.columns:
        if col.kind == "numeric":
            names += [col.name, f"{col.name}_missing"] if col.add_missing_indicator else [col.name]
        else:
            names += [f"{col.name}={value}" for value in col.vocabulary] + [f"{col.name}=<other>"]
    return names


def model_input_frame(spec: FeatureSpec, frame: pd.DataFrame, source: str = "input") -> pd.DataFrame:
    """The feature columns typed as the model's signature declares them: numeric as float64, categorical as
    str (missing as None). MLflow refuses to widen int64 to float64 by itself."""
    columns = feature_columns(spec, frame, source)
    out = {}
    for col in spec.columns:
        if col.kind == "numeric":
            out[col.name] = pd.Series(columns[col.name], index=frame.index, dtype="float64")
        else:
            raw = columns[col.name]
            out[col.name] = raw.astype("string").astype(object).where(raw.notna(), None)
    return pd.DataFrame(out, index=frame.index)


def encode_labels(spec: FeatureSpec, labels: pd.Series, source: str = "input") -> np.ndarray:
    """The target as the model learns it (float32): binary 1 for the positive class and 0 for the negative;
    multiclass the class's index in ``spec.labels``; regression the value itself. Unknown classes and
    non-numeric regression targets are errors."""
    if spec.task == TASK_REGRESSION:
        values = pd.to_numeric(labels, errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            raise KfopsError(
                f"{source}: regression target '{spec.target}' has {int(bad.sum())} value(s) that are not finite "
                f"numbers, e.g. {show_value(labels[bad].iloc[0])}"
            )
        return values.to_numpy(dtype=np.float32)
    if spec.task == TASK_MULTICLASS:
        text = labels.astype(str)
        index = {c: i for i, c in enumerate(spec.labels)}
        codes = text.map(index)
        if codes.isna().any():
            unknown = sorted(text[codes.isna()].unique())[:5]
            raise KfopsError(
                f"{source}: target '{spec.target}' has class(es) {unknown} the model was not trained on "
                f"(classes: {', '.join(spec.labels[:20])})"
            )
        return codes.to_numpy(dtype=np.float32)
    text = labels.astype(str)
    unknown = ~text.isin([spec.positive_class, spec.negative_class])
    if unknown.any():
        raise KfopsError(
            f"{source}: target '{spec.target}' has value(s) {sorted(text[unknown].unique())[:5]} "
            f"besides {spec.negative_class!r} and {spec.positive_class!r}"
        )
    return (text == spec.positive_class).to_numpy(dtype=np.float32)


def request_value(kind: str, name: str, value: Any, where: str) -> Any:
    """One value of a request (JSON or a V2 tensor) checked for a feature of ``kind``: float (NaN for missing) for
    numeric features, str or None for categorical; a KfopsError naming ``where`` and the feature otherwise."""
    if value is None:
        return math.nan if kind == "numeric" else None
    if kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise KfopsError(
                f"{where}: feature '{name}' must be a number (or null), got {type(value).__name__} {show_value(value)}"
            )
        try:
            number = float(value)
        except OverflowError:
            raise KfopsError(f"{where}: feature '{name}' is too large: {show_value(value)}") from None
        if not math.isfinite(number):
            raise KfopsError(f"{where}: feature '{name}' must be a finite number, got {number}")
        if abs(number) > MAX_ABS_NUMBER:
            raise KfopsError(
                f"{where}: feature '{name}' is out of range: {number:g} (the model computes in float32, "
                f"|value| must be at most {MAX_ABS_NUMBER:g})"
            )
        return number
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise KfopsError(f"{where}: feature '{name}' is not valid UTF-8") from None
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(int(value))
    raise KfopsError(
        f"{where}: feature '{name}' must be a string (or null), got {type(value).__name__} {show_value(value)}"
    )


def request_column(kind: str, name: str, values: list, where: Callable[[int], str]) -> list:
    """A whole column validated at once: the common case (numbers for numeric features, strings for
    categorical ones, nulls) in vectorised passes; anything else goes value by value through ``value``,
    which raises the exact message. ``where(i)`` names row i."""
    if kind == "numeric":
        # One pure-Python pass: cheaper than numpy's array set-up for the small requests that dominate, and
        # no slower for large ones. The chained comparison is False for NaN and infinities, so anything but a
        # finite in-range int/float or null drops to the exact per-value errors below.
        out = []
        append = out.append
        for v in values:
            if (type(v) is float or type(v) is int) and -MAX_ABS_NUMBER <= v <= MAX_ABS_NUMBER:
                append(float(v))
            elif v is None:
                append(math.nan)
            else:
                break
        else:
            return out
    elif all(type(v) is str or v is None for v in values):
        return list(values)
    return [request_value(kind, name, v, where(i)) for i, v in enumerate(values)]


def save_matrix(path: str, features: np.ndarray, labels: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, features=features, labels=labels)


def load_matrix(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["features"], data["labels"]
