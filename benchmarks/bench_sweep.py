"""Sweep overhead per trial, locally: each trial's wall time (asked, run through kfp.local's train component,
told) minus the training loop's own time (the run's ``train_seconds``), and DDP scaling on this machine.

    python benchmarks/bench_sweep.py                   # 6 trials, 1 and 2 at a time, then 1 vs 2 gloo ranks
    python benchmarks/bench_sweep.py --trials 4 --no-ddp

The overhead is what a trial costs beyond training: the kfp.local pipeline run (importers, the train task's
subprocess and its imports of torch and MLflow), MLflow logging and the model save, and the Optuna ask and tell.
DDP: samples/s of ``fit`` on the default data with 1 process and with 2 gloo processes under torchrun (each
rank one thread). Figures are appended to benchmarks/RESULTS.md with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
REPO = Path(__file__).resolve().parents[1]

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from kfops.components.contracts import TrainConfig
    from kfops.components.preprocess.logic import load_matrix
    from kfops.components.train import distributed
    from kfops.components.train.loop import fit

    context = distributed.init_from_env("cpu")
    config = TrainConfig.from_dict(json.loads(sys.argv[3]))
    result = fit(*load_matrix(sys.argv[1]), *load_matrix(sys.argv[2]), config)
    if context is None or context.is_main:
        print(json.dumps({"samples_per_second": result.samples_per_second, "seconds": result.train_seconds,
                          "world": result.world_size, "val_loss": result.best_val_loss}))
    distributed.shutdown()
    """
)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def prepare(rows: int, folder: Path):
    from kfops.components.contracts import SplitConfig
    from kfops.components.datasets import canonical_sha256
    from kfops.components.ingest.logic import resolve_schema, split_frame, write_split
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.sweep.logic import PreparedData
    from kfops.components.transform import encode_labels, save_matrix, transform_features
    from kfops.datagen import ID_COLUMNS, generate_transactions

    df = generate_transactions(rows=rows)
    schema = resolve_schema(df, "default data", "is_fraud", drop=list(ID_COLUMNS))
    splits = split_frame(df, "is_fraud", SplitConfig())
    spec = fit_feature_spec(
        splits["train"], "is_fraud", schema.numeric, schema.categorical, schema.positive_class, schema.negative_class
    )
    spec.save(folder / "feature_spec.json")
    for name in ("train", "validation"):
        write_split(splits[name], folder / f"{name}.parquet")
        save_matrix(
            str(folder / f"{name}.npz"),
            transform_features(spec, splits[name]),
            encode_labels(spec, splits[name]["is_fraud"]),
        )
    return PreparedData(
        str(folder / "train.npz"),
        str(folder / "validation.npz"),
        str(folder / "feature_spec.json"),
        str(folder / "train.parquet"),
        data_sha256=canonical_sha256(df),
    )


def sweep_overhead(data, trials: int, parallel: int, epochs: int, folder: Path) -> dict:
    from kfops.components.contracts import TrainConfig
    from kfops.components.sweep.logic import run_local_sweep
    from kfops.components.sweep.spec import parse_spec
    from kfops.pipelines.local import configure_environment, workspace
    from kfops.pipelines.sweep import run_trial_locally

    ws = workspace(folder / f"ws-{parallel}")
    configure_environment(ws)
    spec = parse_spec(
        {
            "name": "bench",
            "method": "random",
            "run_cap": trials,
            "parameters": {
                "learning_rate": {"distribution": "log_uniform_values", "min": 1e-3, "max": 3e-2},
                "epochs": {"value": epochs},
            },
            "kfops": {"parallel": parallel},
        }
    )
    outcome = run_local_sweep(
        spec, data, run_trial_locally, workspace=ws.root, base=TrainConfig(batch_size=512, device="cpu")
    )
    trials_ = [t for t in outcome.trials if t.state == "complete"]
    return {
        "parallel": parallel,
        "trials": len(trials_),
        "wall": outcome.seconds,
        "trial_wall": statistics.median(t.seconds for t in trials_),
        "train": statistics.median(t.train_seconds for t in trials_),
        "overhead": statistics.median(t.overhead_seconds for t in trials_),
        "overhead_min": min(t.overhead_seconds for t in trials_),
        "overhead_max": max(t.overhead_seconds for t in trials_),
    }


