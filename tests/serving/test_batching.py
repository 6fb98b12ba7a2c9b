"""The dynamic batcher under concurrent load: callers get exactly their own rows, batches merge, the event loop
keeps running while the model computes, and a failing batch fails only its callers."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from kserve.errors import InferenceError

from kfops.serving import metrics
from kfops.serving.app import build_app
from kfops.serving.batching import Arrivals, DynamicBatcher
from kfops.serving.predictor import TabularPredictor

from .helpers import v1_objects


class EchoModel:
    """Returns one row per input naming the caller and row, after a short blocking pause (like torch)."""

    def __init__(self, pause: float = 0.005, poison: str | None = None) -> None:
        self.pause = pause
        self.poison = poison
        self.batch_sizes: list[int] = []

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.batch_sizes.append(len(frame))
        time.sleep(self.pause)
        if self.poison is not None and (frame["caller"] == self.poison).any():
            raise ValueError(f"poisoned row from {self.poison}")
        return pd.DataFrame({"prediction": frame["caller"] + "-" + frame["row"].astype(str), "probability": 0.5})


def rows_for(caller: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({"caller": [caller] * n, "row": list(range(n))})


def test_64_concurrent_callers_get_exactly_their_own_rows_in_merged_batches():
    model = EchoModel()
    batcher = DynamicBatcher(
        model, max_batch_rows=48, max_wait_ms=3, on_batch=lambda rows, n: metrics.observe_batch(rows)
    )
    rng = random.Random(3)
    sizes = {f"c{i}": rng.randint(1, 12) for i in range(64)}
    count_before = metrics.sample("model_batch_size_count")
    ones_before = metrics.sample("model_batch_size_bucket", {"le": "1.0"})

    async def main():
        async def caller(name, n):
            await asyncio.sleep(rng.random() * 0.01)
            return name, await batcher.submit(rows_for(name, n))

        return await asyncio.gather(*(caller(name, n) for name, n in sizes.items()))

    results = asyncio.run(main())
    for name, (frame, timings) in results:
        assert frame["prediction"].tolist() == [f"{name}-{i}" for i in range(sizes[name])]
        assert timings.batch_rows >= sizes[name] and timings.queue_seconds >= 0
    assert sum(model.batch_sizes) == sum(sizes.values())
    assert max(model.batch_sizes) <= 48 and max(model.batch_sizes) > 12  # merged across callers
    assert len(model.batch_sizes) < 64
    batches = metrics.sample("model_batch_size_count") - count_before
    single_row = metrics.sample("model_batch_size_bucket", {"le": "1.0"}) - ones_before
    assert batches == len(model.batch_sizes) and single_row < batches
    batcher.close()


def test_a_request_larger_than_a_batch_runs_alone():
    model = EchoModel(pause=0.001)
    batcher = DynamicBatcher(model, max_batch_rows=8, max_wait_ms=2)

    async def main():
        return await asyncio.gather(*(batcher.submit(rows_for(f"c{n}", n)) for n in (5, 20, 3, 5, 1)))

    results = asyncio.run(main())
    for n, (frame, _) in zip((5, 20, 3, 5, 1), results, strict=True):
        assert frame["prediction"].tolist() == [f"c{n}-{i}" for i in range(n)]
    assert 20 in model.batch_sizes and all(size <= 8 for size in model.batch_sizes if size != 20)
    batcher.close()


def test_the_event_loop_keeps_running_while_the_model_computes():
    batcher = DynamicBatcher(EchoModel(pause=0.3), max_batch_rows=8, max_wait_ms=0, inline=False)

    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        await batcher.submit(rows_for("slow", 2))
        stop.set()
        await task
        return ticks

    assert asyncio.run(main()) >= 20  # ~60 possible in 0.3 s; a blocked loop would give ~1
    batcher.close()


def test_a_process_with_one_cpu_scores_on_the_event_loop_and_callers_still_get_their_own_rows(monkeypatch):
    import threading

    from kfops.components import resources

    class ThreadNoting(EchoModel):
        def __call__(self, frame):
            self.threads = {*getattr(self, "threads", set()), threading.get_ident()}
            return super().__call__(frame)

    monkeypatch.setattr(resources, "cpu_limit", lambda: 2)
    assert DynamicBatcher(EchoModel()).inline is False
    monkeypatch.setattr(resources, "cpu_limit", lambda: 1)
    model = ThreadNoting(pause=0.002)
    batcher = DynamicBatcher(model, max_batch_rows=16, max_wait_ms=2)
    assert batcher.inline is True
    sizes = {f"c{i}": 1 + i % 5 for i in range(30)}

    async def main():
        results = await asyncio.gather(*(batcher.submit(rows_for(name, n)) for name, n in sizes.items()))
        return results, threading.get_ident()

    results, loop_thread = asyncio.run(main())
    for (name, n), (frame, _) in zip(sizes.items(), results, strict=True):
        assert frame["prediction"].tolist() == [f"{name}-{i}" for i in range(n)]
    assert model.threads == {loop_thread}
    assert len(model.batch_sizes) < len(sizes)  # still merged
    batcher.close()


def test_a_failing_batch_fails_only_its_callers():
    model = EchoModel(pause=0.05, poison="bad")
    batcher = DynamicBatcher(model, max_batch_rows=4, max_wait_ms=1)

    async def main():
        # A first, slow batch keeps the model busy while "bad" and "ok" queue up as separate full batches.
        first = asyncio.ensure_future(batcher.submit(rows_for("first", 4)))
        await asyncio.sleep(0.01)
        bad = asyncio.ensure_future(batcher.submit(rows_for("bad", 4)))
        ok = asyncio.ensure_future(batcher.submit(rows_for("ok", 4)))
        return await asyncio.gather(first, bad, ok, return_exceptions=True)

    first, bad, ok = asyncio.run(main())
    assert first[0]["prediction"].tolist()[0] == "first-0"
    assert isinstance(bad, InferenceError) and "poisoned row from bad" in str(bad)
    assert ok[0]["prediction"].tolist() == [f"ok-{i}" for i in range(4)]

    async def again():
        return await batcher.submit(rows_for("later", 2))

    assert asyncio.run(again())[0]["prediction"].tolist() == ["later-0", "later-1"]  # a new loop works too
    batcher.close()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_rows"):
        DynamicBatcher(EchoModel(), max_batch_rows=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        DynamicBatcher(EchoModel(), max_wait_ms=-1)


def test_concurrent_http_callers_through_kserve_get_their_own_predictions(registered_model):
    m = registered_model
    predictor = TabularPredictor(
        "busy", f"{m.name}@champion", m.tracking_uri, max_batch_rows=128, max_wait_ms=5, max_request_rows=50
    )
    predictor.load()
    app = build_app(predictor)
    rng = random.Random(5)
    slices = []
    for _ in range(64):
        start, n = rng.randint(0, len(m.rows) - 10), rng.randint(1, 9)
        slices.append(m.rows.iloc[start : start + n])
    expected = m.expected(pd.concat(slices, ignore_index=True))
    count_before = metrics.sample("model_batch_size_count")
    sum_before = metrics.sample("model_batch_size_sum")

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            return await asyncio.gather(
                *(client.post("/v1/models/busy:predict", json={"instances": v1_objects(rows)}) for rows in slices)
            )

    responses = asyncio.run(main())
    at = 0
    for rows, response in zip(slices, responses, strict=True):
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        want = expected.iloc[at : at + len(rows)]
        at += len(rows)
        assert [p["prediction"] for p in got] == want["prediction"].tolist()
        assert np.allclose([p["probability"] for p in got], want["probability"], rtol=0, atol=1e-6)
    batches = metrics.sample("model_batch_size_count") - count_before
    rows_scored = metrics.sample("model_batch_size_sum") - sum_before
    assert rows_scored == at and batches < len(slices)  # merged: fewer model calls than requests
    predictor.stop()


def test_an_idle_model_waits_for_more_rows_only_while_requests_are_on_their_way():
    arrivals = Arrivals()
    batcher = DynamicBatcher(EchoModel(pause=0.0), max_batch_rows=8, max_wait_ms=300, in_flight=arrivals)

    async def timed(caller: str) -> float:
        with arrivals.arriving():  # what the app's middleware does around a scoring request
            started = time.perf_counter()
            await batcher.submit(rows_for(caller, 1))
            return time.perf_counter() - started

    async def answered_then_next() -> float:
        # A request whose rows are scored but whose answer is still being written, then the next request: the
        # first is no longer on its way, so the second runs at once (it used to wait the whole max_wait_ms).
        with arrivals.arriving():
            await batcher.submit(rows_for("answered", 1))
            return await timed("next")

    async def while_another_is_parsed() -> float:
        parsing = arrivals.arriving()
        parsing.__enter__()  # another request arrived and is being parsed: worth waiting for
        try:
            return await timed("waits")
        finally:
            parsing.__exit__(None, None, None)

    assert asyncio.run(timed("alone")) < 0.15  # a lone request runs at once
    assert asyncio.run(answered_then_next()) < 0.15
    assert asyncio.run(while_another_is_parsed()) >= 0.25  # up to max_wait_ms
    assert arrivals() == 0
    batcher.close()


def test_a_request_that_never_reaches_the_batcher_stops_counting_as_on_its_way():
    arrivals = Arrivals()
    with pytest.raises(ValueError), arrivals.arriving():
        assert arrivals() == 1
        raise ValueError("a 400 before the batcher")
    assert arrivals() == 0
