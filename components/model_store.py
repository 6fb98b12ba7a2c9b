"""Find and load the model a server serves: a registry reference or a local MLflow pyfunc folder.

References:

- ``models:/NAME@ALIAS``, ``NAME@ALIAS``, ``models:/NAME/VERSION``, ``NAME/VERSION``, ``NAME`` (latest version):
  resolved in the MLflow registry (``tracking_uri``, else ``MLFLOW_TRACKING_URI``) and downloaded from the
  version's real artifact location (``get_model_version_download_uri``; a version's ``source`` is a
  ``models:/m-...`` id in MLflow 3).
- a local folder holding ``MLmodel``, as KServe's storage initializer lays a model out under ``/mnt/models``;
  its version comes from ``$KFOPS_MODEL_VERSION`` (the deploy step sets it), else it is "".

Heavy imports (MLflow, torch) happen inside ``load_model``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfops.components.contracts import FeatureSpec, KfopsError

log = logging.getLogger(__name__)

MLMODEL_FILE = "MLmodel"
MODEL_VERSION_ENV = "KFOPS_MODEL_VERSION"  # the registered version of a model folder, set by the deploy step


@dataclass
class LoadedModel:
    """A model ready to score: the unwrapped TabularClassifier with its feature spec and threshold."""

    name: str  # registered model name ("" for a bare folder)
    version: str  # registered version ("" for a bare folder unless its metadata says)
    classifier: Any  # kfops.components.train.pyfunc.TabularClassifier, context loaded
    spec: FeatureSpec
    threshold: float
    path: str  # the local model folder
    source: str  # the reference it was loaded from
    run_id: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def predict(self, frame):
        """Raw feature rows in (typed as the model's signature wants), prediction + probability out."""
        return self.classifier.predict(None, frame)

    def predict_columns(self, columns: dict[str, list], rows: int) -> dict[str, Any]:
        """``predict`` for validated columns (numeric floats with NaN, categorical str or None), with no DataFrame:
        the same transform and network, the columns ``predict`` answers with (``TabularClassifier.outputs``)."""
        return self.classifier.outputs(self.classifier.score_columns(columns, rows))


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~", "file:")) or os.path.isdir(os.path.expanduser(ref))


def load_model(ref: str, tracking_uri: str = "") -> LoadedModel:
    """Load ``ref`` (see the module docstring); KfopsError with a clear message when it cannot be found."""
    text = (ref or "").strip()
    if not text:
        raise KfopsError("serving: empty model reference; expected NAME@ALIAS, NAME/VERSION or a model folder")
    if text.startswith("models:/"):
        return _load_registered(text[len("models:/") :], tracking_uri, source=text)
    if _looks_like_path(text):
        path = Path(os.path.expanduser(text.removeprefix("file://").removeprefix("file:")))
        return load_model_dir(path, source=text)
    return _load_registered(text, tracking_uri, source=text)


def _load_registered(ref: str, tracking_uri: str, source: str) -> LoadedModel:
    import mlflow
    import mlflow.artifacts

    from kfops.components.registry import resolve_ref

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise KfopsError(
            f"serving: model reference {source!r} needs an MLflow registry: set MLFLOW_TRACKING_URI or "
            "pass --tracking-uri (or give a local model folder)"
        )
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = resolve_ref(client, ref)
    download_uri = client.get_model_version_download_uri(version.name, version.version)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=download_uri, tracking_uri=uri)
    except Exception as err:  # MlflowException, OSError, botocore errors: all mean "cannot fetch it"
        raise KfopsError(
            f"serving: cannot download model {version.name} version {version.version} from {download_uri}: {err}"
        ) from err
    loaded = load_model_dir(Path(local), source=source)
    loaded.name = version.name
    loaded.version = str(version.version)
    loaded.run_id = version.run_id or loaded.run_id
    loaded.tags = dict(version.tags or {})
    log.info("loaded %s version %s from %s", version.name, version.version, download_uri)
    return loaded


def load_pyfunc(path: str | Path):
    """``mlflow.pyfunc.load_model`` of a local model folder, leaving ``sys.path`` as it was: a kfops model ships its
    runtime code (``train/model_code.py``), which MLflow puts first on ``sys.path``; here kfops is installed and
    already imported, and processes this one starts later must import the installed package, not the model's."""
    import sys

    import mlflow.pyfunc

    before = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(str(path))
    finally:
        sys.path[:] = before


def load_model_dir(path: Path, source: str = "") -> LoadedModel:
    """Load an MLflow pyfunc folder written by the train stage."""
    if not path.is_dir():
        raise KfopsError(f"serving: model folder {path} does not exist")
    if not (path / MLMODEL_FILE).is_file():
        raise KfopsError(f"serving: {path} is not an MLflow model folder (it has no {MLMODEL_FILE} file)")
    try:
        pyfunc = load_pyfunc(path)
        classifier = pyfunc.unwrap_python_model()
    except Exception as err:  # a broken or foreign model folder
        raise KfopsError(f"serving: cannot load the MLflow model in {path}: {err}") from err
    spec = getattr(classifier, "spec", None)
    if not isinstance(spec, FeatureSpec) or not hasattr(classifier, "predict_proba"):
        raise KfopsError(
            f"serving: the model in {path} is a {type(classifier).__name__}, not the suite's TabularClassifier "
            "(it has no feature spec)"
        )
    metadata = pyfunc.metadata
    extra = dict(getattr(metadata, "metadata", None) or {})
    return LoadedModel(
        name=str(extra.get("model_name", "")),
        # KServe's storage initializer copies only the files: the deploy step names the registered version in
        # the container's environment so metrics, answers and payload logs carry it.
        version=str(extra.get("model_version", "") or os.environ.get(MODEL_VERSION_ENV, "")),
        classifier=classifier,
        spec=spec,
        threshold=float(getattr(classifier, "threshold", 0.5)),
        path=str(path),
        source=source or str(path),
        run_id=str(getattr(metadata, "run_id", "") or ""),
    )
