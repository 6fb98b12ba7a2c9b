"""What the protocol fuzz (test_fuzz_protocols.py) found, kept as quick in-process tests, and a few seconds of the
same fuzz in-process for the quick loop.

Found: a V2 body in the binary tensor extension whose JSON header lacked a datatype (or had a null one, a negative
shape, a binary_data_size past the body's end...) got a 500 from inside KServe's decoder; a gRPC tensor with an
unknown datatype got INVALID_ARGUMENT "invalid content type", naming no input.
"""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from fastapi.testclient import TestClient

from kfops.serving.app import _checked_model_infer, build_app
from kfops.serving.predictor import TabularPredictor

from .fuzz_cases import fuzz, v1_case, v2_case
from .helpers import clean

NAME = "fraud"
V2 = f"/v2/models/{NAME}/infer"
SMOKE_SECONDS = 3.0


@pytest.fixture(scope="module")
def client(registered_model):
    predictor = TabularPredictor(NAME, f"{registered_model.name}@champion", registered_model.tracking_uri)
    predictor.load()
    with TestClient(build_app(predictor), raise_server_exceptions=False) as c:
        yield c
    predictor.stop()


def binary_body(spec, frame, change=None) -> tuple[bytes, dict]:
    """A V2 request in the binary tensor extension (what tritonclient sends): every input as raw bytes."""
    inputs, blobs = [], []
    for col in spec.columns:
        values = [clean(v) for v in frame[col.name].tolist()]
        if col.kind == "numeric":
            blob = struct.pack(f"<{len(values)}d", *[float("nan") if v is None else v for v in values])
            datatype = "FP64"
        else:
            blob = b"".join(struct.pack("<I", len(t)) + t for t in (str(v or "").encode() for v in values))
            datatype = "BYTES"
        entry = {"name": col.name, "datatype": datatype, "shape": [len(values)]}
        entry["parameters"] = {"binary_data_size": len(blob)}
        inputs.append(entry)
        blobs.append(blob)
    header = {"id": "bin-1", "inputs": inputs}
    if change is not None:
        change(header, blobs)
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"inference-header-content-length": str(len(head))}


def test_a_well_formed_binary_v2_request_is_answered(client, registered_model):
    m = registered_model
    rows = m.rows.dropna().head(4)
    body, headers = binary_body(m.spec, rows)
    response = client.post(V2, content=body, headers={**headers, "content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["prediction"]["data"] == m.expected(rows)["prediction"].tolist()


def _set(field, value, index=0):
    def change(header, blobs):
        header["inputs"][index][field] = value

    return change


def _size(value, index=0):
    def change(header, blobs):
        header["inputs"][index]["parameters"]["binary_data_size"] = value

    return change


def _truncate_bytes_input(header, blobs):
    index = next(i for i, entry in enumerate(header["inputs"]) if entry["datatype"] == "BYTES")
    blobs[index] = blobs[index][:-1]
    header["inputs"][index]["parameters"]["binary_data_size"] -= 1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_set("datatype", None), "input 'amount': 'datatype' must be one of"),
        (lambda h, b: h["inputs"][0].pop("datatype"), "input 'amount': 'datatype' must be one of"),
        (lambda h, b: h["inputs"][0].pop("name"), "inputs[0].name must be a string"),
        (_set("shape", [-2]), "input 'amount': 'shape' must not be negative"),
        (_set("shape", "4"), "input 'amount': 'shape' must be a list"),
        (_set("shape", [3]), "input 'amount': shape [3] holds 3 element(s), its binary data 4"),
        (_set("parameters", ["binary_data_size"]), "input 'amount': 'parameters' must be an object"),
        (_size("32"), "input 'amount': needs 'data' or parameters.binary_data_size"),
        (_size(31), "input 'amount': binary_data_size 31 is not a whole number of FP64 elements"),
        (_size(10**9), "input 'amount': binary_data_size 1000000000 runs past the end of the body"),
        (_truncate_bytes_input, "BYTES data ends inside an element"),
        (lambda h, b: h.update(outputs=[{"parameters": {}}]), "outputs[0] must be an object with a 'name'"),
        (lambda h, b: h.update(id=7), "'id' must be a string"),
    ],
)
def test_a_malformed_binary_v2_request_is_a_400_naming_the_field(client, registered_model, change, named):
    body, headers = binary_body(registered_model.spec, registered_model.rows.dropna().head(4), change)
    response = client.post(V2, content=body, headers={**headers, "content-type": "application/octet-stream"})
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]


@pytest.mark.parametrize("length", ["twelve", "-1", "999999"])
def test_a_binary_header_length_that_does_not_fit_the_body_is_a_400(client, registered_model, length):
    body, _ = binary_body(registered_model.spec, registered_model.rows.dropna().head(2))
    headers = {"inference-header-content-length": length, "content-type": "application/octet-stream"}
    response = client.post(V2, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length" in response.json()["error"]


def test_a_grpc_tensor_with_an_unknown_datatype_is_invalid_argument_naming_the_input():
    from kserve.errors import InvalidInput
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    reached = []

    async def model_infer(request, context):
        reached.append(request)
        return "answered"

    checked = _checked_model_infer(model_infer)
    request = pb.ModelInferRequest(model_name=NAME)
    request.inputs.add(name="amount", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    assert asyncio.run(checked(request, None)) == "answered" and reached == [request]
    request.inputs.add(name="channel", datatype="STRING", shape=[1]).contents.bytes_contents.append(b"online")
    with pytest.raises(InvalidInput, match=r"input 'channel': 'datatype' must be one of .* got 'STRING'"):
        asyncio.run(checked(request, None))
    assert len(reached) == 1  # KServe's decoder never saw it


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_few_seconds_of_fuzz_in_process_get_no_5xx(client, registered_model, protocol):
    """The quick loop's share of test_fuzz_protocols.py (fixed seed, in-process, no server to start)."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    if protocol == "v1":
        strategy = v1_case(registered_model.spec, NAME)
    else:
        fields = sorted(schemas["InferenceRequest"]["properties"]), sorted(schemas["RequestInput"]["properties"])
        strategy = v2_case(registered_model.spec, NAME, *fields)
    statuses: dict[int, int] = {}

    def check(case):
        response = client.post(case.path, content=case.body, headers=case.headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        not_implemented = response.status_code == 501 and case.path.endswith(":explain")
        assert response.status_code < 500 or not_implemented, (case, response.text[:300])

    ran = fuzz(strategy, check, SMOKE_SECONDS, base_seed=19)
    assert ran >= 50 and statuses.get(200, 0) > 0, statuses
