from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from kfops.components.contracts import BINARY_METRIC_NAMES, EvaluationResult
from kfops.components.evaluate.logic import plot_confusion_matrix
from kfops.components.scoring import binary_metrics, confusion, downsample_curve, roc_curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(3000) < 0.1).astype(int)
    p = np.clip(0.35 * y + rng.random(3000) * 0.7, 0, 1)
    p[:50] = 0.5  # ties
    got = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert got["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert got["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert set(got) | {"val_loss"} == set(BINARY_METRIC_NAMES)
    assert confusion(y, p) == skm.confusion_matrix(y, pred).tolist()


def test_roc_curve_matches_and_downsamples():
    rng = np.random.default_rng(4)
    y = (rng.random(5000) < 0.2).astype(int)
    p = rng.random(5000)
    fpr, tpr, thr = roc_curve(y, p)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    small = downsample_curve(fpr, tpr, thr, points=100)
    assert len(small[0]) <= 100 and small[0][0] == 0.0 and small[1][-1] == 1.0
    assert all(np.isfinite(small[2]))


def test_degenerate_inputs_do_not_divide_by_zero():
    m = binary_metrics(np.zeros(10), np.zeros(10))
    assert m["precision"] == 0.0 and m["accuracy"] == 1.0 and np.isnan(m["roc_auc"])


def test_confusion_matrix_png(tmp_path):
    result = EvaluationResult(metrics={}, confusion_matrix=[[90, 3], [2, 5]], labels=["0", "1"])
    path = plot_confusion_matrix(result, tmp_path / "cm")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert EvaluationResult.from_json(result.to_json()) == result
    assert json.loads(result.to_json())["labels"] == ["0", "1"]


def test_undefined_metrics_are_null_in_json():
    result = EvaluationResult(
        metrics={"roc_auc": float("nan"), "accuracy": 1.0}, confusion_matrix=[[2, 0], [0, 0]], labels=["0", "1"]
    )
    text = result.to_json()
    assert '"roc_auc": null' in text and "NaN" not in text
    assert np.isnan(EvaluationResult.from_json(text).metrics["roc_auc"])
