"""The router's cost: its added latency over calling the predictor directly, and shadow on vs off, in one run.

Processes, each on 127.0.0.1: a stable and a challenger predictor (``python -m kfops.serving``, the same trained
model), and two routers in front of them (``python -m kfops.serving route``):

- ``router (shadow off)``: ``--mode canary --split 0``, every request to stable: the pure routing overhead;
- ``router (shadow on)``: ``--mode shadow --split 100``, every request also sent to the challenger after the
  caller has its answer.

Batch-1 V1 requests from 1 and 8 concurrent clients (one aiohttp client process, bench_serving's way). Targets
are measured in interleaved rounds (direct, shadow off, shadow on; the order rotating) and each target's
latencies pooled over the rounds, so that a change in the machine's load hits all of them alike.

    python benchmarks/bench_router.py [--seconds 3] [--rounds 5]

Goals (issue "Serving", part 3): the router adds under 1.5 ms at p50; with shadow on, the caller's p99 within
10% of shadow off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

try:
    from bench_serving import RESULTS, free_port, train_model_dir, wait_ready
except ImportError:  # python -m benchmarks.bench_router
    from benchmarks.bench_serving import RESULTS, free_port, train_model_dir, wait_ready
from kfops.serving.router_cli import lower_priority

MODEL_NAME = "fraud"
DIRECT, OFF, ON, ON_IDLE = (
    "direct",
    "router (shadow off)",
    "router (shadow on)",
    "router (shadow on, idle-priority challenger)",
)
TARGETS = (DIRECT, OFF, ON, ON_IDLE)


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_predictor(model_dir: Path, port: int, variant: str, work: Path, idle: bool = False) -> subprocess.Popen:
    command = [sys.executable, "-m", "kfops.serving", "--model", str(model_dir), "--name", MODEL_NAME]
    command += ["--host", "127.0.0.1", "--port", str(port), "--variant", variant, "--log-level", "WARNING"]
    proc = _spawn(command, work / f"{variant}-{port}.log")
    if idle:  # what `kfops serve --challenger --mode shadow` does to its challenger child
        print(f"idle-priority challenger: {lower_priority(proc.pid)}", flush=True)
    return proc


def start_router(stable: str, challenger: str, port: int, mode: str, split: int, work: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "kfops.serving", "route", "--stable", stable, "--challenger", challenger]
    command += ["--name", MODEL_NAME, "--mode", mode, "--split", str(split), "--port", str(port)]
    command += ["--log-level", "WARNING"]
    return _spawn(command, work / f"router-{port}.log")


async def measure(url: str, payloads: list[bytes], clients: int, seconds: float) -> tuple[list[float], int]:
    """``clients`` loops, each sending the next body as soon as the last answer came: latencies (s), errors."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop:
                body = payloads[i % len(payloads)]
                i += clients
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker(k) for k in range(clients)))
    return latencies, errors


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _shadow_idle(router_base: str, timeout: float = 10.0) -> None:
    """Wait until the shadow router has no shadow call in flight (so it does not load the next measurement)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{router_base}/router", timeout=2) as response:
            if json.loads(response.read())["shadow_in_flight"] == 0:
                return
        time.sleep(0.05)


def _metric(base: str, name: str, labels: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def run(seconds: float, rounds: int, work: Path) -> dict:
    model_dir, raw, _ = train_model_dir(work)
    payloads = [json.dumps({"instances": [row]}).encode() for row in raw]
    ports = {name: free_port() for name in ("stable", "challenger", "idle challenger", OFF, ON, ON_IDLE)}
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    procs = [
        start_predictor(model_dir, ports["stable"], "stable", work),
        start_predictor(model_dir, ports["challenger"], "challenger", work),
        start_predictor(model_dir, ports["idle challenger"], "challenger", work, idle=True),
        start_router(base["stable"], base["challenger"], ports[OFF], "canary", 0, work),
        start_router(base["stable"], base["challenger"], ports[ON], "shadow", 100, work),
        start_router(base["stable"], base["idle challenger"], ports[ON_IDLE], "shadow", 100, work),
    ]
    try:
        for name in ("stable", "challenger", "idle challenger"):
            asyncio.run(wait_ready(f"{base[name]}/v2/models/{MODEL_NAME}/ready"))
        for name in (OFF, ON, ON_IDLE):
            asyncio.run(wait_ready(f"{base[name]}/v2/health/ready"))
        urls = {DIRECT: f"{base['stable']}/v1/models/{MODEL_NAME}:predict"}
        urls |= {name: f"{base[name]}/v1/models/{MODEL_NAME}:predict" for name in (OFF, ON, ON_IDLE)}
        results: dict = {}
        order = list(TARGETS)

        def idle() -> None:
            for name in (ON, ON_IDLE):
                _shadow_idle(base[name])

        for clients in (1, 8):
            pooled = {target: [] for target in order}
            round_p99 = {target: [] for target in order}
            errors = dict.fromkeys(order, 0)
            for round_number in range(rounds):
                shift = round_number % len(order)
                for target in order[shift:] + order[:shift]:
                    asyncio.run(measure(urls[target], payloads, clients, 0.5))  # warm-up
                    idle()
                    latencies, failed = asyncio.run(measure(urls[target], payloads, clients, seconds))
                    pooled[target] += latencies
                    round_p99[target].append(_quantile(latencies, 0.99))
                    errors[target] += failed
                    idle()
            for target in order:
                values = pooled[target]
                results[(target, clients)] = {
                    "requests": len(values),
                    "rps": len(values) / (seconds * rounds),
                    "p50_ms": 1000 * _quantile(values, 0.5),
                    "p99_ms": 1000 * _quantile(values, 0.99),
                    # The median of the rounds' p99s: one burst from another user of the machine inflates one
                    # round of one target, which moves the pooled p99 but not this.
                    "p99_rounds_ms": 1000 * statistics.median(round_p99[target]),
                    "errors": errors[target],
                }
        results["shadow"] = {
            name: {
                outcome: _metric(base[name], "router_shadow_requests_total", f'outcome="{outcome}"')
                for outcome in ("sent", "completed", "failed", "dropped")
            }
            for name in (ON, ON_IDLE)
        }
        return results
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


def report(results: dict, seconds: float, rounds: int, load_before: tuple, load_after: tuple) -> str:
    lines = [
        f"\n## Router · {datetime.now(UTC).date()}\n\n"
        f"Machine: the 2-vCPU development machine ({platform.machine()}, shared with other users): the client, "
        f"three predictors and three routers all on it; 1-minute load average {load_before[0]:.2f} before the "
        f"run, {load_after[0]:.2f} after it (the benchmark's own processes included). Batch-1 V1 requests; "
        f"{rounds} interleaved rounds of {seconds:.0f} s per target, 0.5 s warm-up each; p50 and p99 over the "
        "pooled latencies, `p99 rounds`: the median of the rounds' p99s (robust to a burst from another user). "
        "`router (shadow off)` is `route --mode canary --split 0` (every request to stable: the pure routing "
        "cost); `router (shadow on)` is `route --mode shadow --split 100` (every request also to a challenger "
        "predictor, on the same 2 CPUs); `idle-priority challenger`: the same with the challenger under Linux's "
        "SCHED_IDLE policy, as `kfops serve --challenger --mode shadow` runs it.\n\n"
        "| clients | target | requests/s | p50 (ms) | p99 (ms) | p99 rounds (ms) | added p50 (ms) | "
        "added p99 (ms) | errors |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
    ]
    verdicts = []
    for clients in (1, 8):
        direct = results[(DIRECT, clients)]
        for target in TARGETS:
            r = results[(target, clients)]
            added = (
                ("", "")
                if target == DIRECT
                else (f"{r['p50_ms'] - direct['p50_ms']:+.2f}", f"{r['p99_ms'] - direct['p99_ms']:+.2f}")
            )
            lines.append(
                f"| {clients} | {target} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['p99_rounds_ms']:.2f} | {added[0]} | {added[1]} | {r['errors']} |\n"
            )
        off, on, idle = (results[(t, clients)] for t in (OFF, ON, ON_IDLE))
        ratios = "; ".join(
            f"{label} {x['p99_ms'] / off['p99_ms']:.2f}x pooled, {x['p99_rounds_ms'] / off['p99_rounds_ms']:.2f}x "
            "by rounds"
            for label, x in (("challenger at normal priority", on), ("idle-priority challenger", idle))
        )
        verdicts.append(
            f"{clients} client(s): the router adds {off['p50_ms'] - direct['p50_ms']:.2f} ms at p50 (goal < 1.5) "
            f"and {off['p99_ms'] - direct['p99_ms']:.2f} ms at p99. Caller's p99, shadow on / off (goal <= 1.10): "
            f"{ratios}."
        )
    for name, shadow in results["shadow"].items():
        verdicts.append(
            f"Shadow calls of `{name}`: {shadow['sent']:,.0f} sent, {shadow['completed']:,.0f} compared, "
            f"{shadow['failed']:,.0f} failed, {shadow['dropped']:,.0f} dropped (more than 64 in flight)."
        )
    return "".join(lines) + "\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.seconds, args.rounds, Path(tmp))
    text = report(results, args.seconds, args.rounds, load_before, os.getloadavg())
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
