"""Feature store stage: register the Feast definitions over an ingested snapshot, materialise them into the
online store, and build point-in-time-correct training sets.

Plain Python, no KFP. Feast is imported inside the functions that use it (it takes seconds to import). Opening a
repository, a feature service's layout, view freshness and online reads are the feature-store seam
(``components/feature_store``), which serving reads the store through too; the definitions live there.

Missing values are never a crash: a feature older than its view's TTL, or with no value at or before a row's
time, is returned as missing (NaN, which the model's FeatureSpec imputes: the training median for numeric
features) and counted by reason. Unknown feature views and services and missing entity or timestamp columns are
KfopsErrors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from kfops.components import storage
from kfops.components.contracts import KfopsError
from kfops.components.feature_store import definitions
from kfops.components.feature_store.feast_env import import_feast
from kfops.components.feature_store.store import (
    LOCAL_TEMPLATE,
    REASON_EXPIRED,
    REASON_NO_HISTORY,
    REASON_NULL,
    STORE_FILE,
    ServiceLayout,
    ViewFreshness,
    feature_view_names,
    freshness,
    resolve_service,
    utc_time,
)

log = logging.getLogger(__name__)

# Feast's own name for the entity frame's timestamp: naming it so stops Feast guessing among datetime columns.
FEAST_TIMESTAMP = "event_timestamp"


# ---------------------------------------------------------------------------------------------------- repository
def init_repo(repo_dir: str | Path, template: str | Path = LOCAL_TEMPLATE, overwrite: bool = False) -> Path:
    """Write ``feature_store.yaml`` (the local template by default) into ``repo_dir`` unless one is there."""
    folder = Path(repo_dir)
    target = folder / STORE_FILE
    if target.exists() and not overwrite:
        return target
    try:
        text = Path(template).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise KfopsError(f"feature store template {template} does not exist") from err
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def _absolute(uri: str) -> str:
    return uri if storage.is_s3(uri) else str(Path(uri).expanduser().resolve())


def source_schema(uri: str) -> dict[str, str]:
    """Column name -> Arrow type of the Parquet file at ``uri`` (local or s3://), reading only its footer."""
    import pyarrow.parquet as pq

    import_feast()
    from feast.infra.offline_stores.file_source import FileSource

    filesystem, path = FileSource.create_filesystem_and_path(uri, storage.s3_endpoint())
    try:
        schema = pq.read_schema(filesystem.open_input_file(path) if filesystem else path)
    except FileNotFoundError as err:
        raise KfopsError(f"feature source {uri} does not exist") from err
    except Exception as err:
        raise KfopsError(f"cannot read the Parquet schema of feature source {uri}: {err}") from err
    return {f.name: str(f.type) for f in schema}


def check_source(uri: str) -> None:
    """The snapshot must hold the entity key (integers), the timestamp and every feature (numbers)."""
    schema = source_schema(uri)
    problems = []
    for name, kind in definitions.required_source_columns().items():
        found = schema.get(name)
        if found is None:
            problems.append(f"column '{name}' is missing")
        elif kind == "time" and not found.startswith("timestamp"):
            problems.append(f"column '{name}' must be a timestamp, it is {found}")
        elif kind == "int" and not found.startswith(("int", "uint")):
            problems.append(f"entity column '{name}' must be integers, it is {found}")
        elif kind in ("float64", "int64") and not found.startswith(("int", "uint", "float", "double")):
            problems.append(f"feature column '{name}' must be numeric, it is {found}")
    if problems:
        raise KfopsError(f"feature source {uri}: {'; '.join(problems)} (columns: {', '.join(schema)})")


@dataclass
class ApplyReport:
    source: str
    entities: list[str]
    feature_views: dict[str, list[str]]  # view -> features
    services: dict[str, list[str]]  # service -> views


def apply_definitions(store, source_uri: str) -> ApplyReport:
    """Register the suite's definitions with ``source_uri`` (an ingested snapshot's data.parquet) as the source.
    Re-applying with a new snapshot moves the source and keeps the materialisation history."""
    source = _absolute(source_uri)
    check_source(source)
    objects = definitions.build_definitions(source, storage.s3_endpoint() if storage.is_s3(source) else "")
    with _feast_output("apply"):
        store.apply(objects)
    return ApplyReport(
        source=source,
        entities=[definitions.ENTITY_NAME],
        feature_views={name: list(spec.features) for name, spec in definitions.FEATURE_VIEWS.items()},
        services={name: list(views) for name, views in definitions.FEATURE_SERVICES.items()},
    )


@contextlib.contextmanager
def _feast_output(what: str):
    """Feast prints progress to stdout; keep it out of the CLI's and pipeline's own output, in the log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    text = re.sub(r"\x1b\[[0-9;]*m", "", buffer.getvalue()).strip()  # without the terminal colours
    if text:
        log.info("feast %s: %s", what, " ".join(text.split()))


# ---------------------------------------------------------------------------------------------------- materialise
@dataclass
class MaterializeReport:
    start: str  # "" for incremental: each view from where its last materialisation ended (or end - TTL)
    end: str
    views: list[ViewFreshness] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_views(store, views: list[str] | None) -> list[str] | None:
    if not views:
        return None
    known = feature_view_names(store)
    unknown = [v for v in views if v not in known]
    if unknown:
        raise KfopsError(
            f"unknown feature view(s) {unknown} in project '{store.project}'; "
            f"known views: {', '.join(known) or 'none (run `kfops features apply`)'}"
        )
    return list(views)


def materialize(
    store,
    end: datetime | str | None = None,
    start: datetime | str | None = None,
    views: list[str] | None = None,
    now: datetime | None = None,
) -> MaterializeReport:
    """Load the offline data of ``views`` (default: all) into the online store, up to ``end`` (default now).

    With ``start``, the window [start, end]; without, incrementally: each view from where its previous
    materialisation ended, or from ``end`` minus its TTL the first time (Feast's rule)."""
    started = time.perf_counter()
    end_time = utc_time(end, "end") or datetime.now(UTC)
    start_time = utc_time(start, "start")
    if start_time is not None and start_time >= end_time:
        raise KfopsError(f"materialize: start {start_time.isoformat()} is not before end {end_time.isoformat()}")
    selected = _check_views(store, views)
    if not feature_view_names(store):
        raise KfopsError(f"project '{store.project}' has no feature views: run `kfops features apply` first")
    try:
        with _feast_output("materialize"):
            if start_time is not None:
                store.materialize(start_date=start_time, end_date=end_time, feature_views=selected)
            else:
                store.materialize_incremental(end_date=end_time, feature_views=selected)
    except FileNotFoundError as err:
        raise KfopsError(f"materialize: a feature source is missing: {err}") from err
    return MaterializeReport(
        start=start_time.isoformat() if start_time else "",
        end=end_time.isoformat(),
        views=freshness(store, now, selected),
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------------- training sets
@dataclass
class TrainingSetReport:
    rows: int
    lookups: int  # distinct (entity, time) pairs joined
    service: str
    features: list[str]
    # view -> reason -> rows whose features from that view are missing (expired, no_history, null_value)
    missing: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0


def _entity_keys(values: pd.Series, key: str, key_type: str, source: str) -> pd.Series:
    if values.isna().any():
        first = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise KfopsError(
            f"{source}: entity column '{key}' is empty in {int(values.isna().sum())} row(s), e.g. row {first}"
        )
    if key_type == "str":
        return values.astype(str)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers != np.floor(numbers))
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise KfopsError(f"{source}: entity column '{key}' must hold integers; row {first} has {values.iloc[first]!r}")
    return numbers.astype(np.int64)


def _event_times(values: pd.Series, column: str, source: str) -> pd.Series:
    try:
        times = pd.to_datetime(values, utc=True)
    except (ValueError, TypeError) as err:
        raise KfopsError(f"{source}: timestamp column '{column}' has values that are not times: {err}") from err
    if times.isna().any():
        first = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise KfopsError(
            f"{source}: timestamp column '{column}' is empty in {int(times.isna().sum())} row(s), e.g. row {first}"
        )
    return times.astype("datetime64[ns, UTC]")


def training_set(
    store,
    entities: pd.DataFrame,
    service: str = definitions.FRAUD_SERVICE,
    timestamp_column: str = definitions.TIMESTAMP_FIELD,
    source: str = "entity frame",
) -> tuple[pd.DataFrame, TrainingSetReport]:
    """``entities`` (the entity key, an event time per row, the label and any request-time features) with the
    service's features joined point in time: each row gets the latest value at or before its own time, and
    none older than the view's TTL. Rows keep their order and their other columns.

    Two faults of Feast's file (Dask) store are worked around: it drops entity rows that share a key and a time
    (feast-dev/feast#6787), so only the distinct (key, time) pairs are sent and its answer is joined back to
    every row; and, asked for several views, it drops an entity row whole when one view has rows for that entity
    but all older than the view's TTL, so the views are joined one at a time."""
    started = time.perf_counter()
    layout = resolve_service(store, service)
    key = layout.entity_key
    absent = [c for c in (key, timestamp_column) if c not in entities.columns]
    if absent:
        raise KfopsError(
            f"{source}: {' and '.join(repr(c) for c in absent)} not found (the entity key and the event time); "
            f"columns are: {', '.join(map(str, entities.columns))}"
        )
    clash = [f for f in layout.features if f in entities.columns]
    if clash:
        raise KfopsError(
            f"{source}: column(s) {clash} are features of service '{service}'; drop them from the entity frame "
            "(the feature store supplies them as of each row's time)"
        )
    if entities.empty:
        raise KfopsError(f"{source}: the entity frame has no rows")
    keys = _entity_keys(entities[key], key, layout.key_type, source)
    times = _event_times(entities[timestamp_column], timestamp_column, source)
    pairs = pd.DataFrame({key: keys.to_numpy(), FEAST_TIMESTAMP: times.to_numpy()}).drop_duplicates(ignore_index=True)
    joined = pairs.rename(columns={key: "__kfops_key", FEAST_TIMESTAMP: "__kfops_time"})
    for view, names in layout.views.items():
        with _feast_output("historical retrieval"):
            part = store.get_historical_features(entity_df=pairs, features=[f"{view}:{n}" for n in names]).to_df()
        part = part[[key, FEAST_TIMESTAMP, *names]].rename(
            columns={key: "__kfops_key", FEAST_TIMESTAMP: "__kfops_time"}
        )
        part["__kfops_time"] = pd.to_datetime(part["__kfops_time"], utc=True).astype("datetime64[ns, UTC]")
        joined = joined.merge(part, on=["__kfops_key", "__kfops_time"], how="left", validate="one_to_one")
    left = entities.reset_index(drop=True).assign(__kfops_key=keys.to_numpy(), __kfops_time=times.to_numpy())
    frame = left.merge(joined, on=["__kfops_key", "__kfops_time"], how="left", validate="many_to_one")
    if len(frame) != len(entities):  # cannot happen with validate=many_to_one; a guard against silent loss
        raise KfopsError(f"{source}: the point-in-time join returned {len(frame)} rows for {len(entities)}")
    report = TrainingSetReport(
        rows=len(frame),
        lookups=len(pairs),
        service=service,
        features=layout.features,
        missing=_missing_reasons(store, layout, frame),
    )
    frame = frame.drop(columns=["__kfops_key", "__kfops_time"])
    report.seconds = time.perf_counter() - started
    return frame, report


def _missing_reasons(store, layout: ServiceLayout, frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per view, why rows came back without its features: no value at or before their time, a latest value
    older than the TTL, or a latest value that is itself empty."""
    out: dict[str, dict[str, int]] = {}
    for view_name, names in layout.views.items():
        empty = frame[names].isna().all(axis=1).to_numpy()
        if not empty.any():
            continue
        rows = frame.loc[empty, ["__kfops_key", "__kfops_time"]]
        view = store.get_feature_view(view_name, allow_registry_cache=True)
        history = _source_times(view, layout.entity_key)
        matched = pd.merge_asof(
            rows.sort_values("__kfops_time"),
            history,
            left_on="__kfops_time",
            right_on="__source_time",
            left_by="__kfops_key",
            right_by="__source_key",
            direction="backward",
        )
        age = (matched["__kfops_time"] - matched["__source_time"]).dt.total_seconds()
        ttl = layout.ttls[view_name]
        expired = matched["__source_time"].notna() & (age > ttl if ttl is not None else False)
        no_history = matched["__source_time"].isna()
        counts = {
            REASON_EXPIRED: int(expired.sum()),
            REASON_NO_HISTORY: int(no_history.sum()),
            REASON_NULL: int((~expired & ~no_history).sum()),
        }
        out[view_name] = {reason: n for reason, n in counts.items() if n}
    return out


def _source_times(view, key: str) -> pd.DataFrame:
    """The (entity, event time) pairs of a view's Parquet source, sorted by time."""
    import pyarrow.parquet as pq

    import_feast()
    from feast.infra.offline_stores.file_source import FileSource

    batch = view.batch_source
    filesystem, path = FileSource.create_filesystem_and_path(batch.path, batch.s3_endpoint_override)
    table = pq.read_table(path, columns=[key, batch.timestamp_field], filesystem=filesystem)
    history = table.to_pandas().rename(columns={key: "__source_key", batch.timestamp_field: "__source_time"})
    history["__source_time"] = pd.to_datetime(history["__source_time"], utc=True).astype("datetime64[ns, UTC]")
    if history["__source_key"].dtype.kind in "iu":
        history["__source_key"] = history["__source_key"].astype(np.int64)
    return history.dropna().sort_values("__source_time", kind="stable")
