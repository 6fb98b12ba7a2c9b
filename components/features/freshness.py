"""Freshness of the online store as Prometheus gauges, pushed to the Pushgateway by the materialise step.

Gauges (job ``kfops-features``, grouped by ``project``; each push replaces the group's previous metrics):

- ``kfops_feature_materialization_end_timestamp_seconds{feature_view}``: the time up to which the view's data
  is in the online store. The ``KfopsFeatureMaterializationLag`` alert (manifests/monitoring) reads
  ``time() - this``, which keeps growing when materialisation stops, unlike a pushed lag value.
- ``kfops_feature_materialization_lag_seconds{feature_view}``: now minus that time, when pushed.
- ``kfops_feature_view_ttl_seconds{feature_view}``: the view's TTL (0: none), to compare the lag with.

A view never materialised has no series. The predictor exports the same lag and end time live, from the
registry it reads (``kfops.serving.feature_lookup``). Pushing is best effort: the materialisation is the
product, and an unreachable Pushgateway is reported, not raised, by the component.
"""

from __future__ import annotations

import urllib.error

from kfops.components.contracts import KfopsError
from kfops.components.feature_store.store import ViewFreshness

DEFAULT_JOB = "kfops-features"
TIMEOUT_SECONDS = 10.0
END_TIMESTAMP = "kfops_feature_materialization_end_timestamp_seconds"
LAG = "kfops_feature_materialization_lag_seconds"
TTL = "kfops_feature_view_ttl_seconds"


def freshness_registry(views: list[ViewFreshness]):
    """A fresh prometheus_client registry holding the freshness gauges of ``views``."""
    from datetime import datetime

    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    end = Gauge(
        END_TIMESTAMP, "Time up to which the view's data is in the online store.", ["feature_view"], registry=registry
    )
    lag = Gauge(
        LAG, "Seconds between now and the end of the view's last materialisation.", ["feature_view"], registry=registry
    )
    ttl = Gauge(TTL, "The feature view's TTL in seconds (0: none).", ["feature_view"], registry=registry)
    for view in views:
        ttl.labels(view.name).set(view.ttl_seconds or 0.0)
        if view.materialized_until:
            end.labels(view.name).set(datetime.fromisoformat(view.materialized_until).timestamp())
            lag.labels(view.name).set(view.lag_seconds or 0.0)
    return registry


def push_freshness(views: list[ViewFreshness], gateway: str, project: str, job: str = DEFAULT_JOB) -> str:
    """Push the gauges to ``gateway`` (``host:port`` or a URL) under ``job`` and ``project``; raise KfopsError
    when the Pushgateway cannot be reached or refuses them."""
    from prometheus_client import push_to_gateway

    try:
        push_to_gateway(
            gateway,
            job=job,
            registry=freshness_registry(views),
            grouping_key={"project": project},
            timeout=TIMEOUT_SECONDS,
        )
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise KfopsError(f"cannot push feature freshness to the Pushgateway at {gateway}: {err}") from err
    return f"pushed freshness of {len(views)} feature view(s) to {gateway} (job {job}, project {project})"
