"""PayloadLogger: partitions and round trips, batching, a stalled sink never blocks .log(), sink failures, S3."""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from kfops.components import storage
from kfops.components.contracts import KfopsError
from kfops.serving.payload_log import PayloadLogger
from tests.conftest import free_port


def record(i: int, timestamp: str, model: str = "fraud") -> dict:
    """A flat payload record as the predictor writes it, with missing values among the raw features."""
    return {
        "request_id": f"req-{i}",
        "timestamp": timestamp,
        "model": model,
        "model_version": "3",
        "variant": "canary" if i % 2 else "champion",
        "amount": float("nan") if i % 3 == 0 else 10.5 + i,
        "merchant": None if i % 4 == 0 else f"shop-{i % 5}",
        "hour": np.int64(i % 24),
        "prediction": i % 2,
        "probability": np.float32(0.25) if i % 2 else 0.75,
    }


def expected(rec: dict) -> dict:
    """What a record reads back as: NaN becomes null, numpy scalars plain Python values."""
    out = {}
    for key, value in rec.items():
        value = value.item() if isinstance(value, np.generic) else value
        out[key] = None if isinstance(value, float) and math.isnan(value) else value
    return out


def read_rows(path: Path, fmt: str) -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return pq.read_table(path).to_pylist()


def partition_rows(root: Path, fmt: str) -> dict[str, list[dict]]:
    """'model=x/date=y' -> the rows of all files there, in file order."""
    out: dict[str, list[dict]] = {}
    for path in sorted(root.rglob(f"*.{fmt}")):
        out.setdefault(path.parent.relative_to(root).as_posix(), []).extend(read_rows(path, fmt))
    return out


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rows_land_in_model_and_utc_date_partitions_and_read_back_equal(tmp_path, fmt):
    late = [record(i, f"2026-11-26T23:59:5{i}.5Z") for i in range(4)]
    # 01:30 at UTC+2 is still the 26th in UTC; 00:00:00 exactly is the 27th.
    late.append(record(4, "2026-11-27T01:30:00+02:00"))
    early = [record(i, "2026-11-27T00:00:00+00:00") for i in range(5, 9)]
    other = [record(i, "2026-11-27T12:00:00Z", model="churn") for i in range(9, 12)]

    with (
        PayloadLogger(str(tmp_path), "fraud", fmt=fmt, flush_seconds=60) as fraud,
        PayloadLogger(str(tmp_path), "churn", fmt=fmt, flush_seconds=60) as churn,
    ):
        fraud.log(late[:2])
        fraud.log(late[2:] + early)  # one batch across midnight
        churn.log(other)
        assert fraud.flush(5) and churn.flush(5)
        assert (fraud.written, fraud.files, fraud.dropped) == (9, 2, 0)
        assert (churn.written, churn.files, churn.dropped) == (3, 1, 0)

    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "model=churn/date=2026-11-27",
        "model=fraud/date=2026-11-26",
        "model=fraud/date=2026-11-27",
    ]
    assert all(f.endswith(f".{fmt}") and len(f.rsplit("/", 1)[1].split("-")[1]) == 32 + len(fmt) + 1 for f in files)
    assert partition_rows(tmp_path, fmt) == {
        "model=churn/date=2026-11-27": [expected(r) for r in other],
        "model=fraud/date=2026-11-26": [expected(r) for r in late],
        "model=fraud/date=2026-11-27": [expected(r) for r in early],
    }
    if fmt == "jsonl":
        text = "".join(p.read_text() for p in tmp_path.rglob("*.jsonl"))
        assert "NaN" not in text and '"amount":null' in text


def test_parquet_takes_the_union_of_keys_and_keeps_mixed_type_columns_as_text(tmp_path):
    rows = [
        {"timestamp": "2026-11-26T10:00:00Z", "a": 1},
        {"timestamp": "2026-11-26T10:00:01Z", "b": "x", "mixed": 2.5},
        {"timestamp": "2026-11-26T10:00:02Z", "a": None, "mixed": "high"},
    ]
    with PayloadLogger(str(tmp_path), "m", fmt="parquet") as logger:
        logger.log(rows)
    (path,) = tmp_path.rglob("*.parquet")
    assert pq.read_table(path).to_pylist() == [
        {"timestamp": "2026-11-26T10:00:00Z", "a": 1, "b": None, "mixed": None},
        {"timestamp": "2026-11-26T10:00:01Z", "a": None, "b": "x", "mixed": "2.5"},
        {"timestamp": "2026-11-26T10:00:02Z", "a": None, "b": None, "mixed": "high"},
    ]


def test_records_without_a_usable_timestamp_go_under_the_utc_date_they_were_logged(tmp_path):
    with PayloadLogger(str(tmp_path), "m") as logger:
        logger.log([{"x": 1}, {"timestamp": "not a time", "x": 2}])
    assert logger.written == 2
    (path,) = tmp_path.rglob("*.jsonl")
    assert path.parent.name.startswith("date=20")  # today's UTC date, whatever it is


