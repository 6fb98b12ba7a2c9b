"""An asyncio dynamic batcher: many small requests become one model call, off the event loop.

Each request puts its rows (validated columns, or a DataFrame) on a queue and awaits a future. One
consumer task merges queued requests into a batch of at most ``max_batch_rows`` rows: it takes what is waiting;
while the model is busy with the previous batch it keeps collecting until the model is free (that wait costs
nothing, the rows could not run earlier); when the model is idle it waits at most ``max_wait_ms`` after the batch's
first request for more, and only while requests are on their way to it (``in_flight``: requests that have arrived
in the server and not yet reached the batcher, counted by the app's middleware through ``Arrivals``): a lone
client's request, or a batch whose only company is requests already answered, runs at once. Without that count
(``in_flight`` None) it always waits up to ``max_wait_ms``. The batch runs in a single worker thread
(``run_in_executor`` on a one-thread pool), so the event loop keeps accepting and parsing requests while the
model computes; torch (and OpenMP, for trees) uses ``torch_threads`` threads (default ``serving_threads()``: half
the CPU limit, at least 1). Each caller's future gets exactly its own rows back, in order.

One exception: a process that may use one CPU only (``resources.cpu_limit() == 1``: a pod limited to one core, a
process pinned to one) runs each batch inline on the event loop (``inline``). There the thread buys no overlap,
the loop and the model take turns on the one core anyway, and every batch paid two thread hand-offs and a GIL
exchange with the loop for nothing (a 256-row request's own scoring is a few hundred microseconds). The price:
while a batch scores, the loop does not read new requests, so one very large request delays the others by its
scoring time.

Why requests already answered must not count: at 32 clients the requests of a finished batch are still in the
server while their answers are written, and counting them made an idle batcher wait its full ``max_wait_ms`` for
rows that were not coming (benchmarks/bench_serving_change.py measures such a change against the code before it).

A failing batch fails only its own callers, with ``kserve.errors.InferenceError`` (a 500 with a message); the
consumer goes on with the next batch. A request larger than ``max_batch_rows`` runs as a batch of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class BatchTimings:
    """Per-request timings reported back with the rows."""

    queue_seconds: float  # from submit to the start of the batch's model call
    predict_seconds: float  # the batch's model call
    batch_rows: int  # rows in the merged batch
    batch_requests: int  # requests merged into it


@dataclass
class _Item:
    frame: pd.DataFrame | dict[str, list]  # rows as a frame, or as equal-length columns
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        if isinstance(self.frame, dict):
            return len(next(iter(self.frame.values()), ()))
        return len(self.frame)


class Arrivals:
    """Requests on their way to a batcher: counted from their arrival in the server (``arriving()``, around the
    whole request) until they reach the batcher (``DynamicBatcher.submit``) or end without reaching it (a 400, a
    client gone). Calling it gives the count, what ``DynamicBatcher(in_flight=...)`` takes."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        ticket = _Ticket(self)
        token = _ARRIVING.set(ticket)
        try:
            yield
        finally:
            _ARRIVING.reset(token)
            ticket.reached()


class _Ticket:
    __slots__ = ("arrivals",)

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals: Arrivals | None = arrivals
        arrivals.count += 1

    def reached(self) -> None:
        """Idempotent: the request no longer counts as on its way."""
        if self.arrivals is not None:
            self.arrivals.count -= 1
            self.arrivals = None


# The request being served in this task (and the tasks it starts): set by Arrivals.arriving, read by submit().
_ARRIVING: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar("kfops_batcher_arriving", default=None)


