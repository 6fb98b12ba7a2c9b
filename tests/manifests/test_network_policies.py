"""The NetworkPolicies of every rendered overlay admit exactly the peers and ports the suite needs.

Two views of the same rules: ``_admits`` evaluates them as Kubernetes does (a pod selected by any policy with
policyType Ingress is isolated; a connection is admitted when some rule's peer matches the source pod and
namespace and some port matches, or the rule lists none), and is asked about each real path (Katib's controller
to a suggestion, a TrainJob node to another, Prometheus in any namespace, Knative's activator, a notebook's
browser session); and ``EXPECTED`` lists every policy's rules, so a rule nobody named fails the test.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from kfops.platform_manifests import render_overlay
from tests.tools import require

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.parent for p in (REPO_ROOT / "manifests" / "overlays").glob("*/kustomization.yaml"))
NS = "kfops"
PROFILE_ONLY = {"notebooks-ingress", "kfp-profile-servers-ingress"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/managed-by": "prometheus-operator"}

# policy -> [(peers, ports)], peers as (namespace, pod selector) pairs and ports as (port, endPort) pairs;
# None: all ports.
EXPECTED = {
    "default-deny-ingress": [],
    "minio-ingress": [
        ([("this namespace", {}), ("any namespace", {"matchLabels": PROMETHEUS})], {(9000, None)}),
    ],
    "pushgateway-ingress": [
        ([("this namespace", {}), ("any namespace", {"matchLabels": PROMETHEUS})], {(9091, None)}),
    ],
    "mlflow-ingress": [([("this namespace", {})], {(5000, None)})],
    "mlflow-postgres-ingress": [
        ([("this namespace", {"matchLabels": {"app.kubernetes.io/name": "mlflow"}})], {(5432, None)}),
    ],
    "predictors-ingress": [
        (
            [
                ("this namespace", {}),
                ("knative-serving", None),
                ("istio-system", None),
                ("any namespace", {"matchLabels": PROMETHEUS}),
            ],
            None,
        ),
    ],
    "tensorboard-ingress": [([("this namespace", {}), ("istio-system", None)], {(6006, None)})],
    "katib-suggestion-ingress": [
        ([("kubeflow", None)], {(6789, None), (6788, None)}),
        ([("this namespace", {})], {(6788, None)}),
    ],
    "trainjob-ingress": [
        (
            [
                (
                    "this namespace",
                    {"matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]},
                )
            ],
            {(29500, None), (32768, 60999)},
        ),
    ],
    "notebooks-ingress": [([("istio-system", None), ("kubeflow", None)], {(8888, None)})],
    "kfp-profile-servers-ingress": [([("kubeflow", None)], {(3000, None), (8888, None)})],
}


@pytest.fixture(autouse=True)
def _kubectl():
    require("kubectl")


@cache
def _policies(overlay: Path) -> tuple[dict, ...]:
    return tuple(o for o in render_overlay(overlay) if o["kind"] == "NetworkPolicy")


@pytest.fixture(params=OVERLAYS, ids=lambda p: p.name)
def policies(request) -> list[dict]:
    return list(_policies(request.param))


# ------------------------------------------------------------------------------------------------ evaluation
def _matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector against labels ({} selects everything)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
            or (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
        ):
            return False
    return True


def _peer_matches(peer: dict, policy_ns: str, src_ns: str, src_labels: dict) -> bool:
    assert "ipBlock" not in peer, "the suite admits pods, never address ranges"
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_selector is None:  # podSelector alone: pods of the policy's own namespace
        return src_ns == policy_ns and _matches(pod_selector, src_labels)
    ns_labels = {"kubernetes.io/metadata.name": src_ns}  # the label the API server sets on every namespace
    return _matches(ns_selector, ns_labels) and (pod_selector is None or _matches(pod_selector, src_labels))


def _port_matches(entry: dict, port: int) -> bool:
    assert entry.get("protocol", "TCP") == "TCP"
    first = entry["port"]
    assert isinstance(first, int), "numeric ports only: a named port depends on each pod's spec"
    return first <= port <= entry.get("endPort", first)


def _admits(policies: list[dict], dst: dict, src_ns: str, src: dict, port: int) -> bool:
    """Whether a TCP connection from a pod (src labels, in src_ns) to a pod of this namespace (dst labels) on
    port is admitted."""
    selecting = [
        p for p in policies if "Ingress" in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], dst)
    ]
    if not selecting:
        return True  # not isolated
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if peers is not None and not any(_peer_matches(p, NS, src_ns, src) for p in peers):
                continue
            ports = rule.get("ports")
            if ports is None or any(_port_matches(p, port) for p in ports):
                return True
    return False


# ------------------------------------------------------------------------------------------------ exact rules
def _normalise(rule: dict) -> tuple[list, set | None]:
    peers = []
    for peer in rule.get("from") or []:
        ns_selector = peer.get("namespaceSelector")
        if ns_selector is None:
            peers.append(("this namespace", peer.get("podSelector", {})))
        elif ns_selector == {}:
            peers.append(("any namespace", peer.get("podSelector")))
        else:
            assert set(ns_selector) == {"matchLabels"}, ns_selector
            assert list(ns_selector["matchLabels"]) == ["kubernetes.io/metadata.name"], ns_selector
            peers.append((ns_selector["matchLabels"]["kubernetes.io/metadata.name"], peer.get("podSelector")))
    ports = rule.get("ports")
    return peers, None if ports is None else {(p["port"], p.get("endPort")) for p in ports}


def test_every_rule_is_one_the_suite_names(policies):
    names = {p["metadata"]["name"] for p in policies}
    expected = set(EXPECTED) if names & PROFILE_ONLY else set(EXPECTED) - PROFILE_ONLY
    assert names == expected
    for policy in policies:
        name = policy["metadata"]["name"]
        assert policy["spec"]["policyTypes"] == ["Ingress"], name
        assert [_normalise(r) for r in policy["spec"].get("ingress") or []] == EXPECTED[name], name


def test_profile_policies_come_with_the_profile_overlay_only():
    for overlay in OVERLAYS:
        names = {p["metadata"]["name"] for p in _policies(overlay)}
        assert (names >= PROFILE_ONLY) == (overlay.name == "kubeflow-profile"), overlay.name


# ------------------------------------------------------------------------------------------------ paths
SUGGESTION = {"katib.kubeflow.org/suggestion": "sweep-1", "katib.kubeflow.org/experiment": "sweep-1"}
KATIB_CONTROLLER = {"katib.kubeflow.org/component": "controller"}
TRIAL = {"batch.kubernetes.io/job-name": "sweep-1-abc"}
STEP = {"pipelines.kubeflow.org/v2_component": "true"}
TRAIN_NODE = {"jobset.sigs.k8s.io/jobset-name": "train-1", "batch.kubernetes.io/job-completion-index": "0"}
PREDICTOR = {"serving.kserve.io/inferenceservice": "fraud-detector", "kfops.io/model-version": "3"}
MINIO = {"app.kubernetes.io/name": "minio"}
MLFLOW = {"app.kubernetes.io/name": "mlflow"}
POSTGRES = {"app.kubernetes.io/name": "mlflow-postgres"}
PUSHGATEWAY = {"app.kubernetes.io/name": "kfops-pushgateway"}
NOTEBOOK = {"notebook-name": "analysis", "statefulset": "analysis"}


def test_katib_reaches_its_suggestion_service(policies):
    assert _admits(policies, SUGGESTION, "kubeflow", KATIB_CONTROLLER, 6789)
    assert _admits(policies, SUGGESTION, "kubeflow", KATIB_CONTROLLER, 6788)
    assert _admits(policies, SUGGESTION, NS, TRIAL, 6788)  # a trial's metrics collector: early stopping
    assert not _admits(policies, SUGGESTION, NS, TRIAL, 6789)
    assert not _admits(policies, SUGGESTION, "team-b", KATIB_CONTROLLER, 6789)
    assert not _admits(policies, SUGGESTION, "kubeflow", KATIB_CONTROLLER, 8080)


def test_trainjob_nodes_reach_each_other_only(policies):
    other_node = {**TRAIN_NODE, "batch.kubernetes.io/job-completion-index": "1"}
    assert _admits(policies, TRAIN_NODE, NS, other_node, 29500)  # torchrun's rendezvous
    assert _admits(policies, TRAIN_NODE, NS, other_node, 45123)  # NCCL / gloo, an ephemeral port
    assert not _admits(policies, TRAIN_NODE, NS, other_node, 22)
    assert not _admits(policies, TRAIN_NODE, NS, STEP, 29500)
    assert not _admits(policies, TRAIN_NODE, "team-b", other_node, 29500)


def test_prometheus_scrapes_from_any_namespace_and_nothing_else_does(policies):
    for namespace in ("monitoring", "observability"):
        assert _admits(policies, MINIO, namespace, PROMETHEUS, 9000)
        assert _admits(policies, PUSHGATEWAY, namespace, PROMETHEUS, 9091)
        assert _admits(policies, PREDICTOR, namespace, PROMETHEUS, 8080)
    grafana = {"app.kubernetes.io/name": "grafana"}
    assert not _admits(policies, MINIO, "monitoring", grafana, 9000)
    assert not _admits(policies, MLFLOW, "monitoring", PROMETHEUS, 5000)


def test_knative_and_istio_reach_predictors(policies):
    activator = {"app": "activator"}
    assert _admits(policies, PREDICTOR, "knative-serving", activator, 8012)  # requests through the activator
    assert _admits(policies, PREDICTOR, "knative-serving", {"app": "autoscaler"}, 9090)  # queue-proxy stats
    assert _admits(policies, PREDICTOR, "istio-system", {"app": "istio-ingressgateway"}, 8080)
    assert _admits(policies, PREDICTOR, NS, {"app": "router"}, 8080)
    assert not _admits(policies, PREDICTOR, "team-b", activator, 8012)


def test_platform_services_admit_this_namespace_only(policies):
    for pod in (STEP, TRIAL, TRAIN_NODE, NOTEBOOK, PREDICTOR):
        assert _admits(policies, MLFLOW, NS, pod, 5000)
        assert _admits(policies, MINIO, NS, pod, 9000)
        assert not _admits(policies, MINIO, NS, pod, 9001)  # the console: port-forward only
        assert not _admits(policies, POSTGRES, NS, pod, 5432)
    assert _admits(policies, POSTGRES, NS, MLFLOW, 5432)
    assert not _admits(policies, MLFLOW, "team-b", STEP, 5000)
    assert not _admits(policies, MINIO, "team-b", STEP, 9000)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_notebooks_and_kfp_servers_in_a_profile(overlay):
    policies = list(_policies(overlay))
    profile = overlay.name == "kubeflow-profile"
    assert _admits(policies, NOTEBOOK, "istio-system", {"app": "istio-ingressgateway"}, 8888) == profile
    assert _admits(policies, NOTEBOOK, "kubeflow", {"app": "notebook-controller"}, 8888) == profile
    artifact, viz = {"app": "ml-pipeline-ui-artifact"}, {"app": "ml-pipeline-visualizationserver"}
    assert _admits(policies, artifact, "kubeflow", {"app": "ml-pipeline-ui"}, 3000) == profile
    assert _admits(policies, viz, "kubeflow", {"app": "ml-pipeline-ui"}, 8888) == profile
    assert not _admits(policies, NOTEBOOK, "team-b", {}, 8888)
    assert not _admits(policies, NOTEBOOK, "istio-system", {}, 22)


def test_the_evaluator_isolates_pods_no_policy_admits(policies):
    """default-deny selects every pod: one nothing else admits is closed to all, its own namespace included."""
    stray = {"app": "something-else"}
    assert not _admits(policies, stray, NS, STEP, 8080)
    assert not _admits(policies, stray, "kubeflow", {}, 80)
    assert _admits([], stray, "team-b", {}, 80)  # and with no policy at all, Kubernetes admits everything
