"""Serving throughput and latency: the suite's predictor against two baselines, in one run, on this machine.

Targets, each serving the same trained model from the same directory, each in its own process on 127.0.0.1:

- ``baseline``: a FastAPI app written like the reference document's example: one row per request as a list of
  already-encoded floats, synchronous torch inside an ``async def`` handler, a pydantic response.
- ``kserve-plain``: a plain ``kserve.Model`` with a synchronous ``predict`` over V1 instances (KServe's stock
  path): raw rows in, the model's own transform, one request at a time.
- ``kfops``: ``python -m kfops.serving`` (raw rows validated against the feature spec, the dynamic batcher,
  Prometheus metrics, payload logging to a local folder).

Loads: batch-1 requests from 1, 8 and 32 concurrent clients, and 256-row requests from 4 clients (the suite
only; the baseline's API takes one row). The client is one asyncio process with aiohttp, sharing the 2 CPUs with
the server, the same for every target.

    python benchmarks/bench_serving.py [--seconds 6]

Goals (issue "Serving"): at 32 clients at least 2x kserve-plain's requests/s and at least the baseline's, with a
p99 no worse than the baseline's; 256-row requests at least 50x the baseline's rows/s.
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MODEL_NAME = "fraud"


# ------------------------------------------------------------------------------------------------ the model
def train_model_dir(root: Path) -> tuple[Path, list[dict], list[list[float]]]:
    """Train the default model on generated data; return its pyfunc dir, raw test rows, encoded test rows."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["KFOPS_MLFLOW_ARTIFACT_ROOT"] = str(root / "mlartifacts")
    from kfops.components.contracts import SplitConfig, TrainConfig
    from kfops.components.ingest.logic import resolve_schema, split_frame, write_split
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.train.logic import train_model
    from kfops.components.transform import encode_labels, model_input_frame, save_matrix, transform_features
    from kfops.datagen import ID_COLUMNS, generate_transactions

    df = generate_transactions(rows=30_000)
    schema = resolve_schema(df, "bench", "is_fraud", drop=list(ID_COLUMNS))
    splits = split_frame(df, "is_fraud", SplitConfig())
    spec = fit_feature_spec(
        splits["train"], "is_fraud", schema.numeric, schema.categorical, schema.positive_class, schema.negative_class
    )
    spec.save(root / "spec.json")
    for name in ("train", "validation"):
        save_matrix(
            str(root / f"{name}.npz"),
            transform_features(spec, splits[name]),
            encode_labels(spec, splits[name]["is_fraud"]),
        )
    write_split(splits["train"], root / "train.parquet")
    train_model(
        str(root / "train.npz"),
        str(root / "validation.npz"),
        str(root / "spec.json"),
        str(root / "train.parquet"),
        TrainConfig(epochs=4, device="cpu"),
        str(root / "model"),
        str(root / "tb"),
        experiment="bench",
    )
    test = splits["test"].head(2000)
    raw = json.loads(model_input_frame(spec, test).to_json(orient="records"))
    encoded = transform_features(spec, test).tolist()
    return root / "model", raw, encoded


