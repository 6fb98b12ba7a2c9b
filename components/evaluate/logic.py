"""Evaluate: what the stage adds to the scoring seam (``kfops.components.scoring``, which scores the test split
with the model artifact itself): the picture (a classifier's confusion matrix over its classes, a regression's
predicted-vs-actual and residuals) and the metrics logged to the training run.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kfops.components.contracts import EvaluationResult

log = logging.getLogger(__name__)


def plot_evaluation(result: EvaluationResult, curve: dict, path: str | Path) -> Path:
    """The evaluation's PNG: a classifier's confusion matrix, a regression's predicted-vs-actual and residuals
    (``curve`` holds a sample of the test rows' ``actual`` and ``predicted`` values)."""
    if result.labels:
        return plot_confusion_matrix(result, path)
    return plot_regression(curve.get("actual", []), curve.get("predicted", []), result, path)


def plot_regression(actual: list[float], predicted: list[float], result: EvaluationResult, path: str | Path) -> Path:
    """Predicted against actual (with the identity line) and the residuals against the prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.6), dpi=110)
    left.scatter(y, p, s=6, alpha=0.5)
    if len(y):
        low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
        left.plot([low, high], [low, high], color="grey", linewidth=1)
    left.set_xlabel("actual")
    left.set_ylabel("predicted")
    left.set_title(
        f"R² {result.metrics.get('r2', float('nan')):.3f} · RMSE {result.metrics.get('rmse', float('nan')):.3g}"
    )
    right.scatter(p, y - p, s=6, alpha=0.5)
    right.axhline(0.0, color="grey", linewidth=1)
    right.set_xlabel("predicted")
    right.set_ylabel("actual - predicted")
    right.set_title(f"residuals ({len(y):,} test rows)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(result: EvaluationResult, path: str | Path) -> Path:
    """A confusion-matrix PNG with counts and row shares, over every class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(result.confusion_matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    k = len(result.labels)
    size = max(4.2, 0.6 * k + 2.4)
    fig, ax = plt.subplots(figsize=(size, size * 0.86), dpi=110)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:,}\n{shares[i, j]:.1%}",
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
                fontsize=10,
            )
    ax.set_xticks(range(k), labels=result.labels, rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), labels=result.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix (threshold {result.threshold:g})" if k == 2 else "Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, format="png")  # KFP artifact paths have no suffix to infer it from
    plt.close(fig)
    return Path(path)


def log_to_mlflow(run_id: str, result: EvaluationResult, confusion_png: str | Path, tracking_uri: str = "") -> None:
    """Attach the test metrics, the confusion PNG and the metrics JSON to the training run."""
    import mlflow

    from kfops.components.tracking import set_tracking

    set_tracking(tracking_uri)
    client = mlflow.MlflowClient()
    finite = {k: v for k, v in result.metrics.items() if np.isfinite(v) and k != "val_loss"}
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as tmp:
        mlflow.log_metrics(finite)
        named = Path(tmp, "confusion_matrix.png" if result.labels else "predicted_vs_actual.png")
        shutil.copyfile(confusion_png, named)
        mlflow.log_artifact(str(named), "evaluation")
        mlflow.log_text(result.to_json(), "evaluation/metrics.json")
    client.set_tag(run_id, "kfops.evaluated", "true")
