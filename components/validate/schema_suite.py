"""The data schema a run infers and keeps, with TFX SchemaGen / ExampleValidator semantics.

With no suite configured, a run draws a suite from its own data (``infer_suite``): the column set and each column's
type, each column's empty share plus a tolerance, numeric ranges, categorical domains and the target's classes.
The suite is stored beside the data version (``<store>/datasets/<sha256>/suite.json``), so the model trained on
that data carries it through its run's ``kfops.data_sha256`` tag. The next run is validated against the suite of
the current champion (``champion_suite``), its findings split as TFX splits anomalies:

- errors stop the run: a missing or new column, a changed type, an empty share far above the champion's
  (more than ``2 x its share + 0.05``), a target outside the champion's classes;
- warnings are recorded in the report and the run goes on: values outside the champion's ranges, new categories.
  Drifted data must still train: that is what ``kfops retrain --if-drift`` is for.

Some problems stop a run whatever the suite says (``hard_errors``): a missing target, a target with one class, a
column with no value at all. Every expectation carries its severity in ``meta.kfops_severity``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd

from kfops.components import roles, storage
from kfops.components.contracts import KfopsError
from kfops.components.validate.logic import NUMERIC_TYPES, TEXT_TYPES

log = logging.getLogger(__name__)

SEVERITY = "kfops_severity"
ERROR, WARNING = "error", "warning"
SUITE_FILE = "suite.json"
EMPTY_TOLERANCE = 0.05  # an empty share may grow to twice the champion's plus this before it is an error
MAX_DOMAIN = 200  # text columns with more distinct values get no domain (ids, free text)
BOOL_TYPES = ["bool", "boolean"]


def _expectation(type_: str, severity: str, **kwargs) -> dict[str, Any]:
    return {"type": type_, "kwargs": kwargs, "meta": {SEVERITY: severity}}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def column_kind(column: pd.Series) -> str:
    """``bool``, ``numeric``, ``datetime`` or ``text``: the type a later batch must keep."""
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_numeric_dtype(column):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(column):
        return "datetime"
    return "text"


def allowed_empty(share: float) -> float:
    """The largest empty share a later batch may have, for a column ``share`` empty when the suite was drawn."""
    return min(1.0, 2 * share + EMPTY_TOLERANCE)


def _range(column: str, values: pd.Series) -> dict[str, Any]:
    """The observed range of a numeric column, a warning: values outside it drifted but still train."""
    return _expectation(
        "expect_column_values_to_be_between",
        WARNING,
        column=column,
        min_value=float(values.min()),
        max_value=float(values.max()),
    )


def infer_suite(frame: pd.DataFrame, target: str, name: str = "kfops-inferred") -> dict[str, Any]:
    """The suite drawn from this data: errors for the schema, warnings for ranges and domains."""
    expectations = [
        _expectation(
            "expect_table_columns_to_match_set", ERROR, column_set=[str(c) for c in frame.columns], exact_match=True
        )
    ]
    for name_ in frame.columns:
        column = frame[name_]
        kind = column_kind(column)
        types = {"bool": BOOL_TYPES, "numeric": NUMERIC_TYPES, "text": TEXT_TYPES}.get(kind)
        if types:
            expectations.append(
                _expectation("expect_column_values_to_be_in_type_list", ERROR, column=name_, type_list=types)
            )
        share = float(column.isna().mean())
        if name_ == target:
            expectations.append(_expectation("expect_column_values_to_not_be_null", ERROR, column=name_))
            if roles.is_continuous_target(column):
                # a regression target: its range, a warning like any numeric column's (drifted amounts still train)
                expectations.append(_range(name_, pd.to_numeric(column, errors="coerce").dropna()))
                continue
            classes = sorted((_plain(v) for v in column.dropna().unique()), key=str)
            expectations.append(
                _expectation("expect_column_values_to_be_in_set", ERROR, column=name_, value_set=classes)
            )
            continue
        expectations.append(
            _expectation(
                "expect_column_values_to_not_be_null",
                ERROR,
                column=name_,
                mostly=round(1.0 - allowed_empty(share), 6),
                meta_observed_empty=round(share, 6),
            )
        )
        values = column.dropna()
        if values.empty:
            continue
        if kind == "numeric":
            expectations.append(_range(name_, values))
        elif kind == "text":
            domain = values.astype(str).unique()
            if len(domain) <= MAX_DOMAIN and len(domain) < len(values):  # unique per row: an id, no domain
                expectations.append(
                    _expectation(
                        "expect_column_values_to_be_in_set", WARNING, column=name_, value_set=sorted(domain.tolist())
                    )
                )
    # GX rejects kwargs it does not know: the observed share rides in the expectation's meta instead.
    for exp in expectations:
        observed = exp["kwargs"].pop("meta_observed_empty", None)
        if observed is not None:
            exp["meta"]["observed_empty"] = observed
    return {"name": name, "expectations": expectations, "meta": {"kfops": f"inferred from {len(frame):,} rows"}}


def hard_errors(frame: pd.DataFrame, target: str, source: str) -> list[str]:
    """What stops a run whatever the suite: a missing target, a target with one class, an all-empty column."""
    problems = []
    if target and target not in frame.columns:
        problems.append(f"{source}: no target column '{target}' (it has: {', '.join(map(str, frame.columns))})")
    elif target:
        classes = frame[target].dropna().unique()
        if len(classes) < 2:
            problems.append(
                f"{source}: target '{target}' has {len(classes)} class(es) {[_plain(c) for c in classes][:2]}: a "
                "classifier needs rows of two classes"
            )
    if len(frame):
        empty = [str(c) for c in frame.columns if c != target and frame[c].isna().all()]
        if empty:
            problems.append(f"{source}: column(s) {empty} have no value at all; drop them (--drop) or fix the export")
    return problems


def suite_uri(store: str, data_sha256: str) -> str:
    return storage.join(store, "datasets", data_sha256, SUITE_FILE)


def store_suite(store: str, data_sha256: str, suite: dict[str, Any]) -> str:
    """Keep ``suite`` beside the data version; returns where."""
    uri = suite_uri(store, data_sha256)
    storage.write_bytes(uri, (json.dumps(suite, indent=2, sort_keys=True) + "\n").encode())
    return uri


def champion_suite(model_name: str, store: str) -> tuple[dict[str, Any] | None, str]:
    """The suite stored with the data the current champion of ``model_name`` was trained on, and a description
    of where it came from; (None, why) when there is no champion or it has no stored suite."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from kfops.components.contracts import ALIAS_CHAMPION

    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, ALIAS_CHAMPION)
    except MlflowException:
        return None, f"no champion of '{model_name}' yet"
    sha = client.get_run(version.run_id).data.tags.get("kfops.data_sha256", "") if version.run_id else ""
    if not sha:
        return None, f"champion v{version.version} of '{model_name}' records no data version"
    uri = suite_uri(store, sha)
    try:
        suite = json.loads(storage.read_bytes(uri).decode("utf-8"))
    except FileNotFoundError:
        return None, f"champion v{version.version}'s data {sha[:12]} has no stored suite"
    except (OSError, ValueError) as err:
        raise KfopsError(f"the champion's suite {uri} cannot be read: {err}") from err
    return suite, f"the suite of champion v{version.version} of '{model_name}' (data {sha[:12]})"


