"""One request's payload-log rows as columns: what the predictor hands the payload logger instead of a dict per row.

Building a dict per row on the event loop, and keeping thousands of them queued (every one a container the garbage
collector scans), cost the predictor more than validating and scoring those rows. A ``PayloadColumns`` holds the
request's fields in record order: the ones every row shares (request id, timestamp, model, version, variant, log
format) once, the others (raw columns, features, prediction, probability) as one sequence each, a Python list or a
1-d numpy array. The writer thread turns it into exactly the records a dict per row would have been: JSON Lines
(``encode_jsonl``, a chunk of rows at a time) or a Parquet table built from the columns. The files are the same,
byte for byte in JSONL, so the payload log's format (``PAYLOAD_LOG_FORMAT_VERSION``) does not change.

A missing numeric value (NaN in a float array) is written as null, as a dict per row wrote it. Like a logged dict,
a ``PayloadColumns`` must not be changed once logged: the writer reads it later, on its own thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from kfops.components.records import JSONL_CHUNK_RECORDS, encode_jsonl, encode_parquet_columns, pseudonymize

_PLAIN = frozenset({str, int, float, bool, type(None)})
_NUMBERS = frozenset({int, float, bool})
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY  # as records.encode_jsonl


class PayloadColumns:
    """``rows`` payload-log records as columns: ``fields`` in record order, each a value every row shares (named in
    ``shared``) or a sequence of ``rows`` values."""

    __slots__ = ("fields", "rows", "shared")

    def __init__(self, rows: int, fields: dict[str, Any], shared: Sequence[str] = ()) -> None:
        shared = frozenset(shared)
        unknown = sorted(shared - set(fields))
        if unknown:
            raise ValueError(f"payload columns: shared field(s) {unknown} have no value")
        for name, values in fields.items():
            if name not in shared and len(values) != rows:
                raise ValueError(f"payload columns: field '{name}' has {len(values)} values for {rows} rows")
        self.rows = rows
        self.fields = fields
        self.shared = shared

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, part: slice) -> PayloadColumns:
        """Rows ``part`` (a slice with no step): the queue splits an entry larger than the writer's batch."""
        start, stop, step = part.indices(self.rows)
        if step != 1:
            raise ValueError("payload columns are sliced by contiguous rows only")
        fields = {name: values if name in self.shared else values[start:stop] for name, values in self.fields.items()}
        return PayloadColumns(max(0, stop - start), fields, self.shared)

    def __repr__(self) -> str:
        return f"PayloadColumns({self.rows} rows, fields {list(self.fields)})"

    def shared_value(self, name: str) -> tuple[bool, Any]:
        """(True, value) when every row has the same ``name`` (a shared field), else (False, None)."""
        if name in self.shared:
            return True, self.fields[name]
        return False, None

    def with_policy(self, policy) -> PayloadColumns:
        """The columns with ``policy``'s fields (``payload_policy.FieldPolicy``) dropped or hashed, as
        ``policy.apply`` does to a record."""
        fields = {}
        for name, values in self.fields.items():
            if name in policy.drop:
                continue
            if name in policy.hash:
                if name in self.shared:
                    values = pseudonymize(values, policy.salt)
                else:
                    values = [pseudonymize(v, policy.salt) for v in plain(values)]
            fields[name] = values
        return PayloadColumns(self.rows, fields, self.shared & set(fields))

    def column(self, name: str) -> list:
        """One field's values as a plain list of ``rows`` values (NaN as None)."""
        values = self.fields[name]
        return [values] * self.rows if name in self.shared else plain(values)

    def records(self, start: int = 0, stop: int | None = None, *, clean: bool = True) -> list[dict]:
        """Rows ``start:stop`` as the dicts a record per row would have been; ``clean=False`` leaves NaN and
        infinities as they are (for the JSON encoder, which writes them as null all the same)."""
        tolist = plain if clean else _as_list
        stop = self.rows if stop is None else min(stop, self.rows)
        if stop - start == 1:  # one row (batch-1 traffic): one dict straight from the fields
            shared, at, record = self.shared, start, {}
            for name, values in self.fields.items():
                if name in shared:
                    record[name] = values
                elif type(values) is list:
                    record[name] = values[at]
                else:
                    record[name] = values.item(at) if isinstance(values, np.ndarray) else values[at]
            if clean:
                for name, value in record.items():
                    if type(value) is float and not math.isfinite(value):
                        record[name] = None
            return [record]
        names = list(self.fields)
        lead = 0  # the shared fields that come first (the meta columns) start every record as one dict copy
        while lead < len(names) and names[lead] in self.shared:
            lead += 1
        head = {name: self.fields[name] for name in names[:lead]}
        records = [head.copy() for _ in range(start, stop)]
        for name in names[lead:]:  # then field by field, so every record keeps the fields' order
            values = self.fields[name]
            if name in self.shared:
                for record in records:
                    record[name] = values
            else:
                for record, value in zip(records, tolist(values[start:stop]), strict=True):
                    record[name] = value
        return records

    def jsonl(self) -> bytes:
        """The rows as JSON Lines, byte for byte what ``encode_jsonl(self.records())`` gives, a chunk of rows at a
        time (``JSONL_CHUNK_RECORDS``: the encoder holds the GIL per call). When the shared fields lead (the
        predictor's meta columns), they are encoded once and spliced in front of each row's own fields."""
        names = list(self.fields)
        lead = 0
        while lead < len(names) and names[lead] in self.shared:
            lead += 1
        if 0 < lead < len(names) and self.shared.isdisjoint(names[lead:]):
            try:
                head = orjson.dumps({name: self.fields[name] for name in names[:lead]}, option=_JSON_OPTIONS)
            except TypeError:
                head = b""
            if head:
                prefix = head[:-1] + b","  # '{"request_id":...,"log_format":1,'
                own = [(name, self.fields[name]) for name in names[lead:]]
                return b"".join(self._spliced_chunk(prefix, own, at) for at in range(0, self.rows, JSONL_CHUNK_RECORDS))
        return b"".join(
            encode_jsonl(self.records(at, at + JSONL_CHUNK_RECORDS, clean=False))
            for at in range(0, self.rows, JSONL_CHUNK_RECORDS)
        )

    def _spliced_chunk(self, prefix: bytes, own: list[tuple[str, Any]], start: int) -> bytes:
        stop = min(start + JSONL_CHUNK_RECORDS, self.rows)
        records = [{} for _ in range(start, stop)]
        for name, values in own:
            for record, value in zip(records, _as_list(values[start:stop]), strict=True):
                record[name] = value
        try:
            blob = orjson.dumps(records, option=_JSON_OPTIONS)  # '[{"a":1,"b":2},{"a":3,"b":4}]'
        except TypeError:
            blob = b""
        # Split at record boundaries as encode_jsonl does: '},{"' occurs only there in flat records, so n parts
        # means every split is one; anything else takes the general encoder.
        parts = blob[2:-2].split(b'},{"') if blob else []
        if len(parts) != len(records):
            return encode_jsonl(self.records(start, stop, clean=False))
        return prefix + (b"}\n" + prefix + b'"').join(parts) + b"}\n"


