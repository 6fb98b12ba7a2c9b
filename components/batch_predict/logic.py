"""Batch prediction: score Parquet, JSONL or CSV files with one model version, in shards that run in parallel.

Three steps, each a plain function the KFP components and ``kfops predict`` call:

1. ``plan_batch`` resolves the model reference ONCE (``NAME@champion`` becomes ``models:/NAME/<version>``, so every
   shard scores with the same version even if the alias moves mid-job), lists the input files (one file, or every
   ``.parquet``/``.jsonl``/``.csv`` file under a folder or ``s3://`` prefix), checks their columns against the
   model's feature spec, and cuts the rows into shards (``plan_shards``). It writes ``<output>/_plan.json``.
2. ``score_shard`` streams its shard's rows in chunks of ``chunk_rows`` (memory stays bounded), scores them with
   the model's own transform and network, and writes ``<output>/part-<i>-of-<n>.parquet`` (or ``.jsonl``) with
   ``request_id``, ``model``, ``model_version``, ``prediction``, ``probability`` and any passthrough columns,
   then a receipt ``<output>/_shards/part-<i>-of-<n>.json``. Both writes are whole-or-nothing (a temporary file
   renamed, or one S3 PUT) and the names come from the shard, so a retried shard overwrites, never duplicates.
3. ``summarize_batch`` checks that every planned shard left its receipt and file, and writes
   ``<output>/_manifest.json`` (files, rows per shard, total rows, the model version); a missing shard is an
   error naming it. Readers such as ``pandas.read_parquet(output)`` skip ``_``- and ``.``-prefixed names.

Shards: the input is one stream of rows (files in sorted order) cut at ``shards`` balanced points, or every
``shard_rows`` rows. A cut lands on a Parquet row-group boundary, or inside a row group larger than a shard (its
rows are then decoded by both shards, each keeping its own), on a JSONL/CSV line (the planner indexes line
offsets, so a shard reads only its byte range), or at a file end. A CSV file holding a quote character is never
cut (a quoted field may hold a newline); neither is gzip-compressed text, which is not supported at all (convert
it to Parquet). Every row lands in exactly one shard.

Request ids: the ``id_column``'s values as text when given, else ``<file>:<row>``: the file's path below the input
folder (its name for a single file) and the 0-based row (Parquet), data row (CSV, blank lines skipped) or line
(JSONL) number. Passthrough columns keep their Parquet type; from CSV and JSONL they are written as text, since
chunks of a text file cannot promise one type.

One job per output folder at a time. Part files left by an earlier plan with another shard count are not deleted;
the manifest lists them as ``stale_files``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import itertools
import json
import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfops.components import storage
from kfops.components.contracts import KfopsError

log = logging.getLogger(__name__)

PARQUET, JSONL, CSV = "parquet", "jsonl", "csv"
INPUT_SUFFIXES = {".parquet": PARQUET, ".pq": PARQUET, ".jsonl": JSONL, ".ndjson": JSONL, ".csv": CSV}
OUTPUT_FORMATS = (PARQUET, JSONL)
OUTPUT_COLUMNS = ("request_id", "model", "model_version", "prediction", "probability")
DEFAULT_SHARD_ROWS = 250_000
DEFAULT_CHUNK_ROWS = 65_536
PLAN_FILE = "_plan.json"
MANIFEST_FILE = "_manifest.json"
RECEIPTS_DIR = "_shards"
_MAX_CHECKPOINTS = 1 << 15  # line offsets kept per text file: cuts land within ~lines/32k of their target
_SCAN_BLOCK = 8 << 20
_REPEATING = ["model", "model_version", "prediction"]


# ------------------------------------------------------------------------------------------------ contracts
def _int(value: Any) -> int:
    """An int from a JSON number: kfp.local hands ints inside list/dict parameters over as floats."""
    return int(value)


@dataclass
class Piece:
    """Rows ``[start, stop)`` of one input file: Parquet rows, CSV data rows or JSONL lines (0-based)."""

    uri: str
    name: str  # the file's path below the input folder: messages and request ids use it
    format: str
    start: int
    stop: int
    row_groups: list[int] = field(default_factory=list)  # Parquet: [first, end) row groups covering the rows
    group_start: int = 0  # Parquet: the file row where the first of those row groups begins
    byte_start: int = 0  # JSONL/CSV: byte range holding the lines; a CSV range from 0 includes its header
    byte_stop: int = 0
    header_stop: int = 0  # CSV: the header is bytes [0, header_stop)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Piece:
        ints = ("start", "stop", "group_start", "byte_start", "byte_stop", "header_stop")
        values = {k: _int(data[k]) if k in ints else data[k] for k in data if k in cls.__dataclass_fields__}
        values["row_groups"] = [_int(g) for g in data.get("row_groups", [])]
        return cls(**values)


@dataclass
class ShardJob:
    """How every shard of a plan is scored and written; each planned shard carries it, so a shard is
    self-describing (a ParallelFor item needs nothing else)."""

    model_ref: str  # pinned: models:/NAME/VERSION, or a model folder
    model_name: str
    model_version: str
    output_uri: str
    output_format: str = PARQUET
    id_column: str = ""
    passthrough: list[str] = field(default_factory=list)
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardJob:
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["chunk_rows"] = _int(values.get("chunk_rows", DEFAULT_CHUNK_ROWS))
        values["passthrough"] = [str(c) for c in values.get("passthrough", [])]
        return cls(**values)


@dataclass
class Shard:
    """One unit of parallel work: consecutive pieces of the input, ``rows`` rows in all (lines for text)."""

    index: int
    count: int
    rows: int
    plan_id: str
    pieces: list[Piece]
    job: ShardJob | None = None  # set by plan_batch

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}-of-{self.count:05d}"

    def output_uri(self, output_uri: str, output_format: str) -> str:
        return storage.join(output_uri, f"{self.name}.{output_format}")

    def receipt_uri(self, output_uri: str) -> str:
        return storage.join(output_uri, RECEIPTS_DIR, f"{self.name}.json")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        if not isinstance(data, dict) or "pieces" not in data:
            raise KfopsError(f"batch prediction: not a shard spec: {str(data)[:200]}")
        return cls(
            index=_int(data["index"]),
            count=_int(data["count"]),
            rows=_int(data["rows"]),
            plan_id=str(data["plan_id"]),
            pieces=[Piece.from_dict(p) for p in data["pieces"]],
            job=ShardJob.from_dict(data["job"]) if data.get("job") else None,
        )


@dataclass
class BatchPlan:
    """What ``plan_batch`` decided: the pinned model, the shards, and how to write them."""

    input_uri: str
    output_uri: str
    model_ref: str  # pinned: models:/NAME/VERSION, or a model folder
    model_name: str
    model_version: str
    output_format: str
    id_column: str
    passthrough: list[str]
    chunk_rows: int
    rows: int  # rows planned (JSONL/CSV: lines, blank ones included)
    files: int
    plan_id: str
    created_at: str
    shards: list[Shard]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchPlan:
        values = dict(data)
        values["shards"] = [Shard.from_dict(s) for s in data["shards"]]
        for name in ("chunk_rows", "rows", "files"):
            values[name] = _int(values[name])
        return cls(**values)

    @classmethod
    def load(cls, output_uri: str) -> BatchPlan:
        uri = storage.join(output_uri, PLAN_FILE)
        try:
            return cls.from_dict(json.loads(storage.read_bytes(uri)))
        except FileNotFoundError as err:
            raise KfopsError(f"batch prediction: {uri} does not exist; run the plan step first") from err
        except (ValueError, KeyError, TypeError) as err:
            raise KfopsError(f"batch prediction: cannot read the plan {uri}: {err}") from err


@dataclass
class ShardResult:
    """A scored shard, as its receipt records it."""

    index: int
    count: int
    plan_id: str
    output: str
    rows: int
    model_name: str
    model_version: str
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardResult:
        values = {k: data[k] for k in cls.__dataclass_fields__}
        for name in ("index", "count", "rows"):
            values[name] = _int(values[name])
        values["seconds"] = float(values["seconds"])
        return cls(**values)


# ------------------------------------------------------------------------------------------------ planning
@dataclass
class _InputFile:
    uri: str
    name: str
    format: str
    size: int
    rows: int
    columns: list[str]
    group_starts: list[int] = field(default_factory=list)  # Parquet: first row of each row group, then rows
    checkpoints: list[tuple[int, int]] = field(default_factory=list)  # text: (line, byte offset) where cuts may go
    header_stop: int = 0
    splittable: bool = True


def _format_of(uri: str) -> str | None:
    lowered = uri.lower()
    for suffix, kind in INPUT_SUFFIXES.items():
        if lowered.endswith(suffix):
            return kind
    return None


def list_inputs(input_uri: str) -> list[tuple[str, str, int]]:
    """``(uri, name below the input, size)`` of each input file: the file itself, or the supported files under a
    folder or ``s3://`` prefix (sorted; ``.``/``_`` names skipped)."""
    if not isinstance(input_uri, str) or not input_uri.strip():
        raise KfopsError("batch prediction: no input given; pass a file, a folder or an s3:// URI")
    input_uri = input_uri.strip()
    if input_uri.lower().endswith((".gz", ".bz2", ".zst", ".zip")):
        raise KfopsError(
            f"batch prediction: {input_uri} is compressed text; convert it to Parquet (or plain CSV/JSONL)"
        )
    if storage.is_s3(input_uri):
        storage.split_s3(input_uri)
        if _format_of(input_uri):
            try:
                return [(input_uri, input_uri.rsplit("/", 1)[-1], storage.size(input_uri))]
            except FileNotFoundError:
                pass  # perhaps a folder named like a file (Spark writes data.parquet/part-*.parquet)
        listed = storage.list_files(input_uri)
        base = input_uri.rstrip("/") + "/"
    else:
        path = Path(input_uri)
        if path.is_file():
            if not _format_of(input_uri):
                raise KfopsError(f"batch prediction: {input_uri}: unsupported file type; use .parquet, .jsonl or .csv")
            return [(str(path), path.name, path.stat().st_size)]
        if not path.is_dir():
            raise KfopsError(f"batch prediction: input {input_uri} does not exist")
        listed = storage.list_files(input_uri)
        base = str(path) + os.sep
    files = [(uri, uri[len(base) :].replace(os.sep, "/"), size) for uri, size in listed if _format_of(uri)]
    if not files:
        others = [uri for uri, _ in listed]
        hint = f" (it holds {len(others)} other file(s), e.g. {others[0]})" if others else ""
        raise KfopsError(f"batch prediction: no .parquet, .jsonl or .csv files under {input_uri}{hint}")
    return files


