"""Training throughput: the suite's loop against a loop written like the reference document's.

Both train the same MLP (the pipeline's default architecture) on the same preprocessed default data with the
same batch size and optimizer. The baseline is the familiar pattern: ``TensorDataset`` + ``DataLoader`` with
``shuffle=True``, ``.item()`` on every step and, on a GPU, each batch copied to the device. The suite's loop
(``kfops.components.train.loop.fit``) keeps the data on the device, shuffles once per epoch, slices batches,
and on CUDA replays the step from a CUDA graph in bf16 autocast.

    python benchmarks/bench_training.py                    # CPU: batch 32 and 1024
    python benchmarks/bench_training.py --device cuda      # GPU: batch 32 and 8192

Figures are appended to benchmarks/RESULTS.md with the machine and date. The suite's figure includes its
per-epoch validation pass; the baseline's does not, so the comparison leans towards the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


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


def main() -> None:
    import torch

    from kfops.components.contracts import TrainConfig

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
    parser.add_argument("--seconds", type=float, default=6.0, help="approximate time budget per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--results", default=str(RESULTS), help="Markdown file the figures are appended to")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.batch_sizes or ("32,1024" if args.device == "cpu" else "32,8192")).split(",")]

    data = load_default_matrices(args.rows)
    x, y = data["train"]
    xv, yv = data["validation"]
    if args.tile and len(x) < args.tile:
        reps = -(-args.tile // len(x))
        x, y = np.tile(x, (reps, 1)), np.tile(y, reps)
    config = TrainConfig(device=args.device)
    rows = []
    for batch in sizes:
        cfg = dataclasses.replace(config, batch_size=batch)
        # Each side trains on as many rows as fit about --seconds (measured with a short probe), so slow
        # configurations stay bounded; the probe also warms up (CUDA context, graph capture, allocator).
        probe_rows = min(len(x), batch * 100)
        ref_probe = reference_loop(x[:probe_rows], y[:probe_rows], cfg, args.device, 1)
        ref_rows = int(min(len(x), max(batch * 20, ref_probe * args.seconds)))
        ref = reference_loop(x[:ref_rows], y[:ref_rows], cfg, args.device, 1)
        ours_probe = suite_loop(x[:probe_rows], y[:probe_rows], xv, yv, cfg, 2)
        ours_rows = int(min(len(x), max(batch * 50, ours_probe * args.seconds / 3)))
        ours = suite_loop(x[:ours_rows], y[:ours_rows], xv, yv, cfg, 3)
        rows.append((batch, ref, ours))
        print(
            f"batch {batch:>5}: reference {ref:>14,.0f} samples/s ({ref_rows:,} rows) | kfops {ours:>14,.0f} "
            f"samples/s (3 x {ours_rows:,} rows) | {ours / ref:5.1f}x",
            flush=True,
        )

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    header = (
        f"\n## Training throughput · {args.device} · {datetime.now(UTC).date()}\n\n"
        f"Machine: {device_name}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{platform.machine()}. Data: default data ({args.rows:,} rows), {len(x):,} training rows x "
        f"{x.shape[1]} inputs; MLP {config.hidden_sizes}, AdamW.\n\n"
        "| batch | reference loop (samples/s) | kfops loop (samples/s) | speed-up |\n|---:|---:|---:|---:|\n"
    )
    table = "".join(f"| {b} | {r:,.0f} | {o:,.0f} | {o / r:.1f}x |\n" for b, r, o in rows)
    print(header + table)
    if not args.no_write:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write(header + table)


if __name__ == "__main__":
    main()
