"""A real HTTP server on 127.0.0.1 that stands in front of a real predictor and misbehaves on purpose: it answers
500 on a configured share of requests, or after a delay, and passes every other request on to the predictor.
The router's tests use it as a faulty or slow challenger. It runs on its own event loop in a thread."""

from __future__ import annotations

import asyncio
import random
import socket
import threading


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FaultyUpstream:
    """Proxies POSTs to ``target`` (a predictor's base URL). ``fail_fraction`` of requests (drawn from a seeded
    generator) get a 500 without reaching the target; every request first waits ``delay_s``. Counts what it got."""

    def __init__(self, target: str, fail_fraction: float = 0.0, delay_s: float = 0.0, seed: int = 0) -> None:
        self.target = target.rstrip("/")
        self.fail_fraction = fail_fraction
        self.delay_s = delay_s
        self.random = random.Random(seed)
        self.received = 0
        self.failed = 0
        self.passed = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FaultyUpstream:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the faulty upstream did not start")
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start(self) -> None:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request):
        from aiohttp import web

        self.received += 1
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.random.random() < self.fail_fraction:
            self.failed += 1
            return web.json_response({"error": "injected failure"}, status=500)
        self.passed += 1
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with self._session.post(self.target + request.path, data=body, headers=headers) as answer:
            data = await answer.read()
            return web.Response(body=data, status=answer.status, content_type="application/json")
