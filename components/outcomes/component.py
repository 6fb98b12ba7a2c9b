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
) -> NamedTuple("PerformanceOutputs", [("joined", int), ("worst_accuracy", float)]):
    """Accuracy, precision, recall and F1 per model version and variant over predictions made in [since, until)
    (``24h``, ``7d`` or ISO 8601; ``""`` for open ends). ``outcomes_uri`` ``""`` reads the payload-log sink.
    ``join_on``: ``request_id``, or a business id the payload log keeps (``transaction_id``) the outcomes carry.
    ``worst_accuracy`` is the lowest group's accuracy, -1 when no prediction has an outcome yet (for dsl.If)."""
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
    )
    with open(report.path, "w", encoding="utf-8") as fh:
        fh.write(result.to_json())
    report.metadata.update(
        {"predictions": result.predictions, "outcomes": result.outcomes, "positive_class": result.positive_class}
    )
    for group in result.groups:
        prefix = f"{group.model}-v{group.model_version}-{group.variant}"
        metrics.log_metric(f"{prefix}-joined", group.joined)
        for name in ("accuracy", "precision", "recall", "f1"):
            value = getattr(group, name)
            if value is not None:
                metrics.log_metric(f"{prefix}-{name}", round(value, 6))
    with open(metrics.path, "w", encoding="utf-8") as fh:
        json.dump(metrics.metadata, fh, indent=2, sort_keys=True)
    accuracies = [g.accuracy for g in result.groups if g.accuracy is not None]
    for group in result.groups:
        print(
            f"{group.model} v{group.model_version} {group.variant}: {group.joined} of {group.predictions} joined, "
            f"accuracy {group.accuracy}, precision {group.precision}, recall {group.recall}, f1 {group.f1}"
        )
    outputs = namedtuple("PerformanceOutputs", ["joined", "worst_accuracy"])
    return outputs(sum(g.joined for g in result.groups), min(accuracies) if accuracies else -1.0)


outcome_performance_op = component_op(outcome_performance)
