"""Outcomes: live model performance from ground-truth labels (or business outcomes) joined to the payload log.

Predictions are known when they are served; what really happened (chargeback or not) arrives hours or weeks later.
Outcome records are written by ``kfops.components.records`` (``log_outcomes``, and ``record_outcomes`` behind the
predictor's ``POST /v1/outcomes``) under ``<sink>/outcomes/date=YYYY-MM-DD/``; readers here keep the latest
``timestamp`` per request id (``superseded_outcomes`` counts the others).

``live_performance`` joins the payload log (``<sink>/model=<name>/date=<day>/*.jsonl|parquet``, rows with
``request_id``, ``timestamp``, ``model``, ``model_version``, ``variant``, ``prediction``) to the outcomes on
``request_id``, or on a business id the payload log keeps beside the features (``join_on="transaction_id"``: a raw
column of the training data the request sent, matched to outcomes logged with that field), and computes, per
model, version and variant, over a window of prediction times, the task's live metrics (``LIVE_METRIC_NAMES``:
accuracy, precision, recall and F1 of the positive class for a binary model; accuracy, balanced accuracy and macro
averages for a multiclass one; RMSE, MAE, R² for a regression), and what did not join (predictions with no outcome
yet, outcomes with no prediction in the window). A request of several rows has one request id: its outcome applies
to each of its rows; a business id is usually one row's. The payload log and the outcomes may share one sink.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kfops.components import storage, tables
from kfops.components.contracts import (
    OUTCOMES_DIR,
    PAYLOAD_META_COLUMNS,
    TASK_BINARY,
    TASK_MULTICLASS,
    TASK_REGRESSION,
    TASKS,
    KfopsError,
    check_payload_log_format,
    partitions_of,
)
from kfops.components.records import check_join_key, id_text, iso_utc, parse_time, pseudonymize, read_record_file
from kfops.components.scoring import class_metrics, regression_metrics

log = logging.getLogger(__name__)

PAYLOAD_COLUMNS = (*PAYLOAD_META_COLUMNS, "prediction")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def read_outcome_file(uri: str) -> pd.DataFrame:
    """A CSV, Parquet or JSONL file of outcomes (columns request_id, outcome, optional timestamp), for
    ``kfops outcomes log --file``. Ids and text outcomes stay text."""
    kind = tables.table_format(uri, json_as_lines=True)
    if kind is None:
        raise KfopsError(f"outcomes file {uri}: unsupported file type; use .csv, .parquet or .jsonl")
    raw = tables.read_bytes(uri, "outcomes file")
    if not raw.strip():
        raise KfopsError(f"outcomes file {uri} is empty")
    return tables.parse_table(raw, kind, uri, csv_dtype={"request_id": str})


def _partition_files(
    uri: str, since: dt.datetime | None, until: dt.datetime | None, model: str = ""
) -> list[tuple[str, dict[str, str]]]:
    """Data files under ``uri`` in ``date=YYYY-MM-DD`` partitions whose day can hold times in [since, until),
    with their ``key=value`` path parts; files outside any date partition are skipped."""
    base = uri.rstrip("/") if storage.is_s3(uri) else uri
    found = []
    for path, _ in storage.list_files(base):
        relative = path[len(base) :].replace("\\", "/").strip("/")
        if tables.table_format(relative, json_as_lines=True) in (None, tables.CSV):
            continue
        parts = partitions_of(relative)
        if not _DAY.match(parts.get("date", "")):
            continue
        day = dt.date.fromisoformat(parts["date"])
        if since is not None and day < since.date():
            continue
        if until is not None and day > until.date():
            continue
        if model and parts.get("model", model) != model:
            continue
        found.append((path, parts))
    return found


def _utc_times(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")


def read_outcomes(
    uri: str, since: dt.datetime | None = None, until: dt.datetime | None = None, key: str = "request_id"
) -> tuple[pd.DataFrame, int]:
    """The latest outcome per id (``key``, ``outcome``, ``timestamp``) logged under ``uri`` (the sink given to
    ``log_outcomes``, or its ``outcomes`` folder) with a timestamp in [since, until), and how many older outcomes
    for the same ids were superseded. ``key`` is the id the outcomes were logged by: ``request_id``, or a business
    id such as ``transaction_id`` (outcomes logged by another id are not read)."""
    columns = [key, "outcome", "timestamp"]
    folder = storage.join(uri, OUTCOMES_DIR)
    files = _partition_files(folder, since, until)
    if not files and uri.rstrip("/").endswith("/" + OUTCOMES_DIR):
        files = _partition_files(uri, since, until)
    frames = [read_record_file(path, columns) for path, _ in files]
    frame = (
        pd.concat([f for f in frames if not f.empty], ignore_index=True)
        if any(not f.empty for f in frames)
        else pd.DataFrame(columns=columns)
    )
    frame = frame[frame[key].notna()].copy()
    frame[key] = frame[key].astype(str)
    frame["time"] = _utc_times(frame["timestamp"])
    if since is not None:
        frame = frame[frame["time"] >= since]
    if until is not None:
        frame = frame[frame["time"] < until]
    before = len(frame)
    # Latest timestamp wins; among equal timestamps the later file (files are named by write time) wins.
    frame = frame.reset_index(drop=True).reset_index(names="order")
    frame = frame.sort_values(["time", "order"], na_position="first").drop_duplicates(key, keep="last")
    return frame[columns].reset_index(drop=True), before - len(frame)


def read_predictions(
    uri: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    model: str = "",
    key: str = "request_id",
) -> pd.DataFrame:
    """Payload-log rows (``PAYLOAD_COLUMNS``, and the ``key`` column: text, null where a row has none) under ``uri``
    (the payload-log sink, or one ``model=`` folder of it) with a timestamp in [since, until), optionally of one
    model."""
    columns = PAYLOAD_COLUMNS if key in PAYLOAD_COLUMNS else (*PAYLOAD_COLUMNS, key)
    files = [(p, parts) for p, parts in _partition_files(uri, since, until, model) if not _under_outcomes(uri, p)]
    frames = []
    for path, parts in files:
        frame = read_record_file(path, columns)
        check_payload_log_format(frame["log_format"], path)
        if "model" in parts:
            frame["model"] = frame["model"].where(frame["model"].notna(), parts["model"])
        frames.append(frame)
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=[*columns, "time"])
    frame = pd.concat(frames, ignore_index=True)
    frame["time"] = _utc_times(frame["timestamp"])
    if since is not None:
        frame = frame[frame["time"] >= since]
    if until is not None:
        frame = frame[frame["time"] < until]
    if model:
        frame = frame[frame["model"].astype(str) == model]
    frame = frame[frame["request_id"].notna()].copy()
    frame["request_id"] = frame["request_id"].astype(str)
    if key != "request_id":
        # A business id as the outcomes hold it: 42, 42.0 and "42" are one id (JSON, Parquet and CSV differ).
        frame[key] = frame[key].map(id_text).astype(object)
    for column in ("model", "model_version", "variant"):
        frame[column] = frame[column].fillna("").astype(str)
    return frame.reset_index(drop=True)


def _under_outcomes(base: str, path: str) -> bool:
    relative = path[len(base.rstrip("/")) :].replace("\\", "/").strip("/")
    return relative.split("/", 1)[0] == OUTCOMES_DIR


# ------------------------------------------------------------------------------------------------ metrics
def label_text(value: Any) -> str | None:
    """A prediction or outcome as the class label text it stands for: ``1.0`` is ``"1"``, ``True`` is ``"true"``."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def infer_positive_class(labels: Iterable[str]) -> str:
    """``1``, ``true`` or ``yes`` (in that order) when present among the labels; else a KfopsError asking for it."""
    seen = sorted({str(v) for v in labels if v is not None})
    for candidate in ("1", "true", "yes"):
        for value in seen:
            if value.lower() == candidate:
                return value
    raise KfopsError(
        f"outcomes: cannot tell the positive class from the labels {seen[:10]}; pass positive_class (--positive-class)"
    )


