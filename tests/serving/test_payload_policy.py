"""The payload log's privacy controls (serving/payload_policy.py) on real files: fields dropped and hashed by the
writer thread, retention by age and by size on a local folder and on S3 (moto's server), and the server flags."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from kfops.components import storage
from kfops.components.contracts import KfopsError
from kfops.components.records import encode_records, pseudonymize
from kfops.serving.cli import build_parser
from kfops.serving.payload_log import PayloadLogger
from kfops.serving.payload_policy import FieldPolicy, Retention, parse_size, policy_argv, policy_from_args

SALT = b"a-secret-salt"
TODAY = dt.datetime.now(dt.UTC).date()


def day(days_ago: int) -> str:
    return (TODAY - dt.timedelta(days=days_ago)).isoformat()


def record(i: int, timestamp: str | None = None) -> dict:
    return {
        "request_id": f"req-{i}",
        "timestamp": timestamp or dt.datetime.now(dt.UTC).isoformat(),
        "model": "fraud",
        "model_version": "1",
        "variant": "default",
        "log_format": 1,
        "transaction_id": f"tx-{i}",
        "customer_id": 1000 + i,
        "email": f"user{i}@example.com",
        "amount": 12.5 + i,
        "prediction": "0",
        "probability": 0.1,
    }


def rows_under(root: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(root.rglob("*.jsonl")) for line in f.read_text().splitlines()]


def old_files(sink: Path, days_ago: int, n: int = 2, size: int = 0) -> list[Path]:
    """Files as an earlier run of the logger left them, in a date partition ``days_ago`` days back."""
    folder = sink / "model=fraud" / f"date={day(days_ago)}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"{day(days_ago).replace('-', '')}T00000{k}000000Z-{days_ago}{k}.jsonl"
        data = encode_records([record(k, f"{day(days_ago)}T00:00:00+00:00")], "jsonl")
        path.write_bytes(data + b" " * max(0, size - len(data)))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ drop and hash
def test_dropped_fields_are_never_written_and_hashed_ones_are_salted_sha256(tmp_path):
    policy = FieldPolicy(drop=frozenset({"email"}), hash=frozenset({"customer_id", "absent"}), salt=SALT)
    with PayloadLogger(str(tmp_path), "fraud", flush_seconds=0.05, fields=policy) as logger:
        logger.log([record(0), record(1)])
        logger.log([{**record(2), "customer_id": None}])
    rows = rows_under(tmp_path)
    assert logger.written == 3 and len(rows) == 3
    assert all("email" not in row for row in rows)
    assert "user0@example.com" not in "".join(p.read_text() for p in tmp_path.rglob("*.jsonl"))
    want = hmac.new(SALT, b"1000", hashlib.sha256).hexdigest()
    assert rows[0]["customer_id"] == want == pseudonymize(1000, SALT) == pseudonymize("1000", SALT)
    assert rows[1]["customer_id"] != want and len(rows[1]["customer_id"]) == 64
    assert rows[2]["customer_id"] is None  # a missing value stays missing
    assert pseudonymize(1000, b"another-salt") != want
    # Everything else is as logged, the join keys included.
    assert [r["transaction_id"] for r in rows] == ["tx-0", "tx-1", "tx-2"] and rows[0]["amount"] == 12.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": frozenset({"request_id"})}, "cannot be dropped or hashed"),
        ({"hash": frozenset({"prediction"}), "salt": SALT}, "cannot be dropped or hashed"),
        ({"drop": frozenset({"email"}), "hash": frozenset({"email"}), "salt": SALT}, "both dropped and hashed"),
        ({"hash": frozenset({"customer_id"})}, "needs a secret salt"),
    ],
)
def test_a_policy_that_would_break_the_log_is_refused(kwargs, message):
    with pytest.raises(KfopsError, match=message):
        FieldPolicy(**kwargs)


def test_the_server_flags_make_the_policy_and_hashing_needs_the_salt_variable(monkeypatch):
    argv = ["--model", "/mnt/models", "--payload-log", "/tmp/x", "--payload-log-drop", "email, phone"]
    argv += ["--payload-log-hash", "customer_id", "--payload-log-retention-days", "30"]
    argv += ["--payload-log-max-bytes", "10G", "--allow-extra-fields"]
    args = build_parser().parse_args(argv)
    monkeypatch.delenv("KFOPS_PAYLOAD_LOG_SALT", raising=False)
    with pytest.raises(KfopsError, match=r"needs a secret salt in \$KFOPS_PAYLOAD_LOG_SALT"):
        policy_from_args(args)
    monkeypatch.setenv("KFOPS_PAYLOAD_LOG_SALT", "s3cret")
    fields, retention = policy_from_args(args)
    assert fields == FieldPolicy(drop=frozenset({"email", "phone"}), hash=frozenset({"customer_id"}), salt=b"s3cret")
    assert (retention.days, retention.max_bytes) == (30, 10 * 1024**3)
    assert args.allow_extra_fields
    # kfops serve --challenger passes the same controls on to its child predictors
    assert policy_argv(args) == [
        "--payload-log-retention-days",
        "30",
        "--payload-log-max-bytes",
        "10G",
        "--payload-log-drop",
        "email, phone",
        "--payload-log-hash",
        "customer_id",
    ]
    assert policy_from_args(build_parser().parse_args(["--model", "m"])) == (None, None)
    assert parse_size("500M") == 500 * 1024**2 and parse_size("2048") == 2048 and parse_size("1.5KiB") == 1536
    with pytest.raises(KfopsError, match="not a size"):
        parse_size("lots")


# ------------------------------------------------------------------------------------------------ retention
def test_retention_by_days_deletes_whole_old_date_partitions(tmp_path):
    old = old_files(tmp_path, days_ago=10) + old_files(tmp_path, days_ago=8)
    kept = old_files(tmp_path, days_ago=7) + old_files(tmp_path, days_ago=1)
    other_model = tmp_path / "model=other" / f"date={day(30)}" / "x.jsonl"
    other_model.parent.mkdir(parents=True)
    other_model.write_text("{}\n")
    outcomes = tmp_path / "outcomes" / f"date={day(30)}" / "y.jsonl"
    outcomes.parent.mkdir(parents=True)
    outcomes.write_text("{}\n")
    # The writer thread enforces retention when it starts, and again on close.
    with PayloadLogger(str(tmp_path), "fraud", flush_seconds=0.05, retention=Retention(days=7)) as logger:
        logger.log([record(0)])
    assert logger.deleted_files == 4
    assert not any(p.exists() for p in old) and all(p.exists() for p in kept)
    assert not (tmp_path / "model=fraud" / f"date={day(10)}").exists()  # no empty folder left behind
    assert other_model.exists() and outcomes.exists()  # only this model's log is its business
    assert len(rows_under(tmp_path / "model=fraud" / f"date={TODAY.isoformat()}")) == 1


def test_retention_by_size_deletes_the_oldest_files_first(tmp_path):
    oldest = old_files(tmp_path, days_ago=3, n=2, size=1000)
    newer = old_files(tmp_path, days_ago=2, n=2, size=1000)
    with PayloadLogger(str(tmp_path), "fraud", flush_seconds=0.05, retention=Retention(max_bytes=2500)) as logger:
        logger.log([record(0)])
        assert logger.flush(timeout=10)
    files = {p: p.stat().st_size for p in (tmp_path / "model=fraud").rglob("*.jsonl")}
    assert not any(p.exists() for p in oldest) and all(p.exists() for p in newer)
    assert sum(files.values()) <= 2500 and len(files) == 3  # two 1,000-byte files and the new one
    # A limit below the newest file alone still keeps that file.
    assert Retention(max_bytes=1).enforce(str(tmp_path / "model=fraud")) == (2, 2000)
    assert [p.name for p in (tmp_path / "model=fraud").rglob("*.jsonl")] == [p.name for p in files if p not in newer]


def test_retention_on_s3_through_the_storage_seam(s3_env):
    sink = "s3://payload-retention/logs"
    for days_ago in (9, 8, 2):
        for k in range(2):
            uri = storage.join(sink, "model=fraud", f"date={day(days_ago)}", f"{day(days_ago)}T0{k}-{k}.jsonl")
            storage.write_bytes(uri, b"x" * 100)
    storage.write_bytes(storage.join(sink, "outcomes", f"date={day(30)}", "o.jsonl"), b"{}\n")
    assert storage.list_folders(storage.join(sink, "model=fraud")) == [f"date={day(d)}" for d in (9, 8, 2)]
    with PayloadLogger(sink, "fraud", flush_seconds=0.05, retention=Retention(days=5)) as logger:
        logger.log([record(0)])
    assert logger.deleted_files == 4
    left = [uri.rsplit("/", 2)[1] for uri, _ in storage.list_files(sink)]
    assert sorted(left) == sorted([f"date={day(2)}", f"date={day(2)}", f"date={TODAY.isoformat()}", f"date={day(30)}"])
    assert Retention(max_bytes=150).enforce(storage.join(sink, "model=fraud")) == (2, 200)
    assert len(storage.list_files(storage.join(sink, "model=fraud"))) == 1


def test_bad_retention_settings_are_refused():
    with pytest.raises(KfopsError, match="retention days"):
        Retention(days=-1)
    with pytest.raises(KfopsError, match="max_bytes"):
        Retention(max_bytes=0)


def test_the_flush_interval_flag_reaches_child_predictors_and_a_bad_one_is_refused_naming_it(capsys):
    parser = build_parser()
    assert parser.parse_args(["--model", "m"]).payload_log_flush_seconds == 2.0
    args = parser.parse_args(["--model", "m", "--payload-log", "/tmp/x", "--payload-log-flush-seconds", "0.5"])
    assert args.payload_log_flush_seconds == 0.5
    assert policy_argv(args) == ["--payload-log-flush-seconds", "0.5"]  # kfops serve --challenger's children
    assert policy_argv(parser.parse_args(["--model", "m"])) == []
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--model", "m", "--payload-log-flush-seconds", bad])
        assert f"--payload-log-flush-seconds: must be a positive number of seconds, got '{bad}'" in (
            capsys.readouterr().err
        )
