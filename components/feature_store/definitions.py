"""The suite's Feast definitions: one entity, one data source over an ingested snapshot, two feature views with
TTLs and two feature services.

The source is the ingested transactions table itself (a ``data.parquet`` snapshot of the artifact store, local
or ``s3://`` on MinIO): each transaction records what was known about its customer at ``event_time``, so the
customer's feature values as of time t are those of their latest transaction at or before t. The rest of a
transaction (amount, merchant, channel, ...) is known only when it happens: those are request-time features,
sent to the predictor with the customer id.

The layout is plain data (``FEATURE_VIEWS``, ``FEATURE_SERVICES``) so that checks and the CLI need no Feast
import; ``build_definitions`` turns it into Feast objects (Feast is imported there, it is a heavy import).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

ENTITY_NAME = "customer"
ENTITY_KEY = "customer_id"
TIMESTAMP_FIELD = "event_time"
SOURCE_NAME = "transactions"
PROFILE_VIEW = "customer_profile"
ACTIVITY_VIEW = "customer_activity"
FRAUD_SERVICE = "fraud_model"
PROFILE_SERVICE = "fraud_model_profile"


@dataclass(frozen=True)
class ViewSpec:
    """A feature view: its features (name -> "float64" or "int64") and how old a value may be before it is
    treated as missing (the TTL: point-in-time joins ignore older rows; serving imputes them)."""

    name: str
    features: dict[str, str]
    ttl: timedelta
    description: str


FEATURE_VIEWS: dict[str, ViewSpec] = {
    PROFILE_VIEW: ViewSpec(
        PROFILE_VIEW,
        {"account_age_days": "float64", "customer_age": "float64"},
        # Slow-moving facts about the account: a value from the last year is still the customer's.
        timedelta(days=400),
        "Facts about the customer's account, as of their latest transaction.",
    ),
    ACTIVITY_VIEW: ViewSpec(
        ACTIVITY_VIEW,
        {"avg_amount_30d": "float64", "transactions_last_24h": "int64"},
        # Recent behaviour: older than a month, it says little about today's spending.
        timedelta(days=30),
        "The customer's recent spending, as of their latest transaction.",
    ),
}
FEATURE_SERVICES: dict[str, list[str]] = {
    FRAUD_SERVICE: [PROFILE_VIEW, ACTIVITY_VIEW],  # what the fraud model is trained and served with
    PROFILE_SERVICE: [PROFILE_VIEW],
}


def service_features(service: str) -> list[str]:
    """The feature names a service supplies, in view order."""
    return [name for view in FEATURE_SERVICES[service] for name in FEATURE_VIEWS[view].features]


def required_source_columns() -> dict[str, str]:
    """Columns a source snapshot must have, with the kind each must be: "int" (the entity key), "time", or a
    feature's dtype."""
    columns = {ENTITY_KEY: "int", TIMESTAMP_FIELD: "time"}
    for view in FEATURE_VIEWS.values():
        columns.update(view.features)
    return columns


def build_definitions(source_path: str, s3_endpoint: str = "") -> list:
    """The Feast objects to apply, reading features from the Parquet snapshot at ``source_path`` (a local path
    or ``s3://`` URI; ``s3_endpoint`` is MinIO's URL for the latter)."""
    from kfops.components.feature_store.feast_env import import_feast

    import_feast()
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    types = {"float64": Float64, "int64": Int64}
    customer = Entity(
        name=ENTITY_NAME,
        join_keys=[ENTITY_KEY],
        value_type=ValueType.INT64,
        description="A card holder, by customer_id.",
    )
    source = FileSource(
        name=SOURCE_NAME,
        path=source_path,
        timestamp_field=TIMESTAMP_FIELD,
        s3_endpoint_override=s3_endpoint or None,
        description="An ingested transactions snapshot (kfops data version).",
    )
    views = {
        spec.name: FeatureView(
            name=spec.name,
            entities=[customer],
            ttl=spec.ttl,
            schema=[Field(name=ENTITY_KEY, dtype=Int64)]
            + [Field(name=name, dtype=types[dtype]) for name, dtype in spec.features.items()],
            source=source,
            online=True,
            description=spec.description,
        )
        for spec in FEATURE_VIEWS.values()
    }
    services = [
        FeatureService(name=name, features=[views[v] for v in view_names])
        for name, view_names in FEATURE_SERVICES.items()
    ]
    return [customer, source, *views.values(), *services]
