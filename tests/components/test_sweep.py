"""Sweeps: the spec (W&B's sweep.yaml format), its mapping to Optuna and to Katib for every distribution, the
Katib Experiment against Katib's own OpenAPI spec and webhook rules, the Katib step against a fake API server
(exact requests), pruning inside a real training run, and a small local sweep end to end through kfp.local."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from kfops.components.contracts import KfopsError, TrainConfig
from kfops.components.contracts.sweep import objective_metrics
from kfops.components.study import EpochReporter, sqlite_url
from kfops.components.sweep import katib, optuna_backend
from kfops.components.sweep.spec import parse_spec
from tests.components.fake_jobs import FakeJobsKube, condition, experiments_path
from tests.katib_schema import experiment_errors

REFERENCE = """
program: train.py
method: bayes
metric:
  name: val_accuracy
  goal: maximize
parameters:
  learning_rate:
    distribution: log_uniform
    min: 0.00001
    max: 0.1
  batch_size:
    values: [16, 32, 64, 128]
  dropout:
    distribution: uniform
    min: 0.1
    max: 0.5
  optimizer:
    values: ['adam', 'sgd', 'adamw']
"""

EVERY_DISTRIBUTION = {
    "method": "random",
    "metric": {"name": "f1_macro"},
    "run_cap": 8,
    "parameters": {
        "hidden_sizes": {"values": [[32, 16], [16]]},
        "optimizer": {"values": ["adam", "adamw"]},
        "epochs": {"value": 3},
        "early_stopping_patience": {"min": 1, "max": 4},  # int_uniform, inferred
        "dropout": {"min": 0.0, "max": 0.4},  # uniform, inferred
        "weight_decay": {"distribution": "q_uniform", "min": 0.0, "max": 0.001, "q": 0.00025},
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "batch_size": {"distribution": "q_log_uniform_values", "min": 64, "max": 512, "q": 64},
        "seed": {"distribution": "q_normal", "mu": 100, "sigma": 10, "q": 1},
        "threshold": {"distribution": "normal", "mu": 0.5, "sigma": 0.05},
    },
    "kfops": {"parallel": 2, "seed": 7},
}


def spec_of(data) -> object:
    return parse_spec(yaml.safe_load(data) if isinstance(data, str) else data, source="sweep.yaml")


# ---------------------------------------------------------------------------------------------- the spec
def test_the_reference_documents_sweep_parses_and_warns_about_log_uniform_exponents():
    spec = spec_of(REFERENCE)
    assert (spec.method, spec.metric, spec.goal, spec.trials, spec.parallel) == (
        "bayes",
        "val_accuracy",
        "maximize",
        10,
        1,
    )
    lr = spec.parameter("learning_rate")
    # W&B's log_uniform takes natural-log exponents: e^0.00001 .. e^0.1, and the spec says so.
    assert lr.low == pytest.approx(math.exp(1e-5)) and lr.high == pytest.approx(math.exp(0.1)) and lr.log
    assert any("natural-log exponents" in w and "log_uniform_values" in w for w in spec.warnings)
    assert any(w.startswith("program") for w in spec.warnings)
    assert spec.parameter("batch_size").values == (16, 32, 64, 128)
    assert spec.parameter("optimizer").values == ("adam", "sgd", "adamw")


def test_every_distribution_parses_to_its_space():
    spec = spec_of(EVERY_DISTRIBUTION)
    kinds = {p.name: p.distribution for p in spec.parameters}
    assert kinds == {
        "hidden_sizes": "categorical",
        "optimizer": "categorical",
        "epochs": "constant",
        "early_stopping_patience": "int_uniform",
        "dropout": "uniform",
        "weight_decay": "q_uniform",
        "learning_rate": "log_uniform_values",
        "batch_size": "q_log_uniform_values",
        "seed": "q_normal",
        "decision_threshold": "normal",
    }
    assert spec.metric == "val_f1_macro" and spec.goal == "maximize" and spec.parallel == 2
    assert spec.fixed == {"epochs": 3} and spec.parameter("hidden_sizes").values == ((32, 16), (16,))
    assert spec.parameter("weight_decay").grid_values() == [0.0, 0.00025, 0.0005, 0.00075, 0.001]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "hyperopt"}, "method must be one of bayes, random, grid"),
        ({"metirc": {}}, r"unknown key\(s\) \['metirc'\]"),
        ({"metric": {"name": "auc"}}, "metric.name 'auc' is not a metric"),
        ({"metric": {"name": "val_loss", "goal": "maximize"}}, "metric.goal maximize contradicts val_loss"),
        ({"parameters": {"layers": {"values": [1]}}}, "parameters.layers: not a hyperparameter"),
        (
            {"parameters": {"dropout": {"distribution": "beta"}}},
            "parameters.dropout.distribution 'beta' is not supported",
        ),
        ({"parameters": {"dropout": {"distribution": "gauss"}}}, "parameters.dropout.distribution 'gauss' is unknown"),
        ({"parameters": {"dropout": {"min": 0.5, "max": 0.1}}}, r"parameters.dropout: min \(0.5\) must be below max"),
        ({"parameters": {"dropout": {"min": 0.0, "max": 1.5}}}, "parameters.dropout.max: dropout must be in"),
        ({"parameters": {"dropout": {"distribution": "uniform", "min": 0, "max": 0.3, "q": 1}}}, r"key\(s\) \['q'\]"),
        ({"parameters": {"batch_size": {"distribution": "uniform", "min": 16, "max": 64}}}, "batch_size is an integer"),
        (
            {"parameters": {"batch_size": {"distribution": "q_uniform", "min": 16, "max": 64, "q": 1.5}}},
            "q must be a whole",
        ),
        (
            {"parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 0, "max": 1}}},
            "min must be positive",
        ),
        (
            {"parameters": {"learning_rate": {"distribution": "log_uniform", "min": -9, "max": 60}}},
            "natural-log exponents",
        ),
        (
            {"parameters": {"optimizer": {"values": ["adam", "lbfgs"]}}},
            "parameters.optimizer.values: optimizer must be",
        ),
        ({"parameters": {"optimizer": {"distribution": "uniform", "min": 0, "max": 1}}}, "optimizer takes values"),
        ({"parameters": {"hidden_sizes": {"values": [[64, "x"]]}}}, "not a list of layer widths"),
        ({"parameters": {"epochs": {"value": 3}}}, "every parameter is a constant"),
        ({"parameters": {"dropout": {"values": [0.1, 0.1]}}}, "lists a value twice"),
        ({"parameters": {"threshold": {"values": [0.5]}, "decision_threshold": {"values": [0.4]}}}, "twice"),
        ({"run_cap": 0}, "run_cap must be at least 1"),
        ({"early_terminate": {"type": "median"}}, "early_terminate.type must be hyperband"),
        ({"early_terminate": {"type": "hyperband"}}, "hyperband needs min_iter"),
        ({"kfops": {"parallel": 0}}, "kfops.parallel must be at least 1"),
        ({"kfops": {"katib_algorithm": "cmaes"}}, "kfops.katib_algorithm must be tpe or bayesianoptimization"),
        ({"kfops": {"workers": 2}}, r"kfops: unknown key\(s\) \['workers'\]"),
    ],
)
def test_bad_specs_are_refused_naming_the_key(change, message):
    data = {"method": "random", "parameters": {"dropout": {"min": 0.0, "max": 0.3}}} | change
    with pytest.raises(KfopsError, match=message):
        spec_of(data)


def test_grid_needs_finite_values_and_caps_the_budget():
    with pytest.raises(KfopsError, match=r"parameters\.dropout: grid search needs a finite set"):
        spec_of({"method": "grid", "parameters": {"dropout": {"min": 0.0, "max": 0.3}}})
    spec = spec_of(
        {
            "method": "grid",
            "run_cap": 100,
            "parameters": {"batch_size": {"values": [64, 128]}, "epochs": {"min": 1, "max": 3}},
            "kfops": {"parallel": 9},
        }
    )
    assert spec.trials == 6 and spec.parallel == 6 and len(spec.grid()) == 6
    assert spec.with_overrides(trials=4, parallel=2).trials == 4
    with pytest.raises(KfopsError, match="--trials must be at least 1"):
        spec.with_overrides(trials=0)


def test_hyperband_settings():
    spec = spec_of(
        {
            "method": "bayes",
            "parameters": {"dropout": {"min": 0.0, "max": 0.3}},
            "early_terminate": {"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3},
        }
    )
    assert spec.early_terminate.min_iter == 3 and spec.early_terminate.max_iter == 27
    assert optuna_backend.pruner_settings(spec, max_epochs=12) == {
        "type": "hyperband",
        "min_resource": 3,
        "max_resource": 27,
        "reduction_factor": 3,
    }


# ---------------------------------------------------------------------------------------------- Optuna
def test_optuna_distributions_for_every_distribution_and_what_trials_train_with(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    spec = spec_of(EVERY_DISTRIBUTION)
    dists = optuna_backend.distributions(spec)
    assert set(dists) == {
        "hidden_sizes",
        "optimizer",
        "early_stopping_patience",
        "dropout",
        "weight_decay",
        "learning_rate",
        "batch_size",
        "seed.quantile",
        "decision_threshold.quantile",
    }
    assert dists["hidden_sizes"] == CategoricalDistribution(["[32, 16]", "[16]"])
    assert dists["early_stopping_patience"] == IntDistribution(1, 4)
    assert dists["dropout"] == FloatDistribution(0.0, 0.4)
    assert dists["weight_decay"] == FloatDistribution(0.0, 0.001, step=0.00025)
    assert dists["learning_rate"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["batch_size"] == FloatDistribution(64, 512, log=True)  # rounded to 64 + k*64 after sampling
    assert dists["seed.quantile"] == FloatDistribution(1e-6, 1 - 1e-6)

    study = optuna_backend.create_study(spec, sqlite_url(tmp_path / "o.db"), "s", max_epochs=3)
    study = optuna_backend.load_study(sqlite_url(tmp_path / "o.db"), "s", spec)
    for _ in range(25):
        ticket = optuna_backend.ask(study, spec)
        v = ticket.values
        config = spec.config(v)  # every sampled configuration is one training accepts
        assert v["epochs"] == 3 and v["hidden_sizes"] in ([32, 16], [16]) and v["optimizer"] in ("adam", "adamw")
        assert 1 <= v["early_stopping_patience"] <= 4 and 0 <= v["dropout"] <= 0.4
        assert v["weight_decay"] in (0.0, 0.00025, 0.0005, 0.00075, 0.001)
        assert 1e-4 <= v["learning_rate"] <= 1e-1
        assert v["batch_size"] in range(64, 513, 64) and isinstance(v["batch_size"], int)
        assert isinstance(v["seed"], int) and 40 < v["seed"] < 160
        assert 0.2 < v["decision_threshold"] < 0.8 and config.decision_threshold == v["decision_threshold"]
        assert optuna.trial.Trial(study, ticket.trial_id).user_attrs["values"] == v
        optuna_backend.tell_result(study, ticket, v["dropout"])
    assert study.best_value == max(t.value for t in study.trials)  # f1_macro: maximize


def test_normal_quantiles_decode_to_the_normal_distribution():
    spec = spec_of(
        {"method": "random", "parameters": {"learning_rate": {"distribution": "log_normal", "mu": -6, "sigma": 1}}}
    )
    decoded = [
        optuna_backend.decode(spec, {"learning_rate.quantile": u})["learning_rate"] for u in (0.0013499, 0.5, 0.99865)
    ]
    assert decoded == pytest.approx([math.exp(-9), math.exp(-6), math.exp(-3)], rel=1e-3)


def test_grid_sampler_visits_every_combination(tmp_path):
    spec = spec_of(
        {
            "method": "grid",
            "parameters": {"hidden_sizes": {"values": [[8], [16, 8]]}, "batch_size": {"values": [64, 128]}},
        }
    )
    url = sqlite_url(tmp_path / "o.db")
    optuna_backend.create_study(spec, url, "grid", max_epochs=2)
    study = optuna_backend.load_study(url, "grid", spec)
    seen = []
    for _ in range(spec.trials):
        ticket = optuna_backend.ask(study, spec)
        seen.append((tuple(ticket.values["hidden_sizes"]), ticket.values["batch_size"]))
        optuna_backend.tell_result(study, ticket, 1.0)
    assert sorted(seen) == [((8,), 64), ((8,), 128), ((16, 8), 64), ((16, 8), 128)]


def test_a_lagging_trial_is_pruned_inside_a_real_training_run(tmp_path, prepared, fast_config, mlflow_store):
    import mlflow

    from kfops.components.contracts import StopTraining
    from tests.conftest import train_prepared

    spec = spec_of(
        {
            "method": "random",
            "parameters": {"dropout": {"values": [0.0]}, "learning_rate": {"values": [0.003]}},
            "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
        }
    )
    url = sqlite_url(tmp_path / "o.db")
    study = optuna_backend.create_study(spec, url, "prune", max_epochs=4)
    for good in range(9):  # finished trials, each better than the ones before (so none is pruned)
        ticket = optuna_backend.ask(study, spec)
        trial = EpochReporter(url, "prune", ticket.trial_id)
        for epoch in range(1, 5):
            trial({"epoch": float(epoch), "val_loss": 0.01 - good * 1e-4 - epoch * 1e-5})
        optuna_backend.tell_result(study, ticket, 0.01)
    ticket = optuna_backend.ask(study, spec)
    reporter = EpochReporter(url, "prune", ticket.trial_id)
    # A learning rate this small cannot reach 0.01: the pruner stops the run after an epoch.
    config = dataclasses.replace(fast_config, learning_rate=1e-7, early_stopping_patience=0)
    with pytest.raises(StopTraining, match=f"trial {ticket.number} pruned after epoch"):
        train_prepared(prepared, config, tmp_path / "m", tmp_path / "tb", experiment="sweep", epoch_hook=reporter)
    run = mlflow.search_runs(experiment_names=["sweep"], output_format="list")[0]
    assert run.info.status == "KILLED" and "pruned after epoch" in run.data.tags["kfops.stopped"]
    assert optuna_backend.tell_result(study, ticket, None, run_id=run.info.run_id) == "pruned"
    assert study.trials[-1].state.name == "PRUNED"


# ---------------------------------------------------------------------------------------------- Katib
DATA = katib.TrialData(
    "s3://kfops/p/train_features", "s3://kfops/p/validation_features", "s3://kfops/p/feature_spec", "s3://kfops/p/train"
)
POD = katib.TrialPod(image="ghcr.io/kfops/kfops:test", env_secret="kfops-training-env", parent_run_id="parent123")


def test_katib_parameters_for_every_distribution():
    spec = spec_of(EVERY_DISTRIBUTION)
    params = {p["name"]: p for p in (katib.parameter_spec(s) for s in spec.searched)}
    assert params["hidden_sizes"] == {
        "name": "hidden_sizes",
        "parameterType": "categorical",
        "feasibleSpace": {"list": ["32,16", "16"]},
    }
    assert params["optimizer"]["parameterType"] == "categorical"
    assert params["early_stopping_patience"] == {
        "name": "early_stopping_patience",
        "parameterType": "int",
        "feasibleSpace": {"min": "1", "max": "4"},
    }
    assert params["dropout"]["feasibleSpace"] == {"min": "0.0", "max": "0.4", "distribution": "uniform"}
    assert params["weight_decay"]["feasibleSpace"] == {
        "min": "0.0",
        "max": "0.001",
        "step": "0.00025",
        "distribution": "uniform",
    }
    assert params["learning_rate"]["feasibleSpace"] == {"min": "0.0001", "max": "0.1", "distribution": "logUniform"}
    assert params["batch_size"] == {
        "name": "batch_size",
        "parameterType": "int",
        "feasibleSpace": {"min": "64", "max": "512", "step": "64", "distribution": "logUniform"},
    }
    # normal: min/max are mu -/+ 3 sigma, which Katib reads back as mean and sigma.
    assert params["seed"]["feasibleSpace"] == {"min": "70", "max": "130", "step": "1", "distribution": "normal"}
    threshold = params["decision_threshold"]["feasibleSpace"]
    assert (float(threshold["min"]), float(threshold["max"])) == pytest.approx((0.35, 0.65))
    log_normal = spec_of(
        {"method": "random", "parameters": {"learning_rate": {"distribution": "log_normal", "mu": -6, "sigma": 1}}}
    )
    space = katib.parameter_spec(log_normal.searched[0])["feasibleSpace"]
    assert space["distribution"] == "logNormal" and float(space["max"]) == pytest.approx(math.exp(-3))
    discrete = spec_of({"method": "random", "parameters": {"batch_size": {"values": [128, 256]}}})
    assert katib.parameter_spec(discrete.searched[0])["parameterType"] == "discrete"


@pytest.mark.parametrize(
    ("method", "algorithm"), [("random", "random"), ("bayes", "tpe"), ("bayes-gp", "bayesianoptimization")]
)
def test_katib_experiment_is_valid_against_katibs_openapi_spec(method, algorithm):
    data = dict(EVERY_DISTRIBUTION, method=method.split("-")[0], early_terminate={"type": "hyperband", "min_iter": 2})
    if method == "bayes-gp":
        data["kfops"] = {"katib_algorithm": "bayesianoptimization"}
    spec = spec_of(data)
    experiment = katib.build_experiment(spec, DATA, dataclasses.replace(POD, gpus=1), "fraud-sweep", "team-a")
    assert experiment_errors(experiment) == []
    body = experiment["spec"]
    assert body["algorithm"] == {"algorithmName": algorithm}
    assert body["objective"]["objectiveMetricName"] == "val_f1_macro" and body["objective"]["type"] == "maximize"
    assert body["maxTrialCount"] == 8 and body["earlyStopping"]["algorithmName"] == "medianstop"
    container = body["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert container["command"] == ["python", "-m", "kfops.components.train"]
    assert args[args.index("--learning-rate") + 1] == "${trialParameters.learning_rate}"
    assert args[args.index("--epochs") + 1] == "3"  # the spec's constant, a fixed argument
    assert args[args.index("--parent-run-id") + 1] == "parent123"
    assert "kfops.katib_trial=${trialParameters.trial_name}" in args
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["envFrom"] == [{"secretRef": {"name": "kfops-training-env"}}]


def test_grid_on_katib_and_the_validator_catches_what_katib_refuses():
    spec = spec_of(
        {
            "method": "grid",
            "parameters": {
                "weight_decay": {"distribution": "q_uniform", "min": 0.0, "max": 0.001, "q": 0.0005},
                "epochs": {"min": 2, "max": 3},
            },
        }
    )
    experiment = katib.build_experiment(spec, DATA, POD, "grid-sweep", "team-a")
    assert experiment_errors(experiment) == []
    broken = json.loads(json.dumps(experiment))
    broken["spec"]["parameters"][0]["feasibleSpace"].pop("step")
    broken["spec"]["parameters"][0]["feasibleSpace"]["stepp"] = "1"
    broken["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    broken["spec"]["trialTemplate"]["trialParameters"].append({"name": "ghost", "reference": "ghost"})
    errors = "\n".join(experiment_errors(broken))
    assert "stepp" in errors and "imagee" in errors and "grid needs a step" in errors and "ghost" in errors


def kubeconfig(tmp_path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


@pytest.fixture
def fake():
    server = FakeJobsKube().start()
    yield server
    server.stop()


def test_the_katib_step_submits_waits_and_outputs_the_best_parameters(tmp_path, fake, mlflow_store, monkeypatch):
    import mlflow
    from kfp import dsl

    from kfops.components.sweep.component import katib_sweep_op

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, fake.url)))
    spec_text = yaml.safe_dump(
        {
            "name": "fraud",
            "method": "bayes",
            "metric": {"name": "val_loss"},
            "run_cap": 6,
            "parameters": {
                "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                "hidden_sizes": {"values": [[64, 32], [32]]},
                "epochs": {"value": 5},
            },
        }
    )

    def artifact(cls, name, **metadata):
        return cls(name=name, uri=f"minio://mlpipeline/v2/artifacts/run-1/{name}", metadata=metadata)

    best = dsl.Artifact(name="best", uri=str(tmp_path / "best.yaml"), metadata={})
    manifest = dsl.Artifact(name="experiment_manifest", uri=str(tmp_path / "experiment.yaml"), metadata={})
    name = katib.experiment_name(
        spec_of(spec_text), suffix=__import__("hashlib").sha256(best.uri.encode()).hexdigest()[:8]
    )

    def succeeded(obj):
        # Katib's controller, done: trial 2 was best; its training logged the child run found below.
        experiment_id = mlflow.get_experiment_by_name("kfops-sweep").experiment_id
        parent = obj["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"]
        parent_id = parent[parent.index("--parent-run-id") + 1]
        with mlflow.start_run(experiment_id=experiment_id, parent_run_id=parent_id) as run:
            mlflow.set_tag(katib.TRIAL_TAG, f"{name}-trial2")
        fake.best_run = run.info.run_id
        return {
            "conditions": [condition("Created"), condition("Running", "False"), condition("Succeeded")],
            "currentOptimalTrial": {
                "bestTrialName": f"{name}-trial2",
                "parameterAssignments": [
                    {"name": "learning_rate", "value": "0.0031"},
                    {"name": "hidden_sizes", "value": "32"},
                ],
                "observation": {"metrics": [{"name": "val_loss", "latest": "0.0123", "min": "0.0123", "max": "0.2"}]},
            },
            "trialsSucceeded": 6,
            "trialsFailed": 0,
        }

    fake.job_statuses.extend([{"conditions": [condition("Created"), condition("Running")]}, succeeded])
    out = katib_sweep_op.python_func(
        train_features=artifact(dsl.Dataset, "train_features"),
        validation_features=artifact(dsl.Dataset, "validation_features"),
        feature_spec=artifact(dsl.Artifact, "feature_spec", task="binary"),
        raw_train=artifact(dsl.Dataset, "train", source="s3://raw/tx.parquet"),
        data_sha256="abc",
        sweep_spec=spec_text,
        image="ghcr.io/kfops/kfops:test",
        best=best,
        experiment_manifest=manifest,
        poll_seconds=0.01,
    )
    assert fake.calls() == [
        ("POST", experiments_path("team-a")),
        ("GET", experiments_path("team-a", name)),
        ("GET", experiments_path("team-a", name)),
    ]
    sent = fake.requests[0].body
    assert fake.requests[0].query == {"fieldManager": "kfops", "fieldValidation": "Strict"}
    assert sent == yaml.safe_load(Path(manifest.path).read_text()) and experiment_errors(sent) == []
    args = sent["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--train-features") + 1] == "s3://mlpipeline/v2/artifacts/run-1/train_features"
    params = json.loads(out.best_params)
    assert params["learning_rate"] == 0.0031 and params["hidden_sizes"] == [32] and params["epochs"] == 5
    assert "threshold" in params and "decision_threshold" not in params
    assert out.best_value == pytest.approx(0.0123) and out.best_run_id == fake.best_run
    document = yaml.safe_load(Path(best.path).read_text())
    assert document["best"]["learning_rate"] == 0.0031 and document["katib"]["best_trial"] == f"{name}-trial2"
    parent = mlflow.MlflowClient().get_run(document["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_val_loss"] == pytest.approx(0.0123)


def test_a_failed_katib_experiment_is_a_clear_error(tmp_path, fake, mlflow_store):
    from kfops.components.kube import connect
    from kfops.components.sweep.logic import run_katib_sweep

    spec = spec_of({"name": "s", "method": "random", "parameters": {"dropout": {"min": 0.0, "max": 0.3}}})
    failed = condition("Failed", reason="ExperimentMaxFailedTrialsReached", message="too many")
    fake.job_statuses.append({"conditions": [failed], "trialsFailed": 4})
    with pytest.raises(KfopsError, match=r"Katib Experiment team-a/s-1 failed \(ExperimentMaxFailedTrialsReached\)"):
        run_katib_sweep(spec, DATA, POD, namespace="team-a", name="s-1", api=connect(host=fake.url), poll_s=0.01)
    fake.fail("POST", 403, "Forbidden", 'experiments.kubeflow.org is forbidden: User "x" cannot create')
    with pytest.raises(KfopsError, match=r"create Experiment team-a/s-2: forbidden: .*experiments.kubeflow.org"):
        run_katib_sweep(spec, DATA, POD, namespace="team-a", name="s-2", api=connect(host=fake.url), poll_s=0.01)


def test_a_metric_the_datas_task_does_not_report_is_refused_before_anything_runs(fake, mlflow_store, tmp_path):
    from kfops.components.kube import connect
    from kfops.components.sweep.logic import run_katib_sweep

    spec = spec_of(
        {
            "name": "s",
            "method": "random",
            "metric": {"name": "roc_auc"},
            "parameters": {"dropout": {"min": 0.0, "max": 0.3}},
        }
    )
    with pytest.raises(KfopsError, match=r"val_roc_auc is not reported for a regression target; .* val_rmse, val_mae"):
        run_katib_sweep(spec, DATA, POD, namespace="team-a", name="s-1", api=connect(host=fake.url), task="regression")
    assert fake.calls() == []  # nothing submitted
    assert objective_metrics("multiclass")[:3] == ("val_loss", "val_accuracy", "val_balanced_accuracy")
    assert "val_roc_auc" not in objective_metrics("multiclass") and "val_roc_auc" in objective_metrics("binary")


@pytest.mark.parametrize(
    "objective, expected",
    [("f1", ["--threshold-objective", "f1"]), ("precision>=0.9", ["--threshold-objective", "precision>=0.9"]),
     ("fixed", ["--threshold", "0.35"])],
)  # fmt: skip
def test_the_best_configurations_flags_are_what_kfops_run_takes(objective, expected):
    import shlex

    from kfops.cli import build_parser
    from kfops.components.sweep.logic import best_document

    spec = spec_of({"name": "s", "method": "random", "parameters": {"dropout": {"min": 0.0, "max": 0.3}}})
    base = TrainConfig(threshold_objective=objective, decision_threshold=0.35)
    flags = shlex.split(best_document(spec, {"dropout": 0.2}, 0.1, base)["kfops_run_flags"])
    assert flags[flags.index(expected[0]) : flags.index(expected[0]) + 2] == expected
    assert ("--threshold" in flags) != ("--threshold-objective" in flags)  # kfops run refuses both
    args = build_parser().parse_args(["run", *flags])
    assert args.dropout == pytest.approx(0.2) and args.hidden_sizes == [64, 32] and args.model_family == "mlp"


def test_a_sweep_searches_the_model_family():
    from kfops.components.sweep.logic import best_document

    spec = spec_of({"name": "s", "method": "grid", "parameters": {"model_family": {"values": ["mlp", "gbdt"]}}})
    assert spec.trials == 2 and spec.searched[0].values == ("mlp", "gbdt")
    flags = best_document(spec, {"model_family": "gbdt"}, 0.1, TrainConfig(model_params={}))["kfops_run_flags"]
    assert "--model gbdt" in flags
    with pytest.raises(KfopsError, match="model_family"):
        spec_of({"name": "s", "method": "grid", "parameters": {"model_family": {"values": ["mlp", "xgboost"]}}})


@pytest.mark.e2e
def test_a_regression_sweep_from_the_command_line_optimises_rmse(tmp_path, capsys, mlflow_store):
    from sklearn.datasets import load_diabetes

    from kfops.cli import main

    load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"}).to_csv(
        tmp_path / "diabetes.csv", index=False
    )
    sweep = {
        "name": "progression",
        "method": "random",
        "metric": {"name": "rmse"},
        "run_cap": 2,
        "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2}},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    data = ["--data", str(tmp_path / "diabetes.csv"), "--target", "progression", "--workspace", str(tmp_path / "ws")]
    args = ["sweep", str(tmp_path / "sweep.yaml"), "--epochs", "2", *data]
    assert main([*args, "--json"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    document = json.loads(out[out.index("{") :])
    assert document["metric"] == "val_rmse" and document["goal"] == "minimize" and document["trials"]["complete"] == 2
    assert 20 < document["value"] < 100  # the target's units: progression spans 25..346, its std is 77
    sweep["metric"] = {"name": "roc_auc"}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(args) == 2
    assert "val_roc_auc is not reported for a regression target" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- local, e2e
@pytest.mark.e2e
def test_a_small_local_sweep_through_kfp_local(tmp_path, prepared, mlflow_store):
    import mlflow

    from kfops.components.sweep.logic import PreparedData, run_local_sweep
    from kfops.pipelines.sweep import run_trial_locally

    spec = spec_of(
        {
            "name": "small",
            "method": "random",
            "metric": {"name": "val_loss"},
            "run_cap": 3,
            "parameters": {
                "learning_rate": {"distribution": "log_uniform_values", "min": 1e-3, "max": 3e-2},
                "hidden_sizes": {"values": [[16, 8], [8]]},
                "epochs": {"value": 2},
            },
            "kfops": {"seed": 1},
        }
    )
    data = PreparedData(
        str(prepared["train_matrix"]),
        str(prepared["validation_matrix"]),
        str(prepared["spec"]),
        str(prepared["train_raw"]),
        data_sha256=prepared["sha256"],
        data_uri="s3://raw/tx.parquet",
    )
    seen = []
    outcome = run_local_sweep(
        spec,
        data,
        run_trial_locally,
        workspace=tmp_path / "ws",
        base=TrainConfig(batch_size=256, device="cpu"),
        best_path=tmp_path / "best.yaml",
        on_trial=seen.append,
    )
    assert [t.number for t in outcome.trials] == [0, 1, 2] and len(seen) == 3
    assert all(t.state == "complete" and t.value > 0 and t.train_seconds > 0 for t in outcome.trials)
    assert outcome.best.value == min(t.value for t in outcome.trials)
    client = mlflow.MlflowClient()
    for trial in outcome.trials:
        run = client.get_run(trial.run_id)
        assert run.data.tags["mlflow.parentRunId"] == outcome.parent_run_id
        assert run.data.tags["kfops.sweep.trial"] == str(trial.number)
        assert run.data.metrics["val_loss"] == pytest.approx(trial.value)
        assert json.loads(run.data.params["hidden_sizes"]) == trial.values["hidden_sizes"]
        assert run.data.params["epochs"] == "2" and run.data.params["batch_size"] == "256"
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kfops.sweep.best_run_id"] == outcome.best.run_id
    document = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert document["best"]["learning_rate"] == pytest.approx(outcome.best.values["learning_rate"])
    assert document["value"] == pytest.approx(outcome.best.value) and document["trials"]["complete"] == 3
    # The best configuration is what training takes: the entry's --config and TrainConfig both read it.
    from kfops.components.train.entry import load_config_file

    assert TrainConfig.from_dict(load_config_file(str(tmp_path / "best.yaml"))).learning_rate == pytest.approx(
        outcome.best.values["learning_rate"]
    )
    assert f"--learning-rate {document['best']['learning_rate']}" in document["kfops_run_flags"]


# ---------------------------------------------------------------------------------- a family's own parameters
GBDT_SWEEP = {
    "name": "trees",
    "method": "random",
    "metric": {"name": "val_loss"},
    "run_cap": 3,
    "parameters": {
        "model_family": {"value": "gbdt"},
        "model_params.max_leaf_nodes": {"values": [7, 31]},
        "model_params.learning_rate": {"distribution": "log_uniform_values", "min": 0.05, "max": 0.3},
        "model_params.max_iter": {"value": 40},
    },
    "kfops": {"seed": 2},
}


def test_gbdt_parameters_are_searched_by_name_and_checked_as_gbdt_checks_them():
    from kfops.components.sweep.logic import best_document

    spec = spec_of(GBDT_SWEEP)
    leaves = spec.parameter("model_params.max_leaf_nodes")
    assert leaves.values == (7, 31) and leaves.integer
    assert not spec.parameter("model_params.learning_rate").integer
    config = spec.config({"model_params.max_leaf_nodes": 7, "model_params.learning_rate": 0.1})
    assert config.model_family == "gbdt"
    assert config.model_params == {"max_leaf_nodes": 7, "learning_rate": 0.1, "max_iter": 40}
    assert config.gbdt().max_leaf_nodes == 7
    # The best configuration gives them back as the --model-params JSON `kfops run` takes.
    document = best_document(spec, {"model_params.max_leaf_nodes": 7, "model_params.learning_rate": 0.1}, 0.2)
    assert document["best"]["model_params"] == {"learning_rate": 0.1, "max_iter": 40, "max_leaf_nodes": 7}
    assert document["searched"] == {"model_params.max_leaf_nodes": 7, "model_params.learning_rate": 0.1}
    assert (
        '--model-params \'{"learning_rate": 0.1, "max_iter": 40, "max_leaf_nodes": 7}\''
        in (document["kfops_run_flags"])
    )

    def refused(change: dict) -> str:
        with pytest.raises(KfopsError) as err:
            spec_of({**GBDT_SWEEP, "parameters": {**GBDT_SWEEP["parameters"], **change}})
        return str(err.value)

    assert "model_params.max_depth" in refused({"model_params.max_depth": {"values": [3]}})  # the listed names
    assert "model_params.max_leaf_nodes must be at least 2" in refused({"model_params.max_leaf_nodes": {"values": [1]}})
    assert "is an integer" in refused({"model_params.max_iter": {"min": 10.0, "max": 20.5}})
    assert "add gbdt to model_family" in refused({"model_family": {"values": ["mlp"]}})


def test_gbdt_parameters_apply_to_gbdt_trials_only():
    spec = spec_of(
        {
            "method": "grid",
            "parameters": {"model_family": {"values": ["mlp", "gbdt"]}, "model_params.max_leaf_nodes": {"values": [7]}},
        }
    )
    assert spec.config({"model_family": "mlp", "model_params.max_leaf_nodes": 7}).model_params == {}
    assert spec.config({"model_family": "gbdt", "model_params.max_leaf_nodes": 7}).model_params == {"max_leaf_nodes": 7}
    # With the family left to the base configuration, an mlp base is a mistake the user should hear about.
    only_params = spec_of({"method": "grid", "parameters": {"model_params.max_leaf_nodes": {"values": [7, 15]}}})
    with pytest.raises(KfopsError, match="set model_family to gbdt"):
        only_params.config({"model_params.max_leaf_nodes": 7})
    assert only_params.config({"model_params.max_leaf_nodes": 7}, TrainConfig(model_family="gbdt")).model_params == {
        "max_leaf_nodes": 7
    }


def test_katib_trials_pass_gbdt_parameters_as_flags_training_reads():
    from kfops.components.train.entry import build_parser, config_from

    spec = spec_of(GBDT_SWEEP)
    experiment = katib.build_experiment(spec, DATA, POD, "trees", "team-a")
    assert experiment_errors(experiment) == []
    names = {p["name"] for p in experiment["spec"]["parameters"]}
    assert names == {"model_params__max_leaf_nodes", "model_params__learning_rate"}
    args = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "max_leaf_nodes=${trialParameters.model_params__max_leaf_nodes}" in args
    assert args[args.index("--model-family") + 1] == "gbdt"
    # What a trial's pod runs once Katib substitutes the values: the training entry's own parser.
    substituted = [
        a.replace("${trialParameters.model_params__max_leaf_nodes}", "31").replace(
            "${trialParameters.model_params__learning_rate}", "0.125"
        )
        for a in args
    ]
    config = config_from(build_parser().parse_args(substituted))
    assert config.model_family == "gbdt"
    assert config.model_params == {"max_iter": 40, "max_leaf_nodes": 31, "learning_rate": 0.125}
    status = {
        "currentOptimalTrial": {
            "bestTrialName": "trees-abc",
            "parameterAssignments": [
                {"name": "model_params__max_leaf_nodes", "value": "31"},
                {"name": "model_params__learning_rate", "value": "0.125"},
            ],
            "observation": {"metrics": [{"name": "val_loss", "latest": "0.3"}]},
        }
    }
    best = katib.best_from_status(spec, "trees", status)
    assert best.values["model_params.max_leaf_nodes"] == 31 and best.values["model_params.learning_rate"] == 0.125


@pytest.mark.e2e
def test_a_local_sweep_over_gbdt_parameters_trains_trees(tmp_path, prepared, mlflow_store):
    import mlflow

    from kfops.components.sweep.logic import PreparedData, run_local_sweep
    from kfops.pipelines.sweep import run_trial_locally

    data = PreparedData(
        str(prepared["train_matrix"]),
        str(prepared["validation_matrix"]),
        str(prepared["spec"]),
        str(prepared["train_raw"]),
        data_sha256=prepared["sha256"],
    )
    outcome = run_local_sweep(
        spec_of(GBDT_SWEEP),
        data,
        run_trial_locally,
        workspace=tmp_path / "ws",
        base=TrainConfig(device="cpu"),
        best_path=tmp_path / "best.yaml",
    )
    assert [t.state for t in outcome.trials] == ["complete"] * 3
    client = mlflow.MlflowClient()
    for trial in outcome.trials:
        params = client.get_run(trial.run_id).data.params
        assert params["model_family"] == "gbdt"
        assert json.loads(params["model_params"])["max_leaf_nodes"] == trial.values["model_params.max_leaf_nodes"]
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["best"]["model_family"] == "gbdt"
