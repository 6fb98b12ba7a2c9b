"""The router's cost: its added latency over calling the predictor directly, and shadow on vs off, in one run.

Processes, each on 127.0.0.1: a stable and a challenger predictor (``python -m kfops.serving``, the same trained
model), and two routers in front of them (``python -m kfops.serving route``):

- ``router (shadow off)``: ``--mode canary --split 0``, every request to stable: the pure routing overhead;
- ``router (shadow on)``: ``--mode shadow --split 100``, every request also sent to the challenger after the
  caller has its answer;
- ``router (shadow off, uvicorn + aiohttp)``, ``(..., uvicorn + own client)``, ``(..., own server + aiohttp)``: the
  shadow-off router with the libraries in place of its own HTTP server and client (``--http-server``,
  ``--http-client``), one piece at a time and both: whether the hand-written pieces still earn their place.

Batch-1 V1 requests from 1 and 8 connections, from ``wrk`` and from our Python client (harness.py: each client
pinned apart from the servers, every server pinned to the same CPUs with the same thread count). Targets are
measured in interleaved rounds (every target once per round, the order rotated); each figure is the median over
the rounds with min-max, and each comparison (shadow on / off, a router's added p50 over direct) is taken round
by round: the median and range of those. Beside each shadow target's latency: the share of its copies mirrored
(``router_shadow_requests_total``: ``sent`` over sent plus every outcome that means not sent, ``shed``), read
from the router's /metrics around each measurement once no copy is queued or in flight.

    python benchmarks/bench_router.py [--seconds 3] [--rounds 5] [--clients wrk,python] [--targets default|all]

Goals (issue 20, part 3): with shadow on, callers' p99 within 10% of shadow off at 1 and at 8 clients, and at 1
client at least 95% of requests mirrored; the router adds under 1.5 ms at p50.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

try:
    import harness
    from bench_serving import train_model_dir
except ImportError:  # python -m benchmarks.bench_router
    from benchmarks import harness
    from benchmarks.bench_serving import train_model_dir
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
TARGETS = (DIRECT, OFF, ON, ON_IDLE)
ALL_TARGETS = (*TARGETS, LIBRARIES, LIB_SERVER, LIB_CLIENT)
SHADOWS = (ON, ON_IDLE)
MIRROR_RESULTS = {"sent", "completed", "failed"}  # every other outcome is a shadow copy not sent
# router target: (mode, split, the challenger it shadows to, --http-server, --http-client)
ROUTERS = {
    OFF: ("canary", 0, "challenger", "own", "own"),
    ON: ("shadow", 100, "challenger", "own", "own"),
    ON_IDLE: ("shadow", 100, "idle challenger", "own", "own"),
    LIBRARIES: ("canary", 0, "challenger", "uvicorn", "aiohttp"),
    LIB_SERVER: ("canary", 0, "challenger", "uvicorn", "own"),
    LIB_CLIENT: ("canary", 0, "challenger", "own", "aiohttp"),
}


def predictor(model_dir: Path, port: int, variant: str, work: Path, threads: int) -> harness.Server:
    command = [sys.executable, "-m", "kfops.serving", "--model", str(model_dir), "--name", MODEL_NAME]
    command += ["--torch-threads", str(threads)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--variant", variant, "--log-level", "WARNING"]
    return harness.Server(f"{variant}-{port}", command, work / f"{variant}-{port}.log", cwd=work)


def router(
    stable: str, challenger: str, port: int, work: Path, mode: str, split: int, server: str, client: str
) -> harness.Server:
    command = [sys.executable, "-m", "kfops.serving", "route", "--stable", stable, "--challenger", challenger]
    command += ["--name", MODEL_NAME, "--mode", mode, "--split", str(split), "--port", str(port)]
    command += ["--http-server", server, "--http-client", client, "--log-level", "WARNING"]
    return harness.Server(f"router-{port}", command, work / f"router-{port}.log", cwd=work)


def shadow_idle(router_base: str, timeout: float = 10.0) -> None:
    """Wait until the shadow router has no shadow copy in flight or queued (so that it neither loads the next
    measurement nor sends this one's copies uncounted)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{router_base}/router", timeout=2) as response:
            state = json.loads(response.read())
            if state["shadow_in_flight"] == 0 and state.get("shadow_queued", 0) == 0:
                return
        time.sleep(0.05)


def shadow_outcomes(base: str) -> dict[str, float]:
    """``router_shadow_requests_total`` by outcome, from the router's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.findall(r'^router_shadow_requests_total\{outcome="([^"]+)"\} (\S+)$', text, re.MULTILINE)
    return {outcome: float(value) for outcome, value in found}


def mirrored_share(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Of the shadow copies decided between two readings, the share sent (None when there were none)."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}
    sent = delta.get("sent", 0.0)
    not_sent = sum(v for k, v in delta.items() if k not in MIRROR_RESULTS)
    return sent / (sent + not_sent) if sent + not_sent else None


def run(args: argparse.Namespace, work: Path, pinning: harness.Pinning) -> dict:
    targets = list(ALL_TARGETS if args.targets == "all" else TARGETS)
    routers = {name: ROUTERS[name] for name in targets if name in ROUTERS}
    model_dir, raw, _ = train_model_dir(work)
    bodies = harness.BodyFile([json.dumps({"instances": [row]}).encode() for row in raw], work / "bodies")
    ports = {name: harness.free_port() for name in ("stable", "challenger", "idle challenger", *routers)}
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    predictors = {
        "stable": predictor(model_dir, ports["stable"], "stable", work, pinning.threads),
        "challenger": predictor(model_dir, ports["challenger"], "challenger", work, pinning.threads),
    }
    if ON_IDLE in routers:
        predictors["idle challenger"] = predictor(
            model_dir, ports["idle challenger"], "challenger", work, pinning.threads
        )
    servers = dict(predictors)
    for name, (mode, split, challenger, server, client) in routers.items():
        servers[name] = router(base["stable"], base[challenger], ports[name], work, mode, split, server, client)
    results: dict = {"targets": targets, "measured": {}, "mirrored": {}}
    try:
        for server in servers.values():
            server.start(pinning)
        if "idle challenger" in predictors:  # what `kfops serve --challenger --mode shadow` does to its challenger
            print(f"idle-priority challenger: {lower_priority(predictors['idle challenger'].process.pid)}", flush=True)
        for name in predictors:
            servers[name].wait_ready(f"{base[name]}/v2/models/{MODEL_NAME}/ready")
        for name in routers:
            servers[name].wait_ready(f"{base[name]}/v2/health/ready")
        urls = {DIRECT: f"{base['stable']}/v1/models/{MODEL_NAME}:predict"}
        urls |= {name: f"{base[name]}/v1/models/{MODEL_NAME}:predict" for name in routers}
        for target in targets:  # warm, and every target must answer
            warm = harness.python_load(urls[target], bodies, 8, 1.0, pinning)
            if warm.errors:
                raise RuntimeError(f"{target} answered {warm.errors} errors")

        def idle() -> None:
            for name in SHADOWS:
                if name in routers:
                    shadow_idle(base[name])

        for number, order in harness.rounds(targets, args.rounds):
            for client in args.clients.split(","):
                for connections in (1, 8):
                    for target in order:
                        idle()
                        counts = shadow_outcomes(base[target]) if target in SHADOWS else None
                        m = harness.CLIENTS[client](urls[target], bodies, connections, args.seconds, pinning)
                        key = (client, connections, target)
                        results["measured"].setdefault(key, []).append(m)
                        share = None
                        if counts is not None:
                            idle()
                            share = mirrored_share(counts, shadow_outcomes(base[target]))
                            results["mirrored"].setdefault(key, []).append(share)
                        print(
                            f"round {number + 1} {client:>6} x{connections} {target:>45}: {m.rps:7,.0f} req/s p50 "
                            f"{m.p50_ms:5.2f} ms p99 {m.p99_ms:6.2f} ms errors {m.errors}"
                            + ("" if share is None else f" mirrored {100 * share:.1f}%"),
                            flush=True,
                        )
        for name, server in servers.items():
            if server.process is not None and server.process.poll() is not None:
                raise RuntimeError(f"{name} exited during the run:\n{server.tail()}")
    finally:
        for server in servers.values():
            server.stop()
    return results


def report(results: dict, args: argparse.Namespace, pinning: harness.Pinning, before, after) -> str:
    measured, targets = results["measured"], results["targets"]
    lines = [
        f"\n## Router · {time.strftime('%Y-%m-%d', time.gmtime())}\n",
        harness.provenance(
            pinning,
            before,
            after,
            f"The client, {3 if ON_IDLE in targets else 2} predictors and {len(targets) - 1} routers share the "
            f"machine. Batch-1 V1 requests; {args.rounds} rounds, every target, client and connection count in "
            f"each, the order rotated; {args.seconds:.0f} s per measurement (the Python client first warms for "
            "1 s). Figures: median over rounds (min-max).",
        ),
        "",
        "What each target is: `direct`: the stable predictor, no router. `router (shadow off)`: `route --mode "
        "canary --split 0` (every request to stable: the pure routing cost). `router (shadow on)`: `route --mode "
        "shadow --split 100` (every request's copy offered to a challenger predictor after the caller has its answer; "
        "best effort: a copy goes while the router's recent concurrency is under `--shadow-max-callers`, else waits "
        "in a bounded queue or is shed, counted). `idle-priority challenger`: the same with the challenger under "
        "Linux's SCHED_IDLE policy, as `kfops serve --challenger --mode shadow` runs it.",
        "",
        "| client | connections | target | req/s | p50 ms | p99 ms | mirrored | errors |",
        "|---|---:|---|---|---|---|---|---:|",
    ]
    for (client, connections, target), runs in measured.items():
        shares = results["mirrored"].get((client, connections, target))
        mirrored = ""
        if shares and all(v is not None for v in shares):
            mirrored = harness.Spread.of([100 * v for v in shares]).text(1, "%")
        lines.append(
            f"| {client} | {connections} | {target} | {harness.Spread.of([m.rps for m in runs]).text(0)} | "
            f"{harness.Spread.of([m.p50_ms for m in runs]).text(2)} | "
            f"{harness.Spread.of([m.p99_ms for m in runs]).text(2)} | {mirrored} | {sum(m.errors for m in runs)} |"
        )
    lines += ["", "Per round, then median (min-max); goals in brackets:", ""]
    for client in args.clients.split(","):
        for connections in (1, 8):

            def runs(target: str, key: str) -> list[float]:
                return [getattr(m, key) for m in measured[(client, connections, target)]]  # noqa: B023

            added = harness.Spread.of([a - b for a, b in zip(runs(OFF, "p50_ms"), runs(DIRECT, "p50_ms"), strict=True)])
            lines.append(f"- {client}, {connections} connection(s): the router adds {added.text(2)} ms at p50 [< 1.5]")
            for shadow in (name for name in SHADOWS if name in targets):
                ratio = harness.Spread.of(harness.per_round_ratios(runs(shadow, "p99_ms"), runs(OFF, "p99_ms")))
                share = results["mirrored"][(client, connections, shadow)]
                share_text = harness.Spread.of([100 * v for v in share if v is not None]).text(1, "%")
                goal = " [>= 95%]" if connections == 1 else ""
                lines.append(
                    f"- {client}, {connections} connection(s), {shadow}: callers' p99 shadow on / off "
                    f"{ratio.text(2)}x [<= 1.10]; mirrored {share_text}{goal}"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS)
    parser.add_argument("--clients", default="wrk,python", help="load generators, comma-separated: wrk, python")
    parser.add_argument(
        "--targets", choices=("default", "all"), default="default", help="all: also the library variants"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads in every predictor")
    parser.add_argument("--client-cpus", default="", help="CPUs for the load generator (default: the last)")
    parser.add_argument("--server-cpus", default="", help="CPUs for every target (default: all but the client's)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if "wrk" in args.clients:
        harness.require_wrk()
    pinning = harness.Pinning.from_args(args.client_cpus, args.server_cpus, args.threads)
    harness.measure_and_record("router", args, pinning, run, report)


if __name__ == "__main__":
    main()
