"""The feature store through the harness: online lookups, the predictor with and without them, and point-in-time
joins, on this machine.

1. Online lookup latency from the local store (sqlite online store, Feast ``get_online_features`` for the
   ``fraud_model`` service, two views), 1 and 100 entities per call: called directly, through the predictor's
   lookup (worker thread + latency budget, cache off), and as cache hits. In this process, pinned to all its CPUs.
2. The predictor (``python -m kfops.serving``, real server processes, every one pinned to the same CPU(s) with the
   same torch/OpenMP threads) at 8 concurrent batch-1 connections from ``wrk`` (and ``--clients python``: our
   aiohttp client), the client pinned apart: full rows with no lookup; the customer id plus request-time features
   with ``--feature-repo`` (cache off: every request reads sqlite; cache on: the default 30 s).
3. Point-in-time join (``kfops.components.features.logic.training_set``): ``--pit-rows`` entity rows against a
   snapshot of as many rows, ``--pit-rounds`` times (one round is about half a minute at 1 million rows).

Parts 1 and 2 run their targets in ``--rounds`` interleaved rounds, the order rotated (harness.py); every figure
is the median over the rounds with min-max, every ratio the median of per-round ratios. The data's timestamps end
today, so online values are within their TTLs as they would be in production.

    python benchmarks/bench_features.py [--rounds 5] [--seconds 5] [--pit-rows 1000000] [--pit-rounds 3]
                                        [--clients wrk] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

try:
    import harness
    from bench_serving import MODEL_NAME, train_model_dir
except ImportError:  # python -m benchmarks.bench_features
    from benchmarks import harness
    from benchmarks.bench_serving import MODEL_NAME, train_model_dir

RESULTS = harness.RESULTS
SERVING_ROWS = 30_000  # what bench_serving.train_model_dir trains on (seed 7)
CONNECTIONS = 8
# lookup path -> (how, entities a call, calls a round)
LOOKUPS = {
    "direct get_online_features, 1 entity": ("direct", 1, 500),
    "predictor lookup (thread + budget, no cache), 1 entity": ("lookup", 1, 500),
    "predictor lookup, cache hits, 1 entity": ("cached", 1, 500),
    "direct get_online_features, 100 entities": ("direct", 100, 60),
    "predictor lookup (thread + budget, no cache), 100 entities": ("lookup", 100, 60),
    "predictor lookup, cache hits, 100 entities": ("cached", 100, 60),
}
# predictor target -> the server's extra flags (the repository's path filled in), what its requests carry
PREDICTORS = {
    "no lookup": ([], "every feature in the request"),
    "lookup, cache off": (["--feature-cache-size", "0"], "customer id + request-time features"),
    "lookup, cache on": ([], "customer id + request-time features; 30 s cache (the default)"),
}


def percentiles(samples: list[float]) -> tuple[float, float]:
    return 1000 * harness.quantile(samples, 0.5), 1000 * harness.quantile(samples, 0.99)


def shifted_transactions(rows: int, seed: int = 7):
    """The generator's data, its 90 days ending now (the values are the seed's, only the times move)."""
    from kfops.datagen import generate_transactions

    start = (datetime.now(UTC) - timedelta(days=91)).strftime("%Y-%m-%d")
    return generate_transactions(rows=rows, seed=seed, start=start)


def build_repo(root: Path, data) -> str:
    from kfops.components.feature_store.store import open_store
    from kfops.components.features import logic

    data.to_parquet(root / "source.parquet", index=False)
    logic.init_repo(root / "repo")
    store = open_store(root / "repo")
    logic.apply_definitions(store, str(root / "source.parquet"))
    end = data["event_time"].max() + timedelta(seconds=1)
    logic.materialize(store, start=data["event_time"].min() - timedelta(seconds=1), end=end)
    return str(root / "repo")


# ------------------------------------------------------------------------------------------------ 1. lookups
def measure_lookup(repo: str, how: str, size: int, calls: int, customers: list[int], seed: int) -> tuple[float, float]:
    """(p50, p99) ms of ``calls`` reads of ``size`` random customers, after a warm-up."""
    from kfops.components.feature_store.definitions import FRAUD_SERVICE, service_features
    from kfops.components.feature_store.online import read_online
    from kfops.components.feature_store.store import open_store, resolve_service
    from kfops.serving.feature_lookup import FeatureLookup

    rng = random.Random(seed)
    batches = [rng.sample(customers, size) for _ in range(calls)]
    samples: list[float] = []
    if how == "direct":
        store = open_store(repo)
        layout = resolve_service(store, FRAUD_SERVICE)
        for ids in batches[:20]:
            read_online(store, layout, ids)
        for ids in batches:
            started = time.perf_counter()
            read_online(store, layout, ids)
            samples.append(time.perf_counter() - started)
        return percentiles(samples)

    async def through_lookup() -> None:
        lookup = FeatureLookup(repo, FRAUD_SERVICE, timeout_ms=1000, cache_size=100_000 if how == "cached" else 0)
        lookup.load(service_features(FRAUD_SERVICE), "bench")
        try:
            for ids in batches if how == "cached" else batches[:20]:
                await lookup.rows(ids)  # warm up; for "cached", fill the cache: the timed pass is all hits
            for ids in batches:
                started = time.perf_counter()
                await lookup.rows(ids)
                samples.append(time.perf_counter() - started)
        finally:
            lookup.close()

    asyncio.run(through_lookup())
    return percentiles(samples)


# ------------------------------------------------------------------------------------------------ 2. predictor
def predictor_bodies(model_dir: Path, data) -> dict[str, list[bytes]]:
    from kfops.components.contracts import FeatureSpec
    from kfops.components.feature_store.definitions import FRAUD_SERVICE, service_features
    from kfops.components.transform import model_input_frame

    spec = FeatureSpec.load(next(model_dir.rglob("feature_spec.json")))
    looked_up = service_features(FRAUD_SERVICE)
    rows = data.sample(2000, random_state=5).reset_index(drop=True)
    full = json.loads(model_input_frame(spec, rows).to_json(orient="records"))
    request = [
        {"customer_id": int(c), **{k: v for k, v in r.items() if k not in looked_up}}
        for c, r in zip(rows["customer_id"], full, strict=True)
    ]
    full_bodies = [json.dumps({"instances": [r]}).encode() for r in full]
    lookup_bodies = [json.dumps({"instances": [r]}).encode() for r in request]
    return {target: full_bodies if target == "no lookup" else lookup_bodies for target in PREDICTORS}


def predictor_servers(model_dir: Path, repo: str, work: Path, threads: int) -> dict[str, tuple[harness.Server, int]]:
    made = {}
    for number, (target, (extra, _)) in enumerate(PREDICTORS.items()):
        port = harness.free_port()
        command = [sys.executable, "-m", "kfops.serving", "--model", str(model_dir), "--name", MODEL_NAME]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
        command += ["--torch-threads", str(threads)]
        if target != "no lookup":
            command += ["--feature-repo", repo, "--feature-timeout-ms", "200", *extra]
        made[target] = (harness.Server(target, command, work / f"predictor-{number}.log", cwd=work), port)
    return made


# ------------------------------------------------------------------------------------------------ 3. PIT join
def pit_store(rows: int, work: Path):
    """A store over ``rows`` transactions and the entity rows to join: label times up to a day after a transaction
    of the customer, so most join to that transaction or a later one."""
    import numpy as np
    import pandas as pd

    from kfops.components.feature_store.store import open_store
    from kfops.components.features import logic

    data = shifted_transactions(rows, seed=3)
    data.to_parquet(work / "pit-source.parquet", index=False)
    logic.init_repo(work / "pit-repo")
    store = open_store(work / "pit-repo")
    logic.apply_definitions(store, str(work / "pit-source.parquet"))
    rng = np.random.default_rng(8)
    entities = pd.DataFrame(
        {
            "customer_id": data["customer_id"].to_numpy(),
            "event_time": data["event_time"] + pd.to_timedelta(rng.integers(0, 86400, rows), unit="s"),
            "is_fraud": data["is_fraud"].to_numpy(),
        }
    )
    return store, entities


def pit_join(store, entities) -> dict:
    from kfops.components.features import logic

    started = time.perf_counter()
    frame, report = logic.training_set(store, entities)
    seconds = time.perf_counter() - started
    return {
        "rows": len(frame),
        "lookups": report.lookups,
        "seconds": seconds,
        "rows_per_s": len(frame) / seconds,
        "missing": report.missing,
    }


# ------------------------------------------------------------------------------------------------ the run
def run(args: argparse.Namespace, work: Path, pinning: harness.Pinning) -> dict:
    whole = harness.Pinning.whole_machine()
    harness.pin_in_process(whole)
    model_dir, _, _ = train_model_dir(work)
    data = shifted_transactions(SERVING_ROWS)
    repo = build_repo(work, data)
    results: dict = {"customers": int(data["customer_id"].nunique()), "whole": whole, "predictor": {}, "lookup": {}}

    made = predictor_servers(model_dir, repo, work, pinning.threads)
    bodies = {t: harness.BodyFile(b, work / "bodies") for t, b in predictor_bodies(model_dir, data).items()}
    url = {t: f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict" for t, (_, port) in made.items()}
    try:
        for server, _ in made.values():
            server.start(pinning)
        for server, port in made.values():
            server.wait_ready(f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/ready")
        for target, (server, _) in made.items():  # warm every target once; all must answer
            warm = harness.python_load(url[target], bodies[target], CONNECTIONS, 1.0, pinning)
            if warm.errors:
                raise RuntimeError(f"{target} answered {warm.errors} errors:\n{server.tail()}")
        for number, order in harness.rounds(list(PREDICTORS), args.rounds):
            for client in args.clients.split(","):
                for target in order:
                    m = harness.CLIENTS[client](url[target], bodies[target], CONNECTIONS, args.seconds, pinning)
                    results["predictor"].setdefault((client, target), []).append(m)
                    print(
                        f"round {number + 1} {client:>6} {target:>17}: {m.rps:8,.0f} req/s p50 {m.p50_ms:6.1f} ms "
                        f"p99 {m.p99_ms:6.1f} ms errors {m.errors}",
                        flush=True,
                    )
        for target, (server, _) in made.items():
            if server.process is not None and server.process.poll() is not None:
                raise RuntimeError(f"{target} exited during the run:\n{server.tail()}")
    finally:
        for server, _ in made.values():
            server.stop()

    customers = sorted(int(c) for c in data["customer_id"].unique())
    for number, order in harness.rounds(list(LOOKUPS), args.rounds):
        for path in order:
            how, size, calls = LOOKUPS[path]
            p50, p99 = measure_lookup(repo, how, size, calls, customers, seed=number)
            results["lookup"].setdefault(path, []).append((p50, p99))
        print(f"round {number + 1} lookups: " + ", ".join(f"{results['lookup'][p][-1][0]:.3f}" for p in LOOKUPS))

    results["pit"] = []
    if args.pit_rounds:
        store, entities = pit_store(args.pit_rows, work)
        for number in range(args.pit_rounds):
            results["pit"].append(pit_join(store, entities))
            print(f"PIT join round {number + 1}: {results['pit'][-1]['seconds']:.1f} s", flush=True)
        # ru_maxrss after the joins: the process's peak, the joins' data included (the predictor part ran in
        # servers of their own)
        results["pit_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    return results


def report(results: dict, args: argparse.Namespace, pinning: harness.Pinning, before, after) -> str:
    clients = args.clients.split(",")
    lines = [
        "",
        f"## Feature store · {time.strftime('%Y-%m-%d', time.gmtime())}",
        "",
        harness.provenance(
            pinning,
            before,
            after,
            f"Feast 0.67, local repository (sqlite online store, Parquet/Dask offline store), service `fraud_model` "
            f"(2 views, 4 features); {SERVING_ROWS:,} transactions ({results['customers']:,} customers) for the "
            f"lookups and the predictor. {args.rounds} rounds, the targets' order rotated; median over rounds "
            "(min-max), ratios the median of per-round ratios. The lookups and the join ran in the benchmark's own "
            f"process, pinned to CPUs {results['whole'].server_cpus}.",
        ),
        "",
        "**Online lookup**, per call (per round: the p50 and p99 of its calls):",
        "",
        "| path | calls a round | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|",
    ]
    for path, per_round in results["lookup"].items():
        p50 = harness.Spread.of([p for p, _ in per_round])
        p99 = harness.Spread.of([p for _, p in per_round])
        lines.append(f"| {path} | {LOOKUPS[path][2]} | {p50.text(3)} | {p99.text(3)} |")
    for size in (1, 100):
        noun = "entity" if size == 1 else "entities"
        hop = harness.per_round_ratios(
            [p for p, _ in results["lookup"][f"predictor lookup (thread + budget, no cache), {size} {noun}"]],
            [p for p, _ in results["lookup"][f"direct get_online_features, {size} {noun}"]],
        )
        lines.append(f"\nPredictor lookup (no cache) over the direct read, {size} {noun}, p50 per round: "
                     f"{harness.Spread.of(hop).text(2, 'x')}.")  # fmt: skip
    lines += [
        "",
        f"**Predictor**, {CONNECTIONS} connections, one row per request, {args.seconds:g} s a measurement after a "
        "1 s warm-up of each target:",
        "",
        "| client | target | request | requests/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    measured = results["predictor"]
    for client in clients:
        for target, (_, what) in PREDICTORS.items():
            runs = measured[client, target]
            lines.append(
                f"| {client} | {target} | {what} | {harness.Spread.of([m.rps for m in runs]).text(0)} | "
                f"{harness.Spread.of([m.p50_ms for m in runs]).text(2)} | "
                f"{harness.Spread.of([m.p99_ms for m in runs]).text(2)} | {sum(m.errors for m in runs)} |"
            )
    lines.append("")
    for client in clients:
        for target in ("lookup, cache off", "lookup, cache on"):
            rps = harness.per_round_ratios(
                [m.rps for m in measured[client, target]], [m.rps for m in measured[client, "no lookup"]]
            )
            p99 = harness.per_round_ratios(
                [m.p99_ms for m in measured[client, target]], [m.p99_ms for m in measured[client, "no lookup"]]
            )
            lines.append(
                f"- {client}, {target} / no lookup, per round: req/s {harness.Spread.of(rps).text(2, 'x')}, p99 "
                f"{harness.Spread.of(p99).text(2, 'x')}"
            )
    if results["pit"]:
        pit = results["pit"]
        first = pit[0]
        lines += [
            "",
            f"**Point-in-time join**: {first['rows']:,} entity rows ({first['lookups']:,} distinct customer/time "
            f"pairs) against a {args.pit_rows:,}-row snapshot, two views joined one at a time, {len(pit)} rounds: "
            f"{harness.Spread.of([r['seconds'] for r in pit]).text(1)} s, "
            f"{harness.Spread.of([r['rows_per_s'] for r in pit]).text(0)} rows/s; peak RSS of the process "
            f"{results['pit_peak_gb']:.1f} GB; missing: {first['missing']}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS)
    parser.add_argument("--seconds", type=float, default=5.0, help="load on each predictor a round")
    parser.add_argument("--pit-rows", type=int, default=1_000_000)
    parser.add_argument("--pit-rounds", type=int, default=3, help="point-in-time joins (0: none)")
    parser.add_argument("--clients", default="wrk", help="load generators, comma-separated: wrk, python")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads in every predictor")
    parser.add_argument("--client-cpus", default="", help="CPUs for the load generator (default: the last)")
    parser.add_argument("--server-cpus", default="", help="CPUs for every predictor (default: all but the client's)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--results", default=str(RESULTS), help="Markdown file the section is appended to")
    args = parser.parse_args()
    unknown = sorted(set(args.clients.split(",")) - set(harness.CLIENTS))
    if unknown:
        parser.error(f"--clients: unknown {', '.join(unknown)}; choose from {', '.join(harness.CLIENTS)}")
    if "wrk" in args.clients.split(","):
        harness.require_wrk()
    pinning = harness.Pinning.from_args(args.client_cpus, args.server_cpus, args.threads)
    harness.measure_and_record("features", args, pinning, run, report)


if __name__ == "__main__":
    main()
