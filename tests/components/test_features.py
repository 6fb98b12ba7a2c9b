"""The feature store (components/features) with real Feast: a file offline store over Parquet snapshots, a sqlite
online store and registry in a temporary repository, a real Pushgateway for the freshness gauges."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kfp import dsl

from kfops.components.contracts import KfopsError
from kfops.components.feature_store import definitions, online
from kfops.components.feature_store.definitions import ACTIVITY_VIEW, FRAUD_SERVICE, PROFILE_VIEW
from kfops.components.feature_store.store import (
    LOCAL_TEMPLATE,
    REASON_EXPIRED,
    REASON_NO_HISTORY,
    feature_view_names,
    open_store,
    resolve_service,
)
from kfops.components.features import logic
from tests.conftest import free_port
from tests.tools import require

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = pd.Timestamp("2026-02-01T12:00:00Z")
FEATURES = definitions.service_features(FRAUD_SERVICE)


def source_frame(rows: list[dict]) -> pd.DataFrame:
    """A snapshot-shaped table: every required column, with defaults where a row does not say."""
    defaults = {"account_age_days": 100.0, "customer_age": 40.0, "avg_amount_30d": 50.0, "transactions_last_24h": 1}
    frame = pd.DataFrame([{**defaults, **row} for row in rows])
    frame["customer_id"] = frame["customer_id"].astype(np.int64)
    frame["transactions_last_24h"] = frame["transactions_last_24h"].astype(np.int64)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


def make_store(root: Path, source: pd.DataFrame):
    root.mkdir(parents=True, exist_ok=True)
    path = root / "source.parquet"
    source.to_parquet(path, index=False)
    logic.init_repo(root / "repo")
    store = open_store(root / "repo")
    logic.apply_definitions(store, str(path))
    return store


@pytest.fixture(scope="module")
def generated(tmp_path_factory, transactions):
    """The generated transactions as the source, applied and materialised over their whole span."""
    root = tmp_path_factory.mktemp("features")
    store = make_store(root, transactions)
    logic.materialize(store, start="2025-12-31", end=transactions["event_time"].max() + pd.Timedelta(seconds=1))
    return store, transactions


# ------------------------------------------------------------------------------------------------ apply
def test_apply_registers_the_definitions(generated):
    store, _ = generated
    assert feature_view_names(store) == sorted(definitions.FEATURE_VIEWS)
    assert sorted(s.name for s in store.list_feature_services()) == sorted(definitions.FEATURE_SERVICES)
    layout = resolve_service(store, FRAUD_SERVICE)
    assert layout.entity_key == "customer_id" and layout.key_type == "int" and layout.features == FEATURES
    assert layout.ttls == {PROFILE_VIEW: 400 * 86400.0, ACTIVITY_VIEW: 30 * 86400.0}


def test_apply_rejects_a_source_without_the_columns(tmp_path, transactions):
    broken = transactions.drop(columns=["customer_age"]).assign(customer_id=transactions["customer_id"].astype(str))
    broken.to_parquet(tmp_path / "broken.parquet", index=False)
    logic.init_repo(tmp_path / "repo")
    store = open_store(tmp_path / "repo")
    with pytest.raises(KfopsError) as err:
        logic.apply_definitions(store, str(tmp_path / "broken.parquet"))
    assert "column 'customer_age' is missing" in str(err.value)
    assert "entity column 'customer_id' must be integers, it is string" in str(err.value)
    assert feature_view_names(store) == []  # nothing half-applied
    with pytest.raises(KfopsError, match="does not exist"):
        logic.apply_definitions(store, str(tmp_path / "nowhere.parquet"))


def test_open_store_needs_a_feature_store_yaml(tmp_path):
    with pytest.raises(KfopsError, match=r"no feature_store\.yaml there; run `kfops features apply`"):
        open_store(tmp_path)


def test_cluster_feature_store_yaml_is_a_valid_feast_config():
    """manifests/feature-store/feature_store.yaml: Redis online, registry on MinIO."""
    from feast.repo_config import load_repo_config

    path = REPO_ROOT / "manifests" / "feature-store" / "feature_store.yaml"
    config = load_repo_config(path.parent, path)
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == "kfops-feature-redis:6379"
    assert config.registry.path == "s3://kfops/feature-store/registry.db"
    assert config.offline_store.type == "file"
    local = LOCAL_TEMPLATE
    local_config = load_repo_config(local.parent, local)
    assert (local_config.online_store.type, local_config.offline_store.type) == ("sqlite", "file")
    assert local_config.project == config.project == "kfops"


# ------------------------------------------------------------------------------------------------ training sets
def test_training_rows_get_their_own_transactions_values(generated):
    """Each transaction's customer features as of its own time are those it recorded: the join reproduces the
    raw table exactly, row order and other columns kept."""
    store, tx = generated
    entities = tx[["transaction_id", "customer_id", "event_time", "amount", "is_fraud"]]
    frame, report = logic.training_set(store, entities, source="tx")
    assert list(frame.columns) == [*entities.columns, *FEATURES]
    assert frame["transaction_id"].tolist() == tx["transaction_id"].tolist()
    pd.testing.assert_frame_equal(frame[FEATURES], tx[FEATURES].reset_index(drop=True), check_dtype=False)
    assert report.rows == len(tx) and report.missing == {}


def test_point_in_time_join_matches_an_independent_as_of_join(generated):
    """Random times between transactions: Feast's answer is pandas' backward as-of join with the TTL as tolerance."""
    store, tx = generated
    rng = np.random.default_rng(4)
    entities = pd.DataFrame(
        {
            "customer_id": rng.choice(tx["customer_id"].unique(), 600),
            "event_time": tx["event_time"].min() + pd.to_timedelta(rng.uniform(0, 95 * 86400, 600), unit="s"),
        }
    )
    entities["event_time"] = entities["event_time"].dt.floor("s")
    frame, report = logic.training_set(store, entities)
    expected = entities.copy()
    for _view, spec in definitions.FEATURE_VIEWS.items():
        source = tx[["customer_id", "event_time", *spec.features]].sort_values("event_time")
        joined = pd.merge_asof(
            entities.reset_index().sort_values("event_time"),
            source,
            on="event_time",
            by="customer_id",
            direction="backward",
            tolerance=spec.ttl,
        ).set_index("index")
        for name in spec.features:
            expected[name] = joined[name].sort_index()
    pd.testing.assert_frame_equal(frame[FEATURES], expected[FEATURES], check_dtype=False)
    # Some rows fall more than 30 days after the customer's last transaction: counted as expired, imputed later.
    expired = report.missing[ACTIVITY_VIEW][REASON_EXPIRED]
    assert expired == int(expected["avg_amount_30d"].isna().sum() - report.missing[ACTIVITY_VIEW].get("no_history", 0))
    assert expired > 0


def test_no_future_value_leaks_into_a_training_row(tmp_path):
    """A feature whose value changes after the label's time: the row gets the value from before."""
    store = make_store(
        tmp_path,
        source_frame(
            [
                {"customer_id": 1, "event_time": T0, "avg_amount_30d": 10.0, "account_age_days": 5.0},
                {
                    "customer_id": 1,
                    "event_time": T0 + timedelta(hours=1),
                    "avg_amount_30d": 99.0,
                    "account_age_days": 6,
                },
                {"customer_id": 2, "event_time": T0 - timedelta(days=31), "avg_amount_30d": 7.0},
            ]
        ),
    )
    labels = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 1, 2, 3],
            "event_time": [
                T0 + timedelta(minutes=30),  # between the two values: the first
                T0 + timedelta(hours=1) - timedelta(seconds=1),  # one second before the change: still the first
                T0 + timedelta(hours=1),  # at the change: a value recorded at the label's time counts
                T0 - timedelta(seconds=1),  # before any value: none
                T0,  # 31 days after customer 2's only activity value: older than the 30-day TTL
                T0,  # a customer never seen
            ],
            "is_fraud": [1, 0, 1, 0, 0, 1],
        }
    )
    frame, report = logic.training_set(store, labels)
    assert frame["avg_amount_30d"].tolist()[:3] == [10.0, 10.0, 99.0]
    assert frame["account_age_days"].tolist()[:3] == [5.0, 5.0, 6.0]
    assert frame.loc[3, FEATURES].isna().all() and frame.loc[5, FEATURES].isna().all()
    assert np.isnan(frame.loc[4, "avg_amount_30d"]) and frame.loc[4, "account_age_days"] == 100.0  # profile TTL 400 d
    assert frame["is_fraud"].tolist() == labels["is_fraud"].tolist()
    assert report.missing == {
        ACTIVITY_VIEW: {REASON_EXPIRED: 1, REASON_NO_HISTORY: 2},
        PROFILE_VIEW: {REASON_NO_HISTORY: 2},
    }


