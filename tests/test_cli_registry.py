"""`kfops runs ...` and `kfops models ...` against a real sqlite MLflow store with two trained models."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kfops.cli import EXIT_USER_ERROR, main
from kfops.components.contracts import TAG_BLESSED, TAG_METRIC_PREFIX
from tests.conftest import train_prepared

MODEL = "fraud-cli"


@pytest.fixture(scope="module")
def store(tmp_path_factory, prepared, fast_config):
    """A store with two training runs (different learning rates and test metrics) in "kfops-training", and
    model MODEL: v1 from run 1 (blessed, champion), v2 from run 2 (blessed, challenger), v3 from run 2 (not
    blessed). Returns (URI, [run id 1, run id 2])."""
    import mlflow

    root = tmp_path_factory.mktemp("cli-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFOPS_MLFLOW_ARTIFACT_ROOT", str(root / "art"))
        for i, lr in enumerate((3e-3, 1e-2)):
            outcome = train_prepared(
                prepared,
                dataclasses.replace(fast_config, learning_rate=lr),
                str(root / f"model{i}"),
                str(root / f"tb{i}"),
                tracking_uri=uri,
                data_sha256=prepared["sha256"],
                run_name=f"cli-run-{i}",
            )
            runs.append(outcome)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    # What the evaluate step logs on the run, and what register/gate tag on the version.
    test_metrics = [{"accuracy": 0.91, "f1_macro": 0.80}, {"accuracy": 0.95, "f1_macro": 0.86}]
    for run, metrics in zip(runs, test_metrics, strict=True):
        for key, value in metrics.items():
            client.log_metric(run.run_id, key, value)
    for run, metrics, blessed in (
        (runs[0], test_metrics[0], True),
        (runs[1], test_metrics[1], True),
        (runs[1], {}, False),
    ):
        number = str(mlflow.register_model(run.model_uri, MODEL).version)
        client.set_model_version_tag(MODEL, number, TAG_BLESSED, str(blessed).lower())
        client.set_model_version_tag(MODEL, number, "kfops.data_sha256", prepared["sha256"])
        for key, value in metrics.items():
            client.set_model_version_tag(MODEL, number, TAG_METRIC_PREFIX + key, str(value))
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    return uri, [r.run_id for r in runs]


@pytest.fixture
def kfops(store, capsys, monkeypatch):
    """Run `kfops ...` against the store: (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "250")  # rich: wide enough that tables do not wrap ids

    def run(*argv: str):
        code = main([*argv, "--tracking-uri", store[0]])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_runs_search_filters_orders_and_prints_json(store, kfops):
    _, (first, second) = store
    code, out, _ = kfops("runs", "search", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["run_id"] for r in rows} == {first, second}
    assert rows[0]["params"]["learning_rate"] and "f1_macro" in rows[0]["metrics"]

    code, out, _ = kfops("runs", "search", "--json", "--order-by", "metrics.accuracy DESC", "--order-by", "start_time")
    assert [r["run_id"] for r in json.loads(out)] == [second, first]
    code, out, _ = kfops("runs", "search", "--json", "--order-by", "metrics.accuracy ASC", "--max", "1")
    assert [r["run_id"] for r in json.loads(out)] == [first]
    code, out, _ = kfops("runs", "search", "--json", "--filter", "metrics.accuracy > 0.93")
    assert [r["run_id"] for r in json.loads(out)] == [second]
    assert json.loads(out)[0]["metrics"]["accuracy"] == pytest.approx(0.95)

    code, out, _ = kfops("runs", "search", "--filter", "metrics.f1_macro > 0.5")
    assert code == 0 and first in out and second in out and "cli-run-0" in out and "f1_macro" in out
    assert "learning_rate" in out and "2 run(s)" in out


def test_runs_search_errors(kfops):
    code, _, err = kfops("runs", "search", "--filter", "metrics.accuracy >>> 0.9")
    assert code == EXIT_USER_ERROR and "metrics.accuracy >>> 0.9" in err and "--filter" in err
    code, _, err = kfops("runs", "search", "--order-by", "nonsense DESC x")
    assert code == EXIT_USER_ERROR and "nonsense DESC x" in err
    code, _, err = kfops("runs", "search", "--experiment", "no-such-experiment")
    assert code == EXIT_USER_ERROR and "experiment 'no-such-experiment' does not exist" in err


def test_runs_compare(store, kfops):
    _, (first, second) = store
    code, out, _ = kfops("runs", "compare", first, second, "--json")
    data = json.loads(out)
    assert code == 0 and data["runs"] == [first, second]
    accuracy = data["metrics"]["accuracy"]
    assert accuracy["first"] == pytest.approx(0.91) and accuracy["difference"] == pytest.approx(0.04)
    assert accuracy["differs"] and data["params"]["learning_rate"]["differs"]
    assert not data["params"]["epochs"]["differs"]

    code, out, _ = kfops("runs", "compare", first, second)
    assert code == 0 and "+0.0400" in out and "≠" in out and "learning_rate" in out and "changed" in out
    code, _, err = kfops("runs", "compare", first, "0" * 32)
    assert code == EXIT_USER_ERROR and f"run '{'0' * 32}' does not exist" in err


