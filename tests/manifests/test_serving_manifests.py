"""The serving manifests (manifests/serving) and image (images/serving/Dockerfile).

Renders the kustomize base with `kubectl kustomize` and validates every object, and the example
InferenceService, against KServe's real CRD schemas (committed copies in tests/schemas/kserve/). The CRD's OpenAPI
v3 schema is turned into a JSON Schema (Draft 7) that rejects unknown fields, as the API server does under strict
field validation (the kubectl default), so a typo fails here instead of being silently pruned in the cluster.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.crd_schemas import schema_errors, validator
from tests.tools import require

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
SERVING = MANIFESTS / "serving"
EXAMPLE_ISVC = SERVING / "examples" / "inferenceservice.yaml"
DOCKERFILE = REPO_ROOT / "images" / "serving" / "Dockerfile"
COMPONENT_DOCKERFILE = REPO_ROOT / "images" / "component" / "Dockerfile"

RUNTIME_NAME = "kfops-pytorch-tabular"
MODEL_FORMAT = "kfops-mlflow-pyfunc"
CONTAINER = "kserve-container"
PORT = 8080

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# ------------------------------------------------------------------------------------------- manifests


def _kustomize(directory: Path) -> list[dict]:
    kubectl = require("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.load_all(result.stdout, Loader=_Loader) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return _kustomize(SERVING)


@pytest.fixture(scope="module")
def rendered_examples() -> list[dict]:
    return _kustomize(SERVING / "examples")


@pytest.fixture(scope="module")
def runtime(rendered) -> dict:
    runtimes = [o for o in rendered if o["kind"] == "ServingRuntime"]
    assert len(runtimes) == 1, [o["kind"] for o in rendered]
    return runtimes[0]


@pytest.fixture(scope="module")
def container(runtime) -> dict:
    containers = runtime["spec"]["containers"]
    assert [c["name"] for c in containers] == [CONTAINER]
    return containers[0]


@pytest.fixture(scope="module")
def isvc() -> dict:
    docs = [d for d in yaml.load_all(EXAMPLE_ISVC.read_text(), Loader=_Loader) if d]
    assert len(docs) == 1
    return docs[0]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTOR = {None: 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_FACTOR |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(value) -> Decimal:
    match = _QUANTITY.match(str(value))
    assert match, f"unexpected quantity {value!r}"
    return Decimal(match.group(1)) * _FACTOR[match.group(2)]


# ---------------------------------------------------------------------------------------------- tests


def test_base_renders_the_serving_runtime(rendered, runtime):
    assert [(o["apiVersion"], o["kind"]) for o in rendered] == [("serving.kserve.io/v1alpha1", "ServingRuntime")]
    assert runtime["metadata"]["name"] == RUNTIME_NAME
    assert "namespace" not in runtime["metadata"], "the base is namespace-agnostic: apply with -n"
    assert runtime["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kfops"


def test_rendered_objects_match_the_crd_schemas(rendered, rendered_examples):
    for obj in rendered + rendered_examples:
        assert schema_errors(obj) == [], f"{obj['kind']}/{obj['metadata'].get('name')}"


def test_example_inferenceservice_file_matches_the_crd_schema(isvc):
    assert schema_errors(isvc) == []


def test_examples_kustomization_renders_the_example_unchanged(isvc, rendered_examples):
    assert rendered_examples == [isvc]


def test_runtime_serves_the_suite_model_format(runtime):
    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [{"name": MODEL_FORMAT, "version": "1", "autoSelect": True}]
    assert spec["protocolVersions"] == ["v1", "v2"]
    assert not spec.get("multiModel", False)
    assert not spec.get("disabled", False)


def test_runtime_container_runs_the_server_command_line(container):
    assert container["image"] == "ghcr.io/kfops/kfops-serving:0.1.0"
    assert "command" not in container, "the image's ENTRYPOINT (python -m kfops.serving) must stay"
    assert container["args"] == [
        "--model=/mnt/models",
        "--name={{.Name}}",
        "--host=0.0.0.0",
        f"--port={PORT}",
        "--max-batch-rows=256",
        "--max-wait-ms=5",
    ]
    assert container["ports"] == [{"containerPort": PORT, "protocol": "TCP"}]


def test_image_tag_follows_the_package_version(container):
    version = re.search(r'__version__ = "([^"]+)"', (REPO_ROOT / "kfops" / "__init__.py").read_text()).group(1)
    assert container["image"].rsplit(":", 1)[1] == version
    assert f"ARG KFOPS_IMAGE=ghcr.io/kfops/kfops-serving:{version}" in DOCKERFILE.read_text()


def test_readiness_waits_for_the_model(container):
    probe = container["readinessProbe"]
    # /v2/health/ready answers before the model is loaded; the model's own endpoint does not.
    assert probe["httpGet"] == {"path": "/v2/models/{{.Name}}/ready", "port": PORT}


def test_thread_counts_follow_the_cpu_limit(container):
    env = _env(container)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        assert "value" not in env[name], name
        ref = env[name]["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu"
        assert str(ref["divisor"]) == "1"
        assert ref.get("containerName", CONTAINER) == CONTAINER


def test_resources_are_bounded(container):
    resources = container["resources"]
    for key in ("cpu", "memory"):
        request, limit = resources["requests"][key], resources["limits"][key]
        assert _quantity(request) <= _quantity(limit), key
    # A whole number of CPUs, so the thread count derived from the limit is exact.
    assert _quantity(resources["limits"]["cpu"]) == int(_quantity(resources["limits"]["cpu"]))


def test_container_security_context(runtime, container):
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not ctx.get("privileged", False)
    assert ctx.get("runAsUser", 1000) != 0
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not runtime["spec"].get(flag, False), flag


def test_writable_scratch_space_on_a_read_only_root(runtime, container):
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    empty_dirs = {path for path, name in mounts.items() if "emptyDir" in volumes[name]}
    assert empty_dirs, "no emptyDir mounted: the read-only root leaves nowhere to write"
    env = _env(container)
    for name in ("TMPDIR", "HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        value = env[name]["value"]
        assert any(value == p or value.startswith(p.rstrip("/") + "/") for p in empty_dirs), (name, value)


def test_runtime_is_accepted_by_knative(container):
    """KServe's default (Serverless) mode runs the predictor as a Knative Service, which validates more
    than the CRD: reserved mount paths (/tmp among them), container securityContext fields it allows, one
    port, reserved environment variables."""
    reserved_paths = {"/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"}
    for mount in container["volumeMounts"]:
        assert (mount["mountPath"].rstrip("/") or "/") not in reserved_paths, mount
    allowed = {
        "allowPrivilegeEscalation",
        "capabilities",
        "readOnlyRootFilesystem",
        "runAsGroup",
        "runAsNonRoot",
        "runAsUser",
        "seccompProfile",
    }
    assert set(container["securityContext"]) <= allowed
    assert len(container["ports"]) == 1
    assert not {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"} & set(_env(container))


def test_prometheus_scraping_annotations(runtime, isvc):
    annotations = runtime["spec"]["annotations"]
    assert annotations == {
        "serving.kserve.io/enable-prometheus-scraping": "true",
        "prometheus.kserve.io/port": str(PORT),
        "prometheus.kserve.io/path": "/metrics",
    }
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"


def test_example_inferenceservice_uses_the_runtime(isvc, runtime):
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model.get("protocolVersion", "v2") in runtime["spec"]["protocolVersions"]
    # An MLflow 3 model's artifact folder in the s3:// artifact root, no credentials in the URI.
    assert re.fullmatch(r"s3://[a-z0-9.-]+/\d+/models/m-[0-9a-f]+/artifacts", model["storageUri"])
    assert predictor["serviceAccountName"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    # The canary is documented but off: with it set, a fresh apply would split traffic.
    assert "canaryTrafficPercent" not in predictor
    assert re.search(r"^\s*#\s*canaryTrafficPercent: \d+", EXAMPLE_ISVC.read_text(), re.MULTILINE)
    assert "kfops deploy" in EXAMPLE_ISVC.read_text()


_SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key assignment": re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{20,}"),
    "MinIO default credentials": re.compile(r"(?i)\bminioadmin\b"),
    "credentials in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "literal password": re.compile(r"(?i)\bpassword\s*[:=]\s*['\"]?[^\s'\"<>$]{4,}"),
}
_SENSITIVE_ENV = re.compile(r"(?i)(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)")


def test_no_credentials_in_any_manifest_file():
    files = [*sorted(p for p in MANIFESTS.rglob("*") if p.is_file()), DOCKERFILE]
    for path in files:
        text = path.read_text()
        for what, pattern in _SECRET_PATTERNS.items():
            assert not pattern.search(text), f"{what} in {path.relative_to(REPO_ROOT)}"


def test_no_credentials_in_rendered_objects(rendered, rendered_examples):
    for obj in rendered + rendered_examples:
        assert obj["kind"] != "Secret", "Secrets are created out of band, never committed"
        for container in obj["spec"].get("containers", []):
            for env in container.get("env", []):
                if _SENSITIVE_ENV.search(env["name"]):
                    assert "value" not in env, f"{env['name']} must come from a Secret (valueFrom)"


def _set(*path, value) -> Callable[[dict], None]:
    """Set obj[path[0]][path[1]]...= value."""

    def mutate(obj: dict) -> None:
        node = obj
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _delete(*path) -> Callable[[dict], None]:
    def mutate(obj: dict) -> None:
        node = obj
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


_C0 = ("spec", "containers", 0)
_PRED = ("spec", "predictor")


@pytest.mark.parametrize(
    ("target", "mutate", "where"),
    [
        # a typo in a field name (the API server rejects it under strict field validation)
        ("runtime", _set(*_C0, "imagee", value="ghcr.io/kfops/kfops-serving:0.1.0"), "spec.containers.0"),
        ("runtime", _set("spec", "volumes", 0, "emptyDirr", value={}), "spec.volumes.0"),
        ("isvc", _set(*_PRED, "model", "storageURI", value="s3://mlflow/1"), "spec.predictor.model"),
        # a string where an integer or boolean belongs
        (
            "runtime",
            _set(*_C0, "readinessProbe", "periodSeconds", value="5"),
            "spec.containers.0.readinessProbe.periodSeconds",
        ),
        ("runtime", _set(*_C0, "ports", 0, "containerPort", value="8080"), "spec.containers.0.ports.0.containerPort"),
        (
            "runtime",
            _set("spec", "supportedModelFormats", 0, "autoSelect", value="true"),
            "spec.supportedModelFormats.0.autoSelect",
        ),
        ("isvc", _set(*_PRED, "minReplicas", value="1"), "spec.predictor.minReplicas"),
        ("isvc", _set(*_PRED, "canaryTrafficPercent", value="10"), "spec.predictor.canaryTrafficPercent"),
        # an integer or boolean where a string belongs (annotation values)
        (
            "runtime",
            _set("spec", "annotations", "prometheus.kserve.io/port", value=8080),
            "spec.annotations.prometheus.kserve.io/port",
        ),
        (
            "isvc",
            _set("metadata", "annotations", "serving.kserve.io/enable-prometheus-scraping", value=True),
            "metadata.annotations.serving.kserve.io/enable-prometheus-scraping",
        ),
        # a value outside an enum or a pattern, a missing required field, an invalid name
        ("isvc", _set(*_PRED, "scaleMetric", value="gpu"), "spec.predictor.scaleMetric"),
        ("runtime", _set(*_C0, "resources", "limits", "cpu", value="one"), "spec.containers.0.resources.limits.cpu"),
        ("runtime", _delete("spec", "containers"), "spec"),
        ("runtime", _set("metadata", "name", value="Kfops_Runtime"), "metadata.name"),
    ],
)
def test_validator_rejects_wrong_fields(target, mutate, where, request):
    """The validation above is real: one wrong field (a typo, a string for an int, an int for a string, a
    value outside an enum or pattern, a missing required field) fails it, at that field."""
    broken = copy.deepcopy(request.getfixturevalue(target))
    mutate(broken)
    errors = schema_errors(broken)
    assert errors, "the mutated manifest passed validation"
    assert where in {error.split(": ", 1)[0] for error in errors}, errors


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [("serving.kserve.io/v1alpha1", "ServingRuntime"), ("serving.kserve.io/v1beta1", "InferenceService")],
)
def test_converted_crd_schemas_are_valid_json_schema(api_version, kind):
    Draft7Validator.check_schema(validator(api_version, kind).schema)


def test_validator_rejects_an_unknown_api_version(runtime):
    broken = copy.deepcopy(runtime)
    broken["apiVersion"] = "serving.kserve.io/v1beta1"  # ServingRuntime exists only as v1alpha1
    with pytest.raises(AssertionError, match="not in the CRD"):
        schema_errors(broken)


def test_dockerfile_matches_the_component_image_conventions():
    text = DOCKERFILE.read_text()
    # built on the component image (its environment, user, torch and suite), with the server's smoke test
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${BASE_IMAGE}"]
    assert "ARG BASE_IMAGE=ghcr.io/kfops/kfops:" in text
    assert "sh /opt/suite-image.sh smoke serving" in text
    component = COMPONENT_DOCKERFILE.read_text()
    assert "sh /opt/suite-image.sh torch-cpu" in component and "sh /opt/suite-image.sh install component" in component
    assert re.search(r"^USER 1000:1000$", text, re.MULTILINE)
    assert re.search(r"^EXPOSE 8080$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["python", "-m", "kfops\.serving"\]$', text, re.MULTILINE)
    assert re.search(r"^CMD \[.*\"--model=/mnt/models\".*\]$", text, re.MULTILINE)
    for env in ("HOME=/tmp", "TMPDIR=/tmp", "XDG_CACHE_HOME=/tmp/.cache"):
        assert env in component
