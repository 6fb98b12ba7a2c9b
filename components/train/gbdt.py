"""The gradient-boosted trees family: scikit-learn's HistGradientBoosting on the same feature matrices as the MLP.

``fit_gbdt`` answers like ``loop.fit`` (a ``FitResult`` whose rows are boosting iterations, not epochs), so the
training run around it (MLflow, TensorBoard, the decision threshold, the model format) is the family's choice of
one function, not a second pipeline. Trees take the feature spec's matrix as it is: missing numerics arrive imputed
with an indicator column, categoricals one-hot; boosting stops on the validation split's loss, the same split the
MLP's early stopping watches. A regression is fitted on the standardised target, as the MLP is, so the model
format's conversion back to the target's units is one for both.
"""

from __future__ import annotations

import math
import time

import numpy as np

from kfops.components.contracts import TASK_BINARY, TASK_MULTICLASS, TASK_REGRESSION, KfopsError, TrainConfig
from kfops.components.scoring import aligned_probabilities, task_loss_value
from kfops.components.train.loop import FitResult, balances_classes


def build_estimator(task: str, config: TrainConfig, y_train: np.ndarray, outputs: int):
    """The unfitted scikit-learn estimator for ``task`` with the config's gbdt parameters and class weighting."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    params = config.gbdt()
    common = dict(
        learning_rate=params.learning_rate,
        max_iter=int(params.max_iter),
        max_leaf_nodes=int(params.max_leaf_nodes),
        min_samples_leaf=int(params.min_samples_leaf),
        l2_regularization=params.l2_regularization,
        max_features=params.max_features,
        early_stopping=True,
        scoring="loss",
        n_iter_no_change=int(params.n_iter_no_change),
        validation_fraction=None,  # our validation split, passed to fit
        random_state=int(config.seed),
    )
    if task == TASK_REGRESSION:
        return HistGradientBoostingRegressor(loss="squared_error", **common)
    weighting = "balanced" if balances_classes(task, y_train, config, outputs) else None
    return HistGradientBoostingClassifier(loss="log_loss", class_weight=weighting, **common)


def class_scores(estimator, features: np.ndarray, task: str, outputs: int) -> np.ndarray:
    """The fitted estimator's answer as the model format gives it: the positive-class probability (binary), every
    class's probability in the feature spec's class order (multiclass, rows of ``outputs``; a class the training
    rows lacked gets 0), the standardised prediction (regression)."""
    if task == TASK_REGRESSION:
        return estimator.predict(features).astype(np.float64)
    return aligned_probabilities(estimator.predict_proba(features), estimator.classes_, task, outputs)


def fit_gbdt(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
    *,
    task: str = TASK_BINARY,
    outputs: int = 1,
    epoch_metrics=None,
) -> FitResult:
    """Boost on the training split, stopping on the validation split; the history has one row per iteration
    (``epoch``, ``train_loss``, ``val_loss`` as scikit-learn's loss), and the last row adds the final model's
    ``val_accuracy`` and ``epoch_metrics`` of its validation answers."""
    estimator = build_estimator(task, config, y_train, outputs)
    labels = y_train if task == TASK_REGRESSION else y_train.astype(np.int64)
    val_labels = y_val if task == TASK_REGRESSION else y_val.astype(np.int64)
    started = time.perf_counter()
    try:
        estimator.fit(x_train, labels, X_val=x_val, y_val=val_labels)
    except ValueError as err:
        raise KfopsError(f"train: gbdt could not fit the training split: {err}") from err
    seconds = time.perf_counter() - started
    iterations = int(estimator.n_iter_)
    # scikit-learn's "loss" scores are negated losses, the first one before any tree
    train_losses = -np.asarray(estimator.train_score_, dtype=np.float64)[1:]
    val_losses = -np.asarray(estimator.validation_score_, dtype=np.float64)[1:]
    history = [
        {"epoch": float(i + 1), "train_loss": float(t), "val_loss": float(v)}
        for i, (t, v) in enumerate(zip(train_losses, val_losses, strict=True))
    ]
    scores = class_scores(estimator, x_val, task, outputs)
    final = task_loss_value(task, y_val, scores)
    if not math.isfinite(final):
        raise KfopsError(f"train: gbdt's validation loss is {final}; lower model_params.learning_rate")
    last = history[-1] if history else {"epoch": 1.0}
    last["val_loss"] = final
    if task == TASK_MULTICLASS:
        last["val_accuracy"] = float((scores.argmax(axis=1) == y_val.astype(np.int64)).mean())
    elif task == TASK_BINARY:
        last["val_accuracy"] = float(((scores >= 0.5) == (y_val >= 0.5)).mean())
    if epoch_metrics is not None:
        last.update(epoch_metrics(scores))
    return FitResult(
        model=estimator,
        history=history or [last],
        best_epoch=iterations,
        best_val_loss=final,
        stopped_early=iterations < int(config.gbdt().max_iter),
        device="cpu",
        train_seconds=seconds,
        samples_per_second=len(x_train) * iterations / seconds if seconds > 0 else 0.0,
    )
