"""A real champion for batch-prediction tests: a tiny model trained on the ``prepared`` data, registered in a real
sqlite MLflow store with alias champion, and the pyfunc model's own predictions to compare against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kfops.components.contracts import FeatureSpec
from tests.conftest import train_prepared

MODEL_NAME = "fraud-batch"


@dataclass
class Champion:
    tracking_uri: str
    artifact_root: str
    name: str
    version: str
    spec: FeatureSpec
    rows: pd.DataFrame  # raw test rows, every column (ids, target, features)
    _pyfunc: Any = None

    @property
    def ref(self) -> str:
        return f"{self.name}@champion"

    def expected(self, frame: pd.DataFrame) -> pd.DataFrame:
        """What the MLflow pyfunc model itself returns for these raw rows (prediction, probability)."""
        import mlflow.pyfunc

        from kfops.components.transform import model_input_frame

        if self._pyfunc is None:
            import mlflow

            mlflow.set_tracking_uri(self.tracking_uri)
            self._pyfunc = mlflow.pyfunc.load_model(f"models:/{self.name}/{self.version}")
        return self._pyfunc.predict(model_input_frame(self.spec, frame)).reset_index(drop=True)


def register_champion(root: Path, prepared, config) -> Champion:
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    artifacts = str(root / "mlartifacts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("KFOPS_MLFLOW_ARTIFACT_ROOT", artifacts)
        mlflow.set_tracking_uri(uri)
        outcome = train_prepared(
            prepared, config, str(root / "model"), str(root / "tb"), experiment="batch-tests", tracking_uri=uri
        )
        version = mlflow.register_model(outcome.model_uri, MODEL_NAME)
        mlflow.MlflowClient(uri).set_registered_model_alias(MODEL_NAME, "champion", version.version)
    rows = pd.read_parquet(prepared["test_raw"]).reset_index(drop=True)
    return Champion(uri, artifacts, MODEL_NAME, str(version.version), FeatureSpec.load(prepared["spec"]), rows)
