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
from kfops.components import retry
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


def _tracking_endpoint() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _has_model_files(download_uri: str) -> bool:
    """Whether the version's location holds a model (its ``MLmodel`` file): local, s3:// or any MLflow store."""
    from urllib.parse import urlparse

    from kfops.components import storage

    location = download_uri.removeprefix("file://")
    if urlparse(location).scheme in ("", "s3"):  # a local folder or s3://: the suite's own storage (and retries)
        return storage.exists(storage.join(location, "MLmodel"))
    import mlflow

    return any(a.path.rsplit("/", 1)[-1] == "MLmodel" for a in mlflow.artifacts.list_artifacts(artifact_uri=location))


def _remove_created(client, name: str, run_id: str, model_uri: str, number: str | None) -> str:
    """Delete the version this call created (found again by run and source when its number is unknown), so a
    failed registration leaves none behind; deleting a version drops its aliases with it. Returns what was done,
    for the error message."""
    try:
        if number is None:
            found = _existing_version(client, name, run_id, model_uri)
            if found is None:
                return "no version was created"
            number = str(found.version)
        client.delete_model_version(name, number)
    except Exception as err:  # the store may still be unreachable: say so, the caller raises anyway
        log.error("model %s: could not delete the half-registered version %s: %s", name, number or "?", err)
        return f"version {number or '?'} could not be deleted ({err}); delete it by hand"
    log.warning("model %s: deleted version %s, whose registration did not complete", name, number)
    return f"version {number} was deleted again"


@retry.pipeline_step  # the model-files check on S3 rides out a short outage (components/retry.py)
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

    All or nothing: a new version is created with all its tags in one request, an alias is set only once the
    version's model files are found where it points, and when any step fails (after the retries in ``retry``)
    the version this call created is deleted again, with its aliases, before the error is raised.
    """
    import mlflow

    from kfops.components.tracking import set_tracking

    if not name or "/" in name or "@" in name:
        raise KfopsError(f"register: model name {name!r} is not valid (non-empty, no '/' or '@')")
    set_tracking(tracking_uri)
    client = mlflow.MlflowClient()
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
    tags = {key: value for key, value in tags.items() if value}
    text = description or (
        f"MLP classifier trained on data {data_sha256[:12]}"
        + (f" by pipeline run {pipeline_run}" if pipeline_run else "")
    )

    existing = _existing_version(client, name, run_id, model_uri)
    created, number = existing is None, None if existing is None else str(existing.version)
    try:
        if existing is not None:
            log.info("model %s version %s already holds %s; reusing it", name, number, model_uri)
            for key, value in tags.items():
                client.set_model_version_tag(name, number, key, value)
        else:
            number = str(mlflow.register_model(model_uri=model_uri, name=name, tags=tags).version)
        client.update_model_version(name=name, version=number, description=text)
        outcome = RegisterOutcome(name=name, version=number, reused=not created)
        outcome.download_uri = client.get_model_version_download_uri(name, number)
        if not _has_model_files(outcome.download_uri):
            raise KfopsError(
                f"register: model {name} version {number} points to {outcome.download_uri}, which holds no model "
                "(no MLmodel file): the training step's upload did not complete"
            )
        if blessing is not None and not blessing.blessed:
            log.info("model %s version %s is not blessed: no alias moves (%s)", name, number, blessing.message)
            return outcome
        client.set_registered_model_alias(name, ALIAS_CHALLENGER, number)
        outcome.aliases.append(ALIAS_CHALLENGER)
    except Exception as err:
        undone = _remove_created(client, name, run_id, model_uri, number) if created else "the version was reused"
        if isinstance(err, KfopsError):
            raise KfopsError(f"{err}; {undone}") from err
        raise KfopsError(
            f"register: model {name} could not be registered in the MLflow store at {_tracking_endpoint()} "
            f"({type(err).__name__}: {err}); {undone}"
        ) from err

    if promote_champion:
        # Gated: the blessing tag written above is what promotion checks. Ungated: promoted on the caller's word.
        result = promotion.promote(client, name, number, force=blessing is None)
        outcome.previous_champion = result.replaced
        if result.won:
            outcome.aliases.append(ALIAS_CHAMPION)
        else:
            log.warning("%s", result.message)
    return outcome
