"""A request logged as columns (PayloadColumns) writes the files a dict per row wrote: the same JSONL bytes, the same
Parquet table; it splits, drops, hashes and dates as records do, and counts as its rows against the queue."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from kfops.components.contracts import PAYLOAD_LOG_FORMAT_VERSION, PAYLOAD_META_COLUMNS
from kfops.components.records import encode_jsonl, encode_parquet
from kfops.serving.payload_columns import PayloadColumns, encode_columns_parquet
from kfops.serving.payload_log import PayloadLogger
from kfops.serving.payload_policy import FieldPolicy

from .test_payload_log import partition_rows, wait_until

# Text that could confuse a line splitter or a formatter: separators, quotes, escapes, percent signs, non-ASCII.
AWKWARD = ['a},{"b', 'x"', "", 'q","r', "50%", "tab\tnew\nline", "ümlaut ✓", None, "\\", "},{"]


def request_columns(
    rows: int, request_id: str = "req-1", timestamp: str = "2026-12-05T23:59:59.5+00:00", awkward: list = AWKWARD
):
    """One request's payload as the predictor logs it, and the records a dict per row made of it (by hand)."""
    rng = np.random.default_rng(rows)
    amount = rng.normal(50, 20, rows)
    amount[::3] = np.nan  # missing numerics
    merchant = [awkward[i % len(awkward)] for i in range(rows)]
    customer = [i if i % 4 else f"C-{i}" for i in range(rows)]  # an id column of mixed types (JSON as sent)
    prediction = ["1" if i % 2 else "0" for i in range(rows)]
    probability = rng.random(rows).tolist()
    meta = dict(
        zip(
            PAYLOAD_META_COLUMNS,
            (request_id, timestamp, "fraud", "3", "default", PAYLOAD_LOG_FORMAT_VERSION),
            strict=True,
        )
    )
    fields = {**meta, "customer_id": customer, "amount": amount, "merchant": merchant}
    fields |= {"prediction": prediction, "probability": probability}
    records = []
    for i in range(rows):
        value = float(amount[i])
        records.append(
            {
                **meta,
                "customer_id": customer[i],
                "amount": None if math.isnan(value) else value,
                "merchant": merchant[i],
                "prediction": prediction[i],
                "probability": probability[i],
            }
        )
    return PayloadColumns(rows, fields, shared=PAYLOAD_META_COLUMNS), records


def read_back(records: list[dict], fmt: str) -> list[dict]:
    """What the records read back as: Parquet keeps a column of mixed types (the ids here) as text."""
    if fmt == "jsonl":
        return records
    return [{**r, "customer_id": str(r["customer_id"])} for r in records]


@pytest.mark.parametrize("rows", [1, 7, 256, 600])
@pytest.mark.parametrize("text", ["awkward", "no record separator"])
def test_columns_make_the_records_and_the_jsonl_bytes_a_dict_per_row_made(rows, text):
    # '},{' in a value makes the encoder take its general path; without it, the meta columns are spliced in
    columns, records = request_columns(rows, awkward=AWKWARD if text == "awkward" else AWKWARD[1:-1])
    assert columns.records() == records
    assert [list(r) for r in columns.records()] == [list(r) for r in records]  # the fields' order too
    assert columns.jsonl() == encode_jsonl(records)
    assert [json.loads(line) for line in columns.jsonl().splitlines()] == records
    assert columns[3:5].records() == records[3:5] if rows > 5 else columns[0:1].records() == records[:1]


def test_columns_make_the_parquet_table_records_made():
    first, first_records = request_columns(40, "req-1")
    second, second_records = request_columns(9, "req-2")
    ours = pq.read_table(io.BytesIO(encode_columns_parquet([first, second])))
    theirs = pq.read_table(io.BytesIO(encode_parquet(first_records + second_records)))
    assert ours.schema == theirs.schema
    assert ours.to_pylist() == theirs.to_pylist() == read_back(first_records + second_records, "parquet")


def test_a_field_shared_after_per_row_fields_keeps_its_place():
    columns = PayloadColumns(2, {"a": [1, 2], "model": "m", "b": np.array([0.5, np.nan])}, shared=["model"])
    assert [list(r.items()) for r in columns.records()] == [
        [("a", 1), ("model", "m"), ("b", 0.5)],
        [("a", 2), ("model", "m"), ("b", None)],
    ]


