"""Online lookup in the Feast store: a feature service's rows for entity ids, each value with its freshness
against the view's TTL (what ``kfops serve --feature-repo`` and ``kfops features online`` call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from kfops.components.contracts import KfopsError
from kfops.components.feature_store.feast_env import import_feast
from kfops.components.feature_store.store import (
    REASON_EXPIRED,
    REASON_MISSING,
    ServiceLayout,
    resolve_service,
    utc_time,
)

if TYPE_CHECKING:  # annotations only: importing Feast takes seconds
    from feast import FeatureStore


# ---------------------------------------------------------------------------------------------------- online
@dataclass
class OnlineRow:
    """One entity's online values as stored, before TTLs: feature -> value (None where empty or absent), and
    view -> event time (epoch seconds) of its row, None where the view has no row for the entity."""

    values: dict[str, Any]
    view_times: dict[str, float | None]

    @property
    def known(self) -> bool:
        return any(t is not None for t in self.view_times.values())


def read_online(store: FeatureStore, layout: ServiceLayout, entity_ids: list) -> list[OnlineRow]:
    """The online store's rows for ``entity_ids`` (one per id, in order), with the event time of each view's."""
    import_feast()
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
    from feast.type_map import feast_value_type_to_python_type

    response = store.get_online_features(features=layout.refs, entity_rows={layout.entity_key: list(entity_ids)})
    proto = response.proto
    columns = dict(zip(proto.metadata.feature_names.val, proto.results, strict=True))
    rows = [OnlineRow({}, {}) for _ in entity_ids]
    found_status = (FieldStatus.PRESENT, FieldStatus.NULL_VALUE, FieldStatus.OUTSIDE_MAX_AGE)
    for view, names in layout.views.items():
        first = columns[names[0]]
        for row, status, stamp in zip(rows, first.statuses, first.event_timestamps, strict=True):
            # Redis answers an unknown entity PRESENT with an empty value and no time: the time decides.
            seconds = stamp.seconds + stamp.nanos / 1e9
            row.view_times[view] = seconds if status in found_status and seconds > 0 else None
        for name in names:
            vector = columns[name]
            for row, value, status in zip(rows, vector.values, vector.statuses, strict=True):
                row.values[name] = feast_value_type_to_python_type(value) if status == FieldStatus.PRESENT else None
    return rows


def apply_ttls(row: OnlineRow, layout: ServiceLayout, now: float) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The row's values with expired or absent views blanked, and the (view, reason) of each blanked view."""
    values = dict(row.values)
    fallbacks = []
    for view, names in layout.views.items():
        stamp, ttl = row.view_times.get(view), layout.ttls.get(view)
        if stamp is None:
            reason = REASON_MISSING
        elif ttl is not None and now - stamp > ttl:
            reason = REASON_EXPIRED
        else:
            continue
        fallbacks.append((view, reason))
        for name in names:
            values[name] = None
    return values, fallbacks


def online_features(
    store: FeatureStore, service: str, entity_ids: list, now: datetime | None = None
) -> tuple[pd.DataFrame, list[list[tuple[str, str]]]]:
    """A frame (one row per id: the key, ``known``, the features with TTLs applied) and each row's fallbacks."""
    layout = resolve_service(store, service)
    ids = [_online_id(v, layout) for v in entity_ids]
    clock = (utc_time(now, "now") or datetime.now(UTC)).timestamp()
    records, fallbacks = [], []
    for entity, row in zip(ids, read_online(store, layout, ids), strict=True):
        values, blanked = apply_ttls(row, layout, clock)
        records.append({layout.entity_key: entity, "known": row.known, **values})
        fallbacks.append(blanked if row.known else [])
    return pd.DataFrame.from_records(records, columns=[layout.entity_key, "known", *layout.features]), fallbacks


def _online_id(value: Any, layout: ServiceLayout):
    if layout.key_type == "str":
        return str(value)
    if isinstance(value, bool):
        raise KfopsError(f"entity '{layout.entity_key}' must be an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise KfopsError(f"entity '{layout.entity_key}' must be an integer, got {value!r}") from None
    if isinstance(value, float) and (math.isnan(value) or number != value):
        raise KfopsError(f"entity '{layout.entity_key}' must be an integer, got {value!r}")
    return number
