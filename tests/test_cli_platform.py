"""``kfops submit``, ``kfops upload`` and ``kfops schedule`` against a Kubeflow Pipelines API.

A real ``kfp.Client`` (and its generated REST layer, urllib3 and a socket) talks to ``tests/kfp_api.py``, a
stand-in for the KFP v2beta1 API on 127.0.0.1 that records every request: the tests assert the exact bodies
the client sent, the printed UI links, and that bad input, an unreachable host or a rejected token stop the
command before anything is created.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from kfops.cli import main
from kfops.pipelines.submit import TOKEN_ENV
from kfops.pipelines.submit_inputs import read_package, resolve_pipeline
from tests.conftest import free_port
from tests.kfp_api import FakeKfp, KfpServer

TOKEN = "kfp-test-token-7f3a"
TRAINING = resolve_pipeline("training")


@pytest.fixture(autouse=True)
def _isolated_kfp_context(tmp_path, monkeypatch):
    """kfp.Client reads a saved namespace from ~/.config/kfp/context.json: keep the user's file out of it."""
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.delenv("KFOPS_KFP_HOST", raising=False)
    monkeypatch.delenv("KFOPS_KFP_NAMESPACE", raising=False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


@pytest.fixture
def kfp_api():
    state = FakeKfp(token=TOKEN)
    with KfpServer(state) as server:
        yield server


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _writes(server) -> list:
    return server.state.writes()


def _spec_of(path: Path) -> dict:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d)


