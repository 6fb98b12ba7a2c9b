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
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kfops.components.contracts import ALIAS_CHAMPION, KfopsError

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


# ------------------------------------------------------------------------------------------------ patches
def _replace(old: Any, new: Any) -> Any:
    """The merge-patch value that turns ``old`` into ``new`` (RFC 7386): keys only ``old`` has become null."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = {key: _replace(old.get(key), value) for key, value in new.items()}
        out.update({key: None for key in old if key not in new})
        return out
    return copy.deepcopy(new)


def _put(patch: dict[str, Any], key: str, old: Any, new: Any) -> None:
    if new is not None:
        patch[key] = _replace(old, new)
    elif old is not None:
        patch[key] = None


def managed_fields(predictor: dict[str, Any]) -> dict[str, Any]:
    """The part of a predictor that kfops owns (what rollback restores in Knative mode)."""
    out = {key: copy.deepcopy(predictor[key]) for key in PREDICTOR_FIELDS if key in predictor}
    version = _version_label(predictor)
    if version:
        out["labels"] = {LABEL_VERSION: version}
    model = predictor.get("model") or {}
    out["model"] = {key: copy.deepcopy(model[key]) for key in MODEL_FIELDS if key in model}
    return out


def predictor_patch(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning the managed fields of predictor ``live`` into ``desired``'s, and nothing else."""
    patch: dict[str, Any] = {}
    for key in PREDICTOR_FIELDS:
        _put(patch, key, live.get(key), desired.get(key))
    version = _version_label(desired)
    if version:
        patch["labels"] = {LABEL_VERSION: version}
    live_model, desired_model = live.get("model") or {}, desired.get("model") or {}
    model: dict[str, Any] = {}
    for key in MODEL_FIELDS:
        _put(model, key, live_model.get(key), desired_model.get(key))
    if model:
        patch["model"] = model
    return patch


@dataclass
class Expectation:
    """The traffic split a write asks for, which ``unmet`` checks in the status KServe reports."""

    mode: str
    canary_percent: int | None = None  # None: one model takes all traffic
    canary_name: str = ""  # Standard: the canary predictor to find in status.canaryStatuses

    def describe(self) -> str:
        if self.mode == KNATIVE:
            share = 100 if self.canary_percent is None else self.canary_percent
            return f"Ready=True with the latest revision ready and at {share}% of traffic"
        if self.canary_percent is None:
            return "Ready=True with no canary"
        return f"Ready=True with canary {self.canary_name} ready and at {self.canary_percent}% of traffic"


@dataclass
class Write:
    """One request of a plan: create the object or merge-patch it, then wait for ``expect``."""

    verb: str  # "create" or "patch"
    body: dict[str, Any]
    expect: Expectation


