"""KFP wrapper for the feature store: ``materialize`` (re-point the source at a data version, then load the online
store, then push freshness gauges). Never cached: the online store and the registry are state outside KFP."""

from typing import NamedTuple

from kfp.dsl import Artifact, Output

from kfops.components.kfp_support import component_op


def materialize(
    feature_repo: str,
    artifact_store: str,
    data_sha256: str,
    start_time: str,
    end_time: str,
    feature_views: list,
    pushgateway: str,
    report: Output[Artifact],
) -> NamedTuple("MaterializeOutputs", [("max_lag_seconds", float), ("views", int)]):
    """Materialise the feature repository ``feature_repo`` (a folder or s3:// prefix with feature_store.yaml).

    With ``data_sha256``, the definitions are applied first with that stored snapshot of ``artifact_store`` as
    the source. ``start_time`` empty: incremental up to ``end_time`` ("" or "now": now); else that window.
    ``feature_views`` empty: all. ``pushgateway`` set: the freshness gauges are pushed there (best effort: a
    failure is reported in the report and the log, not raised).

    Returns:
        report: What was materialised, per feature view, as JSON.
        max_lag_seconds: Largest freshness lag over the feature views, in seconds.
        views: Number of feature views materialised.
    """
    import json
    from collections import namedtuple

    from kfops.components import storage
    from kfops.components.datasets import SNAPSHOT_FILE, read_snapshot, snapshot_uri
    from kfops.components.feature_store.store import open_store
    from kfops.components.features.logic import apply_definitions, materialize

    store = open_store(feature_repo)
    applied = ""
    if data_sha256:
        read_snapshot(artifact_store, data_sha256)  # checks the snapshot is complete and uncorrupted
        source = storage.join(snapshot_uri(artifact_store, data_sha256), SNAPSHOT_FILE)
        applied = apply_definitions(store, source).source
        print(f"feature definitions applied with source {applied}")
    result = materialize(store, end=end_time or None, start=start_time or None, views=list(feature_views) or None)
    for view in result.views:
        print(f"{view.name}: online up to {view.materialized_until or '-'} (lag {view.lag_seconds} s)")
    pushed = ""
    if pushgateway:
        from kfops.components.contracts import KfopsError
        from kfops.components.features.freshness import push_freshness

        try:
            pushed = push_freshness(result.views, pushgateway, store.project)
        except KfopsError as err:
            pushed = f"not pushed: {err}"
        print(pushed)
    with open(report.path, "w", encoding="utf-8") as fh:
        json.dump({**result.to_dict(), "source": applied, "pushed": pushed}, fh, indent=2)
    lags = [v.lag_seconds for v in result.views if v.lag_seconds is not None]
    report.metadata.update({"end": result.end, "start": result.start, "views": len(result.views), "source": applied})
    outputs = namedtuple("MaterializeOutputs", ["max_lag_seconds", "views"])
    return outputs(float(max(lags)) if lags else -1.0, len(result.views))


materialize_op = component_op(materialize)