def _as_list(values) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else values


def plain(values) -> list:
    """A column as a list of Python values, NaN and infinities as None (``records.clean_value``'s rule for the
    values the predictor logs): a float array with one call, a list only when it holds such a float."""
    if isinstance(values, np.ndarray):
        out = values.tolist()
        if values.dtype.kind == "f":
            for i in np.flatnonzero(~np.isfinite(values)).tolist():
                out[i] = None
        return out
    if not isinstance(values, list):
        values = list(values)
    types = set(map(type, values))
    if float not in types:
        return values
    if types <= _NUMBERS and math.isfinite(sum(values)):  # a NaN or an infinity anywhere makes the sum one
        return values
    return [None if type(v) is float and not math.isfinite(v) else v for v in values]


def is_plain(values: list) -> bool:
    """Whether ``values`` need no ``clean_value`` before Arrow (Python scalars only)."""
    return set(map(type, values)) <= _PLAIN


def encode_columns_parquet(parts: list[PayloadColumns]) -> bytes:
    """One Parquet file of ``parts`` (all with the same fields, in the same order), the table
    ``encode_parquet`` would make of their records: float arrays joined with numpy and handed to Arrow whole
    (NaN as null), lists joined with C-level extends, shared values repeated; only a column holding something
    other than Python scalars goes value by value through ``clean_value``."""
    import pyarrow as pa

    from kfops.components.records import clean_value

    columns: dict[str, Any] = {}
    for name in parts[0].fields:
        if all(isinstance(part.fields[name], np.ndarray) and part.fields[name].dtype.kind == "f" for part in parts):
            joined = np.concatenate([part.fields[name] for part in parts]).astype(np.float64, copy=False)
            joined = np.where(np.isinf(joined), np.nan, joined)  # infinities are null, as clean_value has them
            array = pa.array(joined, from_pandas=True)
            columns[name] = pa.nulls(len(joined)) if array.null_count == len(joined) else array
            continue
        values: list = []
        for part in parts:
            if name in part.shared:
                values.extend([part.fields[name]] * part.rows)
            else:
                values.extend(plain(part.fields[name]))
        columns[name] = values if is_plain(values) else [clean_value(v) for v in values]
    return encode_parquet_columns(columns)
