"""Running the suite's pipelines on this machine with ``kfp.local``: no cluster, no Docker.

One workspace folder holds everything a local run writes::

    <workspace>/
      data/           generated default data
      store/          the artifact store: content-addressed data snapshots (datasets/<sha256>/)
      pipeline_root/  KFP task outputs (splits, feature spec, model, metrics)
      mlflow.db       the MLflow tracking and registry store (sqlite)
      mlartifacts/    MLflow run artifacts (models, plots, TensorBoard copies)
      tensorboard/    TensorBoard event files, one folder per MLflow run

Tasks run as subprocesses of this process in the current Python environment (the suite's dependencies are
already here), so they inherit its environment: MLflow and S3 settings reach them as they would reach a pod
from a Secret. A remote MLflow or MinIO is used instead of the local files when MLFLOW_TRACKING_URI or an
``s3://`` artifact store is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = ".kfops"


@dataclass
class LocalWorkspace:
    root: Path

    @property
    def store(self) -> str:
        return str(self.root / "store")

    @property
    def pipeline_root(self) -> str:
        return str(self.root / "pipeline_root")

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> str:
        return str(self.root / "mlartifacts")

    @property
    def tensorboard(self) -> str:
        return str(self.root / "tensorboard")

    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"


def workspace(path: str | os.PathLike | None = None) -> LocalWorkspace:
    root = Path(path or os.environ.get("KFOPS_WORKSPACE") or DEFAULT_WORKSPACE).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return LocalWorkspace(root)


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


def init_local(ws: LocalWorkspace, enable_caching: bool = True) -> None:
    """Start kfp.local with the subprocess runner in the current environment."""
    from kfp import local

    _resolve_task_output_channels()
    configure_environment(ws)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=ws.pipeline_root,
        raise_on_error=True,
        enable_caching=enable_caching,
    )


def run_pipeline(pipeline_func, arguments: dict, ws: LocalWorkspace, enable_caching: bool = True):
    """Run a pipeline through kfp.local and return its task (outputs under ``.outputs``)."""
    import builtins

    init_local(ws, enable_caching=enable_caching)
    # kfp.local indents print() while a task runs by swapping builtins.print; tasks that overlap (ParallelFor) or
    # a task that raises can leave the indenting copy installed for the rest of the process.
    print_function = builtins.print
    try:
        return pipeline_func(**arguments)
    finally:
        builtins.print = print_function
