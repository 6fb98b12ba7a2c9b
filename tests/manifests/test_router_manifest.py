"""The router InferenceService example (manifests/serving/examples/router-inferenceservice.yaml): valid against
KServe's real CRD schema, and its container command line is one the router accepts, pointing at the two
predictor InferenceServices of the same file."""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from kfops.serving.router_cli import build_route_parser, router_config
from tests.crd_schemas import schema_errors

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "manifests" / "serving" / "examples"
ROUTER_EXAMPLE = EXAMPLES / "router-inferenceservice.yaml"
RUNTIME = REPO_ROOT / "manifests" / "serving" / "servingruntime.yaml"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    loaded = [d for d in yaml.safe_load_all(ROUTER_EXAMPLE.read_text()) if d]
    return {d["metadata"]["labels"]["kfops.io/variant"]: d for d in loaded}


def test_every_object_matches_the_crd_schema(docs):
    assert sorted(docs) == ["challenger", "router", "stable"]
    for variant, obj in docs.items():
        assert (obj["apiVersion"], obj["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
        assert schema_errors(obj) == [], variant


def test_the_validation_catches_a_typo_in_the_router_container(docs):
    broken = copy.deepcopy(docs["router"])
    broken["spec"]["predictor"]["containers"][0]["readinessProbee"] = {}
    assert any(e.startswith("spec.predictor.containers.0") for e in schema_errors(broken))


def test_predictors_use_the_suite_runtime(docs):
    runtime = yaml.safe_load(RUNTIME.read_text())
    for variant in ("stable", "challenger"):
        model = docs[variant]["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"]
    assert (
        docs["stable"]["spec"]["predictor"]["model"]["storageUri"]
        != (docs["challenger"]["spec"]["predictor"]["model"]["storageUri"])
    )


def test_router_container_runs_the_route_command_against_both_predictors(docs):
    router = docs["router"]
    (container,) = router["spec"]["predictor"]["containers"]
    runtime = yaml.safe_load(RUNTIME.read_text())
    assert container["image"] == runtime["spec"]["containers"][0]["image"]
    assert "command" not in container, "the image's ENTRYPOINT (python -m kfops.serving) runs `route`"
    assert container["args"][0] == "route"
    args = build_route_parser().parse_args(container["args"][1:])
    config = router_config(args, args.stable, args.challenger, args.name)  # what the router itself checks
    assert config.model_name == router["metadata"]["name"]
    for variant, url, model in (
        ("stable", config.stable_url, config.stable_model),
        ("challenger", config.challenger_url, config.challenger_model),
    ):
        name = docs[variant]["metadata"]["name"]
        assert urlsplit(url).netloc == f"{name}-predictor", "KServe's predictor Service for that InferenceService"
        assert model == name, "the runtime serves each model under its InferenceService's name"
    assert config.mode == "ab" and config.entity_key and 0 < config.split < 100
    assert args.host == "0.0.0.0" and container["ports"] == [{"containerPort": args.port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": args.port}
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"]


def test_router_example_stays_out_of_the_examples_kustomization():
    kustomization = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text())
    assert ROUTER_EXAMPLE.name not in kustomization["resources"]
    assert "kubectl apply -f manifests/serving/examples/router-inferenceservice.yaml" in ROUTER_EXAMPLE.read_text()
