"""Reading a window of rows in bounded memory: one file or a folder of them, local or ``s3://``.

A window is a CSV (``.csv``, ``.csv.gz``), Parquet (``.parquet``, ``.pq``) or JSON Lines (``.jsonl``,
``.ndjson``) file, or a folder holding such files at any depth, such as the serving payload log::

    <sink>/model=<name>/date=YYYY-MM-DD/<time>-<uuid>.jsonl   (or .parquet)

``key=value`` folder names are partitions: ``date`` is filtered by ``date_from``/``date_to`` (inclusive,
``YYYY-MM-DD``) and ``model`` by ``model_name`` without opening the files; ``model_version`` keeps only the rows
whose ``model_version`` column equals it (a file without that column contributes nothing). Files are read one
at a time in chunks of ``chunk_rows`` rows: Parquet by record batches (only the columns asked for; S3 objects
through ranged GETs), CSV and JSONL by pandas' chunked readers, so memory holds one chunk whatever the window's
size. Hidden files (``.name``, ``_name``) are skipped, as the storage seam's temporary files are.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kfops.components import storage, tables
from kfops.components.contracts import OUTCOMES_DIR, KfopsError, check_payload_log_format, partitions_of

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 131_072
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def file_format(uri: str) -> str | None:
    """``parquet``, ``csv`` or ``jsonl`` from the file's name, or None for any other file."""
    return tables.table_format(uri)


@dataclass
class WindowFile:
    uri: str
    fmt: str
    partitions: dict[str, str] = field(default_factory=dict)


@dataclass
class Window:
    """The files of one window of rows, after partition filters."""

    uri: str
    files: list[WindowFile]
    model_version: str = ""
    skipped: list[str] = field(default_factory=list)  # files that are not CSV/Parquet/JSONL
    filtered_out: int = 0  # files a partition filter left out
    columns: list[str] = field(default_factory=list)  # every column of the files read, asked for or not

    def note(self, names) -> None:
        known = set(self.columns)
        self.columns.extend(str(n) for n in names if str(n) not in known)

    @property
    def empty(self) -> bool:
        return not self.files


def _sniff_format(uri: str) -> str | None:
    """The format of a file named without a suffix (a KFP Dataset artifact), from its first bytes."""
    return tables.sniff_format(b"".join(storage.iter_bytes(uri, 0, 64)))


def _check_date(name: str, value: str) -> str:
    if value and not _DATE.match(value):
        raise KfopsError(f"{name} must be a date YYYY-MM-DD, got {value!r}")
    return value


def open_window(
    uri: str,
    *,
    date_from: str = "",
    date_to: str = "",
    model_name: str = "",
    model_version: str = "",
) -> Window:
    """List the files of a window (a file, or a folder of files) and apply the partition filters."""
    if not uri or not str(uri).strip():
        raise KfopsError("no data given: pass a CSV, Parquet or JSONL file or a folder of them")
    uri = str(uri)
    _check_date("date_from", date_from)
    _check_date("date_to", date_to)
    if date_from and date_to and date_from > date_to:
        raise KfopsError(f"date_from {date_from} is after date_to {date_to}")
    listed = storage.list_files(uri)
    if not listed:
        is_folder = Path(uri).is_dir() if not storage.is_s3(uri) else uri.endswith("/")
        if is_folder:  # an empty window (no logs yet): the result says so, it is no error
            return Window(uri=uri, files=[], model_version=model_version)
        if not storage.exists(uri):
            raise KfopsError(f"{uri} does not exist")
        fmt = file_format(uri) or _sniff_format(uri)
        if fmt is None:
            raise KfopsError(f"{uri}: unsupported file type; use .csv, .csv.gz, .parquet or .jsonl (or a folder)")
        return Window(
            uri=uri, files=[WindowFile(uri, fmt, partitions_of(uri.split("://", 1)[-1]))], model_version=model_version
        )
    window = Window(uri=uri, files=[], model_version=model_version)
    root = uri.rstrip("/")
    for file_uri, _size in listed:
        fmt = file_format(file_uri)
        # A payload-log sink also holds the ground truth posted to the predictor (<sink>/outcomes/...): those
        # rows are no predictions.
        if OUTCOMES_DIR in file_uri.split("/")[:-1] and OUTCOMES_DIR not in root.split("/"):
            window.skipped.append(file_uri)
            continue
        if fmt is None:
            window.skipped.append(file_uri)
            continue
        # The root's own key=value folders count too (a window given as <sink>/model=fraud is that model's).
        parts = partitions_of(file_uri.split("://", 1)[-1])
        date = parts.get("date", "")
        if (
            (date_from and date and date < date_from)
            or (date_to and date and date > date_to)
            or (model_name and "model" in parts and parts["model"] != model_name)
        ):
            window.filtered_out += 1
            continue
        window.files.append(WindowFile(file_uri, fmt, parts))
    if window.skipped:
        log.info("%s: %d file(s) that are not CSV, Parquet or JSONL were skipped", uri, len(window.skipped))
    return window


