"""Tasks forked from the task server's warm interpreter: real kfp.local runs of small components through a real
server process, which must behave as fresh processes do (outputs, environment, failures, signals, teardown)."""

import os
import signal

import pytest
from kfp import dsl

from kfops.components.workspace import workspace
from kfops.pipelines import task_server
from kfops.pipelines.local import configure_environment, run_pipeline

# kfp's executor and numpy: enough to show preloading without the seconds MLflow and torch take.
PRELOAD = ("kfp.dsl.executor_main", "numpy")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def where_am_i(tag: str) -> str:
    import json
    import os
    import sys

    preloaded = "numpy" in sys.modules
    import numpy

    return json.dumps(
        {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "tag": tag,
            "image": os.environ.get("KFOPS_IMAGE", ""),
            "numpy_preloaded": preloaded,
            "draw": float(numpy.random.rand()),
        }
    )


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fails(message: str) -> str:
    raise ValueError(message)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def killed() -> str:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return "never"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def aborts_at_exit() -> str:
    import atexit
    import os
    import sys

    def abort() -> None:
        sys.stderr.write("terminate called without an active exception\n")
        sys.stderr.flush()
        os.abort()

    atexit.register(abort)
    return "done"


@dsl.pipeline
def two_steps() -> str:
    first = where_am_i(tag="first")
    first.set_env_variable("KFOPS_IMAGE", "suite:test")
    second = where_am_i(tag=first.output)
    second.set_env_variable("KFOPS_IMAGE", "suite:test")
    return second.output


@dsl.pipeline
def step_with_foreign_env() -> str:
    task = where_am_i(tag="x")
    task.set_env_variable("OMP_NUM_THREADS", "1")
    return task.output


@dsl.pipeline
def one_step() -> str:
    return where_am_i(tag="x").output


@dsl.pipeline
def failing(message: str) -> str:
    return fails(message=message).output


@dsl.pipeline
def killed_step() -> str:
    return killed().output


@dsl.pipeline
def teardown_abort() -> str:
    return aborts_at_exit().output


def start_server(ws) -> task_server.TaskServer:
    configure_environment(ws)  # as `kfops run` does: the server starts under the environment its tasks get
    server = task_server.TaskServer.start(PRELOAD)
    server.wait_until_preloaded()  # a task that comes earlier forks between two preloads: numpy may be missing
    return server


def run(pipeline, tmp_path, arguments=None):
    ws = workspace(tmp_path / "ws")
    server = start_server(ws)
    try:
        return run_pipeline(pipeline, arguments or {}, ws, False, server=server), server
    finally:
        assert server.process.poll() is not None, "run_pipeline stops the server"
        assert not server.folder.exists()


def test_tasks_fork_from_the_server_with_their_outputs_and_environment(tmp_path):
    import json

    task, server = run(two_steps, tmp_path)
    second = json.loads(task.output)
    first = json.loads(second["tag"])
    for info in (first, second):
        assert info["ppid"] == server.process.pid  # forked by the server, not started by this process
        assert info["pid"] not in (os.getpid(), server.process.pid)
        assert info["image"] == "suite:test"  # the task's own KFOPS_* variable, set after the fork
        assert info["numpy_preloaded"]
    assert first["pid"] != second["pid"]
    assert first["draw"] != second["draw"]  # each child reseeds numpy, as a fresh process would be seeded


def test_a_task_with_other_variables_runs_as_a_fresh_process(tmp_path):
    import json

    task, server = run(step_with_foreign_env, tmp_path)
    info = json.loads(task.output)
    assert info["ppid"] != server.process.pid  # OMP_NUM_THREADS is read at import time: a fresh process
    assert not info["numpy_preloaded"]


def test_a_variable_changed_since_the_server_started_gives_a_fresh_process(tmp_path, monkeypatch):
    import json

    ws = workspace(tmp_path / "ws")
    server = start_server(ws)
    monkeypatch.setenv("KMP_SETTING_READ_AT_IMPORT", "changed")
    task = run_pipeline(one_step, {}, ws, False, server=server)
    assert json.loads(task.output)["ppid"] != server.process.pid


