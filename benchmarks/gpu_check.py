"""GPU check: the shipped training path trains on a GPU as well as on the CPU, and as well as a plain loop.

The shipped path is what the pipeline's ``train`` step runs: ``components.train.logic.train_model`` with the step's
default ``TrainConfig``, which on CUDA trains in bf16 autocast with fused AdamW and replays each step from a CUDA graph
(``TrainConfig.cuda_graphs``), then logs the run and the model to MLflow. Every variant trains on the matrices the
pipeline's own preprocessing makes from the default data:

- ``cpu``: the shipped path on the CPU, the quality baseline;
- ``cuda``: the shipped path on the GPU as the step runs it; its MLflow run must record device ``cuda`` and
  ``kfops.cuda_graphs`` True, or the check fails (the graph was not used);
- ``cuda eager``: the shipped path on the GPU without the graph (bf16 still);
- ``reference``: a loop written like the reference document's (``TensorDataset`` + ``DataLoader``, fp32, the batch
  copied to the device each step) for as many epochs as the CPU run took.

The quality check is the same for each: validation ROC-AUC within 0.02 of the CPU run's, and for the shipped path's
variants (which share its loss, class weighting included) a best validation loss within 15% of the CPU run's.

    python -m benchmarks.gpu_check              # needs a CUDA device; exits 2 without one
    python -m benchmarks.gpu_check --cpu-only   # the CPU parts (cpu and reference on the CPU), anywhere

Prints one line per variant and PASS or FAIL (exit 0 or 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

AUC_TOLERANCE = 0.02
LOSS_TOLERANCE = 0.15
EXIT_NO_GPU = 2


def prepare(rows: int, folder: Path) -> dict[str, str]:
    """The train step's inputs, made from the default data by the pipeline's own split and preprocessing."""
    from kfops.components.contracts import SplitConfig
    from kfops.components.ingest.logic import resolve_schema, split_frame, write_split
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.transform import encode_labels, save_matrix, transform_features
    from kfops.datagen import ID_COLUMNS, TARGET, generate_transactions

    frame = generate_transactions(rows=rows)
    schema = resolve_schema(frame, "default data", TARGET, drop=list(ID_COLUMNS))
    splits = split_frame(frame, TARGET, SplitConfig())
    spec = fit_feature_spec(
        splits["train"], TARGET, schema.numeric, schema.categorical, schema.positive_class, schema.negative_class
    )
    spec.save(folder / "feature_spec.json")
    paths = {"spec": str(folder / "feature_spec.json")}
    for name in ("train", "validation"):
        write_split(splits[name], folder / f"{name}.parquet")
        matrix = str(folder / f"{name}.npz")
        save_matrix(matrix, transform_features(spec, splits[name]), encode_labels(spec, splits[name][TARGET]))
        paths[name], paths[f"{name}_raw"] = matrix, str(folder / f"{name}.parquet")
    return paths


def shipped(paths: dict[str, str], config, folder: Path, name: str) -> dict:
    """One run of the train step's own function; its quality and what its MLflow run recorded."""
    import mlflow

    from kfops.components.train.logic import train_model

    outcome = train_model(
        paths["train"],
        paths["validation"],
        paths["spec"],
        paths["train_raw"],
        config,
        str(folder / f"model-{name}"),
        str(folder / f"tensorboard-{name}"),
        experiment="kfops-gpu-check",
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
    )
    tags = mlflow.MlflowClient().get_run(outcome.run_id).data.tags
    return {
        "loss": outcome.best_val_loss,
        "auc": outcome.val_metrics.get("val_roc_auc", float("nan")),
        "epochs": outcome.epochs_run,
        "samples_per_second": outcome.samples_per_second,
        "device": tags.get("kfops.device", ""),
        "cuda_graphs": tags.get("kfops.cuda_graphs", ""),
    }


