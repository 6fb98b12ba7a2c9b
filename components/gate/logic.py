"""Gate: bless a candidate model, or refuse to, with the semantics TFX's Evaluator proved out.

Thresholds, per metric (names from ``contracts.METRIC_NAMES``)::

    thresholds:
      accuracy:        {lower: 0.90}                 # value threshold: a floor
      val_loss:        {upper: 0.05}                 # ... or a ceiling
      f1_macro:
        lower: 0.85
        change: {absolute: -0.01}                    # change threshold against the champion
      roc_auc:
        change: {relative: -0.02, direction: higher} # direction defaults to the metric's own
      balanced_accuracy:
        baseline: {absolute: 0.05}                   # margin over the naive class-prior baseline

A change threshold compares the candidate with the current champion, re-scored on the candidate's test split
so both are measured on the same rows. For a higher-is-better metric the candidate passes when
``candidate - champion >= absolute`` (and ``(candidate - champion) / |champion| >= relative``); for a
lower-is-better one when the change is at most the bound. With no champion yet, change thresholds are skipped
and the blessing says so; with no thresholds at all the gate refuses to bless.

A baseline threshold compares the candidate with the naive class-prior baseline on the same test rows (every row
scored with the training positive rate: ROC-AUC 0.5, balanced accuracy 0.5): the candidate passes when it beats the
baseline by at least ``absolute`` after taking off 1.645 standard errors of the metric on those rows (Hanley and
McNeil's for ROC-AUC, binomial for balanced accuracy), so a chance lift on a handful of positives is no lift. The
defaults (``DEFAULT_THRESHOLDS``) ask for that on ROC-AUC and balanced accuracy, which a good model on any data
meets and a model of noise does not, whatever the class balance; fixed floors such as the reference document's
(``REFERENCE_THRESHOLDS``, ``examples/thresholds/reference.yaml``) suit one known dataset, and the bundled fraud
demo keeps them.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfops.components import storage
from kfops.components.contracts import (
    ALIAS_CHAMPION,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    TAG_METRIC_PREFIX,
    TASK_BINARY,
    TASK_METRIC_NAMES,
    TASK_MULTICLASS,
    TASK_REGRESSION,
    Blessing,
    FeatureSpec,
    KfopsError,
    MetricCheck,
)

log = logging.getLogger(__name__)

# With no thresholds given: beat the naive baseline by 0.05 on ranking (ROC-AUC) and on decisions (balanced
# accuracy), and be no worse than the champion by more than a point of macro F1 on the same test rows, since a
# blessed model replaces the champion.
DEFAULT_THRESHOLDS: dict[str, dict[str, Any]] = {
    "roc_auc": {"baseline": {"absolute": 0.05}},
    "balanced_accuracy": {"baseline": {"absolute": 0.05}},
    "f1_macro": {"change": {"absolute": -0.01}},
}
# The same defaults for the other tasks: balanced accuracy 0.05 above the prior's 1/k and no more than a point of
# macro F1 below the champion (multiclass); R² 0.05 above the mean predictor's (about 0) and an RMSE at most 1%
# above the champion's (regression).
TASK_DEFAULT_THRESHOLDS: dict[str, dict[str, dict[str, Any]]] = {
    TASK_BINARY: DEFAULT_THRESHOLDS,
    TASK_MULTICLASS: {
        "balanced_accuracy": {"baseline": {"absolute": 0.05}},
        "f1_macro": {"change": {"absolute": -0.01}},
    },
    TASK_REGRESSION: {"r2": {"baseline": {"absolute": 0.05}}, "rmse": {"change": {"relative": 0.01}}},
}
# The reference document's deployment gate (fixed floors for the fraud data), plus the same champion check.
REFERENCE_THRESHOLDS: dict[str, dict[str, Any]] = {
    "accuracy": {"lower": 0.90},
    "f1_macro": {"lower": 0.85, "change": {"absolute": -0.01}},
    "precision_macro": {"lower": 0.85},
    "recall_macro": {"lower": 0.85},
}
RULE_KEYS = {"lower", "upper", "change", "baseline"}
CHANGE_KEYS = {"absolute", "relative", "direction"}


class NotComparable(KfopsError):
    """The champion under this name is another model (other columns or target): no baseline for the candidate."""


@dataclass
class Rule:
    metric: str
    lower: float | None = None
    upper: float | None = None
    absolute: float | None = None
    relative: float | None = None
    higher_is_better: bool = True
    margin: float | None = None  # over the naive baseline

    @property
    def has_change(self) -> bool:
        return self.absolute is not None or self.relative is not None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise KfopsError(f"thresholds: {where} must be a number, got {value!r}")
    return float(value)


def parse_thresholds(config: dict[str, Any] | None) -> list[Rule]:
    """Check a thresholds mapping (bare, or under a 'thresholds' key) and turn it into rules."""
    if config is None:
        return []
    if not isinstance(config, dict):
        raise KfopsError(f"thresholds must be a mapping of metric name to rule, got {type(config).__name__}")
    if set(config) == {"thresholds"}:
        config = config["thresholds"] or {}
    rules = []
    for metric, rule in config.items():
        if metric not in METRIC_NAMES:
            raise KfopsError(
                f"thresholds: '{metric}' is not a metric the evaluation produces; it produces {', '.join(METRIC_NAMES)}"
            )
        if not isinstance(rule, dict) or not rule:
            raise KfopsError(f"thresholds: {metric} needs lower, upper, change and/or baseline, got {rule!r}")
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise KfopsError(
                f"thresholds: {metric} has unknown field(s) {sorted(unknown)}; use lower, upper, change, baseline"
            )
        parsed = Rule(metric=metric, higher_is_better=HIGHER_IS_BETTER[metric])
        if rule.get("lower") is not None:
            parsed.lower = _number(rule["lower"], f"{metric}.lower")
        if rule.get("upper") is not None:
            parsed.upper = _number(rule["upper"], f"{metric}.upper")
        if parsed.lower is not None and parsed.upper is not None and parsed.lower > parsed.upper:
            raise KfopsError(f"thresholds: {metric}.lower {parsed.lower} is above its upper {parsed.upper}")
        naive = rule.get("baseline")
        if naive is not None:
            if not isinstance(naive, dict) or set(naive) != {"absolute"}:
                raise KfopsError(f"thresholds: {metric}.baseline needs absolute (a margin), got {naive!r}")
            parsed.margin = _number(naive["absolute"], f"{metric}.baseline.absolute")
        change = rule.get("change")
        if change is not None:
            if not isinstance(change, dict) or not ({"absolute", "relative"} & set(change)):
                raise KfopsError(f"thresholds: {metric}.change needs absolute and/or relative, got {change!r}")
            unknown = set(change) - CHANGE_KEYS
            if unknown:
                raise KfopsError(f"thresholds: {metric}.change has unknown field(s) {sorted(unknown)}")
            if "absolute" in change:
                parsed.absolute = _number(change["absolute"], f"{metric}.change.absolute")
            if "relative" in change:
                parsed.relative = _number(change["relative"], f"{metric}.change.relative")
            direction = change.get("direction")
            if direction is not None:
                if direction not in ("higher", "lower"):
                    raise KfopsError(
                        f"thresholds: {metric}.change.direction must be 'higher' or 'lower', got {direction!r}"
                    )
                parsed.higher_is_better = direction == "higher"
        rules.append(parsed)
    return rules


def load_thresholds(uri: str) -> dict[str, Any]:
    """Thresholds from a YAML or JSON file (local path or s3:// URI)."""
    import yaml

    try:
        data = yaml.safe_load(storage.read_bytes(uri).decode("utf-8"))
    except FileNotFoundError as err:
        raise KfopsError(f"thresholds file {uri} does not exist") from err
    except yaml.YAMLError as err:
        raise KfopsError(f"thresholds file {uri} is not valid YAML/JSON: {err}") from err
    parse_thresholds(data)
    return data if set(data or {}) != {"thresholds"} else data["thresholds"]


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def judge(
    candidate: dict[str, float],
    rules: list[Rule],
    baseline: dict[str, float] | None = None,
    candidate_id: str = "",
    baseline_version: str = "",
    baseline_note: str = "",
    naive: dict[str, float] | None = None,
) -> Blessing:
    """Check every rule; blessed when there is at least one rule and none fails. ``baseline`` holds the
    champion's metrics, ``naive`` the class-prior baseline's, both on the candidate's test rows."""
    if not rules:
        return Blessing(
            blessed=False,
            candidate=candidate_id,
            baseline_version=baseline_version,
            message="not blessed: no thresholds are configured, and the gate never blesses blind",
        )
    checks: list[MetricCheck] = []
    for rule in rules:
        value = _finite(candidate.get(rule.metric))
        if value is None:
            checks.append(
                MetricCheck(
                    rule.metric,
                    None,
                    "fail",
                    rule.lower,
                    rule.upper,
                    reason=f"the evaluation has no value for {rule.metric}",
                )
            )
            continue
        if rule.lower is not None or rule.upper is not None:
            ok = (rule.lower is None or value >= rule.lower) and (rule.upper is None or value <= rule.upper)
            bound = " and ".join(
                filter(
                    None,
                    [
                        f">= {rule.lower:g}" if rule.lower is not None else "",
                        f"<= {rule.upper:g}" if rule.upper is not None else "",
                    ],
                )
            )
            checks.append(
                MetricCheck(
                    rule.metric,
                    value,
                    "pass" if ok else "fail",
                    rule.lower,
                    rule.upper,
                    reason=f"value {value:.4f} {'meets' if ok else 'misses'} {bound}",
                )
            )
        if rule.margin is not None:
            checks.append(_naive_check(rule, value, naive, candidate))
        if rule.has_change:
            base = _finite((baseline or {}).get(rule.metric))
            if baseline is None or base is None:
                why = "no champion yet" if baseline is None else f"the champion has no {rule.metric}"
                checks.append(MetricCheck(rule.metric, value, "skipped", reason=f"change threshold skipped: {why}"))
                continue
            diff = value - base
            relative = diff / abs(base) if base else math.inf if diff > 0 else -math.inf if diff < 0 else 0.0
            sign = 1.0 if rule.higher_is_better else -1.0
            parts, ok = [], True
            if rule.absolute is not None:
                good = sign * diff >= sign * rule.absolute
                ok &= good
                parts.append(f"change {diff:+.4f} {'>=' if sign > 0 else '<='} {rule.absolute:+g}")
            if rule.relative is not None:
                good = sign * relative >= sign * rule.relative
                ok &= good
                parts.append(f"relative change {relative:+.2%} {'>=' if sign > 0 else '<='} {rule.relative:+.2%}")
            checks.append(
                MetricCheck(
                    rule.metric,
                    value,
                    "pass" if ok else "fail",
                    baseline=base,
                    change=diff,
                    reason=f"vs champion {base:.4f}: " + "; ".join(parts) + ("" if ok else " (failed)"),
                )
            )
    failed = [c for c in checks if c.verdict == "fail"]
    skipped = [c for c in checks if c.verdict == "skipped"]
    if failed:
        message = "not blessed: " + "; ".join(f"{c.metric} {c.reason}" for c in failed)
    else:
        message = f"blessed: {len(checks) - len(skipped)} check(s) passed"
        if skipped:
            message += f", {len(skipped)} change check(s) skipped ({skipped[0].reason.split(': ', 1)[1]})"
    if baseline_note:
        message += f" [{baseline_note}]"
    return Blessing(
        blessed=not failed,
        candidate=candidate_id,
        baseline_version=baseline_version,
        checks=checks,
        message=message,
        naive_baseline={k: v for k, v in (naive or {}).items() if _finite(v) is not None},
    )


# One-sided 95%: a lift over the naive baseline counts only when it stands clear of the test set's noise.
NAIVE_LIFT_Z = 1.645


def _test_rows(naive: dict[str, float], joiner: str = " and ") -> str:
    """The test rows the naive baseline was scored on, in words."""
    from kfops.components.scoring import CLASSES_KEY, NEGATIVES_KEY, POSITIVES_KEY, ROWS_KEY

    if POSITIVES_KEY in naive and NEGATIVES_KEY in naive:
        return f"{int(naive[POSITIVES_KEY])} positive{joiner}{int(naive[NEGATIVES_KEY])} negative rows"
    if CLASSES_KEY in naive:
        return f"{int(naive.get(ROWS_KEY, 0))} rows of {int(naive[CLASSES_KEY])} classes"
    return f"{int(naive.get(ROWS_KEY, 0))} rows"


def _naive_check(rule: Rule, value: float, naive: dict[str, float] | None, candidate: dict[str, float]) -> MetricCheck:
    from kfops.components.scoring import standard_error

    base = _finite((naive or {}).get(rule.metric))
    if base is None:
        return MetricCheck(rule.metric, value, "fail", reason="the naive baseline has no value to compare with")
    diff = value - base
    sign = 1.0 if rule.higher_is_better else -1.0
    error = standard_error(rule.metric, candidate, naive or {}) or 0.0
    lift = sign * diff - NAIVE_LIFT_Z * error
    ok = lift >= rule.margin
    noise = f" less {NAIVE_LIFT_Z:g} x {error:.4f} of noise on {_test_rows(naive or {})} = {lift:+.4f}" if error else ""
    return MetricCheck(
        rule.metric,
        value,
        "pass" if ok else "fail",
        change=diff,
        reason=f"vs naive baseline {base:.4f}: margin {sign * diff:+.4f}{noise} {'>=' if ok else '<'} {rule.margin:+g}",
    )


def champion_metrics(
    model_name: str, test_path: str, candidate_spec: FeatureSpec | None = None, rescore: bool = True
) -> tuple[str, dict[str, float] | None, str]:
    """The champion's version and its metrics re-scored on ``test_path`` (or its recorded ones, with a note).

    Returns ("", None, "") when the model has no champion yet, and no metrics unless ``rescore``. A champion
    trained on other columns or another target than ``candidate_spec`` is no baseline: that is another model
    under the same name, a KfopsError.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from kfops.components.scoring import evaluate_model

    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(model_name, ALIAS_CHAMPION)
    except MlflowException:
        return "", None, ""
    version = str(champion.version)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(model_name, version), dst_path=tmp
            )
            if candidate_spec is not None:
                _same_model(
                    model_name, version, FeatureSpec.load(Path(local, "artifacts", "feature_spec.json")), candidate_spec
                )
            result, _ = evaluate_model(local, test_path)
        # Re-scoring gives no validation loss: the champion's own, as recorded, stands in for it.
        recorded = _recorded_metrics(champion)
        metrics = {k: (recorded.get(k, v) if _finite(v) is None else v) for k, v in result.metrics.items()}
        return version, metrics, ""
    except NotComparable:
        raise
    except (KfopsError, MlflowException, OSError) as err:
        recorded = _recorded_metrics(champion)
        note = f"champion v{version} could not score this test split ({err}); its recorded metrics were used"
        log.warning(note)
        return version, recorded, note


def _same_model(model_name: str, version: str, champion: FeatureSpec, candidate: FeatureSpec) -> None:
    ours, theirs = set(candidate.feature_names), set(champion.feature_names)
    if candidate.target == champion.target and ours == theirs and candidate.task == champion.task:
        return
    what = []
    if candidate.task != champion.task:
        what.append(f"a {champion.task} target (this run: {candidate.task})")
    if candidate.target != champion.target:
        what.append(f"target '{champion.target}' (this run: '{candidate.target}')")
    if theirs - ours:
        what.append(f"features this run does not have {sorted(theirs - ours)[:8]}")
    if ours - theirs:
        what.append(f"no features {sorted(ours - theirs)[:8]} that this run has")
    raise NotComparable(
        f"gate: the champion of '{model_name}' (v{version}) was trained on other data: {'; '.join(what)}. It is no "
        f"baseline for this model: register this one under its own name (--model-name), or pass the same columns"
    )


def _recorded_metrics(version) -> dict[str, float]:
    """The test metrics register wrote on a model version's tags."""
    out = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(TAG_METRIC_PREFIX) and _finite(value) is not None:
            out[key[len(TAG_METRIC_PREFIX) :]] = float(value)
    return out


def thresholds_for_task(thresholds: dict[str, Any] | None, task: str) -> dict[str, Any] | None:
    """The thresholds a model of ``task`` is judged by: the pipeline's default (the binary defaults) becomes the
    task's own default; thresholds of the user's on metrics the task does not produce are an error naming them."""
    if not thresholds or task == TASK_BINARY:
        return thresholds
    body = thresholds["thresholds"] if set(thresholds) == {"thresholds"} else thresholds
    if body == DEFAULT_THRESHOLDS:
        return TASK_DEFAULT_THRESHOLDS[task]
    produced = TASK_METRIC_NAMES[task]
    foreign = sorted(set(body) - set(produced))
    if foreign:
        raise KfopsError(
            f"thresholds: a {task} model has no {', '.join(foreign)}; its metrics are {', '.join(produced)}"
        )
    return thresholds


def run_gate(
    evaluation: dict[str, float],
    test_path: str,
    thresholds: dict[str, Any] | None,
    model_name: str,
    candidate_id: str = "",
    model_dir: str = "",
) -> Blessing:
    """Judge the candidate's metrics against the thresholds, the current champion of ``model_name`` and the naive
    baseline (the last two re-scored on the candidate's test rows). ``model_dir`` is the candidate model's folder:
    its feature spec says what the naive baseline predicts and which champion is comparable."""
    from kfops.components.scoring import naive_baseline_metrics

    spec = FeatureSpec.load(Path(model_dir, "artifacts", "feature_spec.json")) if model_dir else None
    thresholds = thresholds_for_task(thresholds, spec.task if spec is not None else TASK_BINARY)
    rules = parse_thresholds(thresholds)
    # The champion check comes first even with no change rule: a run never silently replaces another model.
    version, baseline, note = champion_metrics(model_name, test_path, spec, rescore=any(r.has_change for r in rules))
    naive = None
    if any(r.margin is not None for r in rules):
        if not model_dir:
            raise KfopsError("gate: baseline thresholds need the candidate model (its feature spec)")
        naive = naive_baseline_metrics(model_dir, test_path)
    blessing = judge(
        evaluation,
        rules,
        baseline,
        candidate_id=candidate_id,
        baseline_version=version,
        baseline_note=note,
        naive=naive,
    )
    blessing.thresholds = thresholds or {}
    return blessing


def blessing_markdown(blessing: Blessing) -> str:
    """The verdict as the Kubeflow UI shows it: a headline and the per-metric table."""
    head = "Blessed" if blessing.blessed else "Not blessed"
    lines = [f"# {head}", "", blessing.message, ""]
    if blessing.baseline_version:
        lines += [f"Compared with champion version {blessing.baseline_version}.", ""]
    if blessing.naive_baseline:
        naive = blessing.naive_baseline
        scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(naive.items()) if k in METRIC_NAMES and k != "val_loss")
        from kfops.components.scoring import CLASSES_KEY, POSITIVES_KEY, ROWS_KEY

        kind = "mean-predictor" if "r2" in naive else "class-prior"
        rows = f" ({_test_rows(naive, ', ')})" if {POSITIVES_KEY, CLASSES_KEY, ROWS_KEY} & set(naive) else ""
        lines += [f"Naive {kind} baseline on the same rows{rows}: {scores}.", ""]
    if blessing.checks:
        lines += [
            "| metric | value | lower | upper | champion | change | verdict | why |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for c in blessing.checks:

            def fmt(v, spec=".4f"):
                return "" if v is None else format(v, spec)

            lines.append(
                f"| {c.metric} | {fmt(c.value)} | {fmt(c.lower, 'g')} | {fmt(c.upper, 'g')} | "
                f"{fmt(c.baseline)} | {fmt(c.change, '+.4f')} | {c.verdict} | {c.reason} |"
            )
    return "\n".join(lines) + "\n"


def write_blessing(blessing: Blessing, path: str | Path) -> None:
    Path(path).write_text(blessing.to_json(), encoding="utf-8")


def thresholds_json(thresholds: dict[str, Any]) -> str:
    """Thresholds as the pipeline parameter carries them: JSON text with sorted keys.

    A text parameter rather than a dict: the KFP compiler writes a dict default into the YAML's header in an
    order that changes from process to process, which would make the committed YAML never current.
    """
    return json.dumps(thresholds, sort_keys=True)


def thresholds_from_text(text: str) -> dict[str, Any]:
    """Parse the pipeline parameter (JSON or YAML text); empty means no thresholds."""
    import yaml

    if not text.strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise KfopsError(f"thresholds parameter is not valid JSON/YAML: {err}") from err
    parse_thresholds(data)
    return data if set(data or {}) != {"thresholds"} else data["thresholds"]