def test_a_failing_task_fails_the_run_with_its_error(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="FAILURE"):
        run(failing, tmp_path, {"message": "column 'amount' is empty"})
    assert "ValueError: column 'amount' is empty" in capsys.readouterr().out


def test_a_killed_task_fails_the_run(tmp_path):
    with pytest.raises(RuntimeError, match="FAILURE"):
        run(killed_step, tmp_path)


def test_atexit_handlers_run_and_a_teardown_abort_after_the_outputs_keeps_the_step(tmp_path, capsys):
    task, _ = run(teardown_abort, tmp_path)
    assert task.output == "done"
    assert "the step counts as finished" in capsys.readouterr().out


def test_only_kfps_lightweight_launcher_is_forked():
    launcher = [
        "sh",
        "-ec",
        'program_path=$(mktemp -d)\nprintf "%s" "$0" > "$program_path/ephemeral_component.py"\n'
        "_KFP_RUNTIME=true /venv/bin/python -m kfp.dsl.executor_main --component_module_path "
        '"$program_path/ephemeral_component.py" "$@"\n',
        "def f(): ...",
        "--executor_input",
        "{}",
        "--function_to_execute",
        "f",
    ]
    assert task_server.executor_arguments(launcher) == ("def f(): ...", launcher[4:])
    installs = [launcher[0], launcher[1], "python3 -m pip install kfp && " + launcher[2], *launcher[3:]]
    assert task_server.executor_arguments(installs) is None
    assert task_server.executor_arguments(["python", "-c", "print(1)"]) is None
    server_env = {"PATH": "/bin", "MLFLOW_TRACKING_URI": "sqlite:///a.db"}
    assert task_server.forkable_environment(server_env, dict(server_env))
    assert task_server.forkable_environment(server_env, {**server_env, "KFOPS_IMAGE": "x"})
    assert not task_server.forkable_environment(server_env, {**server_env, "PYTHONPATH": "/elsewhere"})
    assert not task_server.forkable_environment(server_env, {**server_env, "MLFLOW_TRACKING_URI": "sqlite:///b.db"})
    assert not task_server.forkable_environment(server_env, {"PATH": "/bin"})  # a variable unset since


def test_the_server_exits_when_its_driver_closes_the_lifeline():
    server = task_server.TaskServer.start(("json",))
    try:
        assert server.alive()
        server.process.stdin.close()
        assert server.process.wait(timeout=10) == 0
    finally:
        if server.alive():
            os.kill(server.process.pid, signal.SIGKILL)
        server.stop()


def test_a_preload_may_call_a_function_and_a_missing_one_is_logged_not_fatal(tmp_path):
    import json

    ws = workspace(tmp_path / "ws")
    configure_environment(ws)
    server = task_server.TaskServer.start(("kfp.dsl.executor_main", "numpy", "random:seed", "no_such_module_kfops"))
    server.wait_until_preloaded()
    log = server.log_path.read_text()
    assert "preloaded random:seed" in log
    assert "preloading no_such_module_kfops failed" in log
    task = run_pipeline(one_step, {}, ws, False, server=server)
    assert json.loads(task.output)["ppid"] == server.process.pid


def test_a_call_runs_in_a_forked_child_and_answers_in_json(tmp_path):
    ws = workspace(tmp_path / "ws")
    server = start_server(ws)
    try:
        task = run_pipeline(one_step, {}, ws, False, server=server, keep_server=True)
        assert task.output and server.alive()  # still there for the calls after the run
        # os.getppid in a child of the server: the server's pid
        assert server.call("os:getppid", {}) == server.process.pid
        assert server.call("posixpath:basename", {"p": "/data/train.parquet"}) == "train.parquet"
        assert server.call("json:loads", {"s": '{"k": [1, 2.5, null]}'}) == {"k": [1, 2.5, None]}
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            server.call("fractions:Fraction", {"numerator": 1, "denominator": 0})
        with pytest.raises(RuntimeError, match="no_such_module_kfops"):
            server.call("no_such_module_kfops:f", {})
        assert server.call("os:getcwd", {}) == os.getcwd()  # the caller's working directory
    finally:
        server.stop()
    assert not server.alive()


