"""The record-file seam: encoders, the streaming writer, and the payload log's format version."""

from __future__ import annotations

import datetime as dt
import io
import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfops.components.contracts import PAYLOAD_LOG_FORMAT_VERSION, KfopsError, payload_log_partition
from kfops.components.records import (
    RecordFileWriter,
    encode_records,
    read_record_file,
    record_file_name,
)


def test_jsonl_writes_missing_values_as_null_and_numpy_scalars_as_numbers():
    records = [{"a": np.float32(1.5), "b": math.nan, "c": pd.NA, "d": np.int64(3), "e": dt.date(2026, 1, 2)}]
    [line] = encode_records(records, "jsonl").splitlines()
    assert json.loads(line) == {"a": 1.5, "b": None, "c": None, "d": 3, "e": "2026-01-02"}


def test_parquet_keeps_a_mixed_column_as_text_and_takes_the_union_of_keys():
    data = encode_records([{"x": 1, "y": "a"}, {"x": "two", "z": 2.5}], "parquet")
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == ["x", "y", "z"]
    assert table.column("x").to_pylist() == ["1", "two"]
    assert table.column("z").to_pylist() == [None, 2.5]


def test_an_unknown_format_is_refused():
    with pytest.raises(KfopsError, match="csv"):
        encode_records([{"a": 1}], "csv")


def test_file_names_sort_by_write_time():
    early = record_file_name("jsonl", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    late = record_file_name("jsonl", dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    assert early < late and early.endswith(".jsonl") and early != record_file_name("jsonl")


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_the_writer_puts_a_whole_file_in_place_only_on_commit(tmp_path, fmt):
    target = tmp_path / "out" / f"part-0.{fmt}"
    writer = RecordFileWriter(str(target), fmt, repeating=["model"])
    writer.write(pa.table({"model": ["m", "m"], "p": [0.1, 0.9]}))
    writer.write(pa.table({"model": ["m"], "p": [0.5]}))
    assert not target.exists()
    writer.commit(pa.schema([("model", pa.string()), ("p", pa.float64())]))
    frame = read_record_file(str(target), ["model", "p", "absent"])
    assert frame["p"].tolist() == [0.1, 0.9, 0.5] and frame["absent"].isna().all()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_an_aborted_writer_leaves_nothing(tmp_path):
    target = tmp_path / "part-0.parquet"
    writer = RecordFileWriter(str(target), "parquet")
    writer.write(pa.table({"p": [1.0]}))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def _payload_file(sink, version):
    folder = sink.joinpath(*payload_log_partition("m", "2026-01-01"))
    folder.mkdir(parents=True)
    record = {"request_id": "r", "timestamp": "2026-01-01T00:00:00+00:00", "model": "m", "model_version": "1"}
    record.update(variant="default", log_format=version, x=1.0, prediction="1", probability=0.9)
    (folder / record_file_name("jsonl")).write_bytes(encode_records([record], "jsonl"))


def test_payload_log_records_of_a_newer_format_are_refused_by_every_reader(tmp_path):
    from kfops.components.monitor.sources import iter_chunks, open_window
    from kfops.components.outcomes.logic import read_predictions

    _payload_file(tmp_path / "now", PAYLOAD_LOG_FORMAT_VERSION)
    assert len(read_predictions(str(tmp_path / "now"))) == 1
    _payload_file(tmp_path / "later", PAYLOAD_LOG_FORMAT_VERSION + 1)
    with pytest.raises(KfopsError, match=f"format {PAYLOAD_LOG_FORMAT_VERSION + 1}, newer"):
        read_predictions(str(tmp_path / "later"))
    with pytest.raises(KfopsError, match="upgrade kfops"):
        list(iter_chunks(open_window(str(tmp_path / "later"))))
