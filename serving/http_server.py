"""The router's HTTP/1.1 server: asyncio protocols, requests parsed by httptools, one socket write per answer.

The router does little per request besides moving bytes, so the server's own work counts. Measured with
benchmarks/bench_router.py on 2026-12-04 (benchmarks/RESULTS.md, two runs of 5 and 7 interleaved rounds, 2 shared
vCPUs, 8 clients, the own client upstream): on uvicorn the router added 1.60 and 1.75 ms at p50 over calling the
predictor directly, against 0.88 and 1.20 ms on this server (goal < 1.5 ms), and spent 150 and 141 µs of CPU per
request against 105 and 109 µs. ``serve_uvicorn`` (``kfops route --http-server uvicorn``) keeps that comparison
runnable. This server serves ``Router.handle`` directly and keeps what a front-facing server needs:

- keep-alive and pipelining (answers in request order; reading pauses while 16 requests wait), ``Connection:
  close``, HTTP/1.0, ``Expect: 100-continue``, HEAD;
- limits: a body over the router's ``max_body_bytes`` is answered 400 without being read, and the connection
  closed; a request line and headers over 64 KiB, or bytes that are not HTTP, get a 400 and a close;
- a ``Date`` header; idle connections closed after ``keep_alive_seconds``;
- SIGTERM/SIGINT: stop accepting, finish the requests in progress (up to ``GRACE_SECONDS``), close the router
  (which lets shadow calls finish briefly), return.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import gc
import logging
import signal
import time
from http import HTTPStatus
from urllib.parse import unquote

import httptools

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_PIPELINED = 16
GRACE_SECONDS = 10.0
_SWEEP_SECONDS = 5.0
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_TOO_LARGE = object()  # a queued request whose body was over the limit


class _Date:
    """The Date header value, formatted once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = email.utils.formatdate(second, usegmt=True).encode()
        return self.value


class _State:
    def __init__(self, router, keep_alive_seconds: float) -> None:
        self.router = router
        self.limit = router.config.max_body_bytes
        self.keep_alive_seconds = keep_alive_seconds
        self.connections: set[_Connection] = set()
        self.date = _Date()
        self.stopping = False


class _Connection(asyncio.Protocol):
    def __init__(self, state: _State) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque = collections.deque()
        self.busy = False
        self.paused = False
        self.rejecting = False  # after a refused request: ignore the rest of what the client sends
        self.last_active = self.loop.time()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False

    # ---------------------------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.state.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.state.connections.discard(self)
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.rejecting:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(b"protocol upgrades are not supported")
        except httptools.HttpParserError as err:
            self._refuse(f"invalid HTTP request: {err}".encode())

    # ---------------------------------------------------------------------------------- httptools callbacks
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request line and headers over 64 KiB")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request line and headers over 64 KiB")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        expect = False
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    if int(value) > self.state.limit:
                        self.too_large = True
                except ValueError:
                    pass
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if self.too_large:
            self._enqueue(_TOO_LARGE, keep_alive=False)
            self.rejecting = True  # the body is not read; the connection closes after the answer
            self.transport.pause_reading()
        elif expect:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.state.limit and not self.too_large:  # chunked, or a lying Content-Length
            self.too_large = True
            self.chunks = []
            self._enqueue(_TOO_LARGE, keep_alive=False)
            self.rejecting = True
            self.transport.pause_reading()
        elif not self.too_large:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.too_large:
            return
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._enqueue(body, keep_alive=self.parser.should_keep_alive())

    # ---------------------------------------------------------------------------------- requests
    def _enqueue(self, body, keep_alive: bool) -> None:
        raw = self.url.split(b"?", 1)[0].decode("latin-1")
        path = unquote(raw) if "%" in raw else raw
        method = self.parser.get_method().decode("ascii", "replace")
        self.queue.append((method, path, self.headers, body, keep_alive))
        if len(self.queue) >= MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if not self.busy:
            self.busy = True
            self.loop.create_task(self._serve_queue())

    async def _serve_queue(self) -> None:
        router = self.state.router
        try:
            while self.queue:
                method, path, headers, body, keep_alive = self.queue.popleft()
                if body is _TOO_LARGE:
                    answer = router.too_large()
                else:
                    try:
                        answer = await router.handle(method, path, headers, body)
                    except Exception:
                        log.exception("router failed on %s %s", method, path)
                        answer = _failed(router)
                keep_alive = keep_alive and not self.state.stopping
                self._write(answer, keep_alive, method == "HEAD")
                router.after(answer)
                self.last_active = self.loop.time()
                if not keep_alive:
                    self.transport.close()
                    return
                if self.paused and len(self.queue) < MAX_PIPELINED // 2:
                    self.paused = False
                    self.transport.resume_reading()
        finally:
            self.busy = False

    def _write(self, answer, keep_alive: bool, head_only: bool) -> None:
        if self.transport.is_closing():
            return
        status = answer.status
        lines = [b"HTTP/1.1 %d %s\r\ndate: %s\r\n" % (status, _REASONS.get(status, b""), self.state.date.now())]
        for name, value in answer.headers():
            lines.append(b"%s: %s\r\n" % (name, value))
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if not head_only:
            lines.append(answer.body)
        self.transport.write(b"".join(lines))

    def _refuse(self, message: bytes) -> None:
        """A 400 for bytes that are not a valid request, then close (after the answers already queued)."""
        import orjson

        self.rejecting = True
        body = orjson.dumps({"error": message.decode("utf-8", "replace")})
        if self.busy or self.queue:  # answers still owed on this connection come first
            self.queue.clear()
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()


