"""The user's own training code: ``--model-module FILE.py`` (TFX's ``module_file``), the ``module`` family.

The file defines::

    def train(train, validation, spec, params):
        # train, validation: pandas DataFrames of the model matrix (the feature spec's transform: numerics
        #   scaled with a ``<name>_missing`` indicator where the training data had gaps, categoricals one-hot as
        #   ``<name>=<value>``) and the target column, ``spec.target``: class indices 0..k-1 in ``spec.labels``'
        #   order for a classifier, the value in the target's units for a regression.
        # spec: the kfops FeatureSpec (``task``, ``labels``, ``target``, ``feature_names``).
        # params: the run's ``model_params`` (a dict; empty by default).
        return fitted  # predict_proba(frame) for a classifier, predict(frame) for a regression

and optionally ``REQUIREMENTS = ["lightgbm==4.5.0"]``, pip requirements the fitted object needs, added to the
model's. The fitted object is pickled with the module's file beside it in the model, which imports the file
under ``MODULE_NAME`` before unpickling: classes the module defines load wherever the model does. A classifier
with ``classes_`` (scikit-learn's) has its columns placed by them; one without answers in ``spec.labels`` order.

Everything after training (evaluation, the gate, the registry, serving, batch prediction, monitoring) works on
the model format as for the built-in families. An exception in the module stops training with the module's path
and the line that raised; the task's log has the whole traceback; nothing is registered.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from kfops.components.contracts import TASK_BINARY, TASK_MULTICLASS, TASK_REGRESSION, FeatureSpec, KfopsError

log = logging.getLogger(__name__)

MODULE_NAME = "kfops_user_module"  # the name the file is imported under, in training and wherever the model loads
ENTRY_POINT = "train"


def load_module(path: str | Path) -> ModuleType:
    """Import the file as ``MODULE_NAME`` (replacing one imported before); a KfopsError naming the file when it
    is missing, does not import, or has no ``train`` function."""
    path = Path(path)
    if not path.is_file():
        raise KfopsError(f"model module {path} does not exist")
    if path.suffix != ".py":
        raise KfopsError(f"model module {path} is not a Python file (.py)")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(MODULE_NAME, None)
        raise KfopsError(f"model module {path} does not import: {_where(err, path)}") from err
    if not callable(getattr(module, ENTRY_POINT, None)):
        raise KfopsError(
            f"model module {path} defines no function {ENTRY_POINT}(train, validation, spec, params); "
            "see components/train/README.md"
        )
    return module


def requirements(module: ModuleType) -> list[str]:
    """The module's ``REQUIREMENTS`` (pip requirement strings), checked."""
    value = getattr(module, "REQUIREMENTS", [])
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise KfopsError(f"model module {module.__file__}: REQUIREMENTS must be a list of pip requirement strings")
    return list(value)


def _where(err: BaseException, path: Path) -> str:
    """``Type: message (FILE line N, in FUNC)``: the innermost frame in the user's file, else the innermost."""
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == path.resolve()] or frames
    at = f" ({mine[-1].filename} line {mine[-1].lineno}, in {mine[-1].name})" if mine else ""
    return f"{type(err).__name__}: {err}{at}"


def frame_of(features: np.ndarray, spec: FeatureSpec):
    """The model matrix as the module sees it: a DataFrame with ``transform.matrix_columns`` names."""
    import pandas as pd

    from kfops.components.transform import matrix_columns

    return pd.DataFrame(features, columns=matrix_columns(spec), copy=False)


def module_scores(fitted: Any, features: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The fitted object's answer for a model matrix, as the model format gives it: the positive-class
    probability (binary), each class's probability in ``spec.labels`` order (multiclass), the value in the
    target's units (regression)."""
    from kfops.components.scoring import aligned_probabilities

    frame = frame_of(features, spec)
    if spec.task == TASK_REGRESSION:
        return np.asarray(fitted.predict(frame), dtype=np.float64).reshape(len(features))
    proba = np.asarray(fitted.predict_proba(frame), dtype=np.float64)
    width = len(spec.labels)
    classes = getattr(fitted, "classes_", None)
    if classes is None:  # no classes_: one column per class, in spec.labels' order
        classes = np.arange(width)
    if proba.ndim != 2 or proba.shape[0] != len(features) or proba.shape[1] != len(classes) or len(classes) > width:
        raise KfopsError(
            f"model module: predict_proba answered shape {proba.shape} for {len(features)} rows; expected "
            f"({len(features)}, {width}), one column per class of {spec.labels}"
        )
    return aligned_probabilities(proba, classes, spec.task, spec.output_width)


def fit_module(
    path: str | Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    spec: FeatureSpec,
    params: dict[str, Any],
    epoch_metrics=None,
):
    """Import the module, call its ``train``, check what it returns on the validation rows; a ``FitResult`` of
    one row (``epoch`` 1: the module trains as it likes), whose ``val_loss`` is the built-in families' loss.
    ``y_*`` are the matrices' targets (class indices, or values in the target's units)."""
    from kfops.components.scoring import task_loss_value
    from kfops.components.train.loop import FitResult

    path = Path(path)
    module = load_module(path)
    target = spec.target
    classifier = spec.task != TASK_REGRESSION
    train = frame_of(x_train, spec).assign(**{target: y_train.astype(np.int64) if classifier else y_train})
    validation = frame_of(x_val, spec).assign(**{target: y_val.astype(np.int64) if classifier else y_val})
    started = time.perf_counter()
    try:
        fitted = getattr(module, ENTRY_POINT)(train, validation, spec, dict(params))
    except Exception as err:
        log.error("model module %s: train() failed:\n%s", path, traceback.format_exc())
        raise KfopsError(f"model module {path}: train() raised {_where(err, path)}") from err
    seconds = time.perf_counter() - started
    needed = "predict" if spec.task == TASK_REGRESSION else "predict_proba"
    if not callable(getattr(fitted, needed, None)):
        raise KfopsError(
            f"model module {path}: train() returned {type(fitted).__name__}, which has no {needed}(frame); a "
            f"{spec.task} model answers with {needed}"
        )
    try:
        scores = module_scores(fitted, x_val, spec)
    except KfopsError as err:
        raise KfopsError(f"model module {path}: {str(err).removeprefix('model module: ')}") from err
    except Exception as err:
        log.error("model module %s: scoring the validation split failed:\n%s", path, traceback.format_exc())
        raise KfopsError(f"model module {path}: {needed} on the validation split raised {_where(err, path)}") from err
    if not np.isfinite(scores).all():
        raise KfopsError(f"model module {path}: {needed} answered NaN or infinite values on the validation split")
    standardised = (scores - spec.target_mean) / spec.target_std if spec.task == TASK_REGRESSION else scores
    truth = (y_val - spec.target_mean) / spec.target_std if spec.task == TASK_REGRESSION else y_val
    row: dict[str, float] = {"epoch": 1.0, "val_loss": task_loss_value(spec.task, truth, standardised)}
    if spec.task == TASK_MULTICLASS:
        row["val_accuracy"] = float((scores.argmax(axis=1) == y_val.astype(np.int64)).mean())
    elif spec.task == TASK_BINARY:
        row["val_accuracy"] = float(((scores >= 0.5) == (y_val >= 0.5)).mean())
    if epoch_metrics is not None:
        row.update(epoch_metrics(standardised))
    return FitResult(
        model=fitted,
        history=[row],
        best_epoch=1,
        best_val_loss=row["val_loss"],
        device="cpu",
        train_seconds=seconds,
        samples_per_second=len(x_train) / seconds if seconds > 0 else 0.0,
    ), requirements(module)
