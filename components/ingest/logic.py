"""Ingest: read raw CSV/Parquet, check it, snapshot it content-addressed, split it.

Plain Python, no KFP. Snapshots and their sha256 versions live in the shared seam ``kfops.components.datasets``;
the column roles this stage resolves are the ``Schema`` contract.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kfops.components import retry, roles, tables
from kfops.components.contracts import (
    MAX_CLASSES,
    TASK_BINARY,
    TASK_MULTICLASS,
    TASK_REGRESSION,
    TASKS,
    DataVersion,
    KfopsError,
    Schema,
    SplitConfig,
)
from kfops.components.datasets import read_snapshot, write_snapshot

log = logging.getLogger(__name__)

# A text column whose non-empty values are at least this share numbers is a numeric column with bad values.
NUMERIC_TEXT_SHARE = roles.NUMERIC_TEXT_SHARE
MAX_AUTO_CLASSES = 10  # task auto: whole numbers with at most this many values are classes
MIN_AUTO_REGRESSION = 20  # task auto: numbers with at least this many distinct values are a regression target
REGRESSION_STRATA = 10  # a regression target is stratified on its deciles when split


# ---------------------------------------------------------------------------------------------------- reading
def read_table(uri: str) -> pd.DataFrame:
    """Read a CSV or Parquet file from a local path or s3:// URI, with errors that name the file."""
    fmt = tables.table_format(uri)
    if fmt not in (tables.CSV, tables.PARQUET):
        raise KfopsError(f"{uri}: unsupported file type; use .csv, .csv.gz or .parquet")
    raw = tables.read_bytes(uri)
    if not raw:
        raise KfopsError(f"data file {uri} is empty")
    df = tables.parse_table(raw, fmt, uri)
    if df.empty and not len(df.columns):
        raise KfopsError(f"data file {uri} is empty")
    if df.empty:
        raise KfopsError(f"data file {uri} has no rows (columns: {', '.join(map(str, df.columns)) or 'none'})")
    return df


def _non_numeric_examples(values: pd.Series) -> tuple[int, list[str]]:
    """How many present values are not numbers, and the first three with their rows."""
    present = values.dropna()
    # Parsed once per distinct value: a text column of a few categories costs a tenth of parsing every row.
    try:
        distinct = pd.unique(present)
    except TypeError:  # unhashable values (lists from Parquet): none of them a number
        distinct = present.to_numpy()
    parsed = pd.to_numeric(pd.Series(distinct, dtype=object), errors="coerce")
    not_numbers = distinct[parsed.isna().to_numpy()]
    if not len(not_numbers):
        return 0, []
    bad = present[present.isin(not_numbers)] if len(distinct) < len(present) else present[parsed.isna().to_numpy()]
    return len(bad), [f"{v!r} (row {i})" for i, v in bad.head(3).items()]


def resolve_task(labels: pd.Series, target: str, source: str, task: str = "auto") -> str:
    """The task of a target: ``task`` checked against the values, or with ``auto`` inferred from them.

    ``auto``: two values is binary; text (or booleans) with up to ``MAX_CLASSES`` values is multiclass; whole
    numbers with at most ``MAX_AUTO_CLASSES`` values is multiclass; numbers with at least ``MIN_AUTO_REGRESSION``
    distinct values is regression. Anything between is ambiguous: an error that names ``--task``."""
    if task not in ("auto", *TASKS):
        raise KfopsError(f"{source}: task must be auto, {', '.join(TASKS)}; got {task!r}")
    distinct = int(labels.nunique())
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    if not numeric and labels.dtype == object:
        parsed = pd.to_numeric(labels, errors="coerce")
        numeric = bool(parsed.notna().all())  # numbers read as text (e.g. quoted in a CSV)
        if numeric:
            labels = parsed
    examples = ", ".join(map(str, sorted(labels.astype(str).unique())[:8]))
    if task == TASK_REGRESSION:
        if not numeric:
            raise KfopsError(
                f"{source}: task regression needs a numeric target, but '{target}' holds text ({examples}, ...); "
                "use --task multiclass or --task binary"
            )
        if distinct < 3:
            raise KfopsError(f"{source}: target '{target}' has {distinct} distinct values: too few to regress on")
        return task
    if task == TASK_BINARY:
        if distinct != 2:
            raise KfopsError(
                f"{source}: task binary needs a target with 2 classes, but '{target}' has {distinct} ({examples}"
                f"{', ...' if distinct > 8 else ''}); use --task auto"
            )
        return task
    if task == TASK_MULTICLASS:
        if not 2 <= distinct <= MAX_CLASSES:
            raise KfopsError(
                f"{source}: task multiclass takes 2 to {MAX_CLASSES} classes, but '{target}' has {distinct}"
                + ("; a numeric target with that many values is a regression (--task regression)" if numeric else "")
            )
        return task
    if distinct <= 2:
        return TASK_BINARY
    if not numeric:
        if distinct > MAX_CLASSES:
            raise KfopsError(
                f"{source}: target '{target}' has {distinct} distinct text values ({examples}, ...): more than "
                f"{MAX_CLASSES} classes; group them, or pick another target"
            )
        return TASK_MULTICLASS
    values = labels.astype("float64")
    whole = bool(np.all(np.mod(values, 1) == 0))
    if whole and distinct <= MAX_AUTO_CLASSES:
        return TASK_MULTICLASS
    if distinct >= MIN_AUTO_REGRESSION:
        return TASK_REGRESSION
    raise KfopsError(
        f"{source}: target '{target}' has {distinct} distinct numeric values ({examples}, ...): classes or "
        "amounts? Say which with --task multiclass or --task regression"
    )


