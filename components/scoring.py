"""The suite's metrics, and scoring a saved model on a labelled split: one place for evaluate (the test split),
train (per-epoch validation metrics) and gate (the champion re-scored on the same rows).

The model is loaded as the pyfunc that serving loads and fed raw rows, so scoring also proves the artifact works
end to end. Metrics are vectorised numpy under the names in ``contracts.METRIC_NAMES``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kfops.components.contracts import (
    PROBABILITY_PREFIX,
    TASK_METRIC_NAMES,
    TASK_MULTICLASS,
    TASK_REGRESSION,
    EvaluationResult,
    FeatureSpec,
    KfopsError,
)

ROC_CURVE_POINTS = 200


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at each distinct score threshold (descending), from (0, 0)."""
    order = np.argsort(-score, kind="mergesort")
    y, s = y_true[order], score[order]
    distinct = np.flatnonzero(np.diff(s)) if len(s) > 1 else np.array([], dtype=int)
    ends = np.r_[distinct, len(s) - 1]
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    pos, neg = tps[-1] if len(tps) else 0, fps[-1] if len(fps) else 0
    tpr = np.r_[0.0, tps / pos] if pos else np.zeros(len(ends) + 1)
    fpr = np.r_[0.0, fps / neg] if neg else np.zeros(len(ends) + 1)
    thresholds = np.r_[np.inf, s[ends]]
    return fpr, tpr, thresholds


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    if y_true.min() == y_true.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, score)
    return float(np.trapezoid(tpr, fpr))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as the step-wise sum sklearn calls average precision."""
    if y_true.sum() == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    y, s = y_true[order], score[order]
    distinct = np.flatnonzero(np.diff(s)) if len(s) > 1 else np.array([], dtype=int)
    ends = np.r_[distinct, len(s) - 1]
    tps = np.cumsum(y)[ends]
    precision = tps / (ends + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The suite's metrics (all but val_loss) for 0/1 labels and positive-class probabilities."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(probability, dtype=np.float64)
    pred = (p >= threshold).astype(np.int64)
    tp = int(np.sum((pred == 1) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    precision_pos, recall_pos = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    precision_neg, recall_neg = _safe_div(tn, tn + fn), _safe_div(tn, tn + fp)
    f1_pos = _safe_div(2 * precision_pos * recall_pos, precision_pos + recall_pos)
    f1_neg = _safe_div(2 * precision_neg * recall_neg, precision_neg + recall_neg)
    return {
        "accuracy": _safe_div(tp + tn, len(y)),
        "precision_macro": (precision_pos + precision_neg) / 2,
        "recall_macro": (recall_pos + recall_neg) / 2,
        "f1_macro": (f1_pos + f1_neg) / 2,
        "balanced_accuracy": (recall_pos + recall_neg) / 2,  # the same number as recall_macro, by its usual name
        "precision": precision_pos,
        "recall": recall_pos,
        "f1": f1_pos,
        "roc_auc": roc_auc(y, p),
        "pr_auc": average_precision(y, p),
    }


def class_metrics(y_true: np.ndarray, predicted: np.ndarray, k: int) -> dict[str, float]:
    """The multiclass metrics that need only the predicted class (class indices in [0, k)): accuracy, balanced
    accuracy, and precision/recall/F1 macro (classes alike, over the classes present) and weighted (by rows)."""
    y = np.asarray(y_true).astype(np.int64)
    pred = np.asarray(predicted).astype(np.int64)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted_rows = matrix.sum(axis=0).astype(np.float64)
    hits = np.diag(matrix).astype(np.float64)
    precision = np.divide(hits, predicted_rows, out=np.zeros(k), where=predicted_rows > 0)
    recall = np.divide(hits, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    weights = support / max(support.sum(), 1.0)
    return {
        "accuracy": _safe_div(hits.sum(), len(y)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
        "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "precision_weighted": float((precision * weights).sum()),
        "recall_weighted": float((recall * weights).sum()),
        "f1_weighted": float((f1 * weights).sum()),
    }


def multiclass_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The multiclass metrics for class indices and rows of class probabilities: ``class_metrics`` of the most
    probable class, ``log_loss``, and ``roc_auc_ovr``, the mean of each class's one-vs-rest ROC-AUC over the
    classes present with both outcomes (scikit-learn's macro OvR)."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    k = p.shape[1]
    support = np.bincount(y, minlength=k)
    aucs = [roc_auc((y == c).astype(np.int64), p[:, c]) for c in range(k) if 0 < support[c] < len(y)]
    return {
        **class_metrics(y, p.argmax(axis=1), k),
        "log_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0)))) if len(y) else math.nan,
        "roc_auc_ovr": float(np.mean(aucs)) if aucs else math.nan,
    }


def regression_metrics(y_true: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """The regression metrics in the target's units; ``r2`` is 1 - SSres/SStot (NaN for a constant target),
    ``smape`` the symmetric MAPE, 2|y - p| / (|y| + |p|) averaged, a row with both 0 counting 0."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prediction, dtype=np.float64)
    error = p - y
    total = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    scale = np.abs(y) + np.abs(p)
    return {
        "rmse": float(np.sqrt(np.mean(error**2))) if len(y) else math.nan,
        "mae": float(np.mean(np.abs(error))) if len(y) else math.nan,
        "r2": 1.0 - float(np.sum(error**2)) / total if total > 0 else math.nan,
        "median_ae": float(np.median(np.abs(error))) if len(y) else math.nan,
        "smape": float(np.mean(np.divide(2 * np.abs(error), scale, out=np.zeros_like(y), where=scale > 0)))
        if len(y)
        else math.nan,
    }