def _scan_parquet(uri: str, name: str, size: int) -> _InputFile:
    try:
        with _open_parquet(uri) as pf:
            meta = pf.metadata
            columns = [str(c) for c in meta.schema.to_arrow_schema().names]
            starts = [0]
            for g in range(meta.num_row_groups):
                starts.append(starts[-1] + meta.row_group(g).num_rows)
    except FileNotFoundError as err:
        raise KfopsError(f"batch prediction: input file {uri} does not exist") from err
    except KfopsError:
        raise
    except Exception as err:
        raise KfopsError(f"batch prediction: cannot read Parquet file {uri}: {err}") from err
    return _InputFile(uri, name, PARQUET, size, starts[-1], columns, group_starts=starts)


def _scan_text(uri: str, name: str, fmt: str, size: int) -> _InputFile:
    """Count the lines of a JSONL/CSV file and keep the byte offsets of every ``stride``-th one, in one pass."""
    stride = 1
    checkpoints: list[tuple[int, int]] = []
    header = b""
    data_start = -1 if fmt == CSV else 0  # CSV: data starts after the header's newline
    lines = 0  # newlines seen after data_start: complete lines
    quoted = False
    last_byte = b"\n"
    offset = 0
    try:
        for block in storage.iter_bytes(uri, chunk_size=_SCAN_BLOCK):
            quoted = quoted or (fmt == CSV and b'"' in block)
            at = 0
            if data_start < 0:
                cut = block.find(b"\n")
                if cut < 0:
                    header += block
                    offset += len(block)
                    continue
                header += block[:cut]
                data_start, at = offset + cut + 1, cut + 1
            if not checkpoints:
                checkpoints.append((0, offset + at))
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8)[at:] == 10)
            if newlines.size:
                numbers = lines + 1 + np.arange(newlines.size)  # the line each newline starts
                keep = numbers % stride == 0
                starts = offset + at + newlines[keep] + 1
                checkpoints.extend(zip(numbers[keep].tolist(), starts.tolist(), strict=True))
                lines += int(newlines.size)
                while len(checkpoints) > _MAX_CHECKPOINTS:
                    stride *= 2
                    checkpoints = [c for c in checkpoints if c[0] % stride == 0]
            last_byte = block[-1:] or last_byte
            offset += len(block)
    except FileNotFoundError as err:
        raise KfopsError(f"batch prediction: input file {uri} does not exist") from err
    data_start = offset if data_start < 0 else data_start  # a CSV with no newline: a header and no rows
    if last_byte != b"\n" and offset > data_start:
        lines += 1  # a last line with no newline
    checkpoints = [c for c in checkpoints if c[1] < offset]  # a cut at the very end is the file's end
    if fmt == JSONL:
        return _InputFile(uri, name, fmt, size, lines, _jsonl_keys(uri), checkpoints=checkpoints)
    columns = _csv_header(uri, header)
    if quoted:  # a quoted field may hold a newline: count real records, never cut the file
        return _InputFile(uri, name, fmt, size, _count_csv_records(uri), columns, splittable=False)
    return _InputFile(uri, name, fmt, size, lines, columns, checkpoints=checkpoints, header_stop=data_start)


