"""The monitoring manifests (manifests/monitoring): alert rules, PodMonitor, Pushgateway.

Renders the kustomization with `kubectl kustomize`, validates the prometheus-operator objects against the real
CRD schemas (tests/schemas/prometheus-operator), checks that the rules read the metrics the code really
exports, and runs every alert through `promtool test rules` (Debian's Prometheus): each one firing on the
series it is meant for and not on its look-alikes. Binaries missing: skipped, unless CI is set.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.crd_schemas import schema_errors
from tests.tools import require

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "manifests" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
RUNBOOK = MONITORING / "RUNBOOK.md"
SEVERITIES = {"critical", "warning", "info"}


_binary = require


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    result = subprocess.run(
        [_binary("kubectl"), "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["spec"]["groups"]


def _alerts(groups: list[dict]) -> dict[str, dict]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


# ------------------------------------------------------------------------------------------------ manifests
def test_every_custom_resource_matches_its_crd(rendered):
    kinds = {(obj["apiVersion"], obj["kind"]) for obj in rendered}
    assert ("monitoring.coreos.com/v1", "PrometheusRule") in kinds
    assert ("monitoring.coreos.com/v1", "PodMonitor") in kinds
    assert ("monitoring.coreos.com/v1", "ServiceMonitor") in kinds
    for obj in rendered:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert schema_errors(obj) == [], obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kfops"


def test_a_wrong_field_fails_validation(rendered):
    rule = next(o for o in rendered if o["kind"] == "PrometheusRule")
    broken = yaml.safe_load(yaml.safe_dump(rule))
    broken["spec"]["groups"][0]["rules"][0]["severity"] = "warning"  # belongs under labels
    assert any("severity" in e for e in schema_errors(broken))


def test_pushgateway_objects_fit_together(rendered):
    by_kind = {o["kind"]: o for o in rendered if o["metadata"]["name"] == "kfops-pushgateway"}
    deployment, service, monitor = by_kind["Deployment"], by_kind["Service"], by_kind["ServiceMonitor"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    # The pushed job/model labels must survive the scrape: the drift alerts select job="kfops-monitor".
    assert endpoint["honorLabels"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_podmonitor_selects_the_predictors_the_deploy_step_labels(rendered):
    from kfops.components.isvc.spec import LABEL_VERSION

    monitor = next(o for o in rendered if o["kind"] == "PodMonitor")
    expressions = monitor["spec"]["selector"]["matchExpressions"]
    assert {"key": LABEL_VERSION, "operator": "Exists"} in expressions
    runtime = yaml.safe_load((REPO_ROOT / "manifests" / "serving" / "servingruntime.yaml").read_text())
    ports = [p["containerPort"] for c in runtime["spec"]["containers"] for p in c.get("ports", [])]
    assert monitor["spec"]["podMetricsEndpoints"][0]["portNumber"] in ports


# ------------------------------------------------------------------------------------------------ rules
def test_every_alert_has_severity_and_runbook(rule_groups):
    alerts = _alerts(rule_groups)
    assert set(alerts) >= {
        "KfopsDatasetDrift",
        "KfopsFeatureDrift",
        "KfopsPredictorErrorRate",
        "KfopsPredictorLatencyP99",
        "KfopsPayloadLogDrops",
    }
    headings = {line[3:].strip() for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert len(rule["annotations"]["runbook"]) > 80, name
        assert rule["annotations"]["runbook_url"].endswith("RUNBOOK.md#" + name.lower()), name
        assert name in headings, f"{name} has no section in RUNBOOK.md"


def test_rules_read_the_metrics_the_code_exports(rule_groups):
    from kfops.components.contracts.monitoring import DriftResult, FeatureDrift
    from kfops.components.feature_store.store import ViewFreshness
    from kfops.components.features.freshness import freshness_registry
    from kfops.components.monitor.alerts import drift_registry
    from kfops.serving.metrics import SERVING_REGISTRY

    result = DriftResult(
        verdict="drift",
        dataset_drift=True,
        drift_share=1.0,
        drift_share_threshold=0.5,
        tested_features=1,
        drifted_features=1,
        features=[FeatureDrift("amount", "numeric", "wasserstein", 0.1, 0.3, True)],
        prediction_drift=[FeatureDrift("probability", "numeric", "wasserstein", 0.1, 0.3, True)],
    )
    exported = {m.name for m in drift_registry(result).collect()} | {m.name for m in SERVING_REGISTRY.collect()}
    fresh = freshness_registry([ViewFreshness("v", 60.0, "2026-01-01T00:00:00+00:00", 1.0)])
    exported |= {m.name for m in fresh.collect()}
    # prometheus_client names counters without _total and histograms without _bucket; push_time_seconds is the
    # Pushgateway's own.
    exported |= {f"{n}_total" for n in exported} | {f"{n}_bucket" for n in exported} | {"push_time_seconds"}
    for name, rule in _alerts(rule_groups).items():
        used = set(re.findall(r"\b([a-z_]+(?:_total|_bucket|_seconds|_detected|_share|_data))\b", rule["expr"]))
        used -= {"status_code"}
        assert used, name
        assert used <= exported, f"{name} reads {sorted(used - exported)}, which nothing exports"


# ------------------------------------------------------------------------------------------------ promtool
def _humanize_duration(value: float) -> str:
    if value == 0:
        return "0s"
    if abs(value) >= 1:
        total = int(value)
        days, hours, minutes, seconds = total // 86400, total // 3600 % 24, total // 60 % 60, total % 60
        if days:
            return f"{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{minutes}m {seconds}s"
        return f"{value:.4g}s"
    prefix = ""
    for unit in "munpfazy":
        if abs(value) >= 1:
            break
        prefix, value = unit, value * 1000
    return f"{value:.4g}{prefix}s"


def _render(template: str, labels: dict[str, str], value: float) -> str:
    """The few Go-template forms the rules use, as Prometheus renders them."""

    def one(match: re.Match) -> str:
        expr = match.group(1).strip()
        if expr.startswith("$labels."):
            return labels.get(expr[len("$labels.") :], "")
        if expr == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        if expr == "$value | humanizeDuration":
            return _humanize_duration(value)
        if expr == '$value | printf "%.2f"':
            return f"{value:.2f}"
        raise AssertionError(f"template form {expr!r} is not covered by the test's renderer")

    return re.sub(r"{{(.*?)}}", one, template)


def _expect(rule: dict, labels: dict[str, str], value: float) -> dict:
    all_labels = {**labels, **rule["labels"]}
    return {
        "exp_labels": all_labels,
        "exp_annotations": {k: _render(v, all_labels, value) for k, v in rule["annotations"].items()},
    }


# The Pushgateway exposes pushed metrics with instance="": an empty label is no label in Prometheus.
PUSHED = 'job="kfops-monitor",instance=""'


def _requests(model: str, version: str, status: str, pod: str) -> str:
    labels = f'namespace="models",model="{model}",version="{version}",status_code="{status}",pod="{pod}"'
    return f"model_requests_total{{{labels}}}"


def _unit_tests(alerts: dict[str, dict]) -> list[dict]:
    drift = {"job": "kfops-monitor"}
    return [
        {  # drift gauges as the Pushgateway exposes them, for two models: one drifted, one not
            "interval": "1m",
            "input_series": [
                {"series": f'dataset_drift_detected{{{PUSHED},model="fraud"}}', "values": "1x15"},
                {"series": f'dataset_drift_share{{{PUSHED},model="fraud"}}', "values": "0.6x15"},
                {"series": f'dataset_drift_detected{{{PUSHED},model="churn"}}', "values": "0x15"},
                {"series": f'dataset_drift_share{{{PUSHED},model="churn"}}', "values": "0.25x15"},
                {"series": f'feature_drift_detected{{{PUSHED},model="fraud",feature_name="amount"}}', "values": "1x15"},
                {"series": f'feature_drift_detected{{{PUSHED},model="fraud",feature_name="age"}}', "values": "0x15"},
                {
                    "series": f'prediction_drift_detected{{{PUSHED},model="fraud",column="probability"}}',
                    "values": "1x15",
                },
                {
                    "series": f'prediction_drift_detected{{{PUSHED},model="churn",column="prediction"}}',
                    "values": "0x15",
                },
                {"series": f'dataset_drift_insufficient_data{{{PUSHED},model="fraud"}}', "values": "0x15"},
                {"series": f'dataset_drift_insufficient_data{{{PUSHED},model="idle"}}', "values": "1x15"},
                # Another job's gauge of the same name is not ours.
                {"series": 'dataset_drift_detected{job="other",instance="",model="x"}', "values": "1x15"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "KfopsDatasetDrift",
                    "exp_alerts": [_expect(alerts["KfopsDatasetDrift"], {**drift, "model": "fraud"}, 0.6)],
                },
                {
                    "eval_time": "10m",
                    "alertname": "KfopsFeatureDrift",
                    "exp_alerts": [
                        _expect(alerts["KfopsFeatureDrift"], {**drift, "model": "fraud", "feature_name": "amount"}, 1)
                    ],
                },
                {
                    "eval_time": "10m",
                    "alertname": "KfopsPredictionDrift",
                    "exp_alerts": [
                        _expect(alerts["KfopsPredictionDrift"], {**drift, "model": "fraud", "column": "probability"}, 1)
                    ],
                },
                {
                    "eval_time": "10m",
                    "alertname": "KfopsDriftInsufficientData",
                    "exp_alerts": [_expect(alerts["KfopsDriftInsufficientData"], {**drift, "model": "idle"}, 1)],
                },
                {"eval_time": "10m", "alertname": "KfopsDriftMonitorStale", "exp_alerts": []},
            ],
        },
        {  # one model's monitor stopped pushing at time 0; another's pushes keep coming
            "interval": "1m",
            "input_series": [
                {"series": f'push_time_seconds{{{PUSHED},model="fraud"}}', "values": "0x4400"},
                {"series": f'push_time_seconds{{{PUSHED},model="churn"}}', "values": "0+60x4400"},
            ],
            "alert_rule_test": [
                {"eval_time": "47h", "alertname": "KfopsDriftMonitorStale", "exp_alerts": []},
                {
                    "eval_time": "3d",
                    "alertname": "KfopsDriftMonitorStale",
                    "exp_alerts": [
                        _expect(alerts["KfopsDriftMonitorStale"], {"job": "kfops-monitor", "model": "fraud"}, 259200)
                    ],
                },
            ],
        },
        {  # request counters per version: 100 OK a minute each, and 0, 3 or 10 server errors a minute
            "interval": "1m",
            "input_series": [
                *[
                    {
                        "series": f'model_requests_total{{namespace="models",model="fraud",version="{v}",'
                        f'status_code="200",pod="p{v}"}}',
                        "values": "0+100x30",
                    }
                    for v in ("1", "2", "3")
                ],
                {
                    "series": _requests("fraud", "2", "500", "p2"),
                    "values": "0+3x30",
                },
                {
                    "series": _requests("fraud", "3", "503", "p3"),
                    "values": "0+10x30",
                },
                # Client errors are not the predictor's fault.
                {
                    "series": _requests("fraud", "1", "400", "p1"),
                    "values": "0+50x30",
                },
                # An idle model: one request every two minutes, half of them failing.
                {
                    "series": _requests("idle", "1", "200", "q"),
                    "values": "0+0.25x30",
                },
                {
                    "series": _requests("idle", "1", "500", "q"),
                    "values": "0+0.25x30",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "KfopsPredictorErrorRate",
                    "exp_alerts": [
                        _expect(
                            alerts["KfopsPredictorErrorRate"],
                            {"namespace": "models", "model": "fraud", "version": v},
                            errors / (100 + errors),
                        )
                        for v, errors in (("2", 3), ("3", 10))
                    ],
                },
                {
                    "eval_time": "20m",
                    "alertname": "KfopsPredictorErrorRateCritical",
                    "exp_alerts": [
                        _expect(
                            alerts["KfopsPredictorErrorRateCritical"],
                            {"namespace": "models", "model": "fraud", "version": "3"},
                            10 / 110,
                        )
                    ],
                },
                # Not yet: the condition must hold for 10 minutes first.
                {"eval_time": "8m", "alertname": "KfopsPredictorErrorRate", "exp_alerts": []},
            ],
        },
        {  # latency histograms (stage total): version 1 answers within 50 ms, version 2 in 250-500 ms
            "interval": "1m",
            "input_series": [
                *[
                    {
                        "series": f'model_prediction_latency_seconds_bucket{{namespace="models",model="fraud",'
                        f'version="1",stage="total",le="{le}"}}',
                        "values": "0+60x30",
                    }
                    for le in ("0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")
                ],
                *[
                    {
                        "series": f'model_prediction_latency_seconds_bucket{{namespace="models",model="fraud",'
                        f'version="2",stage="total",le="{le}"}}',
                        "values": "0+0x30" if float(le) <= 0.25 else "0+60x30",
                    }
                    for le in ("0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")
                ],
                # A slow stage other than total does not count on its own.
                *[
                    {
                        "series": f'model_prediction_latency_seconds_bucket{{namespace="models",model="fraud",'
                        f'version="1",stage="queue",le="{le}"}}',
                        "values": "0+0x30" if le != "+Inf" else "0+60x30",
                    }
                    for le in ("0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")
                ],
            ],
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "KfopsPredictorLatencyP99",
                    "exp_alerts": [
                        _expect(
                            alerts["KfopsPredictorLatencyP99"],
                            {"namespace": "models", "model": "fraud", "version": "2"},
                            0.25 + 0.25 * 0.99,
                        )
                    ],
                },
            ],
        },
        {  # payload-log drops: one model keeps dropping 6 a minute, another dropped once and stopped
            "interval": "1m",
            "input_series": [
                {
                    "series": 'model_payload_log_dropped_total{namespace="models",model="fraud",pod="a"}',
                    "values": "0+6x30",
                },
                {
                    "series": 'model_payload_log_dropped_total{namespace="models",model="churn",pod="b"}',
                    "values": "0 40x30",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "KfopsPayloadLogDrops",
                    "exp_alerts": [
                        _expect(alerts["KfopsPayloadLogDrops"], {"namespace": "models", "model": "fraud"}, 0.1)
                    ],
                },
            ],
        },
    ]


def test_alert_rules_fire_exactly_where_meant(rule_groups, tmp_path):
    promtool = _binary("promtool")
    rules_file = tmp_path / "kfops-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tests_file = tmp_path / "kfops-rules.test.yml"
    tests = {
        "rule_files": [rules_file.name],
        "evaluation_interval": "1m",
        "tests": _unit_tests(_alerts(rule_groups)),
    }
    tests_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(tests_file)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_catches_a_wrong_expectation(rule_groups, tmp_path):
    """The harness can fail: expecting the drift alert on the model that did not drift is reported."""
    promtool = _binary("promtool")
    alerts = _alerts(rule_groups)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    case = _unit_tests(alerts)[0]
    case["alert_rule_test"] = [
        {
            "eval_time": "10m",
            "alertname": "KfopsDatasetDrift",
            "exp_alerts": [_expect(alerts["KfopsDatasetDrift"], {"job": "kfops-monitor", "model": "churn"}, 0.25)],
        }
    ]
    (tmp_path / "t.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": [case]}, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", "t.yml"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode != 0
    assert 'model="churn"' in result.stdout + result.stderr
