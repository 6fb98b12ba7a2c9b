"""The router's cost: its added latency over calling the predictor directly, and shadow on vs off, in one run.

Processes, each on 127.0.0.1: a stable and a challenger predictor (``python -m kfops.serving``, the same trained
model), and two routers in front of them (``python -m kfops.serving route``):

- ``router (shadow off)``: ``--mode canary --split 0``, every request to stable: the pure routing overhead;
- ``router (shadow on)``: ``--mode shadow --split 100``, every request also sent to the challenger after the
  caller has its answer;
- ``router (shadow off, uvicorn + aiohttp)``, ``(..., uvicorn + own client)``, ``(..., own server + aiohttp)``: the
  shadow-off router with the libraries in place of its own HTTP server and client (``--http-server``,
  ``--http-client``), one piece at a time and both: whether the hand-written pieces still earn their place.

Batch-1 V1 requests from 1 and 8 concurrent clients (one aiohttp client process, bench_serving's way). Targets
are measured in interleaved rounds (every target once per round, the order rotating) and each target's
latencies pooled over the rounds, so that a change in the machine's load hits all of them alike; a router's added
p50 is also taken round by round (its p50 minus direct's in the same round): the median and range of those.

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
    from bench_serving import RESULTS, free_port, post_loop, train_model_dir, wait_ready
except ImportError:  # python -m benchmarks.bench_router
    from benchmarks.bench_serving import RESULTS, free_port, post_loop, train_model_dir, wait_ready
from kfops.serving.router_cli import lower_priority

MODEL_NAME = "fraud"
DIRECT, OFF, ON, ON_IDLE = (
    "direct",
    "router (shadow off)",
    "router (shadow on)",
    "router (shadow on, idle-priority challenger)",
)
LIBRARIES, LIB_SERVER, LIB_CLIENT = (
    "router (shadow off, uvicorn + aiohttp)",
    "router (shadow off, uvicorn + own client)",
    "router (shadow off, own server + aiohttp)",
)
TARGETS = (DIRECT, OFF, ON, ON_IDLE, LIBRARIES, LIB_SERVER, LIB_CLIENT)
# router target: (mode, split, the challenger it shadows to, --http-server, --http-client)
ROUTERS = {
    OFF: ("canary", 0, "challenger", "own", "own"),
    ON: ("shadow", 100, "challenger", "own", "own"),
    ON_IDLE: ("shadow", 100, "idle challenger", "own", "own"),
    LIBRARIES: ("canary", 0, "challenger", "uvicorn", "aiohttp"),
    LIB_SERVER: ("canary", 0, "challenger", "uvicorn", "own"),
    LIB_CLIENT: ("canary", 0, "challenger", "own", "aiohttp"),
}


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


def start_router(
    stable: str, challenger: str, port: int, work: Path, mode: str, split: int, server: str, client: str
) -> subprocess.Popen:
    command = [sys.executable, "-m", "kfops.serving", "route", "--stable", stable, "--challenger", challenger]
    command += ["--name", MODEL_NAME, "--mode", mode, "--split", str(split), "--port", str(port)]
    command += ["--http-server", server, "--http-client", client, "--log-level", "WARNING"]
    return _spawn(command, work / f"router-{port}.log")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; the shadow calls a router makes after
    a measurement are in the next one's, which ``_shadow_idle`` keeps near zero)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    ports = {name: free_port() for name in ("stable", "challenger", "idle challenger", *ROUTERS)}
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    procs = [
        start_predictor(model_dir, ports["stable"], "stable", work),
        start_predictor(model_dir, ports["challenger"], "challenger", work),
        start_predictor(model_dir, ports["idle challenger"], "challenger", work, idle=True),
    ]
    pids = {DIRECT: procs[0].pid}  # whose CPU time a target's requests cost: the predictor's, or the router's
    for name, (mode, split, challenger, server, client) in ROUTERS.items():
        procs.append(start_router(base["stable"], base[challenger], ports[name], work, mode, split, server, client))
        pids[name] = procs[-1].pid
    try:
        for name in ("stable", "challenger", "idle challenger"):
            asyncio.run(wait_ready(f"{base[name]}/v2/models/{MODEL_NAME}/ready"))
        for name in ROUTERS:
            asyncio.run(wait_ready(f"{base[name]}/v2/health/ready"))
        urls = {DIRECT: f"{base['stable']}/v1/models/{MODEL_NAME}:predict"}
        urls |= {name: f"{base[name]}/v1/models/{MODEL_NAME}:predict" for name in ROUTERS}
        results: dict = {}
        order = list(TARGETS)

        def idle() -> None:
            for name in (ON, ON_IDLE):
                _shadow_idle(base[name])

        for clients in (1, 8):
            pooled = {target: [] for target in order}
            round_p50 = {target: [] for target in order}
            round_p99 = {target: [] for target in order}
            round_cpu = {target: [] for target in order}
            errors = dict.fromkeys(order, 0)
            for round_number in range(rounds):
                shift = round_number % len(order)
                for target in order[shift:] + order[:shift]:
                    asyncio.run(post_loop(urls[target], payloads, clients, 0.5))  # warm-up
                    idle()
                    cpu_before = _cpu_seconds(pids[target])
                    latencies, failed, _ = asyncio.run(post_loop(urls[target], payloads, clients, seconds))
                    round_cpu[target].append((_cpu_seconds(pids[target]) - cpu_before) / max(1, len(latencies)))
                    pooled[target] += latencies
                    round_p50[target].append(_quantile(latencies, 0.5))
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
                    "cpu_us": 1e6 * statistics.median(round_cpu[target]),
                    # Round by round, this target's p50 minus direct's (measured in the same round).
                    "added_p50_rounds_ms": [
                        1000 * (mine - theirs)
                        for mine, theirs in zip(round_p50[target], round_p50[DIRECT], strict=True)
                    ],
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


def report(results: dict, seconds: float, rounds: int, load_before: tuple, load_after: tuple, command: str) -> str:
    lines = [
        f"\n## Router · {datetime.now(UTC).date()}\n\n"
        f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}.\n\n"
        f"Machine: the {os.cpu_count()}-vCPU development machine ({platform.machine()}, shared with other users): "
        f"the client, three predictors and {len(ROUTERS)} routers all on it; 1-minute load average "
        f"{load_before[0]:.2f} before the run, {load_after[0]:.2f} after it (the benchmark's own processes "
        "included). Batch-1 V1 requests; "
        f"{rounds} interleaved rounds of {seconds:.0f} s per target, 0.5 s warm-up each; p50 and p99 over the "
        "pooled latencies, `p99 rounds`: the median of the rounds' p99s (robust to a burst from another user). "
        "`router (shadow off)` is `route --mode canary --split 0` (every request to stable: the pure routing "
        "cost); `router (shadow on)` is `route --mode shadow --split 100` (every request also to a challenger "
        "predictor, on the same 2 CPUs); `idle-priority challenger`: the same with the challenger under Linux's "
        "SCHED_IDLE policy, as `kfops serve --challenger --mode shadow` runs it; `uvicorn`, `aiohttp`: the shadow-off "
        "router with `--http-server uvicorn` and/or `--http-client aiohttp` in place of its own pieces. `added p50 "
        "rounds`: the target's p50 minus direct's in the same round, median (min to max) over the rounds. `CPU/req`: "
        "CPU time of the serving process (direct: the predictor; otherwise the router alone) per request, from "
        "/proc, median over the rounds.\n\n"
        "| clients | target | requests/s | p50 (ms) | p99 (ms) | p99 rounds (ms) | added p50 (ms) | "
        "added p50 rounds (ms) | added p99 (ms) | CPU/req (µs) | errors |\n"
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|\n"
    ]
    verdicts = []
    for clients in (1, 8):
        direct = results[(DIRECT, clients)]
        for target in TARGETS:
            r = results[(target, clients)]
            added = (
                ("", "", "")
                if target == DIRECT
                else (
                    f"{r['p50_ms'] - direct['p50_ms']:+.2f}",
                    _spread(r["added_p50_rounds_ms"]),
                    f"{r['p99_ms'] - direct['p99_ms']:+.2f}",
                )
            )
            lines.append(
                f"| {clients} | {target} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['p99_rounds_ms']:.2f} | {added[0]} | {added[1]} | {added[2]} | {r['cpu_us']:.0f} | "
                f"{r['errors']} |\n"
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
        verdicts.append(
            f"{clients} client(s), added p50 by rounds (goal < 1.5 ms): "
            + "; ".join(
                f"{name.removeprefix('router ')} {_spread(results[(name, clients)]['added_p50_rounds_ms'])}"
                for name in (OFF, LIBRARIES, LIB_SERVER, LIB_CLIENT)
            )
            + "."
        )
    for name, shadow in results["shadow"].items():
        verdicts.append(
            f"Shadow calls of `{name}`: {shadow['sent']:,.0f} sent, {shadow['completed']:,.0f} compared, "
            f"{shadow['failed']:,.0f} failed, {shadow['dropped']:,.0f} dropped (more than 64 in flight)."
        )
    return "".join(lines) + "\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):+.2f} ({min(values):+.2f} to {max(values):+.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.seconds, args.rounds, Path(tmp))
    command = "python benchmarks/bench_router.py " + " ".join(sys.argv[1:])
    text = report(results, args.seconds, args.rounds, load_before, os.getloadavg(), command.strip())
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