def test_writes_a_batch_as_soon_as_batch_rows_are_waiting(tmp_path):
    with PayloadLogger(str(tmp_path), "m", batch_rows=10, flush_seconds=60) as logger:
        for i in range(25):
            logger.log([record(i, "2026-11-26T10:00:00Z")])
        assert wait_until(lambda: logger.files == 2)
        time.sleep(0.2)  # the last 5 rows wait for the 60 s timer, not written yet
        assert (logger.written, logger.files, logger.queued) == (20, 2, 5)
        assert logger.flush(5)
        assert (logger.written, logger.files, logger.queued) == (25, 3, 0)
    sizes = sorted(len(read_rows(p, "jsonl")) for p in tmp_path.rglob("*.jsonl"))
    assert sizes == [5, 10, 10]


def test_one_large_log_call_is_split_into_batches_of_batch_rows(tmp_path):
    with PayloadLogger(str(tmp_path), "m", batch_rows=4, flush_seconds=60) as logger:
        logger.log([record(i, "2026-11-26T10:00:00Z") for i in range(10)])
        assert logger.flush(5)
    rows = partition_rows(tmp_path, "jsonl")["model=m/date=2026-11-26"]
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(10)]  # order kept across files
    assert sorted(len(read_rows(p, "jsonl")) for p in tmp_path.rglob("*.jsonl")) == [2, 4, 4]


def test_writes_a_partial_batch_within_flush_seconds(tmp_path):
    with PayloadLogger(str(tmp_path), "m", batch_rows=1000, flush_seconds=0.6) as logger:
        start = time.monotonic()
        logger.log([record(i, "2026-11-26T10:00:00Z") for i in range(5)])
        assert logger.written == 0
        assert wait_until(lambda: logger.files == 1, timeout=5)  # no flush() call: the timer did it
        elapsed = time.monotonic() - start
        # It starts at half the interval, leaving the other half for the write (the durability bound).
        assert 0.25 <= elapsed < 3, elapsed
        assert logger.written == 5


def test_a_stalled_sink_never_makes_log_wait_and_the_overflow_is_counted(tmp_path, monkeypatch):
    real_write = storage.write_bytes
    entered, release = threading.Event(), threading.Event()

    def stalled_write(uri: str, data: bytes) -> None:
        entered.set()
        release.wait(10)  # a sink that hangs (S3 timing out) until the test lets it go
        real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", stalled_write)
    drops: list[int] = []
    logger = PayloadLogger(str(tmp_path), "m", max_queue=1000, batch_rows=100, flush_seconds=0.01, on_drop=drops.append)
    try:
        logger.log([record(0, "2026-11-26T10:00:00Z")])
        assert entered.wait(5)  # the writer holds that row and is stuck in the sink

        one = [record(1, "2026-11-26T10:00:01Z")]
        start = time.perf_counter()
        for _ in range(10_000):
            logger.log(one)
        elapsed = time.perf_counter() - start

        assert elapsed < 0.5, f"10,000 .log() calls took {elapsed:.3f} s against a stalled sink"
        assert logger.queued == 1000  # bounded in rows
        assert logger.dropped == 9000 and sum(drops) == 9000 and set(drops) == {1}
        assert logger.written == 0
    finally:
        release.set()
    assert logger.flush(10)
    assert (logger.written, logger.dropped, logger.files) == (1001, 9000, 11)
    assert logger.close()


def test_a_failing_sink_counts_drops_and_the_writer_survives_to_write_later_batches(tmp_path, monkeypatch, caplog):
    real_write = storage.write_bytes
    broken = True

    def flaky_write(uri: str, data: bytes) -> None:
        if broken:
            raise OSError(28, "No space left on device")
        real_write(uri, data)

    monkeypatch.setattr(storage, "write_bytes", flaky_write)
    drops: list[int] = []
    with (
        caplog.at_level(logging.WARNING, logger="kfops.serving.payload_log"),
        PayloadLogger(str(tmp_path), "m", flush_seconds=0.05, on_drop=drops.append) as logger,
    ):
        logger.log([record(i, "2026-11-26T10:00:00Z") for i in range(7)])
        logger.log([record(i, "2026-11-27T10:00:00Z") for i in range(3)])
        assert logger.flush(5)
        assert (logger.written, logger.dropped, logger.files) == (0, 10, 0)
        assert sorted(drops) == [3, 7]  # one report per lost file
        assert "No space left on device" in caplog.text
        assert logger.alive

        broken = False
        logger.log([record(i, "2026-11-26T11:00:00Z") for i in range(5)])
        assert logger.flush(5)
        assert (logger.written, logger.dropped, logger.files) == (5, 10, 1)
    assert [len(read_rows(p, "jsonl")) for p in tmp_path.rglob("*.jsonl")] == [5]


