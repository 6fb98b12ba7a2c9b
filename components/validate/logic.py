"""Validate: check a dataset against a Great Expectations suite before anything trains on it.

Suites are GX's own suite JSON (``suite.to_json_dict()``), kept in the repo or the artifact store, so users
edit them with GX's documentation at hand. ``profile_suite`` writes a starting suite from a reference dataset
(``kfops suite init``); ``default_suite`` is what applies when a dataset has none: the columns it must have,
their types, at most a share of empty values (5% by default) and a target with exactly two classes, so no data enters
training unchecked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfops.components import roles, storage
from kfops.components.contracts import KfopsError

log = logging.getLogger(__name__)

DEFAULT_MAX_MISSING = 0.05
NUMERIC_TYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "Float32",
    "Float64",
    "bool",
    "boolean",
]
TEXT_TYPES = ["object", "str", "string", "StringDtype", "category", "bool", "boolean"]
# Categorical columns with more distinct values than this get no value-set expectation from the profiler.
MAX_PROFILED_SET = 200


@dataclass
class FailedExpectation:
    expectation: str
    column: str
    kwargs: dict[str, Any]
    observed: str  # what was seen, in words
    severity: str = "error"  # error (stops the run) or warning (recorded)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in ("column", "value_set"))
        if "value_set" in self.kwargs:
            values = list(self.kwargs["value_set"])
            args = ", ".join(filter(None, [f"value_set={values[:8]}{'...' if len(values) > 8 else ''}", args]))
        where = f"column '{self.column}'" if self.column else "table"
        return f"{where}: {self.expectation}({args}): {self.observed}"


@dataclass
class ValidationSummary:
    success: bool  # no error failed (warnings may have)
    suite_name: str
    source: str
    evaluated: int
    failed: list[FailedExpectation] = field(default_factory=list)  # errors and warnings
    rows: int = 0
    suite_origin: str = ""  # where the suite came from, in words

    @property
    def errors(self) -> list[FailedExpectation]:
        return [f for f in self.failed if f.severity != "warning"]

    @property
    def warnings(self) -> list[FailedExpectation]:
        return [f for f in self.failed if f.severity == "warning"]

    def message(self) -> str:
        origin = f" ({self.suite_origin})" if self.suite_origin else ""
        if not self.failed:
            return f"{self.source}: all {self.evaluated} expectations of suite '{self.suite_name}'{origin} passed"
        head = f"{self.source}: suite '{self.suite_name}'{origin}: "
        if self.errors:
            head += f"{len(self.errors)} of {self.evaluated} expectations failed"
        else:
            head += f"all {self.evaluated - len(self.warnings)} error expectations passed"
        head += f", {len(self.warnings)} warning(s)" if self.warnings else ""
        lines = [head + ":"]
        lines += [f"  - {f.describe()}" for f in self.errors]
        lines += [f"  - warning: {f.describe()}" for f in self.warnings]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        verdict = ("passed with warnings" if self.warnings else "passed") if self.success else "FAILED"
        out = [
            f"# Data validation {verdict}",
            "",
            f"Suite `{self.suite_name}` on `{self.source}` ({self.rows:,} rows): "
            f"{self.evaluated - len(self.failed)} of {self.evaluated} expectations passed.",
            "",
        ]
        if self.failed:
            out += ["| severity | column | expectation | arguments | observed |", "|---|---|---|---|---|"]
            for f in self.failed:
                args = ", ".join(f"{k}={v}" for k, v in f.kwargs.items() if k != "column")
                out.append(
                    f"| {f.severity} | {f.column or '(table)'} | `{f.expectation}` | {args[:160]} | {f.observed} |"
                )
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ suites
def _gx():
    # GX reports usage and draws progress bars by default; neither belongs in a pipeline step.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def load_suite_dict(uri: str) -> dict[str, Any]:
    """Read suite JSON from a local path or s3:// URI, checking it is a GX suite."""
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except FileNotFoundError as err:
        raise KfopsError(f"expectation suite {uri} does not exist") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise KfopsError(f"expectation suite {uri} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or "expectations" not in data or not isinstance(data["expectations"], list):
        raise KfopsError(
            f"expectation suite {uri} is not a Great Expectations suite: it needs a list under "
            "'expectations' (write one with `kfops suite init`)"
        )
    build_suite(data, source=uri)  # every expectation must be one GX knows, with valid arguments
    return data


def build_suite(data: dict[str, Any], source: str = "suite"):
    """A gx.ExpectationSuite from suite JSON, with errors naming the bad expectation."""
    gx = _gx()
    data = {k: v for k, v in data.items() if k not in ("id", "notes") or (k == "notes" and v)}
    data.setdefault("name", Path(source).stem or "suite")
    expectations = []
    for i, exp in enumerate(data.get("expectations", [])):
        if not isinstance(exp, dict) or "type" not in exp:
            raise KfopsError(f"expectation suite {source}: expectation #{i + 1} has no 'type'")
        expectations.append({k: v for k, v in exp.items() if k != "id"})
    data["expectations"] = []
    try:
        suite = gx.ExpectationSuite(**data)
    except Exception as err:
        raise KfopsError(f"expectation suite {source} is not a valid GX suite: {err}") from err
    for i, exp in enumerate(expectations):
        try:
            suite.add_expectation_configuration(_configuration(exp))
        except Exception as err:
            raise KfopsError(
                f"expectation suite {source}: expectation #{i + 1} ({exp.get('type')}, column "
                f"{exp.get('kwargs', {}).get('column')!r}) is not valid: {err}"
            ) from err
    return suite


def _configuration(exp: dict[str, Any]):
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    return ExpectationConfiguration(type=exp["type"], kwargs=exp.get("kwargs", {}), meta=exp.get("meta") or {})


def _expectation(type_: str, **kwargs) -> dict[str, Any]:
    return {"type": type_, "kwargs": kwargs, "meta": {}}


def default_suite(
    frame: pd.DataFrame, target: str = "", max_missing: float = DEFAULT_MAX_MISSING, name: str = "kfops-default"
) -> dict[str, Any]:
    """The suite for data with none configured: columns, types, at most ``max_missing`` empty, target classes."""
    # One table-level check for presence: GX 1.24 folds repeated expect_column_to_exist into one.
    expectations = [
        _expectation("expect_table_columns_to_match_set", column_set=[str(c) for c in frame.columns], exact_match=False)
    ]
    for column in frame.columns:
        col = frame[column]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if numeric or pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            expectations.append(
                _expectation(
                    "expect_column_values_to_be_in_type_list",
                    column=column,
                    type_list=NUMERIC_TYPES if numeric else TEXT_TYPES,
                )
            )
        if column != target:
            expectations.append(
                _expectation("expect_column_values_to_not_be_null", column=column, mostly=round(1.0 - max_missing, 6))
            )
    if target:
        # Drawn from the data itself, the suite cannot know the classes (or a regression target's range); it can
        # know there must be two values at least.
        expectations.append(_expectation("expect_column_values_to_not_be_null", column=target))
        expectations.append(_expectation("expect_column_unique_value_count_to_be_between", column=target, min_value=2))
    return {"name": name, "expectations": expectations, "meta": {"kfops": "default suite from the data's schema"}}


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def profile_suite(
    frame: pd.DataFrame,
    target: str = "",
    name: str = "kfops-profiled",
    ignore: list[str] | None = None,
    max_missing: float = DEFAULT_MAX_MISSING,
    range_margin: float = 0.1,
    mean_tolerance: float = 0.1,
) -> dict[str, Any]:
    """A starting suite drawn from a reference dataset, for a user to read and edit.

    Per column: present, typed, not empty beyond what was seen (at least ``1 - max_missing`` filled); numeric
    columns within the observed range widened by ``range_margin`` of it, and a mean within ``mean_tolerance``
    standard deviations of the observed one; text columns with few distinct values within that set.
    """
    frame = frame.drop(columns=[c for c in (ignore or []) if c in frame.columns])
    suite = default_suite(frame, target=target, max_missing=max_missing, name=name)
    # A column that is often empty in the reference may stay so: allow twice its share, plus a point.
    for exp in suite["expectations"]:
        if exp["type"] == "expect_column_values_to_not_be_null" and "mostly" in exp["kwargs"]:
            seen = float(frame[exp["kwargs"]["column"]].isna().mean())
            exp["kwargs"]["mostly"] = _round(1.0 - max(max_missing, 2 * seen + 0.01))
    extra = []
    for column in frame.columns:
        col = frame[column]
        if column == target or pd.api.types.is_datetime64_any_dtype(col):
            continue
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            values = col.dropna().astype("float64")
            if values.empty:
                continue
            lo, hi = float(values.min()), float(values.max())
            margin = (hi - lo) * range_margin
            mean, std = float(values.mean()), float(values.std(ddof=0))
            tolerance = mean_tolerance * std if std > 0 else max(abs(mean) * 0.01, 1e-9)
            extra.append(
                _expectation(
                    "expect_column_values_to_be_between",
                    column=column,
                    min_value=_round(lo - margin),
                    max_value=_round(hi + margin),
                    mostly=0.999,
                )
            )
            extra.append(
                _expectation(
                    "expect_column_mean_to_be_between",
                    column=column,
                    min_value=_round(mean - tolerance),
                    max_value=_round(mean + tolerance),
                )
            )
        elif pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
            distinct = col.dropna().astype(str).unique()
            if 0 < len(distinct) <= MAX_PROFILED_SET:
                extra.append(
                    _expectation(
                        "expect_column_values_to_be_in_set", column=column, value_set=sorted(distinct.tolist())
                    )
                )
    if target and target in frame.columns and not roles.is_continuous_target(frame[target]):
        classes = sorted(frame[target].dropna().unique().tolist(), key=str)
        extra.append(
            _expectation("expect_column_values_to_be_in_set", column=target, value_set=[_plain(v) for v in classes])
        )
    suite["expectations"] += extra
    suite["meta"] = {"kfops": f"profiled from {len(frame):,} rows; edit freely"}
    return suite


def _round(value: float) -> float:
    return float(f"{value:.6g}")


# ------------------------------------------------------------------------------------------------ running
def _observed(result: dict[str, Any]) -> str:
    res = result.get("result") or {}
    exception = result.get("exception_info") or {}
    if exception.get("raised_exception"):
        return f"could not be evaluated: {exception.get('exception_message')}"
    if "observed_value" in res and res.get("unexpected_count") is None:
        value = res["observed_value"]
        return f"observed {value:.6g}" if isinstance(value, float) else f"observed {value!r}"
    if res.get("unexpected_count") is not None:
        examples = [_plain(v) for v in (res.get("partial_unexpected_list") or [])[:5]]
        return (
            f"{res['unexpected_count']:,} unexpected values ({res.get('unexpected_percent', 0):.2f}%), e.g. {examples}"
        )
    return "failed"


def run_suite(
    frame: pd.DataFrame, suite_dict: dict[str, Any], source: str = "data"
) -> tuple[ValidationSummary, dict[str, Any]]:
    """Validate a frame with GX; return the summary and GX's own result JSON."""
    gx = _gx()
    suite = build_suite(suite_dict, source=suite_dict.get("name", "suite"))
    context = gx.get_context(mode="ephemeral")
    # Progress bars are cosmetic; a GX without the setting just draws them.
    with contextlib.suppress(Exception):
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    batch = (
        context.data_sources.add_pandas("kfops")
        .add_dataframe_asset("data")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(suite)
    definition = gx.ValidationDefinition(data=batch, suite=suite, name=f"validate-{suite.name}")
    # BASIC has what the findings quote (observed values, unexpected counts and shares, a few unexpected values)
    # and skips SUMMARY's per-value counts and row indices, which no one reads: 1.5 s instead of 2.4 s on the
    # default data's 46 expectations.
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="BASIC").to_json_dict()
    # A column the suite names but the data lacks is one clear failure, not a cascade of GX errors.
    absent = sorted(
        {
            str(e.get("kwargs", {}).get("column"))
            for e in suite_dict["expectations"]
            if e.get("kwargs", {}).get("column") is not None
        }
        - set(map(str, frame.columns))
    )
    failed = [
        FailedExpectation(
            expectation="expect_column_to_exist",
            column=name,
            kwargs={"column": name},
            observed=f"missing from the data (it has: {', '.join(map(str, frame.columns))})",
        )
        for name in absent
    ]
    for item in result["results"]:
        if item.get("success"):
            continue
        config = item["expectation_config"]
        kwargs = {k: v for k, v in config.get("kwargs", {}).items() if k not in ("batch_id",)}
        if str(kwargs.get("column")) in absent or (absent and config["type"] == "expect_table_columns_to_match_set"):
            continue  # already reported as missing columns
        meta = config.get("meta") or {}
        observed = _observed(item)
        if meta.get("observed_empty") is not None and "mostly" in kwargs:
            observed += (
                f"; the suite's data had {meta['observed_empty']:.1%} empty, so at most {1 - kwargs['mostly']:.1%} "
                "is allowed"
            )
        failed.append(
            FailedExpectation(
                expectation=config["type"],
                column=str(kwargs.get("column", "")),
                kwargs=kwargs,
                observed=observed,
                severity=meta.get("kfops_severity", "error"),
            )
        )
    summary = ValidationSummary(
        success=not any(f.severity != "warning" for f in failed),
        suite_name=suite.name,
        source=source,
        evaluated=len(result["results"]),
        failed=failed,
        rows=len(frame),
    )
    return summary, json.loads(json.dumps(result, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def validate_frame(
    frame: pd.DataFrame,
    source: str,
    suite_uri: str = "",
    target: str = "",
    max_missing: float = DEFAULT_MAX_MISSING,
    mode: str = "fail",
) -> tuple[ValidationSummary, dict[str, Any]]:
    """Validate with the suite at ``suite_uri`` (or the default suite); in ``fail`` mode a failure raises."""
    if mode not in ("fail", "warn"):
        raise KfopsError(f"validate: mode must be 'fail' or 'warn', got {mode!r}")
    suite_dict = load_suite_dict(suite_uri) if suite_uri else default_suite(frame, target, max_missing)
    summary, result = run_suite(frame, suite_dict, source=source)
    if not summary.success and mode == "fail":
        from kfops.components.validate.schema_suite import HOW_TO_GO_ON

        raise KfopsError("data validation failed\n" + summary.message() + "\n" + HOW_TO_GO_ON)
    return summary, result
