"""Data versions: tables stored content-addressed in the artifact store, one seam for every stage that reads them.

A version is the sha256 of a canonical form of the table (columns sorted by name, values in fixed-width
little-endian or UTF-8 encodings), so the same data hashes the same whether it arrived as CSV or Parquet, and any
changed value, row or column changes it. A snapshot is ``<store>/datasets/<sha256>/data.parquet`` plus
``version.json`` (a ``DataVersion``), written last so that its presence means the snapshot is complete.
"""

from __future__ import annotations

import hashlib
import io
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from kfops.components import storage
from kfops.components.contracts import DataVersion, KfopsError

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "data.parquet"
VERSION_FILE = "version.json"
# Beside a snapshot once validation has judged it: what later commands take as "the latest data" is the newest
# snapshot that passed, never one whose run stopped in validation (or before it). Versioned for readers.
VALIDATION_FILE = "validation.json"
VALIDATION_FORMAT_VERSION = 1


def canonical_sha256(df: pd.DataFrame) -> str:
    """sha256 of a canonical form: independent of file format and column order, sensitive to any value."""
    digest = hashlib.sha256()
    digest.update(f"kfops-table-v1 rows={len(df)}\n".encode())
    for name in sorted(df.columns):
        col = df[name]
        mask = col.isna().to_numpy()
        if pd.api.types.is_bool_dtype(col):
            kind, payload = "bool", col.fillna(False).to_numpy(dtype=np.uint8).tobytes()
        elif pd.api.types.is_integer_dtype(col) or pd.api.types.is_float_dtype(col):
            # Integers and floats hash alike, so 1 and 1.0 (CSV vs Parquet) are the same data.
            kind, payload = "number", np.ascontiguousarray(col.to_numpy(dtype="<f8", na_value=0.0)).tobytes()
        elif pd.api.types.is_datetime64_any_dtype(col):
            values = col.dt.tz_convert("UTC").dt.tz_localize(None) if col.dt.tz is not None else col
            kind = "time"
            payload = values.astype("datetime64[ns]").to_numpy().view("<i8").tobytes()
        else:
            kind = "text"
            text = col.astype(object).where(~mask, "").map(str)
            payload = "\x1f".join(text.tolist()).encode("utf-8")
        digest.update(f"{name}\x00{kind}\x00".encode())
        digest.update(np.packbits(mask).tobytes())
        digest.update(hashlib.sha256(payload).digest())
    return digest.hexdigest()


def snapshot_uri(store: str, sha256: str) -> str:
    return storage.join(store, "datasets", sha256)


def write_snapshot(df: pd.DataFrame, store: str, source: str) -> DataVersion:
    """Store the table under its content hash (once) and return its version record."""
    sha = canonical_sha256(df)
    base = snapshot_uri(store, sha)
    version = DataVersion(
        sha256=sha,
        uri=storage.join(base, SNAPSHOT_FILE),
        source=source,
        rows=len(df),
        columns=list(df.columns),
        dtypes={c: str(t) for c, t in df.dtypes.items()},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    version_uri = storage.join(base, VERSION_FILE)
    if storage.exists(version_uri):
        log.info("data version %s already stored at %s", sha[:12], base)
        return DataVersion.from_json(storage.read_bytes(version_uri).decode())
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    storage.write_bytes(version.uri, buffer.getvalue())
    # The version file goes last: its presence means the snapshot is complete.
    storage.write_bytes(version_uri, version.to_json().encode())
    return version


def read_snapshot(store: str, sha256: str) -> tuple[pd.DataFrame, DataVersion]:
    """Load a stored snapshot by its sha256, checking that its content still hashes to it."""
    base = snapshot_uri(store, sha256)
    try:
        version = DataVersion.from_json(storage.read_bytes(storage.join(base, VERSION_FILE)).decode())
    except FileNotFoundError as err:
        raise KfopsError(f"data version {sha256} is not in the artifact store {store}") from err
    try:
        df = pd.read_parquet(io.BytesIO(storage.read_bytes(version.uri)))
    except FileNotFoundError as err:
        raise KfopsError(f"data version {sha256} is incomplete: {version.uri} is missing") from err
    actual = canonical_sha256(df)
    if actual != sha256:
        raise KfopsError(f"data version {sha256} at {version.uri} is corrupt: its content hashes to {actual}")
    return df, version


def list_versions(store: str) -> list[DataVersion]:
    """The data snapshots stored in a local artifact store, newest first."""
    if storage.is_s3(store):
        return _list_versions_s3(store)
    root = Path(store, "datasets")
    found = [DataVersion.from_json(p.read_text()) for p in root.glob(f"*/{VERSION_FILE}")] if root.exists() else []
    return sorted(found, key=lambda v: v.created_at, reverse=True)


def _list_versions_s3(store: str) -> list[DataVersion]:
    bucket, prefix = storage.split_s3(storage.join(store, "datasets"))
    client = storage.s3_client()
    found = []
    for obj in client.list_objects(bucket, prefix=prefix + "/", recursive=True):
        if obj.object_name.endswith("/" + VERSION_FILE):
            found.append(DataVersion.from_json(storage.read_bytes(f"s3://{bucket}/{obj.object_name}").decode()))
    return sorted(found, key=lambda v: v.created_at, reverse=True)


def record_validation(store: str, sha256: str, success: bool, failed_expectations: int, suite: str) -> None:
    """Write the validation verdict beside snapshot ``sha256`` (the latest verdict wins: a rerun may pass)."""
    import json

    record = {
        "format_version": VALIDATION_FORMAT_VERSION,
        "success": bool(success),
        "failed_expectations": int(failed_expectations),
        "suite": suite,
        "validated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_bytes(storage.join(snapshot_uri(store, sha256), VALIDATION_FILE), json.dumps(record).encode())


def validation_of(store: str, sha256: str) -> dict | None:
    """The validation verdict of snapshot ``sha256``, or None when validation never judged it."""
    import json

    uri = storage.join(snapshot_uri(store, sha256), VALIDATION_FILE)
    if not storage.exists(uri):
        return None
    record = json.loads(storage.read_bytes(uri).decode())
    if record.get("format_version", 0) > VALIDATION_FORMAT_VERSION:
        raise KfopsError(f"{uri}: validation record format {record['format_version']} is newer than this kfops reads")
    return record


def latest_validated_version(store: str) -> DataVersion:
    """The newest snapshot whose validation passed; a KfopsError naming the newer ones it passed over and why."""
    versions = list_versions(store)
    if not versions:
        raise KfopsError(f"no data snapshot in the artifact store {store}: run `kfops run` (or give the data)")
    passed_over = []
    for version in versions:
        record = validation_of(store, version.sha256)
        if record and record.get("success"):
            if passed_over:
                log.warning("skipping newer snapshots that did not pass validation: %s", "; ".join(passed_over))
            return version
        why = "failed validation" if record else "never validated (its run stopped before validation finished)"
        passed_over.append(f"{version.sha256[:12]} ({version.source}) {why}")
    raise KfopsError(
        f"no snapshot in the artifact store {store} passed validation: "
        + "; ".join(passed_over)
        + ". Name one with its data version to use it anyway"
    )
