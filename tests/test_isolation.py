"""The per-test restore of process-wide state (tests/isolation.py), checked on the leaks it exists for."""

from __future__ import annotations

import builtins
import os

from tests.isolation import process_state_restored


def test_kfp_local_print_patch_left_behind_is_undone(capsys):
    from kfp.local import logging_utils

    original = builtins.print
    with process_state_restored():
        # what an interrupted or overlapping kfp.local task leaves: the indenting print, never put back
        leaked = logging_utils.indented_print()
        leaked.__enter__()
        assert builtins.print is not original
        print("inside")
    assert builtins.print is original
    print("after")
    assert capsys.readouterr().out == "    inside\nafter\n"
    del leaked


def test_environment_working_directory_and_mlflow_globals_are_restored(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("KFOPS_ISOLATION_PROBE", raising=False)
    cwd = os.getcwd()
    from mlflow.tracking import fluent

    uri_before = mlflow.get_tracking_uri()
    experiment_before = fluent._active_experiment_id
    with process_state_restored():
        os.environ["KFOPS_ISOLATION_PROBE"] = "set"
        os.chdir(tmp_path)
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'leak.db'}")
        mlflow.set_experiment("leaked-experiment")
        mlflow.start_run()
    assert "KFOPS_ISOLATION_PROBE" not in os.environ
    assert os.getcwd() == cwd
    assert mlflow.get_tracking_uri() == uri_before
    assert mlflow.active_run() is None
    assert fluent._active_experiment_id == experiment_before
