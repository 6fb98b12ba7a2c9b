from __future__ import annotations

import json

import numpy as np
import pytest

from kfops.components.contracts import KfopsError
from kfops.components.validate.logic import (
    default_suite,
    load_suite_dict,
    profile_suite,
    validate_frame,
)
from kfops.datagen import generate_transactions


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory, transactions):
    """A suite profiled from the reference data, as `kfops suite init` writes it."""
    path = tmp_path_factory.mktemp("suite") / "suite.json"
    suite = profile_suite(transactions, target="is_fraud", ignore=["transaction_id", "customer_id"])
    path.write_text(json.dumps(suite, indent=2))
    return str(path)


@pytest.fixture(scope="module")
def fresh_batch():
    """A new batch from the same distribution as the reference."""
    return generate_transactions(rows=3000, seed=12)


def failures(summary) -> set[tuple[str, str]]:
    return {(f.column, f.expectation) for f in summary.failed}


def test_a_clean_batch_passes(suite_file, fresh_batch):
    summary, result = validate_frame(fresh_batch, "batch.parquet", suite_uri=suite_file, target="is_fraud")
    assert summary.success, summary.message()
    assert result["success"] is True and summary.evaluated == len(result["results"]) > 30


def test_nulls_over_mostly(suite_file, fresh_batch):
    batch = fresh_batch.copy()
    batch.loc[batch.index[:600], "customer_age"] = np.nan  # 20% empty; the suite allows 5%
    summary, _ = validate_frame(batch, "b", suite_uri=suite_file, mode="warn")
    assert ("customer_age", "expect_column_values_to_not_be_null") in failures(summary)
    with pytest.raises(KfopsError, match=r"column 'customer_age': expect_column_values_to_not_be_null\(mostly="):
        validate_frame(batch, "b", suite_uri=suite_file)


def test_out_of_range_values(suite_file, fresh_batch):
    batch = fresh_batch.copy()
    batch.loc[batch.index[:30], "hour_of_day"] = 99
    summary, _ = validate_frame(batch, "b", suite_uri=suite_file, mode="warn")
    failed = [f for f in summary.failed if f.column == "hour_of_day"]
    assert failed[0].expectation == "expect_column_values_to_be_between"
    assert "30 unexpected values" in failed[0].observed and "99" in failed[0].observed


def test_unseen_category(suite_file, fresh_batch):
    batch = fresh_batch.copy()
    batch.loc[batch.index[:5], "channel"] = "crypto_atm"
    summary, _ = validate_frame(batch, "b", suite_uri=suite_file, mode="warn")
    failed = [f for f in summary.failed if f.column == "channel"]
    assert failed[0].expectation == "expect_column_values_to_be_in_set" and "crypto_atm" in failed[0].observed


def test_missing_column(suite_file, fresh_batch):
    summary, _ = validate_frame(fresh_batch.drop(columns=["country"]), "b", suite_uri=suite_file, mode="warn")
    assert [f.observed.split(" (")[0] for f in summary.failed if f.column == "country"] == ["missing from the data"]
    assert {f.column for f in summary.failed} == {"country"}  # one clear failure, not a cascade


def test_shifted_mean(suite_file):
    drifted = generate_transactions(rows=3000, seed=12, drift=0.8)
    summary, _ = validate_frame(drifted, "b", suite_uri=suite_file, mode="warn")
    failed = {f.column: f for f in summary.failed if f.expectation == "expect_column_mean_to_be_between"}
    assert "amount" in failed and failed["amount"].observed.startswith("observed ")


def test_type_change_is_caught(suite_file, fresh_batch):
    batch = fresh_batch.assign(amount=fresh_batch["amount"].astype(str))
    summary, _ = validate_frame(batch, "b", suite_uri=suite_file, mode="warn")
    assert ("amount", "expect_column_values_to_be_in_type_list") in failures(summary)


def test_default_suite_checks_empties_types_and_target(transactions):
    suite = default_suite(transactions, target="is_fraud")
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_unique_value_count_to_be_between", "is_fraud") in kinds
    assert ("expect_column_values_to_not_be_null", "amount") in kinds
    summary, _ = validate_frame(transactions, "t", target="is_fraud")
    assert summary.success
    batch = transactions.copy()
    batch.loc[batch.index[:400], "amount"] = np.nan  # 10% > 5%
    batch.loc[batch.index[:3], "is_fraud"] = np.nan  # the fixed-cap suite knows no classes (any task): no blanks
    with pytest.raises(KfopsError) as err:
        validate_frame(batch, "data.csv", target="is_fraud")
    assert "column 'amount'" in str(err.value) and "column 'is_fraud'" in str(err.value)
    summary, _ = validate_frame(batch, "data.csv", target="is_fraud", max_missing=0.2, mode="warn")
    assert {f.column for f in summary.failed} == {"is_fraud"}


def test_summary_markdown_lists_each_failure(suite_file, fresh_batch):
    batch = fresh_batch.copy()
    batch.loc[batch.index[:5], "channel"] = "crypto_atm"
    summary, _ = validate_frame(batch, "b", suite_uri=suite_file, mode="warn")
    text = summary.to_markdown()
    assert text.startswith("# Data validation FAILED") and "| channel | `expect_column_values_to_be_in_set`" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"name": "s"}', "needs a list under 'expectations'"),
        ('{"name": "s", "expectations": [{"kwargs": {}}]}', "expectation #1 has no 'type'"),
        (
            '{"name": "s", "expectations": [{"type": "expect_column_to_be_purple", "kwargs": {"column": "a"}}]}',
            r"expectation #1 \(expect_column_to_be_purple, column 'a'\) is not valid",
        ),
    ],
)
def test_bad_suite_files(tmp_path, content, message):
    (tmp_path / "suite.json").write_text(content)
    with pytest.raises(KfopsError, match=message):
        load_suite_dict(str(tmp_path / "suite.json"))


def test_suite_round_trips_through_gx_json(suite_file):
    data = load_suite_dict(suite_file)
    assert data["name"] == "kfops-profiled" and all("type" in e for e in data["expectations"])


def test_bad_mode():
    with pytest.raises(KfopsError, match="mode must be 'fail' or 'warn'"):
        validate_frame(generate_transactions(rows=50), "b", mode="strict")
