"""The one Kubernetes seam: a small client for custom objects over the ``kubernetes`` package (get, create,
merge-patch) and one wait-for-condition. deploy, rollout, sweep (Katib) and train (TrainJob) use it; tests replace
the API server with a fake that records every request.

It talks to InferenceServices by default; ``client.for_resource(CustomResource(...))`` gives the same connection
for another kind (Katib Experiments, Kubeflow Trainer TrainJobs). ``get_path`` reads the API server's OpenAPI v3
discovery documents (what ``isvc.capabilities`` learns KServe's version from), and ``patch(..., dry_run=True)``
asks for a server-side dry run.

``CustomObjectsApi`` of kubernetes 30.1 sends PATCH as ``application/merge-patch+json`` and keeps ``None`` as
JSON ``null``, so a patch can remove a field (KServeClient.patch drops ``None`` and cannot). Creates and patches
ask for strict field validation, so a field the CRD does not know is an error instead of being dropped.

Connection: an explicit ``host`` (tests, a proxy from ``kubectl proxy``), else the in-cluster service account
(a KFP step), else the kubeconfig (``KUBECONFIG`` or ``~/.kube/config``, optionally one ``context``). API errors
become ``KubeError`` (a ``KfopsError``) saying what to fix for 401, 403, 404, 409 and 422; a 403 from an admission
webhook (KServe's validation) gives the webhook's message, not an RBAC hint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from kfops.components.contracts import KfopsError

log = logging.getLogger(__name__)

FIELD_MANAGER = "kfops"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass(frozen=True)
class CustomResource:
    """A kind of custom object: where its API is, and what to tell a user when it is missing or forbidden."""

    group: str
    version: str
    plural: str
    kind: str
    provider: str  # what installs the CRD, named in "not found" errors
    rbac_doc: str  # where the needed Role is described, named in "forbidden" errors


INFERENCE_SERVICES = CustomResource(
    "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService", "KServe", "components/deploy/README.md"
)
T = TypeVar("T")


class KubeError(KfopsError):
    """A Kubernetes API request failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


def _status_body(body: Any) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body or "")
    except (TypeError, ValueError):
        return {"message": str(body or "").strip()}
    return parsed if isinstance(parsed, dict) else {"message": str(parsed)}