def test_rows_sharing_an_entity_and_a_time_all_survive(tmp_path):
    """Feast's file store de-duplicates entity rows on (key, time); the suite joins its answer back to each row."""
    store = make_store(tmp_path, source_frame([{"customer_id": 1, "event_time": T0, "customer_age": 33.0}]))
    labels = pd.DataFrame(
        {"customer_id": [1, 1, 1], "event_time": [T0 + timedelta(minutes=5)] * 3, "amount": [1.0, 2.0, 3.0]}
    )
    frame, report = logic.training_set(store, labels)
    assert frame["amount"].tolist() == [1.0, 2.0, 3.0] and frame["customer_age"].tolist() == [33.0] * 3
    assert (report.rows, report.lookups) == (3, 1)


def test_training_set_bad_input_is_named(generated):
    store, tx = generated
    good = tx[["customer_id", "event_time", "is_fraud"]].head(5)
    with pytest.raises(KfopsError, match=r"labels.csv: 'customer_id' not found .*columns are: event_time, is_fraud"):
        logic.training_set(store, good.drop(columns=["customer_id"]), source="labels.csv")
    with pytest.raises(KfopsError, match="'label_time' not found"):
        logic.training_set(store, good, timestamp_column="label_time")
    with pytest.raises(
        KfopsError, match=r"feature service 'nope' is not registered .* fraud_model, fraud_model_profile"
    ):
        logic.training_set(store, good, service="nope")
    with pytest.raises(KfopsError, match=r"column\(s\) \['customer_age'\] are features of service 'fraud_model'"):
        logic.training_set(store, good.assign(customer_age=1.0))
    with pytest.raises(KfopsError, match="'customer_id' must hold integers; row 1 has 'abc'"):
        logic.training_set(store, good.assign(customer_id=["1", "abc", "2", "3", "4"]))
    with pytest.raises(KfopsError, match="'customer_id' is empty in 1 row"):
        logic.training_set(store, good.assign(customer_id=[1.0, None, 2.0, 3.0, 4.0]))
    with pytest.raises(KfopsError, match="'event_time' is empty in 1 row"):
        logic.training_set(store, good.assign(event_time=[T0, None, T0, T0, T0]))
    with pytest.raises(KfopsError, match="no rows"):
        logic.training_set(store, good.head(0))


