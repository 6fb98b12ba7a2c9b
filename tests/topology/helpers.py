"""What the topology tests share: `kfops run`'s arguments against the topology, the checks of a complete model
version, and the MLflow server restart aimed at training."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from kfops.components import storage

FAST = ["--epochs", "3", "--hidden-sizes", "16,8", "--batch-size", "256"]
MODEL = "topology-fraud"
OUTAGE_S = 20  # how long S3 refuses connections in the fault tests (issue 19)


def lenient(folder: Path) -> Path:
    path = folder / "lenient.yaml"
    path.write_text("accuracy: {lower: 0.5}\n")
    return path


def run_args(folder: Path, data: str, *extra: str) -> list[str]:
    """`kfops run` on ``data`` with its snapshots on S3 (s3://kfops-store), a small fast model, lenient gate."""
    return [
        "--data",
        data,
        "--target",
        "is_fraud",
        "--drop",
        "transaction_id,customer_id",
        "--model-name",
        MODEL,
        "--artifact-store",
        "s3://kfops-store",
        "--workspace",
        str(folder / "ws"),
        "--thresholds",
        str(lenient(folder)),
        "--no-cache",
        *FAST,
        *extra,
    ]


def run_log(workspace: str | Path) -> str:
    return sorted((Path(workspace) / "logs").glob("run-*.log"))[-1].read_text()


def assert_version_complete(client, name: str, version: str) -> None:
    """A registered version whose run FINISHED and whose model files are on S3 where the version points."""
    found = client.get_model_version(name, version)
    assert client.get_run(found.run_id).info.status == "FINISHED"
    location = client.get_model_version_download_uri(name, version)
    assert location.startswith("s3://mlflow/"), location
    assert storage.exists(storage.join(location, "MLmodel")), location


class RestartDuringTraining(threading.Thread):
    """Kills the MLflow server (SIGKILL to its process group) as soon as the experiment has a RUNNING run, that
    is while training runs, then starts it again on the same port and database after ``down_s``."""

    def __init__(self, server, experiment: str, down_s: float = 2.0):
        super().__init__(daemon=True)
        self.server, self.experiment, self.down_s = server, experiment, down_s
        self.killed_at = self.back_at = 0.0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.server.uri)
        try:
            while not self.stop.is_set():
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment and client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
                    break
                time.sleep(0.2)
            else:
                return
            self.server.kill()
            self.killed_at = time.time()
            time.sleep(self.down_s)
            self.server.start()
            self.back_at = time.time()
        except BaseException as err:  # reported by the test
            self.error = err
