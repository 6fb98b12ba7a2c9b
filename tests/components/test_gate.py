from __future__ import annotations

import dataclasses

import pytest

from kfops.components.contracts import Blessing, KfopsError
from kfops.components.gate.logic import (
    DEFAULT_THRESHOLDS,
    REFERENCE_THRESHOLDS,
    blessing_markdown,
    judge,
    load_thresholds,
    parse_thresholds,
)
from tests.conftest import train_prepared

GOOD = {
    "accuracy": 0.99,
    "precision_macro": 0.97,
    "recall_macro": 0.88,
    "f1_macro": 0.92,
    "roc_auc": 0.96,
    "val_loss": 0.03,
    "pr_auc": 0.88,
}
CHANGE = {"f1_macro": {"lower": 0.85, "change": {"absolute": -0.01}}, "val_loss": {"change": {"relative": 0.1}}}


def test_first_run_is_judged_on_value_thresholds_and_says_change_checks_were_skipped():
    blessing = judge(GOOD, parse_thresholds(CHANGE), baseline=None, candidate_id="run a")
    assert blessing.blessed
    verdicts = {(c.metric, c.verdict) for c in blessing.checks}
    assert verdicts == {("f1_macro", "pass"), ("f1_macro", "skipped"), ("val_loss", "skipped")}
    assert "no champion yet" in blessing.message


def test_a_worse_model_is_refused_and_a_better_one_blessed():
    champion = dict(GOOD)
    worse = dict(GOOD, f1_macro=0.90)
    refused = judge(worse, parse_thresholds(CHANGE), baseline=champion, baseline_version="3")
    assert not refused.blessed and refused.baseline_version == "3"
    failed = [c for c in refused.checks if c.verdict == "fail"]
    assert [c.metric for c in failed] == ["f1_macro"] and failed[0].change == pytest.approx(-0.02)
    assert "f1_macro" in refused.message and "-0.0200" in refused.message
    better = judge(dict(GOOD, f1_macro=0.93, val_loss=0.031), parse_thresholds(CHANGE), baseline=champion)
    assert better.blessed  # val_loss rose 3.3%, within the 10% allowed for a lower-is-better metric
    much_worse_loss = judge(dict(GOOD, val_loss=0.04), parse_thresholds(CHANGE), baseline=champion)
    assert not much_worse_loss.blessed


def test_value_thresholds_floors_and_ceilings():
    rules = parse_thresholds({"accuracy": {"lower": 0.995}, "val_loss": {"upper": 0.01}})
    blessing = judge(GOOD, rules)
    assert not blessing.blessed and {c.metric for c in blessing.checks if c.verdict == "fail"} == {
        "accuracy",
        "val_loss",
    }


def test_no_thresholds_means_not_blessed():
    blessing = judge(GOOD, parse_thresholds({}))
    assert not blessing.blessed and "no thresholds" in blessing.message


def test_default_thresholds_ask_for_a_margin_over_the_naive_baseline_and_the_champion():
    rules = {r.metric: r for r in parse_thresholds(DEFAULT_THRESHOLDS)}
    assert rules["roc_auc"].margin == 0.05 and rules["balanced_accuracy"].margin == 0.05
    assert rules["f1_macro"].absolute == -0.01 and rules["f1_macro"].lower is None
    assert not any(r.lower is not None for r in rules.values())  # no fixed floor: any data, any class balance


def test_the_reference_documents_floors_ship_as_an_example_file():
    from pathlib import Path

    REPO_ROOT = Path(__file__).resolve().parents[2]
    assert load_thresholds(str(REPO_ROOT / "examples" / "thresholds" / "reference.yaml")) == REFERENCE_THRESHOLDS
    assert load_thresholds(str(REPO_ROOT / "examples" / "thresholds" / "baseline.yaml")) == DEFAULT_THRESHOLDS


def test_baseline_thresholds_compare_with_the_naive_scores():
    naive = {"roc_auc": 0.5, "balanced_accuracy": 0.5, "f1_macro": 0.48}
    rules = parse_thresholds(
        {"roc_auc": {"baseline": {"absolute": 0.05}}, "balanced_accuracy": {"baseline": {"absolute": 0.05}}}
    )
    good = judge({"roc_auc": 0.71, "balanced_accuracy": 0.66}, rules, naive=naive)
    assert good.blessed and good.naive_baseline == naive
    assert [c.change for c in good.checks] == [pytest.approx(0.21), pytest.approx(0.16)]
    noise = judge({"roc_auc": 0.53, "balanced_accuracy": 0.61}, rules, naive=naive)
    assert not noise.blessed and "roc_auc vs naive baseline 0.5000: margin +0.0300 < +0.05" in noise.message
    assert "Naive class-prior baseline on the same rows" in blessing_markdown(noise)
    with pytest.raises(KfopsError, match="baseline needs absolute"):
        parse_thresholds({"roc_auc": {"baseline": 0.05}})


