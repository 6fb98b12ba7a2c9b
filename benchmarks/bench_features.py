"""The feature store: online lookups, the predictor with and without them, and point-in-time joins, on this machine.

1. Online lookup latency from the local store (sqlite online store, Feast ``get_online_features`` for the
   ``fraud_model`` service, two views): 1 and 100 entities per call, called directly, through the predictor's
   lookup (worker thread + latency budget, cache off), and as cache hits.
2. The predictor (``python -m kfops.serving``, a real server process) at 8 concurrent batch-1 clients: full rows
   with no lookup; the customer id plus request-time features with ``--feature-repo`` (cache off: every request
   reads sqlite; cache on: the default 30 s).
3. Point-in-time join throughput (``kfops.components.features.logic.training_set``): 1,000,000 entity rows
   against a 1,000,000-row snapshot.

The data's timestamps end today, so online values are within their TTLs as they would be in production.

    python benchmarks/bench_features.py [--seconds 6] [--pit-rows 1000000] [--no-write]
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import MODEL_NAME, free_port, load, train_model_dir, wait_ready

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SERVING_ROWS = 30_000  # what bench_serving.train_model_dir trains on (seed 7)


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    n = len(samples)
    return 1000 * samples[n // 2], 1000 * samples[min(n - 1, int(n * 0.99))]


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
def bench_lookups(repo: str, customers: list[int]) -> dict[str, tuple[float, float]]:
    import random

    from kfops.components.feature_store.definitions import FRAUD_SERVICE, service_features
    from kfops.components.feature_store.online import read_online
    from kfops.components.feature_store.store import open_store, resolve_service
    from kfops.serving.feature_lookup import FeatureLookup

    store = open_store(repo)
    layout = resolve_service(store, FRAUD_SERVICE)
    rng = random.Random(3)
    out = {}
    for size, rounds in ((1, 2000), (100, 300)):
        batches = [rng.sample(customers, size) for _ in range(rounds)]
        for ids in batches[:20]:
            read_online(store, layout, ids)
        samples = []
        for ids in batches:
            started = time.perf_counter()
            read_online(store, layout, ids)
            samples.append(time.perf_counter() - started)
        out[f"direct get_online_features, {size} entit{'y' if size == 1 else 'ies'}"] = percentiles(samples)

    async def through_lookup(cache_size: int, size: int, rounds: int) -> tuple[float, float]:
        lookup = FeatureLookup(repo, FRAUD_SERVICE, timeout_ms=1000, cache_size=cache_size)
        lookup.load(service_features(FRAUD_SERVICE), "bench")
        batches = [rng.sample(customers, size) for _ in range(rounds)]
        if cache_size:
            for ids in batches:
                await lookup.rows(ids)  # fill the cache: the timed pass is all hits
        samples = []
        for ids in batches:
            started = time.perf_counter()
            await lookup.rows(ids)
            samples.append(time.perf_counter() - started)
        lookup.close()
        return percentiles(samples)

    for size, rounds in ((1, 2000), (100, 300)):
        noun = "entity" if size == 1 else "entities"
        out[f"predictor lookup (thread + budget, no cache), {size} {noun}"] = asyncio.run(
            through_lookup(0, size, rounds)
        )
        out[f"predictor lookup, cache hits, {size} {noun}"] = asyncio.run(through_lookup(100_000, size, rounds))
    return out


# ------------------------------------------------------------------------------------------------ 2. predictor
def run_server(model_dir: Path, extra: list[str], bodies: list[dict], seconds: float, work: Path, tag: str) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "kfops.serving", "--model", str(model_dir), "--name", MODEL_NAME]
    command += ["--host", "127.0.0.1", "--port", str(port), *extra]
    with open(work / f"{tag}.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(f"{base}/v2/models/{MODEL_NAME}/ready", timeout=180))
        url = f"{base}/v1/models/{MODEL_NAME}:predict"
        asyncio.run(load(url, bodies, 8, 1.0))  # warm-up
        return asyncio.run(load(url, bodies, 8, seconds))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def bench_predictor(model_dir: Path, repo: str, data, seconds: float, work: Path) -> dict[str, dict]:
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
    feature_flags = ["--feature-repo", repo, "--feature-timeout-ms", "200"]
    return {
        "no lookup (every feature in the request)": run_server(
            model_dir, [], [{"instances": [r]} for r in full], seconds, work, "plain"
        ),
        "lookup, cache off": run_server(
            model_dir,
            [*feature_flags, "--feature-cache-size", "0"],
            [{"instances": [r]} for r in request],
            seconds,
            work,
            "lookup-nocache",
        ),
        "lookup, cache on (30 s)": run_server(
            model_dir, feature_flags, [{"instances": [r]} for r in request], seconds, work, "lookup-cache"
        ),
    }


# ------------------------------------------------------------------------------------------------ 3. PIT join
def bench_pit(rows: int, work: Path) -> dict:
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
    # Label times up to a day after a transaction of the customer: most join to that transaction or a later one.
    entities = pd.DataFrame(
        {
            "customer_id": data["customer_id"].to_numpy(),
            "event_time": data["event_time"] + pd.to_timedelta(rng.integers(0, 86400, rows), unit="s"),
            "is_fraud": data["is_fraud"].to_numpy(),
        }
    )
    started = time.perf_counter()
    frame, report = logic.training_set(store, entities)
    seconds = time.perf_counter() - started
    return {
        "rows": len(frame),
        "lookups": report.lookups,
        "seconds": seconds,
        "rows_per_s": len(frame) / seconds,
        "missing": report.missing,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--pit-rows", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, _, _ = train_model_dir(work)
        data = shifted_transactions(SERVING_ROWS)
        repo = build_repo(work, data)
        lookups = bench_lookups(repo, sorted(int(c) for c in data["customer_id"].unique()))
        for name, (p50, p99) in lookups.items():
            print(f"{name:>60}: p50 {p50:.3f} ms  p99 {p99:.3f} ms", flush=True)
        served = bench_predictor(model_dir, repo, data, args.seconds, work)
        for name, r in served.items():
            print(f"{name:>40}: {r['rps']:,.0f} req/s p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms", flush=True)
        pit = bench_pit(args.pit_rows, work)
        print(json.dumps(pit, indent=2), flush=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = (
        f"\n## Feature store · {datetime.now(UTC).date()}\n\n"
        f"Machine: the 2-vCPU development machine ({platform.machine()}), shared with other work; `uptime` before: "
        f"`{uptime_before}`, after: `{uptime_after}`. Feast 0.67, local repository (sqlite online store, "
        f"Parquet/Dask offline store), service `fraud_model` (2 views, 4 features); {SERVING_ROWS:,} transactions "
        f"({data['customer_id'].nunique():,} customers) for 1-2.\n\n"
        "**Online lookup** (`benchmarks/bench_features.py`):\n\n| path | p50 (ms) | p99 (ms) |\n|---|---:|---:|\n"
        + "".join(f"| {name} | {p50:.3f} | {p99:.3f} |\n" for name, (p50, p99) in lookups.items())
        + f"\n**Predictor**, 8 clients, one row per request, {args.seconds:.0f} s after a 1 s warm-up (client and "
        "server on the same 2 CPUs):\n\n"
        "| target | requests/s | p50 (ms) | p99 (ms) | errors |\n|---|---:|---:|---:|---:|\n"
        + "".join(
            f"| {name} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |\n"
            for name, r in served.items()
        )
        + f"\n**Point-in-time join**: {pit['rows']:,} entity rows ({pit['lookups']:,} distinct customer/time pairs) "
        f"against a {args.pit_rows:,}-row snapshot, two views joined one at a time: {pit['seconds']:.1f} s, "
        f"{pit['rows_per_s']:,.0f} rows/s, peak RSS {pit['peak_rss_gb']:.1f} GB; missing: {pit['missing']}.\n"
    )
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
