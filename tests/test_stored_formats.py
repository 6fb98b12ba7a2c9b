"""What users already stored keeps working: samples written by an earlier release's code (tests/fixtures/formats/,
made by make_samples.py there and never rewritten) load with today's code and give the same answers.

A registered model pickles the path of its Python class; moving that module breaks every model in every registry,
the gate's re-scoring of the champion with it. A test here fails first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SAMPLES = sorted(p for p in (Path(__file__).resolve().parent / "fixtures" / "formats").iterdir() if p.is_dir())


@pytest.fixture(params=SAMPLES, ids=lambda p: p.name)
def sample(request) -> Path:
    return request.param


def _rows(sample: Path, spec) -> pd.DataFrame:
    from kfops.components.transform import model_input_frame

    return model_input_frame(spec, pd.read_csv(sample / "rows.csv"))


def test_there_is_a_sample_of_each_release_format():
    assert [p.name for p in SAMPLES][:1] == ["kfops-0.1.0"]


def test_the_stored_feature_spec_loads(sample):
    from kfops.components.contracts import FeatureSpec

    spec = FeatureSpec.load(sample / "feature_spec.json")
    assert spec.target == "is_fraud"
    assert spec == FeatureSpec.load(sample / "model" / "artifacts" / "feature_spec.json")
    assert list(pd.read_csv(sample / "rows.csv").columns) == spec.feature_names


def test_the_stored_model_scores_as_it_did_through_mlflow(sample):
    import mlflow.pyfunc

    from kfops.components.contracts import FeatureSpec

    spec = FeatureSpec.load(sample / "feature_spec.json")
    expected = pd.read_csv(sample / "scores.csv", dtype={"prediction": str})
    got = mlflow.pyfunc.load_model(str(sample / "model")).predict(_rows(sample, spec))
    assert list(got["prediction"].astype(str)) == list(expected["prediction"])
    np.testing.assert_allclose(got["probability"].to_numpy(), expected["probability"].to_numpy(), rtol=1e-6)


def test_the_stored_model_serves_as_it_did(sample):
    from fastapi.testclient import TestClient

    from kfops.serving.app import build_app
    from kfops.serving.predictor import TabularPredictor

    rows = pd.read_csv(sample / "rows.csv")
    instances = [{k: (None if v != v else v) for k, v in row.items()} for row in rows.to_dict(orient="records")]
    predictor = TabularPredictor("fraud-detector", str(sample / "model"))
    predictor.load()
    try:
        with TestClient(build_app(predictor)) as client:
            answer = client.post("/v1/models/fraud-detector:predict", json={"instances": instances})
    finally:
        predictor.stop()
    assert answer.status_code == 200, answer.text
    expected = pd.read_csv(sample / "scores.csv", dtype={"prediction": str})
    predictions = answer.json()["predictions"]
    assert [p["prediction"] for p in predictions] == list(expected["prediction"])
    np.testing.assert_allclose([p["probability"] for p in predictions], expected["probability"], rtol=1e-6)


def test_the_stored_payload_log_reads_back_for_monitoring(sample):
    from kfops.components.contracts import FeatureSpec
    from kfops.components.monitor.sources import iter_chunks, open_window

    spec = FeatureSpec.load(sample / "feature_spec.json")
    window = open_window(str(sample / "payload-log"), model_name="fraud-detector")
    frame = pd.concat([chunk for chunk, _ in iter_chunks(window)], ignore_index=True)
    rows = pd.read_csv(sample / "rows.csv")
    expected = pd.read_csv(sample / "scores.csv", dtype={"prediction": str})
    assert len(frame) == len(rows)
    assert set(spec.feature_names) <= set(frame.columns)
    from kfops.components.contracts import PAYLOAD_META_COLUMNS, PAYLOAD_PREDICTION_COLUMNS, partitions_of

    # the record schema and the folder layout the contract declares, as 0.1.0 wrote them (before log_format)
    assert list(frame.columns[: len(PAYLOAD_META_COLUMNS) - 1]) == list(PAYLOAD_META_COLUMNS[:-1])
    assert "log_format" not in frame.columns
    assert list(frame.columns[-len(PAYLOAD_PREDICTION_COLUMNS) :]) == list(PAYLOAD_PREDICTION_COLUMNS)
    [written] = sorted((sample / "payload-log").rglob("*.jsonl"))
    assert set(partitions_of(str(written.relative_to(sample / "payload-log")))) == {"model", "date"}
    np.testing.assert_allclose(frame["amount"].to_numpy(float), rows["amount"].to_numpy(float))
    np.testing.assert_allclose(frame["probability"].to_numpy(float), expected["probability"], rtol=1e-6)


def test_a_newer_model_format_is_refused_with_a_message(sample, tmp_path):
    import json
    import shutil

    import mlflow.pyfunc

    from kfops.components.contracts import KfopsError

    model = tmp_path / "model"
    shutil.copytree(sample / "model", model)
    config_path = model / "artifacts" / "network.json"
    config = json.loads(config_path.read_text())
    assert "format_version" not in config  # 0.1.0 wrote none: read as format 1
    config_path.write_text(json.dumps(config | {"format_version": 99}))
    with pytest.raises(KfopsError, match=r"model format 99 .* is newer than this kfops reads"):
        mlflow.pyfunc.load_model(str(model))