class KubeClient:
    """Custom objects of one kind (InferenceServices unless told otherwise) in any namespace, through one
    ``kubernetes.client.ApiClient``."""

    def __init__(
        self,
        api_client,
        default_namespace: str = "default",
        request_timeout_s: float = 30.0,
        resource: CustomResource = INFERENCE_SERVICES,
    ):
        from kubernetes import client

        self.api_client = api_client
        self.api = client.CustomObjectsApi(api_client)
        self.host = api_client.configuration.host
        self.default_namespace = default_namespace
        self.request_timeout_s = request_timeout_s
        self.resource = resource

    def for_resource(self, resource: CustomResource) -> KubeClient:
        """The same connection and default namespace, for another kind of object."""
        return KubeClient(self.api_client, self.default_namespace, self.request_timeout_s, resource)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The live object, or None if there is none."""
        try:
            return self._call(
                "read",
                namespace,
                name,
                self.api.get_namespaced_custom_object,
                self.resource.group,
                self.resource.version,
                namespace,
                self.resource.plural,
                name,
                missing_ok=True,
            )
        except _Missing:
            return None

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = (body.get("metadata") or {}).get("name", "?")
        return self._call(
            "create",
            namespace,
            name,
            self.api.create_namespaced_custom_object,
            self.resource.group,
            self.resource.version,
            namespace,
            self.resource.plural,
            body,
            field_manager=FIELD_MANAGER,
            field_validation="Strict",
        )

    def patch(self, namespace: str, name: str, patch: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Send ``patch`` as a JSON merge patch (RFC 7386): ``None`` removes a field. ``dry_run`` asks for a
        server-side dry run (``dryRun=All``): admission and validation run, nothing is stored."""
        extra = {"dry_run": "All"} if dry_run else {}
        return self._call(
            "dry-run patch" if dry_run else "patch",
            namespace,
            name,
            self.api.patch_namespaced_custom_object,
            self.resource.group,
            self.resource.version,
            namespace,
            self.resource.plural,
            name,
            patch,
            **extra,
            field_manager=FIELD_MANAGER,
            field_validation="Strict",
        )

    def get_path(self, path: str) -> dict[str, Any]:
        """GET a non-resource path of the API server as JSON, e.g. the OpenAPI v3 discovery documents
        (``/openapi/v3``, then a ``serverRelativeURL`` from its index, query included). Every authenticated
        identity may read these through the ``system:discovery`` ClusterRole: no namespace role is involved."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        parts = urlsplit(path)
        try:
            return self.api_client.call_api(
                parts.path,
                "GET",
                query_params=parse_qsl(parts.query),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                response_type="object",
                _return_http_data_only=True,
                _request_timeout=self.request_timeout_s,
            )
        except ApiException as err:
            raise _discovery_error(path, err.status, _status_body(err.body)) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise KubeError(f"read {path}: cannot reach the Kubernetes API at {self.host}: {err}") from err

    def _call(self, verb: str, namespace: str, name: str, method, *args, missing_ok: bool = False, **kwargs):
        import urllib3
        from kubernetes.client.exceptions import ApiException

        where = f"{verb} {self.resource.kind} {namespace}/{name}"
        try:
            return method(*args, _request_timeout=self.request_timeout_s, **kwargs)
        except ApiException as err:
            status = _status_body(err.body)
            details = status.get("details") or {}
            if err.status == 404 and missing_ok and details.get("name") == name:
                raise _Missing() from err
            raise _api_error(where, namespace, err.status, status, self.resource) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise KubeError(f"{where}: cannot reach the Kubernetes API at {self.host}: {err}") from err


class _Missing(Exception):
    """The object does not exist (a 404 that names it)."""


def _api_error(
    where: str, namespace: str, code: int, status: dict[str, Any], resource: CustomResource = INFERENCE_SERVICES
) -> KubeError:
    message = str(status.get("message") or "").strip()
    reason = str(status.get("reason") or "")
    causes = (status.get("details") or {}).get("causes") or []
    fields = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in causes if isinstance(c, dict))
    if code == 403 and message.startswith("admission webhook"):
        # A validating webhook (KServe's) refused the object: its message says why; no role is missing.
        text = f"refused: {message}"
    elif code == 401:
        text = (
            "unauthorized: the API server rejected the credentials (the kubeconfig user or the service-account "
            "token); log in again or check the token"
        )
    elif code == 403:
        text = (
            f"forbidden: {message}. The identity needs get, create and patch on "
            f"{resource.plural}.{resource.group} in namespace {namespace} (a Role and a RoleBinding; see "
            f"{resource.rbac_doc})"
        )
    elif code == 404:
        text = (
            f"not found: {message or 'the server could not find the requested resource'}. Is {resource.provider} "
            f"installed (the CRD {resource.plural}.{resource.group}) and does namespace {namespace} exist?"
        )
    elif code == 409:
        text = (
            f"conflict: {message}. The object changed since it was read (another deploy or rollout?); look at it "
            "and run again"
        )
    elif code == 422:
        text = f"invalid: {message}" + (f" ({fields})" if fields and fields not in message else "")
    else:
        text = f"API error {code} {reason}: {message}".rstrip(": ")
    return KubeError(f"{where}: {text}", status=code, reason=reason)


def _discovery_error(path: str, code: int, status: dict[str, Any]) -> KubeError:
    message = str(status.get("message") or "").strip()
    if code == 401:
        text = "unauthorized: the API server rejected the credentials; log in again or check the token"
    elif code == 403:
        text = (
            f"forbidden: {message}. Reading the API's OpenAPI documents needs the system:discovery ClusterRole "
            "(GET /openapi/v3 and /openapi/v3/*), which Kubernetes binds to every authenticated identity; has "
            "that binding been removed?"
        )
    elif code == 404:
        text = (
            f"not found: {message or 'the server could not find the requested resource'}. The API server serves "
            "no such OpenAPI v3 document (Kubernetes >= 1.27 serves /openapi/v3)"
        )
    else:
        text = f"API error {code} {status.get('reason') or ''}: {message}".rstrip(": ")
    return KubeError(f"read {path}: {text}", status=code, reason=str(status.get("reason") or ""))


# ------------------------------------------------------------------------------------------------ connecting
def connect(host: str = "", context: str = "", token: str = "") -> KubeClient:
    """A ``KubeClient`` for an explicit host, the in-cluster service account, or the kubeconfig (in that order)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    namespace = "default"
    if host:
        configuration.host = host.rstrip("/")
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
    elif os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as err:
            raise KubeError(f"cannot use the in-cluster service account: {err}") from err
        try:
            with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
                namespace = handle.read().strip() or namespace
        except OSError:
            pass
    else:
        try:
            # The kubernetes package reads KUBECONFIG once, at import: pass it as it is now.
            files = os.environ.get("KUBECONFIG") or None
            config.load_kube_config(config_file=files, context=context or None, client_configuration=configuration)
            contexts, active = config.list_kube_config_contexts(config_file=files)
        except (config.ConfigException, OSError, TypeError) as err:
            where = os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise KubeError(
                f"no Kubernetes connection: not in a cluster, and the kubeconfig ({where}) gave none"
                + (f" for context '{context}'" if context else "")
                + f": {err}"
            ) from err
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
        namespace = ((chosen or {}).get("context") or {}).get("namespace") or namespace
    api_client = client.ApiClient(configuration=configuration)
    log.debug("Kubernetes API at %s, default namespace %s", configuration.host, namespace)
    return KubeClient(api_client, default_namespace=namespace)