def reference(paths: dict[str, str], config, device: str, epochs: int) -> dict:
    """The reference document's loop (fp32, DataLoader, a copy to the device each step), same model and data."""
    import time

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from kfops.components.scoring import roc_auc
    from kfops.components.train.loop import build_mlp
    from kfops.components.transform import load_matrix

    (x, y), (xv, yv) = load_matrix(paths["train"]), load_matrix(paths["validation"])
    torch.manual_seed(config.seed)
    model = build_mlp(x.shape[1], config.hidden_sizes, config.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    criterion = torch.nn.BCEWithLogitsLoss()
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))),
        batch_size=config.batch_size,
        shuffle=True,
    )
    started, seen = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            criterion(model(xb).squeeze(-1), yb).backward()
            optimizer.step()
            seen += len(xb)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    model.eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(xv).to(device)).squeeze(-1).float().cpu()
    loss = float(criterion(logits, torch.from_numpy(yv.astype(np.float32))))
    auc = roc_auc(yv, torch.sigmoid(logits).numpy())
    return {"loss": loss, "auc": auc, "epochs": epochs, "samples_per_second": seen / seconds, "device": device}


def verdicts(results: dict[str, dict]) -> list[str]:
    """The failures: each variant against the CPU run of the shipped path."""
    base = results["cpu"]
    failures = []
    for name, result in results.items():
        if name == "cpu":
            continue
        if not np.isfinite(result["loss"]):
            failures.append(f"{name}: validation loss {result['loss']} is not finite")
        if not result["auc"] >= base["auc"] - AUC_TOLERANCE:
            failures.append(f"{name}: val ROC-AUC {result['auc']:.4f} against cpu {base['auc']:.4f}")
        if name != "reference" and not result["loss"] <= base["loss"] * (1 + LOSS_TOLERANCE):
            failures.append(f"{name}: best val_loss {result['loss']:.4f} against cpu {base['loss']:.4f}")
        if name == "cuda" and (result["device"] != "cuda" or result["cuda_graphs"] != "True"):
            failures.append(
                f"cuda: the run recorded device {result['device']!r}, cuda_graphs {result['cuda_graphs']!r}: "
                "the shipped path did not replay a CUDA graph"
            )
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of default data to generate")
    parser.add_argument("--cpu-only", action="store_true", help="run the CPU parts only (no GPU needed)")
    args = parser.parse_args(argv)
    import torch

    from kfops.components.contracts import TrainConfig

    if not args.cpu_only and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): this check needs "
            "one; --cpu-only runs its CPU parts",
            file=sys.stderr,
        )
        return EXIT_NO_GPU
    with tempfile.TemporaryDirectory(prefix="kfops-gpu-check-") as tmp:
        folder = Path(tmp)
        os.environ["KFOPS_MLFLOW_ARTIFACT_ROOT"] = str(folder / "mlartifacts")
        paths = prepare(args.rows, folder)
        config = TrainConfig()  # the train step's defaults
        results = {"cpu": shipped(paths, dataclasses.replace(config, device="cpu"), folder, "cpu")}
        device = "cpu" if args.cpu_only else "cuda"
        if not args.cpu_only:
            results["cuda"] = shipped(paths, dataclasses.replace(config, device="cuda"), folder, "cuda")
            eager = dataclasses.replace(config, device="cuda", cuda_graphs=False)
            results["cuda eager"] = shipped(paths, eager, folder, "cuda-eager")
        results["reference"] = reference(paths, config, device, results["cpu"]["epochs"])
    for name, r in results.items():
        print(
            f"{name:>10}: best val_loss {r['loss']:.4f}, val ROC-AUC {r['auc']:.4f}, {r['epochs']} epochs, "
            f"{r['samples_per_second']:,.0f} samples/s on {r['device']}"
            + (f", cuda_graphs={r['cuda_graphs']}" if "cuda_graphs" in r else ""),
            flush=True,
        )
    failures = verdicts(results)
    for failure in failures:
        print("FAIL: " + failure)
    print("FAIL" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
