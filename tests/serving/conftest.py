"""One tiny real model for all serving tests: trained with train_model, registered in a real sqlite MLflow
store with alias champion."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kfops.components.contracts import FeatureSpec
from tests.conftest import train_prepared

MODEL_NAME = "fraud-serving"


@dataclass
class RegisteredModel:
    tracking_uri: str
    name: str
    version: str
    model_dir: Path  # the same model saved as a plain pyfunc folder (as /mnt/models would hold it)
    spec: FeatureSpec
    rows: pd.DataFrame  # raw test rows (feature columns only)
    _pyfunc: Any = None

    def expected(self, frame: pd.DataFrame) -> pd.DataFrame:
        """What the MLflow pyfunc model itself returns for these raw rows."""
        import mlflow
        import mlflow.pyfunc

        from kfops.components.transform import model_input_frame

        if self._pyfunc is None:
            mlflow.set_tracking_uri(self.tracking_uri)
            self._pyfunc = mlflow.pyfunc.load_model(f"models:/{self.name}/{self.version}")
        return self._pyfunc.predict(model_input_frame(self.spec, frame)).reset_index(drop=True)


@pytest.fixture(autouse=True)
def _no_orjson_warning():
    # KServe answers with FastAPI's ORJSONResponse, which warns on every response in newer FastAPI releases.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ORJSONResponse.*")
        yield


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory, prepared, fast_config) -> RegisteredModel:
    import mlflow

    root = tmp_path_factory.mktemp("serving-model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("KFOPS_MLFLOW_ARTIFACT_ROOT", str(root / "mlartifacts"))
        mlflow.set_tracking_uri(uri)
        outcome = train_prepared(
            prepared,
            fast_config,
            str(root / "model"),
            str(root / "tb"),
            experiment="serving-tests",
            tracking_uri=uri,
        )
        version = mlflow.register_model(outcome.model_uri, MODEL_NAME)
        mlflow.MlflowClient(uri).set_registered_model_alias(MODEL_NAME, "champion", version.version)
    spec = FeatureSpec.load(prepared["spec"])
    rows = pd.read_parquet(prepared["test_raw"], columns=spec.feature_names).reset_index(drop=True)
    return RegisteredModel(uri, MODEL_NAME, str(version.version), root / "model", spec, rows)