# ------------------------------------------------------------------------------------------------ materialise, online
def test_materialize_window_then_incremental(tmp_path):
    store = make_store(
        tmp_path,
        source_frame(
            [
                {"customer_id": 1, "event_time": T0, "avg_amount_30d": 10.0},
                {"customer_id": 1, "event_time": T0 + timedelta(days=2), "avg_amount_30d": 20.0},
                {"customer_id": 2, "event_time": T0 + timedelta(days=2), "avg_amount_30d": 5.0},
            ]
        ),
    )
    first = logic.materialize(
        store, start=T0 - timedelta(days=1), end=T0 + timedelta(days=1), now=T0 + timedelta(days=1, hours=2)
    )
    assert {v.name: v.lag_seconds for v in first.views} == {ACTIVITY_VIEW: 7200.0, PROFILE_VIEW: 7200.0}
    at = T0 + timedelta(days=3)
    frame, _ = online.online_features(store, FRAUD_SERVICE, [1, 2], now=at)
    assert frame["avg_amount_30d"].tolist()[0] == 10.0 and frame["known"].tolist() == [True, False]
    # Incremental: from where the window ended, so the later values arrive.
    second = logic.materialize(store, end=T0 + timedelta(days=3), now=at)
    assert second.start == "" and {v.lag_seconds for v in second.views} == {0.0}
    assert {v.materialized_until for v in second.views} == {(T0 + timedelta(days=3)).isoformat()}
    frame, fallbacks = online.online_features(store, FRAUD_SERVICE, [1, 2, "2"], now=at)
    assert frame["avg_amount_30d"].tolist() == [20.0, 5.0, 5.0] and fallbacks == [[], [], []]