def test_a_task_that_comes_early_waits_for_the_preload_it_needs(tmp_path):
    import json

    ws = workspace(tmp_path / "ws")
    configure_environment(ws)
    preload = ("kfp.dsl.executor_main", "tests.pipelines.slow_import", "numpy")
    log = tmp_path / "server.log"
    server = task_server.TaskServer.start(preload, log_path=log, needs={"where_am_i": "numpy"})
    task = run_pipeline(one_step, {}, ws, False, server=server)  # sent while the slow import runs
    info = json.loads(task.output)
    assert info["ppid"] == server.process.pid
    assert info["numpy_preloaded"]  # forked after numpy, not before it to import numpy itself
    lines = log.read_text().splitlines()
    waits = next(i for i, line in enumerate(lines) if "where_am_i waits for numpy" in line)
    loaded = next(i for i, line in enumerate(lines) if "preloaded numpy" in line)
    forked = next(i for i, line in enumerate(lines) if "forked pid" in line)
    assert waits < loaded < forked


def test_every_training_step_waits_for_a_preload_the_server_has():
    """Each function the compiled training pipeline runs locally (deploy and rollout run only with deploy=True) is
    in TRAINING_NEEDS, and what it waits for is preloaded."""
    from pathlib import Path

    import yaml

    compiled = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "training.yaml"
    spec = next(yaml.safe_load_all(compiled.read_text()))
    functions = set()
    for executor in spec["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        functions.add(args[args.index("--function_to_execute") + 1])
    steps = {name for name in task_server.TRAINING_NEEDS if ":" not in name}  # the others are `kfops run`'s calls
    assert steps == functions - {"deploy", "rollout"}
    preloaded = {name.partition(":")[0] for name in task_server.TRAINING_PRELOAD}
    assert set(task_server.TRAINING_NEEDS.values()) <= preloaded


def test_a_task_that_needs_only_the_first_preloads_forks_from_the_light_server(tmp_path):
    """The light server, forked once numpy is loaded, takes a task that needs no more than numpy while the server
    goes on with a slow import; when it is gone, the server takes such tasks again."""
    import json
    import time

    ws = workspace(tmp_path / "ws")
    configure_environment(ws)
    log = tmp_path / "server.log"
    preload = ("kfp.dsl.executor_main", "numpy", "tests.pipelines.slow_import")
    server = task_server.TaskServer.start(preload, log_path=log, needs={"where_am_i": "numpy"}, light_after="numpy")
    try:
        deadline = time.monotonic() + 30
        while not server.light_socket_path.exists():
            assert time.monotonic() < deadline and server.alive(), server.log_tail()
            time.sleep(0.02)
        task = run_pipeline(one_step, {}, ws, False, server=server, keep_server=True)
        info = json.loads(task.output)
        assert info["numpy_preloaded"]
        assert info["ppid"] != server.process.pid  # the light server, a child of the server, forked it
        with open(f"/proc/{info['ppid']}/stat") as fh:  # still running: it serves until the lifeline closes
            assert int(fh.read().rsplit(")", 1)[1].split()[1]) == server.process.pid
        text = log.read_text()
        assert "light task server: forked pid" in text and "forked the light task server" in text
        os.kill(info["ppid"], signal.SIGKILL)  # the light server gone: the server takes its tasks
        again = json.loads(run_pipeline(one_step, {}, ws, False, server=server, keep_server=True).output)
        assert again["ppid"] == server.process.pid and again["numpy_preloaded"]
    finally:
        server.stop()


def test_a_new_workspace_loads_great_expectations_before_mlflow_and_nothing_else_moves():
    new, usual = task_server.TRAINING_PRELOAD_NEW_STORE, task_server.TRAINING_PRELOAD
    assert sorted(new) == sorted(usual) and len(new) == len(usual)
    assert new.index("great_expectations") < new.index("mlflow")
    # validate waits for nothing of MLflow's there; every other module keeps its place relative to the others
    assert [m for m in new if m != "great_expectations"] == [m for m in usual if m != "great_expectations"]
    assert "mlflow" not in new[: new.index(task_server.TRAINING_NEEDS["validate_data"]) + 1]
