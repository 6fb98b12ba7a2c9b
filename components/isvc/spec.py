"""InferenceService manifests, and the merge patches that move traffic between a stable and a canary model.

Pure functions over plain dicts: no Kubernetes client, no MLflow. ``kube`` sends what these build; ``traffic``
and ``logic`` decide when.

KServe has one canary mechanism per deployment mode, and kfops drives both:

- **Knative** (``serving.kserve.io/deploymentMode: Knative``): ``spec.predictor`` is always the latest revision.
  ``spec.predictor.canaryTrafficPercent: P`` sends P% to it and the rest to the last revision rolled out at
  100%. Promote: remove the field (merge patch ``null``). A canary at 0% still leaves the bad revision latest
  (the next change to anything would roll it out), so rollback writes the stable predictor back as the latest
  spec: first with ``canaryTrafficPercent: 0`` (all traffic on the stable revision at once, while the new
  revision of the stable model starts), then without the field once that revision is ready.
- **Standard** (``Standard``, KServe >= 0.20): ``spec.predictor`` is the stable model and ``spec.canary`` a
  list of ``{trafficPercent, predictor}``; a canary predictor needs a ``name`` (its Deployment is
  ``{isvc}-{name}-predictor``). Promote: the canary's predictor becomes ``spec.predictor`` (name included, so
  KServe keeps its pods) and ``spec.canary`` goes. Rollback: ``spec.canary`` goes.

What kfops records on the object, so a later step (rollout, rollback, a person with kubectl) knows what serves:

- labels ``kfops.io/model-version`` (the stable version) and ``kfops.io/canary-version`` (only during a canary);
- annotations ``kfops.io/model-name``, ``kfops.io/stable-storage-uri`` and, in Knative mode during a canary,
  ``kfops.io/stable-predictor``: the stable predictor's fields that kfops manages (JSON), which rollback
  restores;
- ``kfops.io/model-version`` in each predictor's ``labels``, so every pod carries the version it serves.

Patches touch only the fields kfops manages (``PREDICTOR_FIELDS``, ``MODEL_FIELDS``, kfops' own labels and
annotations); a managed field the new spec no longer has is removed with ``null``. Fields others set (node
selectors, tolerations) stay.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from kfops.components.contracts import ALIAS_CHAMPION, KfopsError, fields_from_parameters

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

DEFAULT_RUNTIME = "kfops-pytorch-tabular"  # manifests/serving/servingruntime.yaml
MODEL_FORMAT = "kfops-mlflow-pyfunc"
MODEL_FORMAT_VERSION = "1"
DEFAULT_SERVICE_ACCOUNT = "kfops-model-reader"  # holds the S3 secret (manifests/README.md)
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_CONTAINER = "kserve-container"  # the ServingRuntime's container

KNATIVE = "knative"
STANDARD = "standard"
MODES = (KNATIVE, STANDARD)
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_MODE_VALUE = {KNATIVE: "Knative", STANDARD: "Standard"}
# KServe 0.17 renamed Serverless to Knative and RawDeployment to Standard; it still reads the old names.
_MODE_OF_VALUE = {"knative": KNATIVE, "serverless": KNATIVE, "standard": STANDARD, "rawdeployment": STANDARD}
PROMETHEUS_ANNOTATION = "serving.kserve.io/enable-prometheus-scraping"

LABEL_VERSION = "kfops.io/model-version"
LABEL_CANARY_VERSION = "kfops.io/canary-version"
ANNOTATION_MODEL = "kfops.io/model-name"
ANNOTATION_STABLE_URI = "kfops.io/stable-storage-uri"
ANNOTATION_STABLE_PREDICTOR = "kfops.io/stable-predictor"

# The predictor fields kfops owns; patches replace these and leave every other field alone.
PREDICTOR_FIELDS = ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "serviceAccountName", "logger")
MODEL_FIELDS = ("name", "modelFormat", "runtime", "protocolVersion", "storageUri", "resources", "image", "env")
# The registered version, for the server: KServe's storage initializer copies the files, which do not say it
# (kfops.components.model_store reads it; metrics, answers and payload logs carry it).
MODEL_VERSION_ENV = "KFOPS_MODEL_VERSION"

SCALE_METRICS = ("cpu", "memory", "concurrency", "rps")
LOGGER_MODES = ("all", "request", "response")
PROTOCOLS = ("v1", "v2")
# KServe names the Knative revisions {name}-predictor-00001: that must fit a 63-character DNS label.
MAX_NAME_LENGTH = 47

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_quantity(value: str, what: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2Gi", "1.5") as a number; KfopsError naming ``what`` if bad."""
    from kubernetes.utils import parse_quantity as kubernetes_quantity

    text = str(value).strip()
    try:
        if any(c.isspace() for c in text):  # the client's parser allows "2 Gi"; the API server does not
            raise ValueError(text)
        return kubernetes_quantity(text)
    except (ValueError, ArithmeticError):
        raise KfopsError(f"deploy: {what} '{value}' is not a Kubernetes quantity (e.g. 500m, 2, 1Gi, 512Mi)") from None


