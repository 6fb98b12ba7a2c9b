"""Batch prediction's plan (the whole job: ``logic``): its typed records (Piece, ShardJob, Shard, BatchPlan,
ShardResult), and listing, scanning and cutting the inputs into shards (``plan_batch``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfops.components import storage
from kfops.components.batch_predict.records import (
    _MAX_CHECKPOINTS,
    _SCAN_BLOCK,
    CSV,
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SHARD_ROWS,
    INPUT_SUFFIXES,
    JSONL,
    OUTPUT_COLUMNS,
    OUTPUT_FORMATS,
    PARQUET,
    PLAN_FILE,
    BatchPlan,
    Piece,
    Shard,
    ShardJob,
)
from kfops.components.contracts import KfopsError

log = logging.getLogger(__name__)


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


def _open_parquet(uri: str):
    """A ParquetFile: local files by path (Arrow's own reader, no GIL), S3 objects through ranged GETs."""
    import pyarrow.parquet as pq

    if storage.is_s3(uri):
        return pq.ParquetFile(storage.open_binary(uri))
    if not Path(uri).is_file():
        raise FileNotFoundError(f"{uri} does not exist")
    return pq.ParquetFile(uri)


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
