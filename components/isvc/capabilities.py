"""What the cluster's KServe accepts, learned read-only before kfops writes an InferenceService.

Two things differ between the KServe releases kfops meets, and both decide whether a write is accepted:

- **The deployment-mode names.** KServe 0.16 renamed ``Serverless`` to ``Knative`` and ``RawDeployment`` to
  ``Standard`` (kserve#4608; the 0.15 -> 0.16 upgrade in kserve#4798) and still reads the old names; 0.15 knows
  only the old ones and runs an object whose annotation names another in its configured default mode. On every
  update KServe's validating webhook compares the object's ``serving.kserve.io/deploymentMode`` annotation with
  the mode recorded in ``status.deploymentMode`` (``validateDeploymentMode`` in
  ``pkg/apis/serving/v1beta1/inference_service_validation.go``, added in kserve#4194): before 0.16 both as
  written; from 0.16 the recorded mode normalised to the new name (``constants.ParseDeploymentMode``) but the
  annotation as written (kserve#5885, open), so a legacy annotation is refused once the record says ``Knative``.
  A mismatch refuses the update: "update rejected: deploymentMode cannot be changed from 'X' to 'Y'".
- **The Standard-mode canary.** ``spec.canary`` exists from KServe 0.20 (kserve#5672); older KServe silently
  ignores ``canaryTrafficPercent`` in Standard mode (kserve#5335).

``discover`` reads the OpenAPI v3 document of ``serving.kserve.io/v1beta1`` (``GET /openapi/v3``, then the
``serverRelativeURL`` its index gives), which every authenticated identity may read through the
``system:discovery`` ClusterRole: no cluster-wide role a profile's ``default-editor`` lacks. ``spec.canary`` in
that schema means KServe >= 0.20, hence the new names too. Without it the schema cannot tell 0.15 from 0.16-0.19:
KServe generates its CRDs without descriptions (``config/crd/full`` has none), so no text names the modes, and no
field of InferenceService is known to have arrived with the rename. Then:

- a create writes the old names, which every KServe before 0.20 accepts;
- an update writes the name the object's record implies: a record in the new names comes from KServe >= 0.16, which
  compares the annotation with exactly that name; a record in the old names is ambiguous (0.15 compares with it
  as written, 0.16-0.19 with its new name), so a server-side dry run (``dryRun=All``, nothing stored) of the
  new name settles it: KServe's webhook accepts or refuses it as it would the real write.

``update_mode_name`` gives that name, ``with_mode_annotation`` puts it into a write.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.components.isvc.patches import Write
from kfops.components.isvc.spec import (
    _MODE_OF_VALUE,
    _MODE_VALUE,
    API_VERSION,
    DEPLOYMENT_MODE_ANNOTATION,
    GROUP,
    KIND,
    MIN_CANARY_LIST,
    VERSION,
    _where,
    recorded_mode_name,
)

log = logging.getLogger(__name__)

OPENAPI_INDEX = "/openapi/v3"
OPENAPI_GROUP_PATH = f"apis/{GROUP}/{VERSION}"
# How KServe's webhook words the refusal (validateDeploymentMode); the API server prefixes the webhook's name.
MODE_CHANGE_REFUSED = "deploymentMode cannot be changed"


@dataclass(frozen=True)
class KServeCapabilities:
    """What the cluster's InferenceService API accepts, from its OpenAPI v3 schema."""

    canary_list: bool  # spec.canary: Standard-mode canaries (KServe >= 0.20)
    records_mode: bool  # status.deploymentMode: KServe records the mode and refuses a change (kserve#4194)
    new_mode_names: bool | None  # Knative/Standard accepted; None: the schema cannot tell (0.15 or 0.16-0.19)

    def describe(self) -> str:
        if self.canary_list:
            return f"KServe >= {MIN_CANARY_LIST} (spec.canary; mode names Knative/Standard)"
        return f"KServe < {MIN_CANARY_LIST} (no spec.canary; mode names told by the object's record or a dry run)"


def _schema_of_kind(document: dict[str, Any]) -> dict[str, Any] | None:
    """The InferenceService schema of an OpenAPI v3 document: the one tagged with its group, version and kind
    (``x-kubernetes-group-version-kind``, which the API server adds to every kind it publishes)."""
    schemas = (document.get("components") or {}).get("schemas") or {}
    for schema in schemas.values():
        for gvk in (schema or {}).get("x-kubernetes-group-version-kind") or []:
            if (gvk.get("group"), gvk.get("version"), gvk.get("kind")) == (GROUP, VERSION, KIND):
                return schema
    return None


