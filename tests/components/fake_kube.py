"""A fake Kubernetes API server for InferenceServices: real HTTP on 127.0.0.1, KServe's status scripted.

The Kubernetes API is the one part of deploy that cannot run here. This server does what the API server does with
the requests deploy sends, and records each one (method, path, query, content type, JSON body, authorization):

- GET of an InferenceService: the stored object, or 404 with a ``Status`` that names it;
- POST to the collection: 409 if it exists; else stored with ``generation`` 1, a ``resourceVersion`` and a ``uid``;
- PATCH: only ``application/merge-patch+json``; a ``metadata.resourceVersion`` that is not the stored one is a
  409 conflict; the patch is applied as RFC 7386 says (``null`` removes); ``generation`` goes up when the spec
  changes;
- every object written is validated against KServe's real CRD schema with unknown fields rejected
  (``tests.crd_schemas``), as strict field validation does: a violation is a 422 with its causes.

KServe's controller is the scripted part: each GET returns the stored object with the next entry of
``statuses`` (the last one repeats; ``None`` is no status yet, a callable gets the object), shaped as KServe
writes ``status`` (``knative_status``, ``standard_status``).
``fail(method, code, ...)`` makes the next request of that method fail as the API server would.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.crd_schemas import schema_errors
from tests.fake_http import FakeHTTPServer, answer_error

COLLECTION = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices$")
OBJECT = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices/([^/]+)$")
MERGE_PATCH = "application/merge-patch+json"


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

    def __init__(self) -> None:
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

    def put(self, obj: dict[str, Any], generation: int = 1) -> dict[str, Any]:
        """Store an object as if created earlier (what a live cluster already holds)."""
        errors = schema_errors(manifest_of(obj))
        assert errors == [], errors
        stored = copy.deepcopy(obj)
        stored.pop("status", None)
        metadata = stored["metadata"]
        metadata |= {"generation": generation, "resourceVersion": self._next_version(), "uid": str(uuid.uuid4())}
        self.objects[(metadata["namespace"], metadata["name"])] = stored
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
            if match := OBJECT.match(parts.path):
                namespace, name = match.groups()
                if method == "GET":
                    return self._get(namespace, name)
                if method == "PATCH":
                    return self._patch(namespace, name, content_type, body)
            elif (match := COLLECTION.match(parts.path)) and method == "POST":
                return self._create(match.group(1), content_type, body)
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
        return 200, obj

    def _create(self, namespace: str, content_type: str, body: Any):
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
        errors = schema_errors(manifest_of(obj))
        if errors:
            return self._invalid(name, errors)
        obj.pop("status", None)
        obj["metadata"] |= {
            "generation": 1,
            "resourceVersion": self._next_version(),
            "uid": str(uuid.uuid4()),
            "creationTimestamp": "2026-11-26T10:00:00Z",
        }
        self.objects[(namespace, name)] = obj
        return 201, copy.deepcopy(obj)

    def _patch(self, namespace: str, name: str, content_type: str, body: Any):
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
        errors = schema_errors(manifest_of(merged))
        if errors:
            return self._invalid(name, errors)
        merged.pop("status", None)
        if merged.get("spec") != stored.get("spec"):
            merged["metadata"]["generation"] = stored["metadata"]["generation"] + 1
        merged["metadata"]["resourceVersion"] = self._next_version()
        self.objects[(namespace, name)] = merged
        return 200, copy.deepcopy(merged)
