"""The predictor with online features (serving/feature_lookup.py): a real model, a real Feast repository (sqlite
online store) over the same transactions it was trained on, driven through KServe's app in-process."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from kfops.components.contracts import KfopsError
from kfops.components.feature_store.definitions import ACTIVITY_VIEW, FRAUD_SERVICE, service_features
from kfops.components.feature_store.store import open_store
from kfops.components.features import logic
from kfops.serving.app import build_app
from kfops.serving.feature_lookup import FeatureLookup, feature_argv, feature_lookup_from_args
from kfops.serving.metrics import SERVING_REGISTRY
from kfops.serving.predictor import TabularPredictor

from .helpers import v1_objects

NAME = "fraud-fs"
V1 = f"/v1/models/{NAME}:predict"
LOOKED_UP = service_features(FRAUD_SERVICE)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, transactions) -> dict:
    """A feature repository over the training data, materialised over its whole span."""
    root = tmp_path_factory.mktemp("feature-repo")
    transactions.to_parquet(root / "tx.parquet", index=False)
    logic.init_repo(root / "repo")
    store = open_store(root / "repo")
    logic.apply_definitions(store, str(root / "tx.parquet"))
    end = transactions["event_time"].max() + pd.Timedelta(seconds=1)
    logic.materialize(store, start="2025-12-31", end=end)
    # Each customer's latest transaction: what the online store now holds for them.
    latest = transactions.sort_values("event_time").groupby("customer_id").tail(1).reset_index(drop=True)
    return {"path": str(root / "repo"), "store": store, "latest": latest, "end": end}


class Clock:
    """The "now" the lookup judges TTLs by, set by each test."""

    def __init__(self, now: pd.Timestamp) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now.timestamp()


def serve(registered_model, lookup) -> tuple[TabularPredictor, TestClient]:
    predictor = TabularPredictor(
        NAME,
        f"{registered_model.name}@champion",
        registered_model.tracking_uri,
        max_wait_ms=1,
        feature_lookup=lookup,
    )
    predictor.load()
    return predictor, TestClient(build_app(predictor), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def clock(repo) -> Clock:
    return Clock(repo["end"])


@pytest.fixture(scope="module")
def served(registered_model, repo, clock):
    lookup = FeatureLookup(repo["path"], FRAUD_SERVICE, timeout_ms=2000, clock=clock)
    predictor, client = serve(registered_model, lookup)
    with client:
        yield predictor, client
    predictor.stop()


def sample(name: str, **labels) -> float:
    return SERVING_REGISTRY.get_sample_value(name, {"model": NAME, **labels}) or 0.0


def request_rows(rows: pd.DataFrame, spec) -> list[dict]:
    """What a caller sends: the customer id and the request-time features, none of the stored ones."""
    request_features = [n for n in spec.feature_names if n not in LOOKED_UP]
    return v1_objects(rows[["customer_id", *request_features]])


# ------------------------------------------------------------------------------------------------ skew
def test_online_and_offline_features_score_the_same(served, repo, registered_model, clock):
    """Training/serving skew: rows scored from the offline point-in-time join and from the online store by
    entity id get the same probabilities."""
    _, client = served
    m = registered_model
    latest = repo["latest"]
    rows = latest[latest["event_time"] > repo["end"] - timedelta(days=20)].head(25)  # within every view's TTL
    clock.now = repo["end"]
    offline, report = logic.training_set(repo["store"], rows[["customer_id", "event_time", "is_fraud"]])
    assert report.missing == {}
    offline_rows = rows.drop(columns=LOOKED_UP).merge(offline[["customer_id", "event_time", *LOOKED_UP]])
    assert len(offline_rows) == len(rows)
    expected = m.expected(offline_rows[m.spec.feature_names])

    r = client.post(V1, json={"instances": request_rows(rows, m.spec)})
    assert r.status_code == 200, r.text
    online = r.json()["predictions"]
    assert np.allclose([p["probability"] for p in online], expected["probability"], rtol=0, atol=1e-6)
    # The same rows with every feature in the request: no lookup, the same answer.
    full = client.post(V1, json={"instances": v1_objects(offline_rows[m.spec.feature_names])})
    assert [p["probability"] for p in full.json()["predictions"]] == [p["probability"] for p in online]


def test_request_values_win_over_stored_ones(served, repo, registered_model, clock):
    _, client = served
    m = registered_model
    row = repo["latest"].head(1)
    clock.now = row["event_time"].iloc[0] + pd.Timedelta(minutes=1)
    body = request_rows(row, m.spec)
    body[0]["account_age_days"] = 3.0
    got = client.post(V1, json={"instances": body}).json()["predictions"][0]["probability"]
    expected = m.expected(row[m.spec.feature_names].assign(account_age_days=3.0))["probability"].iloc[0]
    assert got == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_entity_is_a_400_naming_it(served, registered_model):
    _, client = served
    rows = request_rows(registered_model.rows.head(2).assign(customer_id=[1, 2]), registered_model.spec)
    before = sample("kfops_feature_unknown_entities_total")
    r = client.post(V1, json={"instances": rows})
    assert r.status_code == 400
    assert "instances[0]: customer_id 1 is unknown to the feature store" in r.json()["error"]
    assert "(and 1 more row(s))" in r.json()["error"] and "fraud_model" in r.json()["error"]
    assert sample("kfops_feature_unknown_entities_total") == before + 2


def test_bad_entity_ids_and_rows_without_a_key_are_400s(served, repo, registered_model):
    _, client = served
    spec = registered_model.spec
    row = request_rows(repo["latest"].head(1), spec)[0]
    for bad in ("abc", True, 1.5, None, [1]):
        r = client.post(V1, json={"instances": [{**row, "customer_id": bad}]})
        assert r.status_code == 400 and "entity key 'customer_id' must be an integer" in r.json()["error"], bad
    no_key = {k: v for k, v in row.items() if k != "customer_id"}
    r = client.post(V1, json={"instances": [no_key]})
    assert r.status_code == 400
    assert r.json()["error"].startswith("instances[0] has no 'customer_id' to look up features ['account_age_days'")
    # A string id that is a number is the number; list instances and full rows pass through untouched.
    assert client.post(V1, json={"instances": [{**row, "customer_id": str(row["customer_id"])}]}).status_code == 200
    full = v1_objects(registered_model.rows.head(2))
    assert client.post(V1, json={"instances": full}).status_code == 200


def test_the_entity_key_is_logged_when_the_training_data_had_it(registered_model, repo, clock, tmp_path):
    """customer_id is no feature but a column of the training data: it goes on to the payload log."""
    from kfops.serving.payload_log import PayloadLogger

    assert "customer_id" in registered_model.spec.passthrough_columns
    logger = PayloadLogger(str(tmp_path), NAME, flush_seconds=0.05)
    predictor = TabularPredictor(
        NAME,
        f"{registered_model.name}@champion",
        registered_model.tracking_uri,
        max_wait_ms=1,
        payload_logger=logger,
        feature_lookup=FeatureLookup(repo["path"], FRAUD_SERVICE, timeout_ms=2000, clock=clock),
    )
    predictor.load()
    try:
        assert predictor.feature_lookup.keep_key
        rows = repo["latest"].head(2)
        clock.now = rows["event_time"].max()
        with TestClient(build_app(predictor), raise_server_exceptions=False) as client:
            r = client.post(V1, json={"instances": request_rows(rows, registered_model.spec)})
            assert r.status_code == 200, r.text
    finally:
        predictor.stop()
    records = [json.loads(line) for f in tmp_path.rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert [r["customer_id"] for r in records] == rows["customer_id"].tolist()
    assert all(r["account_age_days"] is not None for r in records)  # looked up and logged as scored


def test_features_older_than_the_ttl_are_imputed_and_counted(served, repo, registered_model, clock):
    _, client = served
    m = registered_model
    rows = repo["latest"].head(3)
    clock.now = rows["event_time"].max() + timedelta(days=31)  # past customer_activity's 30-day TTL
    before = sample("kfops_feature_fallbacks_total", feature_view=ACTIVITY_VIEW, reason="expired")
    r = client.post(V1, json={"instances": request_rows(rows, m.spec)})
    assert r.status_code == 200, r.text
    imputed = rows[m.spec.feature_names].assign(avg_amount_30d=np.nan, transactions_last_24h=np.nan)
    expected = m.expected(imputed)["probability"]
    assert np.allclose([p["probability"] for p in r.json()["predictions"]], expected, rtol=0, atol=1e-6)
    assert sample("kfops_feature_fallbacks_total", feature_view=ACTIVITY_VIEW, reason="expired") == before + 3


# ------------------------------------------------------------------------------------------------ cache, budget
def test_cache_answers_repeated_entities(served, repo, registered_model, clock):
    _, client = served
    rows = repo["latest"].iloc[40:44]
    clock.now = rows["event_time"].max()
    body = {"instances": request_rows(rows, registered_model.spec) * 2}  # each customer twice: one read
    hits, misses = (
        sample("kfops_feature_lookup_cache_total", result="hit"),
        sample("kfops_feature_lookup_cache_total", result="miss"),
    )
    assert client.post(V1, json=body).status_code == 200
    assert sample("kfops_feature_lookup_cache_total", result="miss") == misses + 4
    assert client.post(V1, json=body).status_code == 200
    assert sample("kfops_feature_lookup_cache_total", result="hit") == hits + 4
    assert sample("kfops_feature_lookup_cache_total", result="miss") == misses + 4


def _lock_online_store(repo_path: str, seconds: float) -> threading.Thread:
    """Hold an exclusive lock on the sqlite online store for ``seconds``: reads wait (a real slow store)."""
    locked = threading.Event()

    def hold():
        conn = sqlite3.connect(f"{repo_path}/data/online_store.db", isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(5)
    return thread


@pytest.mark.parametrize("policy", ["error", "impute"])
def test_latency_budget(registered_model, repo, policy):
    m = registered_model
    rows = repo["latest"].iloc[60:62]
    lookup = FeatureLookup(
        repo["path"], FRAUD_SERVICE, timeout_ms=40, on_timeout=policy, clock=Clock(rows["event_time"].max())
    )
    predictor, client = serve(m, lookup)
    body = {"instances": request_rows(rows, m.spec)}
    with client:
        timeouts = sample("kfops_feature_lookup_timeouts_total")
        holder = _lock_online_store(repo["path"], 1.0)
        started = time.perf_counter()
        r = client.post(V1, json=body)
        elapsed = time.perf_counter() - started
        holder.join()
        assert sample("kfops_feature_lookup_timeouts_total") == timeouts + 1
        assert elapsed < 0.8  # answered at the budget, not when the store let go
        if policy == "error":
            assert r.status_code == 500
            assert "feature lookup exceeded its latency budget of 40 ms" in r.json()["error"]
        else:
            assert r.status_code == 200, r.text
            blank = rows[m.spec.feature_names].assign(**dict.fromkeys(LOOKED_UP, np.nan))
            expected = m.expected(blank)["probability"]
            assert np.allclose([p["probability"] for p in r.json()["predictions"]], expected, atol=1e-6)
            assert sample("kfops_feature_fallbacks_total", feature_view=ACTIVITY_VIEW, reason="timeout") >= 2
        # The read finished after the lock went: its answer is cached, the next request needs no store.
        deadline = time.time() + 5
        while len(lookup._cache) < 2 and time.time() < deadline:
            time.sleep(0.02)
        assert client.post(V1, json=body).status_code == 200
    predictor.stop()


# ------------------------------------------------------------------------------------------------ wiring
def test_metrics_show_freshness_and_lookups(served):
    _, client = served
    text = client.get("/metrics").text
    assert f'kfops_feature_materialization_lag_seconds{{feature_view="{ACTIVITY_VIEW}",model="{NAME}"}}' in text
    assert "kfops_feature_materialization_end_timestamp_seconds{" in text
    assert "kfops_feature_lookup_seconds_bucket{" in text


def test_load_refuses_a_model_that_does_not_take_the_services_features(repo):
    lookup = FeatureLookup(repo["path"], FRAUD_SERVICE)
    with pytest.raises(KfopsError, match=r"supplies \['account_age_days'.* which the model does not take"):
        lookup.load(["amount", "channel"], NAME)
    with pytest.raises(KfopsError, match="feature service 'nope' is not registered"):
        FeatureLookup(repo["path"], "nope").load(LOOKED_UP, NAME)
    with pytest.raises(KfopsError, match="--entity-key 'card_id' is not the key of service 'fraud_model'"):
        FeatureLookup(repo["path"], FRAUD_SERVICE, "card_id").load(LOOKED_UP, NAME)
    with pytest.raises(KfopsError, match="on_timeout must be one of"):
        FeatureLookup(repo["path"], on_timeout="retry")


def test_serve_flags_build_the_lookup():
    from kfops.serving.cli import build_parser

    flags = ["--feature-repo", "s3://kfops/feature-store", "--entity-key", "customer_id", "--feature-timeout-ms", "25"]
    flags += ["--on-feature-timeout", "impute", "--feature-cache-size", "0"]
    args = build_parser().parse_args(["--model", "/mnt/models", *flags])
    lookup = feature_lookup_from_args(args)
    assert (lookup.repo, lookup.entity_key, lookup.timeout_s, lookup.on_timeout, lookup.cache_size) == (
        "s3://kfops/feature-store",
        "customer_id",
        0.025,
        "impute",
        0,
    )
    again = build_parser().parse_args(["--model", "/mnt/models", *feature_argv(args)])
    assert vars(again) == vars(args)
    assert feature_lookup_from_args(build_parser().parse_args(["--model", "/mnt/models"])) is None
