"""Online features for the predictor: a V1 instance carries an entity id and the request-time features, and the
rest come from the feature store's online store (Feast ``get_online_features``), by the same definitions the
training set was joined with (the feature-store seam, ``kfops.components.feature_store``).

``{"instances": [{"customer_id": 100123, "amount": 912.5, "merchant_category": "jewelry", ...}]}``: the
features of the feature service (``fraud_model``: account_age_days, customer_age, avg_amount_30d,
transactions_last_24h) are fetched for customer 100123 and merged in before validation; values the request
carries win. The entity key is not a model feature: it is dropped, or kept for the payload log when the model's
training data had it (``keep_key``, set by the predictor). List instances and V2 requests
are not enriched: they carry every feature themselves.

- **Unknown entity**: an id that no view of the service has is a 400 (``InvalidInput``) naming it.
- **Older than the TTL, or absent from one view**: those features are missing (null), imputed as the model's
  FeatureSpec says (the training median), and counted in ``kfops_feature_fallbacks_total{reason}``
  (``expired``, ``missing``): the same rule a training set's point-in-time join applies.
- **Latency budget**: store reads run in one worker thread, never on the event loop, each bounded by
  ``timeout_ms``. Past it the request fails with a 500 naming the budget (``on_timeout="error"``, the
  default: a fraud score on blank customer features is not silently served), or its looked-up features are
  imputed and counted as ``reason="timeout"`` (``on_timeout="impute"``). A read that finishes late still fills
  the cache. More than ``max_pending`` reads waiting counts as over budget at once.
- **Cache**: an LRU of ``cache_size`` entities whose entries live ``cache_ttl_s`` seconds (unknown entities
  too, so a flood of bad ids does not reach the store). TTLs are applied when an entry is read, so a cached
  value never outlives its feature view's TTL. Hits are served on the event loop with no thread hop.

Why a thread for sqlite, which answers a 1-entity read in about 0.3 ms (benchmarks/bench_features.py): a
budget cannot interrupt a call running on the event loop, and a Redis or remote store can stall for longer
than any budget; the hop costs tens of microseconds and a cache hit skips it.

Metrics (on the serving registry, so on ``/metrics``): ``kfops_feature_lookup_seconds{model}`` (store reads),
``kfops_feature_lookup_cache_total{model,result}`` (hit/miss per entity), ``kfops_feature_fallbacks_total{model,
feature_view,reason}``, ``kfops_feature_unknown_entities_total{model}``, ``kfops_feature_lookup_timeouts_total
{model}``, and, from the registry (re-read at most every ``FRESHNESS_REFRESH_SECONDS``, off the request path),
the freshness gauges ``kfops_feature_materialization_lag_seconds{model,feature_view}``,
``kfops_feature_materialization_end_timestamp_seconds{model,feature_view}`` and ``kfops_feature_view_ttl_seconds
{model,feature_view}`` that the KfopsFeatureMaterialization* alerts read.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 50.0
DEFAULT_CACHE_TTL_S = 30.0
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_MAX_PENDING = 64
ON_TIMEOUT = ("error", "impute")
FRESHNESS_REFRESH_SECONDS = 30.0
REASON_TIMEOUT = "timeout"


@functools.cache
def _metrics():
    """The lookup's collectors, created once per process on the serving registry."""
    from prometheus_client import Counter, Histogram

    from kfops.serving.metrics import LATENCY_BUCKETS, SERVING_REGISTRY

    SERVING_REGISTRY.register(_FreshnessCollector())
    return {
        "seconds": Histogram(
            "kfops_feature_lookup_seconds",
            "Seconds per online-store read (cache misses), including the wait for the worker thread.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=SERVING_REGISTRY,
        ),
        "cache": Counter(
            "kfops_feature_lookup_cache_total",
            "Entities looked up, by whether the cache answered (hit) or the store (miss).",
            ["model", "result"],
            registry=SERVING_REGISTRY,
        ),
        "fallbacks": Counter(
            "kfops_feature_fallbacks_total",
            "Rows whose features from a view were served missing (imputed): expired, missing or timeout.",
            ["model", "feature_view", "reason"],
            registry=SERVING_REGISTRY,
        ),
        "unknown": Counter(
            "kfops_feature_unknown_entities_total",
            "Entity ids no feature view knows (answered 400).",
            ["model"],
            registry=SERVING_REGISTRY,
        ),
        "timeouts": Counter(
            "kfops_feature_lookup_timeouts_total",
            "Online-store reads that exceeded the latency budget.",
            ["model"],
            registry=SERVING_REGISTRY,
        ),
    }


