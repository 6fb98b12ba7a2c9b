"""Payload logging that never blocks serving: requests and predictions to JSONL or Parquet files.

KServe's own payload logger holds a queue of 100 that blocks the request path when full. This one does not:
``PayloadLogger.log()`` only appends the caller's list to a bounded in-memory queue (bounded in rows) and
returns; when the queue is full the records are dropped and counted, never waited for. A daemon thread drains
the queue and writes batches (``batch_rows`` rows, or whatever is waiting once its oldest row is half of
``flush_seconds`` old) through the one storage seam, ``kfops.components.storage``, to a local folder or an
``s3://`` prefix::

    <sink>/model=<model_name>/date=YYYY-MM-DD/<UTC write time>-<uuid4 hex>.jsonl   (or .parquet)

The date comes from each record's ``timestamp`` field (ISO 8601, UTC if it carries no offset), so a batch that
spans midnight becomes two files. A record without a usable timestamp goes under the UTC date it was logged.
A failing sink (unreachable S3, full disk) costs that batch's rows, counted as dropped, and the thread goes on.

``flush_seconds`` is the durability bound: a logged row is in the sink within ``flush_seconds`` (the writer starts
a partial batch at half of it and leaves the other half for the write itself), so a process killed outright
(SIGKILL, OOM) loses at most the rows logged in its last ``flush_seconds``, as long as a write takes less than half
of it (milliseconds on a local disk; an S3 put can take longer). A file is written whole or not at all (write then
rename, ``storage.write_bytes``): readers never see half a file. ``close()`` (SIGTERM) writes everything queued.

What ``log()`` takes: a list of flat records (dicts), or one ``PayloadColumns`` (``payload_columns.py``): a request's
rows as columns, which is how the predictor logs. Either counts as its number of rows against ``max_queue``; the
writer turns columns into the same records (JSONL byte for byte, Parquet the same table), so the files do not depend
on which was logged.

Threading: ``on_drop(n)`` runs on the caller's thread for queue-full drops (keep it cheap, e.g. a Prometheus
``Counter.inc``) and on the writer thread for sink failures; whatever it raises is logged and swallowed.
Records are read by the writer thread later: do not mutate a dict (or the columns) after logging it. Memory is
bounded by ``max_queue`` rows waiting plus the ``batch_rows`` the writer holds while it writes.

Privacy controls (``payload_policy.py``), both applied by the writer thread: ``fields`` drops or hashes fields of
each record before it is encoded; ``retention`` deletes this model's files past an age or total size, checked when
the writer starts, every ``retention.check_seconds`` after, and on close.

Call ``close()`` on shutdown (loggers still open at interpreter exit are closed by an ``atexit`` hook, with a
short timeout). The writer thread does not survive ``fork()``: create loggers in the serving process itself.
"""

from __future__ import annotations

import atexit
import collections
import datetime as dt
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from kfops.components import storage
from kfops.components.contracts import KfopsError, payload_log_partition
from kfops.components.records import FORMATS, encode_jsonl, encode_parquet, record_file_name
from kfops.serving.payload_columns import PayloadColumns, encode_columns_parquet
from kfops.serving.payload_policy import DEFAULT_FLUSH_SECONDS, FieldPolicy, Retention

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_IDLE_WAKE_SECONDS = 1.0  # the writer wakes at least this often, to report queue-full drops
_DROP_REPORT_SECONDS = 10.0  # queue-full drops are logged at most this often (they are always counted)
_ATEXIT_CLOSE_SECONDS = 5.0
# A partial batch is written once its oldest row has waited this share of flush_seconds: the rest is the write's.
_FLUSH_START_SHARE = 0.5
# Logged columns of fewer rows than this are written through records (see _encode).
_SMALL_REQUEST_ROWS = 32

_open_loggers: weakref.WeakSet[PayloadLogger] = weakref.WeakSet()


@atexit.register
def _close_open_loggers() -> None:
    for logger in list(_open_loggers):
        logger.close(timeout=_ATEXIT_CLOSE_SECONDS)


