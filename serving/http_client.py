"""A small keep-alive HTTP/1.1 client for the router's calls to its two upstreams.

Why not aiohttp: on the router's path the client's own work is most of the router's cost. Measured with
benchmarks/bench_router.py on 2026-12-04 (benchmarks/RESULTS.md, two runs of 5 and 7 interleaved rounds, 2 shared
vCPUs, 8 clients, the own server): with aiohttp's client (``AiohttpPool`` below, ``kfops route --http-client
aiohttp``) the router added 4.84 and 2.20 ms at p50 over calling the predictor directly, against 0.88 and 1.20 ms
with this one (goal < 1.5 ms), and spent 237 and 236 µs of CPU per request against 105 and 109 µs (its request
machinery: cookies, redirects, tracing, URL objects, per-request timeout contexts). This client does only what
the router needs: a pool of kept-alive connections per upstream (asyncio protocols, responses parsed by
httptools, the parser uvicorn uses), one socket write per request (head and body together), a deadline per call,
and one retry when a kept-alive connection turns out to have been closed by the upstream before it answered
anything.

    pool = ConnectionPool("http://10.0.0.5:8080", max_connections=256)
    status, content_type, body = await pool.request(b"POST", b"/v1/models/m:predict", headers, body, timeout=5)
    await pool.close()

``headers`` are pre-encoded header lines (``b"name: value\\r\\n"`` each, joined); Host and Content-Length are
added here. Errors: ``Unreachable`` (no connection, or it was reset before an answer) and ``TimedOut`` (no
full answer within ``timeout`` seconds; that connection is closed), ``BadResponse`` (not HTTP).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """A call that got no valid HTTP answer."""


class Unreachable(UpstreamError):
    pass


class TimedOut(UpstreamError):
    pass


class BadResponse(UpstreamError):
    pass


class _Closed(Exception):
    """The connection closed before the answer was complete; ``started`` when some of it had arrived."""

    def __init__(self, started: bool, exc: BaseException | None) -> None:
        super().__init__(str(exc) if exc else "connection closed")
        self.started = started


class _Connection(asyncio.Protocol):
    __slots__ = ("chunks", "closed", "content_type", "parser", "reusable", "started", "status", "transport", "waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.status = 0
        self.content_type = b""
        self.chunks: list[bytes] = []
        self.started = False
        self.closed = False
        self.reusable = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.transport.close()
            return
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._finish(exception=BadResponse(f"not a valid HTTP answer: {err}"))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._finish(exception=_Closed(self.started, exc))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.chunks = []
        self.content_type = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 12 and name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.reusable = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._finish(result=(self.status, self.content_type or b"application/json", body))

    def _finish(self, result=None, exception: BaseException | None = None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if exception is not None:
                waiter.set_exception(exception)
            else:
                waiter.set_result(result)


class ConnectionPool:
    """Kept-alive connections to one upstream (``http://`` or ``https://`` base URL), at most
    ``max_connections`` busy at once (further calls wait for one)."""

    def __init__(self, base_url: str, max_connections: int = 256) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.host_header = b"Host: " + parts.netloc.encode("idna") + b"\r\n"
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._all: set[_Connection] = set()

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl), timeout
            )
        except TimeoutError:
            raise TimedOut(f"could not connect within {timeout:g} s") from None
        except OSError as err:
            raise Unreachable(f"is unreachable: {err.strerror or err}") from None
        self._all.add(connection)
        return connection

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
            self._all.discard(connection)
        return None

    async def request(
        self, method: bytes, path: bytes, headers: bytes, body: bytes | None, timeout: float
    ) -> tuple[int, bytes, bytes]:
        """(status, content type, body) of one call; raises UpstreamError subclasses."""
        if self._slots is not None:
            await self._slots.acquire()
        try:
            head = b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n" % (
                method,
                path,
                self.host_header,
                headers,
                len(body or b""),
            )
            message = head + body if body else head
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            for attempt in (1, 2):
                connection = self._take_idle()
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(max(0.001, deadline - loop.time()))
                try:
                    return await self._exchange(connection, message, deadline, loop)
                except _Closed as closed:
                    self._all.discard(connection)
                    # A kept-alive connection the upstream had closed: nothing was processed, try a new one.
                    if reused and not closed.started and attempt == 1:
                        continue
                    raise Unreachable(f"closed the connection before answering ({closed})") from None
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if self._slots is not None:
                self._slots.release()

    async def _exchange(self, connection: _Connection, message: bytes, deadline: float, loop):
        waiter = loop.create_future()
        connection.waiter = waiter
        connection.started = False
        connection.transport.write(message)
        timer = loop.call_at(deadline, _expire, connection, waiter)
        try:
            result = await waiter
        except TimedOut:
            self._all.discard(connection)
            raise
        except BaseException:
            # Cancelled, or a broken answer: the connection may be mid-answer; never reuse it.
            connection.waiter = None
            connection.transport.close()
            self._all.discard(connection)
            raise
        finally:
            timer.cancel()
        if connection.reusable and not connection.closed:
            self._idle.append(connection)
        else:
            connection.transport.close()
            self._all.discard(connection)
        return result

    async def close(self) -> None:
        for connection in list(self._all):
            if connection.transport is not None:
                connection.transport.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks


def _expire(connection: _Connection, waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimedOut("did not answer in time"))
        connection.waiter = None
        connection.transport.close()


class AiohttpPool:
    """The same face as ``ConnectionPool`` over an aiohttp ``ClientSession``: the library alternative that
    ``kfops route --http-client aiohttp`` runs and benchmarks/bench_router.py measures against this module."""

    def __init__(self, base_url: str, max_connections: int = 256) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.max_connections = max_connections
        self._session = None
        self._timeouts: dict[float, object] = {}

    def _open(self):
        import aiohttp

        # No cookies, no decompression, no default User-Agent: the router forwards bodies and headers as they are.
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        return self._session

    async def request(
        self, method: bytes, path: bytes, headers: bytes, body: bytes | None, timeout: float
    ) -> tuple[int, bytes, bytes]:
        """(status, content type, body) of one call; raises UpstreamError subclasses."""
        import aiohttp

        session = self._session or self._open()
        limit = self._timeouts.get(timeout)
        if limit is None:
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        fields = {}
        for line in headers.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                fields[name.decode("latin-1")] = value.strip().decode("latin-1")
        url = self.base_url + path.decode("latin-1")
        try:
            async with session.request(method.decode(), url, data=body, headers=fields, timeout=limit) as response:
                data = await response.read()
                content_type = response.headers.get("Content-Type", "application/json").encode("latin-1")
                return response.status, content_type, data
        except TimeoutError:  # aiohttp's ServerTimeoutError is one too
            raise TimedOut("did not answer in time") from None
        except aiohttp.ClientConnectionError as err:
            raise Unreachable(f"is unreachable: {err}") from None
        except aiohttp.ClientError as err:
            raise BadResponse(f"not a valid HTTP answer: {err}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


CLIENTS = {"own": ConnectionPool, "aiohttp": AiohttpPool}
