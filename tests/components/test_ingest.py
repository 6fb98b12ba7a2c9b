from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kfops.components import storage
from kfops.components.contracts import KfopsError, SplitConfig
from kfops.components.datasets import canonical_sha256, list_versions, read_snapshot, write_snapshot
from kfops.components.ingest.logic import read_table, resolve_schema, split_frame, version_data


# ------------------------------------------------------------------------------------------- versions
def test_sha256_is_the_same_for_csv_and_parquet_of_the_same_data(tmp_path, transactions):
    frame = transactions.drop(columns=["event_time"])
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet", index=False)
    assert canonical_sha256(read_table(str(tmp_path / "a.csv"))) == canonical_sha256(
        read_table(str(tmp_path / "a.parquet"))
    )


def test_sha256_ignores_column_order_but_not_values_rows_or_names(transactions):
    base = canonical_sha256(transactions)
    assert canonical_sha256(transactions[list(reversed(transactions.columns))]) == base
    changed = transactions.copy()
    changed.loc[17, "amount"] += 0.01
    assert canonical_sha256(changed) != base
    assert canonical_sha256(transactions.iloc[:-1]) != base
    assert canonical_sha256(transactions.rename(columns={"amount": "amt"})) != base
    missing = transactions.copy()
    missing.loc[3, "channel"] = None
    assert canonical_sha256(missing) != base


def test_snapshot_is_content_addressed_written_once_and_checked_on_read(tmp_path, transactions):
    store = str(tmp_path / "store")
    first = write_snapshot(transactions, store, source="a.csv")
    again = write_snapshot(transactions.copy(), store, source="b.csv")
    assert again.sha256 == first.sha256 and again.source == "a.csv"  # stored once, first source kept
    frame, version = read_snapshot(store, first.sha256)
    assert len(frame) == len(transactions) and version.rows == len(transactions)
    assert [v.sha256 for v in list_versions(store)] == [first.sha256]
    # A snapshot whose bytes no longer match its name is refused.
    transactions.iloc[:10].to_parquet(version.uri, index=False)
    with pytest.raises(KfopsError, match="corrupt"):
        read_snapshot(store, first.sha256)
    with pytest.raises(KfopsError, match="not in the artifact store"):
        read_snapshot(store, "0" * 64)


def test_version_data_by_stored_version_skips_the_source(tmp_path, data_file):
    store = str(tmp_path / "store")
    version, schema = version_data(str(data_file), store, "is_fraud", drop=["transaction_id"])
    data_file.unlink()
    again, schema_again = version_data("", store, "is_fraud", data_version=version.sha256, drop=["transaction_id"])
    assert again.sha256 == version.sha256 and schema_again == schema


# ------------------------------------------------------------------------------------------- schema
def test_schema_inference_kinds_ids_and_timestamps(transactions):
    schema = resolve_schema(transactions, "t.parquet", "is_fraud")
    assert "amount" in schema.numeric and "merchant_category" in schema.categorical
    assert "transaction_id" in schema.dropped  # unique text per row
    assert "event_time" in schema.dropped  # timestamps are not features
    assert "is_fraud" not in schema.features
    assert (schema.positive_class, schema.negative_class) == ("1", "0")


def test_a_csv_as_a_user_hands_it_keeps_ids_and_timestamps_out(tmp_path, transactions):
    # Read back from CSV the timestamps are text and customer_id repeats: the shared rule (components/roles.py)
    # still leaves them out, as the monitor does.
    transactions.to_csv(tmp_path / "t.csv", index=False)
    schema = resolve_schema(read_table(str(tmp_path / "t.csv")), "t.csv", "is_fraud")
    assert schema.dropped == ["transaction_id", "event_time", "customer_id"]
    assert "amount" in schema.numeric and "channel" in schema.categorical


def test_declared_features_and_positive_class(transactions):
    labelled = transactions.assign(label=np.where(transactions.is_fraud == 1, "fraud", "legit"))
    schema = resolve_schema(
        labelled.drop(columns=["is_fraud"]), "t", "label", numeric=["amount"], categorical=["country"]
    )
    assert schema.numeric == ["amount"] and schema.categorical == ["country"]
    assert schema.positive_class == "fraud"  # the rarer class when no label reads as positive
    chosen = resolve_schema(labelled, "t", "label", numeric=["amount"], positive_class="legit")
    assert (chosen.positive_class, chosen.negative_class) == ("legit", "fraud")


