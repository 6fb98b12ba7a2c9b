"""Raw records at the endpoint: rows of the training file, ids, timestamp and target included, through V1 objects,
V2 REST and Triton's own HTTP client, on a real model; the ids land in the payload log beside the features."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from kfops.serving.app import build_app
from kfops.serving.payload_log import PayloadLogger
from kfops.serving.predictor import TabularPredictor
from kfops.serving.validation import logged_name

from .helpers import clean, v2_inputs
from .test_server import NAME, free_port, wait_ready

V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"
IDS = ("transaction_id", "customer_id", "event_time")  # what the training file had besides features and target


@pytest.fixture(scope="module")
def raw(prepared, registered_model) -> pd.DataFrame:
    """Rows of the training file as a caller holds them: every column, the timestamp as ISO text."""
    frame = pd.read_parquet(prepared["test_raw"]).reset_index(drop=True)
    assert set(IDS) <= set(registered_model.spec.non_feature_columns)
    return frame.assign(event_time=frame["event_time"].map(lambda t: t.isoformat()))


def raw_objects(frame: pd.DataFrame) -> list[dict]:
    return [{k: clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def serve(registered_model, sink: Path, **options) -> tuple[TabularPredictor, PayloadLogger]:
    logger = PayloadLogger(str(sink), NAME, flush_seconds=0.05)
    predictor = TabularPredictor(
        NAME,
        f"{registered_model.name}@champion",
        registered_model.tracking_uri,
        max_wait_ms=1,
        payload_logger=logger,
        **options,
    )
    predictor.load()
    return predictor, logger


def logged(sink: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(sink.rglob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def served(registered_model, tmp_path_factory):
    sink = tmp_path_factory.mktemp("raw-payloads")
    predictor, logger = serve(registered_model, sink)
    with TestClient(build_app(predictor), raise_server_exceptions=False) as client:
        yield client, logger, sink
    predictor.stop()


# ------------------------------------------------------------------------------------------------ V1 and V2 REST
def test_v1_raw_rows_are_scored_on_their_features_and_logged_with_their_ids(served, raw, registered_model):
    client, logger, sink = served
    m = registered_model
    rows = raw.head(6)
    body = raw_objects(rows)
    assert {"transaction_id", "event_time", "customer_id", "is_fraud"} <= set(body[0])
    r = client.post(V1, json={"instances": body}, headers={"x-request-id": "raw-v1"})
    assert r.status_code == 200, r.text
    expected = m.expected(rows[m.spec.feature_names])
    assert [p["prediction"] for p in r.json()["predictions"]] == expected["prediction"].tolist()
    assert np.allclose([p["probability"] for p in r.json()["predictions"]], expected["probability"], atol=1e-6)

    assert logger.flush(timeout=10)
    records = [rec for rec in logged(sink) if rec["request_id"] == "raw-v1"]
    assert [rec["transaction_id"] for rec in records] == rows["transaction_id"].tolist()
    assert [rec["customer_id"] for rec in records] == rows["customer_id"].tolist()
    assert [rec["event_time"] for rec in records] == rows["event_time"].tolist()
    assert all("is_fraud" not in rec for rec in records)  # the target is accepted and ignored
    assert records[0]["amount"] == rows["amount"].iloc[0] and records[0]["prediction"] == expected["prediction"][0]
    # The ids sit between the log's own fields and the features.
    keys = list(records[0])
    assert keys.index("log_format") < keys.index("transaction_id") < keys.index(m.spec.feature_names[0])


def test_rows_may_mix_raw_and_bare_and_a_bare_request_logs_no_id_columns(served, raw, registered_model):
    client, logger, sink = served
    rows = raw.iloc[10:13]
    body = raw_objects(rows)
    body[1] = {k: body[1][k] for k in registered_model.spec.feature_names}  # only the features
    r = client.post(V1, json={"instances": body}, headers={"x-request-id": "mixed"})
    assert r.status_code == 200, r.text
    bare = raw_objects(rows[registered_model.spec.feature_names])
    assert client.post(V1, json={"instances": bare}, headers={"x-request-id": "bare"}).status_code == 200
    assert logger.flush(timeout=10)
    mixed = [rec for rec in logged(sink) if rec["request_id"] == "mixed"]
    assert [rec["transaction_id"] for rec in mixed] == [
        rows["transaction_id"].iloc[0],
        None,
        rows["transaction_id"].iloc[2],
    ]
    assert all(not set(IDS) & set(rec) for rec in logged(sink) if rec["request_id"] == "bare")


def test_v2_rest_takes_id_inputs_bytes_or_numeric_and_logs_them(served, raw, registered_model):
    client, logger, sink = served
    m = registered_model
    rows = raw.iloc[20:24]
    inputs = v2_inputs(m.spec, rows)
    inputs += [
        {"name": "transaction_id", "datatype": "BYTES", "shape": [4], "data": rows["transaction_id"].tolist()},
        {"name": "customer_id", "datatype": "INT64", "shape": [4, 1], "data": [[int(v)] for v in rows["customer_id"]]},
        {"name": "event_time", "datatype": "BYTES", "shape": [4], "data": rows["event_time"].tolist()},
        {"name": "is_fraud", "datatype": "INT64", "shape": [4], "data": rows["is_fraud"].tolist()},
    ]
    r = client.post(V2, json={"id": "raw-v2", "inputs": inputs})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["prediction"]["data"] == m.expected(rows[m.spec.feature_names])["prediction"].tolist()
    assert logger.flush(timeout=10)
    records = [rec for rec in logged(sink) if rec["request_id"] == "raw-v2"]
    assert [rec["transaction_id"] for rec in records] == rows["transaction_id"].tolist()
    assert [rec["customer_id"] for rec in records] == rows["customer_id"].tolist()
    assert all("is_fraud" not in rec for rec in records)

    short = [*inputs[:-4], {**inputs[-4], "shape": [1], "data": ["tx-1"]}]
    bad = client.post(V2, json={"inputs": short})
    assert bad.status_code == 400 and "input 'transaction_id' has 1 rows" in bad.json()["error"]
    wrong_type = [*inputs[:-4], {**inputs[-4], "datatype": "FP16x"}]
    bad = client.post(V2, json={"inputs": wrong_type})
    assert bad.status_code == 400 and "logged, not scored" in bad.json()["error"]


def test_a_field_the_training_data_never_had_is_a_400_naming_it(served, raw):
    client, _, _ = served
    row = {**raw_objects(raw.head(1))[0], "transacton_id": "tx-typo"}
    r = client.post(V1, json={"instances": [row]})
    assert r.status_code == 400
    assert "instances[0]: unknown field(s) ['transacton_id']" in r.json()["error"]
    assert "--allow-extra-fields" in r.json()["error"]
    nested = {**raw_objects(raw.head(1))[0], "transaction_id": {"id": 1}}
    r = client.post(V1, json={"instances": [nested]})
    assert r.status_code == 400 and "field 'transaction_id' must be a string, number, boolean or null" in r.text


def test_allow_extra_fields_accepts_and_ignores_unknown_fields(registered_model, raw, tmp_path):
    predictor, _ = serve(registered_model, tmp_path, allow_extra_fields=True)
    try:
        with TestClient(build_app(predictor), raise_server_exceptions=False) as client:
            row = {**raw_objects(raw.head(1))[0], "transacton_id": "tx-typo", "note": "hello"}
            r = client.post(V1, json={"instances": [row]}, headers={"x-request-id": "extra"})
            assert r.status_code == 200, r.text
            v2 = v2_inputs(registered_model.spec, raw.head(1))
            v2.append({"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]})
            assert client.post(V2, json={"inputs": v2}).status_code == 200
    finally:
        predictor.stop()
    (record, _) = logged(tmp_path)
    assert record["transaction_id"] == raw["transaction_id"].iloc[0]
    assert "transacton_id" not in record and "note" not in record  # accepted, never logged


def test_a_raw_column_named_like_a_log_field_is_logged_under_a_prefix():
    assert logged_name("timestamp") == "input_timestamp" and logged_name("request_id") == "input_request_id"
    assert logged_name("transaction_id") == "transaction_id"


# ------------------------------------------------------------------------------------------------ tritonclient
def test_tritonclient_http_sends_raw_rows_to_a_real_server(registered_model, raw, tmp_path):
    """Triton's own HTTP client (binary tensors by default) against `python -m kfops.serving` on 127.0.0.1."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    m = registered_model
    port = free_port()
    sink = tmp_path / "payloads"
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": m.tracking_uri, "KFOPS_PAYLOAD_LOG_SALT": "test-salt"}
    command = [sys.executable, "-m", "kfops.serving", "--model", f"{m.name}@champion", "--name", NAME]
    command += ["--host", "127.0.0.1", "--port", str(port), "--max-wait-ms", "1", "--payload-log", str(sink)]
    command += ["--payload-log-hash", "customer_id", "--payload-log-retention-days", "30"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    categorical = [c.name for c in m.spec.columns if c.kind == "categorical"]
    rows = raw.dropna(subset=categorical).iloc[:5]  # binary BYTES tensors carry no null
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            assert client.is_model_ready(NAME)

            def tensors(frame: pd.DataFrame, binary: bool) -> list:
                out = []
                for col in m.spec.columns:
                    if col.kind == "numeric":
                        array = frame[col.name].to_numpy(dtype=np.float64, na_value=np.nan)
                        tensor = httpclient.InferInput(col.name, [len(frame)], "FP64")
                    else:
                        array = np.array([str(v).encode() for v in frame[col.name]], dtype=np.object_)
                        tensor = httpclient.InferInput(col.name, [len(frame)], "BYTES")
                    tensor.set_data_from_numpy(array, binary_data=binary)
                    out.append(tensor)
                ids = httpclient.InferInput("transaction_id", [len(frame)], "BYTES")
                ids.set_data_from_numpy(np.array(frame["transaction_id"].tolist(), dtype=np.object_), binary)
                customers = httpclient.InferInput("customer_id", [len(frame)], "INT64")
                customers.set_data_from_numpy(frame["customer_id"].to_numpy(dtype=np.int64), binary_data=binary)
                return [*out, ids, customers]

            expected = m.expected(rows[m.spec.feature_names])
            for binary, request_id in ((True, "triton-binary"), (False, "triton-json")):
                result = client.infer(NAME, tensors(rows, binary), request_id=request_id)
                labels = [v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("prediction")]
                assert labels == expected["prediction"].tolist()
                assert np.allclose(result.as_numpy("probability"), expected["probability"], atol=1e-6)
            typo = tensors(rows, True)
            typo[-2] = httpclient.InferInput("transacton_id", [len(rows)], "BYTES")
            typo[-2].set_data_from_numpy(np.array([b"x"] * len(rows), dtype=np.object_))
            with pytest.raises(InferenceServerException, match=r"unknown input\(s\) \['transacton_id'\]"):
                client.infer(NAME, typo)
        finally:
            client.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
    records = [json.loads(line) for f in sink.rglob("*.jsonl") for line in f.read_text().splitlines()]
    for request_id in ("triton-binary", "triton-json"):
        got = [r for r in records if r["request_id"] == request_id]
        assert [r["transaction_id"] for r in got] == rows["transaction_id"].tolist()
        # customer_id hashed by the server (--payload-log-hash): the same id, the same salted hash
        from kfops.components.records import pseudonymize

        assert [r["customer_id"] for r in got] == [pseudonymize(int(v), b"test-salt") for v in rows["customer_id"]]
