"""What the e2e runs share: a clean environment, so each run uses its own workspace's stores."""

from __future__ import annotations

import pytest

STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "KFOPS_MLFLOW_ARTIFACT_ROOT", "KFOPS_WORKSPACE", "KFOPS_ARTIFACT_STORE")


@pytest.fixture
def clean_env(monkeypatch):
    # The runs must use their workspace's own store, whatever this shell has set; restored afterwards.
    for name in STORE_VARIABLES:
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