def test_the_field_policy_drops_and_hashes_columns_as_it_does_records():
    policy = FieldPolicy(drop=frozenset({"merchant"}), hash=frozenset({"customer_id", "tenant"}), salt=b"pepper")
    columns, records = request_columns(30)
    # a field every row shares that is hashed: once for the request
    columns = PayloadColumns(30, {**columns.fields, "tenant": "acme"}, shared=[*columns.shared, "tenant"])
    for record in records:
        record["tenant"] = "acme"
        policy.apply(record)
    assert columns.with_policy(policy).records() == records
    assert columns.with_policy(policy).jsonl() == encode_jsonl(records)


def test_columns_of_unequal_length_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="field 'b' has 1 values for 2 rows"):
        PayloadColumns(2, {"a": [1, 2], "b": [1]})


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_the_logger_writes_columns_and_records_into_the_same_files_split_by_batch_and_dated(tmp_path, fmt):
    # One request before midnight as columns, records after it, a request larger than batch_rows: the writer splits
    # the columns between batches and dates each request by its timestamp.
    late, late_records = request_columns(150, "late", "2026-12-05T23:59:59.9+00:00")
    early_records = request_columns(5, "early", "2026-12-06T00:00:00.1Z")[1]
    big, big_records = request_columns(260, "big", "2026-12-06T00:00:01+00:00")
    # one-row requests (batch-1 traffic) go through records, encoded together
    ones = [request_columns(1, f"one-{i}", "2026-12-06T00:00:02+00:00", awkward=[f"m{i}"]) for i in range(3)]
    with PayloadLogger(str(tmp_path), "fraud", fmt=fmt, batch_rows=100, flush_seconds=0.2) as logger:
        logger.log(late)
        logger.log(early_records)
        logger.log(big)
        for columns, _ in ones:
            logger.log(columns)
        assert logger.flush(10)
        assert (logger.written, logger.dropped) == (418, 0)
        assert logger.files >= 5  # 415 rows in batches of at most 100
    found = partition_rows(tmp_path, fmt)
    assert found == {
        "model=fraud/date=2026-12-05": read_back(late_records, fmt),
        "model=fraud/date=2026-12-06": read_back(early_records + big_records + [r for _, [r] in ones], fmt),
    }


def test_columns_count_as_their_rows_against_the_queue(tmp_path, monkeypatch):
    import threading

    from kfops.components import storage

    release = threading.Event()
    real_write = storage.write_bytes
    monkeypatch.setattr(storage, "write_bytes", lambda uri, data: (release.wait(10), real_write(uri, data)))
    dropped = []
    logger = PayloadLogger(str(tmp_path), "fraud", max_queue=100, batch_rows=60, on_drop=dropped.append)
    try:
        logger.log(request_columns(60)[0])  # taken by the writer, which then stalls on the sink
        assert wait_until(lambda: logger.queued == 0)
        logger.log(request_columns(70)[0])  # queued
        logger.log(request_columns(40)[0])  # 70 + 40 > 100: dropped whole, counted in rows
        assert (logger.queued, logger.dropped, dropped) == (70, 40, [40])
    finally:
        release.set()
        logger.close()
    assert logger.written == 130


def test_the_predictor_logs_large_requests_as_columns_and_small_ones_as_records_with_the_same_fields(
    registered_model, tmp_path
):
    from fastapi.testclient import TestClient

    from kfops.serving.app import build_app
    from kfops.serving.predictor import SMALL_LOG_ROWS, TabularPredictor

    from .helpers import v1_objects

    logger = PayloadLogger(str(tmp_path), "fraud", flush_seconds=0.05)
    predictor = TabularPredictor("fraud", str(registered_model.model_dir), payload_logger=logger)
    predictor.load()
    sizes = (SMALL_LOG_ROWS + 8, 2)
    try:
        with TestClient(build_app(predictor)) as client:
            for n in sizes:
                rows = v1_objects(registered_model.rows.head(n))
                response = client.post("/v1/models/fraud:predict", json={"instances": rows})
                assert response.status_code == 200, response.text
        assert logger.flush(10)
    finally:
        predictor.stop()
    [logged] = partition_rows(tmp_path, "jsonl").values()
    assert len(logged) == sum(sizes)
    assert len({tuple(row) for row in logged}) == 1  # one field list, in one order, whichever way it was logged
    sent = v1_objects(registered_model.rows.head(sizes[0])) + v1_objects(registered_model.rows.head(sizes[1]))
    for row, request in zip(logged, sent, strict=True):
        assert {name: row[name] for name in request} == request
