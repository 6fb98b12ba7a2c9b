"""Models trained elsewhere: the ``imported`` family (``kfops models import``, ``kfops run --imported-model``).

An existing MLflow model (scikit-learn, XGBoost, or any pyfunc) is brought into the chain instead of training one:
the data steps run on the user's reference data as for training (its feature spec describes what the model is
fed), the model is wrapped in the suite's model format (``pyfunc.ImportedModel``: the original MLflow model folder
inside, with the feature spec), and evaluation, the gate, the registry, serving and monitoring follow unchanged.

The imported model scores raw rows (the columns of its own signature), not the feature spec's matrix. A classifier
is asked for probabilities: through its native flavour's ``predict_proba`` where it has one (scikit-learn,
XGBoost's scikit-learn API), its columns placed by ``classes_`` compared to the spec's labels as text; a pyfunc
whose ``predict`` answers one column per class (named by the labels, or ``probability_<label>``) is read by name;
a pyfunc that answers labels only gives probabilities of 0 and 1 (said in a warning: ROC-AUC then sees hard
labels). A regression's ``predict`` is its value.

Loading runs the model's pickled code. Import only a model from a registry or path you trust.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kfops.components.contracts import PROBABILITY_PREFIX, TASK_BINARY, TASK_REGRESSION, FeatureSpec, KfopsError

log = logging.getLogger(__name__)

NATIVE_FLAVORS = ("sklearn", "xgboost", "lightgbm")
CHECK_ROWS = 1000


def check_trusted_source(uri: str, artifact_store: str, trust: bool = False) -> None:
    """Loading a model runs its pickled code, so an import comes from a source the operator configured: the
    tracking server's registry or runs (``models:/``, ``runs:/``), a local folder, or the configured artifact
    store. Anything else (another bucket, an http(s) or cloud URI) needs ``trust`` (``--trust``): a KfopsError
    naming the URI and the store otherwise."""
    if trust or uri.startswith(("models:/", "runs:/")) or "://" not in uri:
        return
    store = artifact_store.rstrip("/") + "/"
    if artifact_store.startswith("s3://") and uri.startswith(store):
        return
    raise KfopsError(
        f"{uri} is outside the sources kfops trusts (the tracking server's models:/ and runs:/, a local folder, the "
        f"artifact store {artifact_store}); loading a model runs its pickled code, so pass --trust to import it "
        "anyway"
    )


def download(uri: str, directory: str | Path) -> Path:
    """The MLflow model at ``uri`` (``models:/NAME/V``, ``models:/NAME@ALIAS``, ``runs:/ID/PATH``, a folder, an
    ``s3://`` prefix) as a local folder under ``directory``; a KfopsError naming the URI when it is not a model."""
    import mlflow.artifacts

    Path(directory).mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(directory)))
    except Exception as err:  # MlflowException, OSError, botocore errors: all mean "cannot fetch it"
        raise KfopsError(f"import: cannot fetch the MLflow model {uri}: {err}") from err
    if not (local / "MLmodel").is_file():
        raise KfopsError(f"import: {uri} is not an MLflow model (no MLmodel file in {local})")
    return local


def signature_columns(model_dir: str | Path) -> dict[str, str] | None:
    """The model's input columns and their MLflow types from its signature, or None when it has none."""
    from mlflow.models import Model

    signature = Model.load(str(model_dir)).signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return None
    return {spec.name: str(getattr(spec.type, "name", spec.type)) for spec in signature.inputs.inputs}


def load(model_dir: str | Path) -> tuple[str, Any]:
    """(how it scores, the loaded object): ``native`` with the flavour's own model (``predict_proba``) where the
    folder has one of ``NATIVE_FLAVORS`` and the object answers ``predict_proba``, else ``pyfunc``."""
    import importlib

    from mlflow.models import Model

    flavors = Model.load(str(model_dir)).flavors
    for flavor in NATIVE_FLAVORS:
        if flavor in flavors:
            try:
                native = importlib.import_module(f"mlflow.{flavor}").load_model(str(model_dir))
            except Exception as err:  # the flavour's library missing or the pickle broken: try the pyfunc
                log.warning("import: the %s flavour does not load (%s); scoring through the pyfunc", flavor, err)
                break
            if hasattr(native, "predict_proba") or hasattr(native, "predict"):
                return "native", native
    from kfops.components.model_store import load_pyfunc

    return "pyfunc", load_pyfunc(model_dir)


def typed_frame(frame, columns: dict[str, str] | None):
    """The spec's feature frame typed as the model's signature wants: integers where it declares them (a whole
    float is the integer; a blank or a fraction is an error naming the column), floats, text."""
    import pandas as pd

    if not columns:
        return frame
    out = {}
    for name, kind in columns.items():
        if name not in frame:
            raise KfopsError(f"import: the model's input column '{name}' is not among the features the data gives")
        values = frame[name]
        if kind in ("long", "integer"):
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.isna().any() or (numbers % 1 != 0).any():
                raise KfopsError(f"import: column '{name}' must be whole numbers for the model (signature {kind})")
            values = numbers.astype("int64" if kind == "long" else "int32")
        elif kind in ("double", "float"):
            values = pd.to_numeric(values, errors="coerce").astype("float64" if kind == "double" else "float32")
        out[name] = values
    return pd.DataFrame(out, index=frame.index)


