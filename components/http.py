"""The one HTTP client of the suite's synchronous callers (Prometheus queries and /metrics scrapes in rollout, the
drift webhook in monitor, the router CLI's readiness poll): urllib3's pooled, thread-safe ``PoolManager``, a
timeout on every call, JSON helpers, and errors that name the method, the URL and what went wrong.

    from kfops.components import http

    answer = http.get_json("http://prometheus:9090/api/v1/query", params={"query": "up"}, timeout=5)
    http.post_json("https://hooks.example/x", {"text": "drift"})
    text = http.get("http://10.0.0.5:8080/metrics").text()

Errors, all ``HTTPError`` (a ``KfopsError``) with ``url``, ``status`` (None when no answer came), ``reason`` and the
answer's ``body`` (b"" when none):

- ``Unreachable``: no answer (connection refused, name not resolved, reset); ``TimedOut`` (a subclass): no answer
  within the timeout;
- ``StatusError``: an answer whose status is not 2xx (after at most ``MAX_REDIRECTS`` redirects);
- ``NotJSON``: a 2xx answer a JSON helper could not decode.

No retries: a caller that polls or extends a window decides itself when to ask again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import urllib3

from kfops.components.contracts import KfopsError

DEFAULT_TIMEOUT = 10.0
MAX_REDIRECTS = 3  # what urllib followed before this module; webhooks sometimes sit behind one
_SHOWN = 200  # bytes of an unexpected answer quoted in a message


class HTTPError(KfopsError):
    """A call without a usable answer; the message names the method and URL."""

    def __init__(self, message: str, url: str, status: int | None = None, reason: str = "", body: bytes = b"") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.reason = reason
        self.body = body


class Unreachable(HTTPError):
    """No answer at all."""


class TimedOut(Unreachable):
    """No answer within the timeout."""


class StatusError(HTTPError):
    """An answer with a status that is not 2xx."""


class NotJSON(HTTPError):
    """A 2xx answer whose body is not JSON."""


@dataclass
class Response:
    """A 2xx answer, read whole."""

    method: str
    url: str
    status: int
    reason: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as err:
            raise NotJSON(
                f"{self.method} {self.url} answered something that is not JSON: {self.body[:_SHOWN]!r}",
                self.url,
                self.status,
                self.reason,
                self.body,
            ) from err


class Client:
    """A pool of kept-alive connections per host (``maxsize`` each), shared by the threads that use it."""

    def __init__(
        self, timeout: float = DEFAULT_TIMEOUT, headers: Mapping[str, str] | None = None, maxsize: int = 4
    ) -> None:
        self.timeout = timeout
        self.headers = dict(headers or {})
        retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=MAX_REDIRECTS)
        self.pool = urllib3.PoolManager(maxsize=maxsize, retries=retries)

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """The 2xx answer of one call; raises ``Unreachable``/``TimedOut`` or ``StatusError``."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise HTTPError(f"not an http(s) URL: {url!r}", str(url))
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        seconds = self.timeout if timeout is None else timeout
        try:
            answer = self.pool.request(
                method,
                url,
                body=body,
                headers={**self.headers, **(headers or {})},
                timeout=urllib3.Timeout(total=seconds),
            )
        except urllib3.exceptions.MaxRetryError as err:  # what urllib3 wraps a failed connection or read in
            raise _no_answer(method, url, err.reason or err, seconds) from err
        except urllib3.exceptions.HTTPError as err:
            raise _no_answer(method, url, err, seconds) from err
        reason = answer.reason or ""
        if not 200 <= answer.status < 300:
            shown = answer.data[:_SHOWN].decode("utf-8", "replace").strip()
            raise StatusError(
                f"{method} {url} answered HTTP {answer.status} {reason}".rstrip() + (f": {shown}" if shown else ""),
                url,
                answer.status,
                reason,
                answer.data,
            )
        return Response(method, url, answer.status, reason, answer.data, dict(answer.headers))

    def get(self, url: str, **kwargs: Any) -> Response:
        return self.request("GET", url, **kwargs)

    def get_json(self, url: str, **kwargs: Any) -> Any:
        """The decoded JSON of a GET (``Accept: application/json``)."""
        headers = {"Accept": "application/json", **(kwargs.pop("headers", None) or {})}
        return self.request("GET", url, headers=headers, **kwargs).json()

    def post_json(self, url: str, payload: Any, **kwargs: Any) -> Response:
        """POST ``payload`` as JSON; the answer (its ``json()`` when the caller wants the body)."""
        headers = {"Content-Type": "application/json", **(kwargs.pop("headers", None) or {})}
        body = json.dumps(payload).encode("utf-8")
        return self.request("POST", url, body=body, headers=headers, **kwargs)


def _no_answer(method: str, url: str, err: BaseException, seconds: float) -> Unreachable:
    # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test for it before the timeouts.
    if isinstance(err, urllib3.exceptions.NewConnectionError):
        cause = err.__cause__ or err.__context__
        reason = str(cause) if isinstance(cause, OSError) else str(err).split(": ", 1)[-1]
        return Unreachable(f"{method} {url}: cannot connect ({reason})", url, reason=reason)
    if isinstance(err, urllib3.exceptions.TimeoutError):
        reason = f"no answer within {seconds:g} s"
        return TimedOut(f"{method} {url}: {reason}", url, reason=reason)
    return Unreachable(f"{method} {url}: {err}", url, reason=str(err))


_shared: Client | None = None


def client() -> Client:
    """The process's shared client (created on first use)."""
    global _shared
    if _shared is None:
        _shared = Client()
    return _shared


def get(url: str, **kwargs: Any) -> Response:
    """``Client.get`` on the shared client."""
    return client().get(url, **kwargs)


def get_json(url: str, **kwargs: Any) -> Any:
    """``Client.get_json`` on the shared client."""
    return client().get_json(url, **kwargs)


def post_json(url: str, payload: Any, **kwargs: Any) -> Response:
    """``Client.post_json`` on the shared client."""
    return client().post_json(url, payload, **kwargs)
