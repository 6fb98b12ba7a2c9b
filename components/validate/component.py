"""KFP wrapper for validate: Great Expectations on the stored snapshot, right after the data is versioned."""

from typing import NamedTuple

from kfp.dsl import Artifact, Markdown, Output

from kfops.components.kfp_support import component_op


def validate_data(
    data_sha256: str,
    artifact_store: str,
    target: str,
    expectation_suite: str,
    suite_sha256: str,
    mode: str,
    max_missing: float,
    validation_result: Output[Artifact],
    report: Output[Markdown],
    model_name: str = "",
    mlflow_tracking_uri: str = "",
) -> NamedTuple("ValidateOutputs", [("success", bool), ("failed_expectations", int)]):
    """Validate the snapshot against the given suite, the fixed-cap suite (max_missing >= 0), the champion's
    stored suite or the one inferred from this data; stop the run on an error unless warn.

    Args:
        suite_sha256: sha256 of the expectation suite's file (from the version step), so its changes rerun the step.
        mode: fail stops the run when validation fails; warn reports and goes on.
        model_name: Registered model whose champion's stored suite the data is held to; empty: none.

    Returns:
        validation_result: The Great Expectations result (JSON).
        report: The result as Markdown, for the Kubeflow UI.
        success: Whether every expectation held.
        failed_expectations: Number of expectations that failed.
    """
    from collections import namedtuple

    from kfops.components.contracts import KfopsError
    from kfops.components.datasets import read_snapshot
    from kfops.components.tracking import new_local_store, set_tracking
    from kfops.components.validate.schema_suite import HOW_TO_GO_ON, validate_snapshot

    if mode not in ("fail", "warn"):
        raise KfopsError(f"validate: mode must be 'fail' or 'warn', got {mode!r}")
    # suite_sha256 is not read here: it is in the signature so the cache key changes when the suite does.
    frame, version = read_snapshot(artifact_store, data_sha256)
    # A first run in a new workspace has no champion: its validation needs neither MLflow nor the store.
    new_store = new_local_store(mlflow_tracking_uri) if model_name else ""
    if model_name and not new_store:
        set_tracking(mlflow_tracking_uri)
    summary, result = None, None
    try:
        summary, result = validate_snapshot(
            frame,
            f"{version.source} ({data_sha256[:12]})",
            target=target,
            store=artifact_store,
            data_sha256=data_sha256,
            suite_uri_given=expectation_suite,
            max_missing=max_missing,
            model_name=model_name,
            mode="warn",
            new_store=new_store,
        )
    finally:
        if summary is not None:
            import json

            with open(validation_result.path, "w", encoding="utf-8") as fh:
                json.dump(result, fh, indent=2, sort_keys=True)
            with open(report.path, "w", encoding="utf-8") as fh:
                fh.write(summary.to_markdown())
            validation_result.metadata.update(
                {
                    "success": summary.success,
                    "evaluated": summary.evaluated,
                    "failed": len(summary.errors),
                    "warnings": len(summary.warnings),
                    "suite": summary.suite_name,
                    "suite_origin": summary.suite_origin,
                    "sha256": data_sha256,
                }
            )
            print(summary.message())
    if not summary.success and mode != "warn":
        raise KfopsError("data validation failed\n" + summary.message() + "\n" + HOW_TO_GO_ON)
    outputs = namedtuple("ValidateOutputs", ["success", "failed_expectations"])
    return outputs(summary.success, len(summary.errors))


validate_data_op = component_op(validate_data)
