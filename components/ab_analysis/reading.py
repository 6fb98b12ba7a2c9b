"""A/B analysis input: payload logs joined to their outcomes, or one outcomes table, from CSV, Parquet or JSONL
files and folders, local or ``s3://``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kfops.components import storage, tables
from kfops.components.contracts import KfopsError

# ---------------------------------------------------------------------------------------------------- reading
FORMATS = ("auto", "csv", "parquet", "jsonl")


def _read_one(uri: str, fmt: str = "auto") -> pd.DataFrame:
    if fmt not in FORMATS:
        raise KfopsError(f"unknown outcomes format {fmt!r}; use one of {', '.join(FORMATS)}")
    raw = tables.read_bytes(uri, "outcomes file")
    if not raw.strip():
        return pd.DataFrame()
    # a KFP artifact path often has no suffix: then the bytes say (anything else is CSV)
    kind = fmt if fmt != "auto" else tables.table_format(uri, json_as_lines=True) or tables.sniff_format(raw[:64])
    return tables.parse_table(raw, kind or tables.CSV, uri)


def _data_files(uri: str) -> list[str]:
    """The data files under a folder or s3:// prefix (hidden and temporary files skipped), sorted. Under a
    payload-log sink, the ground truth posted beside it (``<sink>/outcomes/``) is no variant data: left out."""
    inside_outcomes = "outcomes" in uri.rstrip("/").split("/")
    return [
        path
        for path, _ in storage.list_files(uri)
        if tables.table_format(path, json_as_lines=True) is not None
        and (inside_outcomes or "outcomes" not in path.split("/")[:-1])
    ]


def _is_single_file(uri: str) -> bool:
    if storage.is_s3(uri):
        return tables.table_format(uri, json_as_lines=True) is not None
    return Path(uri).is_file()


def read_outcomes_table(uri: str, fmt: str = "auto") -> pd.DataFrame:
    """One table from a CSV/Parquet/JSONL file, or all such files under a folder or s3:// prefix."""
    if not isinstance(uri, str) or not uri.strip():
        raise KfopsError("no outcomes data given: pass a file, a folder or an s3:// URI")
    if not storage.is_s3(uri) and not Path(uri).exists():
        raise KfopsError(f"outcomes data {uri} does not exist")
    if _is_single_file(uri):
        frame = _read_one(uri, fmt)
    else:
        files = _data_files(uri)
        if not files:
            raise KfopsError(f"no .csv, .parquet or .jsonl files under {uri}")
        frames = [f for f in (_read_one(path, fmt) for path in files) if not f.empty]
        frame = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    if frame.empty:
        raise KfopsError(f"outcomes data {uri} has no rows")
    return frame


def load_outcomes(
    uri: str, outcomes_uri: str = "", join_on: str = "request_id", fmt: str = "auto"
) -> tuple[pd.DataFrame, str, int]:
    """The table to analyse, a description of where it came from, and how many logged rows found no outcome.

    With ``outcomes_uri`` the logged rows (e.g. the payload log) are joined with the outcomes table on
    ``join_on`` (compared as text). Each key may appear once in the outcomes table; a logged request may have
    several rows (a batch request), each gets its request's outcome. A column in both tables comes from the
    outcomes table.
    """
    logged = read_outcomes_table(uri, fmt)
    if not outcomes_uri:
        return logged, uri, 0
    outcomes = read_outcomes_table(outcomes_uri, fmt)
    for name, frame, where in (("logged data", logged, uri), ("outcomes table", outcomes, outcomes_uri)):
        if join_on not in frame.columns:
            raise KfopsError(
                f"{name} {where} has no join column '{join_on}'; its columns: {', '.join(map(str, frame.columns))}"
            )
    keys = outcomes[join_on].astype("string")
    if keys.isna().any():
        raise KfopsError(f"outcomes table {outcomes_uri}: {int(keys.isna().sum())} rows have an empty '{join_on}'")
    duplicated = keys[keys.duplicated()].unique().tolist()
    if duplicated:
        shown = ", ".join(repr(k) for k in duplicated[:5])
        raise KfopsError(
            f"outcomes table {outcomes_uri}: '{join_on}' must be unique, but {len(duplicated)} value(s) repeat: {shown}"
        )
    right = outcomes.assign(**{join_on: keys})
    left = logged.drop(columns=[c for c in logged.columns if c in right.columns and c != join_on])
    left = left.assign(**{join_on: left[join_on].astype("string")})
    joined = left.merge(right, on=join_on, how="left", indicator="_kfops_join")
    unmatched = int((joined["_kfops_join"] == "left_only").sum())
    joined = joined[joined["_kfops_join"] == "both"].drop(columns="_kfops_join").reset_index(drop=True)
    if joined.empty:
        raise KfopsError(
            f"no row of {uri} has an outcome in {outcomes_uri} (joined on '{join_on}'): "
            f"{len(logged)} logged rows, {len(outcomes)} outcomes"
        )
    return joined, f"{uri} joined with {outcomes_uri} on {join_on}", unmatched
