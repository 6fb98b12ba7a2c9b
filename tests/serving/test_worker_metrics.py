"""Process metrics under ``--workers``: one series per live worker, found by its files in the multiprocess folder."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kfops.serving.metrics import WorkerProcessCollector


def test_every_live_worker_has_its_own_process_series_and_an_exited_one_none(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        # The file names prometheus_client's multiprocess mode writes for each process.
        for name in (f"counter_{os.getpid()}.db", f"histogram_{other.pid}.db", f"counter_{gone.pid}.db", "README"):
            (tmp_path / name).write_bytes(b"")
        registry = CollectorRegistry()
        registry.register(WorkerProcessCollector(str(tmp_path)))
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    finally:
        other.kill()
        other.wait()
    rss = {s.labels["worker_pid"]: s.value for s in families["process_resident_memory_bytes"].samples}
    assert set(rss) == {str(os.getpid()), str(other.pid)}
    assert all(value > 1e6 for value in rss.values())  # a live Python process holds megabytes
    cpu = {s.labels["worker_pid"] for s in families["process_cpu_seconds"].samples}
    assert cpu == set(rss) and "process_open_fds" in families
