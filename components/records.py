"""Record files, written and read in one place: the payload log, outcomes and batch predictions.

Each is a folder of append-only JSON Lines or Parquet files (the contracts package declares the payload log's and the
outcomes' folder layout). Here are the encoders (``encode_records``: NaN, infinities and pandas' missing values as
null, numpy scalars as Python ones, a column of mixed types kept as text in Parquet), ``read_record_file`` (selected
columns of one file), ``RecordFileWriter`` (Arrow tables streamed into one file, put in place whole) and the
outcome record (``normalize_outcomes``, ``log_outcomes``, and ``record_outcomes`` for ``POST /v1/outcomes``).

An outcome record is ``request_id`` (text; or the business id it is joined by instead, such as ``transaction_id``),
``outcome`` (the value as given: a class label, a number or a boolean), ``timestamp`` (when it was observed, ISO
8601 UTC; default: when it was logged; it picks the date partition) and ``logged_at``. Appending never rewrites: a
corrected outcome is a new record, and readers keep the latest.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kfops.components import storage
from kfops.components.contracts import (
    PAYLOAD_META_COLUMNS,
    PAYLOAD_PREDICTION_COLUMNS,
    KfopsError,
    outcomes_partition,
)

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "parquet")
MAX_HTTP_RECORDS = 10_000
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# ------------------------------------------------------------------------------------------------ encoding
def clean_value(value: Any) -> Any:
    """A JSON- and Arrow-friendly value: NaN, inf, NA and NaT become None; numpy scalars become Python ones."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas.NA, pandas.NaT
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(v) for v in value]
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalar
        return clean_value(value.item())
    if hasattr(value, "tolist"):  # numpy array
        return clean_value(value.tolist())
    return str(value)


def clean_record(record: dict) -> dict:
    return {str(key): clean_value(value) for key, value in record.items()}


# Records per orjson call. orjson holds the GIL for a whole call: one call over a 5,000-row payload-log batch held
# it ~20 ms, stalling the serving event loop (the batch-1 p99); 256 rows keep each hold near a millisecond at the
# one-call speed.
JSONL_CHUNK_RECORDS = 256


def encode_jsonl(records: Iterable[dict]) -> bytes:
    # orjson writes NaN and infinities as null and numpy scalars natively; anything else it cannot write goes
    # through _clean. It is ~10x faster than json here, and this thread shares the GIL with the request path.
    records = records if isinstance(records, list) else list(records)
    if len(records) <= JSONL_CHUNK_RECORDS:
        return _encode_jsonl_chunk(records)
    size = JSONL_CHUNK_RECORDS
    return b"".join(_encode_jsonl_chunk(records[at : at + size]) for at in range(0, len(records), size))


def _encode_jsonl_chunk(records: list[dict]) -> bytes:
    import orjson

    if not records:
        return b""
    try:
        # One call for the whole chunk, split into lines: per-record calls cost 3x more. A record boundary is the
        # only place `},{"` can occur in orjson's output of flat records (a quote inside a string is always
        # escaped), and a list of objects nested in a record would add more: exactly n-1 means all are boundaries.
        blob = orjson.dumps(records, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        blob = b""
    if blob:
        # One pass to split, one to join (a count then a replace read the blob twice more).
        parts = blob[1:-1].split(b'},{"')
        if len(parts) == len(records):
            return b'}\n{"'.join(parts) + b"\n"
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    lines = []
    for record in records:
        try:
            lines.append(orjson.dumps(record, option=option, default=clean_value))
        except TypeError:
            lines.append(orjson.dumps(clean_record(record), option=option))
    return b"\n".join(lines) + b"\n"


def encode_parquet(records: list[dict]) -> bytes:
    rows = [clean_record(r) for r in records]
    columns: dict[str, None] = {}  # the union of keys, in order of first appearance
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return encode_parquet_columns({key: [row.get(key) for row in rows] for key in columns})


def encode_parquet_columns(columns: Mapping[str, Any]) -> bytes:
    """One Parquet file (zstd) of equal-length columns, in the given order: lists of clean values
    (``clean_value``'s; a list of mixed types is kept as text) or Arrow arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for key, values in columns.items():
        if isinstance(values, pa.Array):
            arrays[key] = values
            continue
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in one column: keep them as text
            arrays[key] = pa.array([None if v is None else _as_text(v) for v in values], type=pa.string())
    buffer = io.BytesIO()
    pq.write_table(pa.table(arrays), buffer, compression="zstd")
    return buffer.getvalue()


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, allow_nan=False)


def encode_records(records: list[dict], fmt: str) -> bytes:
    """One file's bytes: ``jsonl`` (a record a line) or ``parquet`` (zstd; the union of the records' keys)."""
    if fmt not in FORMATS:
        raise KfopsError(f"record files are {' or '.join(FORMATS)}, not {fmt!r}")
    return encode_jsonl(records) if fmt == "jsonl" else encode_parquet(records)


def record_file_name(fmt: str, now: dt.datetime | None = None) -> str:
    """A new file's name: its UTC write time, so names sort by it, and a random suffix so writers never clash."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{uuid.uuid4().hex}.{fmt}"