# ------------------------------------------------------------------------------------------------ the spec
@dataclass
class DeploySpec:
    """What to serve and how: the deploy component's and ``kfops deploy``'s parameters, typed."""

    model_name: str
    version: str = ALIAS_CHAMPION  # a version number or an alias ("champion", "@challenger")
    name: str = ""  # the InferenceService; "" = model_name
    namespace: str = ""  # "" = the pod's namespace in a cluster, else the kubeconfig context's
    mode: str = KNATIVE  # KServe deployment mode: knative or standard
    canary_percent: int = 10  # a new version's share while the serving one stays stable; 100 = replace at once
    runtime: str = DEFAULT_RUNTIME
    image: str = ""  # "" = the runtime's image; else this image with the runtime's arguments, env and probes
    protocol_version: str = "v2"
    cpu_request: str = "1"
    cpu_limit: str = "1"  # the server runs one torch thread per CPU of the limit: keep it whole
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"
    gpus: int = 0  # nvidia.com/gpu limit; needs a CUDA serving image
    min_replicas: int = 1
    max_replicas: int = 3
    scale_metric: str = ""  # "" = KServe's default; cpu, memory (HPA) or concurrency, rps (Knative only)
    scale_target: int = 0  # 0 = KServe's default for the metric
    service_account: str = DEFAULT_SERVICE_ACCOUNT  # "" = the namespace's default account
    logger_url: str = ""  # payload logger: CloudEvents of requests/responses sent here ("" = off)
    logger_mode: str = "all"

    # field -> the deploy component's parameter, where the two differ
    PARAMETER_NAMES: ClassVar[dict[str, str]] = {"name": "isvc_name", "mode": "deployment_mode"}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> DeploySpec:
        """The spec from the deploy component's parameters: each field given under its parameter name (a field
        with none keeps its default; other names are ignored)."""
        return cls(**fields_from_parameters(cls, parameters, cls.PARAMETER_NAMES))

    @property
    def isvc_name(self) -> str:
        return self.name or self.model_name

    def check(self) -> None:
        """Refuse a spec KServe or Kubernetes would reject, naming the field and the value."""
        if not self.model_name or "/" in self.model_name or "@" in self.model_name:
            raise KfopsError(f"deploy: model name {self.model_name!r} is not valid (non-empty, no '/' or '@')")
        name = self.isvc_name
        if not _DNS1035.match(name) or len(name) > MAX_NAME_LENGTH:
            hint = " (the model name is used when no InferenceService name is given)" if not self.name else ""
            raise KfopsError(
                f"deploy: InferenceService name '{name}'{hint} must be lowercase letters, digits and '-', start with "
                f"a letter, end with a letter or digit, and have at most {MAX_NAME_LENGTH} characters"
            )
        if self.namespace and (not _DNS1123_LABEL.match(self.namespace) or len(self.namespace) > 63):
            raise KfopsError(f"deploy: namespace '{self.namespace}' is not a valid Kubernetes namespace name")
        if self.mode not in MODES:
            raise KfopsError(f"deploy: mode must be knative or standard, got '{self.mode}'")
        if isinstance(self.canary_percent, bool) or not 0 <= int(self.canary_percent) <= 100:
            raise KfopsError(f"deploy: canary_percent must be an integer from 0 to 100, got {self.canary_percent}")
        for what, value in (("runtime", self.runtime), ("service_account", self.service_account)):
            if (value or what == "runtime") and not _DNS1123_SUBDOMAIN.match(value or ""):
                raise KfopsError(f"deploy: {what} '{value}' is not a valid Kubernetes object name")
        if self.protocol_version not in PROTOCOLS:
            raise KfopsError(f"deploy: protocol_version must be v1 or v2, got '{self.protocol_version}'")
        for resource in ("cpu", "memory"):
            request = parse_quantity(getattr(self, f"{resource}_request"), f"{resource}_request")
            limit = parse_quantity(getattr(self, f"{resource}_limit"), f"{resource}_limit")
            if request <= 0 or request > limit:
                raise KfopsError(
                    f"deploy: {resource}_request '{getattr(self, f'{resource}_request')}' must be positive and at most "
                    f"{resource}_limit '{getattr(self, f'{resource}_limit')}'"
                )
        if self.gpus < 0:
            raise KfopsError(f"deploy: gpus must be 0 or more, got {self.gpus}")
        lowest = 1 if self.mode == STANDARD else 0
        if self.min_replicas < lowest:
            why = " (Standard mode autoscales with an HPA, which cannot scale to zero)" if self.mode == STANDARD else ""
            raise KfopsError(f"deploy: min_replicas must be at least {lowest}{why}, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise KfopsError(
                f"deploy: max_replicas ({self.max_replicas}) must be at least 1 and at least min_replicas "
                f"({self.min_replicas})"
            )
        if self.scale_metric and self.scale_metric not in SCALE_METRICS:
            raise KfopsError(
                f"deploy: scale_metric must be one of {', '.join(SCALE_METRICS)}, got '{self.scale_metric}'"
            )
        if self.mode == STANDARD and self.scale_metric in ("concurrency", "rps"):
            raise KfopsError(
                f"deploy: scale_metric '{self.scale_metric}' needs Knative's autoscaler; Standard mode scales on cpu "
                "or memory"
            )
        if self.scale_target < 0 or (self.scale_target and not self.scale_metric):
            raise KfopsError(
                f"deploy: scale_target {self.scale_target} needs a scale_metric and must be positive (0 = default)"
            )
        if self.logger_url and not re.match(r"^https?://[^/\s]+", self.logger_url):
            raise KfopsError(f"deploy: logger_url '{self.logger_url}' must be an http:// or https:// URL")
        if self.logger_mode not in LOGGER_MODES:
            raise KfopsError(f"deploy: logger_mode must be one of {', '.join(LOGGER_MODES)}, got '{self.logger_mode}'")