# ------------------------------------------------------------------------------------------------ submit
def test_submit_creates_the_experiment_and_the_run_and_prints_its_link(kfp_api, capsys):
    code, out, err = _run(
        capsys,
        "submit",
        "training",
        "--host",
        kfp_api.url,
        "-p",
        "epochs=3",
        "-p",
        "learning_rate=0.01",
        "-p",
        "hidden_sizes=[32, 16]",
        "-p",
        "deploy=false",
        "-p",
        "data_uri=s3://kfops/incoming/2026-11.parquet",
        "--run-name",
        "nightly",
    )
    assert code == 0, err
    state = kfp_api.state
    # checks first (health, an authenticated read), then exactly two writes
    assert [(r.method, r.path) for r in state.requests[:2]] == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),
    ]
    writes = _writes(kfp_api)
    assert [(r.method, r.path) for r in writes] == [
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    assert writes[0].body == {"display_name": "kfops", "namespace": ""}
    run = writes[1].body
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == state.experiments[0]["experiment_id"]
    assert run["service_account"] == "kfops-pipeline-runner"
    # arguments typed as the pipeline declares them
    assert run["runtime_config"] == {
        "parameters": {
            "epochs": 3,
            "learning_rate": 0.01,
            "hidden_sizes": [32, 16],
            "deploy": False,
            "data_uri": "s3://kfops/incoming/2026-11.parquet",
        }
    }
    # the compiled pipeline itself, inline (with its kfp-kubernetes platform spec when it has one)
    sent = run["pipeline_spec"]
    sent_spec = sent.get("pipeline_spec", sent)
    assert sent_spec == _spec_of(TRAINING)
    for request in state.requests:
        assert request.headers.get("authorization") == f"Bearer {TOKEN}", request.path
    run_id = state.runs[0]["run_id"]
    assert f"Run details: {kfp_api.url}/#/runs/details/{run_id}" in out.splitlines()


def test_submit_reuses_an_existing_experiment_and_waits_for_the_run(kfp_api, capsys):
    kfp_api.state.experiments.append({"experiment_id": "experiment-existing", "display_name": "fraud", "namespace": ""})
    code, out, err = _run(
        capsys, "submit", "training", "--host", kfp_api.url, "--experiment", "fraud", "--wait", "--poll", "0.05"
    )
    assert code == 0, err
    writes = _writes(kfp_api)
    assert [r.path for r in writes] == ["/apis/v2beta1/runs"]
    assert writes[0].body["experiment_id"] == "experiment-existing"
    assert "finished: SUCCEEDED" in out


def test_submit_exits_1_when_the_waited_run_fails(kfp_api, capsys):
    kfp_api.state.run_state = "FAILED"
    code, out, _ = _run(capsys, "submit", "training", "--host", kfp_api.url, "--wait", "--poll", "0.05")
    assert code == 1
    assert "finished: FAILED" in out


def test_submit_with_upload_runs_the_uploaded_version(kfp_api, capsys):
    code, out, err = _run(capsys, "submit", "training", "--host", kfp_api.url, "--upload", "--no-cache")
    assert code == 0, err
    state = kfp_api.state
    run = _writes(kfp_api)[-1].body
    assert "pipeline_spec" not in run
    assert run["pipeline_version_reference"] == {
        "pipeline_id": state.pipelines[0]["pipeline_id"],
        "pipeline_version_id": state.versions[0]["pipeline_version_id"],
    }
    assert "Run details: " in out


def test_submit_in_multi_user_kubeflow_needs_a_namespace(capsys):
    state = FakeKfp(token=TOKEN, multi_user=True)
    with KfpServer(state) as server:
        code, _, err = _run(capsys, "submit", "training", "--host", server.url)
        assert code == 2
        assert "multi-user: pass --namespace" in err
        assert state.writes() == []
        code, _, err = _run(capsys, "submit", "training", "--host", server.url, "--namespace", "team-fraud")
    assert code == 0, err
    reads = [r for r in state.requests if r.path.endswith("/experiments") and r.method == "GET"]
    assert all(r.query.get("namespace") == "team-fraud" for r in reads)
    assert state.writes()[0].body == {"display_name": "kfops", "namespace": "team-fraud"}


# ------------------------------------------------------------------------------------------------ upload
def test_upload_creates_the_pipeline_then_versions_once_per_content(kfp_api, capsys, tmp_path):
    code, out, err = _run(capsys, "upload", "training", "--host", kfp_api.url)
    assert code == 0, err
    [first] = _writes(kfp_api)
    assert first.path == "/apis/v2beta1/pipelines/upload"
    assert first.query["name"] == "kfops-training"
    filename, content = first.body["files"]["uploadfile"]
    assert filename == "training.yaml"
    assert content == TRAINING.read_bytes()
    pipeline_id = kfp_api.state.pipelines[0]["pipeline_id"]
    first_version = kfp_api.state.versions[0]["pipeline_version_id"]
    assert f"Pipeline details: {kfp_api.url}/#/pipelines/details/{pipeline_id}/version/{first_version}" in out

    # the same pipeline, another file: a new version named <kfops version>-<content hash>
    changed = tmp_path / "training.yaml"
    changed.write_text(TRAINING.read_text().replace("Version and validate", "Version, then validate"))
    expected_version = read_package(changed).default_version
    code, out, err = _run(capsys, "upload", str(changed), "--host", kfp_api.url)
    assert code == 0, err
    second = _writes(kfp_api)[-1]
    assert second.path == "/apis/v2beta1/pipelines/upload_version"
    assert second.query == {
        "name": expected_version,
        "pipelineid": pipeline_id,
        "description": read_package(changed).description,
    }
    assert second.body["files"]["uploadfile"][1] == changed.read_bytes()
    assert "new version" in out

    # the same file again: nothing is written
    count = len(_writes(kfp_api))
    code, out, _ = _run(capsys, "upload", str(changed), "--host", kfp_api.url)
    assert code == 0
    assert len(_writes(kfp_api)) == count
    assert "already uploaded" in out
    assert f"/version/{kfp_api.state.versions[-1]['pipeline_version_id']}" in out


# ------------------------------------------------------------------------------------------------ schedule
def test_schedule_uploads_the_version_and_creates_a_cron_recurring_run(kfp_api, capsys):
    code, out, err = _run(
        capsys,
        "schedule",
        "training",
        "--host",
        kfp_api.url,
        "--cron",
        "0 0 3 * * *",
        "--name",
        "retrain-nightly",
        "-p",
        "data_uri=s3://kfops/incoming/latest.parquet",
    )
    assert code == 0, err
    state = kfp_api.state
    recurring = _writes(kfp_api)[-1]
    assert recurring.path == "/apis/v2beta1/recurringruns"
    assert recurring.body == {
        "display_name": "retrain-nightly",
        "experiment_id": state.experiments[0]["experiment_id"],
        "pipeline_version_reference": {
            "pipeline_id": state.pipelines[0]["pipeline_id"],
            "pipeline_version_id": state.versions[0]["pipeline_version_id"],
        },
        "runtime_config": {"parameters": {"data_uri": "s3://kfops/incoming/latest.parquet"}},
        "service_account": "kfops-pipeline-runner",
        "max_concurrency": 1,
        "trigger": {"cron_schedule": {"cron": "0 0 3 * * *"}},
        "mode": "ENABLE",
        "no_catchup": True,
    }
    link = f"{kfp_api.url}/#/recurringrun/details/{state.recurring_runs[0]['recurring_run_id']}"
    assert f"Recurring run details: {link}" in out


def test_schedule_every_interval_with_catchup(kfp_api, capsys):
    code, _, err = _run(
        capsys, "schedule", "training", "--host", kfp_api.url, "--every", "6h", "--catchup", "--max-concurrency", "2"
    )
    assert code == 0, err
    body = _writes(kfp_api)[-1].body
    assert body["trigger"] == {"periodic_schedule": {"interval_second": 21600}}
    assert body["no_catchup"] is False
    assert body["max_concurrency"] == 2


def test_schedule_the_continuous_training_pipeline(kfp_api, capsys):
    """The continuous-training pipeline runs as a recurring run; its required inputs are checked first."""
    code, _, err = _run(capsys, "schedule", "continuous-training", "--host", kfp_api.url, "--every", "1d")
    assert code == 2
    assert "pipeline kfops-continuous-training needs current_uri, data_uri" in err
    assert kfp_api.state.requests == []
    code, out, err = _run(
        capsys,
        "schedule",
        "continuous-training",
        "--host",
        kfp_api.url,
        "--every",
        "1d",
        "-p",
        "current_uri=s3://kfops/payload-logs/fraud-detector",
        "-p",
        "data_uri=s3://kfops/incoming/latest.parquet",
    )
    assert code == 0, err
    body = _writes(kfp_api)[-1].body
    assert body["display_name"] == "kfops-continuous-training"
    assert body["trigger"] == {"periodic_schedule": {"interval_second": 86400}}
    assert body["runtime_config"]["parameters"] == {
        "current_uri": "s3://kfops/payload-logs/fraud-detector",
        "data_uri": "s3://kfops/incoming/latest.parquet",
    }
    assert "Recurring run details: " in out


def test_schedule_refuses_a_name_already_scheduled_before_uploading(kfp_api, capsys):
    assert _run(capsys, "schedule", "training", "--host", kfp_api.url, "--every", "1d")[0] == 0
    count = len(_writes(kfp_api))
    code, _, err = _run(capsys, "schedule", "training", "--host", kfp_api.url, "--every", "1d")
    assert code == 2
    assert "recurring run named 'kfops-training' already exists" in err
    assert len(_writes(kfp_api)) == count


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cron", "0 3 * * *"], "6 fields, seconds first; did you mean '0 0 3 * * *'"),
        (["--every", "30s"], "at least 60 s apart"),
        (["--every", "soon"], "expected a duration"),
    ],
)
def test_schedule_rejects_bad_triggers_before_any_request(kfp_api, capsys, flags, message):
    code, _, err = _run(capsys, "schedule", "training", "--host", kfp_api.url, *flags)
    assert code == 2
    assert message in err
    assert kfp_api.state.requests == []


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-p", "epoch=3"], "has no parameter 'epoch'; its parameters:"),
        (["-p", "epochs=ten"], "parameter 'epochs' is NUMBER_INTEGER: cannot use 'ten'"),
        (["-p", "deploy=maybe"], "parameter 'deploy' is BOOLEAN"),
        (["-p", "hidden_sizes=[32,"], "parameter 'hidden_sizes' is LIST: '[32,' is not JSON"),
        (["-p", "epochs"], "expected NAME=VALUE"),
    ],
)
def test_bad_arguments_stop_before_any_request(kfp_api, capsys, argv, message):
    code, _, err = _run(capsys, "submit", "training", "--host", kfp_api.url, *argv)
    assert code == 2
    assert message in err
    assert kfp_api.state.requests == []


