"""What `kfops run` reports about a finished training run, read from MLflow.

A plain function with JSON in and out, so the driver can have it run in a child of the task server
(``task_server.TaskServer.call``), where MLflow is already imported, instead of importing MLflow itself after the
last step (2-3 s on 2 cores); without a server it runs in the driver as before.
"""

from __future__ import annotations

from typing import Any


def training_summary(tracking_uri: str, model_name: str, run_id: str, model_version: str) -> dict[str, Any]:
    """The run's task, family, device, test metrics and TensorBoard folder, and the model version's aliases,
    files and gate verdict."""
    import mlflow

    from kfops.components.contracts import (
        METRIC_NAMES,
        TAG_BLESSED,
        TAG_BLESSING_MESSAGE,
        TASK_METRIC_NAMES,
    )

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(run_id)
    version = client.get_model_version(model_name, model_version)
    aliases = client.get_registered_model(model_name).aliases
    task = run.data.tags.get("kfops.task", "binary")
    names = TASK_METRIC_NAMES.get(task, METRIC_NAMES)
    return {
        "task": task,
        "model_family": run.data.tags.get("kfops.model_family", "mlp"),
        "metrics": {k: run.data.metrics[k] for k in names if k in run.data.metrics},
        "experiment_id": run.info.experiment_id,
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(model_version)),
        "version": str(version.version),
        "download_uri": client.get_model_version_download_uri(model_name, model_version),
        "tensorboard": run.data.tags.get("kfops.tensorboard_uri", ""),
        "device": run.data.tags.get("kfops.device", ""),
        "blessed": version.tags.get(TAG_BLESSED) == "true",
        "blessing": version.tags.get(TAG_BLESSING_MESSAGE, ""),
    }
