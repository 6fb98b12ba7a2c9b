"""tests/tools.py finds PostgreSQL where Debian keeps it, and a missing one fails the run under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tools


def test_initdb_is_found_in_debians_versioned_folder_off_path(monkeypatch):
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not installed:
        tools.missing(f"PostgreSQL is not installed: {tools.INSTALL['initdb']}")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert tools.find("initdb") == str(max(installed, key=lambda p: int(p.parts[-3])))


def test_a_missing_postgresql_fails_under_ci_and_names_the_install_command(monkeypatch):
    monkeypatch.setattr(tools, "find", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"initdb is not installed: apt-get install .* postgresql \(CI"):
        tools.require("initdb")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="initdb is not installed"):
        tools.require("initdb")
