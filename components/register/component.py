"""KFP wrapper for register: a registry version with tags, alias challenger, and champion on request."""

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Model

from kfops.components.kfp_support import component_op


def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    model_name: str,
    data_sha256: str,
    pipeline_run: str,
    promote_champion: bool,
    mlflow_tracking_uri: str,
) -> NamedTuple("RegisterOutputs", [("version", str), ("download_uri", str)]):
    """Register the trained model under ``model_name`` and set its aliases."""
    from collections import namedtuple
    from pathlib import Path

    from kfops.components.contracts import EvaluationResult, KfopsError
    from kfops.components.register.logic import register_model

    missing = [k for k in ("model_uri", "run_id") if not model.metadata.get(k)]
    if missing:
        raise KfopsError(
            f"register: model artifact {model.uri} has no {' or '.join(missing)} in its metadata; "
            "it must come from the kfops train component"
        )
    result = EvaluationResult.from_json(Path(evaluation.path).read_text(encoding="utf-8"))
    outcome = register_model(
        model_uri=model.metadata["model_uri"],
        run_id=model.metadata["run_id"],
        name=model_name,
        evaluation=result,
        data_sha256=data_sha256,
        pipeline_run=pipeline_run,
        promote_champion=promote_champion,
        tracking_uri=mlflow_tracking_uri,
    )
    print(
        f"registered {outcome.name} version {outcome.version} as {', '.join(outcome.aliases)}"
        + (" (reused)" if outcome.reused else "")
    )
    outputs = namedtuple("RegisterOutputs", ["version", "download_uri"])
    return outputs(outcome.version, outcome.download_uri)


register_op = component_op(register)
