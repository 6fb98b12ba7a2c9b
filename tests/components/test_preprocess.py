from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kfops.components.contracts import FeatureSpec, KfopsError
from kfops.components.preprocess.logic import fit_feature_spec
from kfops.components.transform import encode_labels, model_input_frame, transform_features


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "amount": [10.0, 20.0, np.nan, 40.0, 30.0, 20.0],
            "count": [1, 2, 3, 4, 5, 6],
            "channel": ["web", "web", "pos", None, "web", "pos"],
            "y": ["no", "yes", "no", "no", "yes", "no"],
        }
    )


def fit(frame, **kw):
    return fit_feature_spec(frame, "y", ["amount", "count"], ["channel"], "yes", "no", min_frequency=1, **kw)


def test_statistics_come_from_the_training_split_only(frame):
    spec = fit(frame)
    amount = spec.column("amount")
    assert amount.mean == pytest.approx(24.0) and amount.median == pytest.approx(20.0)
    assert amount.std == pytest.approx(np.std([10, 20, 40, 30, 20]))
    assert amount.add_missing_indicator and amount.missing_fraction == pytest.approx(1 / 6)
    assert not spec.column("count").add_missing_indicator
    assert spec.column("channel").vocabulary == ["web", "pos"]  # by frequency
    assert spec.positive_rate == pytest.approx(2 / 6)
    # Transforming other data never refits.
    other = frame.assign(amount=frame["amount"] * 100)
    assert fit(frame).to_json() == spec.to_json()
    x = transform_features(spec, other)
    assert x[0, 0] == pytest.approx((1000 - 24.0) / amount.std)


def test_the_spec_records_every_non_feature_column_of_the_training_data(frame):
    """Ids, timestamps and undeclared columns: what serving accepts beside the features (and logs)."""
    raw = frame.assign(transaction_id=range(6), event_time=pd.Timestamp("2026-01-01"), note="x")
    spec = fit(raw, dropped=["transaction_id"])
    assert spec.non_feature_columns == ["transaction_id", "event_time", "note"]
    assert spec.passthrough_columns == ["transaction_id", "event_time", "note"]
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec
    # A spec stored before the field existed reads it as empty, and falls back to its dropped columns.
    old = spec.to_dict()
    del old["non_feature_columns"]
    assert FeatureSpec.from_dict(old).passthrough_columns == ["transaction_id"]


def test_transform_layout_missing_values_and_unknown_categories(frame):
    spec = fit(frame)
    assert spec.input_width == 2 + 1 + 3  # amount + indicator, count, web/pos/unknown
    rows = pd.DataFrame({"amount": [np.nan], "count": [2], "channel": ["atm"], "extra": [1]})
    x = transform_features(spec, rows)
    assert x.dtype == np.float32 and x.shape == (1, 6)
    assert x[0, 0] == pytest.approx((20.0 - 24.0) / spec.column("amount").std)  # median imputed
    assert x[0, 1] == 1.0  # missing indicator
    assert list(x[0, 3:]) == [0.0, 0.0, 1.0]  # unseen category -> unknown bucket
    missing_cat = transform_features(spec, rows.assign(channel=[None]))
    assert list(missing_cat[0, 3:]) == [0.0, 0.0, 1.0]


def test_vocabulary_cap_and_rare_values():
    frame = pd.DataFrame({"c": ["a"] * 10 + ["b"] * 6 + ["c"] * 2, "y": [0, 1] * 9})
    spec = fit_feature_spec(frame, "y", [], ["c"], "1", "0", max_categories=1, min_frequency=5)
    assert spec.column("c").vocabulary == ["a"]
    spec = fit_feature_spec(frame, "y", [], ["c"], "1", "0", max_categories=10, min_frequency=5)
    assert spec.column("c").vocabulary == ["a", "b"]


def test_feature_spec_json_round_trip(tmp_path, frame):
    spec = fit(frame, data_sha256="abc")
    spec.save(tmp_path / "spec.json")
    loaded = FeatureSpec.load(tmp_path / "spec.json")
    assert loaded == spec
    np.testing.assert_array_equal(transform_features(loaded, frame), transform_features(spec, frame))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(KfopsError, match=r"cannot read feature spec .*bad\.json"):
        FeatureSpec.load(tmp_path / "bad.json")


def test_errors_name_the_column(frame):
    spec = fit(frame)
    with pytest.raises(KfopsError, match=r"request: missing feature column\(s\) \['channel'\]"):
        transform_features(spec, frame.drop(columns=["channel"]), source="request")
    with pytest.raises(KfopsError, match="column 'amount' must be numeric; row 2 has 'lots'"):
        transform_features(spec, frame.assign(amount=[1, 2, "lots", 4, 5, 6]))
    with pytest.raises(KfopsError, match="column 'count' must be numeric"):
        model_input_frame(spec, frame.assign(count=["x"] * 6))
    with pytest.raises(KfopsError, match=r"target 'y' has value\(s\) \['maybe'\]"):
        encode_labels(spec, pd.Series(["yes", "maybe"]))


def test_model_input_frame_types(frame):
    typed = model_input_frame(fit(frame), frame)
    assert typed["count"].dtype == np.float64 and typed["amount"].dtype == np.float64
    assert typed["channel"].tolist() == ["web", "web", "pos", None, "web", "pos"]
    assert list(typed.columns) == ["amount", "count", "channel"]


def test_small_and_large_batches_encode_categories_alike():
    from kfops.components.transform import SMALL_BATCH_ROWS, category_codes

    vocabulary = ["web", "pos", "1", "1.5", "True"]
    values = ["web", "pos", None, float("nan"), 1, 1.5, True, "atm", "", pd.NA, "POS", 2]
    small = pd.Series(values, dtype=object)
    large = pd.Series(values * (SMALL_BATCH_ROWS // len(values) + 1), dtype=object)
    assert len(small) < SMALL_BATCH_ROWS <= len(large)
    small_codes = category_codes(small, vocabulary)
    large_codes = category_codes(large, vocabulary)
    np.testing.assert_array_equal(small_codes, large_codes[: len(values)])
    assert small_codes.tolist() == [0, 1, 5, 5, 2, 3, 4, 5, 5, 5, 5, 5]


@pytest.mark.parametrize("repeat", [1, 200])  # below and above SMALL_BATCH_ROWS (600 and 1,200 rows)
def test_transform_columns_matches_transform_features(frame, repeat):
    from kfops.components.transform import transform_columns

    spec = fit(frame)
    rows = pd.concat([frame] * repeat, ignore_index=True)
    typed = model_input_frame(spec, rows)
    # What serving's validator hands over: numeric floats with NaN for missing, categorical str or None.
    columns = {name: typed[name].tolist() for name in spec.feature_names}
    np.testing.assert_array_equal(transform_columns(spec, columns, len(rows)), transform_features(spec, rows))
