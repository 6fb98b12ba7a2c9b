"""A new user's first runs on their own files, with no flag but --data and --target: real data with blanks, ids,
timestamps and an imbalanced target goes through, is named after the file, is blessed when it beats the naive
baseline, and a later batch is held to the champion's schema."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfops.cli import main
from tests.e2e.helpers import run_json

pytestmark = pytest.mark.e2e


def breast_cancer_csv(path) -> pd.DataFrame:
    """scikit-learn's breast cancer data as a clinic would export it: an id, a timestamp, 8% blanks in two columns."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_"))
    rng = np.random.default_rng(8)
    frame.insert(0, "patient_id", [f"P-{i:05d}" for i in range(len(frame))])
    frame.insert(1, "visit_time", pd.date_range("2026-03-01 08:00", periods=len(frame), freq="37min").astype(str))
    for column in ("mean_smoothness", "worst_symmetry"):
        frame.loc[rng.random(len(frame)) < 0.08, column] = np.nan
    frame["diagnosis"] = np.where(frame.pop("target") == 1, "benign", "malignant")
    frame.to_csv(path, index=False)
    return frame


def readme_block(marker: str) -> str:
    """The code block after ``<!-- marker -->`` in README.md."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = text[text.index(f"<!-- {marker} -->") :]
    start = after.index("```bash\n") + len("```bash\n")
    return after[start : after.index("```", start)]


def test_the_readme_own_data_example_makes_the_file_the_first_run_takes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = readme_block("own-data: make").replace("python -c", f"{sys.executable} -c", 1)
    subprocess.run(["bash", "-c", script], check=True)
    made = pd.read_csv(tmp_path / "breast_cancer.csv")
    expected = breast_cancer_csv(tmp_path / "mine.csv")
    assert list(made.columns) == list(expected.columns) and len(made) == len(expected)
    assert made["mean_smoothness"].isna().mean() > 0.05 and set(made["diagnosis"]) == {"benign", "malignant"}


def test_breast_cancer_with_no_flags_is_validated_named_blessed_and_tuned(tmp_path, capsys, clean_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    breast_cancer_csv(tmp_path / "breast_cancer.csv")
    command = shlex.split(readme_block("own-data: run"))
    assert command[:2] == ["kfops", "run"] and len(command) == 6  # --data FILE --target COL, nothing else
    result = run_json(capsys, *command[2:], "--workspace", str(tmp_path / "ws"))
    assert result["model_name"] == "breast-cancer-diagnosis"
    assert result["blessed"], result["blessing"]
    assert result["metrics"]["roc_auc"] > 0.9
    assert result["aliases"] == ["challenger", "champion"]
    import mlflow

    mlflow.set_tracking_uri(result["mlflow_tracking_uri"])
    run = mlflow.MlflowClient().get_run(result["run_id"])
    assert run.data.tags["kfops.gate.naive.roc_auc"] == "0.5"
    assert "baseline" in run.data.tags["kfops.gate.thresholds"]
    assert run.data.tags["kfops.threshold_objective"] == "f1"

    # Served, it answers raw rows of the same file: the id, the timestamp, the blanks and the label included.
    from fastapi.testclient import TestClient

    from kfops.serving.app import build_app
    from kfops.serving.predictor import TabularPredictor

    rows = pd.read_csv(tmp_path / "breast_cancer.csv").sample(60, random_state=0)
    body = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in rows.to_dict(orient="records")]
    assert any(r["mean_smoothness"] is None for r in body) or any(r["worst_symmetry"] is None for r in body)
    predictor = TabularPredictor(
        "breast-cancer", "breast-cancer-diagnosis@champion", result["mlflow_tracking_uri"], max_wait_ms=1
    )
    predictor.load()
    try:
        with TestClient(build_app(predictor), raise_server_exceptions=False) as client:
            answer = client.post("/v1/models/breast-cancer:predict", json={"instances": body})
    finally:
        predictor.stop()
    assert answer.status_code == 200, answer.text
    predicted = [p["prediction"] for p in answer.json()["predictions"]]
    assert set(predicted) <= {"benign", "malignant"}
    assert np.mean(np.array(predicted) == rows["diagnosis"].to_numpy()) > 0.85


def gappy_rare_csv(path, rows: int = 3000, seed: int = 1, empty: float = 0.10) -> pd.DataFrame:
    """Generated orders: 6% positives, a 10% empty column, and several id and time columns."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=rows)
    frame = pd.DataFrame(
        {
            "order_id": [f"O{seed}-{i:06d}" for i in range(rows)],
            "account_ref": rng.permutation(rows) + 10_000_000,
            "created_at": pd.date_range("2026-01-01", periods=rows, freq="11min").astype(str),
            "basket_value": np.round(np.exp(rng.normal(3.5, 0.8, rows)), 2),
            "items": rng.integers(1, 12, rows),
            "risk_score": signal + rng.normal(scale=0.6, size=rows),
            "channel": rng.choice(["web", "app", "store"], rows, p=[0.5, 0.3, 0.2]),
        }
    )
    frame.loc[rng.random(rows) < empty, "risk_score"] = np.nan
    logit = -3.6 + 1.8 * signal + 0.3 * (frame["channel"] == "web")
    frame["returned"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(path, index=False)
    return frame


def test_rare_positives_and_blanks_pass_first_then_an_emptier_batch_stops(tmp_path, capsys, clean_env):
    ws = str(tmp_path / "ws")
    first_data = tmp_path / "orders.csv"
    frame = gappy_rare_csv(first_data)
    assert 0.03 < frame["returned"].mean() < 0.12
    first = run_json(capsys, "--data", str(first_data), "--target", "returned", "--workspace", ws)
    assert first["model_name"] == "orders-returned"
    assert first["blessed"], first["blessing"]
    threshold = json.loads(next((tmp_path / "ws").rglob("network.json")).read_text())["threshold"]
    assert threshold != 0.5

    later = tmp_path / "orders.csv"  # the same file name, a later export: the same model
    gappy_rare_csv(later, seed=2, empty=0.60)
    code = main(["run", "--data", str(later), "--target", "returned", "--workspace", ws])
    out = capsys.readouterr().out
    assert code == 2
    assert "risk_score" in out and "the suite's data had" in out and "--warn-only" in out
    assert "champion v1 of 'orders-returned'" in out
