"""The predictor in-process, through KServe's own REST app (starlette TestClient)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from kfops.serving import metrics
from kfops.serving.app import build_app
from kfops.serving.predictor import TabularPredictor

from .helpers import v1_lists, v1_objects, v2_inputs

NAME = "fraud"
MAX_ROWS = 100
V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"


@pytest.fixture(scope="module")
def predictor(registered_model):
    p = TabularPredictor(
        NAME,
        f"{registered_model.name}@champion",
        registered_model.tracking_uri,
        max_batch_rows=64,
        max_wait_ms=2,
        max_request_rows=MAX_ROWS,
    )
    p.load()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(build_app(predictor), raise_server_exceptions=False) as c:
        yield c


def assert_matches(predictions: list[dict], expected, version: str) -> None:
    assert [p["prediction"] for p in predictions] == expected["prediction"].tolist()
    assert np.allclose([p["probability"] for p in predictions], expected["probability"], rtol=0, atol=1e-6)
    assert {p["model_version"] for p in predictions} == {version}


# ------------------------------------------------------------------------------------------------ happy paths
def test_v1_objects_and_lists_give_what_the_pyfunc_model_gives(client, registered_model):
    m = registered_model
    rows = m.rows.head(37)
    expected = m.expected(rows)
    r = client.post(V1, json={"instances": v1_objects(rows)})
    assert r.status_code == 200, r.text
    assert_matches(r.json()["predictions"], expected, m.version)
    r = client.post(V1, json={"instances": v1_lists(m.spec, rows)})
    assert r.status_code == 200, r.text
    assert_matches(r.json()["predictions"], expected, m.version)


def test_rows_with_missing_values_are_scored_like_the_pyfunc_model(client, registered_model):
    m = registered_model
    rows = m.rows.head(5).copy()
    rows.loc[0, "amount"] = None
    rows.loc[1, "merchant_category"] = None
    rows.loc[2, "country"] = "never-seen-in-training"
    r = client.post(V1, json={"instances": v1_objects(rows)})
    assert r.status_code == 200, r.text
    assert_matches(r.json()["predictions"], m.expected(rows), m.version)


@pytest.mark.parametrize("column_shape", [False, True])
def test_v2_infer(client, registered_model, column_shape):
    m = registered_model
    rows = m.rows.iloc[40:65]
    r = client.post(V2, json={"id": "req-1", "inputs": v2_inputs(m.spec, rows, column_shape)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == NAME and body["id"] == "req-1"
    assert body["model_version"] == m.version and body["parameters"]["model_version"] == m.version
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["prediction"]["datatype"] == "BYTES" and outputs["probability"]["datatype"] == "FP64"
    assert outputs["prediction"]["shape"] == [25]
    expected = m.expected(rows)
    assert outputs["prediction"]["data"] == expected["prediction"].tolist()
    assert np.allclose(outputs["probability"]["data"], expected["probability"], rtol=0, atol=1e-6)


def test_v2_binary_tensor_extension_with_nan_as_missing(client, registered_model):
    """The binary tensor extension (what Triton-style clients send for speed), through KServe's own encoder; a
    NaN in a float tensor is a missing value, scored like null in V1."""
    from kserve.protocol.infer_type import InferInput, InferRequest

    m = registered_model
    rows = m.rows.iloc[10:18].copy()
    rows.loc[rows.index[0], "amount"] = None
    inputs = []
    for col in m.spec.columns:
        values = rows[col.name]
        if col.kind == "numeric":
            array = values.to_numpy(dtype=np.float64, na_value=np.nan)
            tensor = InferInput(col.name, [len(rows)], "FP64")
        else:
            array = np.array([b"" if v is None else str(v).encode() for v in values], dtype=np.object_)
            tensor = InferInput(col.name, [len(rows)], "BYTES")
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    body, json_length = InferRequest(model_name=NAME, infer_inputs=inputs, request_id="bin-1").to_rest()
    assert json_length is not None  # really the binary form
    r = client.post(
        V2,
        content=body,
        headers={"content-type": "application/octet-stream", "inference-header-content-length": str(json_length)},
    )
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    expected = m.expected(rows)
    assert outputs["prediction"]["data"] == expected["prediction"].tolist()
    assert np.allclose(outputs["probability"]["data"], expected["probability"], rtol=0, atol=1e-6)
    # Infinity is still refused, naming the input.
    inputs[0].set_data_from_numpy(np.full(len(rows), np.inf), binary_data=True)
    body, json_length = InferRequest(model_name=NAME, infer_inputs=inputs).to_rest()
    r = client.post(
        V2,
        content=body,
        headers={"content-type": "application/octet-stream", "inference-header-content-length": str(json_length)},
    )
    assert r.status_code == 400 and m.spec.columns[0].name in r.json()["error"], r.text


def test_v2_integer_typed_numeric_inputs(client, registered_model):
    m = registered_model
    rows = m.rows.head(3).copy()
    inputs = v2_inputs(m.spec, rows)
    for entry in inputs:
        if entry["name"] == "hour_of_day":
            entry["datatype"] = "INT64"
            entry["data"] = [int(v) for v in entry["data"]]
    r = client.post(V2, json={"inputs": inputs})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == m.expected(rows)["prediction"].tolist()


def test_v2_metadata_lists_one_input_per_feature(client, registered_model):
    r = client.get(f"/v2/models/{NAME}")
    assert r.status_code == 200
    meta = r.json()
    assert [i["name"] for i in meta["inputs"]] == registered_model.spec.feature_names
    kinds = {c.name: c.kind for c in registered_model.spec.columns}
    for entry in meta["inputs"]:
        assert entry["shape"] == [-1]
        assert entry["datatype"] == ("FP64" if kinds[entry["name"]] == "numeric" else "BYTES")
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"prediction": "BYTES", "probability": "FP64"}


def test_readiness_follows_load(registered_model):
    p = TabularPredictor("late", registered_model.model_dir.as_posix())
    with TestClient(build_app(p), raise_server_exceptions=False) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/models/late/ready").status_code == 503
        assert c.get("/v1/models/late").status_code == 503
        assert c.post("/v1/models/late:predict", json={"instances": [[1]]}).status_code == 503
        p.load()
        assert c.get("/v2/models/late/ready").status_code == 200
        assert c.get("/v1/models/late").json() == {"name": "late", "ready": True}
        r = c.post("/v1/models/late:predict", json={"instances": v1_objects(registered_model.rows.head(2))})
        assert r.status_code == 200 and r.json()["predictions"][0]["model_version"] == ""
    p.stop()


# ------------------------------------------------------------------------------------------------ bad input
def _v1_row(m, **changes):
    row = v1_objects(m.rows.head(1))[0]
    row.update(changes)
    return row


def _v2_body(m, n=2, **edits):
    inputs = v2_inputs(m.spec, m.rows.head(n))
    for name, change in edits.items():
        entry = next(e for e in inputs if e["name"] == name)
        entry.update(change)
    return {"inputs": inputs}


def bad_v1_cases(m):
    names = m.spec.feature_names
    drop_amount = {k: v for k, v in _v1_row(m).items() if k != "amount"}
    return [
        ("malformed JSON", b'{"instances": [', "not valid JSON"),
        ("NaN literal", b'{"instances": [[NaN]]}', "not valid JSON"),
        ("Infinity literal", b'{"instances": [{"amount": Infinity}]}', "not valid JSON"),
        ("not an object", [1, 2], "'instances'"),
        ("no instances", {"rows": []}, "'instances'"),
        ("instances not a list", {"instances": {"amount": 1}}, "'instances' must be a list"),
        ("empty batch", {"instances": []}, "'instances' is empty"),
        ("too many rows", {"instances": [_v1_row(m)] * (MAX_ROWS + 1)}, f"maximum of {MAX_ROWS}"),
        ("short list", {"instances": [[1.0, 2.0]]}, f"instances[0]: a list instance must have {len(names)} values"),
        (
            "unknown feature",
            {"instances": [_v1_row(m, colour="red")]},
            "unknown field(s) ['colour']: neither a feature nor a column",
        ),
        ("missing feature", {"instances": [drop_amount]}, "missing feature(s) ['amount']"),
        (
            "string for a number",
            {"instances": [_v1_row(m), _v1_row(m, amount="12.5")]},
            "instances[1]: feature 'amount'",
        ),
        ("bool for a number", {"instances": [_v1_row(m, amount=True)]}, "feature 'amount' must be a number"),
        ("huge number", b'{"instances": [[1e999]]}', "infinity"),
        ("number beyond float32", {"instances": [_v1_row(m, amount=1e300)]}, "feature 'amount' is out of range"),
        ("huge integer", {"instances": [_v1_row(m, amount=10**400)]}, "not valid JSON"),
        ("number for a category", {"instances": [_v1_row(m, merchant_category=1.5)]}, "'merchant_category'"),
        ("object for a category", {"instances": [_v1_row(m, channel={"a": 1})]}, "'channel'"),
        ("row is a scalar", {"instances": [5]}, "instances[0] must be an object"),
    ]


def bad_v2_cases(m):
    return [
        ("malformed JSON", b'{"inputs": [', "not valid JSON"),
        ("inputs not a list", {"inputs": 3}, "inputs"),
        ("input without fields", {"inputs": [{"name": "amount"}]}, "inputs.0.shape"),
        ("empty inputs", {"inputs": []}, "'inputs' is empty"),
        ("missing input", {"inputs": _v2_body(m)["inputs"][1:]}, "missing input(s) ['amount']"),
        (
            "unknown input",
            {
                "inputs": [
                    *_v2_body(m)["inputs"],
                    {"name": "colour", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
                ]
            },
            "unknown input(s) ['colour']: neither a feature nor a column",
        ),
        (
            "duplicate input",
            {"inputs": [*_v2_body(m)["inputs"], _v2_body(m)["inputs"][0]]},
            "'amount' appears more than once",
        ),
        ("BYTES for a number", _v2_body(m, amount={"datatype": "BYTES"}), "input 'amount': numeric feature"),
        ("FP64 for a category", _v2_body(m, channel={"datatype": "FP64"}), "input 'channel': categorical"),
        ("strings in FP64", _v2_body(m, amount={"data": ["1", "2"]}), "input 'amount' row 0: feature 'amount'"),
        ("NaN in FP64", b"", "feature 'amount' must be a finite number"),
        ("shape disagrees", _v2_body(m, amount={"shape": [3]}), "input 'amount': shape [3]"),
        ("bad shape", _v2_body(m, amount={"shape": [2, 2]}), "input 'amount': shape must be"),
        ("rows differ", _v2_body(m, country={"shape": [1], "data": ["US"]}), "same number of rows"),
        ("empty batch", {"inputs": v2_inputs(m.spec, m.rows.head(0))}, "is empty"),
        ("too many rows", {"inputs": v2_inputs(m.spec, m.rows.head(MAX_ROWS + 1))}, f"maximum of {MAX_ROWS}"),
    ]


def _post(client, url, body):
    if isinstance(body, bytes):
        return client.post(url, content=body, headers={"content-type": "application/json"})
    return client.post(url, json=body)


def test_a_json_body_is_read_whatever_its_content_type(client, registered_model):
    import orjson

    body = orjson.dumps({"instances": v1_objects(registered_model.rows.head(2))})
    # curl -d sends application/x-www-form-urlencoded; some clients send nothing or text/plain
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"content-type": content_type} if content_type else {}
        r = client.post(V1, content=body, headers=headers)
        assert r.status_code == 200, (content_type, r.text)
        assert len(r.json()["predictions"]) == 2
        # V2 too (Triton's HTTP client sends JSON with no content-type at all)
        v2 = orjson.dumps({"inputs": v2_inputs(registered_model.spec, registered_model.rows.head(2))})
        r = client.post(V2, content=v2, headers=headers)
        assert r.status_code == 200, (content_type, r.text)
        assert r.json()["outputs"][0]["shape"] == [2]
    r = client.post(V2, content=b"inputs=1", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_bad_v1_requests_are_400_naming_the_field(client, registered_model):
    for label, body, message in bad_v1_cases(registered_model):
        r = _post(client, V1, body)
        assert r.status_code == 400, (label, r.status_code, r.text)
        assert message in r.json()["error"], (label, r.json())
    r = client.post(V1, content=b"amount=1", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    # The server still answers normally after all that.
    assert client.post(V1, json={"instances": v1_objects(registered_model.rows.head(2))}).status_code == 200


def test_bad_v2_requests_are_400_naming_the_field(client, registered_model):
    for label, body, message in bad_v2_cases(registered_model):
        if label == "NaN in FP64":  # JSON NaN literal, which Python's json.dumps writes
            body = json.dumps(_v2_body(registered_model, amount={"data": [float("nan"), 1.0]})).encode()
        r = _post(client, V2, body)
        assert r.status_code == 400, (label, r.status_code, r.text)
        assert message in r.json()["error"], (label, r.json())
    assert client.post(V2, json=_v2_body(registered_model)).status_code == 200


def test_a_failing_batch_is_a_500_with_a_message_and_the_server_goes_on(
    client, predictor, registered_model, monkeypatch
):
    def boom(*args):
        raise RuntimeError("weights on fire")

    monkeypatch.setattr(predictor.loaded, "predict", boom)
    monkeypatch.setattr(predictor.loaded, "predict_columns", boom)
    r = client.post(V1, json={"instances": v1_objects(registered_model.rows.head(2))})
    assert r.status_code == 500 and "weights on fire" in r.json()["error"]
    monkeypatch.undo()
    assert client.post(V1, json={"instances": v1_objects(registered_model.rows.head(2))}).status_code == 200


def _junk(rng: random.Random, depth: int = 0):
    choices = [
        None,
        True,
        rng.randint(-(10**30), 10**30),
        rng.choice([0.0, -1.5, 1e308, -1e-308, 3.14]),
        rng.choice(["", "x", "NaN", "Infinity", "1e999", "\u00e9\u4e2d", "a" * 300]),
    ]
    if depth < 2:
        choices += [
            [_junk(rng, depth + 1) for _ in range(rng.randint(0, 3))],
            {rng.choice(["instances", "inputs", "amount", "name", "data", "x"]): _junk(rng, depth + 1)},
        ]
    return rng.choice(choices)


def fuzz_bodies(m, count: int, seed: int = 7):
    rng = random.Random(seed)
    names = m.spec.feature_names
    raw = [b"", b"{", b"[", b"nul", b'{"instances": [[NaN, Infinity]]}', b"\xff\xfe", b'{"inputs": [{"data": NaN}]}']
    for i in range(count):
        kind = i % 5
        if kind == 0:
            body = _junk(rng)
        elif kind == 1:  # a valid V1 body with one value broken
            body = {"instances": v1_objects(m.rows.sample(rng.randint(1, 4), random_state=i))}
            row = rng.choice(body["instances"])
            row[rng.choice([*names, "extra"])] = _junk(rng)
        elif kind == 2:  # a list instance with junk or the wrong width
            body = {"instances": [[_junk(rng) for _ in range(rng.choice([len(names), len(names) - 1, 1]))]]}
        elif kind == 3:  # a valid V2 body with one field broken
            body = _v2_body(m, n=rng.randint(1, 3))
            entry = rng.choice(body["inputs"])
            entry[rng.choice(["data", "shape", "datatype", "name", "parameters"])] = _junk(rng)
        else:
            body = raw[i % len(raw)] if rng.random() < 0.3 else {"inputs": _junk(rng), "instances": _junk(rng)}
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()  # may hold NaN/Infinity literals from huge floats: fine
        yield body


def test_fuzzed_bodies_never_get_a_5xx(client, registered_model):
    statuses = []
    for i, body in enumerate(fuzz_bodies(registered_model, 200)):
        url = V1 if i % 2 == 0 else V2
        r = client.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code < 500, (url, body[:300], r.status_code, r.text[:300])
        statuses.append(r.status_code)
    assert statuses.count(400) > 150  # nearly all are refused, and refused cleanly
    assert client.post(V1, json={"instances": v1_objects(registered_model.rows.head(1))}).status_code == 200


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_move_and_are_on_kserves_metrics_endpoint(client, registered_model):
    m = registered_model
    rows = m.rows.head(20)
    expected = m.expected(rows)["prediction"].value_counts().to_dict()
    version = m.version

    def predictions(label):
        return metrics.sample("model_predictions_total", {"model": NAME, "version": version, "predicted_class": label})

    before = {label: predictions(label) for label in expected}
    errors_before = metrics.sample("model_request_errors_total", {"model": NAME, "status_code": "400"})

    def answers(status):
        return metrics.sample("model_requests_total", {"model": NAME, "version": version, "status_code": status})

    answers_before = {status: answers(status) for status in ("200", "400")}
    totals_before = metrics.sample(
        "model_prediction_latency_seconds_count", {"model": NAME, "version": version, "stage": "total"}
    )
    assert client.post(V1, json={"instances": v1_objects(rows)}).status_code == 200
    assert client.post(V1, json={"instances": []}).status_code == 400
    assert client.post(V2, content=b"{", headers={"content-type": "application/json"}).status_code == 400
    for label, n in expected.items():
        assert predictions(label) == before[label] + n
    assert metrics.sample("model_request_errors_total", {"model": NAME, "status_code": "400"}) == errors_before + 2
    # Both scoring answers count by version and status: the error rate's numerator and denominator.
    assert answers("200") == answers_before["200"] + 1
    assert answers("400") == answers_before["400"] + 2
    client.get(f"/v2/models/{NAME}")  # metadata is no scoring request
    assert answers("200") == answers_before["200"] + 1
    for stage in ("parse", "queue", "predict", "total"):
        assert (
            metrics.sample(
                "model_prediction_latency_seconds_count", {"model": NAME, "version": version, "stage": stage}
            )
            >= 1
        )
    assert (
        metrics.sample("model_prediction_latency_seconds_count", {"model": NAME, "version": version, "stage": "total"})
        == totals_before + 1
    )
    assert metrics.sample("model_batch_size_count") >= 1
    metrics.count_payload_drop(NAME, 3)
    text = client.get("/metrics").text
    assert f'model_predictions_total{{model="{NAME}",predicted_class=' in text
    assert "model_request_errors_total" in text and "model_batch_size_bucket" in text
    assert f'model_payload_log_dropped_total{{model="{NAME}"}}' in text
    assert "request_predict_seconds" in text  # KServe's own histograms are still there


# ------------------------------------------------------------------------------------------------ payload log
def test_each_scored_row_is_payload_logged(registered_model, tmp_path):
    from kfops.serving.cli import make_payload_logger

    m = registered_model
    logger = make_payload_logger(str(tmp_path / "payloads"), "logged")
    p = TabularPredictor("logged", f"{m.name}/{m.version}", m.tracking_uri, payload_logger=logger)
    p.load()
    rows = m.rows.head(3)
    with TestClient(build_app(p)) as c:
        r = c.post("/v1/models/logged:predict", json={"instances": v1_objects(rows)}, headers={"x-request-id": "abc"})
        assert r.status_code == 200
        r2 = c.post("/v2/models/logged/infer", json={"id": "v2-req", "inputs": v2_inputs(m.spec, rows.head(1))})
        assert r2.status_code == 200
    p.stop()  # closes (flushes) the logger
    files = sorted(Path(tmp_path / "payloads").rglob("*.jsonl"))
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert len(records) == 4
    first = next(r for r in records if r["request_id"] == "abc")
    assert first["model"] == "logged" and first["model_version"] == m.version and first["variant"] == "default"
    assert first["timestamp"].endswith("+00:00")
    for name in m.spec.feature_names:
        assert name in first
    assert first["prediction"] == r.json()["predictions"][0]["prediction"]
    assert first["probability"] == pytest.approx(r.json()["predictions"][0]["probability"])
    assert sum(1 for rec in records if rec["request_id"] == "v2-req") == 1


def test_outcomes_posted_beside_the_predictor_join_the_payload_log(registered_model, tmp_path):
    """POST /v1/outcomes records ground truth by request id beside the payload log; joined, they give the live
    performance of the version that served; a bad body is a 400 naming the problem."""
    from kfops.components.outcomes.logic import live_performance
    from kfops.serving.cli import make_payload_logger

    m = registered_model
    sink = str(tmp_path / "payloads")
    p = TabularPredictor(
        "judged", f"{m.name}/{m.version}", m.tracking_uri, payload_logger=make_payload_logger(sink, "judged")
    )
    p.load()
    rows = m.rows.head(6)
    with TestClient(build_app(p, outcomes_sink=sink), raise_server_exceptions=False) as c:
        answers = []
        for i in range(len(rows)):
            r = c.post(
                "/v1/models/judged:predict",
                json={"instances": v1_objects(rows.iloc[[i]])},
                headers={"x-request-id": f"r{i}"},
            )
            assert r.status_code == 200
            answers.append(r.json()["predictions"][0]["prediction"])
        # Ground truth arrives later: the first four say the model was right, the last two that it was wrong.
        truth = answers[:4] + [
            m.spec.positive_class if a == m.spec.negative_class else m.spec.negative_class for a in answers[4:]
        ]
        body = {"outcomes": [{"request_id": f"r{i}", "outcome": t} for i, t in enumerate(truth)]}
        r = c.post("/v1/outcomes", json=body)
        assert r.status_code == 200 and r.json()["recorded"] == 6, r.text
        bad = c.post("/v1/outcomes", json={"outcomes": [{"outcome": "1"}]})
        assert bad.status_code == 400 and "request_id" in bad.json()["error"]
        assert c.post("/v1/outcomes", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    p.stop()
    performance = live_performance(sink, positive_class=m.spec.positive_class)
    (group,) = performance.groups
    assert (group.model, group.model_version, group.joined) == ("judged", m.version, 6)
    assert group.accuracy == pytest.approx(4 / 6)


def test_payload_log_drops_are_counted(tmp_path):
    from kfops.serving.cli import make_payload_logger

    before = metrics.sample("model_payload_log_dropped_total", {"model": "dropper"})
    logger = make_payload_logger(str(tmp_path / "payloads"), "dropper", max_queue=2)
    logger.log([{"a": 1}] * 3)  # more than the queue holds: dropped, never waited for
    logger.close()
    assert metrics.sample("model_payload_log_dropped_total", {"model": "dropper"}) == before + 3


def test_an_oversized_body_is_a_400_and_the_server_keeps_serving(predictor, registered_model):
    from kfops.serving.app import build_app

    body = {"instances": v1_objects(registered_model.rows.head(50))}
    with TestClient(build_app(predictor, max_body_bytes=2_000), raise_server_exceptions=False) as small:
        for url in (V1, "/v2/models/fraud/infer"):
            r = small.post(url, json=body)
            assert r.status_code == 400 and "larger than this server's maximum of 2,000 bytes" in r.json()["error"]
        ok = small.post(V1, json={"instances": v1_objects(registered_model.rows.head(1))})
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_request_values_follow_the_transform_rules():
    """The one set of value rules (components/transform.py) that serving applies to JSON and tensor values."""
    import math

    from kfops.components.contracts import KfopsError
    from kfops.components.transform import request_column, request_value

    assert request_column("numeric", "x", [1, 2.5, None], str)[:2] == [1.0, 2.5]
    assert math.isnan(request_column("numeric", "x", [None], str)[0])
    assert request_column("categorical", "c", ["a", None, 3], str) == ["a", None, "3"]
    for bad, message in [("1", "must be a number"), (True, "must be a number"), (1e39, "out of range")]:
        with pytest.raises(KfopsError, match=message):
            request_value("numeric", "x", bad, "row 0")
    with pytest.raises(KfopsError, match="row 1: feature 'x' must be a finite number"):
        request_column("numeric", "x", [1.0, float("inf")], lambda i: f"row {i}")
    with pytest.raises(KfopsError, match="must be a string"):
        request_value("categorical", "c", 1.5, "row 0")


def test_the_model_cannot_be_unloaded_or_loaded_by_api(client, registered_model):
    import asyncio

    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    from kfops.serving.app import grpc_server

    from .upstreams import free_port

    for change in ("unload", "load"):
        answer = client.post(f"/v2/repository/models/{NAME}/{change}")
        assert answer.status_code == 403 and "turned off" in answer.json()["error"]

    async def over_grpc() -> list[grpc.StatusCode]:
        port = free_port()
        server = grpc_server(client.app, "127.0.0.1", port)
        await server.start()
        codes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for call in (stub.RepositoryModelUnload, stub.RepositoryModelLoad):
                    request_type = (
                        pb.RepositoryModelUnloadRequest
                        if call is stub.RepositoryModelUnload
                        else (pb.RepositoryModelLoadRequest)
                    )
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call(request_type(model_name=NAME), timeout=10)
                    codes.append(refused.value.code())
        finally:
            await server.stop(None)
        return codes

    assert asyncio.run(over_grpc()) == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    # still served
    assert client.get(f"/v2/models/{NAME}/ready").status_code == 200
    assert client.post(V1, json={"instances": v1_objects(registered_model.rows.head(2))}).status_code == 200
