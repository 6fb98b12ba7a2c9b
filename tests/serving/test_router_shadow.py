"""ShadowGate, the router's best-effort shadow policy, on its own: a copy goes only while callers and shadow calls
are under their limits, else waits in a bounded queue, else is shed and counted (router_shadow.py)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from kfops.serving.router_metrics import RouterMetrics
from kfops.serving.router_shadow import ShadowGate


def _gate(**limits) -> tuple[ShadowGate, RouterMetrics, list, asyncio.Event]:
    metrics = RouterMetrics(CollectorRegistry(), process=False)
    sent: list = []
    release = asyncio.Event()

    async def send(copy) -> None:
        sent.append(copy)
        await release.wait()

    settings = {"max_in_flight": 2, "max_callers": 1, "max_queued": 2, "max_delay_s": 10.0, **limits}
    return ShadowGate(send, metrics, **settings), metrics, sent, release


def _count(metrics: RouterMetrics, outcome: str) -> float:
    return metrics.value("router_shadow_requests_total", {"outcome": outcome})


def test_a_copy_goes_at_once_only_when_no_caller_waits_and_otherwise_once_callers_are_done():
    async def main():
        gate, metrics, sent, release = _gate()
        gate.offer("quiet")  # no caller in flight: sent now
        await asyncio.sleep(0)
        assert sent == ["quiet"]
        for _ in range(40):  # three callers at a time, for a while: the router is busy, the copy waits
            gate.callers = 3
            gate.arrive()
        assert gate.load > 2.5
        gate.offer("busy moment")
        await asyncio.sleep(0)
        assert sent == ["quiet"] and len(gate.queue) == 1
        assert metrics.value("router_shadow_queued") == 1
        gate.callers = 0
        gate.pump()  # an instant with no caller is not a quiet router
        await asyncio.sleep(0)
        assert sent == ["quiet"]
        for _ in range(40):  # one caller at a time again
            gate.arrive()
            gate.leave()
        gate.pump()  # what Router.after does once an answer is written
        await asyncio.sleep(0)
        assert sent == ["quiet", "busy moment"] and not gate.queue
        release.set()
        await asyncio.gather(*gate.tasks)
        return metrics

    metrics = asyncio.run(main())
    assert _count(metrics, "sent") == 2 and _count(metrics, "shed") == 0


def test_copies_beyond_the_queue_are_shed_as_busy_and_old_ones_as_stale():
    async def main():
        gate, metrics, sent, release = _gate(max_delay_s=0.05)
        gate.offer("a")
        gate.offer("b")  # two shadow calls in flight: the limit
        for name in ("c", "d", "e", "f"):
            gate.offer(name)  # c and d wait; e and f find the queue full
        assert [copy for _, copy in gate.queue] == ["c", "d"]
        time.sleep(0.06)
        gate.pump()  # c and d waited too long
        assert not gate.queue
        release.set()
        await asyncio.gather(*gate.tasks)
        return metrics, sent

    metrics, sent = asyncio.run(main())
    assert sent == ["a", "b"]
    assert metrics.value("router_shadow_shed_total", {"reason": "busy"}) == 2
    assert metrics.value("router_shadow_shed_total", {"reason": "stale"}) == 2
    assert _count(metrics, "sent") == 2 and _count(metrics, "shed") == 4


def test_a_finished_shadow_call_sends_the_next_queued_copy_and_closing_sheds_the_rest():
    async def main():
        gate, metrics, sent, release = _gate(max_in_flight=1, max_queued=5)
        for name in ("a", "b", "c"):
            gate.offer(name)
        await asyncio.sleep(0)
        assert sent == ["a"]
        release.set()  # a finishes: b goes (then c, as each finishes)
        for _ in range(10):
            await asyncio.sleep(0)
        assert sent == ["a", "b", "c"]
        release.clear()
        gate.offer("d")
        gate.offer("e")
        gate.shed_queued()  # the router stops: e is shed, nothing new is sent
        gate.offer("f")
        release.set()
        await asyncio.gather(*gate.tasks)
        return metrics, sent

    metrics, sent = asyncio.run(main())
    assert sent == ["a", "b", "c", "d"]
    assert metrics.value("router_shadow_shed_total", {"reason": "closing"}) == 2
