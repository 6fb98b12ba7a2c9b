"""V1 and V2 (Open Inference Protocol) request bodies: the shape rules the predictor and the router both apply.

The predictor validates every value against the model's FeatureSpec; the router only needs the rows (to count,
split and merge them, and to find entity ids). Both read a body through these functions, so a body one accepts the
other does not refuse, and the messages name the same field the same way. A body is JSON whatever its
content-type header says (``curl -d`` sends a form type); one that does not parse is a 400.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

_SHOWN = 60  # characters of a bad value quoted in a message


class BadBody(ValueError):
    """A request body that breaks the protocol: the caller gets a 400 with this message."""


def show(value: Any) -> str:
    """A value as quoted in an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def parse_json(body: bytes | bytearray | str) -> Any:
    """The body's JSON document, whatever the content-type header said."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadBody(f"the body is not valid JSON ({err})") from None


def v1_instances(doc: Any) -> list:
    """A V1 body's ``instances`` list (rows are checked by whoever reads them)."""
    if not isinstance(doc, dict):
        raise BadBody(f"request body must be a JSON object with an 'instances' list, got a JSON {type(doc).__name__}")
    if "instances" not in doc:
        raise BadBody(f"request body has no 'instances' field (it has: {sorted(map(str, doc))[:10]})")
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise BadBody(f"'instances' must be a list of rows, got {type(instances).__name__}")
    return instances


def v2_inputs(doc: Any) -> list[dict]:
    """A V2 JSON body's ``inputs``: a list of objects, one per input."""
    if not isinstance(doc, dict):
        raise BadBody(f"request body must be a JSON object with an 'inputs' list, got a JSON {type(doc).__name__}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise BadBody("request body must have an 'inputs' list of objects (one per input)")
    return inputs


def flat_values(data: list, where: str) -> list:
    """A V2 input's values one per row: shape ``[n]`` as it is, ``[n, 1]`` (``[[v], [v], ...]``) unwrapped."""
    flat = []
    for value in data:
        if isinstance(value, list):
            if len(value) != 1:
                raise BadBody(f"{where}: nested rows must hold one value each, got {show(value)}")
            value = value[0]
        if isinstance(value, list | dict):
            raise BadBody(f"{where}: values must be scalars, got {show(value)}")
        flat.append(value)
    return flat


# Bytes per element of each V2 datatype sent as raw binary data (BYTES elements carry their own lengths).
_ITEM_BYTES = {"BOOL": 1, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8, "UINT8": 1, "UINT16": 2, "UINT32": 4}
_ITEM_BYTES |= {"UINT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}
V2_DATATYPES = (*_ITEM_BYTES, "BYTES")


def check_v2_binary(body: bytes, header_length: str) -> None:
    """A V2 body in the binary tensor extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then
    raw tensors), checked for everything KServe's decoder takes for granted, so a malformed one is a 400 naming the
    field rather than a 500 from deep inside KServe (``InferRequest.from_bytes``)."""
    try:
        json_length = int(header_length)
    except ValueError:
        raise BadBody(
            f"Inference-Header-Content-Length must be a whole number of bytes, got {show(header_length)}"
        ) from None
    if not 0 <= json_length <= len(body):
        raise BadBody(f"Inference-Header-Content-Length is {json_length} but the body has {len(body)} bytes")
    doc = parse_json(body[:json_length])
    inputs = v2_inputs(doc)
    if not isinstance(doc.get("id"), str | None):
        raise BadBody(f"'id' must be a string, got {show(doc['id'])}")
    for where, value in (("parameters", doc.get("parameters")), ("outputs", doc.get("outputs"))):
        if value is not None and not isinstance(value, dict if where == "parameters" else list):
            raise BadBody(f"'{where}' must be {'an object' if where == 'parameters' else 'a list'}, got {show(value)}")
    for i, output in enumerate(doc.get("outputs") or []):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise BadBody(f"outputs[{i}] must be an object with a 'name' string, got {show(output)}")
        if not isinstance(output.get("parameters"), dict | None):
            raise BadBody(f"outputs[{i}].parameters must be an object, got {show(output['parameters'])}")
    offset = json_length
    for i, entry in enumerate(inputs):
        name = entry.get("name")
        if not isinstance(name, str):
            raise BadBody(f"inputs[{i}].name must be a string, got {show(name)}")
        where = f"input '{name}'"
        datatype, shape, parameters = entry.get("datatype"), entry.get("shape"), entry.get("parameters")
        if datatype not in V2_DATATYPES:
            raise BadBody(f"{where}: 'datatype' must be one of {list(V2_DATATYPES)}, got {show(datatype)}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise BadBody(f"{where}: 'shape' must be a list of whole numbers, got {show(shape)}")
        if any(d < 0 for d in shape):
            raise BadBody(f"{where}: 'shape' must not be negative, got {show(shape)}")
        if not isinstance(parameters, dict | None):
            raise BadBody(f"{where}: 'parameters' must be an object, got {show(parameters)}")
        if entry.get("data") is not None:
            continue
        size = (parameters or {}).get("binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadBody(f"{where}: needs 'data' or parameters.binary_data_size (a number of bytes), got {show(size)}")
        if offset + size > len(body):
            raise BadBody(f"{where}: binary_data_size {size} runs past the end of the body ({len(body)} bytes)")
        elements = math.prod(shape)
        if datatype == "BYTES":
            found = _bytes_elements(body[offset : offset + size], where)
        else:
            found, leftover = divmod(size, _ITEM_BYTES[datatype])
            if leftover:
                raise BadBody(f"{where}: binary_data_size {size} is not a whole number of {datatype} elements")
        if found != elements:
            raise BadBody(f"{where}: shape {shape} holds {elements} element(s), its binary data {found}")
        offset += size


def _bytes_elements(blob: bytes, where: str) -> int:
    """How many BYTES elements (each a 4-byte little-endian length, then that many bytes) ``blob`` holds."""
    count, offset = 0, 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise BadBody(f"{where}: BYTES data ends inside an element's 4-byte length")
        offset += 4 + int.from_bytes(blob[offset : offset + 4], "little")
        if offset > len(blob):
            raise BadBody(f"{where}: BYTES data ends inside an element (its length runs past binary_data_size)")
        count += 1
    return count


def check_v2_grpc(request: Any) -> None:
    """A V2 gRPC ``ModelInferRequest`` checked for what KServe's decoder refuses without naming the input (it says
    only "invalid content type" for a datatype it does not know)."""
    for i, tensor in enumerate(request.inputs):
        where = f"input '{tensor.name}'" if tensor.name else f"inputs[{i}]"
        if tensor.datatype not in V2_DATATYPES:
            raise BadBody(f"{where}: 'datatype' must be one of {list(V2_DATATYPES)}, got {show(tensor.datatype)}")