_LOOKUPS: weakref.WeakSet = weakref.WeakSet()


class _FreshnessCollector:
    """Exports each loaded lookup's view freshness (lag and end time of the last materialisation)."""

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        lag = GaugeMetricFamily(
            "kfops_feature_materialization_lag_seconds",
            "Seconds between now and the end of the feature view's last materialisation.",
            labels=["model", "feature_view"],
        )
        end = GaugeMetricFamily(
            "kfops_feature_materialization_end_timestamp_seconds",
            "Time up to which the feature view's data is in the online store.",
            labels=["model", "feature_view"],
        )
        ttl = GaugeMetricFamily(
            "kfops_feature_view_ttl_seconds",
            "The feature view's TTL in seconds (0: none).",
            labels=["model", "feature_view"],
        )
        now = time.time()
        for lookup in list(_LOOKUPS):
            for view, until in lookup.materialized_until().items():
                if until is not None:
                    lag.add_metric([lookup.model, view], now - until)
                    end.add_metric([lookup.model, view], until)
            for view, seconds in lookup.layout.ttls.items():
                ttl.add_metric([lookup.model, view], seconds or 0.0)
        yield lag
        yield end
        yield ttl

    def describe(self):
        return []


class FeatureLookupTimeout(Exception):
    """The online store did not answer within the budget."""


