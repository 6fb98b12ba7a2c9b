"""Shadow, A/B and canary routing in front of two predictors, ``stable`` and ``challenger``.

KServe has no shadow mode and its InferenceGraph Splitter is random, not sticky; this router is a small ASGI
app that fronts two predictor servers (``kfops serve`` processes or predictor InferenceServices) and proxies
KServe's V1 ``POST /v1/models/NAME:predict`` and V2 ``POST /v2/models/NAME/infer`` to them:

- ``ab``: sticky by entity. Each row's ``entity_key`` field (V1 object instances; in V2 the input named
  ``entity_key``) goes through the reference document's md5 hash (``bucket``); a row whose bucket is below
  ``split`` goes to the challenger. A row without the field falls back to the request's ``x-entity-id`` header;
  a row with neither is a 400 naming the field. One request whose rows fall in both variants becomes two
  upstream calls (concurrently) whose answers are merged back in the original order.
- ``shadow``: the caller gets the stable answer; afterwards, off the response path, the same body goes to the
  challenger (``split`` percent of requests, default all), at most ``shadow_max_in_flight`` at a time (beyond
  that a shadow call is dropped and counted). The challenger's answer is compared with the stable one: rows
  whose predicted classes agree, and the mean absolute probability difference, go to metrics and optionally
  to a shadow log (the payload logger's JSONL/Parquet files). Challenger errors are counted, never seen.
- ``canary``: ``split`` percent of requests, drawn at random, go to the challenger; when it answers 5xx, times
  out or cannot be reached, the request is sent to stable instead (a fallback, counted), so the caller sees no
  error from the challenger. A 4xx from the challenger is the caller's bad input and is returned as it is.

In ``ab`` mode the same fallback applies to the rows assigned to the challenger. Stable is never replaced by the
challenger: when stable fails the caller gets 502 (stable answered 5xx; 503 when stable said 503) or 503 (stable
unreachable or timed out) with ``{"error": ...}`` naming the upstream.

Every answer carries ``x-kfops-variant: stable | challenger | mixed`` (``mixed``: an ``ab`` batch whose rows went
to both; each V1 row's ``model_version`` says which, and a V2 answer lists the challenger's rows in its
``parameters``). Bodies are the predictors' own. The router reads a body only when it must (``ab`` mode, or an
``entity_key`` to strip); otherwise the bytes are forwarded untouched. The entity key is removed from rows
before they are forwarded (a predictor rejects unknown features) unless ``forward_entity_key`` is set.

Hashing, exactly the reference document's ``ABTestingFramework.get_model_for_user``::

    hash_value = int(hashlib.md5(str(user_id).encode()).hexdigest(), 16)
    assignment = (hash_value % 100) / 100.0
    model_a if assignment < split_ratio else model_b

with ``model_a`` = the challenger and ``split_ratio`` = ``split / 100``: ``bucket(entity) < split``. ``str()`` is
of the value as JSON decodes it (``42`` and ``"42"`` are the same entity; ``42.0`` is another).

Metrics, on the router's own ``/metrics`` (a registry per Router):
``router_requests_total{variant,status_code}``, ``router_request_latency_seconds{variant}``,
``router_rows_total{variant}`` (ab), ``router_upstream_requests_total{variant,outcome}`` (status code, ``timeout``
or ``unreachable``; shadow calls included), ``router_upstream_latency_seconds{variant}``,
``router_fallbacks_total{reason}``, ``router_shadow_requests_total{outcome}`` (sent, completed, failed, dropped),
``router_shadow_in_flight``, ``router_shadow_agreement_total{agree}`` (rows),
``router_shadow_probability_abs_diff_total`` (sum over rows: divide by the agreement rows for the mean),
``router_shadow_mean_abs_probability_diff`` (histogram, one per compared request), ``router_split_percent{mode}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import itertools
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kfops.components.contracts import KfopsError
from kfops.serving import http_client

log = logging.getLogger(__name__)

MODES = ("ab", "shadow", "canary")
STABLE, CHALLENGER, MIXED = "stable", "challenger", "mixed"
DEFAULT_SPLIT = {"ab": 50.0, "canary": 10.0, "shadow": 100.0}
ENTITY_HEADER = "x-entity-id"
VARIANT_HEADER = b"x-kfops-variant"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DIFF_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SHADOW_CLOSE_SECONDS = 2.0  # on shutdown, how long shadow calls still in flight may finish
_PROBE_SECONDS = 2.0
_V1_PREDICT = re.compile(r"^/v1/models/([^/:]+):predict$")
_V2_INFER = re.compile(r"^/v2/models/([^/:]+)(?:/versions/[^/]+)?/infer$")
_MODEL_PATH = re.compile(r"^/v([12])/models/([^/:]+)(|/ready)$")  # metadata and readiness, forwarded to stable
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Hop-by-hop and per-connection headers are not forwarded (RFC 9110 7.6.1), nor content-length (recomputed)
# and accept-encoding (the router hands bodies on as they are).
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"expect",
        b"accept-encoding",
    }
)
_V1_ROW = re.compile(r"instances\[(\d+)\]")
_V2_ROW = re.compile(r"\brow (\d+)\b")
_SHOWN = 60
# Request ids the router makes up: a random per-process prefix and a counter (unique, and cheaper than uuid4).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def bucket(entity) -> int:
    """The entity's bucket, 0..99: ``int(md5(str(entity)).hexdigest(), 16) % 100`` (the reference document's)."""
    digest = hashlib.md5(str(entity).encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big") % 100


def assign(entity, split: float) -> str:
    """The variant an entity is assigned to in ``ab`` mode with ``split`` percent to the challenger."""
    return CHALLENGER if bucket(entity) < split else STABLE


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class RouterConfig:
    """What the router does. ``split`` is the challenger's percent (0..100): of entities (ab), of requests
    (canary), of requests mirrored (shadow); None takes the mode's default (ab 50, canary 10, shadow 100)."""

    stable_url: str
    challenger_url: str
    mode: str
    split: float | None = None
    model_name: str = "model"  # the name callers use: /v1/models/NAME:predict
    stable_model: str = ""  # the name the stable predictor serves under (default: model_name)
    challenger_model: str = ""
    entity_key: str = ""
    forward_entity_key: bool = False
    timeout_s: float = 30.0  # a stable call
    challenger_timeout_s: float = 5.0  # a challenger call (canary, ab, shadow): past it, fall back / count
    shadow_max_in_flight: int = 64
    shadow_log: str = ""  # folder or s3:// prefix for shadow comparison records
    shadow_log_format: str = "jsonl"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_connections: int = 256  # per upstream

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise KfopsError(f"router: --mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        split = DEFAULT_SPLIT[self.mode] if self.split is None else self.split
        if isinstance(split, bool) or not isinstance(split, int | float) or not 0 <= split <= 100:
            raise KfopsError(f"router: --split is the challenger's percent, between 0 and 100, got {split!r}")
        object.__setattr__(self, "split", float(split))
        for flag, url in (("--stable", self.stable_url), ("--challenger", self.challenger_url)):
            parts = urlsplit(url or "")
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                raise KfopsError(f"router: {flag} must be an http(s)://host[:port] base URL, got {url!r}")
        object.__setattr__(self, "stable_url", self.stable_url.rstrip("/"))
        object.__setattr__(self, "challenger_url", self.challenger_url.rstrip("/"))
        for flag, name in (
            ("--name", self.model_name),
            ("--stable-model", self.stable_model or self.model_name),
            ("--challenger-model", self.challenger_model or self.model_name),
        ):
            if not _NAME.match(name or ""):
                raise KfopsError(f"router: {flag} must be a model name (letters, digits, '.', '_', '-'), got {name!r}")
        if self.mode == "ab" and not self.entity_key:
            raise KfopsError("router: --mode ab needs --entity-key FIELD: the row field that identifies the entity")
        for flag, seconds in (("timeout", self.timeout_s), ("challenger timeout", self.challenger_timeout_s)):
            if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
                raise KfopsError(f"router: the {flag} must be a positive number of seconds, got {seconds!r}")
        if self.shadow_max_in_flight < 1:
            raise KfopsError(f"router: --shadow-max-in-flight must be >= 1, got {self.shadow_max_in_flight}")
        if self.shadow_log_format not in ("jsonl", "parquet"):
            raise KfopsError(f"router: --shadow-log-format must be jsonl or parquet, got {self.shadow_log_format!r}")
        if self.max_body_bytes < 1 or self.max_connections < 1:
            raise KfopsError("router: the body limit and the connection limit must be positive")

    def public(self) -> dict:
        """The settings as JSON (what GET /router answers)."""
        data = dataclasses.asdict(self)
        data["stable_model"] = self.stable_model or self.model_name
        data["challenger_model"] = self.challenger_model or self.model_name
        return data


# ------------------------------------------------------------------------------------------------ metrics
class RouterMetrics:
    """The router's Prometheus collectors, on a registry of their own (one per Router)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "router_requests_total",
            "Answers to callers, by the variant that served them (stable, challenger, mixed; none: the router "
            "answered itself) and status code.",
            ["variant", "status_code"],
            registry=r,
        )
        self.latency = Histogram(
            "router_request_latency_seconds",
            "Seconds from a request's arrival to its answer, by serving variant.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter("router_rows_total", "Rows routed in ab mode, by variant.", ["variant"], registry=r)
        self.upstream = Counter(
            "router_upstream_requests_total",
            "Calls to each upstream (shadow calls included), by outcome: status code, timeout or unreachable.",
            ["variant", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "router_upstream_latency_seconds",
            "Seconds per upstream call, by variant.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "router_fallbacks_total",
            "Challenger calls that failed and were served by stable instead, by reason (5xx, timeout, unreachable).",
            ["reason"],
            registry=r,
        )
        self.shadow = Counter(
            "router_shadow_requests_total",
            "Shadow calls to the challenger: sent, completed, failed, dropped (too many in flight).",
            ["outcome"],
            registry=r,
        )
        self.shadow_in_flight = Gauge("router_shadow_in_flight", "Shadow calls now in flight.", registry=r)
        self.agreement = Counter(
            "router_shadow_agreement_total",
            "Shadowed rows whose predicted class agreed (agree=true) or not between stable and challenger.",
            ["agree"],
            registry=r,
        )
        self.diff_total = Counter(
            "router_shadow_probability_abs_diff_total",
            "Sum over shadowed rows of |stable probability - challenger probability|.",
            registry=r,
        )
        self.mean_diff = Histogram(
            "router_shadow_mean_abs_probability_diff",
            "Per shadowed request: the mean |stable probability - challenger probability| of its rows.",
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.split = Gauge("router_split_percent", "The challenger's percent, by mode.", ["mode"], registry=r)
        if process:
            ProcessCollector(registry=r)
        self._children: dict = {}

    def child(self, metric, *labels):
        """A labelled child, cached: ``labels()`` takes a lock and builds a key on every call."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (0.0 when absent): for tests and diagnostics."""
        return float(self.registry.get_sample_value(name, labels or {}) or 0.0)


# ------------------------------------------------------------------------------------------------ upstreams
@dataclass
class Reply:
    """An upstream's answer (any status)."""

    status: int
    body: bytes
    content_type: bytes
    variant: str


_JSON = b"application/json"
_METRICS_TYPE = CONTENT_TYPE_LATEST.encode()


@dataclass
class Answer:
    """What the router answers a caller: status, body, content type, the variant that served it, the request
    id, and the shadow call to make once the answer is written (shadow mode)."""

    status: int
    body: bytes
    content_type: bytes = _JSON
    variant: str | None = None
    request_id: str | None = None
    shadow: tuple | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", self.content_type), (b"content-length", b"%d" % len(self.body))]
        if self.variant is not None:
            headers.append((VARIANT_HEADER, self.variant.encode()))
        if self.request_id:
            headers.append((b"x-request-id", self.request_id.encode("latin-1")))
        return headers


def _json(status: int, payload: dict, variant: str | None = None, request_id: str | None = None) -> Answer:
    return Answer(status, orjson.dumps(payload), _JSON, variant, request_id)


class BadRequest(Exception):
    """The caller's request cannot be routed: a 400 with this message."""


class Unreachable(Exception):
    """An upstream call that got no HTTP answer (connection failed, reset, or timed out)."""

    def __init__(self, variant: str, url: str, reason: str, detail: str) -> None:
        super().__init__(f"{variant} upstream {url} {detail}")
        self.variant = variant
        self.reason = reason  # "timeout" or "unreachable"


class UpstreamFailed(Exception):
    """Stable could not serve the request: the caller gets ``status`` (502/503) with this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Upstream:
    """One predictor: its base URL, the model name it serves under, and a pool of kept-alive connections."""

    def __init__(self, variant: str, base_url: str, model: str, max_connections: int) -> None:
        self.variant = variant
        self.base_url = base_url
        self.model = model
        self.paths = {"v1": f"/v1/models/{model}:predict".encode(), "v2": f"/v2/models/{model}/infer".encode()}
        self.ready_path = f"/v2/models/{model}/ready".encode()
        self.pool = http_client.ConnectionPool(base_url, max_connections)

    def url(self, path: bytes) -> str:
        return self.base_url + path.decode()


def _error_text(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])[:500]
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------------ the app
class Router:
    """The ASGI app, with a pool of kept-alive connections to each upstream (serving/http_client.py).
    ``close()`` (or lifespan shut-down) waits briefly for shadow calls, then closes the connections."""

    def __init__(self, config: RouterConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = RouterMetrics(registry, process=registry is None)
        limit = config.max_connections
        self.stable = Upstream(STABLE, config.stable_url, config.stable_model or config.model_name, limit)
        self.challenger = Upstream(
            CHALLENGER, config.challenger_url, config.challenger_model or config.model_name, limit
        )
        self._shadow_tasks: set[asyncio.Task] = set()
        self._too_large = f"request body is larger than the router's maximum of {config.max_body_bytes:,} bytes"
        self._last_fallback_log = 0.0
        self._unlogged_fallbacks = 0
        self.metrics.split.labels(config.mode).set(config.split)
        self.metrics.shadow_in_flight.set_function(lambda: len(self._shadow_tasks))
        self.shadow_logger = None
        if config.shadow_log:
            from kfops.serving.payload_log import PayloadLogger

            self.shadow_logger = PayloadLogger(
                config.shadow_log, f"{config.model_name}-shadow", config.shadow_log_format
            )

    # -------------------------------------------------------------------------------------- lifecycle
    async def close(self) -> None:
        """Let shadow calls in flight finish (a short grace), then close the connections and the shadow log."""
        tasks = list(self._shadow_tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHADOW_CLOSE_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self.stable.pool.close()
        await self.challenger.pool.close()
        if self.shadow_logger is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.shadow_logger.close)

    async def wait_for_shadows(self, timeout: float = 10.0) -> None:
        """Wait until no shadow call is in flight (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while self._shadow_tasks and time.monotonic() < deadline:
            await asyncio.wait(list(self._shadow_tasks), timeout=deadline - time.monotonic())

    # -------------------------------------------------------------------------------------- ASGI
    async def __call__(self, scope, receive, send) -> None:
        """The ASGI face (any ASGI server; tests use httpx's ASGI transport). ``serve_router`` runs the router on
        its own lean HTTP/1.1 server (serving/http_server.py) through ``handle`` instead."""
        kind = scope["type"]
        if kind == "http":
            started = False
            try:
                answer = None
                body = None
                if scope["method"] == "POST":
                    body = await _read_body(scope, receive, self.config.max_body_bytes)
                    if body is None:
                        return  # the client went away
                    if body is False:
                        answer = self.too_large()
                if answer is None:
                    answer = await self.handle(scope["method"], scope["path"], scope.get("headers", ()), body)
                started = True
                await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers()})
                await send({"type": "http.response.body", "body": answer.body})
                self.after(answer)
            except Exception:  # a bug here must not become a traceback or a dropped connection
                log.exception("router failed on %s %s", scope.get("method"), scope.get("path"))
                if not started:
                    failed = _json(500, {"error": "the router failed on this request (see its log)"})
                    await send({"type": "http.response.start", "status": 500, "headers": failed.headers()})
                    await send({"type": "http.response.body", "body": failed.body})
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # -------------------------------------------------------------------------------------- requests
    def too_large(self) -> Answer:
        """The answer to a body over ``max_body_bytes`` (the server stops reading it)."""
        self.metrics.child(self.metrics.requests, "none", "400").inc()
        return _json(400, {"error": self._too_large})

    def after(self, answer: Answer) -> None:
        """What follows an answer once it is written: the shadow call, off the response path."""
        if answer.shadow is not None:
            self._launch_shadow(*answer.shadow)

    async def handle(self, method: str, path: str, headers, body: bytes | None) -> Answer:
        """The answer to one request: ``headers`` as ASGI's (lower-case name, value) byte pairs, ``body`` the
        whole request body (POST)."""
        if method == "POST":
            match = _V1_PREDICT.match(path)
            protocol = "v1"
            if match is None:
                match, protocol = _V2_INFER.match(path), "v2"
            if match is None:
                return _json(404, {"error": f"no route for POST {path}"})
            if match.group(1) != self.config.model_name:
                return self._not_this_model(match.group(1))
            return await self._score(protocol, headers, body or b"")
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": f"method {method} is not allowed on {path}"})
        if path == "/metrics":
            return Answer(200, generate_latest(self.metrics.registry), _METRICS_TYPE)
        if path == "/v2/health/live":
            return _json(200, {"live": True})
        if path == "/":
            return _json(200, {"status": "alive"})
        if path == "/v2/health/ready":
            return await self._ready()
        if path == "/router":
            return _json(200, {**self.config.public(), "shadow_in_flight": len(self._shadow_tasks)})
        if (match := _MODEL_PATH.match(path)) is not None:
            if match.group(2) != self.config.model_name:
                return self._not_this_model(match.group(2))
            # model metadata and readiness: the stable predictor's
            return await self._forward_get(f"/v{match.group(1)}/models/{self.stable.model}{match.group(3)}")
        if path == "/v2":
            return await self._forward_get("/v2")
        return _json(404, {"error": f"no route for GET {path}"})

    def _not_this_model(self, name: str) -> Answer:
        message = f"model '{name}' is not served here: this router serves '{self.config.model_name}'"
        return _json(404, {"error": message})

    async def _ready(self) -> Answer:
        path = self.stable.ready_path
        try:
            reply = await self._call(self.stable, path, None, b"", _PROBE_SECONDS, b"GET", False)
        except Unreachable as err:
            return _json(503, {"ready": False, "error": str(err)})
        if reply.status == 200:
            return _json(200, {"ready": True})
        message = f"stable upstream {self.stable.url(path)} answered {reply.status}: {_error_text(reply.body)}"
        return _json(503, {"ready": False, "error": message})

    async def _forward_get(self, path: str) -> Answer:
        try:
            reply = await self._call(self.stable, path.encode(), None, b"", _PROBE_SECONDS, b"GET", False)
        except Unreachable as err:
            return _json(503, {"error": str(err)})
        return Answer(reply.status, reply.body, reply.content_type, STABLE)

    # -------------------------------------------------------------------------------------- scoring
    async def _score(self, protocol: str, request_headers, body: bytes) -> Answer:
        started = time.perf_counter()
        m = self.metrics
        headers, request_id, entity_header = _forward_headers(request_headers)
        try:
            if self.config.mode == "ab":
                reply = await self._ab(protocol, body, headers, entity_header)
            else:
                if self.config.entity_key and not self.config.forward_entity_key:
                    body = _strip_entity(protocol, body, self.config.entity_key)
                if self.config.mode == "canary":
                    reply = await self._canary(protocol, body, headers)
                else:
                    reply = await self._stable(protocol, body, headers)
        except BadRequest as err:
            log.info("bad request: %s", err)
            m.child(m.requests, "none", "400").inc()
            return _json(400, {"error": str(err)})
        except UpstreamFailed as err:
            log.warning("%s", err)
            m.child(m.requests, STABLE, str(err.status)).inc()
            m.child(m.latency, STABLE).observe(time.perf_counter() - started)
            return _json(err.status, {"error": str(err)}, STABLE, request_id)
        m.child(m.requests, reply.variant, str(reply.status)).inc()
        m.child(m.latency, reply.variant).observe(time.perf_counter() - started)
        answer = Answer(reply.status, reply.body, reply.content_type, reply.variant, request_id)
        if (
            self.config.mode == "shadow"
            and reply.status < 300
            and (self.config.split >= 100 or random.random() * 100 < self.config.split)
        ):
            answer.shadow = (protocol, body, headers, reply.body, request_id)
        return answer

    async def _call(
        self,
        upstream: Upstream,
        path: bytes,
        body: bytes | None,
        headers: bytes,
        timeout: float,
        method: bytes = b"POST",
        observe: bool = True,
    ) -> Reply:
        """One HTTP call; any status is a Reply, no answer at all raises Unreachable."""
        started = time.perf_counter()
        m = self.metrics
        try:
            status, content_type, data = await upstream.pool.request(method, path, headers, body, timeout)
        except http_client.UpstreamError as err:
            reason = "timeout" if isinstance(err, http_client.TimedOut) else "unreachable"
            detail = f"did not answer within {timeout:g} s" if reason == "timeout" else str(err)
            if observe:
                m.child(m.upstream, upstream.variant, reason).inc()
                m.child(m.upstream_latency, upstream.variant).observe(time.perf_counter() - started)
            raise Unreachable(upstream.variant, upstream.url(path), reason, detail) from None
        if observe:
            m.child(m.upstream, upstream.variant, str(status)).inc()
            m.child(m.upstream_latency, upstream.variant).observe(time.perf_counter() - started)
        return Reply(status, data, content_type, upstream.variant)

    async def _stable(self, protocol: str, body: bytes, headers: bytes) -> Reply:
        """Stable's answer; its failures become UpstreamFailed (there is nothing to fall back to)."""
        path = self.stable.paths[protocol]
        try:
            reply = await self._call(self.stable, path, body, headers, self.config.timeout_s)
        except Unreachable as err:
            raise UpstreamFailed(503, str(err)) from None
        if reply.status >= 500:
            raise UpstreamFailed(
                503 if reply.status == 503 else 502,
                f"stable upstream {self.stable.url(path)} answered {reply.status}: {_error_text(reply.body)}",
            )
        return reply

    async def _challenger_or_none(self, protocol: str, body: bytes, headers: bytes) -> Reply | None:
        """The challenger's answer, or None after a failure that falls back to stable (counted)."""
        path = self.challenger.paths[protocol]
        try:
            reply = await self._call(self.challenger, path, body, headers, self.config.challenger_timeout_s)
        except Unreachable as err:
            self._count_fallback(err.reason, str(err))
            return None
        if reply.status >= 500:
            url = self.challenger.url(path)
            self._count_fallback("5xx", f"challenger upstream {url} answered {reply.status}: {_error_text(reply.body)}")
            return None
        return reply

    def _count_fallback(self, reason: str, message: str) -> None:
        self.metrics.child(self.metrics.fallbacks, reason).inc()
        # One warning per 10 s at most: a failing canary under load would otherwise flood the log.
        self._unlogged_fallbacks += 1
        now = time.monotonic()
        if now - self._last_fallback_log >= 10:
            log.warning(
                "falling back to stable (%d time(s) since the last warning): %s", self._unlogged_fallbacks, message
            )
            self._last_fallback_log, self._unlogged_fallbacks = now, 0

    async def _canary(self, protocol: str, body: bytes, headers: bytes) -> Reply:
        split = self.config.split
        if split > 0 and (split >= 100 or random.random() * 100 < split):
            reply = await self._challenger_or_none(protocol, body, headers)
            if reply is not None:
                return reply
        return await self._stable(protocol, body, headers)

    # -------------------------------------------------------------------------------------- ab
    async def _ab(self, protocol: str, body: bytes, headers: bytes, entity_header: str | None) -> Reply:
        config = self.config
        doc = _parse_json(body)
        strip = not config.forward_entity_key
        if protocol == "v1":
            entities, stripped = _v1_entities(doc, config.entity_key, strip, entity_header)
        else:
            entities, stripped = _v2_entities(doc, config.entity_key, strip, entity_header)
        n = len(entities)
        if n == 0:  # nothing to assign: stable answers (an empty batch is its 400 to give)
            return await self._stable(protocol, orjson.dumps(doc) if stripped else body, headers)
        split = config.split
        to_challenger = [bucket(e) < split for e in entities]
        challenger_rows = [i for i, c in enumerate(to_challenger) if c]
        m = self.metrics
        if len(challenger_rows) in (0, n):  # one variant: the whole body goes there
            whole = orjson.dumps(doc) if stripped else body
            if not challenger_rows:
                m.child(m.rows, STABLE).inc(n)
                return await self._stable(protocol, whole, headers)
            reply = await self._challenger_or_none(protocol, whole, headers)
            if reply is not None:
                m.child(m.rows, CHALLENGER).inc(n)
                return reply
            m.child(m.rows, STABLE).inc(n)
            return await self._stable(protocol, whole, headers)
        stable_rows = [i for i, c in enumerate(to_challenger) if not c]
        subset = _v1_subset if protocol == "v1" else _v2_subset
        stable_body = orjson.dumps(subset(doc, stable_rows, n, config.entity_key))
        challenger_body = orjson.dumps(subset(doc, challenger_rows, n, config.entity_key))
        stable_reply, challenger_reply = await asyncio.gather(
            self._stable(protocol, stable_body, headers),
            self._challenger_or_none(protocol, challenger_body, headers),
            return_exceptions=True,
        )
        if isinstance(stable_reply, BaseException):
            raise stable_reply
        if isinstance(challenger_reply, BaseException):
            raise challenger_reply
        if challenger_reply is None:  # fell back: stable scores the challenger's rows too
            challenger_reply = await self._stable(protocol, challenger_body, headers)
        for reply, rows in ((stable_reply, stable_rows), (challenger_reply, challenger_rows)):
            if reply.status >= 300:  # the caller's bad input, in that part: its row numbers become the caller's
                return dataclasses.replace(reply, body=_remap_rows(reply.body, rows, protocol))
        m.child(m.rows, STABLE).inc(len(stable_rows))
        m.child(m.rows, challenger_reply.variant).inc(len(challenger_rows))
        variant = MIXED if challenger_reply.variant == CHALLENGER else STABLE
        merge = _merge_v1 if protocol == "v1" else _merge_v2
        merged = merge(((stable_rows, stable_reply), (challenger_rows, challenger_reply)), n, self)
        return Reply(200, merged, b"application/json", variant)

    def upstream_of(self, reply: Reply) -> Upstream:
        return self.stable if reply.variant == STABLE else self.challenger

    # -------------------------------------------------------------------------------------- shadow
    def _launch_shadow(self, protocol: str, body: bytes, headers: bytes, stable_body: bytes, request_id: str) -> None:
        m = self.metrics
        if len(self._shadow_tasks) >= self.config.shadow_max_in_flight:
            m.child(m.shadow, "dropped").inc()
            return
        m.child(m.shadow, "sent").inc()
        task = asyncio.get_running_loop().create_task(self._shadow(protocol, body, headers, stable_body, request_id))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, protocol: str, body: bytes, headers: bytes, stable_body: bytes, request_id: str) -> None:
        m = self.metrics
        path = self.challenger.paths[protocol]
        try:
            try:
                reply = await self._call(self.challenger, path, body, headers, self.config.challenger_timeout_s)
            except Unreachable as err:
                m.child(m.shadow, "failed").inc()
                log.debug("shadow call failed: %s", err)
                return
            if reply.status >= 300:
                m.child(m.shadow, "failed").inc()
                log.debug("shadow call answered %d: %s", reply.status, _error_text(reply.body))
                return
            try:
                stable_rows, stable_version = _outcomes(protocol, stable_body)
                challenger_rows, challenger_version = _outcomes(protocol, reply.body)
                if len(stable_rows) != len(challenger_rows):
                    raise ValueError(f"{len(challenger_rows)} rows from the challenger, {len(stable_rows)} from stable")
            except (ValueError, TypeError, KeyError) as err:
                m.child(m.shadow, "failed").inc()
                log.warning("shadow answers could not be compared: %s", err)
                return
            m.child(m.shadow, "completed").inc()
            agree, diff_sum = 0, 0.0
            for (s_label, s_prob), (c_label, c_prob) in zip(stable_rows, challenger_rows, strict=True):
                agree += s_label == c_label
                if s_prob is not None and c_prob is not None:
                    diff_sum += abs(s_prob - c_prob)
            n = len(stable_rows)
            m.child(m.agreement, "true").inc(agree)
            m.child(m.agreement, "false").inc(n - agree)
            m.diff_total.inc(diff_sum)
            if n:
                m.mean_diff.observe(diff_sum / n)
            if self.shadow_logger is not None:
                self._log_shadow(request_id, stable_rows, stable_version, challenger_rows, challenger_version)
        except asyncio.CancelledError:
            m.child(m.shadow, "failed").inc()
            raise
        except Exception:  # a shadow call must never surface anywhere but here
            m.child(m.shadow, "failed").inc()
            log.exception("shadow call failed")

    def _log_shadow(self, request_id, stable_rows, stable_version, challenger_rows, challenger_version) -> None:
        timestamp = dt.datetime.now(dt.UTC).isoformat()
        records = [
            {
                "request_id": request_id,
                "timestamp": timestamp,
                "row": i,
                "stable_version": stable_version,
                "challenger_version": challenger_version,
                "stable_prediction": s_label,
                "challenger_prediction": c_label,
                "stable_probability": s_prob,
                "challenger_probability": c_prob,
                "agree": s_label == c_label,
            }
            for i, ((s_label, s_prob), (c_label, c_prob)) in enumerate(zip(stable_rows, challenger_rows, strict=True))
        ]
        self.shadow_logger.log(records)