# What the report shows per group, by task: the metrics that need only what was served (the class or the value);
# log loss and ROC-AUC need every class's probability, which the payload log does not keep.
LIVE_METRIC_NAMES: dict[str, tuple[str, ...]] = {
    TASK_BINARY: ("accuracy", "precision", "recall", "f1", "positive_rate", "outcome_positive_rate"),
    TASK_MULTICLASS: (
        "accuracy",
        "balanced_accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "f1_weighted",
    ),
    TASK_REGRESSION: ("rmse", "mae", "r2", "median_ae", "smape", "mean_prediction", "mean_outcome"),
}


@dataclass
class GroupPerformance:
    """Live performance of one model version and variant over the window. ``values`` holds the task's
    ``LIVE_METRIC_NAMES`` (None where there is nothing to compute them from) and its counts: ``tp``/``fp``/``tn``/
    ``fn`` (binary), ``predicted_shares``/``outcome_shares`` per class (multiclass); they read as attributes
    (``group.accuracy``) and are flattened into the group's JSON."""

    model: str
    model_version: str
    variant: str
    predictions: int  # payload-log rows in the window
    joined: int  # of them, rows with a usable outcome (a class of the task, or a number for regression)
    unmatched_predictions: int  # rows with no outcome (yet)
    invalid_outcomes: int  # rows whose outcome the task cannot use: left out of the metrics
    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values") or {}
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no {name!r} (this task's values: {', '.join(values)})")

    def to_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "values"}
        return {**fields, **self.values}


