"""Training throughput: the suite's loop against a loop written like the reference document's, through the harness.

Both train the same MLP (the pipeline's default architecture) on the same preprocessed default data with the
same batch size and optimizer. The baseline is the familiar pattern: ``TensorDataset`` + ``DataLoader`` with
``shuffle=True``, ``.item()`` on every step and, on a GPU, each batch copied to the device. The suite's loop
(``kfops.components.train.loop.fit``) keeps the data on the device, shuffles once per epoch, slices batches,
and on CUDA replays the step from a CUDA graph in bf16 autocast.

A warm-up pass first sizes each measurement (rows trained) so that it takes about ``--seconds``; then both
targets train those same rows in ``--rounds`` interleaved rounds, the order rotated (harness.py), in this
process, pinned to its CPUs (all, or the first ``--threads``) with as many torch threads for both. Every figure
is the median over the rounds with min-max; the speed-up is the median of the per-round ratios. The suite's
figure includes its per-epoch validation pass; the baseline's does not, so the comparison leans towards the
baseline.

    python benchmarks/bench_training.py [--rounds 5] [--seconds 6]   # CPU: batch 32 and 1024
    python benchmarks/bench_training.py --device cuda                 # GPU: batch 32 and 8192 (gpu_run.sh)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np

try:
    import harness
except ImportError:  # python -m benchmarks.bench_training
    from benchmarks import harness

TARGETS = ("reference", "kfops")
LABELS = {
    "reference": "reference loop (TensorDataset + DataLoader, shuffle=True, .item() every step)",
    "kfops": "kfops loop (`train.loop.fit`, its validation pass included)",
}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def load_default_matrices(rows: int):
    from kfops.components.contracts import SplitConfig
    from kfops.components.ingest.logic import resolve_schema, split_frame
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.transform import encode_labels, transform_features
    from kfops.datagen import ID_COLUMNS, generate_transactions

    df = generate_transactions(rows=rows)
    schema = resolve_schema(df, "default data", "is_fraud", drop=list(ID_COLUMNS))
    splits = split_frame(df, "is_fraud", SplitConfig())
    spec = fit_feature_spec(
        splits["train"], "is_fraud", schema.numeric, schema.categorical, schema.positive_class, schema.negative_class
    )
    out = {}
    for name in ("train", "validation"):
        out[name] = (transform_features(spec, splits[name]), encode_labels(spec, splits[name]["is_fraud"]))
    return out


def reference_loop(x: np.ndarray, y: np.ndarray, config, device: str, epochs: int) -> float:
    """Samples per second of a loop written like the reference document's."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from kfops.components.train.loop import build_mlp

    torch.manual_seed(config.seed)
    model = build_mlp(x.shape[1], config.hidden_sizes, config.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    criterion = torch.nn.BCEWithLogitsLoss()
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=config.batch_size, shuffle=True
    )
    model.train()
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        total = 0.0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = criterion(model(xb).squeeze(-1), yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
            seen += len(xb)
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def suite_loop(x, y, xv, yv, config, epochs: int) -> float:
    from kfops.components.train.loop import fit

    cfg = dataclasses.replace(config, epochs=epochs, early_stopping_patience=0)
    return fit(x, y, xv, yv, cfg).samples_per_second


def run(args: argparse.Namespace, scratch: Path, pinning: harness.Pinning) -> dict:
    import torch

    from kfops.components.contracts import TrainConfig

    harness.pin_in_process(pinning)
    sizes = [int(s) for s in (args.batch_sizes or ("32,1024" if args.device == "cpu" else "32,8192")).split(",")]
    data = load_default_matrices(args.rows)
    x, y = data["train"]
    xv, yv = data["validation"]
    if args.tile and len(x) < args.tile:
        reps = -(-args.tile // len(x))
        x, y = np.tile(x, (reps, 1)), np.tile(y, reps)
    config = TrainConfig(device=args.device)

    def measure(target: str, batch: int, rows: int, epochs: int) -> float:
        cfg = dataclasses.replace(config, batch_size=batch)
        torch.set_num_threads(pinning.threads)  # fit sets its own from the affinity mask: the same count
        if target == "reference":
            return reference_loop(x[:rows], y[:rows], cfg, args.device, epochs)
        return suite_loop(x[:rows], y[:rows], xv, yv, cfg, epochs)

    # Warm-up and sizing, once: a short probe of each (CUDA context, graph capture, allocator), then rows that
    # fill about --seconds (the suite trains 3 epochs of its rows, the reference 1), the same in every round.
    plan: dict[tuple[str, int], int] = {}
    for batch in sizes:
        probe_rows = min(len(x), batch * 100)
        plan["reference", batch] = int(
            min(len(x), max(batch * 20, measure("reference", batch, probe_rows, 1) * args.seconds))
        )
        plan["kfops", batch] = int(
            min(len(x), max(batch * 50, measure("kfops", batch, probe_rows, 2) * args.seconds / 3))
        )
    measured: dict[tuple[str, int], list[float]] = {key: [] for key in plan}
    for number, order in harness.rounds(TARGETS, args.rounds):
        for batch in sizes:
            for target in order:
                rate = measure(target, batch, plan[target, batch], 1 if target == "reference" else 3)
                measured[target, batch].append(rate)
                print(f"round {number + 1} batch {batch:>5} {target:>9}: {rate:>14,.0f} samples/s", flush=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    return {
        "sizes": sizes,
        "plan": plan,
        "measured": measured,
        "device_name": device_name,
        "torch": torch.__version__,
        "train_rows": len(x),
        "inputs": x.shape[1],
        "hidden": config.hidden_sizes,
    }


def report(results: dict, args: argparse.Namespace, pinning: harness.Pinning, before, after) -> str:
    measured, plan = results["measured"], results["plan"]
    rows = []
    for batch in results["sizes"]:
        ref, ours = measured["reference", batch], measured["kfops", batch]
        ratio = harness.Spread.of(harness.per_round_ratios(ours, ref)).text(2, "x")
        rows.append(
            f"| {batch} | {harness.Spread.of(ref).text(0)} | {harness.Spread.of(ours).text(0)} | {ratio} | "
            f"{plan['reference', batch]:,} x 1 / {plan['kfops', batch]:,} x 3 |"
        )
    return (
        f"\n## Training throughput · {args.device} · {time.strftime('%Y-%m-%d', time.gmtime())}\n\n"
        + harness.provenance(
            None,
            before,
            after,
            f"{results['device_name']}, torch {results['torch']}; this process pinned to CPUs "
            f"{pinning.server_cpus} with {pinning.threads} torch/OpenMP thread(s) for both targets. Data: default data "
            f"({args.rows:,} rows), {results['train_rows']:,} training rows x {results['inputs']} inputs; MLP "
            f"{results['hidden']}, AdamW. Each measurement trains the rows a warm-up sized to about "
            f"{args.seconds:g} s; {args.rounds} rounds, the order rotated; median over rounds (min-max), speed-up the "
            "median of per-round ratios.",
        )
        + "\n\n| batch | "
        + " | ".join(LABELS[t] + ", samples/s" for t in TARGETS)
        + " | speed-up, per round | rows x epochs (reference / kfops) |\n|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-sizes", default="", help="comma-separated; default 32,1024 (cpu) 32,8192 (cuda)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of default data to generate")
    parser.add_argument(
        "--tile",
        type=int,
        default=0,
        help="repeat the training rows to at least this many (big-batch GPU runs need steps)",
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="approximate time of one measurement")
    harness.add_record_arguments(parser)
    args = parser.parse_args()
    harness.measure_and_record("training", args, harness.Pinning.whole_machine(args.threads), run, report)


if __name__ == "__main__":
    main()