def _csv_header(uri: str, header: bytes) -> list[str]:
    if not header.strip():
        return []
    try:
        return [str(c) for c in pd.read_csv(io.BytesIO(header + b"\n"), nrows=0).columns]
    except Exception as err:
        raise KfopsError(f"batch prediction: cannot read the CSV header of {uri}: {err}") from err


def _count_csv_records(uri: str) -> int:
    """Data rows of a CSV whose quoted fields may hold newlines: a real CSV parse, streamed."""
    import pyarrow.csv as pacsv

    rows = 0
    try:
        with storage.open_binary(uri) as fh:
            reader = pacsv.open_csv(fh, read_options=pacsv.ReadOptions(block_size=1 << 24))
            for batch in reader:
                rows += batch.num_rows
    except StopIteration:
        return rows
    except Exception as err:
        raise KfopsError(f"batch prediction: cannot read CSV file {uri}: {err}") from err
    return rows


def _jsonl_keys(uri: str) -> list[str]:
    """The keys of a JSONL file's first record (blank lines skipped)."""
    import orjson

    pending, line_no = b"", 0
    for block in storage.iter_bytes(uri, chunk_size=1 << 16):
        pending += block
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            line_no += 1
            if line.strip():
                return _record_keys(uri, line, line_no, orjson)
    return _record_keys(uri, pending, line_no + 1, orjson) if pending.strip() else []


