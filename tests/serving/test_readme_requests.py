"""The request bodies serving/README.md shows for the default model, sent to a real predictor (in-process app):
a newcomer copying them gets answers of the documented shape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kfops.serving.app import build_app
from kfops.serving.payload_log import PayloadLogger
from kfops.serving.predictor import TabularPredictor

README = Path(__file__).resolve().parents[2] / "serving" / "README.md"
NAME = "fraud-detector"


def documented(kind: str) -> dict:
    """The JSON block after the ``<!-- KIND -->`` marker (request: v1, response: v2, ...)."""
    match = re.search(rf"<!-- {re.escape(kind)} -->\n```json\n(.*?)\n```", README.read_text(), re.S)
    assert match, f"serving/README.md has no JSON block marked <!-- {kind} -->"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def served(registered_model, tmp_path_factory):
    sink = tmp_path_factory.mktemp("readme-payloads")
    logger = PayloadLogger(str(sink), NAME, flush_seconds=0.05)
    predictor = TabularPredictor(
        NAME, f"{registered_model.name}@champion", registered_model.tracking_uri, payload_logger=logger
    )
    predictor.load()
    with TestClient(build_app(predictor), raise_server_exceptions=False) as test_client:
        yield test_client, logger, sink
    predictor.stop()


@pytest.fixture(scope="module")
def client(served):
    return served[0]


def _shape(value):
    """The JSON's structure: keys and types, values left out."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def test_the_documented_features_are_the_default_models(registered_model):
    body = documented("request: v1")
    for row in body["instances"]:
        assert list(row) == registered_model.spec.feature_names
    assert [i["name"] for i in documented("request: v2")["inputs"]] == registered_model.spec.feature_names


def test_the_v1_body_is_answered_as_documented(client):
    answer = client.post(f"/v1/models/{NAME}:predict", json=documented("request: v1"))
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert len(got["predictions"]) == 2
    assert _shape(got) == _shape(documented("response: v1"))


def test_the_v1_list_form_is_answered_too(client):
    rows = [list(row.values()) for row in documented("request: v1")["instances"]]
    answer = client.post(f"/v1/models/{NAME}:predict", json={"instances": rows})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 2


def test_the_v2_body_is_answered_as_documented(client):
    answer = client.post(f"/v2/models/{NAME}/infer", json=documented("request: v2"))
    assert answer.status_code == 200, answer.text
    got = answer.json()
    expected = documented("response: v2")
    assert got["id"] == expected["id"] == "req-42"
    assert [(o["name"], o["datatype"], o["shape"]) for o in got["outputs"]] == [
        (o["name"], o["datatype"], o["shape"]) for o in expected["outputs"]
    ]
    assert set(got) == set(expected)


def test_the_raw_bodies_are_answered_and_their_ids_logged(served, registered_model):
    """The raw-record examples: ids, timestamp and target beside the features; the ids land in the payload log."""
    client, logger, sink = served
    v1 = documented("request: v1 raw")
    spec = registered_model.spec
    extra = set(v1["instances"][0]) - set(spec.feature_names)
    assert extra == {"transaction_id", "event_time", "customer_id", spec.target}
    assert extra - {spec.target} <= set(spec.non_feature_columns)
    answer = client.post(f"/v1/models/{NAME}:predict", json=v1, headers={"x-request-id": "readme-raw"})
    assert answer.status_code == 200, answer.text
    assert _shape(answer.json()) == _shape(documented("response: v1"))
    v2 = documented("request: v2 raw")
    answer = client.post(f"/v2/models/{NAME}/infer", json=v2)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == "req-43"
    assert logger.flush(timeout=10)
    records = {r["request_id"]: r for f in sink.rglob("*.jsonl") for r in map(json.loads, f.read_text().splitlines())}
    assert records["readme-raw"]["transaction_id"] == "tx-0011-00000042"
    assert records["readme-raw"]["event_time"] == "2026-01-08T11:31:58+00:00"
    assert spec.target not in records["readme-raw"]
    assert (records["req-43"]["transaction_id"], records["req-43"]["customer_id"]) == ("tx-0011-00000043", 100040)
