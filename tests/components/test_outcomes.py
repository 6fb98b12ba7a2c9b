"""Outcomes: logging by request id (CLI, file, HTTP body), and live performance joined to a real payload log,
checked against a hand count."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from kfops.cli import main
from kfops.components import storage
from kfops.components.contracts import KfopsError
from kfops.components.outcomes.logic import live_performance, read_outcomes
from kfops.components.records import log_outcomes, parse_time, pseudonymize, record_outcomes
from kfops.serving.payload_log import PayloadLogger

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # outcomes logged with no timestamp get the real now


def stamp(hours_ago: float) -> str:
    return (NOW - dt.timedelta(hours=hours_ago)).isoformat()


def payload(request_id: str, version: str, variant: str, prediction: str, hours_ago: float = 1.0) -> dict:
    """A record as the predictor logs it (features included)."""
    return {
        "request_id": request_id,
        "timestamp": stamp(hours_ago),
        "model": "fraud",
        "model_version": version,
        "variant": variant,
        "amount": 12.5,
        "channel": "online",
        "prediction": prediction,
        "probability": 0.9 if prediction == "1" else 0.1,
    }


def write_payload_log(sink: str, records: list[dict], fmt: str = "jsonl") -> None:
    with PayloadLogger(sink, "fraud", fmt=fmt, flush_seconds=0.05) as logger:
        logger.log(records)
    assert logger.written == len(records)


# ------------------------------------------------------------------------------------------------ logging
def test_log_from_the_command_line_and_a_file(tmp_path, capsys):
    sink = str(tmp_path / "sink")
    assert main(["outcomes", "log", "--sink", sink, "--request-id", "r-1", "--outcome", "1", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["recorded"] == 1
    path = Path(first["files"][0])
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert path.parent == tmp_path / "sink" / "outcomes" / f"date={today}" and path.suffix == ".jsonl"
    record = json.loads(path.read_text())
    assert record["request_id"] == "r-1" and record["outcome"] == "1" and record["timestamp"].startswith(today)

    table = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "outcome": [0, 1, 1],
            "timestamp": ["2026-11-20T10:00:00Z", "2026-11-21T23:59:59+00:00", "2026-11-21T22:00:00-05:00"],
            "note": ["x", "y", "z"],
        }
    )
    table.to_csv(tmp_path / "outcomes.csv", index=False)
    assert (
        main(["outcomes", "log", "--sink", sink, "--file", str(tmp_path / "outcomes.csv"), "--format", "parquet"]) == 0
    )
    assert "logged 3 outcome(s)" in capsys.readouterr().out
    days = sorted(p.parent.name for p in (tmp_path / "sink" / "outcomes").rglob("*.parquet"))
    assert days == ["date=2026-11-20", "date=2026-11-21", "date=2026-11-22"]  # -05:00 is the next UTC day
    frame, superseded = read_outcomes(sink)
    assert superseded == 0 and sorted(frame["request_id"]) == ["a", "b", "c", "r-1"]
    assert frame.set_index("request_id").loc["c", "timestamp"] == "2026-11-22T03:00:00+00:00"


def test_bad_outcomes_are_refused_naming_the_row(tmp_path, capsys):
    sink = str(tmp_path / "sink")
    pd.DataFrame({"id": ["a"], "outcome": [1]}).to_csv(tmp_path / "no_id.csv", index=False)
    assert main(["outcomes", "log", "--sink", sink, "--file", str(tmp_path / "no_id.csv")]) == 2
    assert "no 'request_id' column; it has: id, outcome" in capsys.readouterr().err
    pd.DataFrame({"request_id": ["a", " "], "outcome": [1, 0]}).to_parquet(tmp_path / "blank.parquet")
    assert main(["outcomes", "log", "--sink", sink, "--file", str(tmp_path / "blank.parquet")]) == 2
    assert "blank.parquet record 1: request_id is empty" in capsys.readouterr().err
    assert main(["outcomes", "log", "--sink", sink, "--request-id", "a"]) == 2
    assert "give --request-id and --outcome" in capsys.readouterr().err
    with pytest.raises(KfopsError, match=r"record 1 \(request_id 'b'\): outcome is empty"):
        log_outcomes([{"request_id": "a", "outcome": 1}, {"request_id": "b", "outcome": None}], sink)
    with pytest.raises(KfopsError, match=r"record 0 \(request_id 'a'\): timestamp 'yesterday' is not a time"):
        log_outcomes([{"request_id": "a", "outcome": 1, "timestamp": "yesterday"}], sink)
    with pytest.raises(KfopsError, match="outcome must be a label, number or boolean"):
        log_outcomes([{"request_id": "a", "outcome": {"nested": 1}}], sink)
    with pytest.raises(KfopsError, match="no outcome records"):
        log_outcomes([], sink)
    assert not (tmp_path / "sink").exists()  # nothing written by any refused call


def test_record_outcomes_takes_the_http_body_shapes(tmp_path):
    sink = str(tmp_path / "sink")
    assert record_outcomes({"request_id": "a", "outcome": True}, sink)["recorded"] == 1
    assert record_outcomes([{"request_id": 7, "outcome": 0.0}], sink)["recorded"] == 1
    body = {"outcomes": [{"request_id": "c", "outcome": "fraud", "timestamp": 1_790_000_000}]}
    result = record_outcomes(body, sink)
    assert result["recorded"] == 1 and "date=2026-09-21" in result["files"][0]
    with pytest.raises(KfopsError, match="the body must be a list"):
        record_outcomes({"outcomes": "a"}, sink)
    with pytest.raises(KfopsError, match="send at most 2"):
        record_outcomes([{"request_id": str(i), "outcome": 1} for i in range(3)], sink, max_records=2)
    with pytest.raises(KfopsError, match="record 0: no 'outcome' field"):
        record_outcomes([{"request_id": "x"}], sink)
    frame, _ = read_outcomes(sink)
    assert dict(zip(frame["request_id"], frame["outcome"], strict=True)) == {"a": True, "7": 0.0, "c": "fraud"}


def test_parse_time_forms():
    assert parse_time("24h", NOW) == NOW - dt.timedelta(hours=24)
    assert parse_time("90m", NOW) == NOW - dt.timedelta(minutes=90)
    assert parse_time("2026-11-20", NOW) == dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    assert parse_time("2026-11-20T10:00:00Z") == dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)
    assert parse_time("2026-11-20T10:00:00+02:00") == dt.datetime(2026, 11, 20, 8, tzinfo=dt.UTC)
    assert parse_time("") is None and parse_time(None) is None


# ------------------------------------------------------------------------------------------------ performance
def test_live_performance_against_a_hand_count(tmp_path):
    sink = str(tmp_path / "sink")
    stable = [payload(f"s{i}", "1", "stable", p) for i, p in enumerate("1100110000")]
    stable += [payload("s-old", "1", "stable", "1", hours_ago=30)]  # before the window
    batch = [payload("multi", "2", "challenger", p) for p in ("1", "0")]  # one request, two rows
    challenger = [payload(f"c{i}", "2", "challenger", p) for i, p in enumerate("10101")] + batch
    write_payload_log(sink, stable)
    write_payload_log(sink, challenger, fmt="parquet")
    outcomes = (
        # stable predictions 1100110000, outcomes 1010 1 0 0 ? 1 0   (s7 has none yet)
        [{"request_id": f"s{i}", "outcome": o} for i, o in enumerate([1, 0, 1, 0, 1, 0, 0], start=0)]
        + [{"request_id": "s8", "outcome": 1}, {"request_id": "s9", "outcome": 0}]
        # challenger predictions 10101 + multi (1, 0); outcomes 1 1 0 "maybe" 1, multi 1
        + [{"request_id": f"c{i}", "outcome": o} for i, o in enumerate([1, 1, 0, "maybe", 1])]
        + [{"request_id": "multi", "outcome": 1}]
        + [{"request_id": "ghost", "outcome": 1}, {"request_id": "s-old", "outcome": 1}]
    )
    log_outcomes(outcomes, sink, now=NOW - dt.timedelta(hours=2))
    # s1 was corrected later: 0 -> 1 (the later timestamp wins).
    log_outcomes([{"request_id": "s1", "outcome": "1", "timestamp": stamp(0.5)}], sink, now=NOW)

    report = live_performance(sink, since="24h", until=NOW, now=NOW)
    assert report.positive_class == "1" and report.negative_class == "0"
    assert report.predictions == 17 and report.superseded_outcomes == 1
    # 17 request ids have an outcome; 'ghost' and 's-old' have no prediction in the window.
    assert report.outcomes == 17 and report.unmatched_outcomes == 2
    by_key = {(g.model_version, g.variant): g for g in report.groups}
    assert set(by_key) == {("1", "stable"), ("2", "challenger")}

    s = by_key[("1", "stable")]
    # predicted 1 1 0 0 1 1 0 _ 0 0 ; actual 1 1 1 0 1 0 0 _ 1 0 (s1 corrected to 1, s7 missing)
    assert (s.predictions, s.joined, s.unmatched_predictions, s.invalid_outcomes) == (10, 9, 1, 0)
    assert (s.tp, s.fp, s.tn, s.fn) == (3, 1, 3, 2)
    assert s.accuracy == pytest.approx(6 / 9) and s.precision == pytest.approx(3 / 4)
    assert s.recall == pytest.approx(3 / 5) and s.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert s.positive_rate == pytest.approx(4 / 9) and s.outcome_positive_rate == pytest.approx(5 / 9)

    c = by_key[("2", "challenger")]
    # predicted 1 0 1 0 1 | 1 0 ; actual 1 1 0 maybe 1 | 1 1 -> c3 invalid; 6 joined
    assert (c.predictions, c.joined, c.unmatched_predictions, c.invalid_outcomes) == (7, 6, 0, 1)
    assert (c.tp, c.fp, c.tn, c.fn) == (3, 1, 0, 2)
    assert c.accuracy == pytest.approx(3 / 6) and c.precision == pytest.approx(3 / 4)
    assert c.recall == pytest.approx(3 / 5)

    # The model filter keeps this model's rows; another model has none.
    only = live_performance(sink, since=stamp(24), until=stamp(0), model="fraud", now=NOW)
    assert {g.variant for g in only.groups} == {"stable", "challenger"}
    none = live_performance(sink, since=stamp(24), model="other", now=NOW)
    assert none.predictions == 0 and none.groups == []
    with pytest.raises(KfopsError, match="the window is empty"):
        live_performance(sink, since="1h", until="2h", now=NOW)


def test_report_command_json_and_table(tmp_path, capsys):
    sink = str(tmp_path / "logs")
    write_payload_log(sink, [payload("a", "3", "default", "yes"), payload("b", "3", "default", "no")])
    outcomes = tmp_path / "outcomes"
    log_outcomes([{"request_id": "a", "outcome": "yes"}, {"request_id": "b", "outcome": "yes"}], str(outcomes))
    args = ["outcomes", "report", "--payload-log", sink, "--outcomes", str(outcomes)]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["positive_class"] == "yes" and report["negative_class"] == "no"
    (group,) = report["groups"]
    assert (group["tp"], group["fn"], group["accuracy"], group["recall"]) == (1, 1, 0.5, 0.5)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "live performance" in out and "0.5000" in out and "2 prediction(s), 2 outcome(s)" in out
    write_payload_log(sink, [payload("c", "3", "default", "maybe")])
    assert main([*args, "--json", "--task", "binary"]) == 2
    assert "a binary model predicts two: use --task multiclass" in capsys.readouterr().err
    assert main([*args, "--json"]) == 0  # three labels: read as a multiclass model
    assert json.loads(capsys.readouterr().out)["task"] == "multiclass"


def test_outcomes_and_payload_log_on_s3(s3_env):
    sink = "s3://monitoring/prod"
    write_payload_log(sink, [payload("a", "1", "stable", "1"), payload("b", "1", "stable", "0")])
    record_outcomes([{"request_id": "a", "outcome": 1}, {"request_id": "b", "outcome": 1}], sink)
    assert any("/outcomes/date=" in uri for uri, _ in storage.list_files(sink))
    report = live_performance(sink, since="48h", now=NOW)
    (group,) = report.groups
    assert (group.joined, group.tp, group.fn, group.recall) == (2, 1, 1, 0.5)


def test_outcomes_join_on_a_business_id_the_payload_log_keeps(tmp_path, capsys, monkeypatch):
    """Outcomes that know the transaction, not the request: logged and reported with --join-on transaction_id.
    Two rows of one request have one request id but their own transaction ids; ids logged as numbers match the
    same ids given as text."""
    sink = str(tmp_path / "sink")
    rows = [
        {**payload("req-1", "1", "default", "1"), "transaction_id": 9001},
        {**payload("req-1", "1", "default", "0"), "transaction_id": 9002},
        {**payload("req-2", "1", "default", "1"), "transaction_id": "tx-3"},
        payload("req-3", "1", "default", "0"),  # a request that sent no transaction id
    ]
    write_payload_log(sink, rows)
    pd.DataFrame({"transaction_id": ["9001", "9002", "tx-9"], "outcome": [1, 1, 0]}).to_csv(
        tmp_path / "chargebacks.csv", index=False
    )
    base = ["outcomes", "log", "--sink", sink, "--join-on", "transaction_id"]
    assert main([*base, "--file", str(tmp_path / "chargebacks.csv")]) == 0
    assert main([*base, "--id", "tx-3", "--outcome", "0"]) == 0
    assert main(["outcomes", "log", "--sink", sink, "--request-id", "req-3", "--outcome", "1"]) == 0
    capsys.readouterr()

    report = live_performance(sink, since="24h", now=NOW, join_on="transaction_id")
    (group,) = report.groups
    # 9001: predicted 1, was 1; 9002: predicted 0, was 1; tx-3: predicted 1, was 0; req-3's row has no transaction id
    assert (group.predictions, group.joined, group.unmatched_predictions) == (4, 3, 1)
    assert (group.tp, group.fn, group.fp, group.tn) == (1, 1, 1, 0)
    assert report.join_on == "transaction_id" and report.outcomes == 4 and report.unmatched_outcomes == 1  # tx-9
    # By request id, only the outcome logged by request id counts.
    by_request = live_performance(sink, since="24h", now=NOW)
    assert (by_request.outcomes, by_request.groups[0].joined) == (1, 1)

    assert main(["outcomes", "report", "--payload-log", sink, "--join-on", "transaction_id", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"][0]["joined"] == 3
    assert main(["outcomes", "report", "--payload-log", sink, "--join-on", "transaction_id"]) == 0
    assert "joined on transaction_id" in capsys.readouterr().out
    assert main(["outcomes", "report", "--payload-log", sink, "--join-on", "prediction"]) == 2
    assert "cannot join on 'prediction'" in capsys.readouterr().err
    # The KFP stage takes the same option.
    from kfp import dsl

    from kfops.components.outcomes.component import outcome_performance_op

    report_artifact = dsl.Artifact(name="report", uri=str(tmp_path / "report.json"), metadata={})
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics.json"), metadata={})
    joined, task, *_ = outcome_performance_op.python_func(
        payload_log_uri=sink,
        outcomes_uri="",
        since="24h",
        until="",
        positive_class="",
        model="",
        report=report_artifact,
        metrics=metrics,
        join_on="transaction_id",
    )
    assert (
        joined == 3
        and task == "binary"
        and json.loads((tmp_path / "report.json").read_text())["join_on"] == "transaction_id"
    )
    capsys.readouterr()  # what the stage printed

    # A join key the server hashed (--payload-log-hash transaction_id): the outcomes' ids are hashed the same way.
    hashed_sink = str(tmp_path / "hashed")
    salt = b"s3cret"
    write_payload_log(hashed_sink, [{**r, "transaction_id": pseudonymize(r.get("transaction_id"), salt)} for r in rows])
    log_outcomes([{"transaction_id": 9001, "outcome": 1}], hashed_sink, key="transaction_id")
    monkeypatch.setenv("KFOPS_PAYLOAD_LOG_SALT", "s3cret")
    args = ["outcomes", "report", "--payload-log", hashed_sink, "--join-on", "transaction_id", "--join-hashed"]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"][0]["tp"] == 1
    monkeypatch.delenv("KFOPS_PAYLOAD_LOG_SALT")
    assert main([*args, "--json"]) == 2
    assert "--join-hashed needs the salt" in capsys.readouterr().err


def test_record_outcomes_takes_a_join_key_in_the_body(tmp_path):
    sink = str(tmp_path / "sink")
    body = {"join_on": "transaction_id", "outcomes": [{"transaction_id": 17, "outcome": 1}]}
    assert record_outcomes(body, sink)["recorded"] == 1
    frame, _ = read_outcomes(sink, key="transaction_id")
    assert frame.to_dict(orient="records")[0]["transaction_id"] == "17"
    assert read_outcomes(sink)[0].empty  # not an outcome by request id
    with pytest.raises(KfopsError, match="record 0: no 'transaction_id' field"):
        record_outcomes({"join_on": "transaction_id", "outcomes": [{"request_id": "a", "outcome": 1}]}, sink)


def test_live_performance_of_a_multiclass_model_against_a_hand_count(tmp_path, capsys):
    sink = str(tmp_path / "sink")
    # predicted  a a b b c c a  ; actual a b b b c a (none)
    predicted = ["a", "a", "b", "b", "c", "c", "a"]
    write_payload_log(sink, [payload(f"m{i}", "4", "stable", p) for i, p in enumerate(predicted)])
    log_outcomes([{"request_id": f"m{i}", "outcome": o} for i, o in enumerate("abbbca")], sink)
    report = live_performance(sink, since="24h", now=NOW + dt.timedelta(minutes=5))
    assert report.task == "multiclass" and report.classes == ["a", "b", "c"] and report.positive_class is None
    (group,) = report.groups
    assert (group.predictions, group.joined, group.unmatched_predictions, group.invalid_outcomes) == (7, 6, 1, 0)
    # per class: a 1/2 predicted right of 2 actual (recall 1/2), b 2/3 (2/2 precision), c 1/1 of 2 predicted
    assert group.accuracy == pytest.approx(4 / 6)
    assert group.balanced_accuracy == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    precision = {"a": 1 / 2, "b": 2 / 2, "c": 1 / 2}
    assert group.precision_macro == pytest.approx(sum(precision.values()) / 3)
    assert group.predicted_shares == pytest.approx({"a": 2 / 6, "b": 2 / 6, "c": 2 / 6})
    assert group.outcome_shares == pytest.approx({"a": 2 / 6, "b": 3 / 6, "c": 1 / 6})
    with pytest.raises(AttributeError, match="no 'tp'"):
        _ = group.tp
    args = ["outcomes", "report", "--payload-log", sink, "--since", "24h"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "live performance (multiclass)" in out and "balanced accuracy" in out and "0.7222" in out


def test_live_performance_of_a_regression_against_a_hand_count(tmp_path, capsys):
    sink = str(tmp_path / "sink")
    records = [
        {**payload(f"r{i}", "2", "canary", "0"), "prediction": p, "probability": None}
        for i, p in enumerate([10.0, 20.0, 30.0, 40.0])
    ]
    write_payload_log(sink, records, fmt="parquet")
    log_outcomes(
        [
            {"request_id": "r0", "outcome": 12},
            {"request_id": "r1", "outcome": "17.5"},
            {"request_id": "r2", "outcome": 30},
            {"request_id": "r3", "outcome": "n/a"},
        ],
        sink,
    )
    report = live_performance(sink, since="24h", now=NOW + dt.timedelta(minutes=5))
    assert report.task == "regression" and report.classes == []
    (group,) = report.groups
    assert (group.predictions, group.joined, group.invalid_outcomes) == (4, 3, 1)  # "n/a" is not a number
    errors = [10 - 12, 20 - 17.5, 0.0]
    assert group.rmse == pytest.approx((sum(e * e for e in errors) / 3) ** 0.5)
    assert group.mae == pytest.approx(4.5 / 3)
    assert group.median_ae == pytest.approx(2.0)
    assert group.mean_prediction == pytest.approx(20.0) and group.mean_outcome == pytest.approx(59.5 / 3)
    assert main(["outcomes", "report", "--payload-log", sink, "--since", "24h"]) == 0
    out = capsys.readouterr().out
    assert "live performance (regression)" in out and "rmse" in out and "1 outcome(s) are not numbers" in out
    # Told it is a classifier, the numbers read as labels; told a classifier's log is a regression, it says so.
    assert live_performance(sink, since="24h", now=NOW, task="multiclass").task == "multiclass"
    labels = str(tmp_path / "labels")
    write_payload_log(labels, [payload("x", "1", "stable", "fraud")])
    with pytest.raises(KfopsError, match=re.escape("prediction(s) are not numbers (e.g. 'fraud', request x)")):
        live_performance(labels, since="24h", now=NOW, task="regression")
    with pytest.raises(KfopsError, match="unknown task 'ranking'"):
        live_performance(labels, task="ranking")
