"""KFP wrappers for the monitor: drift JSON, an HTML report and a Markdown summary for the Kubeflow UI,
and ``drift_detected`` / ``drift_share`` to branch on (``dsl.If``) in a continuous-training pipeline."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output

from kfops.components.kfp_support import component_op


def monitor_drift(
    current_uri: str,
    reference_uri: str,
    model: str,
    artifact_store: str,
    mlflow_tracking_uri: str,
    date_from: str,
    date_to: str,
    model_version: str,
    stattest: str,
    threshold: float,
    drift_share: float,
    min_rows: int,
    features: list,
    ignore: list,
    sample_rows: int,
    pushgateway: str,
    webhook: str,
    drift: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    report_format: str = "kfops",
) -> NamedTuple("MonitorOutputs", [("drift_detected", bool), ("drift_share", float), ("verdict", str)]):
    """Drift of a window (payload-log folder or data file, local or s3://) against ``reference_uri`` or the
    training data of ``model`` (NAME@ALIAS). ``threshold`` < 0 and empty ``features`` mean the defaults.

    Args:
        reference_uri: The reference data (file, local or s3://); empty: the training data of model.
        model: The model whose training data is the reference: NAME@ALIAS (e.g. fraud-detector@champion).
        model_version: Only the payload records of this model version; empty: all.
        threshold: Per-column drift threshold of the test; below 0: the test's default.
        features: Columns to compare; empty: the model's features.
        ignore: Columns never compared.
        sample_rows: Rows of each side in Evidently's report (report_format evidently): a stratified sample.
        report_format: kfops (the report drawn from the statistics on all rows) or evidently (Evidently's
            DataDriftPreset on a sample of sample_rows rows per side).

    Returns:
        drift: The drift result as JSON.
        report: The HTML report (kfops's own, or Evidently's with report_format evidently).
        summary: The result as Markdown, for the Kubeflow UI.
        drift_detected: Whether the dataset drifted.
        drift_share: Share of the compared columns that drifted.
        verdict: drift, no_drift, or insufficient_data (too few rows).
    """
    from collections import namedtuple

    from kfops.components.monitor.logic import monitor_to_paths

    result = monitor_to_paths(
        drift.path,
        report.path,
        summary.path,
        current_uri,
        reference_uri,
        stattest=stattest,
        threshold=threshold,
        drift_share=drift_share,
        min_rows=min_rows,
        features=features,
        ignore=ignore,
        model=model,
        tracking_uri=mlflow_tracking_uri,
        artifact_store=artifact_store,
        date_from=date_from,
        date_to=date_to,
        model_version=model_version,
        sample_rows=sample_rows,
        report=report_format,
        pushgateway=pushgateway,
        webhook=webhook,
    )
    drift.metadata.update(
        {
            "verdict": result.verdict,
            "drift_share": result.drift_share,
            "drifted": ", ".join(result.drifted),
            "tested_features": result.tested_features,
        }
    )
    print(result.headline())
    outputs = namedtuple("MonitorOutputs", ["drift_detected", "drift_share", "verdict"])
    return outputs(result.dataset_drift, float(result.drift_share), result.verdict)


def monitor_drift_dataset(
    reference: Input[Dataset],
    current_uri: str,
    date_from: str,
    date_to: str,
    model_version: str,
    stattest: str,
    threshold: float,
    drift_share: float,
    min_rows: int,
    features: list,
    ignore: list,
    sample_rows: int,
    pushgateway: str,
    webhook: str,
    drift: Output[Artifact],
    report: Output[HTML],
    summary: Output[Markdown],
    report_format: str = "kfops",
) -> NamedTuple("MonitorOutputs", [("drift_detected", bool), ("drift_share", float), ("verdict", str)]):
    """Drift of a window against a Dataset artifact of the pipeline (e.g. split_data's ``train``).

    Args:
        reference: The reference data (e.g. the training split).
        model_version: Only the payload records of this model version; empty: all.
        threshold: Per-column drift threshold of the test; below 0: the test's default.
        features: Columns to compare; empty: the model's features.
        ignore: Columns never compared.
        sample_rows: Rows of each side in Evidently's report (report_format evidently): a stratified sample.
        report_format: kfops (the report drawn from the statistics on all rows) or evidently (Evidently's
            DataDriftPreset on a sample of sample_rows rows per side).

    Returns:
        drift: The drift result as JSON.
        report: The HTML report (kfops's own, or Evidently's with report_format evidently).
        summary: The result as Markdown, for the Kubeflow UI.
        drift_detected: Whether the dataset drifted.
        drift_share: Share of the compared columns that drifted.
        verdict: drift, no_drift, or insufficient_data (too few rows).
    """
    from kfops.components.monitor.component import monitor_drift

    return monitor_drift(
        current_uri=current_uri,
        reference_uri=reference.path,
        model="",
        artifact_store="",
        mlflow_tracking_uri="",
        date_from=date_from,
        date_to=date_to,
        model_version=model_version,
        stattest=stattest,
        threshold=threshold,
        drift_share=drift_share,
        min_rows=min_rows,
        features=features,
        ignore=ignore,
        sample_rows=sample_rows,
        pushgateway=pushgateway,
        webhook=webhook,
        drift=drift,
        report=report,
        summary=summary,
        report_format=report_format,
    )


monitor_drift_op = component_op(monitor_drift)
monitor_drift_dataset_op = component_op(monitor_drift_dataset)
