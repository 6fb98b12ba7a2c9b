"""benchmarks/harness.py: its statistics, and its two clients against a real server on 127.0.0.1.

The server is a small stdlib HTTP server in its own process (started and stopped through ``harness.Server``, so
pinned as the benchmarks pin their targets) that records every POST body it gets and answers 500 on one path.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import harness
from tests.tools import require

RECORDING_SERVER = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies = open(sys.argv[2], "ab", buffering=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self._answer(200, b"ok")

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            bodies.write(body + b"\\n")
            self._answer(500 if self.path == "/fail" else 200, b'{"ok": true}')

        def _answer(self, status, payload):
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


def test_rounds_rotate_the_order_and_hold_every_target_once():
    got = list(harness.rounds(["a", "b", "c"], 5))
    assert [order for _, order in got] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
        ["b", "c", "a"],
    ]
    assert [number for number, _ in got] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        list(harness.rounds(["a"], 0))


def test_ratios_are_taken_per_round_then_summarised_by_median_and_range():
    # Round 3 is a burst that slowed both targets: per-round ratios stay near 2, pooled means would not.
    ours, theirs = [200.0, 210.0, 50.0, 190.0, 205.0], [100.0, 100.0, 25.0, 100.0, 95.0]
    spread = harness.Spread.of(harness.per_round_ratios(ours, theirs))
    assert spread.median == pytest.approx(2.0)
    assert (spread.low, spread.high, spread.count) == (pytest.approx(1.9), pytest.approx(2.1578947), 5)
    assert spread.text(2, "x") == "2.00x (1.90-2.16)"
    with pytest.raises(ValueError, match="5 rounds against 4"):
        harness.per_round_ratios(ours, theirs[:4])
    with pytest.raises(ValueError, match="no values"):
        harness.Spread.of([])


def test_machine_load_is_sampled_from_the_kernel():
    load = harness.MachineLoad.sample(window=0.2)
    assert 0.0 <= load.busy_share <= 1.0
    assert len(load.loadavg) == 3 and all(v >= 0 for v in load.loadavg)
    assert "load average" in load.text() and "% busy over" in load.text()


def test_every_target_gets_the_same_pinning_and_threads(tmp_path):
    pinning = harness.Pinning.default()
    assert pinning.client_cpus not in pinning.server_cpus.split(",")  # the client apart from the targets
    assert pinning.server(["python", "x"])[-4:] == ["-c", pinning.server_cpus, "python", "x"]
    assert pinning.client(["wrk"])[-3:] == ["-c", pinning.client_cpus, "wrk"]
    env = harness.thread_env(3)
    assert env == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
        "KFOPS_BENCH_TORCH_THREADS": "3",
    }
    probe = tmp_path / "probe.json"
    script = (
        "import json, os, sys; "
        "seen = {'cpus': sorted(os.sched_getaffinity(0)), 'omp': os.environ['OMP_NUM_THREADS']}; "
        "json.dump(seen, open(sys.argv[1], 'w'))"
    )
    server = harness.Server("probe", [sys.executable, "-c", script, str(probe)], tmp_path / "probe.log")
    server.start(pinning).process.wait(timeout=30)
    expected = [int(cpu) for cpu in pinning.server_cpus.split(",")]
    assert json.loads(probe.read_text()) == {"cpus": expected, "omp": "1"}


@pytest.fixture
def recording_server(tmp_path):
    """The recording server on a free port: (base URL, file of the bodies it got)."""
    port = harness.free_port()
    received = tmp_path / "received.jsonl"
    script = tmp_path / "server.py"
    script.write_text(RECORDING_SERVER)
    server = harness.Server("recorder", [sys.executable, str(script), str(port), str(received)], tmp_path / "srv.log")
    server.start(harness.Pinning.default())
    try:
        server.wait_ready(f"http://127.0.0.1:{port}/", timeout=30)
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop()
    assert server.process.poll() is not None  # stopped by its own pid


@pytest.mark.parametrize("client", ["wrk", "python"])
def test_each_client_posts_the_bodies_in_turn_and_counts_what_it_got(client, tmp_path, recording_server):
    if client == "wrk":
        require("wrk")
    base, received = recording_server
    bodies = harness.BodyFile([json.dumps({"instances": [{"n": i}]}).encode() for i in range(7)], tmp_path / "b")
    pinning = harness.Pinning.default()
    measured = harness.CLIENTS[client](f"{base}/ok", bodies, 2, 1.0, pinning)
    assert measured.errors == 0
    assert measured.requests > 20 and 0.9 < measured.seconds < 3.0
    assert 0 < measured.p50_ms <= measured.p99_ms
    got = [json.loads(line)["instances"][0]["n"] for line in received.read_bytes().splitlines()]
    assert set(got) == set(range(7))  # every body sent, none invented
    assert len(got) >= measured.requests  # the Python client's 1 s warm-up is not counted

    failed = harness.CLIENTS[client](f"{base}/fail", bodies, 1, 1.0, pinning)
    assert failed.requests > 0 and failed.errors == failed.requests


def test_a_body_with_a_newline_is_refused(tmp_path):
    with pytest.raises(ValueError, match="newline"):
        harness.BodyFile([b'{"a":\n1}'], tmp_path)


def test_the_command_line_is_recorded_from_the_repository_root(monkeypatch):
    script = Path(harness.__file__).with_name("bench_serving.py")
    monkeypatch.setattr(sys, "argv", [str(script), "--rounds", "5", "--note", "a b"])
    assert harness.command_line() == "python benchmarks/bench_serving.py --rounds 5 --note 'a b'"
