"""A stand-in for the Kubeflow Pipelines v2beta1 REST API on 127.0.0.1, for driving a real ``kfp.Client``.

No KFP backend runs here; this server answers the few endpoints ``kfops submit/upload/schedule`` use, keeps
what they create, and records every request (method, path, query, headers, JSON or multipart body) so tests
assert exactly what the client sent. A token, when set, is required on every endpoint but the health check,
as in a Kubeflow deployment whose auth proxy lets /healthz through.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fake_http import FakeHTTPServer

PREFIX = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None  # parsed JSON, or {"fields": {...}, "files": {name: (filename, bytes)}} for multipart


@dataclass
class FakeKfp:
    token: str | None = None
    multi_user: bool = False
    requests: list[Request] = field(default_factory=list)
    experiments: list[dict] = field(default_factory=list)
    pipelines: list[dict] = field(default_factory=list)
    versions: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    recurring_runs: list[dict] = field(default_factory=list)
    run_state: str = "SUCCEEDED"
    login_redirect: bool = False  # answer everything with a redirect to a login page (an auth proxy, no token)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")]


def _filter_name(query: dict[str, str]) -> str | None:
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"]).get("predicates", [])
    names = [p.get("stringValue") or p.get("string_value") for p in predicates if p.get("key") == "display_name"]
    return names[0] if names else None


def _by_name(items: list[dict], query: dict[str, str]) -> list[dict]:
    name = _filter_name(query)
    return [i for i in items if name is None or i["display_name"] == name]


def _multipart(content_type: str, body: bytes) -> dict[str, Any]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields, files = {}, {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        if filename:
            files[name] = (filename, payload)
        else:
            fields[name] = payload.decode()
    return {"fields": fields, "files": files}


def make_handler(state: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            content_type = self.headers.get("Content-Type", "")
            if raw and content_type.startswith("multipart/form-data"):
                body = _multipart(content_type, raw)
            elif raw:
                body = json.loads(raw)
            else:
                body = None
            request = Request(self.command, url.path, query, {k.lower(): v for k, v in self.headers.items()}, body)
            state.requests.append(request)
            path = url.path.removeprefix(PREFIX)
            if state.login_redirect:
                self.send_response(302)
                self.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if path == "/healthz" and self.command == "GET":
                return self._send(200, {"multi_user": state.multi_user})
            if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._send(401, {"error": "Unauthorized", "code": 16, "message": "token is invalid"})
            return self._route(path, query, body)

        def _route(self, path: str, query: dict[str, str], body: Any) -> None:
            method = self.command
            if path == "/experiments" and method == "GET":
                found = [
                    e
                    for e in _by_name(state.experiments, query)
                    if e.get("namespace", "") == query.get("namespace", "")
                ]
                return self._send(200, {"experiments": found, "total_size": len(found)} if found else {})
            if path == "/experiments" and method == "POST":
                experiment = {**body, "experiment_id": state.new_id("experiment")}
                state.experiments.append(experiment)
                return self._send(200, experiment)
            if path == "/pipelines" and method == "GET":
                found = _by_name(state.pipelines, query)
                return self._send(200, {"pipelines": found, "total_size": len(found)} if found else {})
            if path == "/pipelines/upload" and method == "POST":
                pipeline = {"pipeline_id": state.new_id("pipeline"), "display_name": query["name"]}
                state.pipelines.append(pipeline)
                # KFP stores the uploaded file as the first version, named after the pipeline
                state.versions.append(
                    {**pipeline, "pipeline_version_id": state.new_id("version"), "display_name": query["name"]}
                )
                return self._send(200, pipeline)
            if path == "/pipelines/upload_version" and method == "POST":
                version = {
                    "pipeline_id": query["pipelineid"],
                    "pipeline_version_id": state.new_id("version"),
                    "display_name": query["name"],
                }
                state.versions.append(version)
                return self._send(200, version)
            if path.startswith("/pipelines/") and path.endswith("/versions") and method == "GET":
                pipeline_id = path.split("/")[2]
                found = [v for v in _by_name(state.versions, query) if v["pipeline_id"] == pipeline_id]
                return self._send(200, {"pipeline_versions": found, "total_size": len(found)} if found else {})
            if path == "/runs" and method == "POST":
                run = {**body, "run_id": state.new_id("run"), "state": "PENDING"}
                state.runs.append(run)
                return self._send(200, run)
            if path.startswith("/runs/") and method == "GET":
                run_id = path.split("/")[2]
                for run in state.runs:
                    if run["run_id"] == run_id:
                        return self._send(200, {**run, "state": state.run_state})
                return self._send(404, {"message": f"run {run_id} not found"})
            if path == "/recurringruns" and method == "GET":
                found = [
                    r
                    for r in _by_name(state.recurring_runs, query)
                    if r["experiment_id"] == query.get("experiment_id", r["experiment_id"])
                ]
                return self._send(200, {"recurringRuns": found, "total_size": len(found)} if found else {})
            if path == "/recurringruns" and method == "POST":
                recurring = {**body, "recurring_run_id": state.new_id("recurring")}
                state.recurring_runs.append(recurring)
                return self._send(200, recurring)
            return self._send(404, {"message": f"no route {method} {path}"})

        do_GET = do_POST = do_DELETE = _handle

    return Handler


class KfpServer:
    """The fake API on 127.0.0.1:<free port>, in a thread; ``url`` is what ``--host`` takes."""

    def __init__(self, state: FakeKfp):
        self.state = state
        self.httpd = FakeHTTPServer(make_handler(state), name="fake-kfp")
        self.url = self.httpd.url

    def __enter__(self) -> KfpServer:
        self.httpd.start()
        return self

    def __exit__(self, *exc) -> None:
        # an error inside a request thread fails the test with that error (tests/fake_http.py)
        self.httpd.stop()
