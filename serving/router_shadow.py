"""Shadow copies are best effort: ``ShadowGate`` decides when each copy goes to the challenger, or sheds it.

Mirrors in Istio and Envoy are fire-and-forget and bounded: the caller never waits for one, and under load copies
are dropped rather than queued without end. Here callers come first in the router too: a copy is offered once
its caller's answer is written (``Router.after``) and sent only while

- the router's recent concurrency is below ``max_callers`` (``load``: how many other callers were in flight when
  each request arrived, averaged over about the last ``1 / LOAD_WEIGHT`` requests; default limit 1: a caller at a
  time). An average rather than the count of the moment: a predictor answers a merged batch at once, so a busy
  router is empty for an instant after each batch, and copies sent in those instants kept the challenger as busy
  as the callers (on one machine it then takes the CPU the stable predictor needs);
- and fewer than ``max_in_flight`` shadow calls are in flight (a slow or stalled challenger holds them).

A copy that cannot go at once waits in a bounded queue (``max_queued``) and goes when a caller or a shadow call
finishes and the gate opens, unless it has waited ``max_delay_s`` (then it is shed as ``stale``). A copy offered
to a full queue is shed as ``busy``; copies still queued when the router stops are shed as ``closing``. Nothing
waits on the challenger on the caller's path, and no shadow call starts while the router has callers beyond the
limit: under load the share mirrored falls, the callers' latency does not rise.

Counted in ``router_shadow_requests_total{outcome}`` (``sent``, then ``completed`` or ``failed``; ``shed`` for every
copy not sent) and ``router_shadow_shed_total{reason}`` (busy, stale, closing); the share mirrored is ``sent / (sent
+ shed)``; ``router_shadow_queued`` is the queue's length now.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Coroutine
from typing import Any

SHED_REASONS = ("busy", "stale", "closing")
LOAD_WEIGHT = 1 / 16  # each arrival's weight in the router's recent concurrency (an exponential average)


class ShadowGate:
    """When each shadow copy goes (``send(copy)`` returns the coroutine that makes the call), or is shed."""

    def __init__(
        self,
        send: Callable[[tuple], Coroutine[Any, Any, None]],
        metrics,
        *,
        max_in_flight: int,
        max_callers: int,
        max_queued: int,
        max_delay_s: float,
    ) -> None:
        self.send = send
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.max_callers = max_callers
        self.max_queued = max_queued
        self.max_delay_s = max_delay_s
        self.callers = 0  # caller requests in flight at the router (arrive / leave, from Router._score)
        self.load = 0.0  # the average of ``callers`` seen by arriving requests (LOAD_WEIGHT)
        self.tasks: set[asyncio.Task] = set()
        self.queue: collections.deque[tuple[float, tuple]] = collections.deque()
        self.closed = False
        metrics.shadow_in_flight.set_function(lambda: len(self.tasks))
        metrics.shadow_queued.set_function(lambda: len(self.queue))
        for reason in SHED_REASONS:  # series from the start: increase() cannot count a series' first sample
            metrics.child(metrics.shadow_shed, reason)
        for outcome in ("sent", "completed", "failed", "shed"):
            metrics.child(metrics.shadow, outcome)

    def arrive(self) -> None:
        """A caller's request arrives at the router."""
        self.load += (self.callers - self.load) * LOAD_WEIGHT
        self.callers += 1

    def leave(self) -> None:
        """A caller's answer is ready."""
        self.callers -= 1

    def _open(self) -> bool:
        return self.load < self.max_callers and len(self.tasks) < self.max_in_flight

    def offer(self, copy: tuple) -> None:
        """A copy whose caller has its answer: send it now, queue it, or shed it; never wait."""
        if self.closed:
            self._shed("closing")
            return
        if not self.queue and self._open():
            self._start(copy)
            return
        if len(self.queue) >= self.max_queued:
            self._shed("busy")
            self.pump()  # the oldest may be stale: make room for what comes next
            return
        self.queue.append((time.monotonic(), copy))
        self.pump()

    def pump(self) -> None:
        """Send queued copies while the gate is open; shed the ones that waited too long."""
        queue = self.queue
        if not queue:
            return
        too_old = time.monotonic() - self.max_delay_s
        while queue and queue[0][0] < too_old:
            queue.popleft()
            self._shed("stale")
        while queue and self._open():
            self._start(queue.popleft()[1])

    def shed_queued(self) -> None:
        """On shutdown: no new copies; those still queued are shed."""
        self.closed = True
        while self.queue:
            self.queue.popleft()
            self._shed("closing")

    def _start(self, copy: tuple) -> None:
        m = self.metrics
        m.child(m.shadow, "sent").inc()
        task = asyncio.get_running_loop().create_task(self.send(copy))
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not self.closed:
            self.pump()

    def _shed(self, reason: str) -> None:
        m = self.metrics
        m.child(m.shadow, "shed").inc()
        m.child(m.shadow_shed, reason).inc()
