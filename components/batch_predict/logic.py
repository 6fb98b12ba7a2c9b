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
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kfops.components import storage
from kfops.components.batch_predict.plan import _check_options, normalize_output_uri, plan_batch
from kfops.components.batch_predict.reading import _Chunk, _chunks, _prefetched
from kfops.components.batch_predict.records import (
    _REPEATING,
    DEFAULT_CHUNK_ROWS,
    JSONL,
    MANIFEST_FILE,
    OUTPUT_COLUMNS,
    PARQUET,
    BatchPlan,
    Shard,
    ShardResult,
)
from kfops.components.contracts import TASK_BINARY, TASK_MULTICLASS, KfopsError
from kfops.components.records import RecordFileWriter

log = logging.getLogger(__name__)


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

    frame = _numeric_checked(chunk, loaded.spec)
    scores = loaded.classifier.score_frame(frame, source=chunk.piece.name)
    if loaded.spec.task == TASK_BINARY:
        probability = scores
        positive = probability >= loaded.threshold
        labels = pa.DictionaryArray.from_arrays(
            pa.array(positive.astype(np.int8)), pa.array([loaded.spec.negative_class, loaded.spec.positive_class])
        ).cast(pa.string())
    elif loaded.spec.task == TASK_MULTICLASS:
        # the most probable class, and its probability
        best = np.argmax(scores, axis=1)
        probability = scores[np.arange(len(best)), best]
        labels = pa.DictionaryArray.from_arrays(pa.array(best.astype(np.int32)), pa.array(loaded.spec.labels)).cast(
            pa.string()
        )
    else:
        # a regression's value in the target's units; no probability (null)
        labels = pa.array(scores, type=pa.float64())
        probability = None
    repeated = pa.array(np.zeros(len(frame), dtype=np.int8))  # one value per row, built in C++
    columns = {
        "request_id": _request_ids(chunk, id_column),
        "model": pa.DictionaryArray.from_arrays(repeated, pa.array([loaded.name or ""])).cast(pa.string()),
        "model_version": pa.DictionaryArray.from_arrays(repeated, pa.array([loaded.version or ""])).cast(pa.string()),
        "prediction": labels,
        "probability": pa.array(probability, type=pa.float64())
        if probability is not None
        else pa.nulls(len(frame), pa.float64()),
    }
    for name in passthrough:
        if chunk.arrow is not None:
            columns[name] = chunk.arrow.column(name)
        else:
            values = chunk.frame[name]
            columns[name] = pa.array(values.astype("string").astype(object).where(values.notna(), None), pa.string())
    return pa.table(columns)


def _empty_schema(passthrough: list[str], regression: bool = False):
    """The output schema of a shard that had no rows (passthrough types unknown: text)."""
    import pyarrow as pa

    numeric = {"probability", "prediction"} if regression else {"probability"}
    fields = [(c, pa.float64() if c in numeric else pa.string()) for c in OUTPUT_COLUMNS]
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
    writer = RecordFileWriter(target, output_format, repeating=_REPEATING)
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
        writer.commit(_empty_schema(passthrough, regression=spec.task == "regression"))
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
    *,
    on_plan: Callable[[BatchPlan], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
    **plan_options: Any,
) -> dict[str, Any]:
    """The whole job in this process: plan, every shard in turn with one loaded model, summary (the manifest).

    The same functions the pipeline's steps call; what it saves is the per-step process start, model load and
    orchestration. ``plan_options`` are ``plan_batch``'s (``shard_rows``, ``shards``, ``id_column``,
    ``passthrough``, ``output_format``, ``chunk_rows``), declared there once. ``on_plan`` sees the plan before
    scoring starts (a progress bar's total).
    """
    from kfops.components.model_store import load_model

    loaded = load_model(model, tracking_uri)
    plan = plan_batch(input_uri, output_uri, model, tracking_uri, loaded=loaded, **plan_options)
    if on_plan is not None:
        on_plan(plan)
    for shard in plan.shards:
        score_planned_shard(shard, loaded=loaded, on_rows=on_rows)
    return summarize_batch(plan.output_uri, expected_shards=len(plan.shards))