def _failed(router):
    from kfops.serving.router_types import _json

    return _json(500, {"error": "the router failed on this request (see its log)"})


async def serve(router, host: str, port: int, *, watch=None, keep_alive_seconds: float = 65.0) -> int:
    """Serve ``router`` on host:port until SIGTERM/SIGINT, or until ``watch()`` (polled twice a second) returns
    a message (exit code 1). Returns an exit code (1 when the port cannot be bound)."""
    loop = asyncio.get_running_loop()
    state = _State(router, keep_alive_seconds)
    stop = asyncio.Event()
    exit_code = 0
    try:
        server = await loop.create_server(lambda: _Connection(state), host, port, backlog=2048)
    except OSError as err:
        log.error("cannot listen on %s:%d: %s", host, port, err)
        await router.close()
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Everything imported so far lives as long as the process: keep it out of the collector's full passes, which
    # otherwise stall requests for milliseconds at a time (what the predictor's server does too, app.py).
    gc.collect()
    gc.freeze()
    log.info("router listening on http://%s:%d", host, port)

    async def housekeeping() -> None:
        nonlocal exit_code
        last_sweep = loop.time()
        while not stop.is_set():
            await asyncio.sleep(0.5)
            if watch is not None and (message := watch()):
                log.error("%s: stopping the router", message)
                exit_code = 1
                stop.set()
            if loop.time() - last_sweep >= _SWEEP_SECONDS:
                last_sweep = loop.time()
                idle_before = last_sweep - keep_alive_seconds
                for connection in list(state.connections):
                    if not connection.busy and connection.last_active < idle_before:
                        connection.transport.close()

    keeper = asyncio.ensure_future(housekeeping())
    try:
        await stop.wait()
    finally:
        keeper.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        state.stopping = True
        server.close()
        for connection in list(state.connections):
            if not connection.busy:
                connection.transport.close()
        deadline = loop.time() + GRACE_SECONDS
        while any(c.busy for c in state.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(state.connections):
            connection.transport.close()
        await router.close()
        log.info("router stopped")
    return exit_code


async def serve_uvicorn(router, host: str, port: int, *, watch=None, keep_alive_seconds: float = 65.0) -> int:
    """``serve``'s alternative on uvicorn (the router's ASGI face), the same contract: exit code 1 when the port
    cannot be bound or ``watch()`` returns a message, 0 after SIGTERM/SIGINT."""
    import contextlib

    import uvicorn

    loop = asyncio.get_running_loop()

    class Server(uvicorn.Server):
        # uvicorn re-raises the signal once it has shut down, which would end the process before `kfops serve`
        # stops its child predictors: here a signal only asks the server to stop.
        @contextlib.contextmanager
        def capture_signals(self):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, setattr, self, "should_exit", True)
            try:
                yield
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    config = uvicorn.Config(
        router,
        host=host,
        port=port,
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        backlog=2048,
        timeout_keep_alive=int(keep_alive_seconds),
        timeout_graceful_shutdown=int(GRACE_SECONDS),
    )
    server = Server(config)
    exit_code = 0

    async def watching() -> None:
        nonlocal exit_code
        while not server.should_exit:
            await asyncio.sleep(0.5)
            if watch is not None and (message := watch()):
                log.error("%s: stopping the router", message)
                exit_code = 1
                server.should_exit = True

    keeper = asyncio.ensure_future(watching())
    gc.collect()
    gc.freeze()  # as serve() does
    try:
        await server.serve()
    except SystemExit:  # uvicorn's answer to a port it cannot bind (it has logged why and closed the router)
        return 1
    finally:
        keeper.cancel()
    return exit_code