def _merge(parts: list) -> pd.DataFrame | dict[str, list]:
    """One input for the model call: frames concatenated, or columns joined column by column (no frame per
    request): arrays (the validator's numeric columns) with one numpy call, lists by extending."""
    if isinstance(parts[0], dict):
        if len(parts) == 1:
            return parts[0]
        merged = {}
        for name, first in parts[0].items():
            if isinstance(first, np.ndarray):
                merged[name] = np.concatenate([part[name] for part in parts])
            else:
                merged[name] = [v for part in parts for v in part[name]]
        return merged
    return parts[0].reset_index(drop=True) if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _as_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def serving_threads() -> int:
    """torch threads for the predict worker: half the container's CPU limit, at least 1. The event loop (parsing,
    validating, answering) needs a core of its own; torch's threads spin-wait at each operator's barrier, so on
    a busy 2-CPU pod a second thread made a 256-row predict several times slower (benchmarks/bench_serving.py),
    and batches of a few hundred rows gain nothing from more."""
    from kfops.components.resources import cpu_limit

    return max(1, cpu_limit() // 2)


def _set_model_threads(threads: int | None = None) -> None:
    """The scoring thread's intra-op threads: torch's (the MLP) and OpenMP's (scikit-learn's trees). Set once for
    the serving process: switching per batch costs more than a small batch's scoring, and a trees model scoring a
    few rows on many OpenMP threads spends its time waking them (p99 16 ms instead of 0.7 ms for one row)."""
    count = threads or serving_threads()
    try:
        import torch

        torch.set_num_threads(count)
    except ImportError:  # a batcher around a non-torch function
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=count, user_api="openmp")
    except ImportError:
        pass