def test_a_lift_within_the_test_sets_noise_is_no_lift():
    """The same scores pass on thousands of test rows and fail on five positives, where chance alone reaches them."""
    rules = parse_thresholds(DEFAULT_THRESHOLDS)
    scores = {"roc_auc": 0.63, "balanced_accuracy": 0.6, "recall": 0.4, "f1_macro": 0.55}
    naive = {"roc_auc": 0.5, "balanced_accuracy": 0.5}
    few = judge(scores, rules, naive=dict(naive, test_positives=5, test_negatives=195))
    assert not few.blessed
    assert "of noise on 5 positive and 195 negative rows" in few.message
    assert "(5 positive, 195 negative rows)" in blessing_markdown(few)
    many = judge(scores, rules, naive=dict(naive, test_positives=500, test_negatives=5000))
    assert many.blessed, many.message


def test_a_missing_metric_value_fails():
    blessing = judge({"accuracy": float("nan")}, parse_thresholds({"accuracy": {"lower": 0.5}}))
    assert not blessing.blessed and "no value for accuracy" in blessing.checks[0].reason


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"f2": {"lower": 0.5}}, "'f2' is not a metric the evaluation produces"),
        ({"accuracy": {"floor": 0.5}}, r"unknown field\(s\) \['floor'\]"),
        ({"accuracy": {"lower": "high"}}, "accuracy.lower must be a number"),
        ({"accuracy": {"lower": 0.9, "upper": 0.8}}, "is above its upper"),
        ({"accuracy": {"change": {"direction": "up", "absolute": 0}}}, "direction must be 'higher' or 'lower'"),
        ({"accuracy": {"change": {}}}, "needs absolute and/or relative"),
        ({"accuracy": {}}, "needs lower, upper, change and/or baseline"),
        (["accuracy"], "must be a mapping"),
    ],
)
def test_bad_thresholds_are_named(config, message):
    with pytest.raises(KfopsError, match=message):
        parse_thresholds(config)


def test_thresholds_file_yaml_and_json(tmp_path):
    (tmp_path / "t.yaml").write_text("thresholds:\n  accuracy: {lower: 0.9}\n  f1_macro:\n    change: {absolute: 0}\n")
    assert load_thresholds(str(tmp_path / "t.yaml")) == {
        "accuracy": {"lower": 0.9},
        "f1_macro": {"change": {"absolute": 0}},
    }
    (tmp_path / "bad.yaml").write_text("thresholds: [\n")
    with pytest.raises(KfopsError, match=r"bad\.yaml is not valid YAML"):
        load_thresholds(str(tmp_path / "bad.yaml"))
    with pytest.raises(KfopsError, match="does not exist"):
        load_thresholds(str(tmp_path / "none.yaml"))


def test_blessing_round_trip_and_markdown():
    blessing = judge(GOOD, parse_thresholds(CHANGE), baseline=dict(GOOD), baseline_version="2", candidate_id="r")
    assert Blessing.from_json(blessing.to_json()) == blessing
    text = blessing_markdown(blessing)
    assert text.startswith("# Blessed") and "| f1_macro |" in text and "champion version 2" in text


def test_thresholds_parameter_text():
    from kfops.components.gate.logic import thresholds_from_text, thresholds_json

    assert thresholds_from_text(thresholds_json(DEFAULT_THRESHOLDS)) == DEFAULT_THRESHOLDS
    assert thresholds_from_text("") == {}
    assert thresholds_from_text("accuracy: {lower: 0.8}") == {"accuracy": {"lower": 0.8}}
    with pytest.raises(KfopsError, match="not valid JSON/YAML"):
        thresholds_from_text("{accuracy: [")
    with pytest.raises(KfopsError, match="'auc' is not a metric"):
        thresholds_from_text('{"auc": {"lower": 0.8}}')