def id_text(value: Any) -> str | None:
    """An id as text, the same whichever way it travelled: ``42``, ``42.0`` (an id column read as float) and
    ``"42"`` are ``"42"``; booleans are ``"true"``/``"false"``; missing values are None. Joins and hashes use it."""
    if not isinstance(value, str | int | float | bool):
        try:
            value = _scalar(value)  # numpy and pandas scalars unwrapped, missing ones None
        except TypeError:
            value = str(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def pseudonymize(value: Any, salt: bytes) -> str | None:
    """HMAC-SHA256 of ``id_text(value)`` keyed by ``salt``, as hex: one value always gives one hash (so hashed ids
    still join), and without the salt a hash cannot be reversed by hashing guesses. None stays None."""
    import hashlib
    import hmac

    text = id_text(value)
    if text is None:
        return None
    return hmac.new(salt, text.encode("utf-8"), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------------------ reading and writing
def read_record_file(uri: str, columns: Sequence[str]) -> pd.DataFrame:
    """Selected columns of one JSONL or Parquet file (absent columns are null)."""
    raw = storage.read_bytes(uri)
    if not raw.strip():
        return pd.DataFrame(columns=list(columns))
    try:
        if raw[:4] == b"PAR1":
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(raw))
            present = [c for c in columns if c in table.column_names]
            frame = table.select(present).to_pandas()
        else:
            import orjson

            lines = [line for line in raw.split(b"\n") if line.strip()]
            records = orjson.loads(b"[" + b",".join(lines) + b"]")
            frame = pd.DataFrame.from_records(
                [{c: r.get(c) for c in columns if c in r} for r in records if isinstance(r, dict)]
            )
    except Exception as err:
        raise KfopsError(f"cannot read {uri}: {err}") from err
    for c in columns:
        if c not in frame.columns:
            frame[c] = None
    return frame[list(columns)]


class RecordFileWriter:
    """Streams Arrow tables into one Parquet or JSONL file, written to a local temporary file and put in place
    whole by ``commit`` (readers never see half a file); ``repeating`` names the columns worth dictionary pages."""

    def __init__(self, uri: str, output_format: str, repeating: Sequence[str] = ()) -> None:
        self.uri = uri
        self.format = output_format
        self.repeating = list(repeating)
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
        self.text = open(tmp, "wb") if output_format == "jsonl" else None  # noqa: SIM115 - closed in commit/abort

    def write(self, table) -> None:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            if self.parquet is None:
                self.schema = table.schema
                # Dictionary pages only where values repeat: unique ids would waste the attempt.
                self.parquet = pq.ParquetWriter(
                    self.tmp, table.schema, compression="zstd", use_dictionary=self.repeating or False
                )
            else:
                table = table.cast(self.schema) if table.schema != self.schema else table
            self.parquet.write_table(table)
        else:
            import orjson

            records = table.to_pylist()
            if records:
                self.text.write(b"\n".join(orjson.dumps(r, default=str) for r in records) + b"\n")

    def commit(self, empty_schema) -> None:
        """Close the file and put it at ``uri``; with no table written, an empty file of ``empty_schema``."""
        if self.format == "parquet":
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


# ------------------------------------------------------------------------------------------------ outcomes
def parse_time(value: Any, now: dt.datetime | None = None, what: str = "time") -> dt.datetime | None:
    """An aware UTC datetime from ISO 8601 text (a naive one is UTC), a date, epoch seconds, a datetime, or a
    relative ``30m``/``24h``/``7d``/``2w`` before ``now``. None for None or ""."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        if isinstance(value, dt.datetime):  # pandas.Timestamp too
            moment = value
        elif isinstance(value, dt.date):
            moment = dt.datetime(value.year, value.month, value.day)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(float(value), dt.UTC)
        elif isinstance(value, str):
            text = value.strip()
            relative = _RELATIVE.match(text.lower())
            if relative:
                seconds = float(relative.group(1)) * _UNITS[relative.group(2)]
                return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=seconds)
            moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        else:
            raise TypeError(type(value).__name__)
    except (ValueError, TypeError, OverflowError, OSError) as err:
        raise KfopsError(
            f"{what} {value!r} is not a time: use ISO 8601 (2026-11-26 or 2026-11-26T08:00:00Z), epoch seconds, "
            f"or a span back from now such as 30m, 24h, 7d ({err})"
        ) from err
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def iso_utc(moment: dt.datetime) -> str:
    """ISO 8601 text in UTC."""
    return moment.astimezone(dt.UTC).isoformat()


def _scalar(value: Any) -> Any:
    """A JSON scalar for an outcome value (numpy and pandas scalars unwrapped); None when missing."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str):
        return value
    raise TypeError(type(value).__name__)


def check_join_key(key: str) -> str:
    """``key`` if it can name the id an outcome is joined by: ``request_id`` or a raw column the payload log keeps
    (``transaction_id``); KfopsError for an empty name or one of the records' own fields."""
    reserved = {"outcome", "logged_at", *PAYLOAD_META_COLUMNS, *PAYLOAD_PREDICTION_COLUMNS} - {"request_id"}
    if not isinstance(key, str) or not key.strip() or key.strip() in reserved:
        raise KfopsError(
            f"outcomes: cannot join on {key!r}: use request_id or a column of the model's training data that the "
            "payload log keeps (e.g. transaction_id)"
        )
    return key.strip()


def normalize_outcomes(
    records: Iterable[Mapping[str, Any]] | pd.DataFrame,
    source: str = "outcomes",
    now: dt.datetime | None = None,
    key: str = "request_id",
) -> list[dict[str, Any]]:
    """Validated outcome records ``{key, outcome, timestamp, logged_at}`` (``key``: ``request_id``, or the business
    id they are joined by, such as ``transaction_id``); KfopsError naming the row and the field for a missing column,
    an empty id, a missing or non-scalar outcome or an unreadable timestamp."""
    key = check_join_key(key)
    now = now or dt.datetime.now(dt.UTC)
    if isinstance(records, pd.DataFrame):
        frame = records
        for name in (key, "outcome"):
            if name not in frame.columns:
                raise KfopsError(
                    f"{source}: no '{name}' column; it has: {', '.join(map(str, frame.columns)) or 'no columns'}"
                )
        keep = [c for c in (key, "outcome", "timestamp") if c in frame.columns]
        rows: list[Any] = frame[keep].to_dict(orient="records")
    elif isinstance(records, Mapping):
        rows = [records]
    else:
        rows = list(records)
    if not rows:
        raise KfopsError(f"{source}: no outcome records")
    logged_at = iso_utc(now)
    out = []
    for i, row in enumerate(rows):
        where = f"{source} record {i}"
        if not isinstance(row, Mapping):
            raise KfopsError(f"{where}: expected an object with {key} and outcome, got {type(row).__name__}")
        for name in (key, "outcome"):
            if name not in row:
                raise KfopsError(f"{where}: no '{name}' field (it has: {', '.join(map(str, row)) or 'nothing'})")
        raw_id = row[key]
        try:
            request_id = _scalar(raw_id)
        except TypeError:
            request_id = None
        if isinstance(request_id, float) and request_id.is_integer():
            request_id = int(request_id)  # an id column read as float (CSV with a gap) is still the integer id
        request_id = "" if request_id is None or isinstance(request_id, bool) else str(request_id).strip()
        if not request_id:
            raise KfopsError(f"{where}: {key} is empty ({raw_id!r})")
        try:
            outcome = _scalar(row["outcome"])
        except TypeError as err:
            raise KfopsError(
                f"{where} ({key} {request_id!r}): outcome must be a label, number or boolean, got a {err}"
            ) from err
        if outcome is None or (isinstance(outcome, str) and not outcome.strip()):
            raise KfopsError(f"{where} ({key} {request_id!r}): outcome is empty; log an outcome once it is known")
        stamp = parse_time(row.get("timestamp"), now, what=f"{where} ({key} {request_id!r}): timestamp")
        out.append(
            {
                key: request_id,
                "outcome": outcome.strip() if isinstance(outcome, str) else outcome,
                "timestamp": iso_utc(stamp or now),
                "logged_at": logged_at,
            }
        )
    return out


def log_outcomes(
    records: Iterable[Mapping[str, Any]] | pd.DataFrame,
    sink: str,
    fmt: str = "jsonl",
    source: str = "outcomes",
    now: dt.datetime | None = None,
    key: str = "request_id",
) -> dict[str, Any]:
    """Validate and append outcome records, identified by ``key``, under ``<sink>/outcomes/date=<day>/`` (one new
    file per day touched; nothing is written unless every record is valid). Returns ``{"recorded": n, "files":
    [uri, ...]}``."""
    if fmt not in FORMATS:
        raise KfopsError(f"outcomes: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not isinstance(sink, str) or not sink.strip():
        raise KfopsError("outcomes: no sink given; pass a folder or an s3:// URI")
    sink = sink.strip()
    if storage.is_s3(sink):
        storage.split_s3(sink)
    normalized = normalize_outcomes(records, source, now, key)
    by_day: dict[str, list[dict[str, Any]]] = {}
    for record in normalized:
        by_day.setdefault(record["timestamp"][:10], []).append(record)
    files = []
    for day, rows in sorted(by_day.items()):
        uri = storage.join(sink, *outcomes_partition(day), record_file_name(fmt, now))
        storage.write_bytes(uri, encode_records(rows, fmt))
        files.append(uri)
    log.info("logged %d outcome(s) to %s in %d file(s)", len(normalized), sink, len(files))
    return {"recorded": len(normalized), "files": files}


def record_outcomes(body: Any, sink: str, fmt: str = "jsonl", max_records: int = MAX_HTTP_RECORDS) -> dict[str, Any]:
    """The ``POST /v1/outcomes`` handler's work: ``body`` is the parsed JSON (a list of ``{"request_id",
    "outcome", "timestamp"?}``, ``{"outcomes": [...]}`` or one record; ``{"join_on": "transaction_id", "outcomes":
    [{"transaction_id", "outcome"}, ...]}`` for outcomes known by a business id). KfopsError means a bad request."""
    key = "request_id"
    if isinstance(body, Mapping) and "outcomes" in body:
        records = body["outcomes"]
        key = body.get("join_on") or key
    elif isinstance(body, Mapping):
        records = [body]
    else:
        records = body
    if not isinstance(records, list):
        raise KfopsError(
            'outcomes: the body must be a list of {"request_id", "outcome", "timestamp"?} objects, '
            f'{{"outcomes": [...]}} or one such object; got {type(records).__name__}'
        )
    if len(records) > max_records:
        raise KfopsError(f"outcomes: {len(records)} records in one request; send at most {max_records}")
    return log_outcomes(records, sink, fmt=fmt, source="request body", key=key)
