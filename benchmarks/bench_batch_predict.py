"""Batch prediction throughput: 1 million rows scored from Parquet by ``kfops predict``'s direct path
(``kfops.components.batch_predict.logic.predict_batch``: plan, shards streamed in 65,536-row chunks, Parquet parts
and a manifest written), against the naive way: ``mlflow.pyfunc.load_model(...).predict(pandas.read_parquet(...))``
on the whole file, then the predictions written to Parquet.

Both score the same registered model (an MLP [64, 32] trained here on 20,000 generated rows, alias champion in a
sqlite MLflow store) on the same 1M generated rows; each side runs in a fresh process, so its peak resident memory
(model, data and output included) and its wall time from the model load on are its own. Rows/s is over that wall
time; "scoring" is the time after the model is loaded. The two sides' predictions are compared row for row.

The sides run in ``--rounds`` rounds (order rotated, harness.py), each pinned to the same CPUs with the same
thread settings; every figure is the median over the rounds with min-max, and each ratio the median of the
per-round ratios. Never the best run.

    python benchmarks/bench_batch_predict.py [--rows 1000000] [--rounds 5] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import harness
except ImportError:  # python -m benchmarks.bench_batch_predict
    from benchmarks import harness

MODEL = "bench-batch"
SIDES = ("kfops", "baseline")
LABELS = {
    "kfops": "kfops predict, direct (shards of 250,000 rows, 65,536-row chunks)",
    "baseline": "naive: pyfunc.load_model().predict(read_parquet()) + to_parquet",
}

CHILD = r"""
import json, os, sys, time
side, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
started = time.perf_counter()
if side == "kfops":
    from kfops.components.model_store import load_model
    loaded = load_model(f"{sys.argv[4]}@champion")
    scoring = time.perf_counter()
    from kfops.components.batch_predict import logic
    plan = logic.plan_batch(data, out, "", loaded=loaded)
    for shard in plan.shards:
        logic.score_planned_shard(shard, loaded=loaded)
    manifest = logic.summarize_batch(out, expected_shards=len(plan.shards))
    rows, files = manifest["total_rows"], len(manifest["files"])
else:
    import mlflow.pyfunc, pandas as pd
    model = mlflow.pyfunc.load_model(f"models:/{sys.argv[4]}@champion")
    scoring = time.perf_counter()
    frame = pd.read_parquet(data)
    try:
        predictions = model.predict(frame)
    except Exception:  # MLflow will not widen int64 to the signature's float64: cast as the model asks
        from kfops.components.transform import model_input_frame
        predictions = model.predict(model_input_frame(model.unwrap_python_model().spec, frame))
    predictions.insert(0, "request_id", [f"row:{i}" for i in range(len(frame))])
    os.makedirs(out, exist_ok=True)
    predictions.to_parquet(os.path.join(out, "predictions.parquet"), index=False)
    rows, files = len(predictions), 1