@dataclass
class LivePerformance:
    """``live_performance``'s answer: per-group metrics and what did not join."""

    since: str | None
    until: str | None
    positive_class: str | None  # binary only
    negative_class: str | None  # binary only
    predictions: int
    outcomes: int  # outcomes in the window, latest per request id
    superseded_outcomes: int
    unmatched_outcomes: int  # outcomes whose id (request id or join_on) has no prediction in the window
    groups: list[GroupPerformance] = field(default_factory=list)
    join_on: str = "request_id"  # the id predictions and outcomes were joined by
    task: str = TASK_BINARY
    classes: list[str] = field(default_factory=list)  # classification: the labels seen, predicted ones first

    @property
    def metric_names(self) -> tuple[str, ...]:
        return LIVE_METRIC_NAMES[self.task]

    def to_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "groups"}
        return {**fields, "groups": [g.to_dict() for g in self.groups]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _binary_values(joined: pd.DataFrame, positive: str) -> dict[str, Any]:
    predicted = joined["prediction_label"] == positive
    actual = joined["outcome_label"] == positive
    tp, fp = int((predicted & actual).sum()), int((predicted & ~actual).sum())
    fn, tn = int((~predicted & actual).sum()), int((~predicted & ~actual).sum())
    n = len(joined)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else (0.0 if precision is not None and recall is not None else None)
    )
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "positive_rate": _ratio(tp + fp, n),
        "outcome_positive_rate": _ratio(tp + fn, n),
    }


def _multiclass_values(joined: pd.DataFrame, classes: list[str]) -> dict[str, Any]:
    n = len(joined)
    values: dict[str, Any] = dict.fromkeys(LIVE_METRIC_NAMES[TASK_MULTICLASS])
    if n:
        index = {label: i for i, label in enumerate(classes)}
        y = joined["outcome_label"].map(index).to_numpy()
        pred = joined["prediction_label"].map(index).to_numpy()
        metrics = class_metrics(y, pred, len(classes))
        values.update({name: metrics[name] for name in values})
    predicted, observed = joined["prediction_label"].value_counts(), joined["outcome_label"].value_counts()
    values["predicted_shares"] = {c: (int(predicted.get(c, 0)) / n if n else None) for c in classes}
    values["outcome_shares"] = {c: (int(observed.get(c, 0)) / n if n else None) for c in classes}
    return values


