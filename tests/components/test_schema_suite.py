"""The inferred data schema: first runs pass on their own data, later batches are held to it with errors and
warnings apart, and the hard errors stop every run. On a real dataset (scikit-learn's breast cancer data) written
to CSV as a user would hand it over."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kfops.components.contracts import KfopsError
from kfops.components.validate.logic import run_suite
from kfops.components.validate.schema_suite import (
    HOW_TO_GO_ON,
    hard_errors,
    infer_suite,
    suite_uri,
    validate_snapshot,
)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory) -> pd.DataFrame:
    """Breast cancer data as a user's CSV: an id, a timestamp, a text column, 10% blanks in one column."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    rng = np.random.default_rng(0)
    frame.insert(0, "patient_id", [f"P{i:05d}" for i in range(len(frame))])
    frame.insert(1, "seen_at", pd.date_range("2026-01-01", periods=len(frame), freq="h").astype(str))
    frame["clinic"] = rng.choice(["north", "south", "east"], len(frame))
    frame.loc[rng.random(len(frame)) < 0.10, "mean_radius"] = np.nan
    path = tmp_path_factory.mktemp("cancer") / "cancer.csv"
    frame.to_csv(path, index=False)
    return pd.read_csv(path)


def test_a_first_run_passes_on_its_own_data_and_keeps_the_suite(cancer, tmp_path):
    summary, _ = validate_snapshot(cancer, "cancer.csv", target="target", store=str(tmp_path), data_sha256="a" * 64)
    assert summary.success and not summary.failed, summary.message()
    assert "inferred" in summary.suite_origin
    assert (tmp_path / "datasets" / ("a" * 64) / "suite.json").exists()
    assert suite_uri(str(tmp_path), "a" * 64).endswith("suite.json")


def test_a_later_batch_far_emptier_is_an_error_naming_the_column_and_both_shares(cancer):
    suite = infer_suite(cancer, "target")
    later = cancer.copy()
    later.loc[np.random.default_rng(1).random(len(later)) < 0.6, "mean_radius"] = np.nan
    summary, _ = run_suite(later, suite, source="batch 2")
    assert not summary.success
    [error] = summary.errors
    assert error.column == "mean_radius" and error.expectation == "expect_column_values_to_not_be_null"
    share = cancer["mean_radius"].isna().mean()
    assert f"({later['mean_radius'].isna().mean():.2%})" in error.observed
    assert f"the suite's data had {share:.1%} empty, so at most {2 * share + 0.05:.1%} is allowed" in error.observed
    # twice the share plus five points is still fine
    mild = cancer.copy()
    mild.loc[np.random.default_rng(2).random(len(mild)) < 0.15, "mean_radius"] = np.nan
    assert run_suite(mild, suite, source="batch 3")[0].success


def test_drifted_values_and_new_categories_are_warnings_and_the_run_goes_on(cancer):
    suite = infer_suite(cancer, "target")
    drifted = cancer.copy()
    drifted["mean_texture"] = drifted["mean_texture"] * 3
    drifted.loc[:10, "clinic"] = "west"
    summary, _ = run_suite(drifted, suite, source="drifted")
    assert summary.success, summary.message()
    assert {f.column for f in summary.warnings} == {"mean_texture", "clinic"}
    assert "warning" in summary.message() and "passed with warnings" in summary.to_markdown()


@pytest.mark.parametrize(
    ("change", "column"),
    [
        (lambda f: f.drop(columns=["clinic"]), "clinic"),
        (lambda f: f.assign(extra_col=1), ""),
        (lambda f: f.assign(mean_area=f["mean_area"].astype(str) + "mm"), "mean_area"),
        (lambda f: f.assign(target=f["target"].replace({1: 2})), "target"),
    ],
    ids=["missing column", "new column", "type change", "new target class"],
)
def test_schema_changes_are_errors(cancer, change, column):
    summary, _ = run_suite(change(cancer.copy()), infer_suite(cancer, "target"), source="changed")
    assert not summary.success
    assert column in {f.column for f in summary.errors}


def test_ids_get_no_domain_and_text_columns_do(cancer):
    suite = infer_suite(cancer, "target")
    domains = {e["kwargs"]["column"] for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_in_set"}
    assert domains == {"clinic", "target"}


def test_hard_errors_stop_every_run_with_the_way_forward(cancer, tmp_path):
    one_class = cancer.assign(target=1)
    with pytest.raises(KfopsError, match="target 'target' has 1 class"):
        validate_snapshot(one_class, "x", target="target", store=str(tmp_path), data_sha256="b" * 64, mode="warn")
    assert hard_errors(cancer.assign(blank=np.nan), "target", "x") == [
        "x: column(s) ['blank'] have no value at all; drop them (--drop) or fix the export"
    ]
    assert "no target column 'label'" in hard_errors(cancer, "label", "x")[0]


def test_a_failure_says_how_to_go_on_and_warn_mode_records_it(cancer, tmp_path):
    emptier = cancer.assign(mean_radius=np.where(np.arange(len(cancer)) % 10 < 9, np.nan, 1.0))
    with pytest.raises(KfopsError) as failed:
        validate_snapshot(emptier, "x", target="target", store=str(tmp_path), data_sha256="c" * 64, max_missing=0.05)
    assert (
        "mean_radius" in str(failed.value) and "--warn-only" in str(failed.value) and HOW_TO_GO_ON in str(failed.value)
    )
    summary, _ = validate_snapshot(
        emptier, "x", target="target", store=str(tmp_path), data_sha256="c" * 64, max_missing=0.05, mode="warn"
    )
    assert not summary.success and "fixed cap of 5%" in summary.suite_origin
