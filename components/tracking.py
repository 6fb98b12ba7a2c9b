"""The one place the suite connects to MLflow: which tracking store, and the experiment runs go into.

Every stage that talks to MLflow (train, evaluate, gate, register, sweep, the TrainJob and Katib steps) and serving
call ``set_tracking`` first. It refuses to fall back to MLflow's default (``./mlflow.db`` in the working directory),
which would scatter runs over whatever folder a step happened to start in. It also applies the suite's one retry
policy (``retry.configure``: bounded, logged and counted retries for MLflow's REST client and boto3).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from kfops.components import retry, sqlite_store, storage
from kfops.components.contracts import KfopsError


def set_tracking(tracking_uri: str = "") -> str:
    """Point MLflow at the given URI, else at MLFLOW_TRACKING_URI; refuse to fall back to ./mlflow.db."""
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise KfopsError("no MLflow tracking URI: set MLFLOW_TRACKING_URI or pass mlflow_tracking_uri")
    retry.configure()
    sqlite_store.ensure_store(uri)  # a new local store: copied from a migrated template, not migrated again
    mlflow.set_tracking_uri(uri)
    return uri


def new_local_store(tracking_uri: str = "") -> str:
    """The path of the local (sqlite) MLflow store ``tracking_uri`` (else MLFLOW_TRACKING_URI) names when it does
    not exist yet, else "". Such a store has no registered model, so a step that only looks one up can say so
    without importing MLflow or creating the store."""
    path = sqlite_store.sqlite_path(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
    return str(path) if path is not None and not path.exists() else ""


def ensure_experiment(name: str, client=None) -> str:
    """The experiment's id, creating it (under KFOPS_MLFLOW_ARTIFACT_ROOT when set) if needed; through ``client``
    (an ``MlflowClient``) when given, else through MLflow's current tracking URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    api = client if client is not None else mlflow
    experiment = api.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = os.environ.get("KFOPS_MLFLOW_ARTIFACT_ROOT")
    try:
        return api.create_experiment(name, artifact_location=storage.join(root, name) if root else None)
    except MlflowException:
        # Another run created it between our read and write.
        return api.get_experiment_by_name(name).experiment_id


# Where the libraries' own errors for an unreachable endpoint come from (botocore's EndpointConnectionError,
# boto3's S3UploadFailedError, urllib3's and requests' connection errors).
_TRANSPORT_MODULES = ("botocore", "boto3", "urllib3", "requests", "s3transfer")


@contextlib.contextmanager
def artifact_store_errors(what: str) -> Iterator[None]:
    """Turn a failed artifact write that the retries could not carry (the artifact store unreachable) into a
    KfopsError naming the endpoint, so the step's error says where it could not write; anything else passes
    through unchanged. An MLflow run open around it still ends FAILED (``mlflow.start_run``'s context)."""
    try:
        yield
    except Exception as err:
        chain, seen = [], err
        while seen is not None and len(chain) < 10:
            chain.append(seen)
            seen = seen.__cause__ or seen.__context__
        transport = any(
            isinstance(e, ConnectionError | TimeoutError) or type(e).__module__.split(".")[0] in _TRANSPORT_MODULES
            for e in chain
        )
        if not transport or isinstance(err, KfopsError):
            raise
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or "the default"
        raise KfopsError(
            f"{what}: the artifact store (S3 endpoint {endpoint}) could not be written after "
            f"{retry.max_attempts()} attempts: {type(err).__name__}: {err}"
        ) from err