ended = time.perf_counter()
# VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's high-water mark across exec.
status = open("/proc/self/status").read()
peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
result = {"seconds": ended - started, "scoring": ended - scoring, "rows": rows, "files": files, "peak_mb": peak_mb}
print(json.dumps(result))
"""


def prepare(root: Path, rows: int) -> tuple[str, str]:
    """A registered champion and the input Parquet file; returns (tracking URI, data path)."""
    import mlflow

    from kfops.components.contracts import SplitConfig, TrainConfig
    from kfops.components.ingest.logic import resolve_schema, split_frame, write_split
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.train.logic import train_model
    from kfops.components.transform import encode_labels, save_matrix, transform_features
    from kfops.datagen import generate_transactions

    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["KFOPS_MLFLOW_ARTIFACT_ROOT"] = str(root / "mlartifacts")
    train = generate_transactions(rows=20_000, seed=3)
    schema = resolve_schema(train, "train", "is_fraud", drop=["transaction_id", "customer_id"])
    splits = split_frame(train, "is_fraud", SplitConfig(seed=5))
    spec = fit_feature_spec(
        splits["train"], "is_fraud", schema.numeric, schema.categorical, schema.positive_class, schema.negative_class
    )
    spec.save(root / "spec.json")
    for name, frame in splits.items():
        write_split(frame, root / f"{name}.parquet")
        save_matrix(str(root / f"{name}.npz"), transform_features(spec, frame), encode_labels(spec, frame["is_fraud"]))
    config = TrainConfig(hidden_sizes=[64, 32], epochs=2, batch_size=512, seed=3, device="cpu")
    outcome = train_model(
        str(root / "train.npz"),
        str(root / "validation.npz"),
        str(root / "spec.json"),
        str(root / "train.parquet"),
        config,
        str(root / "model"),
        str(root / "tb"),
        experiment="bench-batch",
        tracking_uri=uri,
    )
    version = mlflow.register_model(outcome.model_uri, MODEL)
    mlflow.MlflowClient(uri).set_registered_model_alias(MODEL, "champion", version.version)
    data = root / "input.parquet"
    generate_transactions(rows=rows, seed=9).to_parquet(data, index=False)
    return uri, str(data)


def run_side(side: str, data: str, out: str, uri: str, pinning: harness.Pinning) -> dict:
    env = {**os.environ, **harness.thread_env(pinning.threads), "MLFLOW_TRACKING_URI": uri}
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(
        pinning.server([sys.executable, "-c", CHILD, side, data, out, MODEL]),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_predictions(kfops_out: str, baseline_out: str) -> tuple[int, float]:
    """Rows whose label differs, and the largest probability difference (kfops rows matched by row number)."""
    import numpy as np
    import pandas as pd

    ours = pd.read_parquet(kfops_out, columns=["request_id", "prediction", "probability"])
    ours["row"] = ours["request_id"].str.rsplit(":", n=1).str[1].astype(np.int64)
    ours = ours.sort_values("row").reset_index(drop=True)
    theirs = pd.read_parquet(Path(baseline_out, "predictions.parquet"), columns=["prediction", "probability"])
    differ = int((ours["prediction"].to_numpy() != theirs["prediction"].astype(str).to_numpy()).sum())
    return differ, float(np.abs(ours["probability"].to_numpy() - theirs["probability"].to_numpy()).max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    # No client here: both sides get all the CPUs and as many math threads.
    pinning = harness.Pinning("", ",".join(map(str, cpus)), len(cpus))
    before = harness.MachineLoad.sample()
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="kfops-bench-batch-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        uri, data = prepare(root, args.rows)
        print(f"prepared model and {args.rows:,} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        for number, order in harness.rounds(SIDES, args.rounds):
            for side in order:
                result = run_side(side, data, str(root / f"{side}-out"), uri, pinning)
                assert result["rows"] == args.rows, result
                runs[side].append(result)
                print(
                    f"round {number + 1} {side:>8}: {result['seconds']:.1f} s, {result['peak_mb']:.0f} MB", flush=True
                )
        differ, max_diff = same_predictions(str(root / "kfops-out"), str(root / "baseline-out"))
    after = harness.MachineLoad.sample()
    text = report(args, runs, differ, max_diff, pinning, before, after)
    print(text)
    if not args.no_write:
        harness.append_results(text)


def report(args, runs: dict[str, list[dict]], differ: int, max_diff: float, pinning, before, after) -> str:
    def spread(side: str, figure) -> harness.Spread:
        return harness.Spread.of([figure(r) for r in runs[side]])

    def ratio(numerator: str, denominator: str, figure) -> str:
        values = harness.per_round_ratios([figure(r) for r in runs[numerator]], [figure(r) for r in runs[denominator]])
        return harness.Spread.of(values).text(2) + "x"

    wall, scoring, peak = (lambda r: r["seconds"]), (lambda r: r["scoring"]), (lambda r: r["peak_mb"])
    rate, scoring_rate = (lambda r: r["rows"] / r["seconds"]), (lambda r: r["rows"] / r["scoring"])
    table = "".join(
        f"| {LABELS[side]} | {spread(side, wall).text(1)} | {spread(side, rate).text(0)} | "
        f"{spread(side, scoring).text(1)} | {spread(side, scoring_rate).text(0)} | {spread(side, peak).text(0)} | "
        f"{runs[side][0]['files']} |\n"
        for side in SIDES
    )
    return (
        f"\n## Batch prediction · {time.strftime('%Y-%m-%d', time.gmtime())}\n\n"
        + harness.provenance(
            None,
            before,
            after,
            f"Both sides pinned to CPUs {pinning.server_cpus} (`taskset`) with {pinning.threads} math threads. "
            f"{args.rows:,} generated transactions in one Parquet file (one row group); MLP [64, 32] on the default "
            "data's 12 features, registered as champion in a sqlite MLflow store. Each side in a fresh process: "
            "wall time from the model load (import included) to the output written; rows/s over that time; peak "
            f"RSS of the process. {args.rounds} rounds, order rotated; median over rounds (min-max).",
        )
        + "\n\n| path | wall (s) | rows/s | scoring after load (s) | scoring rows/s | peak memory (MB) | files |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        + table
        + f"\nkfops over the naive path, per round (median, min-max): overall speed "
        f"{ratio('baseline', 'kfops', wall)}, after the model load {ratio('baseline', 'kfops', scoring)}, "
        f"peak memory {ratio('kfops', 'baseline', peak)}. "
        f"Predictions (last round): {differ} label(s) differ, largest probability difference {max_diff:.1e}.\n"
    )


if __name__ == "__main__":
    main()
