"""The fake Kubernetes API (fake_kube.py) extended to Katib Experiments and Kubeflow Trainer TrainJobs.

Same contract as for InferenceServices: real HTTP on 127.0.0.1, every request recorded, created objects
validated as the API server and the operators' webhooks would (Experiments against Katib's OpenAPI spec and
webhook rules, ``tests.katib_schema``; TrainJobs against Trainer's CRD, ``tests.crd_schemas``; a violation is a
422), and the controller's ``status`` scripted: each GET returns the object with the next entry of
``job_statuses`` (the last repeats).
"""

from __future__ import annotations

import copy
import re
import uuid
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.components.fake_kube import FakeKube, Request, status_object
from tests.crd_schemas import schema_errors
from tests.katib_schema import experiment_errors

JOBS = re.compile(
    r"^/apis/(kubeflow\.org/v1beta1|trainer\.kubeflow\.org/v1alpha1)/namespaces/([^/]+)/(experiments|trainjobs)(?:/([^/]+))?$"
)


def experiments_path(namespace: str, name: str = "") -> str:
    base = f"/apis/kubeflow.org/v1beta1/namespaces/{namespace}/experiments"
    return f"{base}/{name}" if name else base


def trainjobs_path(namespace: str, name: str = "") -> str:
    base = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs"
    return f"{base}/{name}" if name else base


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason or kind,
        "message": message,
        "lastTransitionTime": "2026-11-26T10:00:00Z",
    }


class FakeJobsKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.job_statuses: deque = deque()

    def handle(self, method: str, raw_path: str, content_type: str, raw: bytes, authorization: str):
        parts = urlsplit(raw_path)
        match = JOBS.match(parts.path)
        if not match:
            return super().handle(method, raw_path, content_type, raw, authorization)
        import json

        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append(
                Request(method, parts.path, dict(parse_qsl(parts.query)), content_type, body, authorization)
            )
            pending = self.failures.get(method)
            if pending:
                return pending.popleft()
            _, namespace, plural, name = match.groups()
            if method == "POST" and not name:
                return self._create_job(plural, namespace, body)
            if method == "GET" and name:
                stored = self.jobs.get((plural, namespace, name))
                if stored is None:
                    details = {"name": name, "kind": plural}
                    return 404, status_object(404, "NotFound", f'{plural} "{name}" not found', details)
                obj = copy.deepcopy(stored)
                if self.job_statuses:
                    entry = self.job_statuses.popleft() if len(self.job_statuses) > 1 else self.job_statuses[0]
                    obj["status"] = entry(obj) if callable(entry) else copy.deepcopy(entry)
                return 200, obj
            return 405, status_object(405, "MethodNotAllowed", f"{method} is not handled here")

    def _create_job(self, plural: str, namespace: str, body: dict[str, Any]):
        name = body["metadata"]["name"]
        if (plural, namespace, name) in self.jobs:
            return 409, status_object(409, "AlreadyExists", f'{plural} "{name}" already exists', {"name": name})
        errors = experiment_errors(body) if plural == "experiments" else schema_errors(body)
        if errors:
            causes = [{"reason": "FieldValueInvalid", "message": e, "field": e.split(": ")[0]} for e in errors]
            message = f'{body.get("kind")} "{name}" is invalid: ' + ", ".join(errors)
            return 422, status_object(422, "Invalid", message, {"name": name, "causes": causes})
        obj = copy.deepcopy(body)
        obj["metadata"] |= {"generation": 1, "resourceVersion": self._next_version(), "uid": str(uuid.uuid4())}
        self.jobs[(plural, namespace, name)] = obj
        return 201, copy.deepcopy(obj)
