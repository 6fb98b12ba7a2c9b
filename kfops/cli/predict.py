"""``kfops predict`` (batch prediction) and ``kfops outcomes ...`` (log outcomes, report live performance).

``kfops predict`` runs in this process by default (``--local-direct``): the batch stage's own plan, shard and
summary functions, one model load for all shards, and a progress bar over rows. It is the fast way on one machine:
the pipeline path pays a process start and a model load per step. ``--kfp-local`` runs the compiled pipeline's
steps through kfp.local instead (the code a cluster runs, shards two at a time), printing one line per step.
Both write the same files. MLflow, torch and kfp are imported only when a command runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from kfops.cli.console import csv_list, tracking_uri

DEFAULT_MODEL = "fraud-detector@champion"  # as kfops.pipelines.batch_prediction.DEFAULT_MODEL


def _local_or_s3(path: str) -> str:
    return path if path.startswith("s3://") else str(Path(path).expanduser().resolve())


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            import argparse

            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}")
        return value

    return parse


# ------------------------------------------------------------------------------------------------ predict
def cmd_predict(args) -> int:
    from kfops.cli.console import make_console

    console = make_console(sys.stderr if args.json else None)
    options = {
        "input_uri": _local_or_s3(args.input),
        "output_uri": _local_or_s3(args.output),
        "model": args.model,
        "shards": args.shards,
        "shard_rows": args.shard_rows,
        "id_column": args.id_column or "",
        "passthrough": args.passthrough or [],
        "output_format": args.format,
        "chunk_rows": args.chunk_rows,
    }
    started = time.perf_counter()
    if args.kfp_local:
        manifest, failed = _predict_kfp_local(args, options, console)
        if manifest is None:
            return failed
    else:
        manifest = _predict_direct(args, options, console)
    elapsed = time.perf_counter() - started
    manifest = {**manifest, "seconds": round(elapsed, 2), "mode": "kfp-local" if args.kfp_local else "direct"}
    if args.json:
        sys.stdout.write(json.dumps(manifest, indent=2) + "\n")
        return 0
    rate = manifest["total_rows"] / elapsed if elapsed > 0 else 0.0
    console.print(
        f"  [green]✓[/] {manifest['total_rows']:,} prediction(s) by {manifest['model_name'] or manifest['model_ref']}"
        f" version {manifest['model_version'] or '?'} · {len(manifest['files'])} file(s) · {elapsed:.1f} s"
        f" ({rate:,.0f} rows/s overall)"
    )
    console.print(f"  output    {manifest['output_uri']}")
    console.print(f"  manifest  {manifest['manifest_uri']}")
    if manifest["stale_files"]:
        console.print(
            f"  [yellow]note[/]: {len(manifest['stale_files'])} part file(s) in the output are from an earlier job "
            "(another shard count); the manifest lists this job's files"
        )
    return 0


def _predict_direct(args, options: dict, console) -> dict:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from kfops.components import storage
    from kfops.components.batch_predict.logic import predict_batch
    from kfops.components.batch_predict.records import MANIFEST_FILE

    progress = Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows · {task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.json or not console.is_terminal,
        transient=False,
    )
    state = {"task": None, "started": 0.0, "done": 0}

    def on_plan(plan) -> None:
        console.print(
            f"[bold]kfops predict[/] · {plan.model_ref} · {plan.rows:,} row(s) in {plan.files} file(s) · "
            f"{len(plan.shards)} shard(s)"
        )
        state["task"] = progress.add_task("scoring", total=plan.rows, rate="")
        state["started"] = time.perf_counter()

    def on_rows(n: int) -> None:
        state["done"] += n
        seconds = time.perf_counter() - state["started"]
        rate = f"{state['done'] / seconds:,.0f}/s" if seconds > 0 else ""
        progress.update(state["task"], advance=n, rate=rate)

    console.print(f"[dim]  model {options['model']} from {tracking_uri(args)}[/]")
    with progress:
        manifest = predict_batch(
            options["input_uri"],
            options["output_uri"],
            options["model"],
            tracking_uri=tracking_uri(args),
            shard_rows=options["shard_rows"],
            shards=options["shards"],
            id_column=options["id_column"],
            passthrough=options["passthrough"],
            output_format=options["output_format"],
            chunk_rows=options["chunk_rows"],
            on_plan=on_plan,
            on_rows=on_rows,
        )
        if state["task"] is not None:  # text inputs plan lines, blank ones included: end the bar at the rows
            progress.update(state["task"], total=state["done"], completed=state["done"])
    return {**manifest, "manifest_uri": storage.join(manifest["output_uri"], MANIFEST_FILE)}


def _predict_kfp_local(args, options: dict, console) -> tuple[dict | None, int]:
    """The manifest, or None and the exit code (2 when a step failed on the user's input, else 1)."""
    import logging
    import warnings

    from kfops.cli.console import ANSI
    from kfops.components.workspace import workspace
    from kfops.pipelines.batch_prediction import build_batch_prediction_pipeline
    from kfops.pipelines.local import run_pipeline

    ws = workspace(args.workspace)
    arguments = {k: v for k, v in options.items() if v is not None}
    arguments["shards"] = options["shards"] or 0
    arguments["shard_rows"] = options["shard_rows"] or 0
    if args.tracking_uri:
        arguments["mlflow_tracking_uri"] = args.tracking_uri
    console.print(f"[bold]kfops predict[/] · kfp.local · workspace [cyan]{ws.root}[/] · model {options['model']}")
    log_dir = ws.root / "logs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"predict-{time.strftime('%Y%m%d-%H%M%S')}.log"
    progress = _shard_progress(log_path, console, args.verbose)
    stdout, sys.stdout = sys.stdout, progress
    root = logging.getLogger()
    saved_handlers, level = root.handlers[:], root.level
    root.handlers = [logging.StreamHandler(progress)]
    root.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the suite's image is not a Python image: expected
            warnings.filterwarnings("ignore", category=UserWarning, module=r"kfp\.")
            pipeline = build_batch_prediction_pipeline(parallelism=args.parallelism)
            task = run_pipeline(pipeline, arguments, ws, enable_caching=False)
    except RuntimeError as err:
        sys.stdout = stdout
        progress.close()
        detail = progress.errors[-1] if progress.errors else ANSI.sub("", str(err))
        console.print(f"[red bold]error[/] in task '{progress.failed_task or '?'}': {detail}")
        console.print(f"  full log: {log_path}")
        return None, 2 if progress.errors else 1
    finally:
        sys.stdout = stdout
        root.handlers = saved_handlers
        root.setLevel(level)
    progress.close()
    from kfops.components import storage

    manifest = json.loads(storage.read_bytes(task.outputs["manifest_uri"]))
    return {**manifest, "manifest_uri": task.outputs["manifest_uri"], "log": str(log_path)}, 0


def _shard_progress(log_path: Path, console, verbose: bool):
    """``kfops run``'s progress reader, with one line per shard: ParallelFor iterations share one task name, so
    their lines come from what each shard prints (``shard 2 of 8: 250000 row(s) to ... in 3.1 s``)."""
    import re

    from kfops.cli.console import PipelineProgress

    class ShardProgress(PipelineProgress):
        def _line(self, line: str) -> None:
            shard = re.search(r"shard (\d+) of (\d+): (\d+) row\(s\) to \S+ in ([\d.]+) s", line)
            if shard:
                if not self.verbose:
                    index, count, rows, seconds = shard.groups()
                    name = f"shard {index}/{count}"
                    self.console.print(f"  [green]✓[/] {name:<14} [dim]{float(seconds):5.1f} s · {int(rows):,} rows[/]")
                return
            if re.search(r"Task '?score-batch-shard'? finished with status SUCCESS", line):
                return  # shown by the shard's own line above
            super()._line(line)

    return ShardProgress(log_path, console, verbose=verbose)


# ------------------------------------------------------------------------------------------------ outcomes
def cmd_outcomes_log(args) -> int:
    from kfops.components.contracts import KfopsError
    from kfops.components.outcomes.logic import read_outcome_file
    from kfops.components.records import log_outcomes

    if args.file and (args.request_id is not None or args.outcome is not None):
        raise KfopsError("give either --file or --request-id with --outcome, not both")
    if args.file:
        records, source = read_outcome_file(args.file), args.file
    elif args.request_id is not None and args.outcome is not None:
        record = {args.join_on: args.request_id, "outcome": args.outcome}
        if args.timestamp:
            record["timestamp"] = args.timestamp
        records, source = [record], "command line"
    else:
        raise KfopsError("give --request-id and --outcome (one outcome; --id is the same flag) or --file (many)")
    result = log_outcomes(records, args.sink, fmt=args.format, source=source, key=args.join_on)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        print(f"logged {result['recorded']} outcome(s) to {', '.join(result['files'])}")
    return 0


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def cmd_outcomes_report(args) -> int:
    import os

    from kfops.components.contracts import TASK_BINARY, TASK_REGRESSION, KfopsError
    from kfops.components.outcomes.logic import live_performance

    salt = b""
    if args.join_hashed:
        salt = os.environ.get(args.salt_env, "").encode("utf-8")
        if not salt:
            raise KfopsError(f"--join-hashed needs the salt the server hashed with, in ${args.salt_env}")
    report = live_performance(
        args.payload_log,
        args.outcomes or "",
        since=args.since,
        until=args.until,
        positive_class=args.positive_class or "",
        model=args.model or "",
        join_on=args.join_on,
        join_salt=salt,
        task=args.task,
    )
    if args.json:
        sys.stdout.write(report.to_json() + "\n")
        return 0
    from rich.table import Table

    from kfops.cli.console import make_console

    window = f"{report.since or 'the start'} to {report.until or 'now'}"
    title = f"live performance ({report.task}) · predictions from {window}"
    if report.positive_class is not None:
        title += f" · positive class {report.positive_class!r}"
    table = Table(title=title + (f" · joined on {report.join_on}" if report.join_on != "request_id" else ""))
    for column in ("model", "version", "variant", "predictions", "joined", "no outcome"):
        table.add_column(column, justify="right" if column not in ("model", "variant") else "left")
    headings = {"positive_rate": "predicted +", "outcome_positive_rate": "observed +"}
    for name in report.metric_names:
        table.add_column(headings.get(name, name.replace("_", " ")), justify="right")
    for g in report.groups:
        table.add_row(
            g.model,
            g.model_version,
            g.variant,
            f"{g.predictions:,}",
            f"{g.joined:,}",
            f"{g.unmatched_predictions:,}",
            *(_fmt(g.values.get(name)) for name in report.metric_names),
        )
    console = make_console()
    console.print(table)
    console.print(
        f"  {report.predictions:,} prediction(s), {report.outcomes:,} outcome(s) "
        f"({report.unmatched_outcomes:,} with no prediction in the window, {report.superseded_outcomes:,} superseded)"
    )
    invalid = sum(g.invalid_outcomes for g in report.groups)
    if invalid:
        usable = (
            "numbers"
            if report.task == TASK_REGRESSION
            else f"{report.positive_class!r} or {report.negative_class!r}"
            if report.task == TASK_BINARY
            else "class labels"
        )
        console.print(f"  [yellow]{invalid:,} outcome(s) are not {usable}: left out of the metrics[/]")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def add_commands(subparsers) -> None:
    """Add ``predict`` and ``outcomes`` to the ``kfops`` parser's subparsers."""
    predict = subparsers.add_parser(
        "predict",
        help="score Parquet, JSONL or CSV files with a registered model (batch prediction)",
        description="Score a file or a folder of files (local or s3://) with one model version, in shards, and write "
        "predictions with request ids and the model version plus a _manifest.json. Runs in this process with a "
        "progress bar unless --kfp-local.",
    )
    predict.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"NAME@ALIAS, NAME/VERSION or a model folder "
        f"(default {DEFAULT_MODEL}); resolved once, every shard uses that version",
    )
    predict.add_argument("--input", required=True, help=".parquet, .jsonl or .csv file, or a folder of them (or s3://)")
    predict.add_argument("--output", required=True, help="folder or s3:// prefix for the part files and manifest")
    split = predict.add_mutually_exclusive_group()
    split.add_argument("--shards", type=_positive("--shards"), help="cut the input into this many shards")
    split.add_argument("--shard-rows", type=_positive("--shard-rows"), help="rows per shard (default 250,000)")
    predict.add_argument("--id-column", help="column whose values become request_id (default: <file>:<row>)")
    predict.add_argument("--passthrough", type=csv_list, help="input columns to copy to the output (comma-separated)")
    predict.add_argument("--format", choices=["parquet", "jsonl"], default="parquet", help="output format")
    predict.add_argument("--chunk-rows", type=_positive("--chunk-rows"), default=65_536, help="rows scored at once")
    mode = predict.add_mutually_exclusive_group()
    mode.add_argument(
        "--local-direct",
        action="store_true",
        help="score in this process with a progress bar (the default: fastest on one machine)",
    )
    mode.add_argument(
        "--kfp-local", action="store_true", help="run the batch-prediction pipeline through kfp.local instead"
    )
    predict.add_argument(
        "--parallelism", type=_positive("--parallelism"), default=8, help="--kfp-local: shards at once (kfp.local: 2)"
    )
    predict.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI, else the workspace's)")
    predict.add_argument("--workspace", help="local workspace folder (default ./.kfops or $KFOPS_WORKSPACE)")
    predict.add_argument("--verbose", "-v", action="store_true", help="--kfp-local: show every task's full log")
    predict.add_argument("--json", action="store_true", help="print the manifest as JSON")
    predict.set_defaults(func=cmd_predict)

    outcomes = subparsers.add_parser("outcomes", help="log ground-truth outcomes; report live model performance")
    outcomes_sub = outcomes.add_subparsers(dest="outcomes_command", required=True)
    log_cmd = outcomes_sub.add_parser(
        "log",
        help="append outcomes by request id (or a business id) to <sink>/outcomes/date=YYYY-MM-DD/",
        description="Append outcomes (ground-truth labels or business outcomes) by request id. One with "
        "--request-id and --outcome, or many from --file (columns request_id, outcome, optional timestamp). With "
        "--join-on transaction_id the outcomes are known by that id instead (a column of the training data the "
        "requests sent, which the payload log keeps): --id TX --outcome 1, or a file with a transaction_id column.",
    )
    log_cmd.add_argument("--sink", required=True, help="folder or s3:// prefix (the payload log's sink fits)")
    log_cmd.add_argument(
        "--request-id", "--id", dest="request_id", help="the request (or, with --join-on, the business id) it is for"
    )
    log_cmd.add_argument(
        "--join-on", default="request_id", help="the id the outcomes carry: request_id (default) or e.g. transaction_id"
    )
    log_cmd.add_argument("--outcome", help="the outcome: a class label such as 1 or fraud, or a number")
    log_cmd.add_argument("--timestamp", help="when it was observed (ISO 8601; default now)")
    log_cmd.add_argument("--file", help="CSV, Parquet or JSONL file of outcomes (local or s3://)")
    log_cmd.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl", help="file format written")
    log_cmd.add_argument("--json", action="store_true")
    log_cmd.set_defaults(func=cmd_outcomes_log)
    report = outcomes_sub.add_parser(
        "report",
        help="live metrics per model version and variant, in the task's terms, from the payload log and outcomes",
        description="Join the payload log to the logged outcomes and score each model version and variant: "
        "accuracy, precision, recall, F1 (binary); accuracy, balanced accuracy, macro precision/recall/F1 "
        "(multiclass); RMSE, MAE, R², median AE, SMAPE (regression). The task is read from the payload log "
        "unless --task says it.",
    )
    report.add_argument("--payload-log", required=True, help="the payload-log sink (folder or s3:// prefix)")
    report.add_argument("--outcomes", help="the outcomes sink (default: the payload-log sink)")
    report.add_argument("--since", help="predictions from (ISO 8601, or 24h / 7d back from now)")
    report.add_argument("--until", help="predictions before (ISO 8601, or a span back from now)")
    report.add_argument("--model", help="only this model name")
    report.add_argument("--positive-class", help="binary: the positive label (default 1/true/yes)")
    report.add_argument(
        "--task",
        default="auto",
        choices=["auto", "binary", "multiclass", "regression"],
        help="the model's task (default auto: numbers in the payload log are a regression's, more than two class "
        "labels a multiclass model's)",
    )
    report.add_argument(
        "--join-on",
        default="request_id",
        help="join predictions and outcomes on request_id (default) or on a business id the payload log keeps "
        "beside the features, e.g. transaction_id (outcomes logged with --join-on transaction_id)",
    )
    report.add_argument(
        "--join-hashed",
        action="store_true",
        help="the server hashed the --join-on field (--payload-log-hash): hash the outcomes' ids with the same salt",
    )
    report.add_argument(
        "--salt-env",
        default="KFOPS_PAYLOAD_LOG_SALT",
        help="environment variable holding that salt (default KFOPS_PAYLOAD_LOG_SALT)",
    )
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_outcomes_report)