def _select(frame: pd.DataFrame, columns: Sequence[str] | None) -> pd.DataFrame:
    if columns is None:
        return frame
    return frame[[c for c in frame.columns if c in set(columns)]]


def _parquet_chunks(uri: str, columns: Sequence[str] | None, chunk_rows: int, window: Window) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    # A local path goes to Arrow's own reader; an S3 object through ranged GETs. No pre-buffering: with it,
    # Arrow reads ahead and memory grows with the file (1.8 GB for 10 million rows x 20 columns here).
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(storage.open_binary(uri)) if storage.is_s3(uri) else uri
        try:
            parquet = pq.ParquetFile(source, pre_buffer=False)
            stack.callback(parquet.close)
        except Exception as err:
            raise KfopsError(f"cannot read Parquet file {uri}: {err}") from err
        names = parquet.schema_arrow.names
        window.note(names)
        wanted = names if columns is None else [c for c in names if c in set(columns)]
        if parquet.metadata.num_rows == 0:
            return
        if not wanted:
            # None of the columns asked for: the rows still count (a window with the wrong columns is named).
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                for start in range(0, rows, chunk_rows):
                    yield pd.DataFrame(index=pd.RangeIndex(min(chunk_rows, rows - start)))
            return
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=wanted):
            yield batch.to_pandas(split_blocks=True)  # one block per column: no 2-D copy


def _text_chunks(
    uri: str, fmt: str, columns: Sequence[str] | None, chunk_rows: int, window: Window
) -> Iterator[pd.DataFrame]:
    with storage.open_binary(uri) as fh:
        try:
            if fmt == "csv":
                reader = pd.read_csv(
                    fh,
                    chunksize=chunk_rows,
                    compression="gzip" if uri.lower().endswith(".gz") else None,
                    low_memory=False,
                )
            else:
                # Timestamps stay text (no date guessing) and numbers stay as JSON wrote them.
                reader = pd.read_json(fh, lines=True, chunksize=chunk_rows, convert_dates=False, dtype=False)
            with reader:
                for chunk in reader:
                    window.note(chunk.columns)
                    yield _select(chunk, columns)
        except pd.errors.EmptyDataError:
            return
        except KfopsError:
            raise
        except Exception as err:
            kind = "CSV" if fmt == "csv" else "JSON Lines"
            raise KfopsError(f"cannot read {kind} file {uri}: {err}") from err


def iter_chunks(
    window: Window, columns: Sequence[str] | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[pd.DataFrame, WindowFile]]:
    """``(rows, the file they came from)`` for every chunk of the window, with ``columns`` (all when None)
    where the file has them. Rows of other model versions are dropped when the window names one. Every column
    the files have is noted in ``window.columns`` as they are read."""
    wanted = None if columns is None else list(dict.fromkeys([*columns, "model_version"]))
    for item in window.files:
        try:
            chunks = (
                _parquet_chunks(item.uri, wanted, chunk_rows, window)
                if item.fmt == "parquet"
                else _text_chunks(item.uri, item.fmt, wanted, chunk_rows, window)
            )
            for chunk in chunks:
                if "log_format" in chunk.columns:
                    check_payload_log_format(chunk["log_format"], item.uri)
                if window.model_version:
                    if "model_version" not in chunk.columns:
                        continue
                    chunk = chunk[chunk["model_version"].astype(str) == str(window.model_version)]
                if columns is not None and "model_version" not in columns and "model_version" in chunk.columns:
                    chunk = chunk.drop(columns="model_version")
                if len(chunk):
                    yield chunk, item
        except FileNotFoundError as err:
            raise KfopsError(f"{item.uri} does not exist (it was listed a moment ago)") from err


def frame_chunks(frame: pd.DataFrame, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """An in-memory table in chunks, as a window's would come."""
    for start in range(0, len(frame), chunk_rows):
        yield frame.iloc[start : start + chunk_rows]
