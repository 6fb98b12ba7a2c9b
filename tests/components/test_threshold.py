"""Choosing the decision threshold on the validation split, and the training options that go with it."""

from __future__ import annotations

import numpy as np
import pytest

from kfops.components.contracts import KfopsError, TrainConfig
from kfops.components.scoring import binary_metrics, choose_threshold


def _brute_force(y, p, metric):
    """The best value of ``metric`` over every cut between sorted scores (the slow, obvious way)."""
    cuts = np.unique(p)
    return max(binary_metrics(y, p, t)[metric] for t in cuts)


@pytest.fixture
def imbalanced():
    rng = np.random.default_rng(4)
    y = (rng.random(3000) < 0.06).astype(np.int64)
    # A usable but imperfect model whose probabilities are all low, as an unweighted model on rare positives is.
    p = 1 / (1 + np.exp(-(rng.normal(-3.5, 1.0, len(y)) + 2.2 * y)))
    return y, p


def test_f1_threshold_is_the_best_cut_and_beats_one_half(imbalanced):
    y, p = imbalanced
    t = choose_threshold(y, p, "f1")
    assert t < 0.5
    assert binary_metrics(y, p, t)["f1"] == pytest.approx(_brute_force(y, p, "f1"))
    assert binary_metrics(y, p, t)["f1"] > binary_metrics(y, p, 0.5)["f1"] + 0.1


def test_youden_maximises_tpr_minus_fpr(imbalanced):
    y, p = imbalanced
    t = choose_threshold(y, p, "youden")
    m = binary_metrics(y, p, t)

    def youden(cut):
        pred = p >= cut
        return pred[y == 1].mean() - pred[y == 0].mean()

    assert youden(t) == pytest.approx(max(youden(c) for c in np.unique(p)))
    assert m["balanced_accuracy"] > 0.75


@pytest.mark.parametrize(
    ("objective", "metric", "other"),
    [("precision>=0.5", "precision", "recall"), ("recall>=0.9", "recall", "precision")],
)
def test_bounded_objectives_meet_the_bound_with_the_most_of_the_other(imbalanced, objective, metric, other):
    y, p = imbalanced
    bound = float(objective.split(">=")[1])
    t = choose_threshold(y, p, objective)
    m = binary_metrics(y, p, t)
    assert m[metric] >= bound
    feasible = [binary_metrics(y, p, c) for c in np.unique(p)]
    assert m[other] == pytest.approx(max(f[other] for f in feasible if f[metric] >= bound))


def test_unreachable_bounds_and_one_class_are_named():
    y = np.array([0, 0, 1, 1])
    with pytest.raises(KfopsError, match="no threshold reaches precision 1"):
        choose_threshold(y, np.array([0.9, 0.1, 0.8, 0.2]), "precision>=1.0")
    with pytest.raises(KfopsError, match="one class"):
        choose_threshold(np.zeros(4), np.linspace(0, 1, 4), "f1")


@pytest.mark.parametrize("objective", ["fixed", "f1", "youden", "precision>=0.9", "recall>=0.75", "recall>=1"])
def test_objectives_accepted(objective):
    config = TrainConfig.from_dict({"threshold_objective": objective})  # check() raises KfopsError if refused
    config.check()
    assert config.threshold_objective == objective


@pytest.mark.parametrize("objective", ["F1", "precision>0.9", "recall>=0", "recall>=1.5", "accuracy"])
def test_bad_objectives_refused(objective):
    with pytest.raises(KfopsError, match="threshold_objective"):
        TrainConfig(threshold_objective=objective).check()


def test_a_trained_model_stores_its_tuned_threshold_and_scores_with_it(tmp_path, prepared, fast_config, mlflow_store):
    import json
    from dataclasses import replace

    from kfops.components.scoring import evaluate_model
    from tests.conftest import train_prepared

    train_prepared(prepared, replace(fast_config, threshold_objective="f1"), tmp_path / "m", tmp_path / "tb")
    stored = json.loads((tmp_path / "m" / "artifacts" / "network.json").read_text())["threshold"]
    assert 0 < stored < 1 and stored != 0.5
    scored, _ = evaluate_model(str(tmp_path / "m"), str(prepared["test_raw"]))
    assert scored.threshold == stored
    train_prepared(
        prepared,
        replace(fast_config, threshold_objective="fixed", decision_threshold=0.3),
        tmp_path / "f",
        tmp_path / "tb2",
    )
    assert json.loads((tmp_path / "f" / "artifacts" / "network.json").read_text())["threshold"] == 0.3
