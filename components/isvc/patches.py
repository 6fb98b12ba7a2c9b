"""The writes deploy and rollout send to a live InferenceService: the plan for a version (create, canary beside
the serving one, or replace), and the merge patches that move traffic (percent, promote, roll back), each with
the ``Expectation`` of what KServe should then report.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.components.contracts.delivery import _DNS1123_LABEL, KNATIVE, STANDARD, DeploySpec
from kfops.components.isvc.spec import (
    _MODE_VALUE,
    ANNOTATION_MODEL,
    ANNOTATION_STABLE_PREDICTOR,
    ANNOTATION_STABLE_URI,
    LABEL_CANARY_VERSION,
    LABEL_VERSION,
    MIN_CANARY_LIST,
    MODEL_FIELDS,
    PREDICTOR_FIELDS,
    ServingState,
    _version_label,
    _where,
    build_inferenceservice,
    build_predictor,
    mode_of,
    serving_state,
)


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


def plan_deploy(
    spec: DeploySpec,
    version: str,
    storage_uri: str,
    live: dict[str, Any] | None,
    *,
    legacy_mode_names: bool = False,
    canary_list: bool = True,
) -> DeployPlan:
    """How to serve ``version`` given the live object (None when there is none): one create or one merge patch.

    What the cluster's KServe accepts (``capabilities``): ``legacy_mode_names`` creates the object with the mode
    named ``Serverless``/``RawDeployment``; without ``canary_list`` (no ``spec.canary``, KServe < 0.20) a
    Standard-mode canary is refused, naming the version it needs."""
    desired = build_inferenceservice(spec, version, storage_uri, legacy_mode_names=legacy_mode_names)
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
        if not canary_list:
            raise KfopsError(
                f"KServe on this cluster has no spec.canary (needs KServe >= {MIN_CANARY_LIST}): InferenceService "
                f"{where} runs in Standard mode, where older KServe ignores canaryTrafficPercent, so version "
                f"{version} cannot start as a canary. Upgrade KServe, or deploy with canary_percent 100 to replace "
                "the model at once"
            )
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