def _record_keys(uri: str, line: bytes, line_no: int, orjson) -> list[str]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        raise KfopsError(f"batch prediction: {uri} line {line_no} is not valid JSON: {err}") from err
    if not isinstance(record, dict):
        raise KfopsError(f"batch prediction: {uri} line {line_no} is a JSON {type(record).__name__}, not an object")
    return [str(k) for k in record]


def scan_inputs(input_uri: str) -> list[_InputFile]:
    """Every input file with its rows and where it may be cut (reads Parquet footers, scans text once)."""
    scanned = []
    for uri, name, size in list_inputs(input_uri):
        fmt = _format_of(uri)
        scanned.append(_scan_parquet(uri, name, size) if fmt == PARQUET else _scan_text(uri, name, fmt, size))
    return scanned


def _cut_points(files: Sequence[_InputFile], shard_rows: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Global row positions where a shard may end, and open intervals where any row will do (Parquet row groups
    larger than a shard)."""
    allowed: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
    free: list[tuple[int, int]] = []
    base = 0
    for f in files:
        if f.format == PARQUET:
            starts = np.asarray(f.group_starts, dtype=np.int64)
            allowed.append(base + starts)
            free.extend((base + a, base + b) for a, b in itertools.pairwise(starts.tolist()) if b - a > shard_rows)
        elif f.splittable:
            allowed.append(base + np.asarray([line for line, _ in f.checkpoints] + [f.rows], dtype=np.int64))
        else:
            allowed.append(np.asarray([base, base + f.rows], dtype=np.int64))
        base += f.rows
    return np.unique(np.concatenate(allowed)), free


def _snap(target: int, positions: np.ndarray, free: list[tuple[int, int]]) -> int:
    if any(lo < target < hi for lo, hi in free):
        return target
    at = int(np.clip(np.searchsorted(positions, target), 1, len(positions) - 1))
    before, after = int(positions[at - 1]), int(positions[at])
    return before if target - before <= after - target else after


def plan_shards(
    input_uri: str | Sequence[_InputFile],
    shard_rows: int | None = None,
    shards: int | None = None,
    plan_id: str = "",
) -> list[Shard]:
    """Cut the input's rows into shards: ``shards`` balanced ones, or one per ``shard_rows`` rows (default
    250,000). Every row is in exactly one shard; shards with no rows are left out."""
    files = scan_inputs(input_uri) if isinstance(input_uri, str) else list(input_uri)
    for label, value in (("shard_rows", shard_rows), ("shards", shards)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise KfopsError(f"batch prediction: {label} must be a positive integer, got {value!r}")
    total = sum(f.rows for f in files)
    if total == 0:
        where = input_uri if isinstance(input_uri, str) else ", ".join(f.uri for f in files)
        raise KfopsError(f"batch prediction: input {where} has no rows")
    wanted = shards if shards else math.ceil(total / (shard_rows or DEFAULT_SHARD_ROWS))
    wanted = max(1, min(wanted, total))
    positions, free = _cut_points(files, total / wanted)
    # Snap each balanced target to the nearest allowed cut; repeats would be empty shards and go.
    snapped = {_snap(round(k * total / wanted), positions, free) for k in range(1, wanted)}
    cuts = [0, *sorted(c for c in snapped if 0 < c < total), total]
    bounds = list(itertools.pairwise(cuts))
    plan_id = plan_id or _digest({"files": [(f.uri, f.size, f.rows) for f in files], "cuts": cuts})
    return [
        Shard(index=i, count=len(bounds), rows=b - a, plan_id=plan_id, pieces=_pieces(files, a, b))
        for i, (a, b) in enumerate(bounds)
    ]


def _pieces(files: Sequence[_InputFile], first: int, end: int) -> list[Piece]:
    """The pieces of files holding global rows ``[first, end)``."""
    pieces = []
    base = 0
    for f in files:
        a, b = max(first, base) - base, min(end, base + f.rows) - base
        base += f.rows
        if a >= b:
            continue
        piece = Piece(uri=f.uri, name=f.name, format=f.format, start=a, stop=b)
        if f.format == PARQUET:
            starts = f.group_starts
            g0 = int(np.searchsorted(starts, a, side="right")) - 1
            g1 = int(np.searchsorted(starts, b, side="left"))
            piece.row_groups, piece.group_start = [g0, g1], starts[g0]
        elif not f.splittable:
            piece.byte_start, piece.byte_stop = 0, f.size
        else:
            offsets = dict(f.checkpoints)
            piece.byte_start = offsets[a]
            piece.byte_stop = offsets[b] if b < f.rows else f.size
            piece.header_stop = f.header_stop
        pieces.append(piece)
    return pieces


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_options(output_format: str, id_column: str, passthrough: Sequence[str], chunk_rows: int) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise KfopsError(
            f"batch prediction: output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}"
        )
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows <= 0:
        raise KfopsError(f"batch prediction: chunk_rows must be a positive integer, got {chunk_rows!r}")
    clash = [c for c in passthrough if c in OUTPUT_COLUMNS]
    if clash:
        raise KfopsError(
            f"batch prediction: passthrough column(s) {clash} would clash with the output columns "
            f"{list(OUTPUT_COLUMNS)}"
        )
    if len(set(passthrough)) != len(passthrough):
        raise KfopsError(f"batch prediction: passthrough columns repeat: {list(passthrough)}")
    if id_column is not None and not isinstance(id_column, str):
        raise KfopsError(f"batch prediction: id_column must be a column name, got {id_column!r}")


def _check_columns(files: Sequence[_InputFile], required: Sequence[str], what: str) -> None:
    for f in files:
        if f.rows == 0:
            continue
        missing = [c for c in required if c not in f.columns]
        if missing:
            shown = ", ".join(f.columns[:30]) + (" ..." if len(f.columns) > 30 else "")
            raise KfopsError(
                f"batch prediction: {f.uri} has no {what} column(s) {missing}"
                + (" (checked on its first line)" if f.format == JSONL else "")
                + f"; it has: {shown or 'no columns'}"
            )


def normalize_output_uri(output_uri: str) -> str:
    """The output folder as every step names it: stripped, no trailing ``/`` on an s3:// prefix, never a file."""
    if not isinstance(output_uri, str) or not output_uri.strip():
        raise KfopsError("batch prediction: no output given; pass a folder or an s3:// URI")
    output_uri = output_uri.strip()
    if storage.is_s3(output_uri):
        output_uri = output_uri.rstrip("/")
        storage.split_s3(output_uri)
    elif Path(output_uri).is_file():
        raise KfopsError(f"batch prediction: output {output_uri} is a file; give a folder")
    return output_uri


