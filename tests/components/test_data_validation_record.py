"""A snapshot's validation verdict is kept beside it, and "the latest data" (``kfops features apply`` with no
version) is the newest snapshot that passed: a run that stopped in validation leaves nothing later commands take."""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import pytest

from kfops.components.contracts import KfopsError
from kfops.components.datasets import (
    SNAPSHOT_FILE,
    latest_validated_version,
    snapshot_uri,
    validation_of,
    write_snapshot,
)
from kfops.components.validate.schema_suite import validate_snapshot


def wine(tmp_path) -> pd.DataFrame:
    """scikit-learn's wine, through a CSV as a user hands it over."""
    from sklearn.datasets import load_wine

    load_wine(as_frame=True).frame.to_csv(tmp_path / "wine.csv", index=False)
    return pd.read_csv(tmp_path / "wine.csv")


def validate(frame: pd.DataFrame, store: str, sha: str) -> None:
    validate_snapshot(frame, "wine.csv", target="target", store=store, data_sha256=sha, mode="fail")


def source_of(store: str, data_version: str | None = None) -> str:
    from kfops.cli.features import _snapshot_source

    args = argparse.Namespace(source=None, artifact_store=store, workspace=None, data_version=data_version)
    return _snapshot_source(args)


def test_the_latest_data_is_the_newest_snapshot_that_passed_validation(tmp_path, capsys):
    store = str(tmp_path / "store")
    good_frame = wine(tmp_path)
    good = write_snapshot(good_frame, store, "wine.csv")
    validate(good_frame, store, good.sha256)
    assert validation_of(store, good.sha256)["success"] is True
    time.sleep(1.1)  # created_at has whole seconds: the bad export is the newer one
    bad_frame = good_frame.assign(target=0)  # an export that lost the labels: one class
    bad = write_snapshot(bad_frame, store, "wine-broken.csv")
    with pytest.raises(KfopsError, match="a classifier needs rows of two classes"):
        validate(bad_frame, store, bad.sha256)
    record = validation_of(store, bad.sha256)
    assert record["success"] is False and record["failed_expectations"] == 1 and record["format_version"] == 1

    assert latest_validated_version(store).sha256 == good.sha256
    assert source_of(store) == f"{snapshot_uri(store, good.sha256)}/{SNAPSHOT_FILE}"
    # Named explicitly, the failed snapshot is still there to look at.
    assert source_of(store, bad.sha256) == f"{snapshot_uri(store, bad.sha256)}/{SNAPSHOT_FILE}"

    from kfops.cli import main

    assert main(["data", "versions", "--artifact-store", store, "--json"]) == 0
    listed = {v["sha256"]: v["validation"] for v in json.loads(capsys.readouterr().out)}
    assert listed[good.sha256]["success"] and not listed[bad.sha256]["success"]


def test_no_validated_snapshot_is_an_error_naming_each_one_and_why(tmp_path):
    store = str(tmp_path / "store")
    frame = wine(tmp_path)
    never = write_snapshot(frame, store, "wine.csv")  # a run that stopped before validation finished
    with pytest.raises(KfopsError) as err:
        source_of(store)
    message = str(err.value)
    assert f"{never.sha256[:12]} (wine.csv) never validated" in message and "--data-version" in message
    with pytest.raises(KfopsError, match="no data snapshot in the artifact store"):
        latest_validated_version(str(tmp_path / "empty"))
