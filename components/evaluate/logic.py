"""Evaluate: what the stage adds to the scoring seam (``kfops.components.scoring``, which scores the test split
with the model artifact itself): the confusion-matrix picture and the metrics logged to the training run.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kfops.components.contracts import EvaluationResult

log = logging.getLogger(__name__)


def plot_confusion_matrix(result: EvaluationResult, path: str | Path) -> Path:
    """A confusion-matrix PNG with counts and row shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(result.confusion_matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=110)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:,}\n{shares[i, j]:.1%}",
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
                fontsize=10,
            )
    ax.set_xticks([0, 1], labels=result.labels)
    ax.set_yticks([0, 1], labels=result.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix (threshold {result.threshold:g})")
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
        named = Path(tmp, "confusion_matrix.png")
        shutil.copyfile(confusion_png, named)
        mlflow.log_artifact(str(named), "evaluation")
        mlflow.log_text(result.to_json(), "evaluation/metrics.json")
    client.set_tag(run_id, "kfops.evaluated", "true")
