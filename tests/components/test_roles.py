"""The column-role rule training and monitoring share (components/roles.py): which columns are no features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kfops.components.roles import named_like_an_id, not_features


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("id", True), ("ID", True), ("customer_id", True), ("order-id", True), ("order id", True),
        ("customerId", True), ("CustomerID", True), ("uuid", True), ("row.guid", True),
        ("paid", False), ("valid", False), ("Idle", False), ("identity", False), ("acid_level", False),
    ],
)  # fmt: skip
def test_names_like_an_id(name, expected):
    assert named_like_an_id(name) is expected


def test_a_users_csv_ids_timestamps_and_target_are_no_features(tmp_path):
    rng = np.random.default_rng(0)
    rows = 500
    frame = pd.DataFrame(
        {
            "order_ref": [f"o-{i:06d}" for i in range(rows)],  # unique text
            "customer_id": rng.integers(1000, 1200, rows),  # repeats, but named like an id
            "store_id": rng.integers(1, 6, rows),  # a code: 5 stores
            "signup_date": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 30, rows), unit="D"),
            "seen_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 10**6, rows), unit="s"),
            "amount": rng.lognormal(3, 1, rows).round(2),  # unique per row, but numbers
            "plan": rng.choice(["basic", "pro"], rows),
            "label": rng.integers(0, 2, rows),
        }
    )
    path = tmp_path / "data.csv"
    frame.to_csv(path)  # with the index, as a DataFrame written without index=False
    read = pd.read_csv(path)
    assert read["signup_date"].dtype == object and read["seen_at"].dtype == object  # text, as a CSV holds them
    found = not_features(read, target="label")
    assert found == {
        "Unnamed: 0": "an id: it numbers the rows",
        "order_ref": "an id: unique per row",
        "customer_id": f"an id: named like one, {read['customer_id'].nunique()} distinct values",
        "signup_date": "timestamps",
        "seen_at": "timestamps",
        "label": "the target",
    }
    # blanks in an id column make it floats: still an id
    read.loc[::7, "customer_id"] = np.nan
    assert "customer_id" in not_features(read)


def test_numbers_read_as_text_are_no_id():
    # A numeric column with one typo is numeric with a bad value (ingest names it), not an id.
    values = [str(round(10 + i * 0.37, 2)) for i in range(200)]
    values[5] = "approx 40"
    assert not_features(pd.DataFrame({"amount": values})) == {}
    # Few rows say nothing about uniqueness; dates that are not ISO 8601 stay text.
    assert not_features(pd.DataFrame({"name": ["a", "b", "c"], "day": ["03/01/2026", "04/01/2026", "x"]})) == {}