def severity(expectation_config: dict[str, Any]) -> str:
    """An expectation's severity: error unless its meta says warning (suites written by hand are all errors)."""
    return (expectation_config.get("meta") or {}).get(SEVERITY, ERROR)


def observed_empty(expectation_config: dict[str, Any]) -> float | None:
    return (expectation_config.get("meta") or {}).get("observed_empty")


HOW_TO_GO_ON = (
    "How to go on: if the data is right, train on it anyway with --warn-only (the report keeps the findings); "
    "write a suite that fits it with `kfops suite init --data FILE --target COL --output suite.json` and pass "
    "--suite suite.json; use the fixed-cap suite with --max-missing SHARE; or, if it is another model's data, "
    "name it with --model-name."
)


def validate_snapshot(
    frame: pd.DataFrame,
    source: str,
    *,
    target: str,
    store: str,
    data_sha256: str,
    suite_uri_given: str = "",
    max_missing: float = -1.0,
    model_name: str = "",
    mode: str = "fail",
    new_store: str = "",
) -> tuple[Any, dict[str, Any]]:
    """The training pipeline's validation: hard errors first, then the suite that applies (the one given, the
    fixed-cap suite when ``max_missing`` >= 0, the champion's, or the one inferred from this data), errors and
    warnings apart. The inferred suite is stored beside the data version in every case. In ``fail`` mode an
    error raises a KfopsError that says how to go on; hard errors raise in any mode. ``new_store``: the path of
    the local MLflow store when it does not exist yet (``tracking.new_local_store``): no champion to look up."""
    from kfops.components.validate.logic import default_suite, load_suite_dict, run_suite

    if mode not in ("fail", "warn"):
        raise KfopsError(f"validate: mode must be 'fail' or 'warn', got {mode!r}")
    from kfops.components.datasets import record_validation

    problems = hard_errors(frame, target, source)
    if problems:
        record_validation(store, data_sha256, False, len(problems), "hard checks")
        raise KfopsError("data validation failed\n  - " + "\n  - ".join(problems))
    store_suite(store, data_sha256, infer_suite(frame, target, name=f"inferred-{data_sha256[:12]}"))
    if suite_uri_given:
        suite, origin = load_suite_dict(suite_uri_given), f"given: {suite_uri_given}"
    elif max_missing >= 0:
        suite, origin = default_suite(frame, target, max_missing), f"fixed cap of {max_missing:.0%} empty per column"
    else:
        if not model_name:
            suite, why = None, "no model name"
        elif new_store:
            suite, why = None, f"no champion of '{model_name}' yet: the MLflow store {new_store} is new"
        else:
            suite, why = champion_suite(model_name, store)
        if suite is not None:
            origin = why
        else:
            # A first run: its own schema is what later runs will be held to.
            suite, origin = infer_suite(frame, target, name=f"inferred-{data_sha256[:12]}"), f"inferred ({why})"
    summary, result = run_suite(frame, suite, source=source)
    summary.suite_origin = origin
    record_validation(store, data_sha256, summary.success, len(summary.errors), summary.suite_name)
    if not summary.success and mode == "fail":
        raise KfopsError("data validation failed\n" + summary.message() + "\n" + HOW_TO_GO_ON)
    return summary, result
