"""Telling people: drift gauges pushed to a Prometheus Pushgateway, and a Slack-compatible webhook message.

Both are best effort by design: the drift result (JSON, Markdown, HTML) is the product and is written first; an
unreachable Pushgateway or webhook is logged as a warning, recorded in the result's ``notifications``, and the
monitor goes on (the CLI's exit code does not change). The Pushgateway's own ``push_time_seconds`` for the
group then goes stale, which the ``KfopsDriftMonitorStale`` alert (manifests/monitoring) catches.

Gauges (job ``kfops-monitor``, grouped by ``model``; each push replaces the group's previous metrics, so a
feature that is gone stops being reported):

- ``feature_drift_score{feature_name, stattest}``: the test's score (a p-value for ks, chisquare, z; a distance
  or divergence otherwise); absent for features with too little data.
- ``feature_drift_threshold{feature_name, stattest}`` and ``feature_drift_detected{feature_name}`` (0/1).
- ``prediction_drift_score{column, stattest}`` and ``prediction_drift_detected{column}`` for ``prediction`` and
  ``probability`` when both sides have them.
- ``dataset_drift_detected`` (0/1), ``dataset_drift_share``, ``dataset_drift_share_threshold``,
  ``dataset_drift_tested_features`` and ``dataset_drift_insufficient_data`` (1 when nothing could be tested).
"""

from __future__ import annotations

import logging
import urllib.error

from kfops.components import http
from kfops.components.contracts import KfopsError
from kfops.components.contracts.monitoring import VERDICT_INSUFFICIENT, DriftResult

log = logging.getLogger(__name__)

DEFAULT_JOB = "kfops-monitor"
TIMEOUT_SECONDS = 10.0


def drift_registry(result: DriftResult):
    """A fresh prometheus_client registry holding the result's gauges."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    score = Gauge(
        "feature_drift_score",
        "Drift score of a feature: p-value (ks, chisquare, z) or distance.",
        ["feature_name", "stattest"],
        registry=registry,
    )
    threshold = Gauge(
        "feature_drift_threshold",
        "Threshold of the feature's drift test.",
        ["feature_name", "stattest"],
        registry=registry,
    )
    detected = Gauge("feature_drift_detected", "1 when the feature drifted.", ["feature_name"], registry=registry)
    p_score = Gauge(
        "prediction_drift_score", "Drift score of a model output column.", ["column", "stattest"], registry=registry
    )
    p_detected = Gauge("prediction_drift_detected", "1 when a model output drifted.", ["column"], registry=registry)
    for item in result.features:
        if item.score is not None:
            score.labels(item.name, item.test).set(item.score)
        threshold.labels(item.name, item.test).set(item.threshold)
        detected.labels(item.name).set(1 if item.drift_detected else 0)
    for item in result.prediction_drift:
        if item.score is not None:
            p_score.labels(item.name, item.test).set(item.score)
        p_detected.labels(item.name).set(1 if item.drift_detected else 0)
    for name, help_text, value in (
        ("dataset_drift_detected", "1 when the share of drifted features reached the threshold.", result.dataset_drift),
        ("dataset_drift_share", "Share of tested features that drifted.", result.drift_share),
        ("dataset_drift_share_threshold", "Drift share at which the dataset drifts.", result.drift_share_threshold),
        ("dataset_drift_tested_features", "Features with enough data to be tested.", result.tested_features),
        (
            "dataset_drift_insufficient_data",
            "1 when no feature had enough data to be tested.",
            result.verdict == VERDICT_INSUFFICIENT,
        ),
    ):
        Gauge(name, help_text, registry=registry).set(float(value))
    return registry


def push_gauges(result: DriftResult, gateway: str, job: str = DEFAULT_JOB, model: str = "") -> str:
    """Push the gauges to ``gateway`` (``host:port`` or a URL) under ``job`` and ``model``; raise KfopsError
    when the Pushgateway cannot be reached or refuses them."""
    from prometheus_client import push_to_gateway

    group = {"model": model or result.model or "unknown"}
    try:
        push_to_gateway(gateway, job=job, registry=drift_registry(result), grouping_key=group, timeout=TIMEOUT_SECONDS)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise KfopsError(f"cannot push drift gauges to the Pushgateway at {gateway}: {err}") from err
    return f"pushed {len(result.features)} feature gauge(s) to {gateway} (job {job}, model {group['model']})"


def slack_message(result: DriftResult, report_url: str = "") -> dict:
    """The webhook body: Slack's ``{"text": ...}`` (Mattermost, Rocket.Chat and Teams' Slack-compatible
    endpoints read the same field)."""
    lines = [f":warning: *Data drift* in {result.model or result.current}: {result.headline()}"]
    for item in result.features:
        if item.drift_detected:
            lines.append(
                f"• `{item.name}` {item.test_label or item.test} {item.score:.4g} (threshold {item.threshold:g})"
            )
    for item in result.prediction_drift:
        if item.drift_detected:
            lines.append(f"• prediction `{item.name}` {item.test_label or item.test} {item.score:.4g}")
    if result.missing_columns:
        lines.append("missing columns: " + ", ".join(result.missing_columns))
    if report_url:
        lines.append(f"report: {report_url}")
    return {"text": "\n".join(lines)}


def post_webhook(result: DriftResult, url: str, report_url: str = "") -> str:
    """POST the Slack-compatible message to ``url``; raise KfopsError when it cannot be delivered."""
    if not url.startswith(("http://", "https://")):
        raise KfopsError(f"webhook URL must start with http:// or https://, got {url!r}")
    try:
        answer = http.post_json(url, slack_message(result, report_url), timeout=TIMEOUT_SECONDS)
    except http.StatusError as err:
        raise KfopsError(f"webhook {url} refused the drift message: HTTP {err.status} {err.reason}") from err
    except http.HTTPError as err:
        raise KfopsError(f"cannot reach webhook {url}: {err.reason or err}") from err
    return f"posted the drift message to the webhook (HTTP {answer.status})"


def notify(
    result: DriftResult,
    pushgateway: str = "",
    webhook: str = "",
    job: str = DEFAULT_JOB,
    model: str = "",
    report_url: str = "",
    webhook_always: bool = False,
) -> dict[str, str]:
    """Push gauges and post the webhook (only when drift is found, unless ``webhook_always``); failures are
    warnings, recorded in the returned ``{channel: what happened}`` and in ``result.notifications``."""
    outcome: dict[str, str] = {}
    if pushgateway:
        try:
            outcome["pushgateway"] = push_gauges(result, pushgateway, job=job, model=model)
        except KfopsError as err:
            log.warning("%s", err)
            outcome["pushgateway"] = f"failed: {err}"
    if webhook:
        if result.dataset_drift or webhook_always or any(f.drift_detected for f in result.prediction_drift):
            try:
                outcome["webhook"] = post_webhook(result, webhook, report_url)
            except KfopsError as err:
                log.warning("%s", err)
                outcome["webhook"] = f"failed: {err}"
        else:
            outcome["webhook"] = "not sent: no drift"
    result.notifications.update(outcome)
    return outcome
