"""Fuzzing a real predictor process over V1 REST, V2 REST and V2 gRPC with Hypothesis (tests/serving/fuzz_cases.py):
no request gets a 5xx (gRPC: INTERNAL, UNKNOWN or UNAVAILABLE), a refused one gets a 4xx with an error message that
names the feature when one feature's value was what was wrong, and the server neither crashes nor stops answering
well-formed requests, nor drops a payload-log record of what it answered.

Each protocol gets ``KFOPS_FUZZ_SECONDS`` (60) of requests from a fixed seed, ``KFOPS_FUZZ_SEED`` (19): rounds of
Hypothesis examples, round r seeded with (seed, r), so a run is the same sequence of requests however long it
lasts. ``make fuzz`` runs them for 10 minutes each (``FUZZ_SECONDS=600``).
"""

from __future__ import annotations

import os

import grpc
import httpx
import pytest

from .fault_env import SERVED_NAME, PredictorProcess
from .fuzz_cases import Case, GrpcCase, fuzz, grpc_case, v1_case, v2_case
from .helpers import v1_objects

pytestmark = pytest.mark.slow

FUZZ_SECONDS = float(os.environ.get("KFOPS_FUZZ_SECONDS", "60"))
FUZZ_SEED = int(os.environ.get("KFOPS_FUZZ_SEED", "19"))
# What a well-behaved server may answer to a bad gRPC request; the rest (INTERNAL, UNKNOWN, UNAVAILABLE, a
# deadline) means it failed on it.
GRPC_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def server(registered_model, tmp_path_factory):
    from tests.conftest import free_port

    m = registered_model
    root = tmp_path_factory.mktemp("fuzz")
    grpc_port = free_port()
    args = ["--grpc-port", str(grpc_port), "--payload-log", str(root / "payloads"), "--max-wait-ms", "1"]
    predictor = PredictorProcess(f"{m.name}@champion", m.tracking_uri, root / "server.log", args)
    predictor.grpc_target = f"127.0.0.1:{grpc_port}"
    try:
        predictor.wait_ready()
        # Readiness polls answered 503 while the model loaded are counted too: the fuzz adds none.
        predictor.server_errors_at_start = server_errors(predictor)
        yield predictor
    finally:
        predictor.stop()


def is_json(body: bytes) -> bool:
    """Whether ``body`` is JSON (no NaN literals, integers in 64 bits): one that is not is refused as a whole."""
    import orjson

    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def rest_checker(base: str):
    client = httpx.Client(base_url=base, timeout=30)
    statuses: dict[int, int] = {}

    def check(case: Case) -> None:
        response = client.post(case.path, content=case.body, headers=case.headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        context = f"{case.path} {case.headers} {case.body[:400]!r} -> {response.status_code} {response.text[:400]}"
        # KServe answers :explain of a model without an explainer 501 Not Implemented: an answer, not a failure.
        not_implemented = response.status_code == 501 and case.path.endswith(":explain")
        assert response.status_code < 500 or not_implemented, context
        if response.status_code >= 400:
            doc = response.json()
            # FastAPI's own 400 for a body it cannot decode says "detail"; every other answer says "error".
            error = doc.get("error", doc.get("detail"))
            assert isinstance(error, str) and error.strip(), context
            if response.status_code == 400 and case.names and is_json(case.body):
                assert any(name in error for name in case.names), f"the error names none of {case.names}: {context}"

    return client, statuses, check


def server_errors(server) -> float:
    """5xx answers of model endpoints the predictor counted (501, :explain without an explainer, is no failure)."""
    return sum(
        server.metric("model_request_errors_total", {"model": SERVED_NAME, "status_code": str(code)})
        for code in (500, 502, 503, 504)
    )


def assert_still_serving(server, registered_model) -> None:
    """Alive, answering a well-formed request as the model does, no 5xx counted, no payload-log record dropped."""
    assert server.proc.poll() is None, server.tail()
    rows = registered_model.rows.head(3)
    answer = httpx.post(
        f"{server.base}/v1/models/{SERVED_NAME}:predict", json={"instances": v1_objects(rows)}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    expected = registered_model.expected(rows)["prediction"].tolist()
    assert [p["prediction"] for p in answer.json()["predictions"]] == expected
    errors = [
        line for line in httpx.get(f"{server.base}/metrics", timeout=10).text.splitlines() if "errors_total{" in line
    ]
    assert server_errors(server) == server.server_errors_at_start, errors
    assert server.metric("model_payload_log_dropped_total", {"model": SERVED_NAME}) == 0


def test_fuzzed_v1_rest_requests_never_get_a_5xx(server, registered_model):
    client, statuses, check = rest_checker(server.base)
    with client:
        ran = fuzz(v1_case(registered_model.spec, SERVED_NAME), check, FUZZ_SECONDS, FUZZ_SEED)
    assert ran >= 100 and statuses.get(400, 0) > ran / 4 and statuses.get(200, 0) > ran / 20, statuses
    assert_still_serving(server, registered_model)


def test_fuzzed_v2_rest_requests_from_the_served_openapi_never_get_a_5xx(server, registered_model):
    schemas = httpx.get(f"{server.base}/openapi.json", timeout=10).json()["components"]["schemas"]
    request_fields = sorted(schemas["InferenceRequest"]["properties"])
    input_fields = sorted(schemas["RequestInput"]["properties"])
    assert {"inputs", "outputs", "parameters", "id"} <= set(request_fields)
    client, statuses, check = rest_checker(server.base)
    with client:
        ran = fuzz(
            v2_case(registered_model.spec, SERVED_NAME, request_fields, input_fields), check, FUZZ_SECONDS, FUZZ_SEED
        )
    assert ran >= 100 and statuses.get(400, 0) > ran / 4 and statuses.get(200, 0) > ran / 20, statuses
    assert_still_serving(server, registered_model)


def test_fuzzed_v2_grpc_requests_from_the_proto_never_fail_inside_the_server(server, registered_model):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    codes: dict[str, int] = {}
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def check(case: GrpcCase) -> None:
            try:
                stub.ModelInfer(case.request, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
                context = f"{case.request} -> {code} {err.details()}"
                assert code in GRPC_REFUSALS, context
                assert err.details(), context
                if code == grpc.StatusCode.INVALID_ARGUMENT and case.names:
                    named = any(name in err.details() for name in case.names)
                    assert named, f"the error names none of {case.names}: {context}"
            codes[code.name] = codes.get(code.name, 0) + 1

        ran = fuzz(grpc_case(registered_model.spec, SERVED_NAME, pb), check, FUZZ_SECONDS, FUZZ_SEED)
    assert ran >= 100 and codes.get("INVALID_ARGUMENT", 0) > ran / 4 and codes.get("OK", 0) > ran / 20, codes
    assert_still_serving(server, registered_model)
