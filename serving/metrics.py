"""Prometheus collectors of the serving path, exposed on KServe's own ``/metrics``.

KServe's ``metrics_handler`` renders ``prometheus_client.REGISTRY`` (the default registry). The suite's collectors
live on a dedicated ``SERVING_REGISTRY`` (so tests can read them without KServe's) and a small bridge collector,
registered once per process on the default registry, merges them into KServe's output.

- ``model_predictions_total{model,version,predicted_class}``: rows scored.
- ``model_prediction_latency_seconds{model,version,stage}``: per request; stages ``parse`` (validation and
  decoding), ``queue`` (waiting in the dynamic batcher), ``predict`` (the merged batch in the model), ``total``.
- ``model_requests_total{model,version,status_code}``: every answer of a scoring endpoint (V1 predict, V2
  infer), successes included: the denominator of an error rate (canary analysis compares it by ``version``).
- ``model_request_errors_total{model,status_code}``: every 4xx/5xx answer of a model endpoint.
- ``model_batch_size``: rows in each merged batch the model ran.
- ``model_payload_log_dropped_total{model}``: payload-log records dropped (queue full or sink failure).

Under ``--workers N`` (``workers.py``) every worker process writes its values to files in
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, chosen when it imports), and ``exposition``
renders all of them through a ``MultiProcessCollector``: counters and histograms summed over the workers, whichever
worker Prometheus' scrape reaches. Process metrics (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
``process_open_fds``, ...) cannot be summed, so there each live worker's come with a ``worker_pid`` label (read
from ``/proc`` by whichever worker answers; the workers found by their files in that folder). Python's GC metrics
are per process and left out.
"""

from __future__ import annotations

import functools
import os
import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

SERVING_REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
STAGES = ("parse", "queue", "predict", "total")

PREDICTIONS = Counter(
    "model_predictions_total",
    "Rows scored, by predicted class.",
    ["model", "version", "predicted_class"],
    registry=SERVING_REGISTRY,
)
LATENCY = Histogram(
    "model_prediction_latency_seconds",
    "Seconds per request in each stage: parse, queue, predict, total.",
    ["model", "version", "stage"],
    buckets=LATENCY_BUCKETS,
    registry=SERVING_REGISTRY,
)
REQUESTS = Counter(
    "model_requests_total",
    "Answers of scoring endpoints (V1 predict, V2 infer), by model version and status code.",
    ["model", "version", "status_code"],
    registry=SERVING_REGISTRY,
)
REQUEST_ERRORS = Counter(
    "model_request_errors_total",
    "Requests to a model endpoint answered with an error status.",
    ["model", "status_code"],
    registry=SERVING_REGISTRY,
)
BATCH_SIZE = Histogram(
    "model_batch_size",
    "Rows in each merged batch the model ran.",
    buckets=BATCH_BUCKETS,
    registry=SERVING_REGISTRY,
)
PAYLOAD_LOG_DROPPED = Counter(
    "model_payload_log_dropped_total",
    "Payload-log records dropped (queue full or sink failure).",
    ["model"],
    registry=SERVING_REGISTRY,
)


class _Bridge:
    """Yields the serving registry's metrics from the default registry (what KServe's /metrics renders)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self):
        yield from self._registry.collect()

    def describe(self):
        # An empty describe() keeps the default registry from collecting us at registration time and from
        # checking our names against its own; KServe's metric names do not overlap ours.
        return []


_bridge_lock = threading.Lock()
_bridged = False


def install_bridge() -> None:
    """Merge SERVING_REGISTRY into the default registry once per process (idempotent)."""
    global _bridged
    with _bridge_lock:
        if _bridged:
            return
        REGISTRY.register(_Bridge(SERVING_REGISTRY))
        _bridged = True


install_bridge()


def count_payload_drop(model: str, n: int) -> None:
    """What the payload logger calls for records it drops."""
    if n > 0:
        PAYLOAD_LOG_DROPPED.labels(model=model).inc(n)


def observe_batch(rows: int) -> None:
    BATCH_SIZE.observe(rows)


# Labelled children, cached: ``labels()`` builds and locks a lookup on every call, several times per request.
@functools.lru_cache(maxsize=4096)
def _latency(model: str, version: str, stage: str):
    return LATENCY.labels(model=model, version=version, stage=stage)


@functools.lru_cache(maxsize=4096)
def _predictions(model: str, version: str, predicted_class: str):
    return PREDICTIONS.labels(model=model, version=version, predicted_class=predicted_class)


@functools.lru_cache(maxsize=4096)
def _requests(model: str, version: str, status_code: int):
    return REQUESTS.labels(model=model, version=version, status_code=str(status_code))


def observe_latency(model: str, version: str, stage: str, seconds: float) -> None:
    _latency(model, version, stage).observe(seconds)


def count_predictions(model: str, version: str, labels) -> None:
    """Count predicted labels (any iterable of class labels)."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    for label, n in counts.items():
        _predictions(model, version, str(label)).inc(n)


def count_request(model: str, version: str, status_code: int) -> None:
    _requests(model, version, status_code).inc()


# The answers a scoring endpoint gives, created at 0 when a model loads (see init_request_series).
INITIAL_STATUS_CODES = (200, 400, 500, 503)


def init_request_series(model: str, version: str) -> None:
    """Create the common ``model_requests_total`` series at 0: Prometheus' ``increase()`` has no earlier sample
    for a series born inside a window, so without this a canary's first 5xx answers would not be counted."""
    for status_code in INITIAL_STATUS_CODES:
        _requests(model, version, status_code)
    for status_code in (400, 500, 503):
        REQUEST_ERRORS.labels(model=model, status_code=str(status_code))


def count_error(model: str, status_code: int) -> None:
    REQUEST_ERRORS.labels(model=model, status_code=str(status_code)).inc()


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """``/metrics``' body and content type for an ``Accept`` header: the default registry (KServe's and, through the
    bridge, ours), or under ``$PROMETHEUS_MULTIPROC_DIR`` every worker's metrics summed."""
    from prometheus_client import exposition as prometheus_exposition

    encoder, content_type = prometheus_exposition.choose_encoder(accept)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(WorkerProcessCollector(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        return encoder(registry), content_type
    return encoder(REGISTRY), content_type


class WorkerProcessCollector:
    """``process_*`` metrics of every live worker writing to a multiprocess folder, one series per ``worker_pid``.

    A worker's pid is in the names of the files prometheus_client writes for it (``counter_<pid>.db``, ...); a
    worker that has exited (its files stay, for its counts) is left out."""

    def __init__(self, multiproc_dir: str) -> None:
        self.multiproc_dir = multiproc_dir

    def worker_pids(self) -> list[int]:
        pids = set()
        for name in os.listdir(self.multiproc_dir):
            stem = name.removesuffix(".db")
            pid = stem.rsplit("_", 1)[-1]
            if stem != name and pid.isdigit():
                pids.add(int(pid))
        return sorted(pid for pid in pids if os.path.exists(f"/proc/{pid}/stat"))

    def collect(self):
        from prometheus_client import ProcessCollector
        from prometheus_client.metrics_core import Metric

        families: dict[str, Metric] = {}
        for pid in self.worker_pids():
            # registry=None: collected here only; a pid that exits meanwhile gives no samples (its /proc is gone).
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for s in family.samples:
                    merged.add_sample(s.name, {**s.labels, "worker_pid": str(pid)}, s.value, s.timestamp)
        yield from families.values()


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one sample (0.0 when absent): for tests and diagnostics."""
    value = SERVING_REGISTRY.get_sample_value(name, labels or {})
    return float(value or 0.0)
