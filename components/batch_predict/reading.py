"""Batch prediction's reading: a shard's pieces streamed in bounded chunks from Parquet, JSONL or CSV byte
ranges, with a prefetching thread.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kfops.components import storage
from kfops.components.batch_predict.plan import _open_parquet
from kfops.components.batch_predict.records import JSONL, PARQUET, Piece
from kfops.components.contracts import KfopsError


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class _Chunk:
    piece: Piece
    first_row: int  # the file row (or line) of the chunk's first row
    frame: pd.DataFrame
    rows: np.ndarray | None = None  # per-row file row/line numbers when not consecutive (JSONL blank lines)
    arrow: Any = None  # Parquet: the record batch the frame came from (passthrough columns keep its types)


class _IterStream(io.RawIOBase):
    """A readable stream over an iterator of byte blocks (for pandas' CSV reader)."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        super().__init__()
        self.blocks = blocks
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            try:
                self.pending = next(self.blocks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def _parquet_chunks(piece: Piece, columns: list[str], chunk_rows: int) -> Iterator[_Chunk]:
    pf = _open_parquet(piece.uri)
    try:
        present = set(pf.schema_arrow.names)
        missing = [c for c in columns if c not in present]
        if missing:
            raise KfopsError(f"batch prediction: {piece.uri} has no column(s) {missing}; it has: {', '.join(present)}")
        row = piece.group_start
        groups = list(range(*piece.row_groups))
        for batch in pf.iter_batches(batch_size=chunk_rows, row_groups=groups, columns=columns, use_threads=True):
            a, b = max(row, piece.start), min(row + batch.num_rows, piece.stop)
            if a < b:
                part = batch.slice(a - row, b - a)
                yield _Chunk(piece, a, part.to_pandas(), arrow=part)
            row += batch.num_rows
            if row >= piece.stop:
                break
    except (KfopsError, FileNotFoundError):
        raise
    except Exception as err:
        raise KfopsError(f"batch prediction: cannot read Parquet file {piece.uri}: {err}") from err
    finally:
        pf.close()


def _line_blocks(piece: Piece, chunk_rows: int) -> Iterator[tuple[int, list[bytes]]]:
    """``(first line number, lines)`` of the piece's byte range, ``chunk_rows`` lines at a time."""
    pending = b""
    lines: list[bytes] = []
    line = piece.start
    for block in storage.iter_bytes(piece.uri, piece.byte_start, piece.byte_stop - piece.byte_start):
        parts = (pending + block).split(b"\n")
        pending = parts.pop()
        lines.extend(parts)
        full = len(lines) - len(lines) % chunk_rows
        for at in range(0, full, chunk_rows):
            yield line, lines[at : at + chunk_rows]
            line += chunk_rows
        del lines[:full]
    if pending:
        lines.append(pending)
    if lines:
        yield line, lines


def _jsonl_chunks(piece: Piece, columns: list[str], chunk_rows: int) -> Iterator[_Chunk]:
    import orjson

    for first, lines in _line_blocks(piece, chunk_rows):
        numbers = [first + i for i, text in enumerate(lines) if text.strip()]
        texts = [lines[n - first] for n in numbers]
        if not texts:
            continue
        try:
            records = orjson.loads(b"[" + b",".join(texts) + b"]")
        except orjson.JSONDecodeError:
            for n, text in zip(numbers, texts, strict=True):
                try:
                    orjson.loads(text)
                except orjson.JSONDecodeError as err:
                    raise KfopsError(f"batch prediction: {piece.name} line {n + 1} is not valid JSON: {err}") from err
            raise
        for n, record in zip(numbers, records, strict=True):
            if not isinstance(record, dict):
                raise KfopsError(
                    f"batch prediction: {piece.name} line {n + 1} is a JSON {type(record).__name__}, not an object"
                )
        frame = pd.DataFrame.from_records(records)
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise KfopsError(
                f"batch prediction: {piece.name} has no column(s) {absent} in lines {numbers[0] + 1}-{numbers[-1] + 1}"
            )
        rows = None if numbers[-1] - numbers[0] == len(numbers) - 1 else np.asarray(numbers, dtype=np.int64)
        yield _Chunk(piece, numbers[0], frame[columns], rows)


def _csv_chunks(piece: Piece, columns: list[str], text_columns: list[str], chunk_rows: int) -> Iterator[_Chunk]:
    blocks = storage.iter_bytes(piece.uri, piece.byte_start, piece.byte_stop - piece.byte_start)
    if piece.byte_start > 0:
        header = b"".join(storage.iter_bytes(piece.uri, 0, piece.header_stop))
        blocks = _prepend(header, blocks)
    stream = io.BufferedReader(_IterStream(blocks), buffer_size=1 << 20)
    row = piece.start
    try:
        reader = pd.read_csv(
            stream,
            usecols=lambda c: c in columns,
            dtype={c: "string" for c in text_columns},
            chunksize=chunk_rows,
        )
        for frame in reader:
            absent = [c for c in columns if c not in frame.columns]
            if absent:
                raise KfopsError(f"batch prediction: {piece.name} has no column(s) {absent}")
            if row >= piece.stop:
                break
            frame = frame.iloc[: piece.stop - row]
            yield _Chunk(piece, row, frame[columns])
            row += len(frame)
    except (KfopsError, FileNotFoundError):
        raise
    except pd.errors.EmptyDataError:
        return
    except Exception as err:
        raise KfopsError(f"batch prediction: cannot read CSV file {piece.uri} near data row {row}: {err}") from err


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _chunks(piece: Piece, columns: list[str], text_columns: list[str], chunk_rows: int) -> Iterator[_Chunk]:
    try:
        if piece.format == PARQUET:
            yield from _parquet_chunks(piece, columns, chunk_rows)
        elif piece.format == JSONL:
            yield from _jsonl_chunks(piece, columns, chunk_rows)
        else:
            yield from _csv_chunks(piece, columns, text_columns, chunk_rows)
    except FileNotFoundError as err:
        raise KfopsError(f"batch prediction: input file {piece.uri} does not exist (it did when planned)") from err


def _prefetched(chunks: Iterator[_Chunk], depth: int = 2) -> Iterator[_Chunk]:
    """Read the next chunks on a thread while this one is scored (Parquet and torch both release the GIL)."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        slots.put(chunk, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as err:  # handed to the consumer, raised there
            slots.put(err)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # the reader's files, whether it ran out or was stopped

    thread = threading.Thread(target=produce, name="batch-predict-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(0.05)
