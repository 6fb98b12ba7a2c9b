"""Tables as files: which format a file is, and reading a whole CSV, Parquet or JSON Lines file, local or
``s3://`` (bytes through ``storage``), with errors that name the file.

Ingest, outcomes, A/B analysis and monitoring read through here; the streaming readers (monitoring's chunked
window, batch prediction's byte-range shards) take their format from ``table_format`` too.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import pandas as pd

from kfops.components import storage
from kfops.components.contracts import KfopsError

PARQUET, CSV, JSONL = "parquet", "csv", "jsonl"
SUFFIXES = {
    ".parquet": PARQUET,
    ".pq": PARQUET,
    ".csv": CSV,
    ".csv.gz": CSV,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
}
_LONGEST_FIRST = sorted(SUFFIXES.items(), key=lambda item: -len(item[0]))


def table_format(uri: str, json_as_lines: bool = False) -> str | None:
    """``parquet``, ``csv`` or ``jsonl`` from the file's name, or None. ``json_as_lines``: a ``.json`` file is
    JSON Lines too (outcome files, A/B inputs); elsewhere a ``.json`` is some other document (a manifest)."""
    name = uri.lower()
    for suffix, fmt in _LONGEST_FIRST:
        if name.endswith(suffix):
            return fmt
    return JSONL if json_as_lines and name.endswith(".json") else None


def sniff_format(head: bytes) -> str | None:
    """The format of a file named without a suffix (a KFP artifact) from its first bytes: Parquet's magic
    number, or a JSON object; None otherwise (a CSV must be named .csv)."""
    head = head.lstrip()
    if head.startswith(b"PAR1"):
        return PARQUET
    if head.startswith(b"{"):
        return JSONL
    return None


def parse_table(raw: bytes, fmt: str, uri: str, csv_dtype: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One file's bytes as a frame (column names as text); an empty file is an empty frame. ``csv_dtype`` keeps
    the named CSV columns as given (ids as text)."""
    try:
        if fmt == PARQUET:
            frame = pd.read_parquet(io.BytesIO(raw))
        elif fmt == JSONL:
            frame = pd.read_json(io.BytesIO(raw), lines=True, dtype=False)
        else:
            compression = "gzip" if uri.lower().endswith(".gz") else None
            frame = pd.read_csv(io.BytesIO(raw), compression=compression, low_memory=False, dtype=csv_dtype)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except Exception as err:
        kind = {PARQUET: "Parquet", CSV: "CSV", JSONL: "JSONL"}.get(fmt, fmt)
        raise KfopsError(f"cannot read {kind} file {uri}: {err}") from err
    frame.columns = [str(c) for c in frame.columns]
    return frame


def read_bytes(uri: str, what: str = "data file") -> bytes:
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError as err:
        raise KfopsError(f"{what} {uri} does not exist") from err
