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
- **Standard** (``Standard``): ``spec.predictor`` is the stable model and ``spec.canary`` (KServe >= 0.20,
  kserve#5672) a list of ``{trafficPercent, predictor}``; a canary predictor needs a ``name`` (its Deployment is
  ``{isvc}-{name}-predictor``). Promote: the canary's predictor becomes ``spec.predictor`` (name included, so
  KServe keeps its pods) and ``spec.canary`` goes. Rollback: ``spec.canary`` goes.

Which mode names (``Knative``/``Standard`` or the older ``Serverless``/``RawDeployment``) and which canary fields
the cluster's KServe accepts is ``capabilities``' business.

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
from dataclasses import dataclass
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.components.contracts.delivery import (
    KNATIVE,
    MODES,
    STANDARD,
    DeploySpec,
)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

MODEL_FORMAT = "kfops-mlflow-pyfunc"
MODEL_FORMAT_VERSION = "1"
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_CONTAINER = "kserve-container"  # the ServingRuntime's container

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
_MODE_VALUE = {KNATIVE: "Knative", STANDARD: "Standard"}
# KServe 0.16 renamed Serverless to Knative and RawDeployment to Standard (kserve#4608; the 0.15 -> 0.16
# upgrade in kserve#4798) and still reads the old names; KServe 0.15 and older know only the old ones.
_LEGACY_MODE_VALUE = {KNATIVE: "Serverless", STANDARD: "RawDeployment"}
MIN_NEW_MODE_NAMES = "0.16"
MIN_CANARY_LIST = "0.20"  # spec.canary, the Standard-mode canary (kserve#5672)
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


def mode_value(mode: str, legacy: bool = False) -> str:
    """The ``serving.kserve.io/deploymentMode`` value for ``mode`` (knative or standard): KServe >= 0.16's name,
    or with ``legacy`` the name every KServe before 0.20 accepts (``Serverless``, ``RawDeployment``)."""
    return (_LEGACY_MODE_VALUE if legacy else _MODE_VALUE)[mode]


def build_inferenceservice(
    spec: DeploySpec, version: str, storage_uri: str, *, legacy_mode_names: bool = False
) -> dict[str, Any]:
    """The InferenceService serving one model version with all the traffic: what a first deploy creates.

    ``legacy_mode_names`` writes the deployment mode as ``Serverless``/``RawDeployment``, for a KServe that may
    predate the new names (``isvc.capabilities``)."""
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
        DEPLOYMENT_MODE_ANNOTATION: mode_value(spec.mode, legacy_mode_names),
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
    """The deployment mode an InferenceService runs in: the one KServe records in ``status.deploymentMode``
    (KServe >= 0.15, kserve#4194), else the one its annotation asks for (None when neither names one).

    The record wins: an older KServe that did not know the annotation's name ran the object in its default mode
    and recorded that one."""
    recorded = recorded_mode_name(obj)
    value = recorded or ((obj.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    if value is None:
        return None
    mode = _MODE_OF_VALUE.get(str(value).lower())
    if mode is None:
        where = "status.deploymentMode" if recorded else DEPLOYMENT_MODE_ANNOTATION
        raise KfopsError(
            f"InferenceService {_where(obj)}: unknown deployment mode '{value}' in {where}; kfops drives Knative "
            "(Serverless) and Standard (RawDeployment) mode"
        )
    return mode


def recorded_mode_name(obj: dict[str, Any]) -> str:
    """The deployment-mode name KServe recorded in the object's status, as written ("" when none)."""
    return str((obj.get("status") or {}).get("deploymentMode") or "")


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