# ------------------------------------------------------------------------------------------------ helpers
async def _read_body(scope, receive, limit: int):
    """The whole request body; False past ``limit`` bytes; None if the client disconnected."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                if int(value) > limit:
                    return False
            except ValueError:
                pass
            break
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return False
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _forward_headers(request_headers) -> tuple[bytes, str, str | None]:
    """The caller's headers to send upstream, as header lines (content-type defaulting to JSON; an x-request-id
    made up when the caller sent none, so both predictors' payload logs carry the same id), the request id, and
    the x-entity-id header."""
    lines = []
    request_id = entity = None
    has_type = False
    for key, value in request_headers:
        if key in _NOT_FORWARDED or b"\r" in value or b"\n" in value:
            continue
        if key == b"x-request-id":
            request_id = value.decode("latin-1")
        elif key == b"x-entity-id":
            entity = value.decode("latin-1")
        elif key == b"content-type":
            has_type = True
        lines.append(b"%s: %s\r\n" % (key, value))
    if not has_type:
        lines.append(b"content-type: application/json\r\n")
    if not request_id:
        request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        lines.append(b"x-request-id: %s\r\n" % request_id.encode())
    return b"".join(lines), request_id, entity or None


def _parse_json(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"the body is not valid JSON ({err})") from None


def _entity_value(value, where: str, key: str):
    """A usable entity id, or None for a missing one (absent, null or empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        kind = type(value).__name__
        raise BadRequest(f"{where}: entity field '{key}' must be a string or a number, got {kind} {_show(value)}")
    return value


def _no_entity(where: str, key: str) -> BadRequest:
    return BadRequest(
        f"{where} has no '{key}' (and the request no {ENTITY_HEADER} header): the router's ab mode assigns each "
        f"row to stable or challenger by its '{key}'"
    )


def _v1_instances(doc) -> list:
    if not isinstance(doc, dict):
        raise BadRequest(
            f"request body must be a JSON object with an 'instances' list, got a JSON {type(doc).__name__}"
        )
    instances = doc.get("instances")
    if not isinstance(instances, list):
        got = "no 'instances' field" if "instances" not in doc else f"'instances' is a {type(instances).__name__}"
        raise BadRequest(f"request body must have an 'instances' list of rows ({got})")
    return instances


def _v1_entities(doc, key: str, strip: bool, header: str | None) -> tuple[list, bool]:
    """Each row's entity id (the header's where a row has none); strips the field from the rows if asked."""
    instances = _v1_instances(doc)
    entities = []
    stripped = False
    for i, row in enumerate(instances):
        value = None
        if isinstance(row, dict) and key in row:
            value = _entity_value(row.pop(key) if strip else row[key], f"instances[{i}]", key)
            stripped = stripped or strip
        if value is None:
            if header is None:
                raise _no_entity(f"instances[{i}]", key)
            value = header
        entities.append(value)
    return entities, stripped


def _v2_inputs(doc) -> list:
    if not isinstance(doc, dict):
        raise BadRequest(f"request body must be a JSON object with an 'inputs' list, got a JSON {type(doc).__name__}")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise BadRequest("request body must have an 'inputs' list of objects (one per input)")
    return inputs


def _flat_rows(data: list, name: str) -> list:
    flat = []
    for value in data:
        if isinstance(value, list):  # [[v], [v], ...] for shape [n, 1]
            if len(value) != 1:
                raise BadRequest(f"input '{name}': nested rows must hold one value each, got {_show(value)}")
            value = value[0]
        flat.append(value)
    return flat


def _v2_entities(doc, key: str, strip: bool, header: str | None) -> tuple[list, bool]:
    inputs = _v2_inputs(doc)
    found = [i for i, item in enumerate(inputs) if item.get("name") == key]
    if not found:
        if header is None:
            raise BadRequest(
                f"the request has no input named '{key}' (and no {ENTITY_HEADER} header): the router's ab mode "
                f"assigns each row to stable or challenger by its '{key}'"
            )
        # No entity input: every row is the header's entity. The row count comes from the first input.
        first = inputs[0].get("data") if inputs else None
        n = len(first) if isinstance(first, list) else 1
        return [header] * n, False
    if len(found) > 1:
        raise BadRequest(f"input '{key}' appears more than once")
    entity_input = inputs[found[0]]
    data = entity_input.get("data")
    if not isinstance(data, list):
        raise BadRequest(f"input '{key}': 'data' must be a list of entity ids (binary tensor data cannot be routed)")
    entities = []
    for i, value in enumerate(_flat_rows(data, key)):
        value = _entity_value(value, f"input '{key}' row {i}", key)
        if value is None:
            if header is None:
                raise _no_entity(f"input '{key}' row {i}", key)
            value = header
        entities.append(value)
    if strip:
        doc["inputs"] = [item for j, item in enumerate(inputs) if j != found[0]]
    return entities, strip


def _strip_entity(protocol: str, body: bytes, key: str) -> bytes:
    """The body without the entity field (canary and shadow with an entity key); the body as is when it has
    none or is not what the predictor takes (the predictor names the problem)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    changed = False
    if protocol == "v1" and isinstance(doc, dict) and isinstance(doc.get("instances"), list):
        for row in doc["instances"]:
            if isinstance(row, dict) and key in row:
                del row[key]
                changed = True
    elif protocol == "v2" and isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
        kept = [i for i in doc["inputs"] if not (isinstance(i, dict) and i.get("name") == key)]
        changed = len(kept) != len(doc["inputs"])
        doc["inputs"] = kept
    return orjson.dumps(doc) if changed else body


def _v1_subset(doc: dict, rows: list[int], n: int, key: str) -> dict:
    instances = doc["instances"]
    return {**doc, "instances": [instances[i] for i in rows]}


def _v2_subset(doc: dict, rows: list[int], n: int, key: str) -> dict:
    inputs = []
    for item in doc["inputs"]:
        name = item.get("name")
        data = item.get("data")
        if not isinstance(data, list):
            raise BadRequest(
                f"input '{name}': 'data' must be a list (binary tensor data cannot be split by the router)"
            )
        if len(data) % n:
            raise BadRequest(
                f"input '{name}' holds {len(data)} values: not the same number for each of the {n} rows "
                f"of input '{key}'"
            )
        width = len(data) // n
        picked = [data[i] for i in rows] if width == 1 else [v for i in rows for v in data[i * width : (i + 1) * width]]
        shape = item.get("shape")
        tail = shape[1:] if isinstance(shape, list) and shape else []
        inputs.append({**item, "data": picked, "shape": [len(rows), *tail]})
    return {**doc, "inputs": inputs}


def _remap_rows(body: bytes, rows: list[int], protocol: str) -> bytes:
    """An error answer for part of a request, its row numbers turned into the caller's."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return body

    def original(match: re.Match) -> str:
        i = int(match.group(1))
        number = str(rows[i]) if i < len(rows) else match.group(1)
        return match.group(0).replace(match.group(1), number)

    doc["error"] = (_V1_ROW if protocol == "v1" else _V2_ROW).sub(original, doc["error"])
    return orjson.dumps(doc)


def _bad_answer(router: Router, reply: Reply, why: str) -> UpstreamFailed:
    upstream = router.upstream_of(reply)
    message = f"{reply.variant} upstream {upstream.base_url} gave an answer the router cannot merge: {why}"
    return UpstreamFailed(502, message)


def _merge_v1(parts, n: int, router: Router) -> bytes:
    merged: list = [None] * n
    for rows, reply in parts:
        try:
            predictions = orjson.loads(reply.body)["predictions"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise _bad_answer(router, reply, "no 'predictions' list") from None
        if not isinstance(predictions, list) or len(predictions) != len(rows):
            raise _bad_answer(router, reply, f"not {len(rows)} predictions")
        for i, prediction in zip(rows, predictions, strict=True):
            merged[i] = prediction
    return orjson.dumps({"predictions": merged})


def _merge_v2(parts, n: int, router: Router) -> bytes:
    docs = []
    for rows, reply in parts:
        try:
            doc = orjson.loads(reply.body)
            outputs = {o["name"]: o for o in doc["outputs"]}
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise _bad_answer(router, reply, "no 'outputs' list of named outputs") from None
        docs.append((rows, reply, doc, outputs))
    _, _, base, base_outputs = docs[0]
    merged_outputs = []
    for name, output in base_outputs.items():
        slots: list = [None] * n
        for rows, reply, _, outputs in docs:
            data = outputs.get(name, {}).get("data")
            if not isinstance(data, list) or len(data) % len(rows):
                raise _bad_answer(router, reply, f"output '{name}' missing or not {len(rows)} rows")
            width = len(data) // len(rows)
            for j, i in enumerate(rows):
                slots[i] = data[j * width : (j + 1) * width]
        shape = output.get("shape")
        tail = shape[1:] if isinstance(shape, list) and shape else []
        merged_outputs.append({**output, "data": [v for row in slots for v in row], "shape": [n, *tail]})
    challenger_rows, challenger_reply, challenger_doc, _ = docs[1]
    answer = {**base, "outputs": merged_outputs}
    if challenger_reply.variant == CHALLENGER:
        parameters = dict(base.get("parameters") or {})
        parameters["challenger_rows"] = challenger_rows
        parameters["challenger_model_version"] = challenger_doc.get("model_version")
        answer["parameters"] = parameters
    return orjson.dumps(answer)


def _outcomes(protocol: str, body: bytes) -> tuple[list[tuple[str, float | None]], str]:
    """(predicted class, probability) per row, and the model version, from a predictor's answer."""
    doc = orjson.loads(body)
    if protocol == "v1":
        rows = []
        version = ""
        for p in doc["predictions"]:
            probability = p.get("probability")
            rows.append((str(p["prediction"]), float(probability) if probability is not None else None))
            version = str(p.get("model_version", version))
        return rows, version
    outputs = {o["name"]: o for o in doc["outputs"]}
    labels = [str(v) for v in outputs["prediction"]["data"]]
    probabilities = outputs.get("probability", {}).get("data") or [None] * len(labels)
    version = doc.get("model_version") or (doc.get("parameters") or {}).get("model_version") or ""
    return [(label, None if p is None else float(p)) for label, p in zip(labels, probabilities, strict=True)], version


# ------------------------------------------------------------------------------------------------ server
def serve_router(router: Router, host: str = "127.0.0.1", port: int = 8080, *, watch=None) -> int:
    """Serve ``router`` on host:port with the router's own HTTP/1.1 server (serving/http_server.py, on uvloop
    when installed) until SIGTERM/SIGINT. ``watch()``, polled twice a second, returns a message when the router
    must stop (a child predictor died): exit code 1. Returns an exit code."""
    from kfops.serving.http_server import serve

    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(router, host, port, watch=watch))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(router, host, port, watch=watch))