class FeatureLookup:
    """Fetches a feature service's online features for V1 instances that carry the entity key."""

    def __init__(
        self,
        repo: str,
        service: str = "",
        entity_key: str = "",
        *,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
        on_timeout: str = "error",
        max_pending: int = DEFAULT_MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from kfops.components.contracts import KfopsError

        if timeout_ms <= 0:
            raise KfopsError(f"feature lookup: timeout_ms must be positive, got {timeout_ms}")
        if cache_ttl_s < 0 or cache_size < 0:
            raise KfopsError(f"feature lookup: cache TTL and size must be >= 0, got {cache_ttl_s} and {cache_size}")
        if on_timeout not in ON_TIMEOUT:
            raise KfopsError(f"feature lookup: on_timeout must be one of {ON_TIMEOUT}, got {on_timeout!r}")
        self.repo = repo
        self.service = service
        self.entity_key = entity_key
        self.timeout_s = timeout_ms / 1000.0
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self.on_timeout = on_timeout
        self.max_pending = max_pending
        self.clock = clock  # the "now" TTLs are judged against (tests and replays pin it)
        self.model = ""
        self.keep_key = False  # leave the entity key in the rows (the predictor logs it beside the features)
        self.layout = None  # kfops.components.feature_store.store.ServiceLayout, once loaded
        self._store = None
        self._executor: ThreadPoolExecutor | None = None
        self._cache: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._pending = 0
        self._freshness: dict[str, float | None] = {}
        self._freshness_at = 0.0
        self._freshness_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ lifecycle
    def load(self, model_features: list[str], model: str = "") -> None:
        """Open the store and resolve the service; the model must take every feature the service supplies
        (else it was trained on other definitions, and serving it from these would be skew)."""
        from kfops.components.contracts import KfopsError
        from kfops.components.feature_store.definitions import FRAUD_SERVICE
        from kfops.components.feature_store.store import open_store, resolve_service

        self.service = self.service or FRAUD_SERVICE
        self.model = model
        self._store = open_store(self.repo)
        layout = resolve_service(self._store, self.service)
        if self.entity_key and self.entity_key != layout.entity_key:
            raise KfopsError(
                f"feature lookup: --entity-key {self.entity_key!r} is not the key of service '{self.service}' "
                f"({layout.entity_key!r})"
            )
        foreign = [f for f in layout.features if f not in model_features]
        if foreign:
            raise KfopsError(
                f"feature service '{self.service}' supplies {foreign}, which the model does not take (its features: "
                f"{model_features}); serve the model with the service it was trained with"
            )
        if layout.entity_key in model_features:
            raise KfopsError(f"entity key '{layout.entity_key}' is a model feature; it cannot also be the lookup key")
        self.entity_key = layout.entity_key
        self.layout = layout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-lookup")
        self._refresh_freshness()
        _metrics()
        _LOOKUPS.add(self)
        log.info(
            "feature lookup: service '%s' (%s) from %s by '%s', budget %.0f ms, cache %d x %.0f s",
            self.service,
            ", ".join(f"{v}: {', '.join(fs)}" for v, fs in layout.views.items()),
            self.repo,
            self.entity_key,
            self.timeout_s * 1000,
            self.cache_size,
            self.cache_ttl_s,
        )

    def close(self) -> None:
        _LOOKUPS.discard(self)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ------------------------------------------------------------------------------------------ freshness
    def _refresh_freshness(self) -> None:
        from kfops.components.feature_store.store import freshness

        try:
            views = freshness(self._store, views=list(self.layout.views))
        except Exception:  # a registry that cannot be read keeps the last values; serving goes on
            log.warning("feature lookup: cannot read materialisation times from the registry", exc_info=True)
            return
        from datetime import datetime

        with self._freshness_lock:
            self._freshness = {
                v.name: datetime.fromisoformat(v.materialized_until).timestamp() if v.materialized_until else None
                for v in views
            }
            self._freshness_at = time.monotonic()

    def materialized_until(self) -> dict[str, float | None]:
        """View -> end of its last materialisation (epoch seconds); re-read in the worker thread when stale."""
        executor = self._executor
        if executor is not None and time.monotonic() - self._freshness_at > FRESHNESS_REFRESH_SECONDS:
            self._freshness_at = time.monotonic()  # one refresh in flight at a time
            executor.submit(self._refresh_freshness)
        with self._freshness_lock:
            return dict(self._freshness)

    # ------------------------------------------------------------------------------------------ reads
    def entity_id(self, value: Any, where: str):
        """The entity id in a request as the store keys it; InvalidInput for anything else."""
        from kserve.errors import InvalidInput

        if self.layout.key_type == "str":
            if isinstance(value, str) and value:
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
        else:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and math.isfinite(value) and value == int(value):
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
        kind = "a string" if self.layout.key_type == "str" else "an integer"
        raise InvalidInput(
            f"{where}: entity key '{self.entity_key}' must be {kind}, got {type(value).__name__} {value!r}"
        )

    def _read(self, ids: list) -> tuple[list, float]:
        """Runs in the worker thread: the store's rows for ``ids`` and the seconds the read took."""
        from kfops.components.feature_store.online import read_online

        started = time.perf_counter()
        rows = read_online(self._store, self.layout, ids)
        return rows, time.perf_counter() - started

    def fetch_now(self, ids: list) -> dict:
        """Synchronous read (no cache, no budget): id -> OnlineRow. For tools and tests."""
        rows, _ = self._read(list(ids))
        return dict(zip(ids, rows, strict=True))

    def _cached(self, entity, now: float):
        entry = self._cache.get(entity)
        if entry is None:
            return None
        expires, row = entry
        if expires < now:
            del self._cache[entity]
            return None
        self._cache.move_to_end(entity)
        return row

    def _remember(self, ids: list, rows: list) -> None:
        if self.cache_size == 0 or self.cache_ttl_s == 0:
            return
        expires = time.monotonic() + self.cache_ttl_s
        for entity, row in zip(ids, rows, strict=True):
            self._cache[entity] = (expires, row)
            self._cache.move_to_end(entity)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def rows(self, ids: list) -> dict:
        """id -> OnlineRow for distinct ``ids``: cache hits at once, misses in one store read within the budget.
        Raises FeatureLookupTimeout past the budget."""
        now = time.monotonic()
        found, missing = {}, []
        for entity in ids:
            row = self._cached(entity, now)
            if row is None:
                missing.append(entity)
            else:
                found[entity] = row
        counters = _metrics()
        if found:
            counters["cache"].labels(self.model, "hit").inc(len(found))
        if not missing:
            return found
        counters["cache"].labels(self.model, "miss").inc(len(missing))
        if self._pending >= self.max_pending or self._executor is None:
            counters["timeouts"].labels(self.model).inc()
            raise FeatureLookupTimeout(f"{self._pending} feature-store reads already waiting")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        future = loop.run_in_executor(self._executor, self._read, missing)
        self._pending += 1

        def settle(done: asyncio.Future) -> None:
            self._pending -= 1
            if not done.cancelled() and done.exception() is None:
                self._remember(missing, done.result()[0])  # a late answer still fills the cache

        future.add_done_callback(settle)
        finished, _ = await asyncio.wait({future}, timeout=self.timeout_s)
        if not finished:
            counters["timeouts"].labels(self.model).inc()
            raise FeatureLookupTimeout(
                f"the online store did not answer for {len(missing)} entities within {self.timeout_s * 1000:.0f} ms"
            )
        counters["seconds"].labels(self.model).observe(time.perf_counter() - started)
        try:
            rows, _ = future.result()
        except Exception as err:  # the store failed (unreachable Redis, a locked file): a 500 that says so
            from kserve.errors import InferenceError

            raise InferenceError(f"feature lookup failed ({self.repo}): {type(err).__name__}: {err}") from err
        found.update(zip(missing, rows, strict=True))
        return found

    # ------------------------------------------------------------------------------------------ requests
    async def enrich_v1(self, body: Any) -> Any:
        """``body`` with the looked-up features merged into each object instance that has the entity key. What is
        not a V1 body of object instances is returned as it is, for the validator to judge."""
        from kserve.errors import InferenceError, InvalidInput

        from kfops.components.feature_store.online import apply_ttls

        if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
            return body
        instances = body["instances"]
        key, features = self.entity_key, self.layout.features
        wanted: dict[int, Any] = {}  # instance index -> entity id, for rows that lack some looked-up feature
        for i, row in enumerate(instances):
            if not isinstance(row, dict):
                continue
            if key in row:
                if any(f not in row for f in features):
                    wanted[i] = self.entity_id(row[key], f"instances[{i}]")
            else:
                absent = [f for f in features if f not in row]
                if absent:
                    raise InvalidInput(
                        f"instances[{i}] has no '{key}' to look up features {absent} with: send the entity key "
                        "or those features"
                    )
        if not any(isinstance(row, dict) and key in row for row in instances):
            return body
        counters = _metrics()
        values_by_id: dict[Any, dict] = {}
        if wanted:
            ids = list(dict.fromkeys(wanted.values()))
            try:
                rows = await self.rows(ids)
                now = self.clock()
                for entity in ids:
                    row = rows[entity]
                    if not row.known:
                        continue
                    values, fallbacks = apply_ttls(row, self.layout, now)
                    for view, reason in fallbacks:
                        counters["fallbacks"].labels(self.model, view, reason).inc()
                    values_by_id[entity] = values
                unknown = [(i, e) for i, e in wanted.items() if e not in values_by_id]
            except FeatureLookupTimeout as err:
                if self.on_timeout == "error":
                    raise InferenceError(
                        f"feature lookup exceeded its latency budget of {self.timeout_s * 1000:.0f} ms: {err} "
                        f"(feature store {self.repo})"
                    ) from None
                blank = dict.fromkeys(features)
                for view in self.layout.views:
                    counters["fallbacks"].labels(self.model, view, REASON_TIMEOUT).inc(len(wanted))
                values_by_id = dict.fromkeys(wanted.values(), blank)
                unknown = []
            if unknown:
                counters["unknown"].labels(self.model).inc(len({e for _, e in unknown}))
                i, entity = unknown[0]
                more = f" (and {len(unknown) - 1} more row(s))" if len(unknown) > 1 else ""
                raise InvalidInput(
                    f"instances[{i}]: {key} {entity!r} is unknown to the feature store: no feature view of service "
                    f"'{self.service}' has it{more}; check the id, or send the features {features} with the request"
                )
        merged = []
        for i, row in enumerate(instances):
            if not isinstance(row, dict) or key not in row:
                merged.append(row)
                continue
            out = dict(row) if self.keep_key else {k: v for k, v in row.items() if k != key}
            if i in wanted:
                for name, value in values_by_id[wanted[i]].items():
                    out.setdefault(name, value)  # what the request sends wins
            merged.append(out)
        return {**body, "instances": merged}


# ---------------------------------------------------------------------------------------------------- CLI
def add_feature_arguments(parser, *, entity_key: bool = True) -> None:
    """The ``kfops serve`` flags of the lookup (only argparse here: Feast loads when the server starts).
    ``entity_key=False`` where the parser already has ``--entity-key`` (kfops serve's router options define it
    with the same meaning: the row field holding the entity id)."""
    group = parser.add_argument_group("online features (Feast)")
    group.add_argument(
        "--feature-repo",
        help="feature repository (a folder or s3:// prefix with feature_store.yaml): V1 instances that carry the "
        "entity key get the feature service's features from its online store",
    )
    group.add_argument("--feature-service", default="", help="feature service to serve (default: fraud_model)")
    if entity_key:
        group.add_argument("--entity-key", default="", help="the entity key in requests (default: the service's)")
    group.add_argument(
        "--feature-timeout-ms", type=float, default=DEFAULT_TIMEOUT_MS, help="latency budget of one store read"
    )
    group.add_argument(
        "--on-feature-timeout",
        choices=ON_TIMEOUT,
        default="error",
        help="past the budget: fail the request (500), or impute the looked-up features and count it",
    )
    group.add_argument(
        "--feature-cache-seconds", type=float, default=DEFAULT_CACHE_TTL_S, help="how long an entity stays cached"
    )
    group.add_argument("--feature-cache-size", type=int, default=DEFAULT_CACHE_SIZE, help="entities cached (0: none)")


def feature_lookup_from_args(args) -> FeatureLookup | None:
    """The lookup the flags ask for, or None without --feature-repo."""
    if not getattr(args, "feature_repo", None):
        return None
    return FeatureLookup(
        args.feature_repo,
        args.feature_service,
        getattr(args, "entity_key", "") or "",
        timeout_ms=args.feature_timeout_ms,
        cache_ttl_s=args.feature_cache_seconds,
        cache_size=args.feature_cache_size,
        on_timeout=args.on_feature_timeout,
    )


def feature_argv(args) -> list[str]:
    """The flags again, for a child predictor (``kfops serve --challenger`` starts two)."""
    if not getattr(args, "feature_repo", None):
        return []
    argv = ["--feature-repo", args.feature_repo]
    for flag, value in (
        ("--feature-service", args.feature_service),
        ("--entity-key", getattr(args, "entity_key", "") or ""),
        ("--feature-timeout-ms", args.feature_timeout_ms),
        ("--on-feature-timeout", args.on_feature_timeout),
        ("--feature-cache-seconds", args.feature_cache_seconds),
        ("--feature-cache-size", args.feature_cache_size),
    ):
        if value != "":
            argv += [flag, str(value)]
    return argv