# ------------------------------------------------------------------------------------------------ manifests
def build_predictor(spec: DeploySpec, version: str, storage_uri: str, name: str = "") -> dict[str, Any]:
    """The predictor serving ``storage_uri`` (model ``version``) as ``spec`` says; ``name`` for a Standard canary."""
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": str(spec.cpu_request), "memory": str(spec.memory_request)},
        "limits": {"cpu": str(spec.cpu_limit), "memory": str(spec.memory_limit)},
    }
    if spec.gpus:
        # Extended resources are set as limits; Kubernetes uses the limit as the request.
        resources["limits"][GPU_RESOURCE] = str(spec.gpus)
    model: dict[str, Any] = {
        # The container KServe merges with the runtime's (same name); a canary's predictor must name it.
        "name": MODEL_CONTAINER,
        "modelFormat": {"name": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION},
        "runtime": spec.runtime,
        "protocolVersion": spec.protocol_version,
        "storageUri": storage_uri,
        "resources": resources,
        "env": [{"name": MODEL_VERSION_ENV, "value": str(version)}],
    }
    if spec.image:
        # KServe merges the predictor's model container into the runtime's: only the image changes.
        model["image"] = spec.image
    predictor: dict[str, Any] = {}
    if name:
        predictor["name"] = name
    predictor |= {
        "minReplicas": int(spec.min_replicas),
        "maxReplicas": int(spec.max_replicas),
        "labels": {LABEL_VERSION: str(version)},
    }
    if spec.scale_metric:
        predictor["scaleMetric"] = spec.scale_metric
    if spec.scale_target:
        predictor["scaleTarget"] = int(spec.scale_target)
    if spec.service_account:
        predictor["serviceAccountName"] = spec.service_account
    if spec.logger_url:
        predictor["logger"] = {"url": spec.logger_url, "mode": spec.logger_mode}
    predictor["model"] = model
    return predictor


def build_inferenceservice(spec: DeploySpec, version: str, storage_uri: str) -> dict[str, Any]:
    """The InferenceService serving one model version with all the traffic: what a first deploy creates."""
    metadata: dict[str, Any] = {"name": spec.isvc_name}
    if spec.namespace:
        metadata["namespace"] = spec.namespace
    metadata["labels"] = {
        "app.kubernetes.io/name": spec.isvc_name,
        "app.kubernetes.io/part-of": "kfops",
        "app.kubernetes.io/managed-by": "kfops",
        LABEL_VERSION: str(version),
    }
    metadata["annotations"] = {
        DEPLOYMENT_MODE_ANNOTATION: _MODE_VALUE[spec.mode],
        PROMETHEUS_ANNOTATION: "true",
        ANNOTATION_MODEL: spec.model_name,
        ANNOTATION_STABLE_URI: storage_uri,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {"predictor": build_predictor(spec, version, storage_uri)},
    }