def _regression_values(joined: pd.DataFrame) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(LIVE_METRIC_NAMES[TASK_REGRESSION])
    if len(joined):
        y = joined["outcome_value"].to_numpy(dtype=np.float64)
        p = joined["prediction_value"].to_numpy(dtype=np.float64)
        values.update({name: _finite(v) for name, v in regression_metrics(y, p).items()})
        values["mean_prediction"], values["mean_outcome"] = float(p.mean()), float(y.mean())
    return values


def _group_performance(
    key: tuple[str, str, str], rows: pd.DataFrame, task: str, classes: list[str], positive: str, negative: str | None
) -> GroupPerformance:
    has_outcome = rows["outcome_label"].notna()
    if task == TASK_REGRESSION:
        valid = has_outcome & rows["outcome_value"].notna()
    elif task == TASK_MULTICLASS:
        valid = has_outcome
    else:
        valid = has_outcome & rows["outcome_label"].isin([positive, negative])
    joined = rows[valid]
    if task == TASK_REGRESSION:
        values = _regression_values(joined)
    elif task == TASK_MULTICLASS:
        values = _multiclass_values(joined, classes)
    else:
        values = _binary_values(joined, positive)
    return GroupPerformance(
        model=key[0],
        model_version=key[1],
        variant=key[2],
        predictions=len(rows),
        joined=len(joined),
        unmatched_predictions=int((~has_outcome).sum()),
        invalid_outcomes=int((has_outcome & ~valid).sum()),
        values=values,
    )


def _number(value: Any) -> float | None:
    """An outcome or a regression's prediction as a finite number; None when it is not one (text, NaN, bool)."""
    if value is None or isinstance(value, bool | np.bool_):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def infer_live_task(predictions: pd.Series) -> str:
    """The task the payload log's predictions were made for: a regression logs its prediction as a number, a
    classifier as its class label's text; more than two labels is multiclass."""
    values = [v for v in predictions if v is not None and v == v]
    numeric = (int, float, np.integer, np.floating)
    if values and all(isinstance(v, numeric) and not isinstance(v, bool) for v in values):
        return TASK_REGRESSION
    return TASK_MULTICLASS if len({label_text(v) for v in values}) > 2 else TASK_BINARY