def plan_batch(
    input_uri: str,
    output_uri: str,
    model: str,
    tracking_uri: str = "",
    shard_rows: int | None = None,
    shards: int | None = None,
    id_column: str = "",
    passthrough: Sequence[str] = (),
    output_format: str = PARQUET,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    loaded=None,
) -> BatchPlan:
    """Resolve the model once, check the input's columns, cut shards and write ``<output>/_plan.json``.

    ``model`` is a registry reference (``NAME@champion``, ``NAME/3``, ``models:/...``) or a model folder; the
    plan pins it to the version it resolves to now. ``loaded`` skips loading when the caller already holds it.
    """
    passthrough = [str(c) for c in passthrough or []]
    _check_options(output_format, id_column or "", passthrough, chunk_rows)
    output_uri = normalize_output_uri(output_uri)
    if loaded is None:
        from kfops.components.model_store import load_model

        loaded = load_model(model, tracking_uri)
    files = scan_inputs(input_uri)
    _check_columns(files, loaded.spec.feature_names, "feature")
    _check_columns(files, ([id_column] if id_column else []) + passthrough, "requested")
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    pinned = f"models:/{loaded.name}/{loaded.version}" if loaded.name and loaded.version else loaded.path
    plan_id = _digest(
        {
            "files": [(f.uri, f.size, f.rows) for f in files],
            "model": pinned,
            "options": [output_format, id_column, passthrough, chunk_rows, shard_rows, shards],
            "created": created,
            "nonce": os.urandom(8).hex(),  # two plans made in the same second are still two plans
        }
    )
    shard_list = plan_shards(files, shard_rows=shard_rows, shards=shards, plan_id=plan_id)
    job = ShardJob(
        model_ref=pinned,
        model_name=loaded.name,
        model_version=loaded.version,
        output_uri=output_uri,
        output_format=output_format,
        id_column=id_column or "",
        passthrough=passthrough,
        chunk_rows=chunk_rows,
    )
    for shard in shard_list:
        shard.job = job
    plan = BatchPlan(
        input_uri=input_uri,
        output_uri=output_uri,
        model_ref=pinned,
        model_name=loaded.name,
        model_version=loaded.version,
        output_format=output_format,
        id_column=id_column or "",
        passthrough=passthrough,
        chunk_rows=chunk_rows,
        rows=sum(f.rows for f in files),
        files=len(files),
        plan_id=plan_id,
        created_at=created,
        shards=shard_list,
    )
    storage.write_bytes(storage.join(output_uri, PLAN_FILE), plan.to_json().encode())
    log.info(
        "planned %d shard(s) over %d row(s) in %d file(s) for %s version %s",
        len(shard_list),
        plan.rows,
        len(files),
        loaded.name or loaded.path,
        loaded.version,
    )
    return plan


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