class PayloadLogger:
    """Log flat request/prediction records to ``<sink>/model=<name>/date=<day>/`` without ever blocking."""

    def __init__(
        self,
        sink_uri: str,
        model_name: str,
        fmt: str = "jsonl",
        max_queue: int = 20_000,
        batch_rows: int = 5_000,  # one file per 5,000 rows at most: fewer, larger objects in the sink
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        on_drop: Callable[[int], None] | None = None,
        fields: FieldPolicy | None = None,
        retention: Retention | None = None,
    ) -> None:
        if not isinstance(sink_uri, str) or not sink_uri.strip():
            raise KfopsError(f"payload log sink_uri must be a non-empty local path or s3:// URI, got {sink_uri!r}")
        if storage.is_s3(sink_uri):
            storage.split_s3(sink_uri)  # raises KfopsError naming the URI when it has no bucket
        if not isinstance(model_name, str) or not _MODEL_NAME.match(model_name):
            raise KfopsError(
                f"payload log model_name must be a non-empty name of letters, digits, '.', '_' or '-' "
                f"(it becomes the model= partition), got {model_name!r}"
            )
        if fmt not in FORMATS:
            raise KfopsError(f"payload log fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
        for name, value in (("max_queue", max_queue), ("batch_rows", batch_rows)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise KfopsError(f"payload log {name} must be a positive integer, got {value!r}")
        if (
            isinstance(flush_seconds, bool)
            or not isinstance(flush_seconds, int | float)
            or not math.isfinite(flush_seconds)
            or flush_seconds <= 0
        ):
            raise KfopsError(f"payload log flush_seconds must be a positive number of seconds, got {flush_seconds!r}")
        if on_drop is not None and not callable(on_drop):
            raise KfopsError(f"payload log on_drop must be callable or None, got {on_drop!r}")

        self.sink_uri = sink_uri.rstrip("/") if storage.is_s3(sink_uri) else sink_uri
        self.model_name = model_name
        self.fmt = fmt
        self.max_queue = max_queue
        self.batch_rows = batch_rows
        self.flush_seconds = float(flush_seconds)
        self.on_drop = on_drop
        self.on_drop_errors = 0  # times on_drop raised (swallowed; logged only when on the writer thread)
        self.fields = fields or None
        self.retention = retention or None
        self._next_retention = 0.0  # monotonic time of the next retention check: at once when the writer starts
        self._deleted_files = 0

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits here for rows, flushes and close
        self._progress = threading.Condition(self._lock)  # flush() waits here for rows to be done
        # Each entry: (monotonic time logged, wall time logged, list of records or one PayloadColumns).
        self._queue: collections.deque[tuple[float, float, list | PayloadColumns]] = collections.deque()
        self._pending = 0  # rows in the queue
        self._accepted = 0  # rows ever accepted onto the queue
        self._taken = 0  # rows the writer has taken off the queue
        self._done = 0  # rows the writer has finished with (written or dropped)
        self._flush_target = 0  # flush() asked for every row up to this one to be done
        self._closing = False
        self._written = 0
        self._dropped = 0
        self._files = 0
        self._full_drops_unreported = 0
        self._next_drop_report = 0.0

        self._thread = threading.Thread(target=self._run, name=f"payload-log-{model_name}", daemon=True)
        self._thread.start()
        _open_loggers.add(self)

    # ----------------------------------------------------------------------------------------------- counters
    @property
    def written(self) -> int:
        """Rows written to the sink."""
        return self._written

    @property
    def dropped(self) -> int:
        """Rows lost: queue full, logger closed, unusable record, or the sink failed."""
        return self._dropped

    @property
    def files(self) -> int:
        """Files written to the sink."""
        return self._files

    @property
    def deleted_files(self) -> int:
        """Files deleted by retention."""
        return self._deleted_files

    @property
    def queued(self) -> int:
        """Rows waiting on the queue now."""
        return self._pending

    @property
    def alive(self) -> bool:
        """Whether the writer thread is running."""
        return self._thread.is_alive()

    # ------------------------------------------------------------------------------------------------ calling
    def log(self, records: list[dict] | PayloadColumns) -> None:
        """Queue records (or one ``PayloadColumns``) for writing and return at once. Never blocks, never raises;
        drops when full."""
        try:
            if not isinstance(records, PayloadColumns):
                # A shallow copy (pointers only, no serialising): the caller may reuse its list once we return.
                records = [records] if isinstance(records, dict) else list(records)
            n = len(records)
            if n == 0:
                return
            with self._lock:
                if self._closing or self._pending + n > self.max_queue:
                    self._dropped += n
                    self._full_drops_unreported += n
                    full = True
                else:
                    was_empty = self._pending == 0
                    self._queue.append((time.monotonic(), time.time(), records))
                    self._pending += n
                    self._accepted += n
                    # Wake the writer only when it has something new to decide: a first row starts the
                    # flush_seconds clock, a full batch is ready to write.
                    if was_empty or self._pending >= self.batch_rows:
                        self._work.notify()
                    full = False
            if full:
                self._report_drop(n)
        except Exception:  # never into the request path; counted, and logged by the writer thread
            with self._lock:
                self._dropped += 1
                self._full_drops_unreported += 1
            self._report_drop(1)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every row queued before this call is written (or dropped); False if the time ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._accepted
            if target > self._flush_target:
                self._flush_target = target
                self._work.notify()
            while self._done < target:
                if not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._progress.wait(remaining if remaining is not None else _IDLE_WAKE_SECONDS)
            return True

    def close(self, timeout: float = 10) -> bool:
        """Write everything queued, then stop the writer thread. Idempotent; False if it did not stop in time."""
        with self._lock:
            if not self._closing:
                self._closing = True
                self._work.notify()
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            _open_loggers.discard(self)
        else:
            log.warning(
                "payload logger for %s did not stop within %ss; %d rows still queued",
                self.model_name,
                timeout,
                self._pending,
            )
        return stopped

    def __enter__(self) -> PayloadLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"PayloadLogger({self.sink_uri!r}, {self.model_name!r}, fmt={self.fmt!r}, written={self._written}, "
            f"dropped={self._dropped}, files={self._files}, queued={self._pending})"
        )

    # ------------------------------------------------------------------------------------------------ writing
    def _report_drop(self, n: int) -> None:
        if self.on_drop is None:
            return
        try:
            self.on_drop(n)
        except Exception:
            self.on_drop_errors += 1
            if threading.current_thread() is self._thread:  # the caller's thread does no I/O, even for this
                log.exception("payload logger for %s: on_drop callback failed", self.model_name)

    def _next_batch(self) -> list[tuple[float, list]] | None:
        """Wait for a batch to write: ``[(wall time logged, records), ...]``.

        Empty when the writer has queue-full drops to report or retention to enforce first; None when closed and
        drained.
        """
        with self._lock:
            while True:
                if self._pending:
                    if self._closing or self._pending >= self.batch_rows or self._flush_target > self._taken:
                        break
                    remaining = self._queue[0][0] + self.flush_seconds * _FLUSH_START_SHARE - time.monotonic()
                    if remaining <= 0:
                        break
                elif self._closing:
                    return None
                else:
                    remaining = _IDLE_WAKE_SECONDS
                if self._full_drops_unreported and time.monotonic() >= self._next_drop_report:
                    return []
                if self.retention is not None and time.monotonic() >= self._next_retention:
                    return []
                self._work.wait(min(remaining, _IDLE_WAKE_SECONDS))
            batch: list[tuple[float, list]] = []
            room = self.batch_rows
            while room and self._queue:
                logged_mono, logged_wall, records = self._queue.popleft()
                if len(records) > room:  # split the entry; the rest keeps its place and its age
                    self._queue.appendleft((logged_mono, logged_wall, records[room:]))
                    records = records[:room]
                batch.append((logged_wall, records))
                room -= len(records)
            taken = self.batch_rows - room
            self._pending -= taken
            self._taken += taken
            return batch

    def _report_full_drops(self, force: bool = False) -> None:
        """Log queue-full drops from the writer thread (at most every few seconds): the caller's does no I/O."""
        with self._lock:
            if not self._full_drops_unreported or (not force and time.monotonic() < self._next_drop_report):
                return
            n, self._full_drops_unreported = self._full_drops_unreported, 0
            self._next_drop_report = time.monotonic() + _DROP_REPORT_SECONDS
        if n:
            log.warning(
                "payload logger for %s dropped %d rows: queue full (max_queue=%d), logger closed or not a list",
                self.model_name,
                n,
                self.max_queue,
            )

    def _run(self) -> None:
        while True:
            try:
                batch = self._next_batch()
                self._report_full_drops(force=batch is None)
                if batch:
                    self._write_batch(batch)
                self._retain(force=batch is None)
                if batch is None:
                    return
            except Exception:  # the thread must outlive any bad batch
                log.exception("payload logger for %s: unexpected error in the writer thread", self.model_name)
                time.sleep(0.05)

    def _retain(self, force: bool = False) -> None:
        """Enforce retention when its check is due (or ``force``d, on close); a failure waits for the next check."""
        if self.retention is None or (not force and time.monotonic() < self._next_retention):
            return
        self._next_retention = time.monotonic() + self.retention.check_seconds
        folder = storage.join(self.sink_uri, payload_log_partition(self.model_name, "")[0])
        try:
            files, size = self.retention.enforce(folder)
        except Exception as err:
            log.warning("payload logger for %s: retention could not clean %s: %s", self.model_name, folder, err)
            return
        if files:
            self._deleted_files += files
            log.info("payload logger for %s: retention deleted %d file(s), %d bytes", self.model_name, files, size)

    def _write_batch(self, batch: list[tuple[float, list | PayloadColumns]]) -> None:
        rows = sum(len(records) for _, records in batch)
        # Per date, the file's parts in the order logged: lists of records and PayloadColumns.
        by_date: dict[str, list[list[dict] | PayloadColumns]] = {}
        unusable = 0
        fields = self.fields
        try:
            for logged_wall, records in batch:
                fallback = None
                if isinstance(records, PayloadColumns):
                    if fields is not None:
                        records = records.with_policy(fields)
                    shared, stamp = records.shared_value("timestamp")
                    if shared:  # one request: one timestamp, one date
                        day = _utc_date(stamp) or dt.datetime.fromtimestamp(logged_wall, dt.UTC).date().isoformat()
                        by_date.setdefault(day, []).append(records)
                        continue
                    records = records.records()  # a timestamp per row: dated row by row below
                for record in records:
                    if not isinstance(record, dict):
                        unusable += 1
                        continue
                    if fields is not None:
                        fields.apply(record)
                    day = _utc_date(record.get("timestamp"))
                    if day is None:
                        if fallback is None:
                            fallback = dt.datetime.fromtimestamp(logged_wall, dt.UTC).date().isoformat()
                        day = fallback
                    parts = by_date.setdefault(day, [])
                    if not parts or isinstance(parts[-1], PayloadColumns):
                        parts.append([])
                    parts[-1].append(record)
            if unusable:
                log.warning("payload logger for %s dropped %d records that are not dicts", self.model_name, unusable)
                self._count(dropped=unusable)
            for day, parts in sorted(by_date.items()):
                self._write_file(day, parts)
        finally:
            with self._lock:
                self._done += rows
                self._progress.notify_all()

    def _write_file(self, day: str, parts: list[list[dict] | PayloadColumns]) -> None:
        rows = sum(len(part) for part in parts)
        uri = storage.join(self.sink_uri, *payload_log_partition(self.model_name, day), record_file_name(self.fmt))
        try:
            storage.write_bytes(uri, _encode(parts, self.fmt))
        except Exception as err:
            log.warning("payload logger for %s dropped %d rows: cannot write %s: %s", self.model_name, rows, uri, err)
            self._count(dropped=rows)
            return
        self._count(written=rows, files=1)

    def _count(self, written: int = 0, dropped: int = 0, files: int = 0) -> None:
        with self._lock:
            self._written += written
            self._dropped += dropped
            self._files += files
        if dropped:
            self._report_drop(dropped)


# ---------------------------------------------------------------------------------------------- serialising
def _encode(parts: list[list[dict] | PayloadColumns], fmt: str) -> bytes:
    """One file of ``parts``, in order. JSONL part by part (lines concatenate); Parquet straight from the columns
    when every part is columns with the same fields, else from the records (the union of their keys)."""
    if fmt == "jsonl":
        # A request of a few rows (batch-1 traffic) is cheaper as records encoded together with its neighbours'
        # (one encoder call per JSONL_CHUNK_RECORDS rows) than as columns encoded one request at a time.
        encoded: list[bytes] = []
        records: list[dict] = []
        for part in parts:
            if not isinstance(part, PayloadColumns):
                records.extend(part)
            elif part.rows < _SMALL_REQUEST_ROWS:
                records.extend(part.records(clean=False))
            else:
                encoded.append(encode_jsonl(records))
                records = []
                encoded.append(part.jsonl())
        encoded.append(encode_jsonl(records))
        return b"".join(encoded)
    if all(isinstance(part, PayloadColumns) for part in parts) and len({tuple(part.fields) for part in parts}) == 1:
        return encode_columns_parquet(parts)
    records = [r for part in parts for r in (part.records() if isinstance(part, PayloadColumns) else part)]
    return encode_parquet(records)


def _utc_date(value: Any) -> str | None:
    """The UTC calendar date of a timestamp (ISO string, datetime or epoch seconds), or None if unusable."""
    if isinstance(value, str) and len(value) > 10 and value[10] == "T" and value.endswith(("+00:00", "Z")):
        return value[:10]  # already UTC (what the predictor writes): no parse per record
    try:
        if isinstance(value, str):
            moment = dt.datetime.fromisoformat(value.strip())
        elif isinstance(value, dt.datetime):  # pandas.Timestamp too
            moment = value
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return dt.datetime.fromtimestamp(value, dt.UTC).date().isoformat()
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date().isoformat()