def scores(how: str, model: Any, frame, spec: FeatureSpec, columns: dict[str, str] | None) -> np.ndarray:
    """The imported model's answer for raw feature rows, as the model format gives it: the positive-class
    probability (binary), each class's probability in ``spec.labels`` order (multiclass), the value
    (regression)."""
    rows = typed_frame(frame, columns)
    if spec.task == TASK_REGRESSION:
        out = model.predict(rows)
        values = out.iloc[:, 0] if hasattr(out, "iloc") and getattr(out, "ndim", 1) == 2 else out
        return np.asarray(values, dtype=np.float64).reshape(len(rows))
    labels = spec.labels
    if how == "native" and hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(rows), dtype=np.float64)
        classes = [_text(c) for c in getattr(model, "classes_", range(proba.shape[1]))]
        return _place(proba, classes, labels, spec.task)
    out = model.predict(rows)
    if hasattr(out, "columns"):
        by_name = {str(c): c for c in out.columns}
        names = [by_name.get(label) or by_name.get(PROBABILITY_PREFIX + label) for label in labels]
        if all(n is not None for n in names):
            return _place(out[names].to_numpy(dtype=np.float64), labels, labels, spec.task)
        out = out.iloc[:, 0]
    predicted = [_text(v) for v in np.asarray(out).reshape(len(rows))]
    unknown = sorted(set(predicted) - set(labels))
    if unknown:
        raise KfopsError(f"import: the model predicts {unknown[:5]}, which are not classes of the data ({labels})")
    one_hot = np.array([[1.0 if p == label else 0.0 for label in labels] for p in predicted])
    return _place(one_hot, labels, labels, spec.task)


def _text(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _place(proba: np.ndarray, classes: list[str], labels: list[str], task: str) -> np.ndarray:
    """Columns in ``labels`` order from columns in ``classes`` order; a label the model never learned gets 0."""
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise KfopsError(f"import: the model's classes {unknown[:5]} are not classes of the data ({labels})")
    full = np.zeros((len(proba), len(labels)), dtype=np.float64)
    for column, name in enumerate(classes):
        full[:, labels.index(name)] = proba[:, column]
    return full[:, 1] if task == TASK_BINARY else full


def fit_imported(uri: str, directory: str | Path, raw_rows, spec: FeatureSpec, threshold: float = 0.5):
    """The imported family's "training": fetch the model, load it, score up to ``CHECK_ROWS`` raw rows of the
    training split (a KfopsError says why a model cannot serve this data) and report its loss and metrics there,
    as the one row of a ``FitResult`` whose model is ``(local folder, how it scores, signature columns)``. The rows
    are the reference data's training split: for a model trained elsewhere they are as unseen as our validation
    split, unless the reference data is what it was trained on (the test split's evaluation is the gate's)."""
    import time

    from kfops.components.contracts import TASK_MULTICLASS
    from kfops.components.scoring import task_loss_value
    from kfops.components.train.logic import validation_metrics
    from kfops.components.train.loop import FitResult
    from kfops.components.transform import encode_labels

    started = time.perf_counter()
    sample = raw_rows.head(CHECK_ROWS)
    local, how, columns, answer = check_imported(uri, directory, sample, spec)
    truth = encode_labels(spec, sample[spec.target], source="reference data")
    if spec.task == TASK_REGRESSION:  # the loss and the metric hook work on the standardised target
        answer, truth = (answer - spec.target_mean) / spec.target_std, (truth - spec.target_mean) / spec.target_std
    row = {"epoch": 1.0, "val_loss": task_loss_value(spec.task, truth, answer)}
    if spec.task == TASK_MULTICLASS:
        row["val_accuracy"] = float((answer.argmax(axis=1) == truth.astype(np.int64)).mean())
    elif spec.task == TASK_BINARY:
        row["val_accuracy"] = float(((answer >= 0.5) == (truth >= 0.5)).mean())
    row.update(validation_metrics(truth, threshold, spec)(answer))
    return FitResult(
        model=(local, how, columns),
        history=[row],
        best_epoch=1,
        best_val_loss=row["val_loss"],
        device="cpu",
        train_seconds=time.perf_counter() - started,
    )


def check_imported(uri: str, directory: str | Path, raw_rows, spec: FeatureSpec):
    """Fetch the model, load it and score the raw rows: (its local folder, how it scores, its signature's columns,
    its answer). A KfopsError says why a model cannot serve this data."""
    from kfops.components.transform import model_input_frame

    local = download(uri, directory)
    columns = signature_columns(local)
    how, model = load(local)
    if columns:
        missing = sorted(set(columns) - set(spec.feature_names))
        if missing:
            raise KfopsError(
                f"import: the model {uri} takes column(s) {missing} that the data's features lack "
                f"({', '.join(spec.feature_names)}); `kfops models import` picks the features from the signature"
            )
    frame = model_input_frame(spec, raw_rows, source="reference data")
    try:
        answer = scores(how, model, frame, spec, columns)
    except KfopsError:
        raise
    except Exception as err:
        problem = f"{type(err).__name__}: {err}"
        raise KfopsError(f"import: the model {uri} cannot score the reference data: {problem}") from err
    if not np.isfinite(answer).all():
        raise KfopsError(f"import: the model {uri} answers NaN or infinite values on the reference data")
    return local, how, columns, answer
