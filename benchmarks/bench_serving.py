"""Serving throughput and latency: the suite's predictor against three others, in one run, through the harness.

Targets, each serving the same trained model folder, each its own process on 127.0.0.1, all pinned to the same
CPU(s) with the same torch/OpenMP thread count (``harness.Pinning``):

- ``baseline``: a FastAPI app written like the reference document's example: one row per request as a list of
  already-encoded floats (no validation, no transform), synchronous torch inside an ``async def`` handler, a
  pydantic response; no metrics, no logging.
- ``kserve-plain``: a plain ``kserve.Model`` with a synchronous ``predict`` over V1 instances (KServe's stock
  path): raw rows in, a pandas frame, the model's own transform; no validation beyond the model's, no logging.
- ``mlserver``: MLServer with its MLflow runtime (``mlserver-mlflow``, what KServe runs for ``modelFormat:
  mlflow``) on the same model folder, V2 with the pandas content type, in its own venv (``.venv-mlserver``, built
  by tests/components/test_model_code.py's ``mlserver_venv``), ``parallel_workers: 0`` (one process, as the
  others); its Prometheus metrics on, no payload log.
- ``kfops``: ``python -m kfops.serving`` (raw rows validated against the feature spec, the transform, the dynamic
  batcher, Prometheus metrics, payload logging as JSONL to a local folder).
- ``kfops-nolog``: the same without ``--payload-log``: not a headline, the measured cost of the payload log;
- ``kfops-parquet``: the same with ``--payload-log-format parquet``: what the log costs in its columnar format;
- ``kfops-w2``: the same with ``--workers 2``, when the server has that option (the harness gives it the same
  CPUs as every target, so on a 2-CPU machine it measures the cost of a second process, not scaling).

Loads, from ``wrk`` and from our Python client, each pinned apart from the targets: batch-1 requests from 32
connections; 256-row requests from 4 (every target but the baseline, whose API takes one row: its rows/s is its
batch-1 rate in the same round). Rounds interleave every target and load, the order rotated; each ratio is the
median of the per-round ratios with min-max.

    python benchmarks/bench_serving.py [--rounds 5] [--seconds 4] [--clients wrk,python] [--no-write]

Goals (issue 20): at 32 clients, at least the baseline's req/s with p99 no worse, and at least 2x MLServer's
with p99 no worse; 256-row requests at least 3x kserve-plain's rows/s, at least MLServer's, and at least 50x
the baseline's (one-row) rows/s.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

try:
    import harness
except ImportError:  # python -m benchmarks.bench_serving
    from benchmarks import harness

RESULTS = harness.RESULTS
MODEL_NAME = "fraud"
REPO = Path(__file__).resolve().parents[1]
free_port = harness.free_port
post_loop = harness.post_loop
BATCH_ROWS = 256
LOADS = {"batch-1 x 32": (1, 32), "256-row x 4": (BATCH_ROWS, 4)}
WHAT = {
    "baseline": "pre-encoded floats, one row a request; no validation, transform, metrics or logging",
    "kserve-plain": "raw rows through a plain kserve.Model: pandas frame, the model's transform; no logging",
    "mlserver": "MLServer 1.7 + mlserver-mlflow, V2 pandas content type, pyfunc predict; metrics, no payload log",
    "kfops": "raw rows validated against the feature spec (column by column), transform, dynamic batcher (inline "
    "on one CPU), metrics, JSONL payload log (columns to the writer thread)",
    "kfops-nolog": "kfops without --payload-log (everything else the same): what the payload log costs",
    "kfops-parquet": "kfops with --payload-log-format parquet (everything else the same)",
    "kfops-w2": "kfops with --workers 2 (same CPUs as the others)",
}


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

    harness.bench_torch_threads()
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

    harness.bench_torch_threads()
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


def mlserver_folder(model_dir: Path, folder: Path, port: int) -> Path:
    """MLServer's settings for one model (the MLflow runtime on ``model_dir``) under ``folder``."""
    (folder / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir)},
    }
    (folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(model))
    return folder


def text_columns(rows: list[dict]) -> set[str]:
    """The columns holding text anywhere in ``rows`` (a column typed from one row would call an empty category a
    number)."""
    return {name for row in rows for name, value in row.items() if isinstance(value, str)}


def v2_pandas_body(rows: list[dict], text: set[str]) -> dict:
    """A V2 request of ``rows`` as columns, pandas content type (MLServer's MLflow runtime builds a DataFrame);
    ``text``: the BYTES columns."""
    inputs = []
    for name in rows[0]:
        values = [row[name] for row in rows]
        if name not in text:
            data = [None if v is None else float(v) for v in values]
            inputs.append({"name": name, "datatype": "FP64", "shape": [len(values)], "data": data})
        else:  # a V2 BYTES tensor has no null: a blank category is "", which the model reads as unknown
            data = ["" if v is None else str(v) for v in values]
            inputs.append({"name": name, "datatype": "BYTES", "shape": [len(values)], "data": data})
    return {"inputs": inputs, "parameters": {"content_type": "pd"}}