def test_online_values_older_than_the_ttl_are_missing_and_counted(generated):
    store, tx = generated
    last = tx.sort_values("event_time").groupby("customer_id").tail(1).set_index("customer_id")
    customer = int(last.index[0])
    seen = last.loc[customer, "event_time"]
    fresh, fallbacks = online.online_features(store, FRAUD_SERVICE, [customer], now=seen + timedelta(days=1))
    assert fresh.loc[0, "avg_amount_30d"] == last.loc[customer, "avg_amount_30d"] and fallbacks == [[]]
    stale, fallbacks = online.online_features(store, FRAUD_SERVICE, [customer], now=seen + timedelta(days=31))
    assert stale.loc[0, ["avg_amount_30d", "transactions_last_24h"]].isna().all()
    assert stale.loc[0, "account_age_days"] == last.loc[customer, "account_age_days"]
    assert fallbacks == [[(ACTIVITY_VIEW, REASON_EXPIRED)]]


def test_materialize_bad_input_is_named(generated, tmp_path):
    store, _ = generated
    with pytest.raises(KfopsError, match=r"unknown feature view\(s\) \['customer_risk'\] .*customer_activity"):
        logic.materialize(store, end="2026-04-01", views=["customer_risk"])
    with pytest.raises(KfopsError, match="start 2026-04-02T00:00:00\\+00:00 is not before end"):
        logic.materialize(store, start="2026-04-02", end="2026-04-01")
    with pytest.raises(KfopsError, match="'yesterday' is not an ISO time"):
        logic.materialize(store, end="yesterday")
    logic.init_repo(tmp_path / "empty")
    with pytest.raises(KfopsError, match="has no feature views: run `kfops features apply` first"):
        logic.materialize(open_store(tmp_path / "empty"), end="2026-04-01")
    with pytest.raises(KfopsError, match="must be an integer, got 'x1'"):
        online.online_features(store, FRAUD_SERVICE, ["x1"])


# ------------------------------------------------------------------------------------------------ freshness
@pytest.fixture
def pushgateway(tmp_path):
    binary = require("prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        os.kill(proc.pid, signal.SIGTERM)
        pytest.fail("pushgateway did not start")
    yield url
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("kfops_feature_")
    }