def ddp_scaling(data, epochs: int, batch: int, folder: Path) -> list[dict]:
    script = folder / "ddp.py"
    script.write_text(DDP_SCRIPT)
    config = json.dumps({"hidden_sizes": [64, 32], "epochs": epochs, "batch_size": batch, "device": "cpu",
                         "early_stopping_patience": 0})  # fmt: skip
    rows = []
    for world in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(2 // world), PYTHONPATH=str(REPO))
        if world == 1:
            command = [sys.executable, str(script)]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       str(script)]  # fmt: skip
        done = subprocess.run(
            [*command, data.train_features, data.validation_features, config],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
        rows.append(result)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ddp-epochs", type=int, default=10)
    parser.add_argument("--ddp-batch", type=int, default=1024)
    parser.add_argument("--no-ddp", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    before = load()
    with tempfile.TemporaryDirectory(prefix="kfops-bench-sweep-") as tmp:
        folder = Path(tmp)
        data = prepare(args.rows, folder)
        sweeps = [sweep_overhead(data, args.trials, p, args.epochs, folder) for p in (1, 2)]
        ddp = [] if args.no_ddp else ddp_scaling(data, args.ddp_epochs, args.ddp_batch, folder)
    after = load()

    lines = [
        f"## Sweeps and data-parallel training · {datetime.now(UTC):%Y-%m-%d}",
        "",
        f"Machine: the 2-vCPU development machine ({os.uname().machine}), shared with other work: `uptime` load "
        f"averages {before} before, {after} after. Python {sys.version.split()[0]}. Default data, "
        f"{args.rows:,} rows (70% train). `python benchmarks/bench_sweep.py`.",
        "",
        f"Local sweep, random search over the learning rate, {args.epochs} epochs, batch 512, MLP [64, 32]; each trial "
        "one kfp.local run of `kfops-sweep-trial` (train component) as a child MLflow run; overhead = trial wall "
        "time (ask to tell) minus the run's `train_seconds` (median, min-max):",
        "",
        "| trials at once | trials | sweep wall (s) | trial wall (s) | training (s) | overhead per trial (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sweeps:
        lines.append(
            f"| {s['parallel']} | {s['trials']} | {s['wall']:.1f} | {s['trial_wall']:.1f} | {s['train']:.2f} | "
            f"{s['overhead']:.1f} ({s['overhead_min']:.1f}-{s['overhead_max']:.1f}) |"
        )
    if ddp:
        speedup = ddp[1]["samples_per_second"] / ddp[0]["samples_per_second"]
        lines += [
            "",
            f"Data-parallel `fit` on the same data: MLP [64, 32], batch {args.ddp_batch} (global), {args.ddp_epochs} "
            "epochs; 1 process with 2 threads against 2 gloo processes (torchrun) with 1 thread each:",
            "",
            "| processes | samples/s | training (s) | best val_loss |",
            "|---:|---:|---:|---:|",
            *(
                f"| {r['world']} | {r['samples_per_second']:,.0f} | {r['seconds']:.1f} | {r['val_loss']:.5f} |"
                for r in ddp
            ),
            "",
            f"2 ranks: {speedup:.2f}x the samples/s of 1 process on this 2-core machine: each rank computes half a "
            "batch, but the gradient all-reduce (gloo, every step) costs more than it saves for an MLP this small. "
            "The figure that matters is on GPUs across nodes (TrainJob); here 2 ranks reach a "
            "model as good (val_loss above; dropout draws differ per rank).",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
