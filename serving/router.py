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
  challenger (``split`` percent of requests, default all), best effort (``router_shadow.ShadowGate``): only while
  fewer than ``shadow_max_callers`` callers and ``shadow_max_in_flight`` shadow calls are in flight, else after a
  short wait in a bounded queue, else shed and counted. The challenger's answer is compared with the stable one: rows
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
``router_fallbacks_total{reason}``, ``router_shadow_requests_total{outcome}`` (sent, completed, failed, shed),
``router_shadow_shed_total{reason}``, ``router_shadow_in_flight``, ``router_shadow_queued``,
``router_shadow_agreement_total{agree}`` (rows),
``router_shadow_probability_abs_diff_total`` (sum over rows: divide by the agreement rows for the mean),
``router_shadow_mean_abs_probability_diff`` (histogram, one per compared request), ``router_split_percent{mode}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
import time

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from kfops.components.contracts import KfopsError
from kfops.serving import http_client
from kfops.serving.asgi import TOO_LARGE, read_body
from kfops.serving.protocol import parse_json
from kfops.serving.router_bodies import (
    _forward_headers,
    _merge_v1,
    _merge_v2,
    _outcomes,
    _remap_rows,
    _strip_entity,
    _v1_entities,
    _v1_subset,
    _v2_entities,
    _v2_subset,
)
from kfops.serving.router_metrics import RouterMetrics
from kfops.serving.router_shadow import ShadowGate
from kfops.serving.router_types import (
    _METRICS_TYPE,
    _MODEL_PATH,
    _PROBE_SECONDS,
    _V1_PREDICT,
    _V2_INFER,
    CHALLENGER,
    MIXED,
    SHADOW_CLOSE_SECONDS,
    STABLE,
    Answer,
    BadRequest,
    Reply,
    RouterConfig,
    Unreachable,
    Upstream,
    UpstreamFailed,
    _error_text,
    _json,
    bucket,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ the app
class Router:
    """The ASGI app, with a pool of kept-alive connections to each upstream (serving/http_client.py: ``client``
    "own" or "aiohttp"). ``close()`` (or lifespan shut-down) waits briefly for shadow calls, then closes the
    connections."""

    def __init__(self, config: RouterConfig, registry: CollectorRegistry | None = None, client: str = "own") -> None:
        if client not in http_client.CLIENTS:
            raise KfopsError(f"router: the HTTP client must be one of {', '.join(http_client.CLIENTS)}, got {client!r}")
        self.config = config
        self.metrics = RouterMetrics(registry, process=registry is None)
        limit = config.max_connections
        self.stable = Upstream(STABLE, config.stable_url, config.stable_model or config.model_name, limit, client)
        self.challenger = Upstream(
            CHALLENGER, config.challenger_url, config.challenger_model or config.model_name, limit, client
        )
        self.shadows = ShadowGate(
            self._shadow,
            self.metrics,
            max_in_flight=config.shadow_max_in_flight,
            max_callers=config.shadow_max_callers,
            max_queued=config.shadow_max_queued,
            max_delay_s=config.shadow_max_delay_s,
        )
        self._too_large = f"request body is larger than the router's maximum of {config.max_body_bytes:,} bytes"
        self._last_fallback_log = 0.0
        self._unlogged_fallbacks = 0
        self.metrics.split.labels(config.mode).set(config.split)
        self.shadow_logger = None
        if config.shadow_log:
            from kfops.serving.payload_log import PayloadLogger

            self.shadow_logger = PayloadLogger(
                config.shadow_log, f"{config.model_name}-shadow", config.shadow_log_format
            )

    # -------------------------------------------------------------------------------------- lifecycle
    async def close(self) -> None:
        """Shed queued shadow copies, let shadow calls in flight finish (a short grace), then close the connections
        and the shadow log."""
        self.shadows.shed_queued()
        tasks = list(self.shadows.tasks)
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
        """Wait until no shadow copy is queued or in flight (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while (self.shadows.tasks or self.shadows.queue) and time.monotonic() < deadline:
            if self.shadows.tasks:
                await asyncio.wait(list(self.shadows.tasks), timeout=deadline - time.monotonic())
            else:
                await asyncio.sleep(0.01)
                self.shadows.pump()

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
                    body = await read_body(scope, receive, self.config.max_body_bytes)
                    if body is None:
                        return  # the client went away
                    if body is TOO_LARGE:
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
        """What follows an answer once it is written: its shadow copy offered (sent, queued or shed), else queued
        copies sent if the gate has opened. Off the response path, after the caller has the answer."""
        if answer.shadow is not None:
            self.shadows.offer(answer.shadow)
        else:
            self.shadows.pump()

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
            shadows = {"shadow_in_flight": len(self.shadows.tasks), "shadow_queued": len(self.shadows.queue)}
            return _json(200, {**self.config.public(), **shadows})
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
        # The router's concurrency holds shadow copies back (router_shadow.py): callers counted until answered.
        self.shadows.arrive()
        try:
            return await self._score_counted(protocol, request_headers, body)
        finally:
            self.shadows.leave()

    async def _score_counted(self, protocol: str, request_headers, body: bytes) -> Answer:
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
        doc = parse_json(body)
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
    async def _shadow(self, copy: tuple) -> None:
        """One shadow call (``ShadowGate`` decided it goes): the copy to the challenger, the answers compared."""
        protocol, body, headers, stable_body, request_id = copy
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


# ------------------------------------------------------------------------------------------------ server
SERVERS = ("own", "uvicorn")


def serve_router(router: Router, host: str = "127.0.0.1", port: int = 8080, *, watch=None, server: str = "own") -> int:
    """Serve ``router`` on host:port until SIGTERM/SIGINT, on uvloop when installed, with the router's own HTTP/1.1
    server (``server="own"``, serving/http_server.py) or uvicorn over the ASGI face (``"uvicorn"``). ``watch()``,
    polled twice a second, returns a message when the router must stop (a child predictor died): exit code 1.
    Returns an exit code."""
    if server not in SERVERS:
        raise KfopsError(f"router: the HTTP server must be one of {', '.join(SERVERS)}, got {server!r}")
    if server == "uvicorn":
        from kfops.serving.http_server import serve_uvicorn as serve
    else:
        from kfops.serving.http_server import serve

    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(router, host, port, watch=watch))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(router, host, port, watch=watch))
