"""Real parts for the serving fault and fuzz tests: a predictor process, load that remembers every answer, a TCP
proxy that can refuse connections, moto's S3 server, and the payload log read back.

Everything binds 127.0.0.1 on a free port and is stopped by its own pid (or its own socket).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
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


# ------------------------------------------------------------------------------------------------ TCP proxy
class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target_port``. ``refuse()`` closes its listening socket and resets
    every open connection (an endpoint that is down: connection refused); ``resume()`` listens on the same port
    again. The target keeps its state (moto keeps S3 in memory, so it is never restarted)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.resume()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resume(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (Linux)
            listener.close()
        for conn in conns:
            _reset(conn)

    close = refuse

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refused: the listener is closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _reset(client)
                    _reset(upstream)
                    return
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


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
