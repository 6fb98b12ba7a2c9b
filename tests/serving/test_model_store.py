from __future__ import annotations

import json

import numpy as np
import pytest

from kfops.components.contracts import KfopsError
from kfops.components.model_store import load_model
from kfops.components.transform import model_input_frame


@pytest.mark.parametrize("form", ["{name}@champion", "models:/{name}@champion", "{name}/{version}", "{name}"])
def test_registry_references_load_the_registered_version(registered_model, form):
    m = registered_model
    loaded = load_model(form.format(name=m.name, version=m.version), m.tracking_uri)
    assert (loaded.name, loaded.version) == (m.name, m.version)
    assert loaded.spec.feature_names == m.spec.feature_names
    # the decision threshold training chose on the validation split and stored in the model
    stored = json.loads((m.model_dir / "artifacts" / "network.json").read_text())["threshold"]
    assert 0.0 < stored < 1.0 and loaded.threshold == pytest.approx(stored)
    rows = m.rows.head(40)
    out = loaded.predict(model_input_frame(loaded.spec, rows))
    expected = m.expected(rows)
    assert out["prediction"].tolist() == expected["prediction"].tolist()
    assert np.allclose(out["probability"], expected["probability"])


def test_a_model_folder_loads_without_a_registry(registered_model, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KFOPS_MODEL_VERSION", raising=False)
    loaded = load_model(str(registered_model.model_dir))
    assert loaded.version == "" and loaded.spec.feature_names == registered_model.spec.feature_names
    assert loaded.path == str(registered_model.model_dir)
    # In a cluster the deploy step names the registered version in the environment (the files cannot say it).
    monkeypatch.setenv("KFOPS_MODEL_VERSION", "7")
    assert load_model(str(registered_model.model_dir)).version == "7"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no-such-model@champion", "model 'no-such-model' does not exist"),
        ("{name}@canary", "has no alias 'canary'"),
        ("{name}/99", "has no version 99"),
        ("{name}/x", "the version must be a number"),
        ("", "empty model reference"),
    ],
)
def test_unknown_references_are_clear_errors(registered_model, ref, message):
    with pytest.raises(KfopsError, match=message):
        load_model(ref.format(name=registered_model.name), registered_model.tracking_uri)


def test_folders_that_are_not_models_and_a_missing_registry(tmp_path, monkeypatch):
    with pytest.raises(KfopsError, match="no MLmodel file"):
        load_model(str(tmp_path))
    with pytest.raises(KfopsError, match="does not exist"):
        load_model(str(tmp_path / "nothing-here"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(KfopsError, match="MLFLOW_TRACKING_URI"):
        load_model("fraud@champion")


def test_todays_models_record_their_format(registered_model):
    import json

    from kfops.components.train.pyfunc import MODEL_FORMAT_VERSION

    config = json.loads((registered_model.model_dir / "artifacts" / "network.json").read_text())
    assert config["format_version"] == MODEL_FORMAT_VERSION