def _open_parquet(uri: str):
    """A ParquetFile: local files by path (Arrow's own reader, no GIL), S3 objects through ranged GETs."""
    import pyarrow.parquet as pq

    if storage.is_s3(uri):
        return pq.ParquetFile(storage.open_binary(uri))
    if not Path(uri).is_file():
        raise FileNotFoundError(f"{uri} does not exist")
    return pq.ParquetFile(uri)


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


# ------------------------------------------------------------------------------------------------ scoring
def _numeric_checked(chunk: _Chunk, spec) -> pd.DataFrame:
    """Text in a numeric feature column is an error naming the file, the row and the value (before the model
    transform sees it, which could only name the row inside the chunk)."""
    frame = chunk.frame
    for col in spec.columns:
        raw = frame[col.name]
        if col.kind != "numeric" or pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
            continue
        values = pd.to_numeric(raw, errors="coerce")
        bad = (raw.notna() & values.isna()).to_numpy()
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            row = int(chunk.rows[at]) if chunk.rows is not None else chunk.first_row + at
            where = f"line {row + 1}" if chunk.piece.format == JSONL else f"row {row}"
            raise KfopsError(
                f"batch prediction: {chunk.piece.name} {where}: column '{col.name}' must be numeric, "
                f"got {raw.iloc[at]!r}"
            )
        frame = frame.assign(**{col.name: values})
    return frame


