"""Hypothesis strategies for the serving fuzz tests: V1 REST, V2 REST (the served OpenAPI's fields) and V2 gRPC (the
proto's fields) requests for one model, mostly near-valid (a valid request with one thing broken reaches deeper
than noise does), some pure noise.

Each strategy draws a ``Case``: what to send, and when one feature's value was the only thing broken, that feature's
name (a 400 must name it).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st

from kfops.components.contracts import FeatureSpec

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32"]
DATATYPES += ["FP64", "BYTES"]
ROUND_EXAMPLES = 200
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "application/json; x=1"]
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)  # h11 refuses edge spaces
PROTO_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)  # no lone surrogates: protobuf refuses

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.integers(-(2**70), 2**70),  # past 64 bits
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(),  # NaN and infinities: JSON's NaN/Infinity literals
    st.text(max_size=16),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
NUMBERS = st.one_of(st.none(), st.floats(-1e6, 1e6), st.integers(-1000, 10**6))
RAW_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(-1e15, 1e15), st.text(max_size=16)
)
CATEGORIES = st.one_of(st.sampled_from(["grocery", "online", "US", "android", ""]), PROTO_TEXT)


@dataclass
class Case:
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()  # one feature was broken: a 400 names it, or its OpenAPI path (inputs.3)


@dataclass
class GrpcCase:
    request: object  # a ModelInferRequest
    names: tuple[str, ...] = ()


def encode(doc) -> bytes:
    """JSON as Python writes it: NaN and Infinity become literals (which JSON has not: a 400)."""
    return json.dumps(doc, allow_nan=True).encode()


def _value(kind: str):
    return NUMBERS if kind == "numeric" else CATEGORIES


@st.composite
def v1_case(draw, spec: FeatureSpec, name: str) -> Case:
    columns = [(c.name, c.kind) for c in spec.columns]
    paths = [f"/v1/models/{name}:predict"] * 8 + [f"/v1/models/{name}:explain", "/v1/models/x:predict"]
    path = draw(st.sampled_from(paths))
    headers = {"content-type": draw(st.sampled_from(CONTENT_TYPES))}
    if draw(st.booleans()):
        headers["x-request-id"] = draw(HEADER_TEXT)
    shape = draw(st.sampled_from(["objects", "objects", "lists", "top", "bytes"]))
    names: tuple[str, ...] = ()
    if shape == "bytes":
        return Case(path, draw(st.binary(max_size=300)), headers)
    if shape == "top":
        tops = (JUNK, st.fixed_dictionaries({"instances": JUNK}), st.dictionaries(st.text(max_size=10), JUNK))
        doc = draw(st.one_of(*tops))
        return Case(path, encode(doc), headers)
    n = draw(st.integers(1, 5))
    if shape == "lists":
        width = draw(st.sampled_from([len(columns), len(columns), len(columns) - 1, len(columns) + 1, 0]))
        rows = [
            [draw(_value(columns[i][1]) if i < len(columns) and draw(st.booleans()) else JUNK) for i in range(width)]
            for _ in range(n)
        ]
        return Case(path, encode({"instances": rows}), headers)
    rows = [{col: draw(_value(kind)) for col, kind in columns} for _ in range(n)]
    for col in spec.passthrough_columns if draw(st.booleans()) else []:
        rows[0][col] = draw(RAW_VALUES)  # raw columns (ids, timestamps): only logged
    broken = draw(st.sampled_from(["value", "missing", "extra", "row", "none"]))
    row = draw(st.integers(0, n - 1))
    col = draw(st.sampled_from(columns))[0]
    if broken == "value":
        rows[row][col] = draw(JUNK)
        names = (col,)
    elif broken == "missing":
        del rows[row][col]
        names = (col,)
    elif broken == "extra":
        rows[row][draw(st.text(max_size=12))] = draw(JUNK)
    elif broken == "row":
        rows[row] = draw(JUNK)
    return Case(path, encode({"instances": rows}), headers, names)


@st.composite
def v2_case(draw, spec: FeatureSpec, name: str, request_fields: list[str], input_fields: list[str]) -> Case:
    """A V2 infer body; ``request_fields`` and ``input_fields`` are the served OpenAPI's InferenceRequest and
    RequestInput properties, each of which may be broken."""
    path = draw(st.sampled_from([f"/v2/models/{name}/infer"] * 9 + ["/v2/models/x/infer"]))
    headers = {"content-type": draw(st.sampled_from(CONTENT_TYPES))}
    if draw(st.integers(0, 9)) == 0:
        return Case(path, draw(st.binary(max_size=300)), headers)
    n = draw(st.integers(1, 4))
    column_shape = draw(st.booleans())
    inputs = []
    for col in spec.columns:
        data = [draw(_value(col.kind)) for _ in range(n)]
        numeric_type = draw(st.sampled_from(["FP64", "FP64", "FP32", "INT64"]))
        if numeric_type == "INT64" and col.kind == "numeric":
            data = [None if v is None else math.floor(v) for v in data]
        inputs.append(
            {
                "name": col.name,
                "datatype": numeric_type if col.kind == "numeric" else "BYTES",
                "shape": [n, 1] if column_shape else [n],
                "data": [[v] for v in data] if column_shape else data,
            }
        )
    body: dict = {"id": draw(st.text(max_size=12)), "inputs": inputs}
    names: tuple[str, ...] = ()
    broken = draw(st.sampled_from(["request", "input", "input", "input", "drop", "duplicate", "extra", "none"]))
    if broken == "request":  # a top-level field of the OpenAPI's InferenceRequest set to junk or removed
        key = draw(st.sampled_from(request_fields))
        if draw(st.booleans()):
            body.pop(key, None)
        else:
            body[key] = draw(JUNK)
    elif broken == "input":  # a field of one RequestInput: junk, removed, or a plausible wrong value
        entry = draw(st.sampled_from(inputs))
        key = draw(st.sampled_from(input_fields))
        choice = draw(st.sampled_from(["junk", "remove", "plausible"]))
        if choice == "remove":
            entry.pop(key, None)
        elif choice == "junk":
            entry[key] = draw(JUNK)
        elif key == "shape":
            entry[key] = draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3))
        elif key == "datatype":
            entry[key] = draw(st.sampled_from(DATATYPES))
        elif key == "data":
            entry[key] = draw(st.lists(SCALARS, max_size=6))
        elif key == "parameters":
            entry[key] = draw(st.dictionaries(st.sampled_from(["binary_data_size", "content_type", "x"]), SCALARS))
        else:
            entry[key] = draw(st.text(max_size=12))
        if isinstance(entry.get("name"), str) and key != "name":
            names = (entry["name"], f"inputs.{inputs.index(entry)}")
    elif broken == "drop":
        inputs.remove(draw(st.sampled_from(inputs)))
    elif broken == "duplicate":
        inputs.append(dict(draw(st.sampled_from(inputs))))
    elif broken == "extra":
        inputs.append({"name": draw(st.text(max_size=10)), "datatype": "FP64", "shape": [n], "data": [1.0] * n})
    if draw(st.integers(0, 5)) == 0:  # the binary tensor extension: a JSON header, then raw bytes
        header = encode(body)
        length = draw(st.sampled_from([len(header), len(header), 0, len(header) + 7, -1]))
        headers = {"inference-header-content-length": str(length), "content-type": "application/octet-stream"}
        return Case(path, header + draw(st.binary(max_size=200)), headers)
    return Case(path, encode(body), headers, names)


@st.composite
def grpc_case(draw, spec: FeatureSpec, name: str, pb) -> GrpcCase:
    """A ModelInferRequest (``pb``: KServe's grpc_predict_v2_pb2), valid but for what the draw breaks among the
    proto's own fields."""
    n = draw(st.integers(1, 4))
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from([name] * 9 + ["x"])), id=draw(PROTO_TEXT))
    for col in spec.columns:
        tensor = request.inputs.add(name=col.name, shape=[n])
        if col.kind == "numeric":
            tensor.datatype = "FP64"
            values = st.floats(-1e6, 1e6) | st.just(math.nan)  # NaN: a missing value (gRPC has no null)
            tensor.contents.fp64_contents.extend(draw(st.lists(values, min_size=n, max_size=n)))
        else:
            tensor.datatype = "BYTES"
            texts = st.lists(CATEGORIES.map(str.encode), min_size=n, max_size=n)
            tensor.contents.bytes_contents.extend(draw(texts))
    tensor = draw(st.sampled_from(list(request.inputs)))
    broken = draw(st.sampled_from(["request", "tensor", "tensor", "contents", "raw", "none"]))
    if broken == "request":
        key = draw(st.sampled_from([f.name for f in pb.ModelInferRequest.DESCRIPTOR.fields]))
        if key in ("model_name", "model_version", "id"):
            setattr(request, key, draw(PROTO_TEXT))
        elif key == "parameters":
            _parameters(draw, request.parameters)
        elif key == "inputs":
            del request.inputs[draw(st.integers(0, len(request.inputs) - 1))]
        elif key == "outputs":
            for _ in range(draw(st.integers(1, 3))):
                _parameters(draw, request.outputs.add(name=draw(PROTO_TEXT)).parameters)
        else:
            request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=40), max_size=3)))
    elif broken == "tensor":
        key = draw(st.sampled_from([f.name for f in pb.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields]))
        if key == "name":
            tensor.name = draw(PROTO_TEXT)
        elif key == "datatype":
            tensor.datatype = draw(st.one_of(st.sampled_from(DATATYPES), PROTO_TEXT))
        elif key == "shape":
            del tensor.shape[:]
            tensor.shape.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)))
        elif key == "parameters":
            _parameters(draw, tensor.parameters)
        else:
            tensor.ClearField("contents")
        return GrpcCase(request, (tensor.name,) if key != "name" else ())
    elif broken == "contents":  # another content field than the datatype's, or the right one with a wrong length
        content = draw(st.sampled_from([f.name for f in pb.InferTensorContents.DESCRIPTOR.fields]))
        tensor.ClearField("contents")
        getattr(tensor.contents, content).extend(draw(st.lists(_content_value(content), max_size=6)))
        return GrpcCase(request, (tensor.name,))
    elif broken == "raw":  # raw_input_contents instead of contents, one blob per input (or a wrong count)
        blobs = draw(st.lists(st.binary(max_size=64), min_size=len(request.inputs) - 1, max_size=len(request.inputs)))
        for each in request.inputs:
            each.ClearField("contents")
        request.raw_input_contents.extend(blobs)
    return GrpcCase(request)