def _metadata_patch(live: dict[str, Any], labels: dict[str, Any], annotations: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    resource_version = (live.get("metadata") or {}).get("resourceVersion")
    if resource_version:
        # Optimistic concurrency: the API server refuses the patch (409) if the object changed since it was read.
        metadata["resourceVersion"] = resource_version
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    return metadata


def canary_name_for(isvc_name: str, version: str, live_predictor_name: str = "") -> str:
    """The Standard-mode canary predictor's name: ``v<version>`` (its Deployment ``{isvc}-v<version>-predictor``)."""
    name = f"v{version}".lower()
    if not _DNS1123_LABEL.match(name):
        name = "canary"
    if name == live_predictor_name:
        name = f"{name}-canary"
    deployment = f"{isvc_name}-{name}-predictor"
    if len(deployment) > 63:
        raise KfopsError(
            f"deploy: the canary Deployment name '{deployment}' is longer than 63 characters; use a shorter "
            "InferenceService name"
        )
    return name


@dataclass
class DeployPlan:
    """What deploying a version onto the live object takes, and what served before (for a rollback)."""

    operation: str  # create, canary, replace (no canary: canary_percent 100) or update (same version again)
    write: Write
    stable_version: str = ""
    stable_storage_uri: str = ""


def plan_deploy(spec: DeploySpec, version: str, storage_uri: str, live: dict[str, Any] | None) -> DeployPlan:
    """How to serve ``version`` given the live object (None when there is none): one create or one merge patch."""
    desired = build_inferenceservice(spec, version, storage_uri)
    if live is None:
        return DeployPlan("create", Write("create", desired, Expectation(spec.mode)))
    where = f"{spec.namespace or _where(live).split('/')[0]}/{spec.isvc_name}"
    live_mode = mode_of(live)
    if live_mode is not None and live_mode != spec.mode:
        raise KfopsError(
            f"InferenceService {where} runs in {_MODE_VALUE[live_mode]} mode; KServe cannot change the deployment "
            f"mode of a live InferenceService: deploy with mode {live_mode}, or delete it first"
        )
    state = serving_state(live, spec.mode)
    if state.has_canary:
        raise KfopsError(
            f"InferenceService {where} has a canary in progress ({state.describe()}): promote it or roll it back "
            f"before deploying version {version}"
        )
    live_predictor = (live.get("spec") or {}).get("predictor") or {}
    labels: dict[str, Any] = {LABEL_VERSION: str(version), LABEL_CANARY_VERSION: None}
    annotations: dict[str, Any] = {ANNOTATION_MODEL: spec.model_name, ANNOTATION_STABLE_URI: storage_uri}
    same = state.stable_storage_uri == storage_uri
    if same or spec.canary_percent == 100:
        patch = predictor_patch(live_predictor, desired["spec"]["predictor"])
        if spec.mode == KNATIVE:
            patch["canaryTrafficPercent"] = None
            annotations[ANNOTATION_STABLE_PREDICTOR] = None
        body = {"metadata": _metadata_patch(live, labels, annotations), "spec": {"predictor": patch}}
        return DeployPlan(
            "update" if same else "replace",
            Write("patch", body, Expectation(spec.mode)),
            state.stable_version,
            state.stable_storage_uri,
        )
    labels = {LABEL_CANARY_VERSION: str(version)}
    annotations = {ANNOTATION_MODEL: spec.model_name}
    if spec.mode == KNATIVE:
        patch = predictor_patch(live_predictor, desired["spec"]["predictor"])
        patch["canaryTrafficPercent"] = int(spec.canary_percent)
        if state.stable_version:
            labels[LABEL_VERSION] = state.stable_version
        annotations[ANNOTATION_STABLE_URI] = state.stable_storage_uri
        annotations[ANNOTATION_STABLE_PREDICTOR] = json.dumps(
            managed_fields(live_predictor), sort_keys=True, separators=(",", ":")
        )
        body = {"metadata": _metadata_patch(live, labels, annotations), "spec": {"predictor": patch}}
        expect = Expectation(KNATIVE, int(spec.canary_percent))
    else:
        name = canary_name_for(spec.isvc_name, version, str(live_predictor.get("name", "")))
        canary = {
            "trafficPercent": int(spec.canary_percent),
            "predictor": build_predictor(spec, version, storage_uri, name),
        }
        body = {"metadata": _metadata_patch(live, labels, annotations), "spec": {"canary": [canary]}}
        expect = Expectation(STANDARD, int(spec.canary_percent), name)
    return DeployPlan("canary", Write("patch", body, expect), state.stable_version, state.stable_storage_uri)


def _require_canary(live: dict[str, Any], mode: str | None, action: str) -> ServingState:
    state = serving_state(live, mode)
    if not state.has_canary:
        raise KfopsError(f"InferenceService {_where(live)} has no canary to {action}: {state.describe()}")
    return state


def percent_write(live: dict[str, Any], percent: int, mode: str | None = None) -> Write:
    """The patch that gives the running canary ``percent`` of the traffic."""
    if isinstance(percent, bool) or not 0 <= int(percent) <= 100:
        raise KfopsError(f"canary percent must be an integer from 0 to 100, got {percent}")
    state = _require_canary(live, mode, "set a traffic share for")
    if state.mode == KNATIVE:
        body = {
            "metadata": _metadata_patch(live, {}, {}),
            "spec": {"predictor": {"canaryTrafficPercent": int(percent)}},
        }
        return Write("patch", body, Expectation(KNATIVE, int(percent)))
    canaries = copy.deepcopy(live["spec"]["canary"])
    canaries[0]["trafficPercent"] = int(percent)  # spec.canary is an atomic list: a merge patch replaces it whole
    body = {"metadata": _metadata_patch(live, {}, {}), "spec": {"canary": canaries}}
    return Write("patch", body, Expectation(STANDARD, int(percent), state.canary_name))


def promote_write(live: dict[str, Any], mode: str | None = None) -> Write:
    """The patch that makes the running canary the stable model, with all the traffic."""
    state = _require_canary(live, mode, "promote")
    labels = {LABEL_VERSION: state.canary_version or None, LABEL_CANARY_VERSION: None}
    annotations: dict[str, Any] = {ANNOTATION_STABLE_URI: state.canary_storage_uri}
    if state.mode == KNATIVE:
        annotations[ANNOTATION_STABLE_PREDICTOR] = None
        body = {
            "metadata": _metadata_patch(live, labels, annotations),
            "spec": {"predictor": {"canaryTrafficPercent": None}},
        }
        return Write("patch", body, Expectation(KNATIVE))
    canary = live["spec"]["canary"][0]["predictor"]
    patch = predictor_patch(live["spec"]["predictor"], canary)
    # The canary's name moves with it, so KServe keeps the canary's pods as the stable ones.
    patch = {"name": canary.get("name")} | patch
    body = {"metadata": _metadata_patch(live, labels, annotations), "spec": {"predictor": patch, "canary": None}}
    return Write("patch", body, Expectation(STANDARD))


def rollback_writes(
    live: dict[str, Any], stable_storage_uri: str = "", stable_version: str = "", mode: str | None = None
) -> list[Write]:
    """The patches that put all traffic back on the stable model and make it the latest spec again.

    The stable model is the one the object records (``serving_state``); ``stable_storage_uri`` and
    ``stable_version`` override it (a rollback after a replace without canary, or of an object kfops did not
    write).
    """
    state = serving_state(live, mode)
    if not state.has_canary and not stable_storage_uri:
        raise KfopsError(
            f"InferenceService {_where(live)} has no canary to roll back ({state.describe()}); pass the stable "
            "storage URI to put another model back"
        )
    uri = stable_storage_uri or state.stable_storage_uri
    version = stable_version or (state.stable_version if uri == state.stable_storage_uri else "")
    if not uri:
        raise KfopsError(f"InferenceService {_where(live)}: the stable model's storage URI is not recorded; pass it")
    metadata = live.get("metadata") or {}
    predictor = (live.get("spec") or {}).get("predictor") or {}
    labels = {LABEL_VERSION: version or None, LABEL_CANARY_VERSION: None}
    annotations: dict[str, Any] = {ANNOTATION_STABLE_URI: uri}
    if state.mode == KNATIVE:
        recorded = (metadata.get("annotations") or {}).get(ANNOTATION_STABLE_PREDICTOR)
        try:
            stable = json.loads(recorded) if recorded else managed_fields(predictor)
        except json.JSONDecodeError as err:
            raise KfopsError(
                f"InferenceService {_where(live)}: annotation {ANNOTATION_STABLE_PREDICTOR} is not JSON: {err}"
            ) from err
        stable.setdefault("model", {})["storageUri"] = uri
        stable["labels"] = {LABEL_VERSION: version} if version else {}
        patch = predictor_patch(predictor, stable)
        if not version:
            patch["labels"] = {LABEL_VERSION: None}
        annotations[ANNOTATION_STABLE_PREDICTOR] = None
        # First all traffic to the revision rolled out last (stable) while the stable model becomes the latest
        # spec; then, once that revision is ready, drop the canary field so it takes the traffic.
        first = {
            "metadata": _metadata_patch(live, labels, annotations),
            "spec": {"predictor": patch | {"canaryTrafficPercent": 0}},
        }
        second = {"spec": {"predictor": {"canaryTrafficPercent": None}}}
        return [Write("patch", first, Expectation(KNATIVE, 0)), Write("patch", second, Expectation(KNATIVE))]
    spec_patch: dict[str, Any] = {"canary": None}
    if uri != state.stable_storage_uri:
        spec_patch["predictor"] = {"labels": {LABEL_VERSION: version or None}, "model": {"storageUri": uri}}
    return [
        Write(
            "patch", {"metadata": _metadata_patch(live, labels, annotations), "spec": spec_patch}, Expectation(STANDARD)
        )
    ]


# ------------------------------------------------------------------------------------------------ status
def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def unmet(obj: dict[str, Any], expect: Expectation, generation: int | None = None) -> list[str]:
    """What in the object's status does not yet show ``expect`` (empty when it all does).

    ``generation`` is the spec generation our write produced: a status for an older one is stale.
    """
    status = obj.get("status") or {}
    problems = []
    ready = _condition(status, "Ready")
    if ready is None:
        problems.append("no Ready condition yet")
    elif ready.get("status") != "True":
        why = ": ".join(str(ready[k]) for k in ("reason", "message") if ready.get(k))
        problems.append(f"Ready={ready.get('status')}" + (f" ({why})" if why else ""))
    observed = status.get("observedGeneration")
    if generation and observed is not None and int(observed) < int(generation):
        problems.append(f"the status is for generation {observed}, the spec is at {generation}")
    if expect.mode == KNATIVE:
        predictor = (status.get("components") or {}).get("predictor") or {}
        created, latest_ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
        if created and latest_ready and created != latest_ready:
            problems.append(f"latest revision {created} is not ready (latest ready: {latest_ready})")
        traffic = predictor.get("traffic") or []
        want = 100 if expect.canary_percent is None else expect.canary_percent
        if not traffic:
            problems.append("no traffic in the predictor's status yet")
        else:
            latest = sum(int(t.get("percent") or 0) for t in traffic if t.get("latestRevision"))
            total = sum(int(t.get("percent") or 0) for t in traffic)
            if latest != want or total != 100:
                problems.append(f"the latest revision has {latest}% of {total}% of traffic, not {want}%")
    else:
        canaries = status.get("canaryStatuses") or []
        if expect.canary_percent is None:
            if canaries:
                problems.append("canaries still in the status: " + ", ".join(str(c.get("name")) for c in canaries))
        else:
            entry = next((c for c in canaries if c.get("name") == expect.canary_name), None)
            if entry is None:
                problems.append(f"no status for canary {expect.canary_name} yet")
            else:
                if entry.get("ready") is not True:
                    problems.append(f"canary {expect.canary_name} is not ready")
                if entry.get("trafficPercent") != expect.canary_percent:
                    problems.append(
                        f"canary {expect.canary_name} has {entry.get('trafficPercent')}% of traffic, not "
                        f"{expect.canary_percent}%"
                    )
    return problems


def describe_status(obj: dict[str, Any] | None) -> str:
    """One line of what KServe reports: conditions that are not True, traffic, canaries, generations."""
    if obj is None:
        return "the InferenceService does not exist"
    status = obj.get("status") or {}
    if not status:
        return "no status yet (has the KServe controller seen it?)"
    parts = []
    for condition in status.get("conditions") or []:
        text = f"{condition.get('type')}={condition.get('status')}"
        if condition.get("status") != "True":
            why = ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k))
            text += f" ({why})" if why else ""
        parts.append(text)
    predictor = (status.get("components") or {}).get("predictor") or {}
    traffic = predictor.get("traffic") or []
    if traffic:
        routes = []
        for target in traffic:
            tag = target.get("tag") or ("latest" if target.get("latestRevision") else "")
            routes.append(
                f"{target.get('revisionName', '?')} {target.get('percent', 0)}%" + (f" ({tag})" if tag else "")
            )
        parts.append("traffic " + ", ".join(routes))
    for key, label in (("latestCreatedRevision", "latest created"), ("latestReadyRevision", "latest ready")):
        if predictor.get(key):
            parts.append(f"{label} {predictor[key]}")
    for canary in status.get("canaryStatuses") or []:
        ready = "ready" if canary.get("ready") else "not ready"
        parts.append(f"canary {canary.get('name')} {ready} at {canary.get('trafficPercent')}%")
    if status.get("observedGeneration") is not None:
        generation = (obj.get("metadata") or {}).get("generation")
        parts.append(
            f"observed generation {status['observedGeneration']}" + (f" of {generation}" if generation else "")
        )
    return "; ".join(parts) or "an empty status"
