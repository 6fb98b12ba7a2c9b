"""The local workspace: one folder holds everything a run on this machine writes::

    <workspace>/
      data/           generated default data
      store/          the artifact store: content-addressed data snapshots (datasets/<sha256>/)
      pipeline_root/  KFP task outputs (splits, feature spec, model, metrics)
      mlflow.db       the MLflow tracking and registry store (sqlite)
      mlartifacts/    MLflow run artifacts (models, plots, TensorBoard copies)
      tensorboard/    TensorBoard event files, one folder per MLflow run

``kfops run`` (through ``kfops.pipelines.local``), ``kfops serve`` and the registry commands find the store here
unless MLFLOW_TRACKING_URI names another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = ".kfops"


@dataclass
class LocalWorkspace:
    root: Path

    @property
    def store(self) -> str:
        return str(self.root / "store")

    @property
    def pipeline_root(self) -> str:
        return str(self.root / "pipeline_root")

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> str:
        return str(self.root / "mlartifacts")

    @property
    def tensorboard(self) -> str:
        return str(self.root / "tensorboard")

    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"


def workspace(path: str | os.PathLike | None = None) -> LocalWorkspace:
    root = Path(path or os.environ.get("KFOPS_WORKSPACE") or DEFAULT_WORKSPACE).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return LocalWorkspace(root)
