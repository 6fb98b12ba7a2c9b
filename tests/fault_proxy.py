"""A TCP proxy on 127.0.0.1 in front of one upstream port that can be made to refuse connections for a while.

moto keeps its buckets in memory, so an S3 outage cannot be a restart: the clients talk to this proxy instead,
and the proxy stops listening (a client's connect gets ECONNREFUSED, as from a dead endpoint) and resets the
connections it holds. ``trip_on(pattern, seconds)`` starts such an outage at the first request whose opening bytes
match ``pattern`` (an HTTP request line such as ``PUT /mlflow/``; every request on a kept-alive connection is
looked at, not only a connection's first), so a test can aim it at one stage of a pipeline that runs in other
processes; that request is reset, never forwarded. Several trips can be armed at once; each fires once.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
import time


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer does, rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.requests: list[str] = []  # the first line of each connection's first request, in order
        self.outages: list[tuple[float, float, str]] = []  # (start, end, why) of each outage
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._trips: list[tuple[re.Pattern[bytes], float]] = []
        self._stopped = False
        self._reopen_at = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------------------------------ control
    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._close_everything()

    def refuse_for(self, seconds: float, why: str = "refuse_for") -> None:
        """Stop listening and reset every open connection now; listen again on the same port after ``seconds``."""
        with self._lock:
            self._reopen_at = time.monotonic() + seconds
            self.outages.append((time.time(), time.time() + seconds, why))
        self._close_everything()
        timer = threading.Timer(seconds, self._reopen)
        timer.daemon = True
        timer.start()

    def trip_on(self, pattern: str, seconds: float) -> None:
        """Arm: the first request matching ``pattern`` (a regex over its first bytes) starts a ``seconds`` outage."""
        with self._lock:
            self._trips.append((re.compile(pattern.encode()), seconds))

    def disarm(self) -> None:
        """Forget the trips that have not fired."""
        with self._lock:
            self._trips.clear()

    def is_refusing(self) -> bool:
        return time.monotonic() < self._reopen_at

    # ------------------------------------------------------------------------------------------------ internals
    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def _reopen(self) -> None:
        if not self._stopped and time.monotonic() >= self._reopen_at - 0.01:
            self._listen()

    def _close_everything(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            held, self._open = self._open, set()
        if listener is not None:
            # shutdown wakes the thread blocked in accept(); close then refuses new connects
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in held:
            _reset(sock)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            first = client.recv(65536)
        except OSError:
            _reset(client)
            return
        if not first:
            client.close()
            return
        if self._tripped_by(first):
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
            upstream.sendall(first)
        except OSError:
            _reset(client)
            return
        with self._lock:
            if self._listener is None:  # an outage began meanwhile
                _reset(client)
                _reset(upstream)
                return
            self._open |= {client, upstream}
        self._pump(client, upstream)

    def _tripped_by(self, data: bytes) -> bool:
        """Note a request's first line; start the outage of the first armed trip it matches (and say so)."""
        line = data.split(b"\r\n", 1)[0]
        if re.match(rb"[A-Z]+ \S+ HTTP/1\.[01]$", line):
            self.requests.append(line.decode("latin-1"))
        with self._lock:
            trip = next((t for t in self._trips if t[0].match(data[:4096])), None)
            if trip is not None:
                self._trips.remove(trip)
        if trip is not None:
            self.refuse_for(trip[1], why=f"trip on {trip[0].pattern.decode()}")
        return trip is not None

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client and self._tripped_by(data):
                        return  # refuse_for has reset both ends
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._open -= {client, upstream}
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
