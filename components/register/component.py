"""KFP wrappers for the registry: register a version (tags, blessing, alias challenger when blessed) and
promote a blessed version to champion."""

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Model

from kfops.components.kfp_support import component_op


def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    blessing: Input[Artifact],
    model_name: str,
    data_sha256: str,
    pipeline_run: str,
    mlflow_tracking_uri: str,
) -> NamedTuple("RegisterOutputs", [("version", str), ("download_uri", str)]):
    """Register the trained model under ``model_name``: tags, the gate's verdict, and alias challenger when
    blessed. An unblessed model gets a version (to inspect) and no alias. Promotion is the promote step's.

    Args:
        model: The trained model (the train step's output).

    Returns:
        version: The registered model version.
        download_uri: Where the version's model files are.
    """
    from collections import namedtuple
    from pathlib import Path

    from kfops.components.contracts import Blessing, EvaluationResult, KfopsError
    from kfops.components.register.logic import register_model

    missing = [k for k in ("model_uri", "run_id") if not model.metadata.get(k)]
    if missing:
        raise KfopsError(
            f"register: model artifact {model.uri} has no {' or '.join(missing)} in its metadata; "
            "it must come from the kfops train component"
        )
    result = EvaluationResult.from_json(Path(evaluation.path).read_text(encoding="utf-8"))
    verdict = Blessing.from_json(Path(blessing.path).read_text(encoding="utf-8"))
    outcome = register_model(
        model_uri=model.metadata["model_uri"],
        run_id=model.metadata["run_id"],
        name=model_name,
        evaluation=result,
        blessing=verdict,
        data_sha256=data_sha256,
        pipeline_run=pipeline_run,
        tracking_uri=mlflow_tracking_uri,
    )
    print(
        f"registered {outcome.name} version {outcome.version}"
        + (f" as {', '.join(outcome.aliases)}" if outcome.aliases else " with no alias (not blessed)")
        + (" (reused)" if outcome.reused else "")
    )
    outputs = namedtuple("RegisterOutputs", ["version", "download_uri"])
    return outputs(outcome.version, outcome.download_uri)


def promote(
    model_name: str,
    version: str,
    metric: str,
    mlflow_tracking_uri: str,
) -> NamedTuple("PromoteOutputs", [("champion", str), ("won", bool), ("message", str)]):
    """Make a blessed version the champion (the one it replaces becomes previous), safe against a race.

    Args:
        metric: Metric that must not get worse than the champion's for the version to replace it.

    Returns:
        champion: The champion version after the step.
        won: Whether the version became the champion.
        message: What happened, in words.
    """
    from collections import namedtuple

    import mlflow

    from kfops.components.registry import promote as promote_version
    from kfops.components.tracking import set_tracking

    set_tracking(mlflow_tracking_uri)
    result = promote_version(mlflow.MlflowClient(), model_name, version, metric=metric)
    print(result.message)
    outputs = namedtuple("PromoteOutputs", ["champion", "won", "message"])
    return outputs(result.champion, result.won, result.message)


register_op = component_op(register)
promote_op = component_op(promote)
