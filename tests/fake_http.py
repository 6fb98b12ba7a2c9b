"""The HTTP server under every fake API in the tests (Kubernetes, KFP, fault proxies): 127.0.0.1, a free port,
a thread per request, and errors that reach the test.

A fake that raises while handling a request would otherwise drop the connection: the client under test reports
"RemoteDisconnected" and the real cause is a thread-exception warning nobody reads (pytest.fail inside a handler
raises a BaseException that socketserver does not even catch). Here the error is kept, and ``stop()`` raises the
first one, so the fixture that stops the fake fails the test with the real error. A handler can also call
``answer_error`` to send the client a 500 that names it.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServerError(AssertionError):
    """An error raised inside a fake server's request thread, re-raised in the test's thread."""


class FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str = "fake-http") -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.errors: list[BaseException] = []
        self.tracebacks: list[str] = []
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, name=f"{name}-{self.port}", daemon=True
        )

    def record(self, error: BaseException) -> None:
        self.errors.append(error)
        self.tracebacks.append("".join(traceback.format_exception(error)))

    def process_request_thread(self, request, client_address) -> None:
        # socketserver catches Exception only; pytest.fail/skip raise BaseException subclasses
        try:
            self.finish_request(request, client_address)
        except BaseException as error:
            self.record(error)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        self.record(sys.exc_info()[1])

    def start(self) -> FakeHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut down, then raise the first error a request thread hit (with its traceback)."""
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
        self.raise_errors()

    def raise_errors(self) -> None:
        if self.errors:
            first, trace = self.errors[0], self.tracebacks[0]
            self.errors, self.tracebacks = [], []
            raise FakeServerError(f"the fake server at {self.url} failed while handling a request:\n{trace}") from first


def answer_error(handler: BaseHTTPRequestHandler, error: BaseException) -> None:
    """Record ``error`` on the handler's server and answer 500 with its text, so the client's message names it."""
    server = handler.server
    if isinstance(server, FakeHTTPServer):
        server.record(error)
    message = f"fake server error: {type(error).__name__}: {error}"
    # a Kubernetes Status; KFP's API and the others read "message" too
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500}
    body = json.dumps(status | {"message": message}).encode()
    handler.send_response(500)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
