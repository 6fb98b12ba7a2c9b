"""``--workers 2``: two real predictor processes behind one port. Both answer, /metrics (whichever worker serves
it) counts the requests of both, and SIGTERM stops every process with every answered request in the payload log."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .helpers import v1_objects
from .test_server import free_port

NAME = "fraud"
OK_SERIES = f'model_requests_total{{model="{NAME}",status_code="200",version=""}}'


def _workers(pid: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's spawned children; not its resource tracker)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except FileNotFoundError:  # gone since the listing
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def _answered_by_pid(metrics_dir: Path) -> dict[int, float]:
    """Each worker's own count of 200 answers, from its own files in the multiprocess folder."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    pids = {int(m.group(1)) for f in metrics_dir.iterdir() if (m := re.match(r"counter_(\d+)\.db$", f.name))}
    for pid in pids:
        alone = metrics_dir.parent / f"{metrics_dir.name}-{pid}"
        alone.mkdir()
        for f in metrics_dir.glob(f"*_{pid}.db"):
            shutil.copy(f, alone / f.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[pid] = registry.get_sample_value(
            "model_requests_total", {"model": NAME, "status_code": "200", "version": ""}
        )
        shutil.rmtree(alone)
    return counts


def _metric(text: str, series: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(series + " "))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow  # two processes load a model each: about 15 s on 2 shared cores
def test_two_workers_answer_on_one_port_count_together_and_stop_on_sigterm(registered_model, tmp_path):
    m = registered_model
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "kfops.serving", "--model", str(m.model_dir), "--name", NAME, "--workers", "2"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--payload-log", str(tmp_path / "payloads")]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    workers: list[int] = []
    body = {"instances": v1_objects(m.rows.head(1))}
    answered = 0
    try:
        deadline = time.time() + 90
        while len(workers) < 2 or not all(_alive(w) for w in workers):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            workers = _workers(proc.pid)
            time.sleep(0.1)
        metrics_dir = Path(re.search(r"metrics are in (\S+)", log.read_text()).group(1))
        counts: dict[int, float] = {}

        def one_request(_) -> int:  # a new connection each: the kernel hands them to whichever worker accepts
            try:
                return httpx.post(f"{base}/v1/models/{NAME}:predict", json=body, timeout=30).status_code
            except httpx.HTTPError:
                return 0

        with ThreadPoolExecutor(8) as pool:
            while not (len(counts) == 2 and all(counts.values())):
                assert time.time() < deadline, f"both workers did not answer: {counts}\n{log.read_text()[-3000:]}"
                codes = list(pool.map(one_request, range(32)))
                assert set(codes) <= {0, 200}, codes  # no worker answers 503 while it loads: it does not accept
                answered += codes.count(200)
                counts = _answered_by_pid(metrics_dir)
        assert set(counts) == set(workers) and sum(counts.values()) == answered
        for _ in range(4):  # whichever worker serves /metrics, it counts every worker's requests
            text = httpx.get(f"{base}/metrics", timeout=10).text
            assert _metric(text, OK_SERIES) == answered
            # ... and shows each worker's own process metrics, labelled with its pid
            rss = {int(p) for p in re.findall(r'^process_resident_memory_bytes\{worker_pid="(\d+)"\}', text, re.M)}
            assert rss == set(workers), text[-2000:]

        # SIGTERM while requests keep coming: every process stops, and every request answered is logged.
        stop = threading.Event()
        late = []

        def keep_sending() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        late.append(client.post(f"{base}/v1/models/{NAME}:predict", json=body).status_code)
                    except httpx.HTTPError:
                        time.sleep(0.01)

        sender = threading.Thread(target=keep_sending)
        sender.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stop.set()
        sender.join(30)
    finally:
        if proc.poll() is None:  # a failed check: stop it the graceful way first, so it removes its metrics folder
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert code == 0, log.read_text()[-3000:]
    assert not any(_alive(w) for w in workers)
    assert not metrics_dir.exists()
    answered += late.count(200)
    assert late.count(200) > 0
    records = [
        json.loads(line) for f in (tmp_path / "payloads").rglob("*.jsonl") for line in f.read_text().splitlines()
    ]
    assert len(records) == answered