def _properties(schema: dict[str, Any], name: str) -> dict[str, Any]:
    # A CRD's spec and status are published inline (only ObjectMeta is a $ref).
    return (((schema.get("properties") or {}).get(name)) or {}).get("properties") or {}


def capabilities_from_openapi(document: dict[str, Any]) -> KServeCapabilities:
    """Read ``KServeCapabilities`` from the OpenAPI v3 document of ``serving.kserve.io/v1beta1``."""
    schema = _schema_of_kind(document)
    if schema is None:
        raise KfopsError(
            f"the API server's OpenAPI document for {API_VERSION} has no {KIND} schema: is KServe's "
            "InferenceService CRD installed?"
        )
    canary_list = "canary" in _properties(schema, "spec")
    records_mode = "deploymentMode" in _properties(schema, "status")
    return KServeCapabilities(canary_list, records_mode, True if canary_list else None)


def discover(api) -> KServeCapabilities:
    """Ask the API server what its InferenceService accepts (two GETs, read-only; see the module doc)."""
    index = api.get_path(OPENAPI_INDEX)
    entry = (index.get("paths") or {}).get(OPENAPI_GROUP_PATH) or {}
    url = entry.get("serverRelativeURL")
    if not url:
        raise KfopsError(
            f"the API server's OpenAPI index ({OPENAPI_INDEX}) lists no {OPENAPI_GROUP_PATH}: is KServe installed "
            f"(the CRD inferenceservices.{GROUP}, version {VERSION})?"
        )
    capabilities = capabilities_from_openapi(api.get_path(url))
    log.info("InferenceService API: %s", capabilities.describe())
    return capabilities


def _accepts_new_name(api, live: dict[str, Any], new_name: str) -> bool:
    """A server-side dry run of the annotation ``new_name``: does KServe's webhook accept it on this object?"""
    from kfops.components.kube import KubeError

    metadata = live.get("metadata") or {}
    patch = {"metadata": {"annotations": {DEPLOYMENT_MODE_ANNOTATION: new_name}}}
    try:
        api.patch(metadata.get("namespace", ""), metadata.get("name", ""), patch, dry_run=True)
    except KubeError as err:
        if err.status == 403 and MODE_CHANGE_REFUSED in str(err):
            return False
        raise KubeError(
            f"InferenceService {_where(live)}: cannot tell which deployment-mode names KServe accepts (a dry run "
            f"of {DEPLOYMENT_MODE_ANNOTATION}: {new_name} failed): {err}",
            err.status,
            err.reason,
        ) from err
    return True


def update_mode_name(api, live: dict[str, Any], capabilities: KServeCapabilities | None = None) -> str | None:
    """The ``serving.kserve.io/deploymentMode`` value an update of ``live`` must carry for KServe's update
    validation to accept it, or None to leave the annotation as it is (nothing is compared: no record, or no
    annotation). ``capabilities`` (discovered when needed and not given) and a dry run settle the ambiguous case.
    """
    recorded = recorded_mode_name(live)
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    if not recorded or DEPLOYMENT_MODE_ANNOTATION not in annotations:
        return None  # validateDeploymentMode compares only a recorded mode with a present annotation
    mode = _MODE_OF_VALUE.get(recorded.lower())
    if mode is None:
        return None  # ModelMesh or a name kfops does not drive: serving_state refuses it
    if recorded == _MODE_VALUE[mode]:
        return recorded  # recorded in the new names: KServe >= 0.16 compares the annotation with exactly this
    new_names = capabilities.new_mode_names if capabilities is not None else None
    if new_names is None and capabilities is None:
        new_names = discover(api).new_mode_names
    if new_names is None:
        new_names = _accepts_new_name(api, live, _MODE_VALUE[mode])
        log.info(
            "InferenceService %s: KServe %s the names Knative/Standard (dry run)",
            _where(live),
            "accepts" if new_names else "does not accept",
        )
    if new_names:
        return _MODE_VALUE[mode]
    return recorded  # KServe < 0.16 compares the annotation with the record as written


def with_mode_annotation(writes: list[Write], live: dict[str, Any], value: str | None) -> list[Write]:
    """``writes`` with the first one setting the deployment-mode annotation to ``value`` when the live object
    carries another (later writes see the object it left)."""
    current = ((live.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE_ANNOTATION)
    if not writes or value is None or value == current:
        return writes
    first = writes[0]
    body = copy.deepcopy(first.body)
    body.setdefault("metadata", {}).setdefault("annotations", {})[DEPLOYMENT_MODE_ANNOTATION] = value
    return [Write(first.verb, body, first.expect), *writes[1:]]
