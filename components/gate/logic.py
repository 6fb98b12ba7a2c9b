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

A change threshold compares the candidate with the current champion, re-scored on the candidate's test split
so both are measured on the same rows. For a higher-is-better metric the candidate passes when
``candidate - champion >= absolute`` (and ``(candidate - champion) / |champion| >= relative``); for a
lower-is-better one when the change is at most the bound. With no champion yet, change thresholds are skipped
and the blessing says so; with no thresholds at all the gate refuses to bless.
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
    Blessing,
    KfopsError,
    MetricCheck,
)

log = logging.getLogger(__name__)

# The reference document's deployment gate, plus "no worse than the champion by more than a point of macro F1"
# on the same test rows, since a blessed model replaces the champion.
DEFAULT_THRESHOLDS: dict[str, dict[str, Any]] = {
    "accuracy": {"lower": 0.90},
    "f1_macro": {"lower": 0.85, "change": {"absolute": -0.01}},
    "precision_macro": {"lower": 0.85},
    "recall_macro": {"lower": 0.85},
}
RULE_KEYS = {"lower", "upper", "change"}
CHANGE_KEYS = {"absolute", "relative", "direction"}


@dataclass
class Rule:
    metric: str
    lower: float | None = None
    upper: float | None = None
    absolute: float | None = None
    relative: float | None = None
    higher_is_better: bool = True

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
            raise KfopsError(f"thresholds: {metric} needs lower, upper and/or change, got {rule!r}")
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise KfopsError(f"thresholds: {metric} has unknown field(s) {sorted(unknown)}; use lower, upper, change")
        parsed = Rule(metric=metric, higher_is_better=HIGHER_IS_BETTER[metric])
        if rule.get("lower") is not None:
            parsed.lower = _number(rule["lower"], f"{metric}.lower")
        if rule.get("upper") is not None:
            parsed.upper = _number(rule["upper"], f"{metric}.upper")
        if parsed.lower is not None and parsed.upper is not None and parsed.lower > parsed.upper:
            raise KfopsError(f"thresholds: {metric}.lower {parsed.lower} is above its upper {parsed.upper}")
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
) -> Blessing:
    """Check every rule; blessed when there is at least one rule and none fails."""
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
        blessed=not failed, candidate=candidate_id, baseline_version=baseline_version, checks=checks, message=message
    )


def champion_metrics(model_name: str, test_path: str) -> tuple[str, dict[str, float] | None, str]:
    """The champion's version and its metrics re-scored on ``test_path`` (or its recorded ones, with a note).

    Returns ("", None, "") when the model has no champion yet.
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
            result, _ = evaluate_model(local, test_path)
        # Re-scoring gives no validation loss: the champion's own, as recorded, stands in for it.
        recorded = _recorded_metrics(champion)
        metrics = {k: (recorded.get(k, v) if _finite(v) is None else v) for k, v in result.metrics.items()}
        return version, metrics, ""
    except (KfopsError, MlflowException, OSError) as err:
        recorded = _recorded_metrics(champion)
        note = f"champion v{version} could not score this test split ({err}); its recorded metrics were used"
        log.warning(note)
        return version, recorded, note


def _recorded_metrics(version) -> dict[str, float]:
    """The test metrics register wrote on a model version's tags."""
    out = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(TAG_METRIC_PREFIX) and _finite(value) is not None:
            out[key[len(TAG_METRIC_PREFIX) :]] = float(value)
    return out


def run_gate(
    evaluation: dict[str, float],
    test_path: str,
    thresholds: dict[str, Any] | None,
    model_name: str,
    candidate_id: str = "",
) -> Blessing:
    """Judge the candidate's metrics against the thresholds and the current champion of ``model_name``."""
    rules = parse_thresholds(thresholds)
    needs_baseline = any(r.has_change for r in rules)
    version, baseline, note = champion_metrics(model_name, test_path) if needs_baseline else ("", None, "")
    return judge(evaluation, rules, baseline, candidate_id=candidate_id, baseline_version=version, baseline_note=note)


def blessing_markdown(blessing: Blessing) -> str:
    """The verdict as the Kubeflow UI shows it: a headline and the per-metric table."""
    head = "Blessed" if blessing.blessed else "Not blessed"
    lines = [f"# {head}", "", blessing.message, ""]
    if blessing.baseline_version:
        lines += [f"Compared with champion version {blessing.baseline_version}.", ""]
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
