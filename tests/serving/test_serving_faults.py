"""Serving faults, each injected into a real predictor process (``python -m kfops.serving``) under load:

- the payload log's disk full (the kernel's ENOSPC, tests/serving/enospc_site) and its S3 endpoint refusing
  connections (tests/fault_proxy.py in front of moto): every request still answered 200 with the model's answer,
  each lost record counted in ``model_payload_log_dropped_total``, the alert rule on it firing in a real
  Prometheus, and logging back once the sink is;
- SIGKILL: every request answered more than one flush interval (``--payload-log-flush-seconds``) before the kill is
  in the payload log, and no file in it is half written;
- SIGTERM: every answered request is in the payload log.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.components.canary_env import PrometheusServer
from tests.fault_proxy import FaultProxy
from tests.tools import require

from .fault_env import (
    ENOSPC_SITE,
    SERVED_NAME,
    Answer,
    Load,
    MotoServer,
    PredictorProcess,
    leftover_temp_files,
    payload_records,
)
from .helpers import v1_objects

pytestmark = pytest.mark.slow

RULES = Path(__file__).resolve().parents[2] / "manifests" / "monitoring" / "prometheusrule.yaml"
DROPPED = "model_payload_log_dropped_total"
OUTAGE_SECONDS = 8.0


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what} did not happen within {timeout} s")


@pytest.fixture(scope="module")
def load_rows(registered_model):
    """Forty raw rows for the load, and what the pyfunc model answers for each."""
    rows = registered_model.rows.head(40)
    expected = registered_model.expected(rows)
    return v1_objects(rows), expected["prediction"].tolist(), expected["probability"].to_numpy()


def assert_model_answers(answers: list[Answer], load_rows) -> None:
    """Every answer is what the model itself gives for that row: the fault changed nothing callers see."""
    _, labels, probabilities = load_rows
    for answer in answers:
        (prediction,) = answer.body["predictions"]
        assert prediction["prediction"] == labels[answer.row], answer
        assert np.isclose(prediction["probability"], probabilities[answer.row], atol=1e-6), answer


def assert_logged_as_answered(records: list[dict], answers: list[Answer]) -> None:
    """Each record is one answered request, logged once, with the prediction its caller got."""
    by_id = {a.request_id: a for a in answers}
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids)), "a request logged twice"
    for record in records:
        answer = by_id.get(record["request_id"])
        assert answer is not None, f"a record of a request nobody got an answer to: {record['request_id']}"
        assert record["prediction"] == answer.body["predictions"][0]["prediction"], record


def drops_alert_expression() -> str:
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == "KfopsPayloadLogDrops"]
    return rule["expr"]


def alerting_models(prometheus: PrometheusServer, expression: str) -> set[str]:
    answer = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expression}, timeout=5).json()
    return {series["metric"].get("model", "") for series in answer["data"]["result"]}


# ------------------------------------------------------------------------------------------------ disk full
def test_a_full_payload_log_disk_costs_records_never_answers_and_is_counted_alerted_and_cleaned_up(
    registered_model, load_rows, tmp_path
):
    prometheus_bin = require("prometheus")
    m = registered_model
    sink, switch = tmp_path / "payloads", tmp_path / "disk-is-full"
    sink.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(ENOSPC_SITE), os.environ.get("PYTHONPATH", "")) if p),
        "KFOPS_TEST_ENOSPC_DIR": str(sink),
        "KFOPS_TEST_ENOSPC_SWITCH": str(switch),
    }
    args = ["--payload-log", str(sink), "--payload-log-flush-seconds", "0.5", "--max-wait-ms", "1"]
    predictor = PredictorProcess(f"{m.name}@champion", m.tracking_uri, tmp_path / "server.log", args, env)
    prometheus = None
    try:
        predictor.wait_ready()
        targets = {"predictor": f"127.0.0.1:{predictor.port}"}
        prometheus = PrometheusServer(prometheus_bin, tmp_path / "prometheus", targets)
        expression = drops_alert_expression()
        with Load(predictor.base, load_rows[0], threads=3, pause_s=0.002) as load:
            load.wait_for(100)
            wait_until(lambda: payload_records(str(sink)), 20, "a first payload-log file")
            prometheus.wait_targets_up(["predictor"])
            assert alerting_models(prometheus, expression) == set()  # a healthy sink: no alert

            switch.touch()  # the disk is full from here on
            wait_until(lambda: predictor.metric(DROPPED, {"model": SERVED_NAME}) >= 50, 30, "drops counted")
            load.wait_for(200)
            # The alert's own expression (manifests/monitoring/prometheusrule.yaml), on what Prometheus scraped.
            firing = wait_until(lambda: alerting_models(prometheus, expression), 30, "KfopsPayloadLogDrops to fire")
            assert firing == {SERVED_NAME}

            switch.unlink()  # space again: the writer thread is still there and logs again
            written_before = len(payload_records(str(sink)))
            wait_until(lambda: len(payload_records(str(sink))) > written_before + 50, 30, "logging to resume")
            time.sleep(1.0)  # a write started on the full disk has failed and been counted by now
            dropped = predictor.metric(DROPPED, {"model": SERVED_NAME})
        predictor.stop()
        assert predictor.proc.returncode == 0, predictor.tail()
    finally:
        if prometheus is not None:
            prometheus.stop()
        predictor.stop()

    assert load.statuses().keys() == {200}, load.statuses()  # no 5xx, no refused connection
    answers = load.ok()
    assert_model_answers(answers, load_rows)
    records = payload_records(str(sink))
    assert_logged_as_answered(records, answers)
    # Every answered request is either in the log or counted as dropped: nothing lost silently.
    assert dropped > 0 and len(records) + dropped == len(answers), (len(records), dropped, len(answers))
    assert "No space left on device" in predictor.log.read_text(errors="replace")
    assert leftover_temp_files(sink) == []  # failed writes took their partial files with them


# ------------------------------------------------------------------------------------------------ S3 down
def test_payload_log_s3_refusing_connections_costs_records_never_answers_and_recovers(
    registered_model, load_rows, tmp_path, monkeypatch
):
    m = registered_model
    moto = MotoServer()
    proxy = FaultProxy(moto.port).start()
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in {**credentials, "KFOPS_S3_ENDPOINT_URL": moto.url}.items():
        monkeypatch.setenv(name, value)  # this process reads moto directly, past the proxy
    sink = "s3://payloads/fault"
    env = {**credentials, "KFOPS_S3_ENDPOINT_URL": proxy.endpoint}
    args = ["--payload-log", sink, "--payload-log-flush-seconds", "0.5", "--max-wait-ms", "1"]
    predictor = PredictorProcess(f"{m.name}@champion", m.tracking_uri, tmp_path / "server.log", args, env)
    try:
        predictor.wait_ready()
        with Load(predictor.base, load_rows[0], threads=3, pause_s=0.002) as load:
            load.wait_for(100)
            wait_until(lambda: payload_records(sink), 30, "a first payload-log object")

            proxy.refuse_for(OUTAGE_SECONDS, "S3 down")  # connection refused, then back on the same port
            refused_at = time.time()
            wait_until(lambda: predictor.metric(DROPPED, {"model": SERVED_NAME}) >= 50, 30, "drops counted")
            load.wait_for(200)
            wait_until(lambda: not proxy.is_refusing(), OUTAGE_SECONDS + 5, "the outage to end")
            during = [a for a in load.ok() if refused_at < a.answered_at < refused_at + OUTAGE_SECONDS]
            written_before = len(payload_records(sink))
            wait_until(lambda: len(payload_records(sink)) > written_before + 50, 30, "logging to resume")
            time.sleep(1.5)  # a write started while S3 was down has failed and been counted by now
            dropped = predictor.metric(DROPPED, {"model": SERVED_NAME})
        predictor.stop()
        assert predictor.proc.returncode == 0, predictor.tail()
        records = payload_records(sink)
    finally:
        predictor.stop()
        proxy.stop()
        moto.stop()

    assert load.statuses().keys() == {200}, load.statuses()
    answers = load.ok()
    assert len(during) >= 100
    assert_model_answers(answers, load_rows)
    assert_logged_as_answered(records, answers)
    assert dropped > 0 and len(records) + dropped == len(answers), (len(records), dropped, len(answers))
    assert proxy.endpoint.removeprefix("http://") in predictor.log.read_text(errors="replace")  # the warning names it


# ------------------------------------------------------------------------------------------------ SIGKILL
def test_sigkill_under_load_loses_only_the_last_flush_interval_of_payload_records(
    registered_model, load_rows, tmp_path
):
    m = registered_model
    flush = 1.0
    sink = tmp_path / "payloads"
    args = ["--payload-log", str(sink), "--payload-log-flush-seconds", str(flush), "--max-wait-ms", "1"]
    predictor = PredictorProcess(f"{m.name}@champion", m.tracking_uri, tmp_path / "server.log", args)
    try:
        predictor.wait_ready()
        with Load(predictor.base, load_rows[0], threads=4) as load:
            load.wait_for(50)
            time.sleep(3 * flush)
            killed_at = time.time()
            predictor.signal(signal.SIGKILL)
            assert predictor.wait(30) == -signal.SIGKILL
    finally:
        predictor.stop()

    answers = load.ok()
    assert_model_answers(answers, load_rows)
    records = payload_records(str(sink))  # fails on a half-written file
    assert_logged_as_answered(records, answers)
    logged = {r["request_id"] for r in records}
    due = [a for a in answers if a.answered_at < killed_at - flush]
    missing = [a.request_id for a in due if a.request_id not in logged]
    recent = [a for a in answers if a.answered_at >= killed_at - flush]
    assert len(due) >= 100 and recent, (len(due), len(recent))  # load ran right up to the kill
    assert missing == [], f"{len(missing)} of {len(due)} requests answered over {flush} s before the kill are lost"
    lost = len(answers) - len(records)
    assert lost <= len(recent), (lost, len(recent))
    # A write the kill interrupted leaves at most its one temporary file, which readers skip.
    assert len(leftover_temp_files(sink)) <= 1


# ------------------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_under_load_logs_every_answered_request(registered_model, load_rows, tmp_path):
    m = registered_model
    sink = tmp_path / "payloads"
    # The default flush interval (2 s): on SIGTERM the log is written out whatever the rows' age.
    args = ["--payload-log", str(sink), "--max-wait-ms", "1"]
    predictor = PredictorProcess(f"{m.name}@champion", m.tracking_uri, tmp_path / "server.log", args)
    try:
        predictor.wait_ready()
        with Load(predictor.base, load_rows[0], threads=4) as load:
            load.wait_for(50)
            time.sleep(1.0)
            terminated_at = time.time()
            predictor.signal(signal.SIGTERM)
            assert predictor.wait(60) == 0, predictor.tail()
    finally:
        predictor.stop()

    statuses = load.statuses()
    assert not [s for s in statuses if s >= 500], statuses  # refused connections (-1) after the stop are fine
    answers = load.ok()
    assert_model_answers(answers, load_rows)
    assert max(a.answered_at for a in answers) >= terminated_at - 0.2  # load was still running at the signal
    records = payload_records(str(sink))
    assert_logged_as_answered(records, answers)
    assert {r["request_id"] for r in records} == {a.request_id for a in answers}
    assert leftover_temp_files(sink) == []
