"""Reading KServe's status of an InferenceService: what an ``Expectation`` still lacks (``unmet``), and a line
describing what was last observed (``describe_status``).
"""

from __future__ import annotations

from typing import Any

from kfops.components.isvc.patches import Expectation
from kfops.components.isvc.spec import KNATIVE


# ------------------------------------------------------------------------------------------------ status
def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def unmet(obj: dict[str, Any], expect: Expectation, generation: int | None = None) -> list[str]:
    """What in the object's status does not yet show ``expect`` (empty when it all does).

    ``generation`` is the spec generation our write produced: a status for an older one is stale.
    """
    status = obj.get("status") or {}
    problems = []
    ready = _condition(status, "Ready")
    if ready is None:
        problems.append("no Ready condition yet")
    elif ready.get("status") != "True":
        why = ": ".join(str(ready[k]) for k in ("reason", "message") if ready.get(k))
        problems.append(f"Ready={ready.get('status')}" + (f" ({why})" if why else ""))
    observed = status.get("observedGeneration")
    if generation and observed is not None and int(observed) < int(generation):
        problems.append(f"the status is for generation {observed}, the spec is at {generation}")
    if expect.mode == KNATIVE:
        predictor = (status.get("components") or {}).get("predictor") or {}
        created, latest_ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
        if created and latest_ready and created != latest_ready:
            problems.append(f"latest revision {created} is not ready (latest ready: {latest_ready})")
        traffic = predictor.get("traffic") or []
        want = 100 if expect.canary_percent is None else expect.canary_percent
        if not traffic:
            problems.append("no traffic in the predictor's status yet")
        else:
            latest = sum(int(t.get("percent") or 0) for t in traffic if t.get("latestRevision"))
            total = sum(int(t.get("percent") or 0) for t in traffic)
            if latest != want or total != 100:
                problems.append(f"the latest revision has {latest}% of {total}% of traffic, not {want}%")
    else:
        canaries = status.get("canaryStatuses") or []
        if expect.canary_percent is None:
            if canaries:
                problems.append("canaries still in the status: " + ", ".join(str(c.get("name")) for c in canaries))
        else:
            entry = next((c for c in canaries if c.get("name") == expect.canary_name), None)
            if entry is None:
                problems.append(f"no status for canary {expect.canary_name} yet")
            else:
                if entry.get("ready") is not True:
                    problems.append(f"canary {expect.canary_name} is not ready")
                if entry.get("trafficPercent") != expect.canary_percent:
                    problems.append(
                        f"canary {expect.canary_name} has {entry.get('trafficPercent')}% of traffic, not "
                        f"{expect.canary_percent}%"
                    )
    return problems


def describe_status(obj: dict[str, Any] | None) -> str:
    """One line of what KServe reports: conditions that are not True, traffic, canaries, generations."""
    if obj is None:
        return "the InferenceService does not exist"
    status = obj.get("status") or {}
    if not status:
        return "no status yet (has the KServe controller seen it?)"
    parts = []
    for condition in status.get("conditions") or []:
        text = f"{condition.get('type')}={condition.get('status')}"
        if condition.get("status") != "True":
            why = ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k))
            text += f" ({why})" if why else ""
        parts.append(text)
    predictor = (status.get("components") or {}).get("predictor") or {}
    traffic = predictor.get("traffic") or []
    if traffic:
        routes = []
        for target in traffic:
            tag = target.get("tag") or ("latest" if target.get("latestRevision") else "")
            routes.append(
                f"{target.get('revisionName', '?')} {target.get('percent', 0)}%" + (f" ({tag})" if tag else "")
            )
        parts.append("traffic " + ", ".join(routes))
    for key, label in (("latestCreatedRevision", "latest created"), ("latestReadyRevision", "latest ready")):
        if predictor.get(key):
            parts.append(f"{label} {predictor[key]}")
    for canary in status.get("canaryStatuses") or []:
        ready = "ready" if canary.get("ready") else "not ready"
        parts.append(f"canary {canary.get('name')} {ready} at {canary.get('trafficPercent')}%")
    if status.get("observedGeneration") is not None:
        generation = (obj.get("metadata") or {}).get("generation")
        parts.append(
            f"observed generation {status['observedGeneration']}" + (f" of {generation}" if generation else "")
        )
    return "; ".join(parts) or "an empty status"