def task_metrics(task: str, y_true: np.ndarray, outputs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The task's metrics (all but val_loss) from the model's outputs: positive-class probabilities (binary),
    rows of class probabilities (multiclass), or predictions in the target's units (regression)."""
    if task == TASK_MULTICLASS:
        return multiclass_metrics(y_true, outputs)
    if task == TASK_REGRESSION:
        return regression_metrics(y_true, outputs)
    return binary_metrics(y_true, outputs, threshold)


def task_loss_value(task: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    """The training loss every family reports as ``val_loss``, from its answers: log loss (binary: ``scores`` the
    positive-class probability; multiclass: rows of class probabilities), squared error for a regression (on the
    standardised target, as the MLP learns it)."""
    y = np.asarray(y_true)
    if task == TASK_REGRESSION:
        return float(np.mean((np.asarray(scores, dtype=np.float64) - y) ** 2))
    if task == TASK_MULTICLASS:
        picked = np.asarray(scores)[np.arange(len(y)), y.astype(np.int64)]
    else:
        picked = np.where(y >= 0.5, scores, 1.0 - np.asarray(scores))
    return float(-np.mean(np.log(np.clip(picked, 1e-15, 1.0))))


def aligned_probabilities(proba: np.ndarray, classes, task: str, outputs: int) -> np.ndarray:
    """A fitted classifier's ``predict_proba`` as the model format answers: the positive class's column (binary),
    or one column per class in the feature spec's order (multiclass, ``outputs`` of them; a class the classifier
    never saw gets 0). ``classes`` are its ``classes_``: class indices (0 .. k-1) as the matrices hold them."""
    proba = np.asarray(proba, dtype=np.float64)
    columns = np.asarray(classes).astype(np.int64)
    full = np.zeros((len(proba), outputs if task == TASK_MULTICLASS else 2), dtype=np.float64)
    full[:, columns] = proba
    return full if task == TASK_MULTICLASS else full[:, 1]


def confusion(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> list[list[int]]:
    """Rows actual [negative, positive], columns predicted [negative, positive]."""
    y = np.asarray(y_true).astype(np.int64)
    pred = (np.asarray(probability) >= threshold).astype(np.int64)
    matrix = np.zeros((2, 2), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    return matrix.tolist()


def downsample_curve(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, points: int = ROC_CURVE_POINTS
) -> tuple[list[float], list[float], list[float]]:
    """At most ``points`` points of a ROC curve (the Kubeflow UI draws every point it gets)."""
    if len(fpr) > points:
        keep = np.unique(np.r_[np.linspace(0, len(fpr) - 1, points).round().astype(int)])
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    finite = np.where(np.isfinite(thresholds), thresholds, 1.0)
    return fpr.tolist(), tpr.tolist(), finite.tolist()


def evaluate_model(model_dir: str, test_path: str, val_loss: float = float("nan")) -> tuple[EvaluationResult, dict]:
    """Score the raw test split with the saved pyfunc model; return metrics and the ROC curve.

    Metrics use the model's own decision threshold, so they describe the predictions serving will make.
    """

    import pandas as pd

    from kfops.components.model_store import load_pyfunc
    from kfops.components.transform import encode_labels, model_input_frame

    model = load_pyfunc(model_dir)
    spec = FeatureSpec.load(Path(model_dir, "artifacts", "feature_spec.json"))
    threshold = float(getattr(model.unwrap_python_model(), "threshold", 0.5))  # the model format's, any family
    test = pd.read_parquet(test_path)
    if spec.target not in test.columns:
        raise KfopsError(f"evaluate: target '{spec.target}' is not a column of {test_path}")
    y = encode_labels(spec, test[spec.target], source=test_path)
    scored = model.predict(model_input_frame(spec, test, source=test_path))
    if spec.task == TASK_MULTICLASS:
        outputs = scored[[PROBABILITY_PREFIX + label for label in spec.labels]].to_numpy(dtype=np.float64)
    elif spec.task == TASK_REGRESSION:
        outputs = scored["prediction"].to_numpy(dtype=np.float64)
    else:
        outputs = scored["probability"].to_numpy(dtype=np.float64)
    metrics = task_metrics(spec.task, y, outputs, threshold)
    metrics["val_loss"] = float(val_loss)
    missing = set(TASK_METRIC_NAMES[spec.task]) - set(metrics)
    if missing:
        raise AssertionError(f"evaluate produced no {sorted(missing)}")
    if spec.task == TASK_MULTICLASS:
        k = len(spec.labels)
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (y.astype(np.int64), outputs.argmax(axis=1)), 1)
        result = EvaluationResult(metrics, matrix.tolist(), list(spec.labels), threshold=0.0, rows=len(test))
        return result, {}
    if spec.task == TASK_REGRESSION:
        result = EvaluationResult(metrics, [], [], threshold=0.0, rows=len(test))
        # a bounded sample of the test rows for the predicted-vs-actual picture
        keep = np.random.default_rng(0).permutation(len(y))[:PLOT_POINTS]
        return result, {"actual": y[keep].astype(float).tolist(), "predicted": outputs[keep].tolist()}
    result = EvaluationResult(
        metrics=metrics,
        confusion_matrix=confusion(y, outputs, threshold),
        labels=[spec.negative_class, spec.positive_class],
        threshold=threshold,
        rows=len(test),
    )
    fpr, tpr, thresholds = roc_curve(y, outputs)
    curve = dict(zip(("fpr", "tpr", "thresholds"), downsample_curve(fpr, tpr, thresholds), strict=True))
    return result, curve


def naive_baseline_metrics(model_dir: str, test_path: str) -> dict[str, float]:
    """The prior baseline's metrics on the test rows. Binary: every row gets the training positive rate as its
    probability (ROC-AUC 0.5) and the majority class as its prediction (balanced accuracy 0.5). Multiclass: the
    training class shares as every row's probabilities (balanced accuracy 1/k). Regression: the training mean
    as every prediction (R² about 0). A model is worth deploying only by its margin over this."""
    import pandas as pd

    from kfops.components.transform import encode_labels

    spec = FeatureSpec.load(Path(model_dir, "artifacts", "feature_spec.json"))
    test = pd.read_parquet(test_path, columns=[spec.target])
    y = encode_labels(spec, test[spec.target], source=test_path)
    if spec.task == TASK_MULTICLASS:
        shares = np.asarray(spec.class_shares or [1.0 / len(spec.labels)] * len(spec.labels), dtype=np.float64)
        metrics = multiclass_metrics(y, np.tile(shares, (len(y), 1)))
        counts = np.bincount(y.astype(np.int64), minlength=len(shares))
        metrics[ROWS_KEY] = float(len(y))
        metrics[INVERSE_CLASS_ROWS_KEY] = float(sum(1.0 / c for c in counts if c > 0))
        metrics[CLASSES_KEY] = float(np.count_nonzero(counts))
        return metrics
    if spec.task == TASK_REGRESSION:
        metrics = regression_metrics(y, np.full(len(y), spec.target_mean))
        metrics[ROWS_KEY] = float(len(y))
        return metrics
    metrics = binary_metrics(y, np.full(len(y), spec.positive_rate), threshold=0.5)
    # The class counts travel with the baseline: they size the noise in the candidate's lift over it.
    metrics[POSITIVES_KEY], metrics[NEGATIVES_KEY] = float(y.sum()), float(len(y) - y.sum())
    return metrics


POSITIVES_KEY, NEGATIVES_KEY = "test_positives", "test_negatives"
ROWS_KEY = "test_rows"
CLASSES_KEY = "test_classes"  # classes present in the test rows
INVERSE_CLASS_ROWS_KEY = "test_inverse_class_rows"  # sum of 1 / (test rows of each class), for multiclass noise
PLOT_POINTS = 2_000


def standard_error(metric: str, metrics: dict[str, float], counts: dict[str, float]) -> float | None:
    """The sampling standard error of ``metric`` on the test rows ``counts`` describes (the naive baseline's
    ``test_*`` keys): Hanley and McNeil's (1982) for a binary ROC-AUC, the binomial one of the class recalls for
    balanced accuracy (binary: the two recalls; multiclass: ``(1/k) sqrt(b(1-b) sum 1/n_c)`` with every recall
    taken at the balanced accuracy ``b``), ``(1 - R²) sqrt(2/n)`` for R² (the residual-to-total ratio of two sums
    of squares, each with relative error about ``sqrt(2/n)``), None for a metric without a closed form here. A
    lift over the naive baseline smaller than this is noise: on 5 positives a model of shuffled labels reaches
    ROC-AUC 0.63 by chance (error about 0.14)."""
    rows = int(counts.get(ROWS_KEY, 0))
    if metric == "r2" and "r2" in metrics and rows > 1:
        return (1.0 - min(float(metrics["r2"]), 1.0)) * math.sqrt(2.0 / rows)
    inverse = float(counts.get(INVERSE_CLASS_ROWS_KEY, 0.0))
    if metric == "balanced_accuracy" and inverse > 0 and counts.get(CLASSES_KEY):  # multiclass
        b = min(max(float(metrics["balanced_accuracy"]), 0.0), 1.0)
        return math.sqrt(b * (1 - b) * inverse) / float(counts[CLASSES_KEY])
    positives = int(counts.get(POSITIVES_KEY, 0))
    negatives = int(counts.get(NEGATIVES_KEY, 0))
    if positives < 1 or negatives < 1:
        return None
    if metric == "roc_auc" and "roc_auc" in metrics:
        a = min(max(float(metrics["roc_auc"]), 1e-6), 1 - 1e-6)
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        var = (a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)) / (positives * negatives)
        return math.sqrt(max(var, 0.0))
    if metric == "balanced_accuracy" and "balanced_accuracy" in metrics and "recall" in metrics:
        tpr = float(metrics["recall"])
        tnr = min(max(2 * float(metrics["balanced_accuracy"]) - tpr, 0.0), 1.0)
        return 0.5 * math.sqrt(tpr * (1 - tpr) / positives + tnr * (1 - tnr) / negatives)
    return None


def choose_threshold(y_true: np.ndarray, probability: np.ndarray, objective: str) -> float:
    """The decision threshold that best meets ``objective`` on labelled rows (the validation split): ``f1`` (of
    the positive class), ``youden`` (TPR - FPR), ``precision>=P`` (the most recall with that precision) or
    ``recall>=R`` (the most precision with that recall). Between two neighbouring scores the midpoint is taken,
    so rows scored alike fall on the same side. KfopsError when the rows cannot meet the objective."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(probability, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise KfopsError(
            f"threshold: the validation rows hold one class only; cannot choose a threshold for {objective}"
        )
    order = np.argsort(-p, kind="mergesort")
    s, ys = p[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of each run of equal scores
    tp = np.cumsum(ys)[ends].astype(np.float64)
    fp = (ends + 1) - tp
    recall = tp / positives
    precision = tp / (tp + fp)
    if objective == "f1":
        score = 2 * tp / (2 * tp + fp + (positives - tp))
    elif objective == "youden":
        score = recall - fp / (len(y) - positives)
    else:
        name, bound = objective.split(">=")
        wanted = (precision if name == "precision" else recall) >= float(bound) - 1e-12
        if not wanted.any():
            raise KfopsError(
                f"threshold: no threshold reaches {name} {float(bound):g} on the validation rows (best "
                f"{(precision if name == 'precision' else recall).max():.3f}); lower it or use f1"
            )
        score = np.where(wanted, recall if name == "precision" else precision, -np.inf)
    best = int(np.argmax(score))  # the first maximum: the highest such threshold
    upper = s[ends[best]]
    lower = s[ends[best + 1]] if best + 1 < len(ends) else upper
    return float(np.clip((upper + lower) / 2, 1e-6, 1 - 1e-6))
