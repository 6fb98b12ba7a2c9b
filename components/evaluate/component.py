"""KFP wrapper for evaluate: Metrics and ClassificationMetrics for the Kubeflow UI, files for MLflow."""

from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from kfops.components.kfp_support import component_op


def evaluate(
    model: Input[Model],
    test: Input[Dataset],
    mlflow_tracking_uri: str,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    evaluation: Output[Artifact],
    confusion_matrix_png: Output[Artifact],
):
    """Score the raw test split with the model artifact; log metrics to KFP and to the model's MLflow run.

    Args:
        model: The trained model (the train step's output).

    Returns:
        metrics: Test metrics for the Kubeflow UI.
        classification_metrics: Confusion matrix and ROC curve for the Kubeflow UI (classifiers).
        evaluation: The evaluation result as JSON (what the gate and the registry read).
        confusion_matrix_png: The confusion matrix as a PNG image.
    """
    import json
    import math

    from kfops.components.evaluate.logic import log_to_mlflow, plot_evaluation
    from kfops.components.scoring import evaluate_model

    result, curve = evaluate_model(model.path, test.path, val_loss=float(model.metadata.get("val_loss", "nan")))
    for name, value in result.metrics.items():
        if math.isfinite(value):
            metrics.log_metric(name, round(float(value), 6))
    # Classifiers: the confusion matrix over every class (and a binary one's ROC curve) for the Kubeflow UI; a
    # regression's picture is the predicted-vs-actual and residual PNG below.
    if result.labels:
        classification_metrics.log_confusion_matrix(result.labels, result.confusion_matrix)
    if "fpr" in curve:
        classification_metrics.log_roc_curve(curve["fpr"], curve["tpr"], curve["thresholds"])
    with open(evaluation.path, "w", encoding="utf-8") as fh:
        fh.write(result.to_json())
    # Metrics artifacts live in metadata; a file behind each also lets kfp.local's cache find them.
    for artifact in (metrics, classification_metrics):
        with open(artifact.path, "w", encoding="utf-8") as fh:
            json.dump(artifact.metadata, fh, indent=2, sort_keys=True)
    evaluation.metadata.update(
        {
            "rows": result.rows,
            "threshold": result.threshold,
            **{k: round(v, 6) for k, v in result.metrics.items() if math.isfinite(v)},
        }
    )
    plot_evaluation(result, curve, confusion_matrix_png.path)
    if model.metadata.get("run_id"):
        log_to_mlflow(model.metadata["run_id"], result, confusion_matrix_png.path, mlflow_tracking_uri)
    print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))


evaluate_op = component_op(evaluate)