def _request_ids(chunk: _Chunk, id_column: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(chunk.frame)
    if id_column:
        raw = chunk.frame[id_column]
        empty = raw.isna().to_numpy()
        text = raw.astype("string")
        empty |= (text.str.strip() == "").fillna(True).to_numpy()
        if empty.any():
            at = int(np.flatnonzero(empty)[0])
            row = int(chunk.rows[at]) if chunk.rows is not None else chunk.first_row + at
            raise KfopsError(f"batch prediction: {chunk.piece.name} row {row}: id column '{id_column}' is empty")
        return pa.array(text.astype(object).to_numpy(), type=pa.string())
    numbers = chunk.rows if chunk.rows is not None else np.arange(chunk.first_row, chunk.first_row + n)
    return pc.binary_join_element_wise(pa.scalar(f"{chunk.piece.name}:"), pa.array(numbers).cast(pa.string()), "")


def _output_table(chunk: _Chunk, loaded, id_column: str, passthrough: list[str]):
    import pyarrow as pa

    from kfops.components.transform import transform_features

    frame = _numeric_checked(chunk, loaded.spec)
    features = transform_features(loaded.spec, frame, source=chunk.piece.name)
    probability = loaded.classifier.score_matrix(features)
    positive = probability >= loaded.threshold
    labels = pa.DictionaryArray.from_arrays(
        pa.array(positive.astype(np.int8)), pa.array([loaded.spec.negative_class, loaded.spec.positive_class])
    ).cast(pa.string())
    repeated = pa.array(np.zeros(len(frame), dtype=np.int8))  # one value per row, built in C++
    columns = {
        "request_id": _request_ids(chunk, id_column),
        "model": pa.DictionaryArray.from_arrays(repeated, pa.array([loaded.name or ""])).cast(pa.string()),
        "model_version": pa.DictionaryArray.from_arrays(repeated, pa.array([loaded.version or ""])).cast(pa.string()),
        "prediction": labels,
        "probability": pa.array(probability, type=pa.float64()),
    }
    for name in passthrough:
        if chunk.arrow is not None:
            columns[name] = chunk.arrow.column(name)
        else:
            values = chunk.frame[name]
            columns[name] = pa.array(values.astype("string").astype(object).where(values.notna(), None), pa.string())
    return pa.table(columns)


class _Writer:
    """Writes a shard's output to a local temporary file, then puts it in place whole."""

    def __init__(self, uri: str, output_format: str) -> None:
        self.uri = uri
        self.format = output_format
        if storage.is_s3(uri):
            fd, tmp = tempfile.mkstemp(prefix=".kfops-batch-", suffix=f".{output_format}")
            os.close(fd)
        else:
            target = Path(uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = str(target.with_name(f".{target.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"))
        self.tmp = tmp
        self.parquet = None
        self.schema = None
        self.text = open(tmp, "wb") if output_format == JSONL else None  # noqa: SIM115 - closed in commit/abort

    def write(self, table) -> None:
        if self.format == PARQUET:
            import pyarrow.parquet as pq

            if self.parquet is None:
                self.schema = table.schema
                # Dictionary pages only where values repeat: unique request ids would waste the attempt.
                self.parquet = pq.ParquetWriter(self.tmp, table.schema, compression="zstd", use_dictionary=_REPEATING)
            else:
                table = table.cast(self.schema) if table.schema != self.schema else table
            self.parquet.write_table(table)
        else:
            import orjson

            records = table.to_pylist()
            if records:
                self.text.write(b"\n".join(orjson.dumps(r, default=str) for r in records) + b"\n")

    def commit(self, empty_schema) -> None:
        if self.format == PARQUET:
            import pyarrow.parquet as pq

            if self.parquet is None:  # a shard whose rows were all blank lines: an empty file, still a part
                pq.write_table(empty_schema.empty_table(), self.tmp, compression="zstd")
            else:
                self.parquet.close()
        else:
            self.text.close()
        if storage.is_s3(self.uri):
            try:
                storage.upload_file(self.tmp, self.uri)
            finally:
                Path(self.tmp).unlink(missing_ok=True)
        else:
            os.replace(self.tmp, self.uri)

    def abort(self) -> None:
        try:
            if self.parquet is not None:
                self.parquet.close()
            if self.text is not None:
                self.text.close()
        finally:
            Path(self.tmp).unlink(missing_ok=True)


def _empty_schema(passthrough: list[str]):
    """The output schema of a shard that had no rows (passthrough types unknown: text)."""
    import pyarrow as pa

    fields = [(c, pa.float64() if c == "probability" else pa.string()) for c in OUTPUT_COLUMNS]
    return pa.schema(fields + [(c, pa.string()) for c in passthrough])


def score_shard(
    shard: Shard | dict,
    model,
    output_uri: str,
    id_column: str = "",
    passthrough: Sequence[str] = (),
    output_format: str = PARQUET,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    tracking_uri: str = "",
    on_rows: Callable[[int], None] | None = None,
) -> ShardResult:
    """Score one shard and write its part file and receipt (see the module docstring).

    ``model`` is the plan's pinned reference or an already loaded ``LoadedModel``. ``on_rows(n)`` is called
    after each chunk is scored (for a progress bar). A failure leaves neither file for this shard.
    """
    started = time.perf_counter()
    shard = shard if isinstance(shard, Shard) else Shard.from_dict(shard)
    passthrough = [str(c) for c in passthrough or []]
    _check_options(output_format, id_column or "", passthrough, chunk_rows)
    if isinstance(model, str):
        from kfops.components.model_store import load_model

        loaded = load_model(model, tracking_uri)
    else:
        loaded = model
    spec = loaded.spec
    wanted = list(dict.fromkeys([*spec.feature_names, *([id_column] if id_column else []), *passthrough]))
    text_columns = [c.name for c in spec.columns if c.kind == "categorical"] + ([id_column] if id_column else [])
    text_columns = list(dict.fromkeys(text_columns + passthrough))
    target = shard.output_uri(output_uri, output_format)
    writer = _Writer(target, output_format)
    rows = 0
    try:
        for piece in shard.pieces:
            # closing(): on an error the reader thread stops now, not when the traceback is collected.
            with contextlib.closing(_prefetched(_chunks(piece, wanted, text_columns, chunk_rows))) as chunks:
                for chunk in chunks:
                    table = _output_table(chunk, loaded, id_column, passthrough)
                    writer.write(table)
                    rows += table.num_rows
                    if on_rows is not None:
                        on_rows(table.num_rows)
        writer.commit(_empty_schema(passthrough))
    except BaseException:
        writer.abort()
        raise
    result = ShardResult(
        index=shard.index,
        count=shard.count,
        plan_id=shard.plan_id,
        output=target,
        rows=rows,
        model_name=loaded.name,
        model_version=loaded.version,
        seconds=round(time.perf_counter() - started, 3),
    )
    storage.write_bytes(shard.receipt_uri(output_uri), result.to_json().encode())
    log.info("shard %s: %d row(s) to %s in %.1f s", shard.name, rows, target, result.seconds)
    return result


def score_planned_shard(
    shard: Shard | dict,
    tracking_uri: str = "",
    loaded=None,
    on_rows: Callable[[int], None] | None = None,
) -> ShardResult:
    """``score_shard`` for a shard from ``plan_batch``: model and options come from the shard's job."""
    shard = shard if isinstance(shard, Shard) else Shard.from_dict(shard)
    if shard.job is None:
        raise KfopsError(f"batch prediction: shard {shard.name} has no job; plan it with plan_batch")
    job = shard.job
    return score_shard(
        shard,
        loaded if loaded is not None else job.model_ref,
        job.output_uri,
        id_column=job.id_column,
        passthrough=job.passthrough,
        output_format=job.output_format,
        chunk_rows=job.chunk_rows,
        tracking_uri=tracking_uri,
        on_rows=on_rows,
    )


# ------------------------------------------------------------------------------------------------ summary
def summarize_batch(output_uri: str, expected_shards: int | None = None) -> dict[str, Any]:
    """Check every planned shard's receipt and file, then write and return ``<output>/_manifest.json``.

    KfopsError naming the shards that are missing (or left by another plan). ``expected_shards`` cross-checks
    the count the orchestrator saw finish (the KFP collected outputs).
    """
    plan = BatchPlan.load(normalize_output_uri(output_uri))
    if expected_shards is not None and expected_shards != len(plan.shards):
        raise KfopsError(
            f"batch prediction: {expected_shards} shard(s) reported done, but the plan in {output_uri} has "
            f"{len(plan.shards)}"
        )
    results: list[ShardResult] = []
    missing: list[str] = []
    for shard in plan.shards:
        receipt_uri = shard.receipt_uri(plan.output_uri)
        try:
            result = ShardResult.from_dict(json.loads(storage.read_bytes(receipt_uri)))
        except FileNotFoundError:
            missing.append(f"{shard.name} (no receipt)")
            continue
        except (ValueError, KeyError, TypeError) as err:
            missing.append(f"{shard.name} (unreadable receipt: {err})")
            continue
        if result.plan_id != plan.plan_id:
            missing.append(f"{shard.name} (its receipt is from another plan, {result.plan_id})")
        elif not storage.exists(result.output):
            missing.append(f"{shard.name} (receipt present, {result.output} missing)")
        elif result.model_version != plan.model_version:
            missing.append(f"{shard.name} (scored with version {result.model_version}, not {plan.model_version})")
        else:
            results.append(result)
    if missing:
        raise KfopsError(
            f"batch prediction in {plan.output_uri} is incomplete: {len(missing)} of {len(plan.shards)} shard(s) "
            "have no valid output: " + "; ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        )
    listed = {r.output for r in results}
    stale = [
        uri
        for uri, _ in storage.list_files(plan.output_uri)
        if uri.replace(os.sep, "/").rsplit("/", 1)[-1].startswith("part-") and uri not in listed
    ]
    manifest = {
        "model_name": plan.model_name,
        "model_version": plan.model_version,
        "model_ref": plan.model_ref,
        "input_uri": plan.input_uri,
        "output_uri": plan.output_uri,
        "output_format": plan.output_format,
        "plan_id": plan.plan_id,
        "planned_rows": plan.rows,
        "total_rows": sum(r.rows for r in results),
        "shards": [{"index": r.index, "file": r.output, "rows": r.rows, "seconds": r.seconds} for r in results],
        "files": [r.output for r in results],
        "stale_files": stale,
        "created_at": plan.created_at,
        "completed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    storage.write_bytes(storage.join(plan.output_uri, MANIFEST_FILE), json.dumps(manifest, indent=2).encode())
    if stale:
        log.warning("%d part file(s) in %s are not from this plan: %s", len(stale), plan.output_uri, stale[:5])
    return manifest


# ------------------------------------------------------------------------------------------------ in process
def predict_batch(
    input_uri: str,
    output_uri: str,
    model: str,
    tracking_uri: str = "",
    shard_rows: int | None = None,
    shards: int | None = None,
    id_column: str = "",
    passthrough: Sequence[str] = (),
    output_format: str = PARQUET,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    on_plan: Callable[[BatchPlan], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The whole job in this process: plan, every shard in turn with one loaded model, summary (the manifest).

    The same functions the pipeline's steps call; what it saves is the per-step process start, model load and
    orchestration. ``on_plan`` sees the plan before scoring starts (a progress bar's total).
    """
    from kfops.components.model_store import load_model

    loaded = load_model(model, tracking_uri)
    plan = plan_batch(
        input_uri,
        output_uri,
        model,
        tracking_uri,
        shard_rows=shard_rows,
        shards=shards,
        id_column=id_column,
        passthrough=passthrough,
        output_format=output_format,
        chunk_rows=chunk_rows,
        loaded=loaded,
    )
    if on_plan is not None:
        on_plan(plan)
    for shard in plan.shards:
        score_planned_shard(shard, loaded=loaded, on_rows=on_rows)
    return summarize_batch(plan.output_uri, expected_shards=len(plan.shards))
