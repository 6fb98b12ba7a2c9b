"""What the router is made of: its modes, variants and the sticky A/B assignment (``bucket``, ``assign``), its
configuration (``RouterConfig``), and the upstream records and errors (``Upstream``, ``Reply``, ``Answer``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kfops.components.contracts import KfopsError
from kfops.serving import http_client
from kfops.serving.protocol import BadBody

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
    shadow_max_callers: int = 1  # a shadow copy goes only while fewer callers are in flight (router_shadow.py)
    shadow_max_queued: int = 64  # copies waiting for the gate; beyond it they are shed
    shadow_max_delay_s: float = 1.0  # a queued copy older than this is shed
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
        for flag, count in (
            ("--shadow-max-in-flight", self.shadow_max_in_flight),
            ("--shadow-max-callers", self.shadow_max_callers),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise KfopsError(f"router: {flag} must be a whole number >= 1, got {count!r}")
        queued = self.shadow_max_queued
        if isinstance(queued, bool) or not isinstance(queued, int) or queued < 0:
            raise KfopsError(f"router: --shadow-max-queued must be a whole number >= 0, got {queued!r}")
        delay = self.shadow_max_delay_s
        if not (isinstance(delay, int | float) and math.isfinite(delay) and delay > 0):
            raise KfopsError(f"router: --shadow-max-delay-ms must be a positive number, got {delay!r}")
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


# The caller's request cannot be routed: a 400 with this message (the protocol's rules and the router's own).
BadRequest = BadBody


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

    def __init__(self, variant: str, base_url: str, model: str, max_connections: int, client: str = "own") -> None:
        self.variant = variant
        self.base_url = base_url
        self.model = model
        self.paths = {"v1": f"/v1/models/{model}:predict".encode(), "v2": f"/v2/models/{model}/infer".encode()}
        self.ready_path = f"/v2/models/{model}/ready".encode()
        self.pool = http_client.CLIENTS[client](base_url, max_connections)

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