# ------------------------------------------------------------------------------------------------ waiting
class WaitTimeout(KfopsError):
    """``wait_for`` ran out of time; ``observed`` is the object last read."""

    def __init__(self, message: str, observed: dict[str, Any]):
        super().__init__(message)
        self.observed = observed


def wait_for(
    api: KubeClient,
    namespace: str,
    name: str,
    done: Callable[[dict[str, Any]], T | None],
    *,
    waiting_for: str,
    timeout_s: float,
    poll_s: float,
    timeout_message: Callable[[dict[str, Any]], str],
    on_poll: Callable[[dict[str, Any]], None] | None = None,
    started: float | None = None,
) -> T:
    """Read the object every ``poll_s`` until ``done(obj)`` gives a result (not None), which is returned.

    ``done`` raises to stop at once (a Failed condition). A missing object is a ``KfopsError`` naming
    ``waiting_for``; after ``timeout_s`` (counted from ``started``, default now) a ``WaitTimeout`` with
    ``timeout_message(obj)`` and the object last read. ``on_poll`` sees every object read.
    """
    deadline = (time.monotonic() if started is None else started) + timeout_s
    kind = getattr(getattr(api, "resource", None), "kind", "object")
    while True:
        live = api.get(namespace, name)
        if live is None:
            raise KfopsError(f"{kind} {namespace}/{name} disappeared while waiting for {waiting_for}")
        if on_poll is not None:
            on_poll(live)
        result = done(live)
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(timeout_message(live), live)
        log.debug("waiting for %s %s/%s: %s", kind, namespace, name, waiting_for)
        time.sleep(min(poll_s, remaining))


def true_condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of type ``kind`` when it is ``"True"``, else None."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def wait_for_condition(
    api: KubeClient,
    namespace: str,
    name: str,
    *,
    title: str,
    succeeded: str,
    result: Callable[[dict[str, Any]], T],
    failure_hint: Callable[[dict[str, Any]], str],
    waiting_for: str,
    timeout_s: float,
    poll_s: float,
    timeout_message: Callable[[dict[str, Any]], str],
    on_poll: Callable[[dict[str, Any]], None] | None = None,
    started: float | None = None,
) -> T:
    """``wait_for`` a job-like object (a Katib Experiment, a TrainJob) to finish: once its ``succeeded``
    condition is True, return ``result(status)``; a True ``Failed`` condition raises ``KfopsError``
    ("<title> <namespace>/<name> failed (<reason>): <message>; <failure_hint(status)>"). ``on_poll`` sees each
    status read."""

    def done(live: dict[str, Any]) -> T | None:
        status = live.get("status") or {}
        if true_condition(status, succeeded):
            return result(status)
        failed = true_condition(status, "Failed")
        if failed:
            raise KfopsError(
                f"{title} {namespace}/{name} failed ({failed.get('reason', '?')}): {failed.get('message', '')}; "
                f"{failure_hint(status)}"
            )
        return None

    return wait_for(
        api,
        namespace,
        name,
        done,
        waiting_for=waiting_for,
        timeout_s=timeout_s,
        poll_s=poll_s,
        timeout_message=timeout_message,
        on_poll=None if on_poll is None else (lambda live: on_poll(live.get("status") or {})),
        started=started,
    )