# ------------------------------------------------------------------------------------------- bad input
def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(KfopsError, match=r"empty\.csv is empty"):
        read_table(str(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("a,b,is_fraud\n")
    with pytest.raises(KfopsError, match=r"header\.csv has no rows"):
        read_table(str(tmp_path / "header.csv"))


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(KfopsError, match="does not exist"):
        read_table(str(tmp_path / "nope.parquet"))
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(KfopsError, match="unsupported file type"):
        read_table(str(tmp_path / "data.xlsx"))


def test_unreadable_parquet(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(KfopsError, match=r"cannot read Parquet file .*broken\.parquet"):
        read_table(str(tmp_path / "broken.parquet"))


def test_missing_target_column(transactions):
    with pytest.raises(KfopsError, match="target column 'label' not found"):
        resolve_schema(transactions, "data.csv", "label")


def test_target_with_one_class(transactions):
    with pytest.raises(KfopsError, match=r"data\.csv: target column 'is_fraud' has only one class"):
        resolve_schema(transactions.assign(is_fraud=0), "data.csv", "is_fraud")


def test_the_task_is_inferred_from_the_target(transactions):
    binary = resolve_schema(transactions, "data.csv", "is_fraud")
    assert (binary.task, binary.classes, binary.positive_class) == ("binary", [], "1")
    # four text values: a multiclass target, its classes sorted, no positive class
    multi = resolve_schema(transactions, "data.csv", "channel", drop=["is_fraud"])
    assert multi.task == "multiclass" and multi.classes == sorted(transactions["channel"].unique())
    assert multi.positive_class == "" and "channel" not in multi.features
    # many distinct amounts: a regression target
    regression = resolve_schema(transactions, "data.csv", "amount", drop=["is_fraud"])
    assert (regression.task, regression.classes) == ("regression", [])
    # a few whole numbers are classes
    graded = transactions.assign(grade=np.arange(len(transactions)) % 5)
    assert resolve_schema(graded, "data.csv", "grade", drop=["is_fraud"]).task == "multiclass"


@pytest.mark.parametrize(
    ("target", "task", "message"),
    [
        ("channel", "binary", "task binary needs a target with 2 classes, but 'channel' has 4"),
        ("channel", "regression", "task regression needs a numeric target, but 'channel' holds text"),
        ("amount", "multiclass", "a numeric target with that many values is a regression"),
        ("rating", "auto", "'rating' has 14 distinct numeric values .*--task multiclass or --task regression"),
        ("code", "auto", "'code' has 60 distinct text values .*more than 50 classes"),
        ("channel", "ordinal", "task must be auto, binary, multiclass, regression; got 'ordinal'"),
    ],
)
def test_a_target_that_does_not_fit_the_task_names_it_and_the_flag(transactions, target, task, message):
    frame = transactions.assign(
        rating=np.arange(len(transactions)) % 14, code=[f"c{i % 60}" for i in range(len(transactions))]
    )
    with pytest.raises(KfopsError, match=message):
        resolve_schema(frame, "data.csv", target, drop=["is_fraud"], task=task)


def test_a_positive_class_is_for_binary_targets(transactions):
    with pytest.raises(KfopsError, match="--positive-class is for binary targets; 'channel' has 4 classes"):
        resolve_schema(transactions, "data.csv", "channel", drop=["is_fraud"], positive_class="web")


def test_a_regression_target_is_split_on_its_deciles(transactions):
    from kfops.components.contracts import SplitConfig
    from kfops.components.ingest.logic import split_frame

    splits = split_frame(transactions, "amount", SplitConfig(validation_fraction=0.2, test_fraction=0.2, seed=1))
    deciles = transactions["amount"].quantile([0.1, 0.9]).to_numpy()
    for frame in splits.values():
        # each split spans the target's range, from the lowest decile to the highest
        assert frame["amount"].min() < deciles[0] and frame["amount"].max() > deciles[1]
    assert sum(len(f) for f in splits.values()) == len(transactions)


def test_text_in_a_numeric_column(tmp_path, transactions):
    frame = transactions.drop(columns=["event_time"]).copy()
    frame["amount"] = frame["amount"].astype(object)
    frame.loc[42, "amount"] = "12,50 EUR"
    frame.to_csv(tmp_path / "t.csv", index=False)
    df = read_table(str(tmp_path / "t.csv"))
    with pytest.raises(KfopsError, match=r"t\.csv: column 'amount' is numeric but 1 value\(s\) are text.*12,50 EUR"):
        resolve_schema(df, str(tmp_path / "t.csv"), "is_fraud")
    with pytest.raises(KfopsError, match="column 'amount' is declared numeric"):
        resolve_schema(df, "t.csv", "is_fraud", numeric=["amount"])


def test_all_empty_column(transactions):
    frame = transactions.assign(notes=np.nan)
    with pytest.raises(KfopsError, match=r"data\.csv: column 'notes' is empty in all 4000 rows"):
        resolve_schema(frame, "data.csv", "is_fraud")
    # Dropping it is the fix the message suggests.
    assert "notes" not in resolve_schema(frame, "data.csv", "is_fraud", drop=["notes"]).features


def test_unknown_declared_columns(transactions):
    with pytest.raises(KfopsError, match="numeric feature column 'amt' not found"):
        resolve_schema(transactions, "d", "is_fraud", numeric=["amt"])
    with pytest.raises(KfopsError, match="declared both numeric and categorical"):
        resolve_schema(transactions, "d", "is_fraud", numeric=["amount"], categorical=["amount"])
    with pytest.raises(KfopsError, match="positive class 'yes' is not a value"):
        resolve_schema(transactions, "d", "is_fraud", positive_class="yes")


# ------------------------------------------------------------------------------------------- splits
def test_stratified_split_is_seeded_and_keeps_the_class_balance(transactions):
    splits = split_frame(transactions, "is_fraud", SplitConfig(seed=1))
    again = split_frame(transactions, "is_fraud", SplitConfig(seed=1))
    other = split_frame(transactions, "is_fraud", SplitConfig(seed=2))
    assert splits["test"]["transaction_id"].tolist() == again["test"]["transaction_id"].tolist()
    assert splits["test"]["transaction_id"].tolist() != other["test"]["transaction_id"].tolist()
    assert sum(len(s) for s in splits.values()) == len(transactions)
    ids = [set(s["transaction_id"]) for s in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    rate = transactions["is_fraud"].mean()
    for frame in splits.values():
        assert abs(frame["is_fraud"].mean() - rate) < 0.004
    assert len(splits["test"]) == pytest.approx(0.15 * len(transactions), abs=2)


def test_time_split_puts_the_newest_rows_last(transactions):
    shuffled = transactions.sample(frac=1.0, random_state=0)
    splits = split_frame(shuffled, "is_fraud", SplitConfig(time_column="event_time", by_time=True))
    assert splits["train"]["event_time"].max() <= splits["validation"]["event_time"].min()
    assert splits["validation"]["event_time"].max() <= splits["test"]["event_time"].min()


def test_split_config_is_checked(transactions):
    with pytest.raises(KfopsError, match=r"test_fraction must be between 0 and 0\.5"):
        split_frame(transactions, "is_fraud", SplitConfig(test_fraction=0.7))
    tiny = transactions[transactions.is_fraud == 0].head(30)
    tiny = pd.concat([tiny, transactions[transactions.is_fraud == 1].head(1)])
    with pytest.raises(KfopsError, match="only one class"):
        split_frame(tiny, "is_fraud", SplitConfig())


# ------------------------------------------------------------------------------------------- s3 (MinIO API)
def test_read_and_snapshot_through_s3(s3_env, transactions):
    storage.write_bytes("s3://raw/in/tx.parquet", transactions.to_parquet(index=False))
    frame = read_table("s3://raw/in/tx.parquet")
    assert len(frame) == len(transactions)
    version, _ = version_data("s3://raw/in/tx.parquet", "s3://kfops-store", "is_fraud")
    assert version.uri == f"s3://kfops-store/datasets/{version.sha256}/data.parquet"
    again, _ = read_snapshot("s3://kfops-store", version.sha256)
    assert canonical_sha256(again) == version.sha256
    assert [v.sha256 for v in list_versions("s3://kfops-store")] == [version.sha256]
    with pytest.raises(KfopsError, match=r"data file s3://raw/in/missing\.csv does not exist"):
        read_table("s3://raw/in/missing.csv")


def test_unreachable_s3_endpoint_names_endpoint_and_uri(monkeypatch):
    from tests.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("KFOPS_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(KfopsError, match=rf"cannot reach S3 endpoint {endpoint} for s3://bucket/data\.csv"):
        read_table("s3://bucket/data.csv")


def test_a_feature_cannot_also_be_the_target_time_or_dropped(transactions):
    with pytest.raises(KfopsError, match=r"feature column\(s\) \['is_fraud'\] are also the target"):
        resolve_schema(transactions, "d", "is_fraud", numeric=["amount", "is_fraud"])
    with pytest.raises(KfopsError, match=r"\['amount'\] are also dropped"):
        resolve_schema(transactions, "d", "is_fraud", numeric=["amount"], drop=["amount"])
    with pytest.raises(KfopsError, match="also the time column"):
        resolve_schema(transactions, "d", "is_fraud", categorical=["event_time"], time_column="event_time")