def _content_value(content: str):
    if content == "bool_contents":
        return st.booleans()
    if content in ("fp32_contents", "fp64_contents"):
        return st.floats(width=32) if content == "fp32_contents" else st.floats()
    if content == "bytes_contents":
        return st.binary(max_size=12)
    bits = 64 if "64" in content else 32
    low = 0 if content.startswith("uint") else -(2 ** (bits - 1))
    high = 2**bits - 1 if content.startswith("uint") else 2 ** (bits - 1) - 1
    return st.integers(low, high)


def _parameters(draw, target) -> None:
    """Random InferParameter entries in a protobuf map field."""
    for key in draw(st.lists(st.sampled_from(["binary_data_size", "content_type", "x", ""]), max_size=3)):
        kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param"]))
        if kind == "bool_param":
            target[key].bool_param = draw(st.booleans())
        elif kind == "int64_param":
            target[key].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        else:
            target[key].string_param = draw(PROTO_TEXT)


def fuzz(strategy, check, seconds: float, base_seed: int) -> int:
    """Run ``check`` on examples of ``strategy`` for ``seconds``, in rounds of ``ROUND_EXAMPLES`` examples, round r
    seeded with (``base_seed``, r): the same requests in the same order on every run, however long it lasts.
    Returns how many examples ran."""
    deadline = time.monotonic() + seconds
    ran = 0
    rounds = 0
    while time.monotonic() < deadline:

        @settings(
            max_examples=ROUND_EXAMPLES,
            database=None,
            deadline=None,
            phases=(Phase.generate, Phase.shrink),
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @seed(base_seed * 1_000_003 + rounds)
        @given(strategy)
        def one_round(case):
            nonlocal ran
            ran += 1
            check(case)

        one_round()
        rounds += 1
    return ran
