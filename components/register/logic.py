"""Register: put the trained model in the MLflow registry, with the gate's verdict, and point the
``challenger`` alias at it when it is blessed (the alias policy in ``contracts``).

Idempotent: registering the same logged model again (a re-run that hit the KFP cache for training) reuses its
version instead of adding a copy. Promotion to ``champion`` (see ``promotion``) keeps the version it replaces as
``previous``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from kfops.components import registry as promotion
from kfops.components.contracts import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    TAG_BLESSED,
    TAG_BLESSING_BASELINE,
    TAG_BLESSING_MESSAGE,
    Blessing,
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
    blessing: Blessing | None = None,
    data_sha256: str = "",
    pipeline_run: str = "",
    description: str = "",
    promote_champion: bool = False,
    tracking_uri: str = "",
) -> RegisterOutcome:
    """Register (or reuse) the version for ``model_uri`` and tag it; then follow the alias policy in contracts.

    With the gate's ``blessing``: the verdict becomes version tags; a blessed version becomes ``challenger``
    (and ``champion`` with ``promote_champion``); an unblessed one gets no alias, so every alias stays as it was.
    Without a blessing (the component used on its own, outside the gated pipeline), the version becomes
    ``challenger`` and ``promote_champion`` promotes it unchecked.
    """
    import mlflow

    from kfops.components.tracking import set_tracking

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
    if blessing is not None:
        tags.update(
            {
                TAG_BLESSED: str(blessing.blessed).lower(),
                TAG_BLESSING_MESSAGE: blessing.message[:5000],
                TAG_BLESSING_BASELINE: blessing.baseline_version or "none",
            }
        )
    for key, value in tags.items():
        if value:
            client.set_model_version_tag(name, number, key, value)

    outcome = RegisterOutcome(name=name, version=number, reused=reused)
    if blessing is not None and not blessing.blessed:
        log.info("model %s version %s is not blessed: no alias moves (%s)", name, number, blessing.message)
        outcome.download_uri = client.get_model_version_download_uri(name, number)
        return outcome
    client.set_registered_model_alias(name, ALIAS_CHALLENGER, number)
    outcome.aliases.append(ALIAS_CHALLENGER)
    if promote_champion:
        # Gated: the blessing tag written above is what promotion checks. Ungated: promoted on the caller's word.
        result = promotion.promote(client, name, number, force=blessing is None)
        outcome.previous_champion = result.replaced
        if result.won:
            outcome.aliases.append(ALIAS_CHAMPION)
        else:
            log.warning("%s", result.message)
    outcome.download_uri = client.get_model_version_download_uri(name, number)
    return outcome
