"""KFP wrapper for live performance: the payload log joined to logged outcomes, scored per version and variant."""

from typing import NamedTuple

from kfp.dsl import Artifact, Metrics, Output

from kfops.components.kfp_support import component_op


def outcome_performance(
    payload_log_uri: str,
    outcomes_uri: str,
    since: str,
    until: str,
    positive_class: str,
    model: str,
    report: Output[Artifact],
    metrics: Output[Metrics],
    join_on: str = "request_id",
    task: str = "auto",
) -> NamedTuple(
    "PerformanceOutputs", [("joined", int), ("task", str), ("worst_accuracy", float), ("worst_rmse", float)]
):
    """Live metrics per model version and variant, in the task's terms, over predictions made in [since, until)
    (``24h``, ``7d`` or ISO 8601; ``""`` for open ends). ``outcomes_uri`` ``""`` reads the payload-log sink.
    ``join_on``: ``request_id``, or a business id the payload log keeps (``transaction_id``) the outcomes carry.
    ``task``: ``auto`` reads it from the payload log. For ``dsl.If``: ``worst_accuracy`` is the lowest group's
    accuracy (a classifier's), ``worst_rmse`` the highest group's RMSE (a regression's); -1 when there is none.

    Args:
        payload_log_uri: The serving payload log (folder, local or s3://).
        since: Only predictions made at or after this time (24h, 7d or ISO 8601); empty: from the start.
        until: Only predictions made before this time (24h, 7d or ISO 8601); empty: to the end.
        model: Only predictions of this model (the payload log's model= partition); empty: every model.
        outcomes_uri: The outcomes (file or folder, local or s3://); empty: read from payload_log_uri (one sink).
        join_on: request_id, or a business id the payload log keeps (e.g. transaction_id) that the outcomes carry.
        task: auto (read from the payload log), binary, multiclass or regression.

    Returns:
        report: The metrics per model version and variant, as JSON.
        metrics: The metrics for the Kubeflow UI.
        joined: Predictions joined to an outcome.
        task: The task the metrics are in.
        worst_accuracy: Lowest accuracy over the groups (a classifier's); -1 when there is none.
        worst_rmse: Highest RMSE over the groups (a regression's); -1 when there is none.
    """
    import json
    from collections import namedtuple

    from kfops.components.outcomes.logic import live_performance

    result = live_performance(
        payload_log_uri,
        outcomes_uri,
        since=since or None,
        until=until or None,
        positive_class=positive_class,
        model=model,
        join_on=join_on or "request_id",
        task=task or "auto",
    )
    with open(report.path, "w", encoding="utf-8") as fh:
        fh.write(result.to_json())
    report.metadata.update(
        {
            "predictions": result.predictions,
            "outcomes": result.outcomes,
            "task": result.task,
            "positive_class": result.positive_class or "",
        }
    )
    for group in result.groups:
        prefix = f"{group.model}-v{group.model_version}-{group.variant}"
        metrics.log_metric(f"{prefix}-joined", group.joined)
        for name in result.metric_names:
            value = group.values.get(name)
            if value is not None:
                metrics.log_metric(f"{prefix}-{name}", round(value, 6))
    with open(metrics.path, "w", encoding="utf-8") as fh:
        json.dump(metrics.metadata, fh, indent=2, sort_keys=True)
    for group in result.groups:
        shown = ", ".join(f"{name} {group.values.get(name)}" for name in result.metric_names)
        joined = f"{group.joined} of {group.predictions} joined"
        print(f"{group.model} v{group.model_version} {group.variant}: {joined}, {shown}")
    accuracies = [v for g in result.groups if (v := g.values.get("accuracy")) is not None]
    rmses = [v for g in result.groups if (v := g.values.get("rmse")) is not None]
    outputs = namedtuple("PerformanceOutputs", ["joined", "task", "worst_accuracy", "worst_rmse"])
    return outputs(
        sum(g.joined for g in result.groups),
        result.task,
        min(accuracies) if accuracies else -1.0,
        max(rmses) if rmses else -1.0,
    )


outcome_performance_op = component_op(outcome_performance)
