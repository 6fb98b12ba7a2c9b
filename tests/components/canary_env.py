"""Real parts for canary tests: a Prometheus server, `kfops serve` predictors, a fault-injecting proxy, load.

Everything binds 127.0.0.1 on a free port and is stopped by its own pid (or its own server object).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.tools import in_ci, require

SERVED_NAME = "fraud"
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ Prometheus
def prometheus_binary() -> str | None:
    """The prometheus binary, or None (then ``need_prometheus`` skips); under CI a missing one fails at once."""
    found = shutil.which("prometheus")
    if found is None and in_ci():
        require("prometheus")
    return found


def need_prometheus(value: T | None) -> T:
    """``value`` (what a Prometheus gave); a skip when there was none, because the binary is missing."""
    if value is None:
        require("prometheus")
    return value


class PrometheusServer:
    """A real Prometheus on 127.0.0.1, scraping ``targets`` ({job: "host:port"}) every second."""

    def __init__(self, binary: str, root: Path, targets: Mapping[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
            ],
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = root / "prometheus.log"
        command = [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"prometheus not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def wait_targets_up(self, jobs, timeout: float = 20) -> None:
        """Wait until every job's target has been scraped successfully at least twice (rate needs two)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            answer = httpx.get(f"{self.url}/api/v1/query", params={"query": "count_over_time(up[1m])"}, timeout=2)
            counts = {r["metric"]["job"]: float(r["value"][1]) for r in answer.json()["data"]["result"]}
            up = httpx.get(f"{self.url}/api/v1/query", params={"query": "up"}, timeout=2).json()["data"]["result"]
            healthy = {r["metric"]["job"] for r in up if r["value"][1] == "1"}
            if all(job in healthy and counts.get(job, 0) >= 2 for job in jobs):
                return
            time.sleep(0.3)
        pytest.fail(f"prometheus targets not up after {timeout} s: {httpx.get(f'{self.url}/api/v1/targets').text}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


# ------------------------------------------------------------------------------------------------ predictors
class Predictor:
    """A real ``python -m kfops.serving`` process serving ``model_ref`` as ``SERVED_NAME``."""

    def __init__(self, model_ref: str, tracking_uri: str, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "kfops.serving", "--model", model_ref, "--name", SERVED_NAME]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--max-wait-ms", "1", "--torch-threads", "1"]
        command += ["--log-level", "WARNING"]
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"predictor exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/v2/models/{SERVED_NAME}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"predictor not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


# ------------------------------------------------------------------------------------ fault-injecting proxy
class FaultProxy:
    """A real HTTP server in front of a predictor that answers a share of scoring requests with 500 and/or delays
    the others, and exposes, on its own ``/metrics``, the predictor's metric names as seen at this edge (what a
    mesh sidecar or Knative's queue-proxy measures in a cluster): every answer in ``model_requests_total``, the
    whole-request latency of successful answers in ``model_prediction_latency_seconds{stage="total"}``.
    """

    def __init__(self, upstream: str, version: str, error_every: int = 0, delay_s: float = 0.0) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from kfops.serving.metrics import LATENCY_BUCKETS

        self.upstream = upstream
        self.version = version
        self.error_every = error_every  # every n-th scoring request gets a 500 (0: none)
        self.delay_s = delay_s
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "model_requests_total", "answers", ["model", "version", "status_code"], registry=self.registry
        )
        self.latency = Histogram(
            "model_prediction_latency_seconds",
            "seconds",
            ["model", "version", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._seen = 0
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                    self._send(200, generate_latest(proxy.registry), CONTENT_TYPE_LATEST)
                else:
                    answer = proxy._client.get(proxy.upstream + self.path)
                    self._send(answer.status_code, answer.content)

            def do_POST(self) -> None:
                started = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    proxy._seen += 1
                    fail = proxy.error_every > 0 and proxy._seen % proxy.error_every == 0
                if fail:
                    status, content = 500, b'{"error": "injected fault"}'
                else:
                    if proxy.delay_s:
                        time.sleep(proxy.delay_s)
                    answer = proxy._client.post(
                        proxy.upstream + self.path, content=body, headers={"Content-Type": "application/json"}
                    )
                    status, content = answer.status_code, answer.content
                proxy.requests.labels(SERVED_NAME, proxy.version, str(status)).inc()
                if status < 400:
                    proxy.latency.labels(SERVED_NAME, proxy.version, "total").observe(time.perf_counter() - started)
                self._send(status, content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._client.close()


class StaticHistogramExporter:
    """A real /metrics endpoint whose histogram buckets grow at fixed rates per second: PromQL's rate() of each
    bucket is that rate times one factor shared by all buckets, so histogram_quantile over it is known exactly."""

    def __init__(self, bucket_rates: Mapping[str, float]) -> None:
        self.bucket_rates = dict(bucket_rates)  # le -> cumulative observations per second
        self.started = time.time() - 1.0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                elapsed = time.time() - exporter.started
                name = "model_prediction_latency_seconds"
                labels = 'model="static",version="1",stage="total"'
                lines = [f"# TYPE {name} histogram"]
                for le, rate in exporter.bucket_rates.items():
                    lines.append(f'{name}_bucket{{{labels},le="{le}"}} {rate * elapsed!r}')
                lines.append(f"{name}_count{{{labels}}} {exporter.bucket_rates['+Inf'] * elapsed!r}")
                lines.append(f"{name}_sum{{{labels}}} {0.01 * exporter.bucket_rates['+Inf'] * elapsed!r}")
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------------ load
class Load:
    """Threads posting one-row V1 predict requests to ``base`` until stopped, each pausing ``pause_s`` between."""

    def __init__(self, base: str, instances: list[dict], threads: int = 1, pause_s: float = 0.02) -> None:
        self.url = f"{base}/v1/models/{SERVED_NAME}:predict"
        self.instances = instances
        self.pause_s = pause_s
        self.stopped = threading.Event()
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, offset: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = offset
            while not self.stopped.is_set():
                row = self.instances[i % len(self.instances)]
                i += len(self._threads)
                try:
                    status = client.post(self.url, json={"instances": [row]}).status_code
                except httpx.HTTPError:
                    status = -1
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                self.stopped.wait(self.pause_s)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=35)
