"""A task whose process aborts in native teardown after writing its outputs counts as finished; any other abort
fails the run. Real kfp.local runs of small components that abort the way pyarrow's thread pool sometimes does."""

import pytest
from kfp import dsl

from kfops.components.workspace import workspace
from kfops.pipelines.local import finished_before_teardown_abort, run_pipeline


@dsl.component(base_image="python:3.11")
def aborts_at_exit(message: str) -> str:
    import atexit
    import os
    import sys

    def abort() -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        os.abort()

    atexit.register(abort)
    return "done"


@dsl.component(base_image="python:3.11")
def aborts_while_working() -> str:
    import os
    import sys

    sys.stderr.write("terminate called without an active exception\n")
    sys.stderr.flush()
    os.abort()
    return "never"


@dsl.pipeline
def teardown_abort(message: str) -> str:
    return aborts_at_exit(message=message).output


@dsl.pipeline
def working_abort() -> str:
    return aborts_while_working().output


def test_an_abort_in_teardown_after_the_outputs_keeps_the_step(tmp_path):
    task = run_pipeline(
        teardown_abort, {"message": "terminate called without an active exception"}, workspace(tmp_path), False
    )
    assert task.output == "done"


def test_any_other_abort_after_the_outputs_fails_the_run(tmp_path):
    with pytest.raises(RuntimeError, match="FAILURE"):
        run_pipeline(teardown_abort, {"message": "free(): invalid pointer"}, workspace(tmp_path), False)


def test_an_abort_before_the_outputs_fails_the_run(tmp_path):
    with pytest.raises(RuntimeError, match="FAILURE"):
        run_pipeline(working_abort, {}, workspace(tmp_path), False)


def test_the_output_file_must_exist(tmp_path):
    written = tmp_path / "executor_output.json"
    lines = [f"INFO]: Wrote executor output file to {written}.\n", "terminate called without an active exception\n"]
    assert finished_before_teardown_abort(134, lines) is None
    written.write_text("{}")
    assert finished_before_teardown_abort(134, lines) == str(written)
    assert finished_before_teardown_abort(0, lines) is None
    assert finished_before_teardown_abort(134, lines[::-1]) is None
