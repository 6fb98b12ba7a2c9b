"""Waiting for KServe to show a traffic split, and the traffic operations a rollout calls.

Each operation reads the live InferenceService, sends the merge patch ``isvc`` builds for it (with the
``resourceVersion`` it read, so a concurrent writer makes it fail with a conflict rather than be overwritten),
then polls the object until KServe reports the split it asked for (``isvc.unmet``), or raises ``ReadyTimeout``
naming what it last observed. A timeout sends nothing more: whatever moves traffic next is the caller's
decision. ``timeout_s`` applies to each write (rollback in Knative mode makes two).

    set_canary_percent(api, namespace, name, 25)   # the running canary gets 25%
    promote_canary(api, namespace, name)           # the canary becomes the stable model, 100%
    rollback(api, namespace, name)                 # all traffic back on the stable model, the canary removed
    serving(api, namespace, name)                  # what serves now (ServingState), no write

``api`` is a ``kube.KubeClient``; ``mode`` (knative or standard) is read from the object (the mode KServe
recorded, else its ``serving.kserve.io/deploymentMode`` annotation), and only needed for objects that name none.
The first write of each operation also carries the deployment-mode name KServe's update validation compares with
the recorded mode, when the object's annotation holds another (``capabilities.update_mode_name``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.components.isvc.capabilities import update_mode_name, with_mode_annotation
from kfops.components.isvc.patches import Expectation, Write, percent_write, promote_write, rollback_writes
from kfops.components.isvc.spec import ServingState, clean_manifest, serving_state
from kfops.components.isvc.status import describe_status, unmet
from kfops.components.kube import WaitTimeout, wait_for

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_POLL_S = 5.0


class ReadyTimeout(KfopsError):
    """KServe did not report the asked-for split in time. ``observed`` is the object last read; ``stable_*``
    name the model that served before (set by ``deploy``), for a caller that rolls back."""

    def __init__(
        self,
        message: str,
        observed: dict[str, Any] | None,
        expect: Expectation,
        stable_version: str = "",
        stable_storage_uri: str = "",
    ):
        super().__init__(message)
        self.observed = observed
        self.expect = expect
        self.stable_version = stable_version
        self.stable_storage_uri = stable_storage_uri


@dataclass
class TrafficResult:
    """The outcome of a traffic operation."""

    operation: str  # set-percent, promote or rollback
    manifest: dict[str, Any]  # the object after the last write, as a manifest
    status: dict[str, Any]  # KServe's status that showed the split
    state: ServingState  # what serves now
    writes: int = 0  # requests that changed the object


def wait_ready(
    api,
    namespace: str,
    name: str,
    expect: Expectation,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    generation: int | None = None,
) -> dict[str, Any]:
    """Poll the InferenceService until its status shows ``expect`` for ``generation``; return the object.

    Raises ``ReadyTimeout`` after ``timeout_s`` with what was last observed, and ``KfopsError`` if the object
    disappears.
    """

    def timeout_message(obj: dict[str, Any]) -> str:
        return (
            f"InferenceService {namespace}/{name} did not reach {expect.describe()} within {timeout_s:g} s: "
            f"{'; '.join(unmet(obj, expect, generation))}. Last observed: {describe_status(obj)}"
        )

    try:
        return wait_for(
            api,
            namespace,
            name,
            lambda obj: None if unmet(obj, expect, generation) else obj,
            waiting_for=expect.describe(),
            timeout_s=timeout_s,
            poll_s=poll_s,
            timeout_message=timeout_message,
        )
    except WaitTimeout as err:
        raise ReadyTimeout(str(err), err.observed, expect) from None


def _generation(obj: dict[str, Any]) -> int | None:
    generation = (obj.get("metadata") or {}).get("generation")
    return int(generation) if generation is not None else None


def _live(api, namespace: str, name: str) -> dict[str, Any]:
    live = api.get(namespace, name)
    if live is None:
        raise KfopsError(f"InferenceService {namespace}/{name} does not exist")
    return live


def _run(
    api,
    namespace: str,
    name: str,
    operation: str,
    live: dict[str, Any],
    writes: list[Write],
    timeout_s: float,
    poll_s: float,
):
    # The deployment-mode name KServe's update validation wants (usually the one there: then no extra request).
    writes = with_mode_annotation(writes, live, update_mode_name(api, live))
    written: dict[str, Any] = {}
    observed: dict[str, Any] = {}
    for write in writes:
        written = api.patch(namespace, name, write.body)
        observed = wait_ready(api, namespace, name, write.expect, timeout_s, poll_s, _generation(written))
    return TrafficResult(
        operation,
        clean_manifest(written),
        observed.get("status") or {},
        serving_state(observed, writes[-1].expect.mode),
        writes=len(writes),
    )


def serving(api, namespace: str, name: str, mode: str | None = None) -> ServingState:
    """What the InferenceService serves now: stable and canary versions, storage URIs, the canary's share."""
    return serving_state(_live(api, namespace, name), mode)


def set_canary_percent(
    api,
    namespace: str,
    name: str,
    percent: int,
    *,
    mode: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
) -> TrafficResult:
    """Give the running canary ``percent`` (0-100) of the traffic. Knative: ``canaryTrafficPercent``;
    Standard: ``spec.canary[0].trafficPercent``."""
    live = _live(api, namespace, name)
    write = percent_write(live, percent, mode)
    return _run(api, namespace, name, "set-percent", live, [write], timeout_s, poll_s)


def promote_canary(
    api,
    namespace: str,
    name: str,
    *,
    mode: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
) -> TrafficResult:
    """Make the running canary the stable model with all the traffic. Knative: ``canaryTrafficPercent`` removed;
    Standard: the canary's predictor becomes ``spec.predictor`` and ``spec.canary`` goes."""
    live = _live(api, namespace, name)
    write = promote_write(live, mode)
    return _run(api, namespace, name, "promote", live, [write], timeout_s, poll_s)


def rollback(
    api,
    namespace: str,
    name: str,
    *,
    stable_storage_uri: str = "",
    stable_version: str = "",
    mode: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
) -> TrafficResult:
    """Put all traffic back on the stable model and make it the latest spec again.

    The stable model is the one the object records (``deploy`` wrote it); ``stable_storage_uri`` and
    ``stable_version`` (e.g. a ``DeployResult``'s ``stable_*``) override it. Knative: the stable predictor is
    written back as the latest spec with ``canaryTrafficPercent: 0`` (all traffic to the stable revision at once),
    then the field is removed once that new revision is ready; a canary at 0% alone would leave the bad revision
    latest. Standard: ``spec.canary`` is removed.
    """
    live = _live(api, namespace, name)
    writes = rollback_writes(live, stable_storage_uri, stable_version, mode)
    return _run(api, namespace, name, "rollback", live, writes, timeout_s, poll_s)