# ------------------------------------------------------------------------------------------------ baselines
def serve_baseline(model_dir: str, port: int) -> None:
    """The reference document's FastAPI pattern, on the same model."""
    import mlflow.pyfunc
    import torch
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    classifier = mlflow.pyfunc.load_model(model_dir).unwrap_python_model()
    network = classifier.network
    app = FastAPI(title="ML Model API")

    class PredictionRequest(BaseModel):
        features: list[float]

    class PredictionResponse(BaseModel):
        prediction: int
        probability: float
        model_version: str

    @app.post("/predict", response_model=PredictionResponse)
    async def predict(request: PredictionRequest):
        try:
            features = torch.tensor([request.features], dtype=torch.float32)
            with torch.no_grad():
                probability = torch.sigmoid(network(features))[0, 0].item()
            return PredictionResponse(prediction=int(probability > 0.5), probability=probability, model_version="1")
        except Exception as err:
            raise HTTPException(status_code=500, detail=str(err)) from err

    @app.get("/health")
    async def health():
        return {"status": "healthy"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_plain_kserve(model_dir: str, port: int) -> None:
    """A plain kserve.Model with a synchronous predict: KServe's stock path."""
    import kserve
    import mlflow.pyfunc
    import pandas as pd

    from kfops.serving.app import serve

    classifier = mlflow.pyfunc.load_model(model_dir).unwrap_python_model()

    class PlainModel(kserve.Model):
        def load(self) -> bool:
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            frame = pd.DataFrame(payload["instances"])
            probability = classifier.predict_proba(frame)
            return {"predictions": [{"prediction": int(p >= 0.5), "probability": float(p)} for p in probability]}

    model = PlainModel(MODEL_NAME)
    model.load()
    serve(model, host="127.0.0.1", port=port)


# ------------------------------------------------------------------------------------------------ load
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(target: str, model_dir: Path, port: int, log_dir: Path) -> subprocess.Popen:
    if target == "kfops":
        cmd = [
            sys.executable,
            "-m",
            "kfops.serving",
            "--model",
            str(model_dir),
            "--name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--payload-log",
            str(log_dir / "payloads"),
        ]
    else:
        cmd = [sys.executable, __file__, f"serve-{target}", "--model-dir", str(model_dir), "--port", str(port)]
    log = open(log_dir / f"{target}.log", "w")  # noqa: SIM115 - the server process owns it
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def wait_ready(url: str, timeout: float = 90.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                    if response.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} was not ready in {timeout:.0f} s")


async def post_loop(url: str, payloads: list[bytes], clients: int, seconds: float) -> tuple[list[float], int, float]:
    """``clients`` concurrent loops, each POSTing the next body as soon as the last answer came: the latencies
    (s), the non-200 count, and the seconds it ran.

    aiohttp rather than httpx: on 2 shared CPUs httpx's own overhead, not the server, capped the rate.
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"content-type": "application/json"}
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

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


async def load(url: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    """``post_loop`` over ``bodies``: requests, requests/s, p50 and p99 (ms), errors."""
    latencies, errors, elapsed = await post_loop(url, [json.dumps(b).encode() for b in bodies], clients, seconds)
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / elapsed,
        "p50_ms": 1000 * latencies[n // 2],
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))],
        "errors": errors,
    }


def run_target(
    target: str, model_dir: Path, raw: list[dict], encoded: list[list[float]], seconds: float, work: Path
) -> dict[str, dict]:
    port = free_port()
    proc = start(target, model_dir, port, work)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = f"{base}/health" if target == "baseline" else f"{base}/v2/models/{MODEL_NAME}/ready"
        asyncio.run(wait_ready(ready))
        if target == "baseline":
            url, single = f"{base}/predict", [{"features": row} for row in encoded]
        else:
            url, single = f"{base}/v1/models/{MODEL_NAME}:predict", [{"instances": [row]} for row in raw]
        results = {}
        for clients in (1, 8, 32):
            asyncio.run(load(url, single, clients, 1.0))  # warm-up
            results[f"batch-1 x {clients}"] = asyncio.run(load(url, single, clients, seconds))
        if target == "kfops":
            big = [{"instances": raw[i : i + 256]} for i in range(0, len(raw) - 256, 256)]
            result = asyncio.run(load(url, big, 4, seconds))
            result["rows_per_s"] = result["rps"] * 256
            results["256-row x 4"] = result
        return results
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--targets", default="baseline,kserve-plain,kfops")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, raw, encoded = train_model_dir(work)
        table = {t: run_target(t, model_dir, raw, encoded, args.seconds, work) for t in args.targets.split(",")}
    for target, rows in table.items():
        for load_name, r in rows.items():
            extra = f", {r['rows_per_s']:,.0f} rows/s" if "rows_per_s" in r else ""
            print(
                f"{target:>13} {load_name:>13}: {r['rps']:8,.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}{extra}",
                flush=True,
            )
    header = (
        f"\n## Serving · {datetime.now(UTC).date()}\n\n"
        f"Machine: the 2-vCPU development machine ({platform.machine()}), client and server sharing it; "
        f"{args.seconds:.0f} s per load after a 1 s warm-up. Same model (MLP [64, 32] on the default data's "
        "features) in every target.\n\n"
        "| target | load | requests/s | p50 (ms) | p99 (ms) | rows/s | errors |\n|---|---|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for target, rows in table.items():
        for load_name, r in rows.items():
            rows_s = r.get("rows_per_s", r["rps"])
            lines.append(
                f"| {target} | {load_name} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{rows_s:,.0f} | {r['errors']} |\n"
            )
    verdict = ""
    if {"baseline", "kserve-plain", "kfops"} <= set(table):
        ours, plain, base = (table[t]["batch-1 x 32"] for t in ("kfops", "kserve-plain", "baseline"))
        big = table["kfops"]["256-row x 4"]["rows_per_s"] / table["baseline"]["batch-1 x 32"]["rps"]
        verdict = (
            f"\nAt 32 clients: {ours['rps'] / plain['rps']:.1f}x kserve-plain (goal 2x), "
            f"{ours['rps'] / base['rps']:.2f}x the baseline (goal 1x), p99 {ours['p99_ms']:.1f} ms vs "
            f"{base['p99_ms']:.1f} ms; 256-row requests: {big:.0f}x the baseline's rows/s (goal 50x).\n"
        )
    text = header + "".join(lines) + verdict
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("serve-"):
        serve_parser = argparse.ArgumentParser()
        serve_parser.add_argument("mode")
        serve_parser.add_argument("--model-dir", required=True)
        serve_parser.add_argument("--port", type=int, required=True)
        serve_args = serve_parser.parse_args()
        {"serve-baseline": serve_baseline, "serve-kserve-plain": serve_plain_kserve}[serve_args.mode](
            serve_args.model_dir, serve_args.port
        )
    else:
        main()
