"""V1 and V2 bodies as the router sees them: parsing, entity ids, row subsets for each variant, merging the
variants' answers back in request order, and the outcomes of a shadow comparison.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import orjson

from kfops.serving.protocol import flat_values, show, v1_instances, v2_inputs
from kfops.serving.router_types import (
    _ID_COUNTER,
    _ID_PREFIX,
    _NOT_FORWARDED,
    _V1_ROW,
    _V2_ROW,
    CHALLENGER,
    ENTITY_HEADER,
    BadRequest,
    Reply,
    UpstreamFailed,
)

# ------------------------------------------------------------------------------------------------ helpers
if TYPE_CHECKING:  # for annotations only: router imports this module
    from kfops.serving.router import Router


def _forward_headers(request_headers) -> tuple[bytes, str, str | None]:
    """The caller's headers to send upstream, as header lines (content-type defaulting to JSON; an x-request-id
    made up when the caller sent none, so both predictors' payload logs carry the same id), the request id, and
    the x-entity-id header."""
    lines = []
    request_id = entity = None
    has_type = False
    for key, value in request_headers:
        if key in _NOT_FORWARDED or b"\r" in value or b"\n" in value:
            continue
        if key == b"x-request-id":
            request_id = value.decode("latin-1")
        elif key == b"x-entity-id":
            entity = value.decode("latin-1")
        elif key == b"content-type":
            has_type = True
        lines.append(b"%s: %s\r\n" % (key, value))
    if not has_type:
        lines.append(b"content-type: application/json\r\n")
    if not request_id:
        request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        lines.append(b"x-request-id: %s\r\n" % request_id.encode())
    return b"".join(lines), request_id, entity or None


def _entity_value(value, where: str, key: str):
    """A usable entity id, or None for a missing one (absent, null or empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        kind = type(value).__name__
        raise BadRequest(f"{where}: entity field '{key}' must be a string or a number, got {kind} {show(value)}")
    return value


def _no_entity(where: str, key: str) -> BadRequest:
    return BadRequest(
        f"{where} has no '{key}' (and the request no {ENTITY_HEADER} header): the router's ab mode assigns each "
        f"row to stable or challenger by its '{key}'"
    )


def _v1_entities(doc, key: str, strip: bool, header: str | None) -> tuple[list, bool]:
    """Each row's entity id (the header's where a row has none); strips the field from the rows if asked."""
    instances = v1_instances(doc)
    entities = []
    stripped = False
    for i, row in enumerate(instances):
        value = None
        if isinstance(row, dict) and key in row:
            value = _entity_value(row.pop(key) if strip else row[key], f"instances[{i}]", key)
            stripped = stripped or strip
        if value is None:
            if header is None:
                raise _no_entity(f"instances[{i}]", key)
            value = header
        entities.append(value)
    return entities, stripped


def _v2_entities(doc, key: str, strip: bool, header: str | None) -> tuple[list, bool]:
    inputs = v2_inputs(doc)
    found = [i for i, item in enumerate(inputs) if item.get("name") == key]
    if not found:
        if header is None:
            raise BadRequest(
                f"the request has no input named '{key}' (and no {ENTITY_HEADER} header): the router's ab mode "
                f"assigns each row to stable or challenger by its '{key}'"
            )
        # No entity input: every row is the header's entity. The row count comes from the first input.
        first = inputs[0].get("data") if inputs else None
        n = len(first) if isinstance(first, list) else 1
        return [header] * n, False
    if len(found) > 1:
        raise BadRequest(f"input '{key}' appears more than once")
    entity_input = inputs[found[0]]
    data = entity_input.get("data")
    if not isinstance(data, list):
        raise BadRequest(f"input '{key}': 'data' must be a list of entity ids (binary tensor data cannot be routed)")
    entities = []
    for i, value in enumerate(flat_values(data, f"input '{key}'")):
        value = _entity_value(value, f"input '{key}' row {i}", key)
        if value is None:
            if header is None:
                raise _no_entity(f"input '{key}' row {i}", key)
            value = header
        entities.append(value)
    if strip:
        doc["inputs"] = [item for j, item in enumerate(inputs) if j != found[0]]
    return entities, strip


def _strip_entity(protocol: str, body: bytes, key: str) -> bytes:
    """The body without the entity field (canary and shadow with an entity key); the body as is when it has
    none or is not what the predictor takes (the predictor names the problem)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    changed = False
    if protocol == "v1" and isinstance(doc, dict) and isinstance(doc.get("instances"), list):
        for row in doc["instances"]:
            if isinstance(row, dict) and key in row:
                del row[key]
                changed = True
    elif protocol == "v2" and isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
        kept = [i for i in doc["inputs"] if not (isinstance(i, dict) and i.get("name") == key)]
        changed = len(kept) != len(doc["inputs"])
        doc["inputs"] = kept
    return orjson.dumps(doc) if changed else body


def _v1_subset(doc: dict, rows: list[int], n: int, key: str) -> dict:
    instances = doc["instances"]
    return {**doc, "instances": [instances[i] for i in rows]}


def _v2_subset(doc: dict, rows: list[int], n: int, key: str) -> dict:
    inputs = []
    for item in doc["inputs"]:
        name = item.get("name")
        data = item.get("data")
        if not isinstance(data, list):
            raise BadRequest(
                f"input '{name}': 'data' must be a list (binary tensor data cannot be split by the router)"
            )
        if len(data) % n:
            raise BadRequest(
                f"input '{name}' holds {len(data)} values: not the same number for each of the {n} rows "
                f"of input '{key}'"
            )
        width = len(data) // n
        picked = [data[i] for i in rows] if width == 1 else [v for i in rows for v in data[i * width : (i + 1) * width]]
        shape = item.get("shape")
        tail = shape[1:] if isinstance(shape, list) and shape else []
        inputs.append({**item, "data": picked, "shape": [len(rows), *tail]})
    return {**doc, "inputs": inputs}


def _remap_rows(body: bytes, rows: list[int], protocol: str) -> bytes:
    """An error answer for part of a request, its row numbers turned into the caller's."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return body

    def original(match: re.Match) -> str:
        i = int(match.group(1))
        number = str(rows[i]) if i < len(rows) else match.group(1)
        return match.group(0).replace(match.group(1), number)

    doc["error"] = (_V1_ROW if protocol == "v1" else _V2_ROW).sub(original, doc["error"])
    return orjson.dumps(doc)


def _bad_answer(router: Router, reply: Reply, why: str) -> UpstreamFailed:
    upstream = router.upstream_of(reply)
    message = f"{reply.variant} upstream {upstream.base_url} gave an answer the router cannot merge: {why}"
    return UpstreamFailed(502, message)


def _merge_v1(parts, n: int, router: Router) -> bytes:
    merged: list = [None] * n
    for rows, reply in parts:
        try:
            predictions = orjson.loads(reply.body)["predictions"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise _bad_answer(router, reply, "no 'predictions' list") from None
        if not isinstance(predictions, list) or len(predictions) != len(rows):
            raise _bad_answer(router, reply, f"not {len(rows)} predictions")
        for i, prediction in zip(rows, predictions, strict=True):
            merged[i] = prediction
    return orjson.dumps({"predictions": merged})


def _merge_v2(parts, n: int, router: Router) -> bytes:
    docs = []
    for rows, reply in parts:
        try:
            doc = orjson.loads(reply.body)
            outputs = {o["name"]: o for o in doc["outputs"]}
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise _bad_answer(router, reply, "no 'outputs' list of named outputs") from None
        docs.append((rows, reply, doc, outputs))
    _, _, base, base_outputs = docs[0]
    merged_outputs = []
    for name, output in base_outputs.items():
        slots: list = [None] * n
        for rows, reply, _, outputs in docs:
            data = outputs.get(name, {}).get("data")
            if not isinstance(data, list) or len(data) % len(rows):
                raise _bad_answer(router, reply, f"output '{name}' missing or not {len(rows)} rows")
            width = len(data) // len(rows)
            for j, i in enumerate(rows):
                slots[i] = data[j * width : (j + 1) * width]
        shape = output.get("shape")
        tail = shape[1:] if isinstance(shape, list) and shape else []
        merged_outputs.append({**output, "data": [v for row in slots for v in row], "shape": [n, *tail]})
    challenger_rows, challenger_reply, challenger_doc, _ = docs[1]
    answer = {**base, "outputs": merged_outputs}
    if challenger_reply.variant == CHALLENGER:
        parameters = dict(base.get("parameters") or {})
        parameters["challenger_rows"] = challenger_rows
        parameters["challenger_model_version"] = challenger_doc.get("model_version")
        answer["parameters"] = parameters
    return orjson.dumps(answer)


def _outcomes(protocol: str, body: bytes) -> tuple[list[tuple[str, float | None]], str]:
    """(predicted class, probability) per row, and the model version, from a predictor's answer."""
    doc = orjson.loads(body)
    if protocol == "v1":
        rows = []
        version = ""
        for p in doc["predictions"]:
            probability = p.get("probability")
            rows.append((str(p["prediction"]), float(probability) if probability is not None else None))
            version = str(p.get("model_version", version))
        return rows, version
    outputs = {o["name"]: o for o in doc["outputs"]}
    labels = [str(v) for v in outputs["prediction"]["data"]]
    probabilities = outputs.get("probability", {}).get("data") or [None] * len(labels)
    version = doc.get("model_version") or (doc.get("parameters") or {}).get("model_version") or ""
    return [(label, None if p is None else float(p)) for label, p in zip(labels, probabilities, strict=True)], version
