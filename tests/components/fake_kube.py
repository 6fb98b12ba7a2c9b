"""A fake Kubernetes API server for InferenceServices: real HTTP on 127.0.0.1, KServe's status scripted.

The Kubernetes API is the one part of deploy that cannot run here. This server does what the API server does with
the requests deploy sends, and records each one (method, path, query, content type, JSON body, authorization):

- GET of an InferenceService: the stored object, or 404 with a ``Status`` that names it;
- POST to the collection: 409 if it exists; else stored with ``generation`` 1, a ``resourceVersion`` and a ``uid``;
- PATCH: only ``application/merge-patch+json``; a ``metadata.resourceVersion`` that is not the stored one is a
  409 conflict; the patch is applied as RFC 7386 says (``null`` removes); ``generation`` goes up when the spec
  changes;
- every object written is validated against KServe's real CRD schema with unknown fields rejected
  (``tests.crd_schemas``), as strict field validation does: a violation is a 422 with its causes;
- ``dryRun=All`` on POST or PATCH runs everything (schema, KServe's webhook) and stores nothing;
- ``GET /openapi/v3`` (the discovery index) and the ``serving.kserve.io/v1beta1`` document it points to, built
  from the same CRD copy.

``kserve`` picks the KServe release line the server behaves as (``KSERVE_0_20`` by default, the CRD copy's):
which fields its CRD has (``spec.canary`` from 0.20) and how its controller records the deployment mode and its
validating webhook checks an update, as KServe's source does (``validateDeploymentMode`` in
``pkg/apis/serving/v1beta1/inference_service_validation.go``):

- the controller records the mode in ``status.deploymentMode`` when it first sees the object: 0.15 the
  annotation's name if it is one it knows (``Serverless``, ``RawDeployment``, ``ModelMesh``), else its default
  mode (kserve#4194's ``GetDeploymentMode``); 0.16 and later the annotation normalised to the new names
  (``constants.ParseDeploymentMode``), else the default ``Standard``. ``put(..., recorded_mode=...)`` stores an
  object with another record (one an older KServe wrote before an upgrade);
- on PATCH the webhook refuses (403, as controller-runtime's ``admission.Denied`` answers) an annotation that
  differs from the record: 0.15 compares both as written; 0.16 and later the record normalised and the annotation
  as written (kserve#5885; KServe versions with kserve#5025 also normalise the annotation at admission, which only
  lets more through); from 0.20 a ``spec.canary`` needs the annotation ``Standard`` exactly (``validateCanarySpecs``,
  as kserve#5885's discussion describes it).

KServe's controller is the scripted part: each GET returns the stored object with the next entry of
``statuses`` (the last one repeats; ``None`` is no status yet, a callable gets the object), shaped as KServe
writes ``status`` (``knative_status``, ``standard_status``).
``fail(method, code, ...)`` makes the next request of that method fail as the API server would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.crd_schemas import SCHEMAS_ROOT, schema_errors
from tests.fake_http import FakeHTTPServer, answer_error

COLLECTION = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices$")
OBJECT = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices/([^/]+)$")
MERGE_PATCH = "application/merge-patch+json"
OPENAPI_INDEX = "/openapi/v3"
OPENAPI_GROUP = "/openapi/v3/apis/serving.kserve.io/v1beta1"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
WEBHOOK = "inferenceservice.kserve-webhook-server.validator"
_LEGACY_TO_NEW = {"Serverless": "Knative", "RawDeployment": "Standard"}


@dataclass(frozen=True)
class KServeRelease:
    """A KServe release line, as far as the writes kfops sends can tell them apart."""

    name: str
    canary_list: bool  # spec.canary in the CRD (0.20, kserve#5672)
    new_mode_names: bool  # Knative/Standard known, the record normalised to them (0.16, kserve#4608)
    default_mode: str  # what the controller records for an annotation it does not know

    def parse_mode(self, value: str) -> str:
        """constants.ParseDeploymentMode of 0.16 and later: the legacy names as the new ones."""
        return _LEGACY_TO_NEW.get(value, value)

    def record(self, annotation: str | None) -> str:
        """The mode the controller records for an object with this annotation."""
        if self.new_mode_names:
            known = ("Knative", "Standard", "ModelMesh", *_LEGACY_TO_NEW)
            return self.parse_mode(annotation) if annotation in known else self.default_mode
        return annotation if annotation in ("Serverless", "RawDeployment", "ModelMesh") else self.default_mode


KSERVE_0_15 = KServeRelease("0.15", canary_list=False, new_mode_names=False, default_mode="Serverless")
KSERVE_0_16 = KServeRelease("0.16-0.19", canary_list=False, new_mode_names=True, default_mode="Standard")
KSERVE_0_20 = KServeRelease("0.20-0.21", canary_list=True, new_mode_names=True, default_mode="Standard")


@cache
def _crd_schema() -> dict[str, Any]:
    crd = json.loads((SCHEMAS_ROOT / "kserve" / "serving.kserve.io_inferenceservices.json").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


def openapi_document(release: KServeRelease) -> dict[str, Any]:
    """The OpenAPI v3 document the API server publishes for serving.kserve.io/v1beta1 (the parts kfops reads, laid
    out as the API server lays out a CRD's: the kind's schema inline, tagged with its group, version and kind)."""
    schema = copy.deepcopy(_crd_schema())
    if not release.canary_list:
        schema["properties"]["spec"]["properties"].pop("canary")
        schema["properties"]["status"]["properties"].pop("canaryStatuses")
    schema["properties"]["metadata"] = {
        "allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
        "default": {},
    }
    schema["x-kubernetes-group-version-kind"] = [
        {"group": "serving.kserve.io", "kind": "InferenceService", "version": "v1beta1"}
    ]
    item = "/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices/{name}"
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": {item: {"get": {"operationId": "readServingKserveIoV1beta1NamespacedInferenceService"}}},
        "components": {
            "schemas": {
                "io.kserve.serving.v1beta1.InferenceService": schema,
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {"type": "object"},
            }
        },
    }


def openapi_hash(document: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest().upper()[:128]


def isvc_path(namespace: str, name: str = "") -> str:
    base = f"/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices"
    return f"{base}/{name}" if name else base


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    authorization: str = ""


def status_object(code: int, reason: str, message: str, details: dict | None = None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def manifest_of(obj: dict[str, Any]) -> dict[str, Any]:
    """What the CRD schema covers: no status, no server-written metadata."""
    metadata = {k: v for k, v in obj.get("metadata", {}).items() if k in ("name", "namespace", "labels", "annotations")}
    return {k: v for k, v in obj.items() if k != "status"} | {"metadata": metadata}


# ------------------------------------------------------------------------------------------------ KServe status
def _conditions(ready: bool, reason: str = "", message: str = "") -> list[dict[str, Any]]:
    when = "2026-11-26T10:00:00Z"
    state = "True" if ready else "False"
    conditions = []
    for kind in ("IngressReady", "PredictorReady", "Ready"):
        condition = {"type": kind, "status": "True" if kind == "IngressReady" else state, "lastTransitionTime": when}
        if not ready and kind != "IngressReady":
            condition |= {"reason": reason or "RevisionMissing", "message": message or "revision not ready"}
        conditions.append(condition)
    return conditions


def knative_status(
    generation: int,
    traffic: list[tuple[str, int, bool]],
    latest_created: str,
    latest_ready: str,
    rolled_out: str = "",
    previous_rolled_out: str = "",
    ready: bool = True,
    reason: str = "",
    message: str = "",
    name: str = "fraud-detector",
    namespace: str = "models",
) -> dict[str, Any]:
    """A status as KServe writes it in Knative mode; ``traffic`` is [(revision, percent, latestRevision)]."""
    url = f"http://{name}.{namespace}.example.com"
    targets = []
    canary = len(traffic) > 1
    for revision, percent, latest in traffic:
        target = {"revisionName": revision, "percent": percent, "latestRevision": latest}
        if canary:
            tag = "latest" if latest else "prev"
            target |= {"tag": tag, "url": f"http://{tag}-{name}-predictor.{namespace}.example.com"}
        targets.append(target)
    predictor = {
        "latestCreatedRevision": latest_created,
        "latestReadyRevision": latest_ready,
        "latestRolledoutRevision": rolled_out or latest_ready,
        "traffic": targets,
        "url": f"http://{name}-predictor.{namespace}.example.com",
    }
    if previous_rolled_out:
        predictor["previousRolledoutRevision"] = previous_rolled_out
    return {
        "address": {"url": f"http://{name}.{namespace}.svc.cluster.local"},
        "components": {"predictor": predictor},
        "conditions": _conditions(ready, reason, message),
        "deploymentMode": "Knative",
        "modelStatus": {
            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
            "transitionStatus": "UpToDate",
        },
        "observedGeneration": generation,
        "url": url,
    }


def standard_status(
    generation: int,
    canaries: list[tuple[str, bool, int]] = (),
    ready: bool = True,
    reason: str = "",
    message: str = "",
    name: str = "fraud-detector",
    namespace: str = "models",
) -> dict[str, Any]:
    """A status as KServe writes it in Standard mode; ``canaries`` is [(name, ready, trafficPercent)]."""
    status = {
        "address": {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
        "components": {"predictor": {"url": f"http://{name}-predictor-{namespace}.example.com"}},
        "conditions": _conditions(ready, reason, message),
        "deploymentMode": "Standard",
        "modelStatus": {
            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
            "transitionStatus": "UpToDate",
        },
        "observedGeneration": generation,
        "url": f"http://{name}-{namespace}.example.com",
    }
    if canaries:
        status["canaryStatuses"] = [
            {"name": canary, "ready": is_ready, "trafficPercent": percent} for canary, is_ready, percent in canaries
        ]
    return status


# ------------------------------------------------------------------------------------------------ the server
class FakeKube:
    """The fake API server; ``start()`` binds 127.0.0.1 on a free port, ``stop()`` shuts it down."""

    def __init__(self, kserve: KServeRelease = KSERVE_0_20) -> None:
        self.kserve = kserve
        self.document = openapi_document(kserve)
        self.recorded: dict[tuple[str, str], str] = {}  # status.deploymentMode, as the controller wrote it
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.statuses: deque = deque()
        self.failures: dict[str, deque] = {}
        self._resource_version = 1000
        self._lock = threading.Lock()
        self._server: FakeHTTPServer | None = None

    # -- set-up
    def start(self) -> FakeKube:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    code, body = fake.handle(
                        self.command,
                        self.path,
                        self.headers.get("Content-Type", ""),
                        raw,
                        self.headers.get("Authorization", ""),
                    )
                except BaseException as error:
                    answer_error(self, error)
                    return
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        self._server = FakeHTTPServer(Handler, name="fake-kube").start()
        return self

    def stop(self) -> None:
        """Shut down; an error raised while handling a request is raised here, failing the test with it."""
        if self._server is not None:
            self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def put(self, obj: dict[str, Any], generation: int = 1, recorded_mode: str | None = None) -> dict[str, Any]:
        """Store an object as if created earlier (what a live cluster already holds), its mode recorded as this
        release's controller records it, or as ``recorded_mode`` ("" for none)."""
        errors = self._schema_errors(obj)
        assert errors == [], errors
        stored = copy.deepcopy(obj)
        stored.pop("status", None)
        metadata = stored["metadata"]
        metadata |= {"generation": generation, "resourceVersion": self._next_version(), "uid": str(uuid.uuid4())}
        key = (metadata["namespace"], metadata["name"])
        self.objects[key] = stored
        self.recorded[key] = self._record(stored) if recorded_mode is None else recorded_mode
        return copy.deepcopy(stored)

    def fail(self, method: str, code: int, reason: str, message: str, causes: list[dict] | None = None) -> None:
        """The next ``method`` request fails with this Status (recorded, nothing changed)."""
        details = {"causes": causes} if causes else {}
        self.failures.setdefault(method, deque()).append((code, status_object(code, reason, message, details)))

    # -- reading the record
    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def stored(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(namespace, name)])

    # -- the API
    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _status(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if not self.statuses:
            return None
        entry = self.statuses.popleft() if len(self.statuses) > 1 else self.statuses[0]
        return entry(obj) if callable(entry) else copy.deepcopy(entry)

    def _record(self, obj: dict[str, Any]) -> str:
        return self.kserve.record(((obj.get("metadata") or {}).get("annotations") or {}).get(MODE_ANNOTATION))

    def _schema_errors(self, obj: dict[str, Any]) -> list[str]:
        """The CRD schema's verdict; a release without spec.canary rejects it as an unknown field."""
        manifest = manifest_of(obj)
        errors = []
        if not self.kserve.canary_list and "canary" in (manifest.get("spec") or {}):
            errors.append("spec: Additional properties are not allowed ('canary' was unexpected)")
            manifest["spec"] = {k: v for k, v in manifest["spec"].items() if k != "canary"}
        return sorted(errors + schema_errors(manifest))

    def _denied(self, message: str) -> tuple[int, dict[str, Any]]:
        # controller-runtime answers a CustomValidator error with admission.Denied: 403 Forbidden; the API server
        # names the webhook before its message.
        return 403, status_object(403, "Forbidden", f'admission webhook "{WEBHOOK}" denied the request: {message}')

    def _validate_update(self, key: tuple[str, str], new: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """KServe's ValidateUpdate, the parts about the deployment mode (see the module doc)."""
        recorded = self.recorded.get(key, "")
        if self.kserve.new_mode_names and recorded:
            recorded = self.kserve.parse_mode(recorded)
        annotations = (new.get("metadata") or {}).get("annotations") or {}
        annotation = annotations.get(MODE_ANNOTATION)
        if recorded and annotation is not None and annotation != recorded:
            return self._denied(
                f"update rejected: deploymentMode cannot be changed from '{recorded}' to '{annotation}'"
            )
        if self.kserve.canary_list and (new.get("spec") or {}).get("canary") and annotation != "Standard":
            return self._denied(f"canary is only supported in Standard deployment mode, got '{annotation}'")
        return None

    def handle(self, method: str, raw_path: str, content_type: str, raw: bytes, authorization: str):
        parts = urlsplit(raw_path)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(
                Request(method, parts.path, dict(parse_qsl(parts.query)), content_type, body, authorization)
            )
            pending = self.failures.get(method)
            if pending:
                return pending.popleft()
            dry_run = dict(parse_qsl(parts.query)).get("dryRun") == "All"
            if method == "GET" and parts.path == OPENAPI_INDEX:
                url = f"{OPENAPI_GROUP}?hash={openapi_hash(self.document)}"
                return 200, {"paths": {"apis/serving.kserve.io/v1beta1": {"serverRelativeURL": url}}}
            if method == "GET" and parts.path == OPENAPI_GROUP:
                return 200, copy.deepcopy(self.document)
            if match := OBJECT.match(parts.path):
                namespace, name = match.groups()
                if method == "GET":
                    return self._get(namespace, name)
                if method == "PATCH":
                    return self._patch(namespace, name, content_type, body, dry_run)
            elif (match := COLLECTION.match(parts.path)) and method == "POST":
                return self._create(match.group(1), content_type, body, dry_run)
            return 404, status_object(404, "NotFound", "the server could not find the requested resource")

    def _not_found(self, name: str) -> tuple[int, dict[str, Any]]:
        details = {"name": name, "group": "serving.kserve.io", "kind": "inferenceservices"}
        return 404, status_object(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found', details)

    def _invalid(self, name: str, errors: list[str]) -> tuple[int, dict[str, Any]]:
        causes = [
            {"reason": "FieldValueInvalid", "message": e.split(": ", 1)[-1], "field": e.split(": ")[0]} for e in errors
        ]
        message = f'InferenceService.serving.kserve.io "{name}" is invalid: ' + ", ".join(errors)
        details = {"name": name, "group": "serving.kserve.io", "kind": "InferenceService", "causes": causes}
        return 422, status_object(422, "Invalid", message, details)

    def _get(self, namespace: str, name: str):
        stored = self.objects.get((namespace, name))
        if stored is None:
            return self._not_found(name)
        obj = copy.deepcopy(stored)
        status = self._status(obj)
        if status is not None:
            obj["status"] = status
            recorded = self.recorded.get((namespace, name))
            if recorded:  # the controller's record, whatever the scripted status says
                status["deploymentMode"] = recorded
            else:
                status.pop("deploymentMode", None)
        return 200, obj

    def _create(self, namespace: str, content_type: str, body: Any, dry_run: bool = False):
        if content_type != "application/json" or not isinstance(body, dict):
            return 415, status_object(415, "UnsupportedMediaType", f"unsupported media type {content_type!r}")
        metadata = body.get("metadata") or {}
        name = metadata.get("name", "")
        if metadata.get("namespace", namespace) != namespace:
            message = "the namespace of the provided object does not match the namespace sent on the request"
            return 400, status_object(400, "BadRequest", message)
        if (namespace, name) in self.objects:
            message = f'inferenceservices.serving.kserve.io "{name}" already exists'
            return 409, status_object(409, "AlreadyExists", message, {"name": name})
        obj = copy.deepcopy(body)
        obj["metadata"]["namespace"] = namespace
        errors = self._schema_errors(obj)
        if errors:
            return self._invalid(name, errors)
        obj.pop("status", None)
        if dry_run:
            return 201, copy.deepcopy(obj)
        obj["metadata"] |= {
            "generation": 1,
            "resourceVersion": self._next_version(),
            "uid": str(uuid.uuid4()),
            "creationTimestamp": "2026-11-26T10:00:00Z",
        }
        self.objects[(namespace, name)] = obj
        self.recorded[(namespace, name)] = self._record(obj)
        return 201, copy.deepcopy(obj)

    def _patch(self, namespace: str, name: str, content_type: str, body: Any, dry_run: bool = False):
        if content_type != MERGE_PATCH or not isinstance(body, dict):
            return 415, status_object(415, "UnsupportedMediaType", f"unsupported media type {content_type!r}")
        stored = self.objects.get((namespace, name))
        if stored is None:
            return self._not_found(name)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != stored["metadata"]["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            )
            return 409, status_object(409, "Conflict", message, {"name": name})
        merged = merge_patch(stored, body)
        errors = self._schema_errors(merged)
        if errors:
            return self._invalid(name, errors)
        refused = self._validate_update((namespace, name), merged)
        if refused is not None:
            return refused
        merged.pop("status", None)
        if dry_run:
            return 200, copy.deepcopy(merged)
        if merged.get("spec") != stored.get("spec"):
            merged["metadata"]["generation"] = stored["metadata"]["generation"] + 1
        merged["metadata"]["resourceVersion"] = self._next_version()
        self.objects[(namespace, name)] = merged
        return 200, copy.deepcopy(merged)