def test_log_never_raises_into_the_caller(tmp_path):
    def bad_callback(n: int) -> None:
        raise RuntimeError("metrics backend down")

    logger = PayloadLogger(str(tmp_path), "m", max_queue=2, on_drop=bad_callback)
    logger.log(None)  # not a list of records
    logger.log(42)
    logger.log([record(0, "2026-11-26T10:00:00Z")] * 3)  # more than the queue holds; the callback raises
    logger.log([])
    logger.log(record(1, "2026-11-26T10:00:00Z"))  # a lone dict is taken as one record
    logger.log(["not a dict"])
    assert logger.flush(5)
    assert (logger.written, logger.dropped) == (1, 2 + 3 + 1)
    assert logger.on_drop_errors == 4  # three drops on the caller's thread, one at write time; all swallowed
    assert logger.close()
    logger.log([record(2, "2026-11-26T10:00:00Z")])  # after close: counted, not raised
    assert logger.dropped == 7


def test_close_flushes_is_idempotent_and_stops_the_thread(tmp_path):
    logger = PayloadLogger(str(tmp_path), "m", flush_seconds=60)
    logger.log([record(i, "2026-11-26T10:00:00Z") for i in range(3)])
    assert logger.close(timeout=5)
    assert not logger.alive and logger.written == 3
    assert logger.close() and logger.close(timeout=0)
    assert logger.flush(1)  # nothing left to wait for
    with PayloadLogger(str(tmp_path), "other") as ctx:
        ctx.log([record(0, "2026-11-26T10:00:00Z")])
    assert not ctx.alive and ctx.written == 1


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_s3_sink_writes_partitioned_objects_through_the_storage_seam(s3_env, fmt):
    sink = f"s3://payloads/{fmt}/"
    rows = [record(i, "2026-11-26T23:59:59Z" if i < 2 else "2026-11-27T00:00:01Z") for i in range(5)]
    with PayloadLogger(sink, "fraud", fmt=fmt) as logger:
        logger.log(rows)
    assert (logger.written, logger.files, logger.dropped) == (5, 2, 0)

    client = storage.s3_client()
    keys = sorted(o.object_name for o in client.list_objects("payloads", prefix=f"{fmt}/", recursive=True))
    assert [k.rsplit("/", 1)[0] for k in keys] == [
        f"{fmt}/model=fraud/date=2026-11-26",
        f"{fmt}/model=fraud/date=2026-11-27",
    ]
    read_back = []
    for key in keys:
        data = storage.read_bytes(f"s3://payloads/{key}")
        if fmt == "jsonl":
            read_back += [json.loads(line) for line in data.decode().splitlines()]
        else:
            read_back += pq.read_table(io.BytesIO(data)).to_pylist()
    assert read_back == [expected(r) for r in rows]


def test_unreachable_s3_drops_the_batch_and_writes_again_once_s3_is_back(s3_env, monkeypatch):
    monkeypatch.setenv("KFOPS_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    drops: list[int] = []
    with PayloadLogger("s3://payloads/outage", "m", flush_seconds=0.05, on_drop=drops.append) as logger:
        logger.log([record(i, "2026-11-26T10:00:00Z") for i in range(3)])
        assert logger.flush(20)
        assert (logger.written, logger.dropped, drops) == (0, 3, [3])
        assert logger.alive

        monkeypatch.setenv("KFOPS_S3_ENDPOINT_URL", s3_env)
        logger.log([record(i, "2026-11-26T10:00:00Z") for i in range(2)])
        assert logger.flush(10)
        assert (logger.written, logger.dropped, logger.files) == (2, 3, 1)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"fmt": "csv"}, "'csv'"),
        ({"sink_uri": ""}, "''"),
        ({"sink_uri": "   "}, "'   '"),
        ({"sink_uri": "s3://"}, "s3://"),
        ({"model_name": ""}, "''"),
        ({"model_name": "a/b"}, "'a/b'"),
        ({"max_queue": 0}, "max_queue.*0"),
        ({"max_queue": -5}, "max_queue.*-5"),
        ({"max_queue": 1.5}, "max_queue.*1.5"),
        ({"batch_rows": 0}, "batch_rows.*0"),
        ({"batch_rows": True}, "batch_rows.*True"),
        ({"flush_seconds": 0}, "flush_seconds.*0"),
        ({"flush_seconds": -1.0}, "flush_seconds.*-1.0"),
        ({"flush_seconds": float("inf")}, "flush_seconds.*inf"),
        ({"on_drop": "log it"}, "on_drop.*'log it'"),
    ],
)
def test_bad_arguments_raise_kfops_error_naming_the_value(tmp_path, kwargs, named):
    args = {"sink_uri": str(tmp_path), "model_name": "m", **kwargs}
    with pytest.raises(KfopsError, match=named):
        PayloadLogger(**args)
