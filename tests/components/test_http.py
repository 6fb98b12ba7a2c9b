"""The suite's synchronous HTTP client (components/http.py) against a real HTTP server on 127.0.0.1: JSON both
ways, kept-alive connections, redirects, and every way a call can fail (refused, 500, silence, not JSON)."""

from __future__ import annotations

import contextlib
import json
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest

from kfops.components import http
from kfops.components.contracts import KfopsError
from tests.conftest import free_port
from tests.fake_http import FakeHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so pooling shows
    peers: list[tuple[str, int]] = []
    received: list[dict] = []

    def _send(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        type(self).peers.append(self.client_address)
        url = urlsplit(self.path)
        if url.path == "/json":
            echo = {"query": parse_qs(url.query), "accept": self.headers["Accept"], "token": self.headers["X-Token"]}
            self._send(200, json.dumps(echo).encode())
        elif url.path == "/text":
            self._send(200, b"up 1\n", "text/plain")
        elif url.path == "/moved":
            self._send(302, b"", Location="/json?moved=1")
        elif url.path == "/broken":
            self._send(500, json.dumps({"error": "disk full"}).encode())
        elif url.path == "/html":
            self._send(200, b"<html>login</html>", "text/html")
        elif url.path == "/slow":
            time.sleep(1.0)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up first, as meant
                self._send(200, b"{}")
        else:
            self._send(404, b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"type": self.headers["Content-Type"], "body": json.loads(body)})
        self._send(201, b'{"ok": true}')

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    _Handler.peers, _Handler.received = [], []
    fake = FakeHTTPServer(_Handler, "http-seam").start()
    yield fake
    fake.stop()


def test_get_json_sends_params_and_headers_and_keeps_one_connection(server):
    client = http.Client(headers={"X-Token": "t"})
    first = client.get_json(f"{server.url}/json", params={"query": 'sum(up{job="a b"})'})
    second = client.get_json(f"{server.url}/json?x=1", params={"y": "2"})
    assert first == {"query": {"query": ['sum(up{job="a b"})']}, "accept": "application/json", "token": "t"}
    assert second["query"] == {"x": ["1"], "y": ["2"]}
    assert len(set(_Handler.peers)) == 1  # pooled: the second call reused the first one's connection


def test_post_json_and_text_and_redirects_on_the_shared_client(server):
    answer = http.post_json(f"{server.url}/hook", {"text": "drift"})
    assert answer.status == 201 and answer.json() == {"ok": True}
    assert _Handler.received == [{"type": "application/json", "body": {"text": "drift"}}]
    assert http.get(f"{server.url}/text").text() == "up 1\n"
    assert http.get_json(f"{server.url}/moved")["query"] == {"moved": ["1"]}
    assert http.client() is http.client()


def test_a_refused_connection_is_unreachable_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/api"
    with pytest.raises(http.Unreachable, match=rf"^GET {url}: cannot connect \(.*refused") as failed:
        http.get(url, timeout=2)
    assert failed.value.url == url and failed.value.status is None and failed.value.body == b""
    assert not isinstance(failed.value, http.TimedOut) and isinstance(failed.value, KfopsError)


def test_a_500_is_a_status_error_with_the_status_reason_and_body(server):
    url = f"{server.url}/broken"
    with pytest.raises(http.StatusError) as failed:
        http.get_json(url)
    err = failed.value
    assert str(err) == f'GET {url} answered HTTP 500 Internal Server Error: {{"error": "disk full"}}'
    assert (err.url, err.status, err.reason) == (url, 500, "Internal Server Error")
    assert json.loads(err.body) == {"error": "disk full"}
    with pytest.raises(http.StatusError, match=rf"^GET {server.url}/nothing answered HTTP 404 Not Found$"):
        http.get(f"{server.url}/nothing")


def test_silence_past_the_timeout_is_timed_out(server):
    started = time.monotonic()
    with pytest.raises(http.TimedOut, match=rf"^GET {server.url}/slow: no answer within 0.2 s$") as failed:
        http.get_json(f"{server.url}/slow", timeout=0.2)
    assert time.monotonic() - started < 0.9
    assert isinstance(failed.value, http.Unreachable) and failed.value.status is None


def test_a_body_that_is_not_json_is_not_json_quoting_it(server):
    url = f"{server.url}/html"
    with pytest.raises(http.NotJSON, match=r"answered something that is not JSON: b'<html>login</html>'") as failed:
        http.get_json(url)
    assert failed.value.url == url and failed.value.status == 200 and failed.value.body == b"<html>login</html>"


def test_a_url_that_is_not_http_is_refused_before_any_call():
    with pytest.raises(http.HTTPError, match=r"not an http\(s\) URL: 'ftp://x'"):
        http.get("ftp://x")
