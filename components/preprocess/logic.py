"""Preprocess: fit the feature transform on the training split only, and apply it to any frame.

Numeric columns: impute with the training median, standardise with training mean and std, and add a
missing-value indicator where training saw missing values. Categorical columns: a frequency-ordered
vocabulary (capped, rare values folded away) one-hot encoded, plus one unknown bucket for values never seen in
training. The fitted transform is a FeatureSpec (JSON) that the model carries and serving reuses, so training
and serving transform rows with the same code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfops.components.contracts import (
    TASK_BINARY,
    TASK_MULTICLASS,
    TASK_REGRESSION,
    ColumnSpec,
    FeatureSpec,
    KfopsError,
)

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
    task: str = TASK_BINARY,
    classes: list[str] | None = None,
) -> FeatureSpec:
    """Fit the transform's statistics and vocabularies on the training split, and the target's: the positive
    rate (binary), each class's share (multiclass, ``classes`` in the model's output order), or the mean and
    standard deviation the network's target is standardised with (regression)."""
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
    features = {target, *numeric, *categorical}
    target_stats: dict = {}
    if task == TASK_MULTICLASS:
        classes = [str(c) for c in (classes or sorted(labels.unique()))]
        shares = labels.value_counts(normalize=True)
        target_stats = {"classes": classes, "class_shares": [float(shares.get(c, 0.0)) for c in classes]}
    elif task == TASK_REGRESSION:
        values = pd.to_numeric(train[target], errors="coerce").astype(np.float64)
        if values.isna().any():
            raise KfopsError(f"preprocess: regression target '{target}' has values that are not numbers")
        std = float(values.std(ddof=0))
        target_stats = {"target_mean": float(values.mean()), "target_std": std if std > 1e-12 else 1.0}
    return FeatureSpec(
        target=target,
        positive_class=positive_class,
        negative_class=negative_class,
        columns=columns,
        dropped_columns=list(dropped or []),
        non_feature_columns=[str(c) for c in train.columns if c not in features],
        data_sha256=data_sha256,
        train_rows=len(train),
        positive_rate=float((labels == positive_class).mean()) if task == TASK_BINARY else 0.0,
        task=task,
        **target_stats,
    )
