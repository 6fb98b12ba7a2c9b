"""Deploy: serve a registered, blessed model version with a KServe InferenceService.

``deploy(spec)`` resolves the version in the MLflow registry (a number or an alias, ``champion`` by default),
refuses one whose ``kfops.blessed`` tag is not ``true``, takes its storage location from
``get_model_version_download_uri`` (which must be something KServe's storage initializer fetches: ``s3://`` on
MinIO, not ``mlflow-artifacts:/`` or a local path), reads the live InferenceService and then:

- none there: creates it, the version taking all traffic;
- another version serves: one merge patch that starts a canary at ``canary_percent`` (Knative:
  ``canaryTrafficPercent``; Standard: ``spec.canary``), or replaces the model at once when it is 100;
- the same storage location serves: one merge patch of the managed fields (resources, replicas, ...);
- a canary is already running: refuses (promote or roll it back first).

What the cluster's KServe accepts is learned first from its OpenAPI v3 document (``isvc.capabilities``, read-only,
allowed to every authenticated identity): the mode names a new object gets (``Knative``/``Standard``, or
``Serverless``/``RawDeployment`` where the schema cannot rule out KServe 0.15), the name an update must carry for
KServe's update validation (the one the object's record implies), and whether ``spec.canary`` exists (a
Standard-mode canary needs KServe >= 0.20; without it deploy refuses, naming that version).

Everything is checked (the spec, the registry, the URI, the live object's mode and state) before the one write;
then it waits until KServe reports the split it asked for. A timeout raises ``ReadyTimeout`` and sends nothing
more; in Knative mode a canary revision that never becomes ready gets no traffic (Knative routes the latest
revision's share to the latest *ready* one, still the stable), and the error names the stable version for a
rollback. Plain Python: no kfp; MLflow and kubernetes are imported inside the functions that use them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from kfops.components.contracts import ALIAS_CHAMPION, TAG_BLESSED, KfopsError
from kfops.components.contracts.delivery import KNATIVE, DeploySpec
from kfops.components.isvc.capabilities import discover, update_mode_name, with_mode_annotation
from kfops.components.isvc.patches import plan_deploy
from kfops.components.isvc.spec import build_inferenceservice, clean_manifest
from kfops.components.isvc.traffic import DEFAULT_POLL_S, DEFAULT_TIMEOUT_S, ReadyTimeout, wait_ready

log = logging.getLogger(__name__)

# What KServe's storage initializer downloads (https:// covers Azure blob and plain web servers).
FETCHABLE_SCHEMES = ("s3", "gs", "pvc", "https", "http", "hdfs", "webhdfs", "oci", "hf")


@dataclass
class ResolvedModel:
    """A registered model version that may be deployed, and where its files are."""

    name: str
    version: str
    storage_uri: str
    run_id: str = ""


@dataclass
class DeployResult:
    """What ``deploy`` did: the object as applied, KServe's status, and what served before (for a rollback)."""

    operation: str  # dry-run, create, canary, replace or update
    model_name: str
    version: str
    storage_uri: str
    namespace: str
    name: str
    manifest: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    stable_version: str = ""  # the version that served before ("" for a first deploy); stable during a canary
    stable_storage_uri: str = ""
    url: str = ""
    warnings: list[str] = field(default_factory=list)


def _registry_client(tracking_uri: str):
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise KfopsError("no MLflow tracking URI: set MLFLOW_TRACKING_URI or pass mlflow_tracking_uri")
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def resolve_model(model_name: str, version: str = ALIAS_CHAMPION, tracking_uri: str = "") -> ResolvedModel:
    """The blessed version ``version`` (a number, an alias such as ``champion``, or ``latest``) of ``model_name``.

    Raises KfopsError for an unknown model, version or alias, and for a version the gate did not bless.
    """
    from mlflow.exceptions import MlflowException

    from kfops.components.registry import resolve_version

    client = _registry_client(tracking_uri)
    found = resolve_version(client, model_name, str(version or "").strip() or ALIAS_CHAMPION)
    number = str(found.version)
    blessed = (found.tags or {}).get(TAG_BLESSED)
    if str(blessed).lower() != "true":
        state = f"is '{blessed}'" if blessed is not None else "is not set"
        raise KfopsError(
            f"model {model_name} version {number} is not blessed ({TAG_BLESSED} {state}): only a version the gate "
            "blessed is deployed"
        )
    try:
        storage_uri = client.get_model_version_download_uri(model_name, number)
    except MlflowException as err:
        raise KfopsError(f"model {model_name} version {number}: cannot resolve its files: {err.message}") from err
    return ResolvedModel(model_name, number, str(storage_uri), found.run_id or "")


