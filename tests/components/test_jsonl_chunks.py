"""JSONL is encoded in chunks of records (the payload writer shares the GIL with the serving event loop): the
bytes are the same as one record a line, across chunk boundaries and with a record that needs cleaning."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import orjson

from kfops.components.records import JSONL_CHUNK_RECORDS, encode_jsonl


def test_chunked_jsonl_is_one_line_per_record_across_chunk_boundaries():
    n = 2 * JSONL_CHUNK_RECORDS + 7
    records = [
        {"request_id": f"r{i}", "amount": float(i), "score": np.float32(0.5), "missing": math.nan} for i in range(n)
    ]
    records[JSONL_CHUNK_RECORDS + 3]["when"] = dt.date(2026, 12, 5)  # orjson cannot write it as is: cleaned
    lines = encode_jsonl(records).decode().splitlines()
    assert len(lines) == n
    for i, line in enumerate(lines):
        parsed = orjson.loads(line)
        assert parsed["request_id"] == f"r{i}" and parsed["amount"] == float(i) and parsed["missing"] is None
    assert orjson.loads(lines[JSONL_CHUNK_RECORDS + 3])["when"] == "2026-12-05"
    assert encode_jsonl(iter(records)) == encode_jsonl(records)
    assert encode_jsonl([]) == b""
