"""KFP wrapper for the gate: a Blessing artifact, a Markdown verdict for the Kubeflow UI, and `blessed` to
branch on."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from kfops.components.kfp_support import component_op


def gate(
    evaluation: Input[Artifact],
    model: Input[Model],
    test: Input[Dataset],
    thresholds: str,
    model_name: str,
    mlflow_tracking_uri: str,
    blessing: Output[Artifact],
    report: Output[Markdown],
) -> NamedTuple("GateOutputs", [("blessed", bool), ("message", str)]):
    """Judge the candidate against value thresholds and, for change thresholds, the current champion.

    Args:
        model: The candidate model (the train step's output).

    Returns:
        blessing: The verdict (Blessing JSON).
        report: The verdict as Markdown, for the Kubeflow UI.
        blessed: Whether the model passed every check.
        message: The verdict in words.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    import mlflow

    from kfops.components.contracts import (
        TAG_BLESSED,
        TAG_BLESSING_MESSAGE,
        TAG_GATE_THRESHOLDS,
        TAG_NAIVE_PREFIX,
        EvaluationResult,
    )
    from kfops.components.gate.logic import blessing_markdown, run_gate, thresholds_from_text, write_blessing
    from kfops.components.tracking import set_tracking

    set_tracking(mlflow_tracking_uri)
    result = EvaluationResult.from_json(Path(evaluation.path).read_text(encoding="utf-8"))
    run_id = model.metadata.get("run_id", "")
    verdict = run_gate(
        result.metrics,
        test.path,
        thresholds_from_text(thresholds),
        model_name,
        candidate_id=f"run {run_id}",
        model_dir=model.path,
    )
    write_blessing(verdict, blessing.path)
    with open(report.path, "w", encoding="utf-8") as fh:
        fh.write(blessing_markdown(verdict))
    blessing.metadata.update(
        {
            "blessed": verdict.blessed,
            "baseline_version": verdict.baseline_version,
            "message": verdict.message[:500],
            "run_id": run_id,
        }
    )
    if run_id:
        client = mlflow.MlflowClient()
        client.set_tag(run_id, TAG_BLESSED, str(verdict.blessed).lower())
        client.set_tag(run_id, TAG_BLESSING_MESSAGE, verdict.message[:5000])
        client.set_tag(run_id, TAG_GATE_THRESHOLDS, json.dumps(verdict.thresholds, sort_keys=True)[:5000])
        for metric, value in verdict.naive_baseline.items():
            client.set_tag(run_id, f"{TAG_NAIVE_PREFIX}{metric}", f"{value:.6g}")
    print(verdict.message)
    outputs = namedtuple("GateOutputs", ["blessed", "message"])
    return outputs(verdict.blessed, verdict.message)


gate_op = component_op(gate)