def test_champion_is_rescored_on_the_candidates_test_split(tmp_path, prepared, fast_config, mlflow_store):
    import mlflow

    from kfops.components.contracts import EvaluationResult
    from kfops.components.gate.logic import run_gate
    from kfops.components.register.logic import register_model
    from kfops.components.scoring import evaluate_model

    outcome = train_prepared(
        prepared,
        fast_config,
        str(tmp_path / "m"),
        str(tmp_path / "tb"),
    )
    scored, _ = evaluate_model(str(tmp_path / "m"), str(prepared["test_raw"]), val_loss=outcome.best_val_loss)
    register_model(outcome.model_uri, outcome.run_id, "gated", evaluation=scored, promote_champion=True)
    # The same model as candidate: every change is zero, and the champion's val_loss comes from its tags.
    config = {"f1_macro": {"change": {"absolute": 0.0}}, "val_loss": {"change": {"absolute": 0.0}}}
    blessing = run_gate(scored.metrics, str(prepared["test_raw"]), config, "gated", candidate_id="same")
    assert blessing.blessed and blessing.baseline_version == "1", blessing.message
    assert {c.metric: c.change for c in blessing.checks} == {"f1_macro": 0.0, "val_loss": pytest.approx(0.0, abs=1e-6)}
    worse = dict(scored.metrics, f1_macro=scored.metrics["f1_macro"] - 0.05)
    assert not run_gate(worse, str(prepared["test_raw"]), config, "gated").blessed
    assert mlflow.MlflowClient().get_model_version_by_alias("gated", "champion").version in (1, "1")
    assert EvaluationResult.from_json(scored.to_json()).metrics["f1_macro"] == scored.metrics["f1_macro"]


@pytest.mark.parametrize("decisions", ["default", "majority"])
def test_a_model_of_shuffled_labels_is_never_blessed(tmp_path, prepared, fast_config, mlflow_store, decisions):
    """Labels shuffled in training: the model learns noise, and the default gate sees it against the naive
    baseline on the real test rows, whatever its accuracy (the majority class gets that for free), with the
    default threshold and weighting or with an unweighted loss cut at 0.5."""
    import numpy as np

    from kfops.components.gate.logic import run_gate
    from kfops.components.scoring import evaluate_model
    from kfops.components.transform import load_matrix, save_matrix

    shuffled = dict(prepared)
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        features, labels = load_matrix(str(prepared[f"{split}_matrix"]))
        shuffled[f"{split}_matrix"] = tmp_path / f"{split}.npz"
        save_matrix(str(shuffled[f"{split}_matrix"]), features, rng.permutation(labels))
    config = fast_config
    if decisions == "majority":
        config = dataclasses.replace(fast_config, class_weighting="none", threshold_objective="fixed")
    train_prepared(shuffled, config, tmp_path / "m", tmp_path / "tb")
    scored, _ = evaluate_model(str(tmp_path / "m"), str(prepared["test_raw"]))
    blessing = run_gate(
        scored.metrics, str(prepared["test_raw"]), DEFAULT_THRESHOLDS, "noise", model_dir=str(tmp_path / "m")
    )
    assert not blessing.blessed, blessing.message
    assert blessing.naive_baseline["roc_auc"] == 0.5 and blessing.naive_baseline["balanced_accuracy"] == 0.5
    if decisions == "majority":
        assert scored.metrics["accuracy"] > 0.9  # the floors of old would have let it through on accuracy


def test_a_champion_trained_on_other_columns_stops_the_gate(tmp_path, prepared, fast_config, mlflow_store):
    from kfops.components.contracts import FeatureSpec
    from kfops.components.gate.logic import run_gate
    from kfops.components.register.logic import register_model
    from kfops.components.scoring import evaluate_model

    outcome = train_prepared(prepared, fast_config, tmp_path / "m", tmp_path / "tb")
    scored, _ = evaluate_model(str(tmp_path / "m"), str(prepared["test_raw"]))
    register_model(outcome.model_uri, outcome.run_id, "shared-name", evaluation=scored, promote_champion=True)
    other = tmp_path / "other"
    import shutil

    shutil.copytree(tmp_path / "m", other)
    spec = FeatureSpec.load(other / "artifacts" / "feature_spec.json")
    spec.columns = spec.columns[1:]
    spec.save(other / "artifacts" / "feature_spec.json")
    with pytest.raises(KfopsError, match=r"trained on other data.*--model-name"):
        run_gate(scored.metrics, str(prepared["test_raw"]), DEFAULT_THRESHOLDS, "shared-name", model_dir=str(other))
