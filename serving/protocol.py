"""V1 and V2 (Open Inference Protocol) request bodies: the shape rules the predictor and the router both apply.

The predictor validates every value against the model's FeatureSpec; the router only needs the rows (to count,
split and merge them, and to find entity ids). Both read a body through these functions, so a body one accepts the
other does not refuse, and the messages name the same field the same way. A body is JSON whatever its
content-type header says (``curl -d`` sends a form type); one that does not parse is a 400.
"""

from __future__ import annotations

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