def test_models_list(kfops):
    code, out, _ = kfops("models", "list", "--json")
    (row,) = [r for r in json.loads(out) if r["name"] == MODEL]
    assert code == 0 and row["aliases"] == {"champion": "1", "challenger": "2"} and row["latest_version"] == "3"
    code, out, _ = kfops("models", "list")
    assert code == 0 and MODEL in out and "champion=v1" in out


def test_models_show(store, kfops, prepared):
    _, (first, _) = store
    code, out, _ = kfops("models", "show", f"{MODEL}@champion", "--json")
    data = json.loads(out)
    assert code == 0 and data["version"] == "1" and data["aliases"] == ["champion"] and data["run_id"] == first
    assert data["download_uri"].endswith("artifacts") and data["source"].startswith("models:/")
    assert data["data_sha256"] == prepared["sha256"] and data["blessed"] == "true"
    assert data["metrics"] == {"accuracy": pytest.approx(0.91), "f1_macro": pytest.approx(0.80)}
    assert data["task"] == "binary" and data["model_family"] == "mlp"  # from the training run's tags
    code, out, _ = kfops("models", "show", f"{MODEL}/2")
    assert code == 0 and "version 2" in out and "challenger" in out and "f1_macro" in out and "0.8600" in out
    assert "model family  mlp" in out and "task          binary" in out
    code, out, _ = kfops("models", "show", MODEL, "--json")  # bare name: the latest version
    assert json.loads(out)["version"] == "3"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope@champion", "model 'nope' does not exist"),
        (f"{MODEL}/7", f"model {MODEL} has no version 7"),
        (f"{MODEL}@foo", f"model {MODEL} has no alias 'foo'"),
        (f"{MODEL}/x", f"model reference '{MODEL}/x' is not valid"),
    ],
)
def test_models_show_errors(kfops, ref, message):
    code, out, err = kfops("models", "show", ref)
    assert code == EXIT_USER_ERROR and message in err and not out


def test_models_compare(store, kfops):
    _, (first, second) = store
    code, out, _ = kfops("models", "compare", MODEL, "1", "@challenger", "--json")
    data = json.loads(out)
    assert code == 0 and data["versions"] == ["1", "2"] and data["runs"] == [first, second]
    assert data["metrics"]["f1_macro"]["difference"] == pytest.approx(0.06)
    assert data["params"]["learning_rate"] == {"first": "0.003", "second": "0.01", "differs": True}
    code, out, _ = kfops("models", "compare", MODEL, "1", "2")
    assert code == 0 and "v1" in out and "v2" in out and "+0.0600" in out
    code, _, err = kfops("models", "compare", MODEL, "1", "9")
    assert code == EXIT_USER_ERROR and f"model {MODEL} has no version 9" in err


def test_models_promote_and_rollback(kfops):
    # v3 is not blessed: refused unless forced.
    code, _, err = kfops("models", "promote", f"{MODEL}/3")
    assert code == EXIT_USER_ERROR and "not blessed" in err
    # v2 (f1_macro 0.86) beats the champion v1 (0.80).
    code, out, _ = kfops("models", "promote", f"{MODEL}/2", "--json")
    result = json.loads(out)
    assert code == 0 and result["won"] and result["champion"] == "2" and result["previous"] == "1"
    # Rolling back twice undoes the first.
    code, out, _ = kfops("models", "rollback", MODEL, "--json")
    assert code == 0 and (json.loads(out)["champion"], json.loads(out)["previous"]) == ("1", "2")
    code, out, _ = kfops("models", "rollback", MODEL)
    assert code == 0 and "version 2 is champion" in out
    code, out, _ = kfops("models", "list", "--json")
    (row,) = [r for r in json.loads(out) if r["name"] == MODEL]
    assert row["aliases"] == {"champion": "2", "challenger": "2", "previous": "1"}
    code, _, err = kfops("models", "promote", "ghost/1")
    assert code == EXIT_USER_ERROR and "model 'ghost' does not exist" in err
    code, _, err = kfops("models", "rollback", "ghost")
    assert code == EXIT_USER_ERROR and "model 'ghost' does not exist" in err
    with pytest.raises(SystemExit) as exit_info:
        kfops("models", "promote", f"{MODEL}/2", "--metric", "bogus")
    assert exit_info.value.code == EXIT_USER_ERROR


def test_help_imports_neither_mlflow_nor_pandas_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom kfops.cli import build_parser\nbuild_parser()\n"
        "print(sorted(m for m in ('mlflow', 'pandas', 'torch', 'kfp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # the parser of every command, `kfops --help` included, starts in a fraction of a second


def test_retrain_retrains_the_workspaces_one_champion_and_asks_when_there_are_several(tmp_path):
    import mlflow

    from kfops.cli.retrain import _workspace_model
    from kfops.components.contracts import KfopsError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    assert _workspace_model(uri, "fraud-detector") == "fraud-detector"  # nothing registered: the demo's name
    for name in ("churn-exited", "credit-default"):
        client.create_registered_model(name)
        version = client.create_model_version(name, source=str(tmp_path / name))
        if name == "churn-exited":
            client.set_registered_model_alias(name, "champion", version.version)
    # a model without a champion is nothing to retrain against
    assert _workspace_model(uri, "fraud-detector") == "churn-exited"
    client.set_registered_model_alias("credit-default", "champion", "1")
    with pytest.raises(KfopsError, match=r"2 models with a champion \(churn-exited, credit-default\).*--model-name"):
        _workspace_model(uri, "fraud-detector")
