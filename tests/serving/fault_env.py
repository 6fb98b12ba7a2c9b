"""Real parts for the serving fault and fuzz tests: a predictor process, load that remembers every answer, moto's S3
server (put tests/fault_proxy.py's FaultProxy in front of it for an outage), and the payload log read back.

Everything binds 127.0.0.1 on a free port and is stopped by its own pid (or its own socket).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port

SERVED_NAME = "fraud"
# tests/serving/enospc_site/sitecustomize.py: writes under a folder fail with the kernel's ENOSPC while a switch
# file exists (the server process imports it at start-up when the folder is on its PYTHONPATH).
ENOSPC_SITE = Path(__file__).resolve().parent / "enospc_site"


class PredictorProcess:
    """``python -m kfops.serving`` serving ``model_ref`` as ``SERVED_NAME`` on 127.0.0.1, with ``args`` added."""

    def __init__(
        self, model_ref: str, tracking_uri: str, log: Path, args: list[str] = (), env: dict | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "kfops.serving", "--model", model_ref, "--name", SERVED_NAME]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--torch-threads", "1", *args]
        full_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **(env or {})}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"predictor exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base}/v2/models/{SERVED_NAME}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"predictor not ready after {timeout} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample of the predictor's own /metrics (0.0 when absent)."""
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    return float(sample.value)
        return 0.0

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it does not exit in time (idempotent)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------------------ load
@dataclass(frozen=True)
class Answer:
    request_id: str
    row: int  # index into the load's rows
    status: int  # -1: no answer (connection refused or reset)
    answered_at: float  # time.time() when the answer (or the failure) arrived
    body: dict | None


class Load:
    """Threads posting one-row V1 predict requests with their own ``x-request-id`` until stopped, remembering
    every answer: which request ids were answered 200, when, and with what."""

    def __init__(self, base: str, rows: list[dict], threads: int = 4, pause_s: float = 0.0) -> None:
        self.url = f"{base}/v1/models/{SERVED_NAME}:predict"
        self.rows = rows
        self.pause_s = pause_s
        self.stopped = threading.Event()
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self.stopped.is_set():
                row = (worker + i * len(self._threads)) % len(self.rows)
                request_id = f"load-{worker}-{i}"
                i += 1
                try:
                    response = client.post(
                        self.url, json={"instances": [self.rows[row]]}, headers={"x-request-id": request_id}
                    )
                    status, body = response.status_code, response.json()
                except (httpx.HTTPError, ValueError):
                    status, body = -1, None
                with self._lock:
                    self.answers.append(Answer(request_id, row, status, time.time(), body))
                if self.pause_s:
                    self.stopped.wait(self.pause_s)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        start = self.count()
        while self.count() < start + n:
            if time.time() > deadline:
                pytest.fail(f"load got {self.count() - start} answers in {timeout} s, wanted {n}")
            time.sleep(0.05)

    def ok(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.status == 200]

    def statuses(self) -> dict[int, int]:
        with self._lock:
            found: dict[int, int] = {}
            for answer in self.answers:
                found[answer.status] = found.get(answer.status, 0) + 1
            return found

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=35)

    def __exit__(self, *exc_info) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ moto S3
class MotoServer:
    """moto's S3 server on 127.0.0.1 in its own process, for one test (stopped by its pid)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail("moto S3 server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------------ reading back
def payload_records(sink: str) -> list[dict]:
    """Every record of every JSONL file the payload log holds (local or s3://); a file that does not parse fails."""
    from kfops.components import storage

    records = []
    try:
        files = storage.list_files(sink)
    except FileNotFoundError:  # no bucket before the first write
        return []
    for uri, _ in files:
        if not uri.endswith(".jsonl") or "/outcomes/" in uri:
            continue
        for number, line in enumerate(storage.read_bytes(uri).decode().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except ValueError as err:
                pytest.fail(f"{uri}:{number}: half a record in the payload log ({err}): {line[:200]!r}")
    return records


def leftover_temp_files(folder: Path) -> list[Path]:
    """Temporary files a write left behind (``storage.write_bytes`` writes ``.NAME.tmp-PID``, then renames)."""
    return sorted(p for p in folder.rglob(".*.tmp-*") if p.is_file())
