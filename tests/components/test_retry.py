"""The one retry policy (components/retry.py) against moto's S3 server behind a proxy that refuses connections:
a pipeline step rides out a short outage, counting and logging each retry; outside a step, and past the budget,
the call stops with an error that names the endpoint."""

from __future__ import annotations

import logging
import time

import pytest

from kfops.components import retry, storage
from kfops.components.contracts import KfopsError
from tests.fault_proxy import FaultProxy


@pytest.fixture
def proxied_s3(s3_env, monkeypatch):
    """The session's moto S3 server, reached through a FaultProxy."""
    port = int(s3_env.rsplit(":", 1)[1])
    proxy = FaultProxy(port).start()
    monkeypatch.setenv("KFOPS_S3_ENDPOINT_URL", proxy.endpoint)
    storage.write_bytes("s3://retry/seed.txt", b"seed")  # the bucket exists before any outage
    retry.configure()
    yield proxy
    proxy.stop()


@retry.pipeline_step
def _write_in_a_step(uri: str, data: bytes) -> None:
    storage.write_bytes(uri, data)


def test_a_pipeline_step_rides_out_a_short_outage_counting_each_retry(proxied_s3, caplog):
    before = retry.counts().get(proxied_s3.endpoint, 0)
    proxied_s3.refuse_for(1.5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kfops.components.retry"):
        _write_in_a_step("s3://retry/after-outage.txt", b"whole")
    took = time.monotonic() - started
    assert storage.read_bytes("s3://retry/after-outage.txt") == b"whole"
    retries = retry.counts()[proxied_s3.endpoint] - before
    # Refused at once, retried at once (refused again), then 6 s later: through.
    assert retries == 2 and 5.5 < took < 12, (retries, took)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(retry.LOG_PREFIX)]
    assert len(lines) == 2
    assert f"attempt 2 of 5 to {proxied_s3.endpoint}" in lines[0] and "next in 0.0 s" in lines[0]
    assert "attempt 3 of 5" in lines[1] and "next in 6." in lines[1]


def test_outside_a_step_an_outage_fails_fast_naming_the_endpoint(proxied_s3):
    before = retry.counts().get(proxied_s3.endpoint, 0)
    proxied_s3.refuse_for(30)
    started = time.monotonic()
    with pytest.raises(KfopsError, match=rf"cannot reach S3 endpoint {proxied_s3.endpoint} for s3://retry/x\.txt"):
        storage.write_bytes("s3://retry/x.txt", b"x")
    assert time.monotonic() - started < 5
    assert retry.counts()[proxied_s3.endpoint] - before == 2


def test_a_step_gives_up_once_the_next_attempt_would_pass_the_budget(proxied_s3, monkeypatch):
    monkeypatch.setattr(retry, "BUDGET_S", 4.0)
    proxied_s3.refuse_for(30)
    started = time.monotonic()
    with pytest.raises(KfopsError, match=rf"cannot reach S3 endpoint {proxied_s3.endpoint}"):
        _write_in_a_step("s3://retry/y.txt", b"y")
    assert time.monotonic() - started < 4  # the third attempt would have come 6 s later


def test_fewer_attempts_are_asked_for_by_name(proxied_s3, monkeypatch):
    monkeypatch.setenv(retry.ATTEMPTS_VARIABLE, "1")
    before = retry.counts().get(proxied_s3.endpoint, 0)
    proxied_s3.refuse_for(30)
    with pytest.raises(KfopsError, match="cannot reach S3 endpoint"):
        _write_in_a_step("s3://retry/z.txt", b"z")
    assert retry.counts().get(proxied_s3.endpoint, 0) == before
    monkeypatch.setenv(retry.ATTEMPTS_VARIABLE, "9")
    with pytest.raises(KfopsError, match=r"KFOPS_RETRY_MAX_ATTEMPTS='9': expected a whole number from 1 to 5"):
        retry.max_attempts()


def test_configure_sets_mlflow_and_boto3_unless_already_set(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    import os

    from mlflow.utils import request_utils

    retry.configure()

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4" and os.environ["AWS_MAX_ATTEMPTS"] == "2"
    assert os.environ["AWS_RETRY_MODE"] == "standard"
    assert request_utils.Retry is type(retry.counting_retry())  # MLflow's REST session counts its retries


def test_an_unreachable_artifact_store_is_named_and_other_errors_pass_through(monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    from kfops.components.tracking import artifact_store_errors

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://minio.kfops:9000")
    named = r"train: uploading the model: the artifact store \(S3 endpoint http://minio\.kfops:9000\) could not be"
    with pytest.raises(KfopsError, match=named), artifact_store_errors("train: uploading the model"):
        raise EndpointConnectionError(endpoint_url="http://minio.kfops:9000/mlflow/1/x")
    with pytest.raises(ValueError, match="not a transport error"), artifact_store_errors("x"):
        raise ValueError("not a transport error")


def test_a_kfp_task_process_is_a_pipeline_step(monkeypatch):
    import sys

    retry._kfp_task_process.cache_clear()
    try:
        assert not retry.in_pipeline_step()  # pytest's own process
        retry._kfp_task_process.cache_clear()
        task = ["/venv/lib/python3.11/site-packages/kfp/dsl/executor_main.py", "--executor_input", "{}"]
        monkeypatch.setattr(sys, "argv", task)  # how KFP starts every lightweight Python step
        assert retry.in_pipeline_step() and retry.counting_retry().total == retry.MAX_ATTEMPTS - 1
        retry._kfp_task_process.cache_clear()
        monkeypatch.setattr(sys, "argv", ["kfp.dsl.executor_main", "--executor_input", "{}"])  # a forked task
        assert retry.in_pipeline_step()
    finally:
        retry._kfp_task_process.cache_clear()


def test_configure_imports_no_mlflow_and_patches_it_once_it_is_imported():
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from kfops.components import retry\n"
        "retry.configure()\n"
        "assert 'mlflow' not in sys.modules, 'configure imported MLflow'\n"
        "from mlflow.utils import request_utils\n"
        "assert request_utils.Retry is not type(retry.counting_retry())\n"
        "retry.configure()\n"
        "assert request_utils.Retry is type(retry.counting_retry())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
