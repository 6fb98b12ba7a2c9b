"""Register: put the trained model in the MLflow registry and point the ``challenger`` alias at it.

Idempotent: registering the same logged model again (a re-run that hit the KFP cache for training) reuses its
version instead of adding a copy. Promotion to ``champion`` keeps the version it replaces as ``previous``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from kfops.components.contracts import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    EvaluationResult,
    KfopsError,
)

log = logging.getLogger(__name__)


@dataclass
class RegisterOutcome:
    name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    previous_champion: str = ""
    reused: bool = False
    download_uri: str = ""


def _existing_version(client, name: str, run_id: str, model_uri: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    for version in versions:
        if version.source == model_uri:
            return version
    return None


def register_model(
    model_uri: str,
    run_id: str,
    name: str,
    evaluation: EvaluationResult | None = None,
    data_sha256: str = "",
    pipeline_run: str = "",
    description: str = "",
    promote_champion: bool = False,
    tracking_uri: str = "",
) -> RegisterOutcome:
    """Register (or reuse) the version for ``model_uri``, tag it, alias it challenger, optionally champion."""
    import mlflow

    from kfops.components.train.logic import set_tracking

    if not name or "/" in name or "@" in name:
        raise KfopsError(f"register: model name {name!r} is not valid (non-empty, no '/' or '@')")
    set_tracking(tracking_uri)
    client = mlflow.MlflowClient()
    existing = _existing_version(client, name, run_id, model_uri)
    if existing is not None:
        version, reused = existing, True
        log.info("model %s version %s already holds %s; reusing it", name, version.version, model_uri)
    else:
        version = mlflow.register_model(model_uri=model_uri, name=name, tags={"kfops.run_id": run_id})
        reused = False
    number = str(version.version)
    text = description or (
        f"MLP classifier trained on data {data_sha256[:12]}"
        + (f" by pipeline run {pipeline_run}" if pipeline_run else "")
    )
    client.update_model_version(name=name, version=number, description=text)
    tags = {"kfops.data_sha256": data_sha256, "kfops.pipeline_run": pipeline_run, "kfops.run_id": run_id}
    if evaluation is not None:
        tags.update({f"kfops.metric.{k}": f"{v:.6g}" for k, v in evaluation.metrics.items() if math.isfinite(v)})
    for key, value in tags.items():
        if value:
            client.set_model_version_tag(name, number, key, value)

    client.set_registered_model_alias(name, ALIAS_CHALLENGER, number)
    outcome = RegisterOutcome(name=name, version=number, aliases=[ALIAS_CHALLENGER], reused=reused)
    if promote_champion:
        outcome.previous_champion = promote(client, name, number)
        outcome.aliases.append(ALIAS_CHAMPION)
    outcome.download_uri = client.get_model_version_download_uri(name, number)
    return outcome


def promote(client, name: str, version: str) -> str:
    """Make ``version`` the champion; the one it replaces becomes ``previous``. Returns that one ('' if none)."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, ALIAS_CHAMPION).version
    except MlflowException:
        current = ""
    if str(current) == str(version):
        return ""
    if current:
        client.set_registered_model_alias(name, ALIAS_PREVIOUS, str(current))
    client.set_registered_model_alias(name, ALIAS_CHAMPION, str(version))
    log.info("model %s: champion is now version %s (was %s)", name, version, current or "none")
    return str(current)
