"""Soak: the predictor at a fixed, moderate load for a long while (10 minutes by default), watched once a minute.

One ``python -m kfops.serving`` process (payload log on, JSONL to a local folder; metrics on) pinned to the
harness's server CPUs; this script is the client, pinned to the client CPU, sending requests at a fixed rate
(``--rate`` a second: one-row V1 requests, every ``--batch-every``-th one ``--batch-rows`` rows) from up to
``--connections`` kept-alive connections. Each minute it records:

- the server's resident memory (VmRSS), its open file descriptors (``/proc/PID/fd``: sockets, which follow the
  client's connections, apart from the rest: files, pipes, eventfds), and its threads;
- the payload log's lag: rows answered 200 minus rows in the log's files (queued or being written), and rows
  dropped (``model_payload_log_dropped_total``);
- the minute's requests: sent, answered, errors, sends that fell behind the schedule, p50 and p99 latency;
- the machine's 1-minute load average, since the machine is shared: a p99 that rises with it is the machine's.

Verdict against the goals (issue 19), the first ``--warmup-minutes`` left out; the reference is the server
itself in its first minutes after warm-up (the same run: there is no other target to compare with):

- RSS growth under 5%: the last minute's RSS against the first minute after warm-up;
- no fd growth: the last minute's non-socket fds at most the first one's after warm-up plus 2 (a payload-log file
  being written), no minute-on-minute rise sustained over the run, and sockets never more than the client's
  ``--connections`` plus those the idle server holds before the load starts (its listening socket, the event
  loop's self-pipe) plus 1 (a /metrics scrape);
- p99 flat within noise: the median p99 of the last three minutes at most 1.25x that of the first three after
  warm-up.

    python benchmarks/bench_soak.py [--minutes 10] [--rate 200] [--model DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import harness
except ImportError:  # python -m benchmarks.bench_soak
    from benchmarks import harness

NAME = "fraud"
RSS_GROWTH_GOAL = 0.05
FD_SLACK = 2
P99_FLAT_GOAL = 1.25


@dataclass
class Minute:
    number: int
    rss_mib: float
    fds: int
    sockets: int
    threads: int
    sent: int
    answered: int
    errors: int
    late: int
    p50_ms: float
    p99_ms: float
    log_lag_rows: int
    dropped: float
    loadavg: float


@dataclass
class Traffic:
    """What the client saw in the current minute (reset each minute) and in total."""

    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    errors: int = 0
    late: int = 0
    rows_answered_total: int = 0


# ------------------------------------------------------------------------------------------------ the server
def proc_status(pid: int) -> tuple[float, int]:
    """(VmRSS in MiB, threads) of a process."""
    rss, threads = 0.0, 0
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads


def open_fds(pid: int) -> tuple[int, int]:
    """(all open fds, of which sockets) of a process."""
    fds = sockets = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed while we looked
        fds += 1
        sockets += target.startswith("socket:")
    return fds, sockets


class LogCounter:
    """Rows in the payload log's files; a file is complete once it has its name (written, then renamed), so each
    is counted once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[Path, int] = {}

    def rows(self) -> int:
        for path in self.folder.rglob("*.jsonl"):
            if path not in self.seen:
                with path.open("rb") as fh:
                    self.seen[path] = sum(1 for _ in fh)
        return sum(self.seen.values())