def test_params_file_values_are_typed_and_flags_win(kfp_api, capsys, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("epochs: 5\nthreshold: 0.4\nnumeric_features: [amount, age]\n")
    code, _, err = _run(
        capsys, "submit", "training", "--host", kfp_api.url, "--params-file", str(params), "-p", "epochs=7"
    )
    assert code == 0, err
    assert _writes(kfp_api)[-1].body["runtime_config"]["parameters"] == {
        "epochs": 7,
        "threshold": 0.4,
        "numeric_features": ["amount", "age"],
    }


def test_pipeline_that_is_not_a_compiled_pipeline(kfp_api, capsys, tmp_path):
    not_a_pipeline = tmp_path / "deployment.yaml"
    not_a_pipeline.write_text("apiVersion: apps/v1\nkind: Deployment\n")
    code, _, err = _run(capsys, "submit", str(not_a_pipeline), "--host", kfp_api.url)
    assert code == 2 and "is not a compiled Kubeflow pipeline" in err
    code, _, err = _run(capsys, "submit", "no-such-pipeline", "--host", kfp_api.url)
    assert code == 2 and "neither a file nor one of the suite's pipelines (" in err and "training" in err
    assert kfp_api.state.requests == []


@pytest.mark.parametrize("host", ["localhost:8080", "ftp://kfp.example.com", ""])
def test_host_must_be_an_http_url(capsys, host):
    code, _, err = _run(capsys, "submit", "training", "--host", host)
    assert code == 2
    assert "is not a URL: give the Kubeflow Pipelines endpoint" in err


def test_unreachable_host_is_a_clear_error_at_once(capsys):
    port = free_port()  # nothing listens there
    started = time.perf_counter()
    code, out, err = _run(capsys, "submit", "training", "--host", f"http://127.0.0.1:{port}")
    assert code == 2
    assert f"cannot reach Kubeflow Pipelines at http://127.0.0.1:{port}" in err
    assert "Connection refused" in err
    assert out == ""
    assert time.perf_counter() - started < 5, "no retries on the reachability check"


def test_rejected_token_stops_before_anything_is_created(kfp_api, capsys, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "expired-token")
    code, out, err = _run(capsys, "submit", "training", "--host", kfp_api.url)
    assert code == 2
    assert "answered 401 Unauthorized: the token was rejected" in err
    assert _writes(kfp_api) == [] and out == ""
    monkeypatch.delenv(TOKEN_ENV)
    code, _, err = _run(capsys, "upload", "training", "--host", kfp_api.url)
    assert code == 2
    assert f"it needs a token: set {TOKEN_ENV} or pass --token-file" in err
    assert _writes(kfp_api) == []


def test_token_file(kfp_api, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_ENV)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    code, _, err = _run(capsys, "upload", "training", "--host", kfp_api.url, "--token-file", str(token_file))
    assert code == 0, err
    assert {r.headers.get("authorization") for r in kfp_api.state.requests} == {f"Bearer {TOKEN}"}
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, _, err = _run(capsys, "upload", "training", "--host", kfp_api.url, "--token-file", str(empty))
    assert code == 2 and "is empty" in err
    code, _, err = _run(capsys, "upload", "training", "--host", kfp_api.url, "--token-file", str(tmp_path / "nope"))
    assert code == 2 and "cannot read the token file" in err


def test_login_page_in_front_of_the_api(capsys):
    state = FakeKfp(login_redirect=True)
    with KfpServer(state) as server:
        code, _, err = _run(capsys, "submit", "training", "--host", server.url)
    assert code == 2
    assert "redirected to /dex/auth" in err and "needs a token" in err
    assert [r.path for r in state.requests] == ["/apis/v2beta1/healthz"]


def test_run_body_names_the_cluster_credentials_from_kubernetes_objects(kfp_api, capsys):
    """What reaches the backend tells every step's pod to take the S3 credentials from Secret kfops-s3 and the
    endpoints from ConfigMap kfops-platform (kfp-kubernetes), and holds no credential itself."""
    assert _run(capsys, "submit", "training", "--host", kfp_api.url)[0] == 0
    sent = _writes(kfp_api)[-1].body["pipeline_spec"]
    executors = sent["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(sent["pipeline_spec"]["deploymentSpec"]["executors"])
    for name, config in executors.items():
        [secret] = [s for s in config["secretAsEnv"] if s["secretName"] == "kfops-s3"]
        assert secret["keyToEnv"] == [
            {"secretKey": "AWS_ACCESS_KEY_ID", "envVar": "AWS_ACCESS_KEY_ID"},
            {"secretKey": "AWS_SECRET_ACCESS_KEY", "envVar": "AWS_SECRET_ACCESS_KEY"},
        ], name
        [config_map] = [c for c in config["configMapAsEnv"] if c["configMapName"] == "kfops-platform"]
        assert {e["envVar"] for e in config_map["keyToEnv"]} >= {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL"}
