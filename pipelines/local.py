"""Running the suite's pipelines on this machine with ``kfp.local``: no cluster, no Docker.

Everything a local run writes goes under one workspace folder (``kfops.components.workspace``, which serving
and the CLI use too).

Tasks run as subprocesses of this process in the current Python environment (the suite's dependencies are
already here), so they inherit its environment: MLflow and S3 settings reach them as they would reach a pod
from a Secret. A remote MLflow or MinIO is used instead of the local files when MLFLOW_TRACKING_URI or an
``s3://`` artifact store is given.
"""

from __future__ import annotations

import os

from kfops.components.workspace import DEFAULT_WORKSPACE, LocalWorkspace, workspace
from kfops.pipelines import task_server

# The warm interpreter tasks fork from while run_pipeline runs with one (task_server.py); None: fresh processes.
_task_server: task_server.TaskServer | None = None

# The SDK's entry points (README: "From the Python SDK"): the workspace, and running a pipeline in it.
__all__ = ["DEFAULT_WORKSPACE", "LocalWorkspace", "configure_environment", "init_local", "run_pipeline", "workspace"]


def configure_environment(ws: LocalWorkspace) -> dict[str, str]:
    """Set the variables tasks read (MLflow URI, MLflow artifact root) unless the user already set them."""
    values = {"MLFLOW_TRACKING_URI": ws.tracking_uri()}
    if values["MLFLOW_TRACKING_URI"].startswith("sqlite:"):
        values["KFOPS_MLFLOW_ARTIFACT_ROOT"] = os.environ.get("KFOPS_MLFLOW_ARTIFACT_ROOT", ws.mlflow_artifacts)
    # Tasks are small; one BLAS pool per process on a laptop beats oversubscription.
    values.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.update(values)
    return values


def _resolve_task_output_channels() -> None:
    """Let kfp.local's dsl.If see task outputs named like ``gate-blessed``.

    kfp 2.17's local condition evaluator reads a channel ``pipelinechannel--<task>-<output>`` as a task output
    only when it contains ``--`` or ``-Output``; otherwise it looks for a pipeline input of that name, finds
    none, and treats the condition as False. The compiled YAML is right and a cluster evaluates it correctly;
    this teaches the local evaluator the same, by trying each ``<task>-<output>`` split against the task
    outputs it already holds.
    """
    from kfp.local.orchestrator import enhanced_dag_orchestrator as orchestrator

    evaluator = orchestrator.ConditionEvaluator
    if getattr(evaluator, "_kfops_patched", False):
        return
    original = evaluator._resolve_pipeline_channel

    def resolve(channel_ref, io_store):
        value = original(channel_ref, io_store)
        if value is not None:
            return value
        parts = channel_ref.replace("pipelinechannel--", "").split("-")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                return io_store.get_task_output("-".join(parts[:cut]), "-".join(parts[cut:]))
            except Exception:
                continue
        return None

    evaluator._resolve_pipeline_channel = staticmethod(resolve)
    evaluator._kfops_patched = True


# The line kfp's executor logs once a task's outputs are complete, and the one libstdc++ prints when a native
# thread pool is torn down at interpreter exit while a worker is still joinable (pyarrow's, apache/arrow#34314:
# intermittent, after all Python code has finished).
_OUTPUTS_WRITTEN = "Wrote executor output file to "
_TEARDOWN_ABORT = "terminate called without an active exception"


def finished_before_teardown_abort(return_code: int, lines: list[str]) -> str | None:
    """The executor output file of a task whose process aborted only in native teardown, else None.

    Such a task did all its work and wrote every output before the abort, so failing the run for it would throw
    away a finished step. Any other non-zero exit, an abort before the outputs were written, or an output file
    that is not there, stays a failure.
    """
    if return_code == 0:
        return None
    written_at = next((i for i in range(len(lines) - 1, -1, -1) if _OUTPUTS_WRITTEN in lines[i]), None)
    if written_at is None or not any(_TEARDOWN_ABORT in line for line in lines[written_at + 1 :]):
        return None
    output_file = lines[written_at].split(_OUTPUTS_WRITTEN, 1)[1].strip().rstrip(".")
    return output_file if os.path.isfile(output_file) else None


def _accept_tasks_that_abort_after_their_outputs() -> None:
    """Wrap kfp.local's subprocess call so a task that aborts only in native teardown counts as finished."""
    import subprocess

    from kfp.local import subprocess_task_handler as handler

    if getattr(handler, "_kfops_patched", False):
        return

    def run_local_subprocess(full_command, env_vars=None) -> int:
        lines: list[str] = []

        def echo(line: str) -> None:
            lines.append(line)
            print(line, end="")

        server, launch = _task_server, None
        if server is not None and server.accepts(env_vars):
            launch = task_server.executor_arguments(full_command)
        if launch is not None:
            return_code = server.run(*launch, env_vars, echo)
            print("\n")
        else:
            env = {**os.environ, **env_vars} if env_vars else None
            with subprocess.Popen(
                full_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
            ) as process:
                for line in iter(process.stdout.readline, ""):
                    echo(line)
                print("\n")
                return_code = process.wait()
        output_file = finished_before_teardown_abort(return_code, lines)
        if output_file is None:
            return return_code
        print(
            f"kfops: the task's process exited with {return_code} in a native library's teardown after writing"
            f" all its outputs ({output_file}); the step counts as finished (apache/arrow#34314)"
        )
        return 0

    handler.run_local_subprocess = run_local_subprocess
    handler._kfops_patched = True


def init_local(ws: LocalWorkspace, enable_caching: bool = True) -> None:
    """Start kfp.local with the subprocess runner in the current environment."""
    from kfp import local

    _resolve_task_output_channels()
    _accept_tasks_that_abort_after_their_outputs()
    configure_environment(ws)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=ws.pipeline_root,
        raise_on_error=True,
        enable_caching=enable_caching,
    )


def run_pipeline(
    pipeline_func,
    arguments: dict,
    ws: LocalWorkspace,
    enable_caching: bool = True,
    server: task_server.TaskServer | None = None,
    keep_server: bool = False,
):
    """Run a pipeline through kfp.local and return its task (outputs under ``.outputs``). With ``server``
    (``task_server.TaskServer.start()``) tasks fork from its warm interpreter; this stops it at the end unless
    ``keep_server`` (the caller still has calls for it, and stops it)."""
    import builtins

    global _task_server
    init_local(ws, enable_caching=enable_caching)
    # kfp.local indents print() while a task runs by swapping builtins.print; tasks that overlap (ParallelFor) or
    # a task that raises can leave the indenting copy installed for the rest of the process.
    print_function = builtins.print
    _task_server = server
    try:
        return pipeline_func(**arguments)
    finally:
        _task_server = None
        builtins.print = print_function
        if server is not None and not keep_server:
            server.stop()
