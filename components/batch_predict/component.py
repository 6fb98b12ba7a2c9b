"""KFP wrappers for batch prediction: plan the shards (the model resolved once), score one shard, summarize."""

from typing import NamedTuple

from kfp.dsl import Artifact, Metrics, Output

from kfops.components.kfp_support import component_op


def plan_batch(
    input_uri: str,
    output_uri: str,
    model: str,
    shards: int,
    shard_rows: int,
    id_column: str,
    passthrough: list,
    output_format: str,
    chunk_rows: int,
    mlflow_tracking_uri: str,
) -> list:
    """Resolve ``model`` to one version, check the input's columns, cut it into shards (``shards`` > 0: that
    many, else one per ``shard_rows`` rows) and write ``<output_uri>/_plan.json``. The output, the shard specs, is
    what ParallelFor iterates over; each carries the pinned model and the output options.

    Args:
        model: The model to score with: NAME@ALIAS, NAME/VERSION or a models:/ URI, resolved once to one version.

    Returns:
        Output: The shard specs, one per shard, each with the pinned model version and the output options.
    """
    from kfops.components.batch_predict.plan import plan_batch as make_plan

    plan = make_plan(
        input_uri,
        output_uri,
        model,
        tracking_uri=mlflow_tracking_uri,
        shard_rows=shard_rows if shard_rows > 0 else None,
        shards=shards if shards > 0 else None,
        id_column=id_column,
        passthrough=[str(c) for c in passthrough],
        output_format=output_format,
        chunk_rows=chunk_rows,
    )
    print(
        f"planned {len(plan.shards)} shard(s) over {plan.rows} row(s) in {plan.files} file(s); "
        f"model {plan.model_ref}; plan {plan.plan_id}"
    )
    return [s.to_dict() for s in plan.shards]


def score_batch_shard(shard: dict, mlflow_tracking_uri: str) -> int:
    """Score one shard from ``plan_batch`` with the model version it pins; write its part file and receipt
    (a retry overwrites the same names). Returns the rows written.

    Args:
        shard: One shard spec from plan_batch.

    Returns:
        Output: Rows written for this shard.
    """
    from kfops.components.batch_predict.logic import score_planned_shard

    result = score_planned_shard(shard, tracking_uri=mlflow_tracking_uri)
    print(f"shard {result.index + 1} of {result.count}: {result.rows} row(s) to {result.output} in {result.seconds} s")
    return result.rows


def summarize_batch(
    output_uri: str,
    shard_rows: list,
    manifest: Output[Artifact],
    metrics: Output[Metrics],
) -> NamedTuple("SummaryOutputs", [("total_rows", int), ("model_version", str), ("manifest_uri", str)]):
    """Check that every planned shard wrote its output (``shard_rows``: the collected row counts) and write
    ``<output_uri>/_manifest.json``; fail naming the shards that did not.

    Args:
        shard_rows: Rows each shard wrote (collected from the shard steps).

    Returns:
        manifest: The batch's manifest (JSON).
        metrics: Rows and shards, for the Kubeflow UI.
    """
    import json
    from collections import namedtuple

    from kfops.components import storage
    from kfops.components.batch_predict.logic import summarize_batch as summarize
    from kfops.components.batch_predict.records import MANIFEST_FILE

    result = summarize(output_uri, expected_shards=len(shard_rows))
    with open(manifest.path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    manifest.metadata.update(
        {"model_version": result["model_version"], "total_rows": result["total_rows"], "files": len(result["files"])}
    )
    metrics.log_metric("total_rows", result["total_rows"])
    metrics.log_metric("shards", len(result["shards"]))
    with open(metrics.path, "w", encoding="utf-8") as fh:
        json.dump(metrics.metadata, fh, indent=2, sort_keys=True)
    print(
        f"{result['total_rows']} prediction(s) by {result['model_name']} version {result['model_version']} "
        f"in {len(result['files'])} file(s) under {result['output_uri']}"
    )
    outputs = namedtuple("SummaryOutputs", ["total_rows", "model_version", "manifest_uri"])
    return outputs(result["total_rows"], result["model_version"], storage.join(result["output_uri"], MANIFEST_FILE))


plan_batch_op = component_op(plan_batch)
score_batch_shard_op = component_op(score_batch_shard)
summarize_batch_op = component_op(summarize_batch)
