"""Sweep overhead per trial, locally, and DDP scaling on this machine, through the harness.

Four targets, interleaved in ``--rounds`` rounds, the order rotated (harness.py):

- ``sweep-1`` and ``sweep-2``: a local sweep of ``--trials`` trials (random search over the learning rate), 1 and
  2 trials at a time, each in a new workspace; per trial, the overhead is its wall time (asked, run through
  kfp.local's train component, told) minus the training loop's own time (the run's ``train_seconds``): the
  kfp.local pipeline run (importers, the train task's process and its imports), MLflow logging and the model
  save (the first trial also creates the workspace's sqlite MLflow store), the Optuna ask and tell;
- ``ddp-1`` and ``ddp-2``: ``fit`` on the default data in 1 process with 2 threads, and in 2 gloo processes under
  torchrun with 1 thread each.

Everything runs pinned to this process's CPUs (every child inherits it); the same 2 threads in all per target.
Every figure is the median over the rounds (of the per-sweep median over its trials) with min-max, every ratio
the median of per-round ratios.

    python benchmarks/bench_sweep.py [--rounds 5] [--trials 2] [--no-ddp] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

try:
    import harness
except ImportError:  # python -m benchmarks.bench_sweep
    from benchmarks import harness

RESULTS = harness.RESULTS
REPO = Path(__file__).resolve().parents[1]
SWEEPS = ("sweep-1", "sweep-2")
DDP = ("ddp-1", "ddp-2")

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from kfops.components.contracts import TrainConfig
    from kfops.components.transform import load_matrix
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

    ws = workspace(folder)
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
    done = [t for t in outcome.trials if t.state == "complete"]
    if len(done) != trials:
        states = ", ".join(f"trial {i}: {t.state}" for i, t in enumerate(outcome.trials))
        raise SystemExit(f"bench_sweep: {len(done)} of {trials} trials completed at {parallel} at once ({states})")
    return {
        "wall": outcome.seconds,
        "trial_wall": statistics.median(t.seconds for t in done),
        "train": statistics.median(t.train_seconds for t in done),
        "overhead": statistics.median(t.overhead_seconds for t in done),
    }


def ddp_run(data, world: int, epochs: int, batch: int, script: Path) -> dict:
    """``fit`` in 1 process with 2 threads, or in 2 gloo ranks under torchrun with 1 thread each."""
    config = json.dumps({"hidden_sizes": [64, 32], "epochs": epochs, "batch_size": batch, "device": "cpu",
                         "early_stopping_patience": 0})  # fmt: skip
    env = {**os.environ, **harness.thread_env(2 // world), "PYTHONPATH": str(REPO)}
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
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(
            f"bench_sweep: DDP with {world} process(es) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


def run(args: argparse.Namespace, scratch: Path, pinning: harness.Pinning) -> dict:
    harness.pin_in_process(pinning)
    data = prepare(args.rows, scratch)
    script = scratch / "ddp.py"
    script.write_text(DDP_SCRIPT)
    targets = SWEEPS + (() if args.no_ddp else DDP)
    measured: dict[str, list[dict]] = {target: [] for target in targets}
    for number, order in harness.rounds(targets, args.rounds):
        for target in order:
            kind, count = target.rsplit("-", 1)
            if kind == "sweep":
                folder = scratch / f"ws-{target}-{number}"
                result = sweep_overhead(data, args.trials, int(count), args.epochs, folder)
                text = f"sweep wall {result['wall']:.1f} s, overhead per trial {result['overhead']:.1f} s"
            else:
                result = ddp_run(data, int(count), args.ddp_epochs, args.ddp_batch, script)
                text = f"{result['samples_per_second']:,.0f} samples/s, val_loss {result['val_loss']:.5f}"
            measured[target].append(result)
            print(f"round {number + 1} {target:>7}: {text}", flush=True)
    return measured


def report(measured: dict, args: argparse.Namespace, pinning: harness.Pinning, before, after) -> str:
    def spread(target: str, key: str) -> harness.Spread:
        return harness.Spread.of([r[key] for r in measured[target]])

    def ratio(numerator: str, denominator: str, key: str) -> str:
        values = harness.per_round_ratios(
            [r[key] for r in measured[numerator]], [r[key] for r in measured[denominator]]
        )
        return harness.Spread.of(values).text(2, "x")

    lines = [
        "",
        f"## Sweeps and data-parallel training · {time.strftime('%Y-%m-%d', time.gmtime())}",
        "",
        harness.provenance(
            None,
            before,
            after,
            f"Everything pinned to CPUs {pinning.server_cpus} (`taskset` affinity, inherited by every task and rank). "
            f"Default data, {args.rows:,} rows (70% train). {args.rounds} rounds, the targets' order rotated; "
            "median over rounds (min-max), ratios the median of per-round ratios.",
        ),
        "",
        f"Local sweep, random search over the learning rate, {args.trials} trials a sweep, {args.epochs} epochs, batch "
        "512, MLP [64, 32], each sweep in a new workspace; each trial one kfp.local run of `kfops-sweep-trial` "
        "(train component) as a child MLflow run; overhead = trial wall time (ask to tell) minus the run's "
        "`train_seconds` (per sweep the median over its trials):",
        "",
        "| trials at once | sweep wall (s) | trial wall (s) | training (s) | overhead per trial (s) |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {target[-1]} | {spread(target, 'wall').text(1)} | {spread(target, 'trial_wall').text(1)} | "
            f"{spread(target, 'train').text(2)} | {spread(target, 'overhead').text(1)} |"
            for target in SWEEPS
        ),
        "",
        f"2 at once against 1, per round: sweep wall {ratio('sweep-2', 'sweep-1', 'wall')}, overhead per trial "
        f"{ratio('sweep-2', 'sweep-1', 'overhead')}.",
    ]
    if not args.no_ddp:
        lines += [
            "",
            f"Data-parallel `fit` on the same data: MLP [64, 32], batch {args.ddp_batch} (global), {args.ddp_epochs} "
            "epochs; 1 process with 2 threads against 2 gloo processes (torchrun) with 1 thread each:",
            "",
            "| processes | samples/s | training (s) | best val_loss |",
            "|---:|---:|---:|---:|",
            *(
                f"| {target[-1]} | {spread(target, 'samples_per_second').text(0)} | {spread(target, 'seconds').text(1)}"
                f" | {spread(target, 'val_loss').text(5)} |"
                for target in DDP
            ),
            "",
            f"2 ranks against 1 process, samples/s per round: {ratio('ddp-2', 'ddp-1', 'samples_per_second')} on "
            "this machine: each rank computes half a batch, but the gradient all-reduce (gloo, every step) costs "
            "more than it saves for an MLP this small. The figure that matters is on GPUs across nodes (TrainJob); "
            "here 2 ranks reach a model as good (val_loss above; dropout draws differ per rank).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS)
    parser.add_argument("--trials", type=int, default=2, help="trials a sweep (2: both at once in sweep-2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ddp-epochs", type=int, default=10)
    parser.add_argument("--ddp-batch", type=int, default=1024)
    parser.add_argument("--no-ddp", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--results", default=str(RESULTS), help="Markdown file the section is appended to")
    args = parser.parse_args()
    harness.measure_and_record("sweep", args, harness.Pinning.whole_machine(), run, report)


if __name__ == "__main__":
    main()
