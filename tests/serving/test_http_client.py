"""The router's upstream client (serving/http_client.py) against small real HTTP servers on 127.0.0.1 that
misbehave on purpose: connections closed while idle, answers cut short, garbage, silence; and its aiohttp
alternative (``AiohttpPool``, ``kfops route --http-client aiohttp``) with the same face and errors."""

from __future__ import annotations

import asyncio

import pytest

from kfops.serving.http_client import AiohttpPool, BadResponse, ConnectionPool, TimedOut, Unreachable

from .upstreams import free_port

OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


async def _server(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _read_request(reader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    return head + await reader.readexactly(length)


def test_keeps_connections_alive_and_sends_one_request_per_write():
    connections = []
    requests = []

    async def handler(reader, writer):
        connections.append(writer)
        try:
            while True:
                requests.append(await _read_request(reader))
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server, url = await _server(handler)
        pool = ConnectionPool(url)
        try:
            answers = [await pool.request(b"POST", b"/v1/x", b"x-a: 1\r\n", b'{"i":1}', 5) for _ in range(5)]
        finally:
            await pool.close()
            server.close()
        return answers

    answers = asyncio.run(main())
    assert answers == [(200, b"application/json", b'{"ok":true}')] * 5
    assert len(connections) == 1
    first = requests[0]
    assert first.startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:") and b"x-a: 1\r\n" in first
    assert first.endswith(b'Content-Length: 7\r\n\r\n{"i":1}')


def test_a_kept_alive_connection_closed_by_the_server_is_retried_once_on_a_new_one():
    served = []

    async def handler(reader, writer):
        await _read_request(reader)
        served.append(1)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # closes the idle connection, as a server's keep-alive timeout does

    async def main():
        server, url = await _server(handler)
        pool = ConnectionPool(url)
        try:
            first = await pool.request(b"POST", b"/", b"", b"{}", 5)
            await asyncio.sleep(0.2)
            second = await pool.request(b"POST", b"/", b"", b"{}", 5)
        finally:
            await pool.close()
            server.close()
        return first, second

    first, second = asyncio.run(main())
    assert first[0] == second[0] == 200 and len(served) == 2


def test_chunked_answers_and_connection_close_are_handled():
    async def handler(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        writer.write(b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n')
        await writer.drain()
        writer.close()

    async def main():
        server, url = await _server(handler)
        pool = ConnectionPool(url)
        try:
            return [await pool.request(b"GET", b"/", b"", None, 5) for _ in range(2)]
        finally:
            await pool.close()
            server.close()

    assert asyncio.run(main()) == [(503, b"application/json", b'{"a":1}')] * 2


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (b"", Unreachable, "closed the connection before answering"),
        (b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"cut', Unreachable, "closed the connection"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", BadResponse, "not a valid HTTP answer"),
        (None, TimedOut, "did not answer in time"),
    ],
)
def test_broken_answers_are_errors_of_their_kind(answer, error, message):
    async def handler(reader, writer):
        await _read_request(reader)
        if answer is None:
            await asyncio.sleep(5)  # never answers
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    async def main():
        server, url = await _server(handler)
        pool = ConnectionPool(url)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(error, match=message):
                await pool.request(b"POST", b"/", b"", b"{}", 0.3)
        finally:
            await pool.close()
            server.close()
        return loop.time() - started

    assert asyncio.run(main()) < 2


def test_nothing_listening_is_unreachable_and_the_limit_bounds_busy_connections():
    async def refused():
        pool = ConnectionPool(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(Unreachable, match="is unreachable"):
            await pool.request(b"GET", b"/", b"", None, 2)

    asyncio.run(refused())
    busy = 0
    peak = 0

    async def handler(reader, writer):
        nonlocal busy, peak
        try:
            while True:
                await _read_request(reader)
                busy += 1
                peak = max(peak, busy)
                await asyncio.sleep(0.02)
                busy -= 1
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def limited():
        server, url = await _server(handler)
        pool = ConnectionPool(url, max_connections=3)
        try:
            answers = await asyncio.gather(*(pool.request(b"POST", b"/", b"", b"{}", 5) for _ in range(12)))
        finally:
            await pool.close()
            server.close()
        return answers

    assert [a[0] for a in asyncio.run(limited())] == [200] * 12
    assert peak == 3
    with pytest.raises(ValueError, match="not an http"):
        ConnectionPool("ftp://x")


def test_the_aiohttp_alternative_has_the_same_face_and_errors():
    connections = []

    async def handler(reader, writer):
        connections.append(writer)
        try:
            while True:
                request = await _read_request(reader)
                if b"/silent" in request:
                    await asyncio.sleep(5)
                elif b"/garbage" in request:
                    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
                    await writer.drain()
                    break
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def main():
        server, url = await _server(handler)
        pool = AiohttpPool(url)
        try:
            answers = [await pool.request(b"POST", b"/v1/x", b"x-a: 1\r\n", b'{"i":1}', 5) for _ in range(3)]
            with pytest.raises(TimedOut, match="did not answer in time"):
                await pool.request(b"POST", b"/silent", b"", b"{}", 0.3)
            with pytest.raises(BadResponse, match="not a valid HTTP answer"):
                await pool.request(b"POST", b"/garbage", b"", b"{}", 5)
        finally:
            await pool.close()
            server.close()
        refused = AiohttpPool(f"http://127.0.0.1:{free_port()}")
        try:
            with pytest.raises(Unreachable, match="is unreachable"):
                await refused.request(b"GET", b"/", b"", None, 2)
        finally:
            await refused.close()
        return answers

    assert asyncio.run(main()) == [(200, b"application/json", b'{"ok":true}')] * 3
    # One kept alive for the three answers and the silence (closed after it), a new one for the garbage.
    assert len(connections) == 2
    with pytest.raises(ValueError, match="not an http"):
        AiohttpPool("ftp://x")