def check_storage_uri(model: ResolvedModel, dry_run: bool = False) -> list[str]:
    """Refuse a location KServe's storage initializer cannot fetch; in a dry run, warn instead (returned)."""
    uri = model.storage_uri
    scheme = urlparse(uri).scheme.lower()
    if scheme in FETCHABLE_SCHEMES:
        return []
    what = f"model {model.name} version {model.version} is stored at {uri}"
    if scheme == "mlflow-artifacts":
        problem = (
            f"{what}, an artifact proxied by the MLflow server, which KServe's storage initializer cannot fetch: run "
            "the MLflow server with --no-serve-artifacts and an s3:// --default-artifact-root (MinIO), so versions "
            "resolve to s3:// locations, and register the model again"
        )
    elif scheme in ("", "file") or len(scheme) == 1:  # a path (one letter: a Windows drive)
        problem = (
            f"{what}, a local path a cluster cannot read: train against an MLflow server whose artifact root is "
            "s3:// (--no-serve-artifacts --default-artifact-root s3://...; MLFLOW_S3_ENDPOINT_URL for MinIO)"
        )
    else:
        problem = (
            f"{what}, which KServe's storage initializer cannot fetch (it reads "
            f"{', '.join(s + '://' for s in FETCHABLE_SCHEMES)})"
        )
    if dry_run:
        log.warning("%s (dry run: written as it is)", problem)
        return [problem]
    raise KfopsError(problem)


def deploy(
    spec: DeploySpec,
    *,
    api=None,
    tracking_uri: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    dry_run: bool = False,
) -> DeployResult:
    """Serve ``spec.version`` of ``spec.model_name`` (see the module docstring); ``api`` is a ``kube.KubeClient``
    (default: ``kube.connect()``). ``dry_run`` builds the InferenceService a first deploy would create, without a
    cluster."""
    spec.check()
    if timeout_s <= 0 or poll_s <= 0:
        raise KfopsError(f"deploy: timeout ({timeout_s}) and poll interval ({poll_s}) must be positive")
    model = resolve_model(spec.model_name, spec.version, tracking_uri)
    warnings = check_storage_uri(model, dry_run)
    if dry_run:
        manifest = build_inferenceservice(spec, model.version, model.storage_uri)
        return DeployResult(
            "dry-run",
            model.name,
            model.version,
            model.storage_uri,
            spec.namespace,
            spec.isvc_name,
            manifest,
            warnings=warnings,
        )
    if api is None:
        from kfops.components.kube import connect

        api = connect()
    spec = dataclasses.replace(spec, namespace=spec.namespace or api.default_namespace)
    namespace, name = spec.namespace, spec.isvc_name
    live = api.get(namespace, name)
    capabilities = discover(api)
    plan = plan_deploy(
        spec,
        model.version,
        model.storage_uri,
        live,
        # Without spec.canary the schema cannot tell 0.15 from 0.16-0.19: the old names, which both accept.
        legacy_mode_names=not capabilities.new_mode_names,
        canary_list=capabilities.canary_list,
    )
    write = plan.write
    if live is not None:
        (write,) = with_mode_annotation([write], live, update_mode_name(api, live, capabilities))
    written = api.create(namespace, write.body) if write.verb == "create" else api.patch(namespace, name, write.body)
    log.info("%s InferenceService %s/%s: %s version %s", plan.operation, namespace, name, model.name, model.version)
    generation = (written.get("metadata") or {}).get("generation")
    try:
        observed = wait_ready(api, namespace, name, write.expect, timeout_s, poll_s, generation)
    except ReadyTimeout as err:
        if plan.stable_storage_uri:
            stable = f"version {plan.stable_version or '?'} ({plan.stable_storage_uri})"
            if plan.operation == "canary" and spec.mode == KNATIVE:
                after = (
                    f" Until the new revision is ready Knative sends its share to the latest ready revision: {stable} "
                    "keeps the traffic. Roll back to remove the canary from the spec."
                )
            else:
                after = f" {stable} served before; roll back to it, or fix the problem and deploy again."
        else:
            after = " Nothing served before this deploy."
        raise ReadyTimeout(
            f"deploy {model.name} version {model.version}: {err}.{after}",
            err.observed,
            err.expect,
            plan.stable_version,
            plan.stable_storage_uri,
        ) from err
    status = observed.get("status") or {}
    return DeployResult(
        plan.operation,
        model.name,
        model.version,
        model.storage_uri,
        namespace,
        name,
        clean_manifest(written),
        status,
        plan.stable_version,
        plan.stable_storage_uri,
        url=str(status.get("url") or ""),
        warnings=warnings,
    )
