"""The feature store's cluster manifests (manifests/feature-store) and its freshness alerts.

Renders the kustomization with `kubectl kustomize`, validates every object against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), holds each container to the suite's baseline (kfops.platform_manifests: non-root,
read-only root filesystem, no capabilities, bounded resources, pinned image), checks that the objects fit together
and that the ConfigMap's feature_store.yaml is the repository file Feast loads, and runs the
KfopsFeatureMaterialization* alerts through `promtool test rules`.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from kfops.platform_manifests import security_problems
from tests.manifests.test_monitoring_manifests import RULES, _alerts, _binary, _expect

REPO_ROOT = Path(__file__).resolve().parents[2]
FEATURE_STORE = REPO_ROOT / "manifests" / "feature-store"
K8S_VERSIONS = ("1.30", "1.33")
_QUANTITY_MI = {"Mi": 1, "Gi": 1024}


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    result = subprocess.run(
        [_binary("kubectl"), "kustomize", str(FEATURE_STORE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} found"
    return found[0]


def test_objects_render_and_match_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Service"]
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kfops"
        assert obj["metadata"]["labels"]["app.kubernetes.io/component"] == "feature-store"
        assert "namespace" not in obj["metadata"], "namespace-agnostic: apply with -n"
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    broken = copy.deepcopy(_one(rendered, "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # a typo strict validation catches
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_redis_meets_the_container_baseline(rendered):
    assert security_problems(rendered) == []
    broken = copy.deepcopy(_one(rendered, "Deployment"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    del container["resources"]["limits"]
    problems = security_problems([broken])
    assert any("readOnlyRootFilesystem" in p for p in problems) and any("no memory limit" in p for p in problems)


def test_objects_fit_together(rendered):
    deployment, service = _one(rendered, "Deployment"), _one(rendered, "Service")
    policy, claim = _one(rendered, "NetworkPolicy"), _one(rendered, "PersistentVolumeClaim")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == ports[service["spec"]["ports"][0]["targetPort"]]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # never silently drop customers
    maxmemory = int(args[args.index("--maxmemory") + 1].removesuffix("mb"))
    limit = container["resources"]["limits"]["memory"]
    assert maxmemory < int(limit[:-2]) * _QUANTITY_MI[limit[-2:]]


def test_configmap_is_the_repository_file_and_points_at_the_service(rendered):
    from feast.repo_config import RepoConfig

    config_map, service = _one(rendered, "ConfigMap"), _one(rendered, "Service")
    text = config_map["data"]["feature_store.yaml"]
    assert config_map["metadata"]["name"] == "kfops-feature-store"
    assert text == (FEATURE_STORE / "feature_store.yaml").read_text()
    config = RepoConfig(**yaml.safe_load(text))
    host, port = config.online_store.connection_string.split(",")[0].split(":")
    assert (host, int(port)) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    assert config.registry.path.startswith("s3://kfops/feature-store/")
    from kfops.pipelines.feature_materialization import DEFAULT_FEATURE_REPO

    assert config.registry.path.rsplit("/", 1)[0] == DEFAULT_FEATURE_REPO


# ------------------------------------------------------------------------------------------------ alerts
PUSHED = 'job="kfops-features",instance="",project="kfops"'


def _series(name: str, labels: str, values: str) -> dict:
    return {"series": f"{name}{{{labels}}}", "values": values}


def test_freshness_alerts_fire_exactly_where_meant(tmp_path):
    """Materialisation of customer_activity stopped at time 0 (its TTL: 8 h); customer_profile's pushes stopped too,
    but a predictor keeps exporting a fresh end time for it: the freshest source counts."""
    promtool = _binary("promtool")
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    alerts = _alerts(groups)
    end = "kfops_feature_materialization_end_timestamp_seconds"
    ttl = "kfops_feature_view_ttl_seconds"
    case = {
        "interval": "1m",
        "input_series": [
            _series(end, f'{PUSHED},feature_view="customer_activity"', "0x700"),
            _series(ttl, f'{PUSHED},feature_view="customer_activity"', "28800x700"),
            _series(end, f'{PUSHED},feature_view="customer_profile"', "0x700"),
            _series(ttl, f'{PUSHED},feature_view="customer_profile"', "34560000x700"),
            _series(end, 'namespace="kfops",model="fraud",pod="p",feature_view="customer_profile"', "0+60x700"),
        ],
        "alert_rule_test": [
            {"eval_time": "5h", "alertname": "KfopsFeatureMaterializationLag", "exp_alerts": []},
            {
                "eval_time": "7h",
                "alertname": "KfopsFeatureMaterializationLag",
                "exp_alerts": [
                    _expect(alerts["KfopsFeatureMaterializationLag"], {"feature_view": "customer_activity"}, 7 * 3600)
                ],
            },
            {"eval_time": "7h", "alertname": "KfopsFeatureMaterializationBeyondTTL", "exp_alerts": []},
            {
                "eval_time": "9h",
                "alertname": "KfopsFeatureMaterializationBeyondTTL",
                "exp_alerts": [
                    _expect(
                        alerts["KfopsFeatureMaterializationBeyondTTL"], {"feature_view": "customer_activity"}, 9 * 3600
                    )
                ],
            },
        ],
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [case]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", "t.yml"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The harness can fail: expecting the lag alert for the view a predictor keeps fresh is reported.
    case["alert_rule_test"] = [
        {
            "eval_time": "7h",
            "alertname": "KfopsFeatureMaterializationLag",
            "exp_alerts": [
                _expect(alerts["KfopsFeatureMaterializationLag"], {"feature_view": "customer_profile"}, 7 * 3600)
            ],
        }
    ]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", "t.yml"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode != 0 and 'feature_view="customer_profile"' in result.stdout + result.stderr