def resolve_schema(
    df: pd.DataFrame,
    source: str,
    target: str,
    numeric: list[str] | None = None,
    categorical: list[str] | None = None,
    drop: list[str] | None = None,
    time_column: str = "",
    positive_class: str = "",
    task: str = "auto",
) -> Schema:
    """Decide each column's role and kind, and the task, and check the data fits; raise KfopsError naming file
    and column."""
    numeric, categorical, drop = list(numeric or []), list(categorical or []), list(drop or [])
    columns = list(df.columns)
    if not target:
        raise KfopsError(f"{source}: no target column given")
    if target not in columns:
        raise KfopsError(f"{source}: target column '{target}' not found; columns are: {', '.join(columns)}")
    for role, names in (("numeric feature", numeric), ("categorical feature", categorical), ("drop", drop)):
        for name in names:
            if name not in columns:
                raise KfopsError(f"{source}: {role} column '{name}' not found; columns are: {', '.join(columns)}")
    if time_column and time_column not in columns:
        raise KfopsError(f"{source}: time column '{time_column}' not found; columns are: {', '.join(columns)}")
    both = set(numeric) & set(categorical)
    if both:
        raise KfopsError(f"{source}: column(s) {sorted(both)} declared both numeric and categorical")
    for role, reserved in (("the target", {target}), ("the time column", {time_column} - {""}), ("dropped", set(drop))):
        clash = (set(numeric) | set(categorical)) & reserved
        if clash:
            raise KfopsError(f"{source}: feature column(s) {sorted(clash)} are also {role}")

    # Target: no empty values; the task from its values (or --task), and what that task needs of them.
    labels = df[target]
    if labels.isna().any():
        raise KfopsError(f"{source}: target column '{target}' has {int(labels.isna().sum())} empty values")
    task = resolve_task(labels, target, source, task)
    classes: list[str] = []
    negative_class = ""
    if task == TASK_REGRESSION:
        if positive_class:
            raise KfopsError(f"{source}: --positive-class {positive_class!r} is for binary targets, not regression")
    else:
        classes = sorted(labels.astype(str).unique())
        if len(classes) < 2:
            raise KfopsError(
                f"{source}: target column '{target}' has only one class ({classes[0]!r}); a classifier needs two"
            )
        if task == TASK_MULTICLASS and positive_class:
            raise KfopsError(f"{source}: --positive-class is for binary targets; '{target}' has {len(classes)} classes")
        if positive_class and positive_class not in classes:
            raise KfopsError(
                f"{source}: positive class {positive_class!r} is not a value of '{target}' "
                f"(values: {', '.join(classes[:20])})"
            )
        if task == TASK_BINARY:
            if not positive_class:
                counts = labels.astype(str).value_counts()
                # "1", "true", "yes" read as the positive class; otherwise the rarer class is.
                truthy = [c for c in classes if c.lower() in ("1", "1.0", "true", "yes", "y", "positive")]
                positive_class = truthy[0] if truthy else str(counts.idxmin())
            negative_class = next(c for c in classes if c != positive_class)

    excluded = {target, time_column, *drop}
    declared = set(numeric) | set(categorical)
    if not declared:
        # Timestamps and ids are no features: the rule the monitor applies too (components/roles.py).
        for name, why in roles.not_features(df, skip=excluded).items():
            drop.append(name)
            excluded.add(name)
            log.info("%s: column '%s' is no feature (%s)", source, name, why)
    inferred_numeric, inferred_categorical = [], []
    for name in columns:
        if name in excluded:
            continue
        col = df[name]
        if name not in declared and (numeric or categorical):
            # The user listed features: the rest are not features.
            continue
        if col.isna().all():
            raise KfopsError(f"{source}: column '{name}' is empty in all {len(df)} rows; drop it (--drop) or fill it")
        if name in categorical:
            continue
        if name in numeric:
            if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
                n_bad, examples = _non_numeric_examples(col)
                if n_bad:
                    raise KfopsError(
                        f"{source}: column '{name}' is declared numeric but {n_bad} value(s) are "
                        f"not numbers, e.g. {', '.join(examples)}"
                    )
            continue
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            inferred_numeric.append(name)
        else:
            present = col.dropna()
            n_bad, examples = _non_numeric_examples(present)
            if len(present) and n_bad and (len(present) - n_bad) / len(present) >= NUMERIC_TEXT_SHARE:
                raise KfopsError(
                    f"{source}: column '{name}' is numeric but {n_bad} value(s) are text, e.g. "
                    f"{', '.join(examples)}; fix them or declare the column categorical"
                )
            if len(present) and n_bad == 0:
                inferred_numeric.append(name)  # numbers read as text (e.g. quoted in a CSV)
            else:
                inferred_categorical.append(name)
    if numeric or categorical:
        schema_numeric, schema_categorical = numeric, categorical
    else:
        schema_numeric, schema_categorical = inferred_numeric, inferred_categorical
    if not schema_numeric and not schema_categorical:
        raise KfopsError(f"{source}: no feature columns left after target '{target}' and dropped columns")
    return Schema(
        target=target,
        numeric=schema_numeric,
        categorical=schema_categorical,
        dropped=drop,
        time_column=time_column,
        positive_class=positive_class,
        negative_class=negative_class,
        task=task,
        classes=classes if task == TASK_MULTICLASS else [],
    )


