"""Batch prediction's formats, file names and typed records (Piece, ShardJob, Shard, BatchPlan, ShardResult):
what the plan, the shards and the summary agree on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kfops.components import storage
from kfops.components.contracts import KfopsError

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