def test_materialize_component_applies_a_snapshot_and_pushes_freshness(tmp_path, transactions, pushgateway):
    from kfops.components.datasets import write_snapshot
    from kfops.components.features.component import materialize_op

    store_dir = str(tmp_path / "store")
    version = write_snapshot(transactions, store_dir, source="generated")
    logic.init_repo(tmp_path / "repo")
    report = dsl.Artifact(name="report", uri=str(tmp_path / "report.json"), metadata={})
    end = transactions["event_time"].max().isoformat()
    got = materialize_op.python_func(
        feature_repo=str(tmp_path / "repo"),
        artifact_store=store_dir,
        data_sha256=version.sha256,
        start_time="2025-12-31",
        end_time=end,
        feature_views=[],
        pushgateway=pushgateway,
        report=report,
    )
    assert got.views == 2 and got.max_lag_seconds > 0
    written = json.loads(Path(report.path).read_text())
    assert written["source"] == version.uri and written["pushed"].startswith("pushed freshness of 2 feature view(s)")
    metrics = _scrape(pushgateway)
    until = pd.Timestamp(end).timestamp()
    labels = 'feature_view="customer_activity",instance="",job="kfops-features",project="kfops"'
    assert metrics[f"kfops_feature_materialization_end_timestamp_seconds{{{labels}}}"] == until
    assert metrics[f"kfops_feature_view_ttl_seconds{{{labels}}}"] == 30 * 86400
    lag = metrics[f"kfops_feature_materialization_lag_seconds{{{labels}}}"]
    assert abs(lag - (time.time() - until)) < 120
    # An unreachable Pushgateway is reported, not raised: the materialisation is done.
    dead = f"127.0.0.1:{free_port()}"
    again = materialize_op.python_func(
        feature_repo=str(tmp_path / "repo"), artifact_store=store_dir, data_sha256="", start_time="", end_time=end,
        feature_views=[ACTIVITY_VIEW], pushgateway=dead, report=report,
    )  # fmt: skip
    assert again.views == 1
    assert json.loads(Path(report.path).read_text())["pushed"].startswith("not pushed: cannot push feature freshness")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_apply_materialize_training_set_online(tmp_path, transactions, capsys):
    from kfops.cli import main
    from kfops.components.datasets import record_validation, write_snapshot

    workspace = tmp_path / "ws"
    version = write_snapshot(transactions, str(workspace / "store"), source="generated")
    record_validation(str(workspace / "store"), version.sha256, True, 0, "inferred")  # as a run's validate step
    assert main(["features", "apply", "--workspace", str(workspace), "--json"]) == 0  # the newest validated one
    applied = json.loads(capsys.readouterr().out)
    assert applied["source"] == version.uri and applied["repo"] == str(workspace.resolve() / "features")
    end = transactions["event_time"].max().isoformat()
    args = ["--workspace", str(workspace), "--json"]
    assert main(["features", "materialize", "--start", "2025-12-31", "--end", end, *args]) == 0
    assert {v["name"] for v in json.loads(capsys.readouterr().out)["views"]} == set(definitions.FEATURE_VIEWS)

    labels = transactions[["customer_id", "event_time", "is_fraud"]].head(50)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "train.parquet"
    command = ["features", "training-set", "--entities", str(tmp_path / "labels.csv"), "--output", str(out)]
    assert main([*command, *args]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 50
    written = pd.read_parquet(out)
    assert written["account_age_days"].tolist() == transactions["account_age_days"].head(50).tolist()

    customer = str(transactions["customer_id"].iloc[-1])
    assert main(["features", "online", "--entity", customer, "--entity", "7", "--at", end, *args]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["known"] for r in records] == [True, False] and records[0]["fallbacks"] == []

    assert main(["features", "materialize", "--view", "nope", *args]) == 2
    assert "unknown feature view(s) ['nope']" in capsys.readouterr().err
    assert main(["features", "training-set", "--entities", str(tmp_path / "none.csv"), "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ cluster layout
@pytest.fixture
def redis_server(tmp_path):
    binary = require("redis-server")
    import socket

    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.1)
    else:
        os.kill(proc.pid, signal.SIGTERM)
        pytest.fail("redis-server did not start")
    yield f"127.0.0.1:{port}"
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def test_cluster_layout_redis_online_store_and_minio_offline_store(s3_env, redis_server, transactions, monkeypatch):
    """manifests/feature-store/feature_store.yaml as a cluster runs it, with a real Redis and an S3 endpoint:
    the repository, registry and snapshot on S3, the online store on Redis."""
    from kfops.components import storage
    from kfops.components.datasets import write_snapshot

    monkeypatch.setenv("FEAST_S3_ENDPOINT_URL", s3_env)  # what open_store sets from KFOPS_S3_ENDPOINT_URL
    text = (REPO_ROOT / "manifests" / "feature-store" / "feature_store.yaml").read_text()
    text = text.replace("kfops-feature-redis:6379", redis_server).replace("s3://kfops/", "s3://fs-test/")
    storage.write_bytes("s3://fs-test/feature-store/feature_store.yaml", text.encode())
    version = write_snapshot(transactions, "s3://fs-test", source="generated")
    store = open_store("s3://fs-test/feature-store")
    assert store.config.online_store.type == "redis"
    assert logic.apply_definitions(store, version.uri).source == version.uri
    end = transactions["event_time"].max() + pd.Timedelta(seconds=1)
    logic.materialize(store, start="2025-12-31", end=end)
    assert storage.exists("s3://fs-test/feature-store/registry.db")

    # A second reader (a predictor) sees the registry on S3 and the values in Redis.
    reader = open_store("s3://fs-test/feature-store")
    last = transactions.sort_values("event_time").groupby("customer_id").tail(1).tail(3)
    frame, fallbacks = online.online_features(reader, FRAUD_SERVICE, [*last["customer_id"].tolist(), 7], now=end)
    assert frame["known"].tolist() == [True, True, True, False] and fallbacks[:3] == [[], [], []]
    assert frame["avg_amount_30d"].tolist()[:3] == last["avg_amount_30d"].tolist()
    training, _ = logic.training_set(reader, last[["customer_id", "event_time"]])
    assert training["customer_age"].tolist() == pytest.approx(last["customer_age"].tolist(), nan_ok=True)


def test_importing_feast_through_the_suite_leaves_the_environment_alone():
    # feast.metrics sets PROMETHEUS_MULTIPROC_DIR on import; a fresh interpreter shows the first import's effect
    code = (
        "import os\n"
        "from kfops.components.feature_store.feast_env import import_feast\n"
        "import_feast()\n"
        "import feast.metrics\n"
        "print(sorted(k for k in os.environ if k.startswith('PROMETHEUS_MULTIPROC')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=True)
    assert out.stdout.strip() == "[]"
    bare = subprocess.run(
        [sys.executable, "-c", "import os, feast; print('PROMETHEUS_MULTIPROC_DIR' in os.environ)"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    assert bare.stdout.strip() == "True"  # what import_feast undoes