@retry.pipeline_step  # S3 reads and writes ride out a short outage (components/retry.py)
def version_data(
    data_uri: str,
    store: str,
    target: str,
    data_version: str = "",
    numeric: list[str] | None = None,
    categorical: list[str] | None = None,
    drop: list[str] | None = None,
    time_column: str = "",
    positive_class: str = "",
    task: str = "auto",
) -> tuple[DataVersion, Schema]:
    """Read (or look up) the data, check it, and make sure its snapshot is stored. Returns its version."""
    if data_version:
        df, version = read_snapshot(store, data_version)
        source = f"{version.source} (data version {data_version[:12]})"
    else:
        if not data_uri:
            raise KfopsError("no data given: pass a data URI or a stored data version")
        df = read_table(data_uri)
        source = data_uri
    schema = resolve_schema(df, source, target, numeric, categorical, drop, time_column, positive_class, task)
    if not data_version:
        version = write_snapshot(df, store, source=data_uri)
    return version, schema


# ---------------------------------------------------------------------------------------------------- splits
def split_frame(df: pd.DataFrame, target: str, config: SplitConfig) -> dict[str, pd.DataFrame]:
    """Seeded split into train/validation/test: stratified on the target, or by time when a column is set."""
    config.check()
    if target not in df.columns:
        raise KfopsError(f"split: target column '{target}' not found; columns are: {', '.join(df.columns)}")
    n = len(df)
    if config.by_time:
        if not config.time_column or config.time_column not in df.columns:
            raise KfopsError(f"split by time needs a time column; got {config.time_column!r}")
        order = np.argsort(pd.to_datetime(df[config.time_column], utc=True).to_numpy(), kind="stable")
        n_test = round(n * config.test_fraction)
        n_val = round(n * config.validation_fraction)
        parts = {
            "train": order[: n - n_val - n_test],
            "validation": order[n - n_val - n_test : n - n_test],
            "test": order[n - n_test :],
        }
    else:
        rng = np.random.default_rng(config.seed)
        labels = _strata(df[target])
        parts = {"train": [], "validation": [], "test": []}
        for label in sorted(set(labels)):
            idx = np.flatnonzero(labels == label)
            rng.shuffle(idx)
            n_test = round(len(idx) * config.test_fraction)
            n_val = round(len(idx) * config.validation_fraction)
            parts["test"].append(idx[:n_test])
            parts["validation"].append(idx[n_test : n_test + n_val])
            parts["train"].append(idx[n_test + n_val :])
        parts = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    splits = {name: df.iloc[idx].reset_index(drop=True) for name, idx in parts.items()}
    for name, frame in splits.items():
        if frame.empty:
            raise KfopsError(
                f"split '{name}' is empty: {n} rows are too few for the fractions "
                f"{config.validation_fraction}/{config.test_fraction}"
            )
        if frame[target].nunique() < 2:
            raise KfopsError(
                f"split '{name}' has only one class of '{target}' ({len(frame)} rows); "
                "use more data or a stratified split"
            )
    return splits


def _strata(target: pd.Series) -> np.ndarray:
    """What a split stratifies on: a classifier's classes, or a numeric target with more distinct values than a
    classifier may have (a regression target) cut into deciles, so each split spans its range."""
    if roles.is_continuous_target(target):
        values = pd.to_numeric(target, errors="coerce")
        bins = pd.qcut(values.rank(method="first"), REGRESSION_STRATA, labels=False)
        return bins.astype(int).astype(str).to_numpy()
    return target.astype(str).to_numpy()


def write_split(frame: pd.DataFrame, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
