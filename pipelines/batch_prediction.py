"""The batch prediction pipeline: plan shards -> score them in parallel (ParallelFor) -> summarize.

``plan`` resolves the model reference once (``fraud-detector@champion`` becomes ``models:/fraud-detector/<v>``)
and every shard scores with that pinned version, so an alias moved mid-job changes nothing. Shards run at most
``parallelism`` at a time (a compile-time setting in KFP; kfp.local runs 2 at once whatever it says). Every step
talks to state outside KFP (the registry, the input and output folders), so none is cached; a shard is retried
on failure, and its output names make a retry overwrite, never duplicate.

``build_batch_prediction_pipeline`` returns the pipeline function for a given image and parallelism, for
``kfops compile`` and ``kfops predict --kfp-local``; ``batch_prediction_pipeline`` uses the defaults.
"""

from typing import NamedTuple

from kfp import dsl

from kfops.components.batch_predict.component import plan_batch, score_batch_shard, summarize_batch
from kfops.components.batch_predict.records import DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_ROWS
from kfops.components.kfp_support import DEFAULT_IMAGE, component_op
from kfops.pipelines.parameters import described
from kfops.pipelines.steps import inputs_from, step

PIPELINE_NAME = "kfops-batch-prediction"
DEFAULT_MODEL = "fraud-detector@champion"
DEFAULT_PARALLELISM = 8
SHARD_RETRIES = 2


class BatchPredictionOutputs(NamedTuple):
    total_rows: int
    model_version: str
    manifest_uri: str


def build_batch_prediction_pipeline(image: str = DEFAULT_IMAGE, parallelism: int = DEFAULT_PARALLELISM):
    """The pipeline function; ``parallelism`` caps how many shards run at once."""
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise ValueError(f"parallelism must be a positive integer, got {parallelism!r}")
    plan_op = component_op(plan_batch, image)
    score_op = component_op(score_batch_shard, image)
    summarize_op = component_op(summarize_batch, image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Score Parquet, JSONL or CSV files with the champion model in parallel shards; write "
        "predictions with request ids and the model version, and a manifest.",
    )
    @described
    def batch_prediction_pipeline(
        input_uri: str,
        output_uri: str,
        model: str = DEFAULT_MODEL,
        shards: int = 0,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        id_column: str = "",
        passthrough: list = [],  # noqa: B006 - KFP pipeline defaults are declarations, never mutated
        output_format: str = "parquet",
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        mlflow_tracking_uri: str = "",
    ) -> BatchPredictionOutputs:
        """Plan, score the shards in parallel, summarize.

        Args:
            model: The model to score with: NAME@ALIAS, NAME/VERSION or a models:/ URI, resolved once to one version.
        """
        planned = step(plan_op, "plan", cache=False, **inputs_from(plan_op, locals()))
        # Each shard spec carries the pinned model version and the output options: nothing else to pass.
        with dsl.ParallelFor(items=planned.output, parallelism=parallelism, name="shards") as shard:
            scored = step(score_op, "score shard", cache=False, shard=shard, mlflow_tracking_uri=mlflow_tracking_uri)
            scored.set_retry(num_retries=SHARD_RETRIES, backoff_duration="10s")
            scored.set_cpu_request("1").set_memory_request("2G").set_memory_limit("4G")
        summary = step(
            summarize_op, "summarize", cache=False, output_uri=output_uri, shard_rows=dsl.Collected(scored.output)
        )
        return BatchPredictionOutputs(
            summary.outputs["total_rows"], summary.outputs["model_version"], summary.outputs["manifest_uri"]
        )

    return batch_prediction_pipeline


batch_prediction_pipeline = build_batch_prediction_pipeline()
