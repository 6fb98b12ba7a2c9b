"""GPU check for the training loop: the CUDA path (bf16 autocast, fused AdamW, CUDA graph) trains as well as
the CPU path on the default data, with and without graph capture. Run on a machine with a GPU:

    python benchmarks/gpu_check.py

Prints one line per variant (best validation loss and accuracy, ROC-AUC, samples/s) and PASS or FAIL: the GPU
variants must reach a best validation loss within 15% of the CPU run's and a validation ROC-AUC within 0.02.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np


def main() -> int:
    import torch

    from benchmarks.bench_training import load_default_matrices
    from kfops.components.contracts import TrainConfig
    from kfops.components.scoring import roc_auc
    from kfops.components.train.loop import fit

    data = load_default_matrices(100_000)
    (x, y), (xv, yv) = data["train"], data["validation"]
    base = TrainConfig(epochs=12, early_stopping_patience=3)
    variants = [("cpu", dataclasses.replace(base, device="cpu"))]
    if torch.cuda.is_available():
        variants += [
            ("cuda+graph", dataclasses.replace(base, device="cuda", cuda_graphs=True)),
            ("cuda eager", dataclasses.replace(base, device="cuda", cuda_graphs=False)),
        ]
    else:
        print("no CUDA device: only the CPU variant runs")
    results = {}
    for name, config in variants:
        result = fit(x, y, xv, yv, config)
        with torch.inference_mode():
            prob = torch.sigmoid(result.model(torch.from_numpy(xv)).squeeze(-1)).numpy()
        auc = roc_auc(yv, prob)
        results[name] = (result.best_val_loss, auc)
        acc = float(((prob >= 0.5) == (yv >= 0.5)).mean())
        print(
            f"{name:>11}: best val_loss {result.best_val_loss:.4f} (epoch {result.best_epoch}/"
            f"{len(result.history)}), val accuracy {acc:.4f}, val ROC-AUC {auc:.4f}, "
            f"{result.samples_per_second:,.0f} samples/s, graphs={result.cuda_graphs}",
            flush=True,
        )
    ok = True
    cpu_loss, cpu_auc = results["cpu"]
    for name, (loss, auc) in results.items():
        if name != "cpu" and (loss > cpu_loss * 1.15 or auc < cpu_auc - 0.02 or not np.isfinite(loss)):
            ok = False
            print(f"FAIL: {name} val_loss {loss:.4f} / AUC {auc:.4f} vs cpu {cpu_loss:.4f} / {cpu_auc:.4f}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