def dropped_rows(base: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("model_payload_log_dropped_total{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# ------------------------------------------------------------------------------------------------ the load
async def drive(args: argparse.Namespace, base: str, bodies: list[tuple[bytes, int]], pid: int, log_folder: Path):
    import aiohttp

    url = f"{base}/v1/models/{NAME}:predict"
    traffic = Traffic()
    minutes: list[Minute] = []
    counter = LogCounter(log_folder)
    limit = asyncio.Semaphore(args.connections)
    connector = aiohttp.TCPConnector(limit=args.connections)
    pending: set[asyncio.Task] = set()

    async def one(session, body: bytes, rows: int) -> None:
        async with limit:
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as answer:
                    await answer.read()
                    ok = answer.status == 200
            except aiohttp.ClientError:
                ok = False
            traffic.latencies.append(time.perf_counter() - started)
            if ok:
                traffic.answered += 1
                traffic.rows_answered_total += rows
            else:
                traffic.errors += 1

    def sample(number: int) -> Minute:
        rss, threads = proc_status(pid)
        fds, sockets = open_fds(pid)
        latencies = sorted(traffic.latencies) or [0.0]
        minute = Minute(
            number=number,
            rss_mib=rss,
            fds=fds,
            sockets=sockets,
            threads=threads,
            sent=traffic.sent,
            answered=traffic.answered,
            errors=traffic.errors,
            late=traffic.late,
            p50_ms=1000 * harness.quantile(latencies, 0.50),
            p99_ms=1000 * harness.quantile(latencies, 0.99),
            log_lag_rows=traffic.rows_answered_total - counter.rows(),
            dropped=dropped_rows(base),
            loadavg=os.getloadavg()[0],
        )
        traffic.latencies.clear()
        traffic.sent = traffic.answered = traffic.errors = traffic.late = 0
        print(
            f"  minute {number:>2}: RSS {minute.rss_mib:7.1f} MiB · {minute.fds:3d} fds ({minute.sockets} sockets)"
            f" · {minute.threads:2d} threads"
            f" · {minute.answered / 60:6.1f} req/s answered · p50 {minute.p50_ms:5.2f} ms"
            f" · p99 {minute.p99_ms:6.2f} ms · log lag {minute.log_lag_rows:5d} rows · dropped {minute.dropped:.0f}"
            f" · errors {minute.errors} · late {minute.late} · load {minute.loadavg:.2f}",
            flush=True,
        )
        return minute

    interval = 1.0 / args.rate
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        next_minute = start + 60
        i = 0
        while len(minutes) < args.minutes:
            due = start + i * interval
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                if now - due > 0.05:
                    traffic.late += 1  # the schedule slipped by over 50 ms: the client or the machine fell behind
                await asyncio.sleep(0)  # let the requests in flight run
            body, rows = bodies[i % len(bodies)]
            task = asyncio.ensure_future(one(session, body, rows))
            pending.add(task)
            task.add_done_callback(pending.discard)
            traffic.sent += 1
            i += 1
            if time.perf_counter() >= next_minute:
                minutes.append(sample(len(minutes) + 1))
                next_minute += 60
        await asyncio.gather(*pending)
    return minutes


def request_bodies(raw: list[dict], args: argparse.Namespace) -> list[tuple[bytes, int]]:
    import json

    bodies = []
    for i in range(1000):
        rows = args.batch_rows if args.batch_every and i % args.batch_every == args.batch_every - 1 else 1
        chosen = [raw[(i * 7 + k) % len(raw)] for k in range(rows)]
        bodies.append((json.dumps({"instances": chosen}).encode(), rows))
    return bodies


# ------------------------------------------------------------------------------------------------ verdict
def verdicts(minutes: list[Minute], warmup: int, connections: int, idle_sockets: int) -> list[str]:
    steady = minutes[warmup:]
    if len(steady) < 4:
        return [f"too few minutes after a {warmup}-minute warm-up for a verdict ({len(steady)}; need 4)"]
    first, last = steady[0], steady[-1]
    growth = (last.rss_mib - first.rss_mib) / first.rss_mib
    files = [m.fds - m.sockets for m in steady]
    rises = sum(1 for a, b in itertools.pairwise(files) if b > a)
    most_sockets = max(m.sockets for m in steady)
    socket_bound = connections + idle_sockets + 1
    fd_ok = files[-1] <= files[0] + FD_SLACK and rises < len(steady) - 1 and most_sockets <= socket_bound
    p99_first = statistics.median(m.p99_ms for m in steady[:3])
    p99_last = statistics.median(m.p99_ms for m in steady[-3:])
    met = {True: "met", False: "NOT met"}
    return [
        f"RSS growth after warm-up {100 * growth:+.1f}% ({first.rss_mib:.1f} -> {last.rss_mib:.1f} MiB; goal under "
        f"{100 * RSS_GROWTH_GOAL:.0f}%): {met[growth < RSS_GROWTH_GOAL]}",
        f"open fds other than sockets {files[0]} -> {files[-1]} (range {min(files)}-{max(files)}, {rises} "
        f"minute-on-minute rises in {len(steady) - 1}); sockets at most {most_sockets} (bound {socket_bound}: "
        f"{connections} client connections, {idle_sockets} held idle, 1 scrape) (goal no growth): {met[fd_ok]}",
        f"p99 first three minutes after warm-up {p99_first:.2f} ms (median), last three {p99_last:.2f} ms: "
        f"{p99_last / p99_first:.2f}x (goal at most {P99_FLAT_GOAL}x): {met[p99_last <= P99_FLAT_GOAL * p99_first]}",
        f"payload log: lag at most {max(m.log_lag_rows for m in steady)} rows, {steady[-1].dropped:.0f} rows dropped; "
        f"errors {sum(m.errors for m in minutes)}, late sends {sum(m.late for m in minutes)}",
    ]


def report(minutes: list[Minute], args, pinning, before, after, verdict_lines: list[str]) -> str:
    lines = [
        "",
        f"## Soak: the predictor at {args.rate} req/s for {args.minutes} minutes (issue 19)",
        "",
        harness.provenance(pinning, before, after),
        "",
        f"Load: {args.rate} V1 requests a second from up to {args.connections} kept-alive connections, one row each"
        + (f", every {args.batch_every}th {args.batch_rows} rows" if args.batch_every else "")
        + "; the predictor with its payload log (JSONL, local folder, flush interval 2 s), metrics on, "
        f"torch at 1 thread. Minute 1{'-' + str(args.warmup_minutes) if args.warmup_minutes > 1 else ''} is "
        "warm-up; the verdict compares the server with itself after it.",
        "",
        "| minute | RSS MiB | fds | of them sockets | threads | req/s | p50 ms | p99 ms | log lag rows | dropped "
        "| errors | late | load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in minutes:
        lines.append(
            f"| {m.number} | {m.rss_mib:.1f} | {m.fds} | {m.sockets} | {m.threads} | {m.answered / 60:.1f} "
            f"| {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.log_lag_rows} | {m.dropped:.0f} | {m.errors} | {m.late} "
            f"| {m.loadavg:.2f} |"
        )
    lines += ["", *[f"- {line}" for line in verdict_lines], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--warmup-minutes", type=int, default=1)
    parser.add_argument("--rate", type=float, default=200.0, help="requests a second")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch-every", type=int, default=10, help="every Nth request carries --batch-rows rows")
    parser.add_argument("--batch-rows", type=int, default=32)
    parser.add_argument("--model", help="an MLflow model folder to serve (default: train the benchmark model)")
    parser.add_argument("--no-write", action="store_true", help="print, do not append to RESULTS.md")
    args = parser.parse_args()
    if args.minutes < 1 or args.rate <= 0:
        raise SystemExit("bench_soak: --minutes must be >= 1 and --rate positive")

    pinning = harness.Pinning.default()
    with tempfile.TemporaryDirectory(prefix="kfops-soak-") as tmp:
        work = Path(tmp)
        from bench_serving import train_model_dir

        model_dir, raw, _ = train_model_dir(work) if args.model is None else (Path(args.model), None, None)
        if raw is None:
            raw = _rows_for(model_dir)
        port = harness.free_port()
        base = f"http://127.0.0.1:{port}"
        log_folder = work / "payloads"
        command = [sys.executable, "-m", "kfops.serving", "--model", str(model_dir), "--name", NAME]
        command += ["--host", "127.0.0.1", "--port", str(port), "--payload-log", str(log_folder)]
        command += ["--torch-threads", str(pinning.threads), "--log-level", "WARNING"]
        server = harness.Server("kfops", command, work / "server.log").start(pinning)
        try:
            server.wait_ready(f"{base}/v2/models/{NAME}/ready")
            os.sched_setaffinity(0, {int(c) for c in pinning.client_cpus.split(",")})
            idle_sockets = open_fds(server.process.pid)[1]
            before = harness.MachineLoad.sample()
            print(f"soak: {args.rate} req/s for {args.minutes} min against pid {server.process.pid}", flush=True)
            minutes = asyncio.run(drive(args, base, request_bodies(raw, args), server.process.pid, log_folder))
            after = harness.MachineLoad.sample()
        finally:
            server.stop()
    verdict_lines = verdicts(minutes, args.warmup_minutes, args.connections, idle_sockets)
    text = report(minutes, args, pinning, before, after, verdict_lines)
    print(text)
    if not args.no_write:
        harness.append_results(text)


def _rows_for(model_dir: Path) -> list[dict]:
    """Raw rows for a given model folder: generated transactions, its feature columns only."""
    from kfops.components.contracts import FeatureSpec
    from kfops.datagen import generate_transactions

    spec_path = next(model_dir.rglob("feature_spec.json"))
    spec = FeatureSpec.load(spec_path)
    frame = generate_transactions(rows=2000)[spec.feature_names]
    import json

    return json.loads(frame.to_json(orient="records"))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
