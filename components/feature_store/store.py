"""The Feast store as the feature stage and serving both read it: open a feature repository, resolve a feature
service's layout from its registry, and how far each view's online data reaches.

A feature repository is a folder holding a ``feature_store.yaml`` (local: the template ``repo/feature_store.yaml``
beside this module, which ``kfops features apply`` copies into the workspace; the cluster's:
``manifests/feature-store/feature_store.yaml``), the YAML file itself, or an ``s3://`` prefix holding one. Feast is
imported inside the functions that use it (it takes seconds to import), always through ``import_feast``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kfops.components import storage
from kfops.components.contracts import KfopsError
from kfops.components.feature_store.feast_env import import_feast

if TYPE_CHECKING:  # annotations only: importing Feast takes seconds
    from feast import FeatureStore

STORE_FILE = "feature_store.yaml"
# The local repository's configuration; in a subfolder, as components/<folder>/*.yaml are compiled components.
LOCAL_TEMPLATE = Path(__file__).with_name("repo") / STORE_FILE
# Reasons a feature comes back missing, as counted in reports and metrics.
REASON_EXPIRED = "expired"  # the latest value is older than the view's TTL
REASON_MISSING = "missing"  # the view has no value for an entity other views know (online)
REASON_NO_HISTORY = "no_history"  # no value at or before the row's time (training sets)
REASON_NULL = "null_value"  # the latest value within the TTL is itself empty (training sets)


# ---------------------------------------------------------------------------------------------------- repository
def _local_copy(uri: str) -> Path:
    """A local folder holding the feature_store.yaml at the ``s3://`` prefix ``uri`` (fetched on every open, so
    a changed file is seen)."""
    yaml_uri = uri if uri.endswith(".yaml") else storage.join(uri, STORE_FILE)
    folder = Path(tempfile.gettempdir(), "kfops-feature-repo-" + hashlib.sha256(yaml_uri.encode()).hexdigest()[:16])
    folder.mkdir(parents=True, exist_ok=True)
    try:
        data = storage.read_bytes(yaml_uri)
    except FileNotFoundError as err:
        raise KfopsError(f"feature repository {uri}: {yaml_uri} does not exist") from err
    partial = folder / f".{STORE_FILE}.{os.getpid()}"
    partial.write_bytes(data)
    os.replace(partial, folder / STORE_FILE)  # another process may be reading it
    return folder


def open_store(repo: str | Path) -> FeatureStore:
    """A Feast FeatureStore for ``repo``: a folder with feature_store.yaml, the YAML file itself, or an ``s3://``
    prefix holding it. Environment variables in the YAML (``${REDIS_HOST}``) are expanded, as Feast does."""
    import_feast()
    from feast import FeatureStore
    from feast.repo_config import FeastConfigError

    repo = str(repo)
    if storage.is_s3(repo):
        folder, yaml_file = _local_copy(repo), None
    else:
        path = Path(repo).expanduser()
        folder, yaml_file = (path.parent, path) if path.suffix in (".yaml", ".yml") else (path, path / STORE_FILE)
        if not yaml_file.exists():
            raise KfopsError(
                f"feature repository {repo}: no {yaml_file.name} there; run `kfops features apply` to create one "
                "or point at a folder holding a Feast feature_store.yaml"
            )
    # Feast's S3 registry reads its endpoint from FEAST_S3_ENDPOINT_URL; the suite's pods set KFOPS_S3_ENDPOINT_URL.
    endpoint = storage.s3_endpoint()
    if endpoint:
        os.environ.setdefault("FEAST_S3_ENDPOINT_URL", endpoint)
    _s3_for_dask()  # sources on MinIO, for materialisation and training sets
    try:
        if yaml_file is None:
            return FeatureStore(repo_path=str(folder))
        return FeatureStore(repo_path=str(folder), fs_yaml_file=yaml_file)
    except FeastConfigError as err:
        raise KfopsError(f"feature repository {repo}: invalid {STORE_FILE}: {err}") from err


_S3_FOR_DASK = False


def _s3_for_dask() -> None:
    """Let Feast's file offline store (materialisation, historical retrieval) read ``s3://`` sources without s3fs.

    That store reads Parquet through dask and fsspec, whose ``s3`` protocol is s3fs; s3fs brings aiobotocore,
    which pins a botocore older than the suite's boto3 needs (s3fs 2026.9 would move botocore to 1.43 under boto3
    1.44), so it cannot be installed beside it. Where s3fs is missing, fsspec's ``s3`` is served by pyarrow's own
    S3 client, with the endpoint Feast passes (the source's s3_endpoint_override) or the suite's."""
    global _S3_FOR_DASK
    if _S3_FOR_DASK:
        return
    try:
        import s3fs  # noqa: F401
    except ImportError:
        import fsspec
        from fsspec.implementations.arrow import ArrowFSWrapper

        class ArrowS3(ArrowFSWrapper):
            protocol = ("s3", "s3a")

            def __init__(self, client_kwargs=None, key=None, secret=None, token=None, **kwargs):
                from pyarrow.fs import S3FileSystem

                options = {}
                endpoint = (client_kwargs or {}).get("endpoint_url") or storage.s3_endpoint()
                if endpoint:
                    scheme, _, host = endpoint.rpartition("://")
                    options.update(endpoint_override=host, scheme=scheme or "https")
                if key and secret:
                    options.update(access_key=key, secret_key=secret, session_token=token)
                super().__init__(S3FileSystem(**options), **kwargs)

        fsspec.register_implementation("s3", ArrowS3, clobber=True)
    _S3_FOR_DASK = True


# ---------------------------------------------------------------------------------------------------- services
@dataclass
class ServiceLayout:
    """What a feature service reads, resolved from the registry: its views with TTLs and features."""

    name: str
    entity_key: str
    views: dict[str, list[str]]  # view -> feature names
    ttls: dict[str, float | None]  # view -> TTL in seconds (None: never expires)
    key_type: str  # "int" or "str"

    @property
    def features(self) -> list[str]:
        return [f for names in self.views.values() for f in names]

    @property
    def refs(self) -> list[str]:
        return [f"{view}:{name}" for view, names in self.views.items() for name in names]

    def view_of(self, feature: str) -> str:
        return next(view for view, names in self.views.items() if feature in names)


def feature_view_names(store: FeatureStore) -> list[str]:
    """The names of the views registered in ``store``, sorted."""
    return sorted(fv.name for fv in store.list_feature_views(allow_cache=True))


def resolve_service(store: FeatureStore, name: str) -> ServiceLayout:
    """The service's layout; an unknown service, or one whose views share a feature name or an entity key that
    differs between views, is a KfopsError naming it."""
    import_feast()
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(name, allow_cache=True)
    except FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        raise KfopsError(
            f"feature service '{name}' is not registered in project '{store.project}'; "
            f"known services: {', '.join(known) or 'none (run `kfops features apply`)'}"
        ) from None
    views: dict[str, list[str]] = {}
    ttls: dict[str, float | None] = {}
    keys, key_types = set(), set()
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name, allow_registry_cache=True)
        views[projection.name_to_use()] = [f.name for f in projection.features]
        ttls[projection.name_to_use()] = view.ttl.total_seconds() if view.ttl and view.ttl.total_seconds() else None
        for column in view.entity_columns:
            keys.add(column.name)
            key_types.add("str" if "STRING" in str(column.dtype).upper() else "int")
    names = [f for fs in views.values() for f in fs]
    duplicated = sorted({f for f in names if names.count(f) > 1})
    if duplicated:
        raise KfopsError(f"feature service '{name}': feature name(s) {duplicated} appear in more than one view")
    if len(keys) != 1:
        raise KfopsError(f"feature service '{name}': its views must share one entity key, they use {sorted(keys)}")
    return ServiceLayout(name, keys.pop(), views, ttls, key_types.pop())


# ---------------------------------------------------------------------------------------------------- freshness
@dataclass
class ViewFreshness:
    name: str
    ttl_seconds: float | None
    materialized_until: str  # ISO time up to which the online store holds the view's data; "" if never
    lag_seconds: float | None  # now - materialized_until; None if never materialised


def utc_time(value: datetime | str | None, what: str) -> datetime | None:
    """``value`` (an aware or naive datetime, an ISO string, or "now") in UTC; None or "" give None. ``what``
    names the value in the error a bad string raises."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if value.strip().lower() == "now":
            return datetime.now(UTC)
        try:
            value = pd.Timestamp(value).to_pydatetime()
        except ValueError as err:
            raise KfopsError(f"{what}: {value!r} is not an ISO time (e.g. 2026-03-31T00:00:00Z)") from err
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def freshness(store: FeatureStore, now: datetime | None = None, views: list[str] | None = None) -> list[ViewFreshness]:
    """How far each view's online data reaches, from the registry's materialisation intervals."""
    now = utc_time(now, "now") or datetime.now(UTC)
    store.refresh_registry()
    out = []
    for fv in sorted(store.list_feature_views(allow_cache=True), key=lambda v: v.name):
        if views and fv.name not in views:
            continue
        ends = [end for _, end in fv.materialization_intervals]
        until = max(ends).astimezone(UTC) if ends else None
        ttl = fv.ttl.total_seconds() if fv.ttl and fv.ttl.total_seconds() else None
        out.append(
            ViewFreshness(
                fv.name,
                ttl,
                until.isoformat() if until else "",
                (now - until).total_seconds() if until else None,
            )
        )
    return out