def live_performance(
    payload_log_uri: str,
    outcomes_uri: str = "",
    since: Any = None,
    until: Any = None,
    positive_class: str = "",
    model: str = "",
    now: dt.datetime | None = None,
    join_on: str = "request_id",
    join_salt: bytes = b"",
    task: str = "auto",
) -> LivePerformance:
    """Join predictions made in [since, until) to their outcomes and score each model version and variant in its
    task's terms (``LIVE_METRIC_NAMES``).

    ``task``: ``auto`` (default) reads it from the payload log (``infer_live_task``), or ``binary``,
    ``multiclass``, ``regression``. A regression's outcomes are numbers (others are counted invalid); a
    multiclass model's are class labels, any label a class.

    ``join_on``: the id predictions and outcomes share, ``request_id`` or a business id the payload log keeps (a
    raw column of the training data, e.g. ``transaction_id``; its outcomes are logged with that field). When the
    server hashed that field (``--payload-log-hash``), ``join_salt`` is its salt: outcome ids are hashed the same
    way before the join.

    ``outcomes_uri`` defaults to ``payload_log_uri`` (one sink for both). Outcomes are read from ``since`` on
    with no upper bound: an outcome usually arrives after the window it judges. ``since``/``until`` take what
    ``parse_time`` does (``24h``, ``2026-11-26``...). For a binary model the positive class defaults to
    ``1``/``true``/``yes``; the negative class is the model's other predicted label.
    """
    if task not in ("auto", *TASKS):
        raise KfopsError(f"outcomes: unknown task {task!r}; use auto, {', '.join(TASKS)}")
    now = now or dt.datetime.now(dt.UTC)
    start = parse_time(since, now, what="since")
    end = parse_time(until, now, what="until")
    if start is not None and end is not None and start >= end:
        raise KfopsError(f"outcomes: the window is empty: since {iso_utc(start)} is not before until {iso_utc(end)}")
    key = check_join_key(join_on)
    predictions = read_predictions(payload_log_uri, start, end, model, key)
    outcomes, superseded = read_outcomes(outcomes_uri or payload_log_uri, start, None, key)
    if join_salt:
        outcomes[key] = outcomes[key].map(lambda v: pseudonymize(v, join_salt))
    task = infer_live_task(predictions["prediction"]) if task == "auto" else task
    outcomes["outcome_label"] = outcomes["outcome"].map(label_text)
    positive: str | None = None
    negative: str | None = None
    classes: list[str] = []
    if task == TASK_REGRESSION:
        predictions["prediction_value"] = predictions["prediction"].map(_number)
        outcomes["outcome_value"] = outcomes["outcome"].map(_number)
        bad = predictions["prediction"].notna() & predictions["prediction_value"].isna()
        if bad.any():
            first = predictions[bad].iloc[0]
            raise KfopsError(
                f"outcomes: {int(bad.sum())} payload-log prediction(s) are not numbers (e.g. "
                f"{first['prediction']!r}, request {first['request_id']}); "
                "a regression's predictions are values: is --task right?"
            )
    else:
        predictions["prediction_label"] = predictions["prediction"].map(label_text)
        predicted_labels = sorted({v for v in predictions["prediction_label"] if v is not None})
        if task == TASK_BINARY and len(predicted_labels) > 2:
            raise KfopsError(
                f"outcomes: the payload log holds {len(predicted_labels)} predicted labels {predicted_labels[:10]}; "
                "a binary model predicts two: use --task multiclass (or auto)"
            )
        outcome_values = set(outcomes["outcome_label"].dropna())
        if predicted_labels and {"true", "false"} & outcome_values and set(predicted_labels) <= {"0", "1"}:
            # Boolean outcomes for a 0/1 model: the same classes.
            outcomes["outcome_label"] = outcomes["outcome_label"].replace({"true": "1", "false": "0"})
        classes = predicted_labels + sorted(set(outcomes["outcome_label"].dropna()) - set(predicted_labels))
        if task == TASK_BINARY:
            positive = positive_class.strip() if positive_class and positive_class.strip() else None
            if positive is None:
                positive = infer_positive_class(classes) if classes else "1"
            others = [v for v in predicted_labels if v != positive]
            if others:
                negative = others[0]
            else:  # every prediction was positive (or none): the commonest other outcome is the negative class
                counts = outcomes.loc[outcomes["outcome_label"] != positive, "outcome_label"].value_counts()
                negative = str(counts.index[0]) if len(counts) else None
    outcome_columns = [c for c in ("outcome_label", "outcome_value") if c in outcomes]
    joined = predictions.merge(outcomes[[key, *outcome_columns]], on=key, how="left")
    predicted_ids = set(predictions[key].dropna())
    groups = [
        _group_performance(group_key, rows, task, classes, positive or "", negative)
        for group_key, rows in joined.groupby(["model", "model_version", "variant"], sort=True, dropna=False)
    ]
    return LivePerformance(
        since=iso_utc(start) if start else None,
        until=iso_utc(end) if end else None,
        positive_class=positive,
        negative_class=negative,
        predictions=len(predictions),
        outcomes=len(outcomes),
        superseded_outcomes=superseded,
        unmatched_outcomes=int((~outcomes[key].isin(predicted_ids)).sum()),
        groups=groups,
        join_on=key,
        task=task,
        classes=classes,
    )