class DynamicBatcher:
    """Merge concurrent requests' rows into batches for ``run_batch``: a blocking function of the merged rows (a
    DataFrame, or a dict of equal-length columns) that returns one result row per input row (a DataFrame, or for
    columns a dict of equal-length result columns)."""

    def __init__(
        self,
        run_batch: Callable[[Any], Any],
        max_batch_rows: int = 256,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, int], None] | None = None,
        name: str = "model",
        in_flight: Callable[[], int] | None = None,
        torch_threads: int | None = None,
        inline: bool | None = None,
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch_rows = int(max_batch_rows)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self.in_flight = in_flight if in_flight is not None else (lambda: self.max_batch_rows + 1)
        self.name = name
        if inline is None:
            from kfops.components.resources import cpu_limit

            inline = cpu_limit() == 1
        self.inline = inline  # score on the event loop (one CPU: see the module doc), not in the worker thread
        if inline:
            _set_model_threads(torch_threads)
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"kfops-predict-{name}",
            initializer=_set_model_threads,
            initargs=(torch_threads,),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._consumer: asyncio.Task | None = None
        self._closed = False
        self.batches = 0  # batches run (for tests and diagnostics)

    # ------------------------------------------------------------------------------------------ public
    async def submit(
        self, frame: pd.DataFrame | dict[str, list]
    ) -> tuple[pd.DataFrame | dict[str, list], BatchTimings]:
        """Score ``frame``'s rows in some merged batch; return exactly its rows and timings. A DataFrame gets a
        DataFrame back (index 0..n-1); a dict of equal-length columns gets a dict of result columns (lists), and
        the batch is merged and split without a frame per request."""
        ticket = _ARRIVING.get()
        if ticket is not None:
            ticket.reached()  # from here on the consumer sees the request itself
        if self._closed:
            from kserve.errors import InferenceError

            raise InferenceError("the model server is shutting down")
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._consumer is None or self._consumer.done():
            self._start(loop)
        item = _Item(frame=frame, future=loop.create_future())
        self._queue.put_nowait(item)
        return await item.future

    async def aclose(self) -> None:
        """Stop the consumer and the worker thread (requests still queued fail)."""
        self._closed = True
        if self._consumer is not None and not self._consumer.done():
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer
        self._fail_queued("the model server is shutting down")
        self._executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Synchronous shutdown of the worker thread (the consumer dies with its loop)."""
        self._closed = True
        if self._consumer is not None and not self._consumer.done():
            self._consumer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------ internals
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        # A new event loop (a test client per request, a restarted server): the old queue and consumer belong
        # to the old loop, which no longer runs; start afresh on this one.
        self._loop = loop
        self._queue = asyncio.Queue()
        self._consumer = loop.create_task(self._consume(), name=f"kfops-batcher-{self.name}")

    def _fail_queued(self, message: str) -> None:
        if self._queue is None:
            return
        from kserve.errors import InferenceError

        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(InferenceError(message))

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        carry: _Item | None = None
        running: asyncio.Task | None = None
        while True:
            try:
                first = carry if carry is not None else await queue.get()
                carry = None
                batch = [first]
                rows = first.rows
                deadline = loop.time() + self.max_wait
                while rows < self.max_batch_rows:
                    try:
                        item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        if running is not None and not running.done():
                            # The model is busy: collect until it is free or a request arrives.
                            getter = asyncio.ensure_future(queue.get())
                            done, _ = await asyncio.wait({getter, running}, return_when=asyncio.FIRST_COMPLETED)
                            if getter in done:
                                item = getter.result()
                            else:
                                getter.cancel()  # not done: cancelling it takes no item off the queue
                                continue
                        else:
                            remaining = deadline - loop.time()
                            if remaining <= 0 or self.in_flight() <= 0:
                                break  # out of time, or no request on its way: waiting could only add latency
                            try:
                                item = await asyncio.wait_for(queue.get(), remaining)
                            except TimeoutError:
                                break
                    if rows + item.rows > self.max_batch_rows:
                        carry = item
                        break
                    batch.append(item)
                    rows += item.rows
                if running is not None:
                    await asyncio.wait({running})
                running = loop.create_task(self._execute(batch, rows))
            except asyncio.CancelledError:
                if running is not None and not running.done():
                    running.cancel()
                raise
            except Exception:  # never let the consumer die: log and go on
                log.exception("batcher %s: unexpected error while collecting a batch", self.name)

    async def _execute(self, batch: list[_Item], rows: int) -> None:
        from kserve.errors import InferenceError

        loop = asyncio.get_running_loop()
        live = [item for item in batch if not item.future.done()]  # callers that went away are skipped
        if not live:
            return
        rows = sum(item.rows for item in live)
        started = time.perf_counter()
        try:
            if self.on_batch is not None:
                self.on_batch(rows, len(live))
            # Merging, scoring and splitting all run in the worker thread: pandas work on a batch of dozens of
            # requests costs milliseconds, which on the event loop would stall every other request. With one
            # CPU there is nothing to overlap with, and they run here (``inline``).
            frames, sizes = [item.frame for item in live], [item.rows for item in live]
            if self.inline:
                parts = self._score(frames, sizes)
            else:
                parts = await loop.run_in_executor(self._executor, self._score, frames, sizes)
        except asyncio.CancelledError:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(InferenceError("the model server is shutting down"))
            raise
        except Exception as err:
            log.exception("batcher %s: a batch of %d rows failed", self.name, rows)
            for item in live:
                if not item.future.done():
                    item.future.set_exception(InferenceError(f"prediction failed: {type(err).__name__}: {err}"))
            return
        finally:
            self.batches += 1
        predict_seconds = time.perf_counter() - started
        for item, part in zip(live, parts, strict=True):
            if not item.future.done():
                timings = BatchTimings(
                    queue_seconds=started - item.enqueued,
                    predict_seconds=predict_seconds,
                    batch_rows=rows,
                    batch_requests=len(live),
                )
                item.future.set_result((part, timings))

    def _score(self, frames: list[pd.DataFrame], sizes: list[int]) -> list[pd.DataFrame]:
        """Worker thread: one model call over the merged frames; each caller's rows back, index 0..n-1."""
        result = self.run_batch(_merge(frames))
        rows = sum(sizes)
        returned = len(next(iter(result.values()), ())) if isinstance(result, dict) else len(result)
        if returned != rows:
            raise RuntimeError(f"the model returned {returned} rows for a batch of {rows}")
        if isinstance(frames[0], dict):
            # Columns in, columns out: plain lists sliced per caller (a small DataFrame each costs more). The
            # model may answer with a DataFrame or a dict of equal-length columns (arrays or lists).
            columns = {name: _as_list(values) for name, values in result.items()}
            parts, at = [], 0
            for n in sizes:
                parts.append({name: values[at : at + n] for name, values in columns.items()})
                at += n
            return parts
        result = result.reset_index(drop=True)
        if len(sizes) == 1:
            return [result]
        parts, at = [], 0
        for n in sizes:
            parts.append(result.iloc[at : at + n].reset_index(drop=True))
            at += n
        return parts