def clean_manifest(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a manifest to keep or re-apply: no status, no server-written metadata."""
    metadata = obj.get("metadata") or {}
    kept = {k: copy.deepcopy(metadata[k]) for k in ("name", "namespace", "labels", "annotations") if metadata.get(k)}
    return {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind", KIND), "metadata": kept} | {
        "spec": copy.deepcopy(obj.get("spec") or {})
    }


# ------------------------------------------------------------------------------------------------ live state
def mode_of(obj: dict[str, Any]) -> str | None:
    """The deployment mode an InferenceService asks for in its annotation (None when it names none)."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    if value is None:
        return None
    mode = _MODE_OF_VALUE.get(str(value).lower())
    if mode is None:
        raise KfopsError(f"InferenceService {_where(obj)}: unknown {DEPLOYMENT_MODE_ANNOTATION} '{value}'")
    return mode


@dataclass
class ServingState:
    """What an InferenceService serves, as kfops reads it: the stable model and the canary, if one runs."""

    mode: str
    model_name: str
    stable_version: str  # "" when the object does not say (not deployed by kfops)
    stable_storage_uri: str
    canary_version: str = ""
    canary_storage_uri: str = ""
    canary_percent: int | None = None  # None: no canary, the stable model takes all traffic
    canary_name: str = ""  # Standard mode: the canary predictor's name

    @property
    def has_canary(self) -> bool:
        return self.canary_percent is not None

    def describe(self) -> str:
        stable = f"version {self.stable_version or '?'} ({self.stable_storage_uri or '?'})"
        if not self.has_canary:
            return f"{stable} takes all traffic"
        return (
            f"canary version {self.canary_version or '?'} ({self.canary_storage_uri or '?'}) at "
            f"{self.canary_percent}%, stable {stable} the rest"
        )


def _where(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace', '?')}/{metadata.get('name', '?')}"


def _storage_uri(predictor: dict[str, Any]) -> str:
    return str(((predictor or {}).get("model") or {}).get("storageUri") or "")


def _version_label(predictor: dict[str, Any]) -> str:
    return str(((predictor or {}).get("labels") or {}).get(LABEL_VERSION) or "")


def serving_state(obj: dict[str, Any], mode: str | None = None) -> ServingState:
    """Read stable and canary from a live InferenceService (``mode`` when its annotation names none)."""
    mode = mode_of(obj) or mode
    if mode not in MODES:
        raise KfopsError(
            f"InferenceService {_where(obj)} has no {DEPLOYMENT_MODE_ANNOTATION} annotation: say which mode it runs "
            "in (knative or standard)"
        )
    metadata = obj.get("metadata") or {}
    labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
    spec = obj.get("spec") or {}
    predictor = spec.get("predictor") or {}
    model_name = str(annotations.get(ANNOTATION_MODEL, ""))
    if mode == KNATIVE:
        percent = predictor.get("canaryTrafficPercent")
        # At 100% a canary kfops started is still one (labelled) until promoted; a bare 100 is none.
        if percent is not None and (int(percent) < 100 or LABEL_CANARY_VERSION in labels):
            return ServingState(
                mode,
                model_name,
                stable_version=str(labels.get(LABEL_VERSION, "")),
                stable_storage_uri=str(annotations.get(ANNOTATION_STABLE_URI, "")),
                canary_version=str(labels.get(LABEL_CANARY_VERSION, "")) or _version_label(predictor),
                canary_storage_uri=_storage_uri(predictor),
                canary_percent=int(percent),
            )
        return ServingState(
            mode, model_name, _version_label(predictor) or str(labels.get(LABEL_VERSION, "")), _storage_uri(predictor)
        )
    canaries = spec.get("canary") or []
    if len(canaries) > 1:
        raise KfopsError(f"InferenceService {_where(obj)} has {len(canaries)} canaries; kfops manages one at a time")
    state = ServingState(
        mode, model_name, _version_label(predictor) or str(labels.get(LABEL_VERSION, "")), _storage_uri(predictor)
    )
    if canaries:
        canary = canaries[0].get("predictor") or {}
        state.canary_version = _version_label(canary) or str(labels.get(LABEL_CANARY_VERSION, ""))
        state.canary_storage_uri = _storage_uri(canary)
        state.canary_percent = int(canaries[0].get("trafficPercent") or 0)
        state.canary_name = str(canary.get("name", ""))
    return state