# ------------------------------------------------------------------------------------------------ the run
def has_workers_option() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "kfops.serving", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "--workers" in out


def servers(targets: list[str], model_dir: Path, work: Path) -> dict[str, tuple[harness.Server, str, str]]:
    """target -> (server, ready URL, predict URL); not started."""
    made = {}
    for target in targets:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        ready, predict = f"{base}/v2/models/{MODEL_NAME}/ready", f"{base}/v1/models/{MODEL_NAME}:predict"
        env: dict[str, str] = {}
        if target.startswith("kfops"):
            command = [sys.executable, "-m", "kfops.serving", "--model", str(model_dir), "--name", MODEL_NAME]
            command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
            command += ["--torch-threads", "{threads}"]
            command += [] if target == "kfops-nolog" else ["--payload-log", str(work / f"payloads-{target}")]
            command += ["--payload-log-format", "parquet"] if target == "kfops-parquet" else []
            command += ["--workers", "2"] if target == "kfops-w2" else []
        elif target == "mlserver":
            sys.path.insert(0, str(REPO))
            from tests.components.test_model_code import mlserver_venv

            python = mlserver_venv()
            command = [str(python.parent / "mlserver"), "start", str(mlserver_folder(model_dir, work / "mls", port))]
            env = {"PYTHONPATH": "", "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
            predict = f"{base}/v2/models/{MODEL_NAME}/infer"
        else:
            command = [sys.executable, __file__, f"serve-{target}", "--model-dir", str(model_dir), "--port", str(port)]
            if target == "baseline":
                ready, predict = f"{base}/health", f"{base}/predict"
        made[target] = (harness.Server(target, command, work / f"{target}.log", env=env, cwd=work), ready, predict)
    return made


def bodies_for(target: str, rows: int, raw: list[dict], encoded: list[list[float]]) -> list[bytes]:
    if target == "baseline":
        return [json.dumps({"features": row}).encode() for row in encoded]
    chunks = [raw[i : i + rows] for i in range(0, len(raw) - rows + 1, rows)]
    if target == "mlserver":
        text = text_columns(raw)
        return [json.dumps(v2_pandas_body(chunk, text)).encode() for chunk in chunks]
    return [json.dumps({"instances": chunk}).encode() for chunk in chunks]


def run(args: argparse.Namespace, work: Path, pinning: harness.Pinning) -> dict:
    model_dir, raw, encoded = train_model_dir(work)
    targets = args.targets.split(",")
    if "kfops-w2" in targets and not has_workers_option():
        print("kfops.serving has no --workers option: kfops-w2 left out", flush=True)
        targets.remove("kfops-w2")
    made = servers(targets, model_dir, work)
    bodies = {
        (target, load): harness.BodyFile(bodies_for(target, LOADS[load][0], raw, encoded), work / "bodies")
        for target in targets
        for load in LOADS
        if not (target == "baseline" and LOADS[load][0] > 1)
    }
    results: dict = {"targets": targets, "measured": {}}
    try:
        for server, _, _ in made.values():
            server.command = [part.replace("{threads}", str(pinning.threads)) for part in server.command]
            server.start(pinning)
        for server, ready, _ in made.values():
            server.wait_ready(ready)
        for target, (server, _, url) in made.items():  # warm every target on every load once; all must answer
            for load in LOADS:
                if (target, load) in bodies:
                    warm = harness.python_load(url, bodies[(target, load)], LOADS[load][1], 1.0, pinning)
                    if warm.errors:
                        raise RuntimeError(f"{target} answered {warm.errors} errors on {load}:\n{server.tail()}")
        for number, order in harness.rounds(targets, args.rounds):
            for client in args.clients.split(","):
                for load in LOADS:
                    for target in order:
                        if (target, load) not in bodies:
                            continue
                        url = made[target][2]
                        measure = harness.CLIENTS[client]
                        m = measure(url, bodies[(target, load)], LOADS[load][1], args.seconds, pinning)
                        results["measured"].setdefault((client, load, target), []).append(m)
                        print(
                            f"round {number + 1} {client:>6} {load:>12} {target:>12}: {m.rps:8,.0f} req/s "
                            f"p50 {m.p50_ms:6.1f} ms p99 {m.p99_ms:6.1f} ms errors {m.errors}",
                            flush=True,
                        )
        for target, (server, _, _) in made.items():
            if server.process is not None and server.process.poll() is not None:
                raise RuntimeError(f"{target} exited during the run:\n{server.tail()}")
    finally:
        for server, _, _ in made.values():
            server.stop()
    return results


# ------------------------------------------------------------------------------------------------ the report
def rows_per_s(results: dict, client: str, load: str, target: str) -> list[float]:
    """Per round: rows/s (the baseline's from its batch-1 load, its API taking one row)."""
    if target == "baseline":
        load = "batch-1 x 32"
    per_request = LOADS[load][0]
    return [m.rps * per_request for m in results["measured"][(client, load, target)]]


def report(results: dict, args: argparse.Namespace, pinning: harness.Pinning, before, after) -> str:
    targets, measured = results["targets"], results["measured"]
    lines = [
        f"\n## Serving · {time.strftime('%Y-%m-%d', time.gmtime())}\n",
        harness.provenance(
            pinning,
            before,
            after,
            f"{args.rounds} rounds, every target and load in each, order rotated; {args.seconds:.0f} s per "
            "measurement (the Python client first warms for 1 s). Same model (MLP [64, 32] on the default data's "
            "features) in every target. Figures: median over rounds (min-max).",
        ),
        "",
        "What each target does per request:",
        "",
        *(f"- `{t}`: {WHAT[t]}" for t in targets),
        "",
        "| client | load | target | req/s | rows/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---:|",
    ]
    for (client, load, target), runs in measured.items():
        rps = harness.Spread.of([m.rps for m in runs])
        rows = harness.Spread.of(rows_per_s(results, client, load, target))
        p50 = harness.Spread.of([m.p50_ms for m in runs])
        p99 = harness.Spread.of([m.p99_ms for m in runs])
        lines.append(
            f"| {client} | {load} | {target} | {rps.text(0)} | {rows.text(0)} | {p50.text(1)} | {p99.text(1)} | "
            f"{sum(m.errors for m in runs)} |"
        )
    lines += ["", "Ratios, kfops over the other, per round (median, min-max); goal in brackets:", ""]
    lines += [f"- {line}" for line in verdicts(results, args.clients.split(","))]
    return "\n".join(lines) + "\n"


def verdicts(results: dict, clients: list[str]) -> list[str]:
    measured, targets = results["measured"], results["targets"]
    out = []

    def runs(client: str, load: str, target: str) -> list:
        return measured[(client, load, target)]

    for client in clients:
        single = "batch-1 x 32"
        ours = runs(client, single, "kfops")
        for other, goal in (("baseline", 1.0), ("mlserver", 2.0), ("kserve-plain", None)):
            if other not in targets:
                continue
            theirs = runs(client, single, other)
            rps = harness.Spread.of(harness.per_round_ratios([m.rps for m in ours], [m.rps for m in theirs]))
            p99 = harness.Spread.of(harness.per_round_ratios([m.p99_ms for m in ours], [m.p99_ms for m in theirs]))
            goal_text = f" [>= {goal:g}x req/s, p99 ratio <= 1]" if goal else ""
            out.append(f"{client}, {single}, vs {other}: req/s {rps.text()}x, p99 {p99.text()}x{goal_text}")
        big = "256-row x 4"
        for other, goal in (("kserve-plain", 3.0), ("mlserver", 1.0), ("baseline", 50.0)):
            if other not in targets:
                continue
            ratio = harness.Spread.of(
                harness.per_round_ratios(
                    rows_per_s(results, client, big, "kfops"), rows_per_s(results, client, big, other)
                )
            )
            against = "its batch-1 rows/s" if other == "baseline" else "256-row requests"
            out.append(f"{client}, {big} rows/s vs {other} ({against}): {ratio.text()}x [>= {goal:g}x]")
        if "kfops-nolog" in targets:
            for load in LOADS:
                cost = harness.Spread.of(
                    harness.per_round_ratios(
                        rows_per_s(results, client, load, "kfops"), rows_per_s(results, client, load, "kfops-nolog")
                    )
                )
                out.append(f"{client}, {load}: with the payload log / without, rows/s {cost.text()}x")
                if "kfops-parquet" in targets:
                    parquet = harness.Spread.of(
                        harness.per_round_ratios(
                            rows_per_s(results, client, load, "kfops-parquet"),
                            rows_per_s(results, client, load, "kfops-nolog"),
                        )
                    )
                    out.append(f"{client}, {load}: with a Parquet payload log / without, rows/s {parquet.text()}x")
        if "kfops-w2" in targets:
            for load in LOADS:
                scale = harness.Spread.of(
                    harness.per_round_ratios(
                        rows_per_s(results, client, load, "kfops-w2"), rows_per_s(results, client, load, "kfops")
                    )
                )
                out.append(f"{client}, {load}: --workers 2 / --workers 1 rows/s {scale.text()}x")
    return out


def load(url: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    """In-process ``post_loop`` over ``bodies`` (bench_features and bench_house use it): requests, requests/s, p50
    and p99 (ms), errors."""
    latencies, errors, elapsed = asyncio.run(post_loop(url, [json.dumps(b).encode() for b in bodies], clients, seconds))
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * harness.quantile(latencies, 0.5),
        "p99_ms": 1000 * harness.quantile(latencies, 0.99),
        "errors": errors,
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--targets", default="baseline,kserve-plain,mlserver,kfops,kfops-nolog,kfops-parquet,kfops-w2")
    parser.add_argument("--clients", default="wrk,python", help="load generators, comma-separated: wrk, python")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads in every target")
    parser.add_argument("--client-cpus", default="", help="CPUs for the load generator (default: the last)")
    parser.add_argument("--server-cpus", default="", help="CPUs for every target (default: all but the client's)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if "wrk" in args.clients:
        harness.require_wrk()
    pinning = harness.Pinning.from_args(args.client_cpus, args.server_cpus, args.threads)
    harness.measure_and_record("serving", args, pinning, run, report)


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
