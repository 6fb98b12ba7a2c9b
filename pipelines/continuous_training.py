"""The continuous-training pipeline: monitor the live window for drift; on drift, retrain, gate and roll out.

``monitor-drift`` compares ``current_uri`` (the payload logs, or any dataset) with the training data of
``monitored_model`` (``NAME@champion``); when the dataset drifted, the training pipeline runs on ``data_uri`` (the
fresh data): versioned, validated, trained, evaluated, gated against the champion re-scored on the new test
split, registered, and, when blessed, deployed as a canary and rolled out (``deploy=True``, the default here) or
promoted directly (``deploy=False``). No drift, nothing runs after the monitor.

Schedule it as a recurring run (``kfops schedule``); for retraining on a calendar whatever the drift, schedule
the training pipeline itself. ``kfops retrain --if-drift`` runs the same loop once on a laptop.
"""

from kfp import dsl

from kfops.components.kfp_support import DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE, component_op
from kfops.components.monitor.component import monitor_drift
from kfops.pipelines.parameters import DEFAULT_ARTIFACT_STORE, DEFAULT_TARGET, described
from kfops.pipelines.steps import inputs_from, step
from kfops.pipelines.training import DEFAULT_MODEL_NAME, build_training_pipeline

PIPELINE_NAME = "kfops-continuous-training"


def build_continuous_training_pipeline(
    image: str = DEFAULT_IMAGE, cuda_image: str = DEFAULT_CUDA_IMAGE, accelerator: str = "cpu"
):
    """The continuous-training pipeline function for these images (``accelerator`` as in the training pipeline)."""
    monitor_op = component_op(monitor_drift, image)
    training = build_training_pipeline(image, cuda_image, accelerator=accelerator)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Monitor the serving model's live data for drift against its training data; on drift, "
        "retrain on fresh data, gate the new model against the champion, and roll it out as a canary.",
    )
    @described
    def continuous_training_pipeline(
        current_uri: str,
        data_uri: str,
        monitored_model: str = f"{DEFAULT_MODEL_NAME}@champion",
        model_name: str = DEFAULT_MODEL_NAME,
        target: str = DEFAULT_TARGET,
        drop_columns: list = [],  # noqa: B006 - KFP pipeline defaults are declarations, never mutated
        time_column: str = "",
        date_from: str = "",
        date_to: str = "",
        stattest: str = "auto",
        drift_share: float = 0.5,
        min_rows: int = 30,
        report_format: str = "kfops",
        pushgateway: str = "",
        webhook: str = "",
        deploy: bool = True,
        namespace: str = "",
        prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090",
        artifact_store: str = DEFAULT_ARTIFACT_STORE,
        mlflow_tracking_uri: str = "",
    ):
        """Monitor for drift; on drift, retrain, gate and roll out.

        Args:
            monitored_model: The serving model whose training data the live data is compared with: NAME@ALIAS.
            data_uri: The fresh data to retrain on when the live data drifted (CSV or Parquet, path or s3://).
            deploy: Serve a blessed retrained model on KServe as a canary (else promote it directly).
            report_format: The drift report: kfops (drawn from the statistics on all rows) or evidently
                (Evidently's DataDriftPreset on a 20,000-row sample per side).
        """
        params = dict(locals())  # each step takes its inputs from these by name (steps.inputs_from)
        # Live data changes between runs: never a cached verdict.
        monitored = step(
            monitor_op,
            "monitor drift",
            cache=False,
            **inputs_from(
                monitor_op,
                params,
                reference_uri="",
                model=monitored_model,
                model_version="",
                threshold=-1.0,
                features=[],
                ignore=[],
                sample_rows=20_000,
            ),
        )
        with dsl.If(monitored.outputs["drift_detected"] == True, name="drifted"):  # noqa: E712
            training(**inputs_from(training, params)).set_display_name("retrain")

    return continuous_training_pipeline


continuous_training_pipeline = build_continuous_training_pipeline()
