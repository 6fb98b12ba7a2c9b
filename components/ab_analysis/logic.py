"""A/B analysis: is the challenger's outcome better than stable's, by more than chance would give?

Input is a table with one row per scored request (or row) and two columns that matter: the variant that served
it and the outcome observed for it. It is read from a CSV, Parquet or JSONL file, or a folder of them, local or
``s3://`` (the serving payload log, ``<sink>/model=<name>/date=<day>/*.jsonl``, is such a folder), optionally
joined with an outcomes table on a key (``request_id``): outcomes usually arrive later than the predictions.

Two tests, two-sided, treatment (challenger) minus control (stable):

- ``continuous`` outcomes: Welch's t-test (unequal variances; Welch-Satterthwaite degrees of freedom); effect
  size Cohen's d (difference over the pooled standard deviation); confidence interval from the t distribution.
- ``conversion`` outcomes (0/1 or true/false): the two-proportion z-test (pooled standard error for the test,
  unpooled for the confidence interval); effect size Cohen's h (``2 asin sqrt p2 - 2 asin sqrt p1``).
- ``auto``: conversion when every outcome is 0 or 1, else continuous.

Power (normal approximation, equal allocation): the minimum detectable effect (MDE) for the sample sizes
observed, and the sample per variant needed to detect the observed effect (and the ``minimum_detectable_effect``
asked for, when given) at ``alpha`` and ``power``. For conversions both go through Cohen's h, so an MDE is a rate
difference from the control's rate.

Verdicts:

- ``insufficient sample``: the test cannot be run validly (fewer than 2 outcomes in a variant; no variance at
  all; for conversions, fewer than 5 expected successes or failures per variant at the pooled rate), or the
  difference is not significant while the sample is too small to detect the ``minimum_detectable_effect`` asked
  for (then "no difference" would be a claim the data cannot back);
- ``challenger better`` / ``challenger worse``: ``p < alpha``, by the sign of the difference and
  ``higher_is_better``;
- ``no significant difference``: otherwise. Without a ``minimum_detectable_effect`` a warning says when the
  sample is too small for the effect observed.

Missing outcomes (requests whose outcome is not known yet, or no row in the outcomes table) are left out and
counted. Bad input is a ``KfopsError`` naming the file, the column and the value.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfops.components.ab_analysis.reading import load_outcomes
from kfops.components.ab_analysis.statistics import (
    mde_continuous,
    mde_conversion,
    required_n_continuous,
    required_n_conversion,
    two_proportion_test,
    welch_test,
)
from kfops.components.contracts import KfopsError

log = logging.getLogger(__name__)

CONVERSION = "conversion"
CONTINUOUS = "continuous"
AUTO = "auto"
# A regression model's variants compared on their errors: per row |prediction - outcome| or its square, Welch's
# t-test on those, lower better (the mean squared error's comparison; the mean absolute error's).
ABSOLUTE_ERROR = "absolute_error"
SQUARED_ERROR = "squared_error"
ERROR_KINDS = (ABSOLUTE_ERROR, SQUARED_ERROR)
METRIC_KINDS = (CONVERSION, CONTINUOUS, AUTO, *ERROR_KINDS)
PREDICTION_COLUMN = "prediction"

BETTER = "challenger better"
WORSE = "challenger worse"
NO_DIFFERENCE = "no significant difference"
INSUFFICIENT = "insufficient sample"
VERDICTS = (BETTER, WORSE, NO_DIFFERENCE, INSUFFICIENT)

DEFAULT_CONTROL = "stable"
DEFAULT_TREATMENT = "challenger"
MIN_EXPECTED_COUNT = 5  # successes and failures per variant at the pooled rate, for the normal approximation


# ---------------------------------------------------------------------------------------------------- analysis
@dataclass
class VariantSummary:
    name: str
    n: int
    mean: float  # the conversion rate for conversions
    std: float  # sample standard deviation (ddof=1); sqrt(p(1-p)) for conversions
    successes: int | None = None  # conversions only


@dataclass
class ABResult:
    """Everything the A/B analysis found, with a JSON round trip."""

    metric: str
    test: str
    control: VariantSummary
    treatment: VariantSummary
    difference: float | None
    relative_difference: float | None
    effect_size: float | None
    effect_size_name: str
    ci_low: float | None
    ci_high: float | None
    statistic: float | None
    df: float | None
    p_value: float | None
    alpha: float
    power: float
    higher_is_better: bool
    minimum_detectable_effect: float | None  # at the observed sample sizes
    required_n_observed: float | None  # per variant, to detect the observed difference
    target_effect: float | None  # the minimum_detectable_effect asked for
    required_n_target: float | None  # per variant, to detect target_effect
    verdict: str
    message: str
    variant_column: str
    outcome_column: str
    source: str
    rows_without_outcome: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        return 1 - self.alpha

    def to_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ABResult:
        data = dict(data)
        data["control"] = VariantSummary(**data["control"])
        data["treatment"] = VariantSummary(**data["treatment"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ABResult:
        return cls.from_dict(json.loads(text))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _check_options(metric: str, alpha: float, power: float, mde: float | None, control: str, treatment: str) -> None:
    if metric not in METRIC_KINDS:
        raise KfopsError(f"A/B metric must be one of {', '.join(METRIC_KINDS)}, got {metric!r}")
    for name, value in (("alpha", alpha), ("power", power)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
            raise KfopsError(f"A/B {name} must be a number between 0 and 1 (exclusive), got {value!r}")
    if mde is not None and (isinstance(mde, bool) or not isinstance(mde, int | float) or not 0 < mde < math.inf):
        raise KfopsError(f"A/B minimum detectable effect must be a positive number, got {mde!r}")
    if not str(control).strip() or not str(treatment).strip() or str(control) == str(treatment):
        raise KfopsError(f"A/B needs two different variant names, got control={control!r} treatment={treatment!r}")


def _variants(frame: pd.DataFrame, column: str, source: str, control: str, treatment: str) -> pd.Series:
    raw = frame[column]
    text = raw.astype("string").str.strip()
    # Version numbers read from CSV or JSON may be 3 or 3.0: name them as they were logged, "3".
    numeric = pd.to_numeric(raw, errors="coerce")
    whole = numeric.notna() & (numeric == numeric.round()) & ~raw.map(lambda v: isinstance(v, str))
    text = text.mask(whole, numeric[whole].astype("int64").astype("string"))
    empty = text.isna() | (text == "")
    if empty.any():
        first = int(np.flatnonzero(empty.to_numpy())[0])
        raise KfopsError(
            f"{source}: variant column '{column}' is empty in {int(empty.sum())} row(s) (first at row {first}); "
            "every row must name the variant that served it"
        )
    found = sorted(text.unique().tolist())
    expected = {str(control), str(treatment)}
    if set(found) != expected:
        if len(found) != 2:
            raise KfopsError(
                f"{source}: A/B analysis compares exactly two variants, '{control}' and '{treatment}'; "
                f"variant column '{column}' has {len(found)}: {', '.join(repr(v) for v in found)}"
            )
        raise KfopsError(
            f"{source}: variant column '{column}' has {', '.join(repr(v) for v in found)}, not '{control}' and "
            f"'{treatment}': name the control and the treatment (--control/--treatment)"
        )
    return text


def _errors(
    frame: pd.DataFrame, outcomes: pd.Series, known: pd.Series, metric: str, source: str
) -> tuple[pd.Series, pd.Series]:
    """Each row's error of the logged prediction against its outcome (a regression's A/B test)."""
    if PREDICTION_COLUMN not in frame.columns:
        raise KfopsError(
            f"{source}: metric {metric} compares predictions with outcomes, but there is no '{PREDICTION_COLUMN}' "
            f"column; its columns: {', '.join(map(str, frame.columns))}"
        )
    predicted = pd.to_numeric(frame[PREDICTION_COLUMN], errors="coerce")
    bad = predicted.isna() & frame[PREDICTION_COLUMN].notna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise KfopsError(
            f"{source}: metric {metric} needs numeric predictions (a regression's), but '{PREDICTION_COLUMN}' holds "
            f"{frame[PREDICTION_COLUMN].iloc[first]!r} (row {first})"
        )
    error = (predicted - outcomes).abs()
    if metric == SQUARED_ERROR:
        error = error**2
    return error, known & predicted.notna()


def _outcomes(frame: pd.DataFrame, column: str, source: str) -> tuple[pd.Series, pd.Series]:
    """The outcome column as floats, and the mask of rows that have one."""
    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw):
        values = raw.astype(float)
    else:
        as_text = raw.astype("string").str.strip().str.lower()
        mapped = as_text.map(
            lambda v: 1.0 if v in ("true", "yes") else 0.0 if v in ("false", "no") else None, na_action="ignore"
        )
        numeric = pd.to_numeric(raw.where(mapped.isna()), errors="coerce")
        values = pd.Series(np.where(mapped.notna(), mapped, numeric), index=raw.index, dtype=float)
        blank = raw.isna() | (as_text == "")
        bad = values.isna() & ~blank
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise KfopsError(
                f"{source}: outcome column '{column}' has a value that is not a number or true/false: "
                f"{raw.iloc[first]!r} (row {first}; {int(bad.sum())} such row(s))"
            )
    infinite = np.isinf(values.to_numpy())
    if infinite.any():
        first = int(np.flatnonzero(infinite)[0])
        raise KfopsError(f"{source}: outcome column '{column}' has an infinite value {raw.iloc[first]!r} (row {first})")
    return values, values.notna()


def analyze_ab(
    frame: pd.DataFrame,
    variant_column: str = "variant",
    outcome_column: str = "outcome",
    metric: str = AUTO,
    alpha: float = 0.05,
    power: float = 0.8,
    control: str = DEFAULT_CONTROL,
    treatment: str = DEFAULT_TREATMENT,
    minimum_detectable_effect: float | None = None,
    higher_is_better: bool = True,
    source: str = "data",
    rows_without_outcome: int = 0,
) -> ABResult:
    """Compare the treatment's outcomes with the control's: the test, effect, interval, power and verdict."""
    _check_options(metric, alpha, power, minimum_detectable_effect, control, treatment)
    control, treatment = str(control), str(treatment)
    for column in (variant_column, outcome_column):
        if column not in frame.columns:
            raise KfopsError(
                f"{source} has no column '{column}'; its columns: {', '.join(map(str, frame.columns)) or 'none'}"
            )
    variants = _variants(frame, variant_column, source, control, treatment)
    values, known = _outcomes(frame, outcome_column, source)
    if metric in ERROR_KINDS:
        values, known = _errors(frame, values, known, metric, source)
        higher_is_better = False
    missing = int((~known).sum())
    warnings: list[str] = []
    if missing:
        warnings.append(f"{missing} row(s) have no outcome in column '{outcome_column}' and were left out")
    if rows_without_outcome:
        warnings.append(f"{rows_without_outcome} logged row(s) had no matching outcome and were left out")
    a = values[known & (variants == control)].to_numpy()
    b = values[known & (variants == treatment)].to_numpy()
    for name, sample in ((control, a), (treatment, b)):
        if len(sample) == 0:
            raise KfopsError(f"{source}: variant '{name}' has no rows with an outcome in column '{outcome_column}'")

    binary = bool(np.isin(np.concatenate([a, b]), (0.0, 1.0)).all())
    kind = (CONVERSION if binary else CONTINUOUS) if metric == AUTO else metric
    kind = CONTINUOUS if kind in ERROR_KINDS else kind
    if metric in ERROR_KINDS:
        warnings.append(f"compared on each row's {metric.replace('_', ' ')} of '{PREDICTION_COLUMN}': lower is better")
    if kind == CONVERSION and not binary:
        odd = next(v for v in np.concatenate([a, b]) if v not in (0.0, 1.0))
        raise KfopsError(
            f"{source}: a conversion outcome must be 0/1 or true/false, but column '{outcome_column}' holds {odd:g}"
        )
    summaries = [_summary(name, sample, kind) for name, sample in ((control, a), (treatment, b))]
    result = ABResult(
        metric=kind,
        test="Welch's t-test" if kind == CONTINUOUS else "two-proportion z-test",
        control=summaries[0],
        treatment=summaries[1],
        difference=None,
        relative_difference=None,
        effect_size=None,
        effect_size_name="Cohen's d" if kind == CONTINUOUS else "Cohen's h",
        ci_low=None,
        ci_high=None,
        statistic=None,
        df=None,
        p_value=None,
        alpha=float(alpha),
        power=float(power),
        higher_is_better=bool(higher_is_better),
        minimum_detectable_effect=None,
        required_n_observed=None,
        target_effect=None if minimum_detectable_effect is None else float(minimum_detectable_effect),
        required_n_target=None,
        verdict=INSUFFICIENT,
        message="",
        variant_column=variant_column,
        outcome_column=outcome_column,
        source=source,
        rows_without_outcome=rows_without_outcome + missing,
        warnings=warnings,
    )
    c, t = result.control, result.treatment
    result.difference = t.mean - c.mean
    result.relative_difference = result.difference / abs(c.mean) if c.mean else None
    invalid = _why_untestable(kind, c, t)
    if invalid:
        result.message = f"insufficient sample: {invalid}"
        result.warnings.append(invalid)
        return result

    if kind == CONTINUOUS:
        test = welch_test(a, b, alpha)
        result.minimum_detectable_effect = mde_continuous(c.n, t.n, c.std, t.std, alpha, power)
        result.required_n_observed = required_n_continuous(test.difference, c.std, t.std, alpha, power)
        if minimum_detectable_effect is not None:
            result.required_n_target = required_n_continuous(minimum_detectable_effect, c.std, t.std, alpha, power)
    else:
        test = two_proportion_test(c.successes, c.n, t.successes, t.n, alpha)
        result.minimum_detectable_effect = mde_conversion(c.n, t.n, c.mean, alpha, power)
        result.required_n_observed = required_n_conversion(c.mean, test.difference, alpha, power)
        if minimum_detectable_effect is not None:
            result.required_n_target = required_n_conversion(c.mean, minimum_detectable_effect, alpha, power)
    result.statistic, result.p_value, result.df = test.statistic, test.p_value, test.df
    result.ci_low, result.ci_high, result.effect_size = test.ci_low, test.ci_high, test.effect_size

    smaller = min(c.n, t.n)
    significant = test.p_value < alpha
    underpowered_target = result.required_n_target is not None and smaller < result.required_n_target
    if significant:
        better = (test.difference > 0) == higher_is_better
        result.verdict = BETTER if better else WORSE
    elif underpowered_target:
        result.verdict = INSUFFICIENT
    else:
        result.verdict = NO_DIFFERENCE
    if not significant and result.required_n_observed is not None and smaller < result.required_n_observed:
        needed = _n_text(result.required_n_observed)
        result.warnings.append(
            f"the sample is too small to detect the observed difference of {_num(test.difference)}: that needs "
            f"{needed} per variant at alpha {alpha:g} and power {power:g}; the smaller variant has {smaller:,}"
        )
    if underpowered_target and not significant:
        result.warnings.append(
            f"the sample is too small to detect the minimum effect asked for, {_num(minimum_detectable_effect)}: "
            f"that needs {_n_text(result.required_n_target)} per variant; the smaller variant has {smaller:,} "
            f"(detectable now: {_num(result.minimum_detectable_effect)})"
        )
    result.message = _message(result)
    return result


def _summary(name: str, sample: np.ndarray, kind: str) -> VariantSummary:
    n = len(sample)
    mean = float(sample.mean())
    if kind == CONVERSION:
        return VariantSummary(name, n, mean, math.sqrt(mean * (1 - mean)), round(float(sample.sum())))
    return VariantSummary(name, n, mean, float(sample.std(ddof=1)) if n > 1 else math.nan)


def _why_untestable(kind: str, c: VariantSummary, t: VariantSummary) -> str:
    if kind == CONTINUOUS:
        small = [v for v in (c, t) if v.n < 2]
        if small:
            return ", ".join(f"variant '{v.name}' has {v.n} outcome(s)" for v in small) + "; each needs at least 2"
        if c.std == 0 and t.std == 0:
            return "every outcome within each variant is the same: there is no variance to test against"
        return ""
    pooled = (c.successes + t.successes) / (c.n + t.n)
    for v in (c, t):
        expected = min(v.n * pooled, v.n * (1 - pooled))
        if expected < MIN_EXPECTED_COUNT:
            return (
                f"variant '{v.name}' has {v.n} outcome(s): at the pooled rate {pooled:.4f} it expects "
                f"{expected:.1f} successes or failures, fewer than the {MIN_EXPECTED_COUNT} the z-test needs"
            )
    return ""


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _n_text(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "an unbounded sample" if math.isinf(value) else f"{math.ceil(value):,}"


def _message(r: ABResult) -> str:
    rel = "" if r.relative_difference is None else f" ({r.relative_difference * 100:+.2f}%)"
    what = "rate" if r.metric == CONVERSION else "mean"
    return (
        f"{r.verdict}: {r.outcome_column} {what} {r.treatment.name} {_num(r.treatment.mean)} vs {r.control.name} "
        f"{_num(r.control.mean)}, difference {_num(r.difference)}{rel}, {r.confidence * 100:g}% CI "
        f"[{_num(r.ci_low)}, {_num(r.ci_high)}], p = {_num(r.p_value)} ({r.test})"
    )


def ab_markdown(r: ABResult) -> str:
    """The report: per-variant numbers, the test, the effect, the power figures and the verdict."""
    what = "conversion rate" if r.metric == CONVERSION else "mean"
    lines = [
        f"# A/B analysis: {r.outcome_column} by {r.variant_column}",
        "",
        f"**Verdict: {r.verdict}**",
        "",
        f"Data: {r.source}  ",
        f"Metric: {r.metric} ({r.test}), two-sided, alpha {r.alpha:g}, power {r.power:g}, "
        f"{'higher' if r.higher_is_better else 'lower'} is better",
        "",
        f"| variant | role | n | {what} | std |" + (" successes |" if r.metric == CONVERSION else ""),
        "|---|---|---:|---:|---:|" + ("---:|" if r.metric == CONVERSION else ""),
    ]
    for role, v in (("control", r.control), ("treatment", r.treatment)):
        row = f"| {v.name} | {role} | {v.n:,} | {_num(v.mean)} | {_num(v.std)} |"
        lines.append(row + (f" {v.successes:,} |" if r.metric == CONVERSION else ""))
    rel = "n/a" if r.relative_difference is None else f"{r.relative_difference * 100:+.2f}%"
    lines += [
        "",
        "| | value |",
        "|---|---:|",
        f"| difference ({r.treatment.name} - {r.control.name}) | {_num(r.difference)} |",
        f"| relative difference | {rel} |",
        f"| {r.confidence * 100:g}% confidence interval | [{_num(r.ci_low)}, {_num(r.ci_high)}] |",
        f"| {r.effect_size_name} | {_num(r.effect_size)} |",
        f"| {'t' if r.metric == CONTINUOUS else 'z'} statistic | {_num(r.statistic)} |",
    ]
    if r.df is not None:
        lines.append(f"| degrees of freedom | {r.df:.1f} |")
    lines += [
        f"| p-value | {_num(r.p_value)} |",
        f"| minimum detectable effect at this sample | {_num(r.minimum_detectable_effect)} |",
        f"| sample per variant to detect the observed difference | {_n_text(r.required_n_observed)} |",
    ]
    if r.target_effect is not None:
        lines.append(
            f"| sample per variant to detect {_num(r.target_effect)} (asked for) | {_n_text(r.required_n_target)} |"
        )
    lines += ["", r.message, ""]
    if r.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in r.warnings] + [""]
    return "\n".join(lines)


def run_ab_analysis(
    data_uri: str,
    variant_column: str,
    outcome_column: str,
    metric: str = AUTO,
    alpha: float = 0.05,
    power: float = 0.8,
    control: str = DEFAULT_CONTROL,
    treatment: str = DEFAULT_TREATMENT,
    minimum_detectable_effect: float | None = None,
    higher_is_better: bool = True,
    outcomes_uri: str = "",
    join_on: str = "request_id",
    data_format: str = "auto",
    report_path: str | Path | None = None,
    result_path: str | Path | None = None,
) -> ABResult:
    """Load, join, analyse; write the Markdown report and the JSON result when paths are given."""
    frame, source, unmatched = load_outcomes(data_uri, outcomes_uri, join_on, data_format)
    result = analyze_ab(
        frame,
        variant_column=variant_column,
        outcome_column=outcome_column,
        metric=metric,
        alpha=alpha,
        power=power,
        control=control,
        treatment=treatment,
        minimum_detectable_effect=minimum_detectable_effect,
        higher_is_better=higher_is_better,
        source=source,
        rows_without_outcome=unmatched,
    )
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(ab_markdown(result), encoding="utf-8")
    if result_path:
        Path(result_path).parent.mkdir(parents=True, exist_ok=True)
        Path(result_path).write_text(result.to_json(), encoding="utf-8")
    log.info("%s", result.message)
    return result
