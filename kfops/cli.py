"""The ``kfops`` command line.

Start-up stays light: each command imports what it needs (kfp, mlflow, torch) only when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

from kfops import __version__

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in _csv_list(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


# ------------------------------------------------------------------------------------------------ progress
class PipelineProgress:
    """Stands in for stdout while kfp.local runs: keeps the full log in a file, shows one line per task."""

    TASK = r"'?([\w-]+)'?"

    def __init__(self, log_path: Path, console, verbose: bool = False):
        self.log_path = log_path
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.console = console
        self.verbose = verbose
        self.buffer = ""
        self.started: dict[str, float] = {}
        self.failed_task = ""
        self.errors: list[str] = []

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.verbose:
            self.console.file.write(text)
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, line: str) -> None:
        # Failures and error messages are read in every mode; progress lines are printed unless --verbose
        # already streams the whole log.
        show = not self.verbose
        if m := re.search(rf"Executing task {self.TASK}", line):
            self.started[m.group(1)] = time.perf_counter()
        elif m := re.search(rf"Task {self.TASK} cache hit", line):
            if show:
                self.console.print(f"  [green]✓[/] {m.group(1):<14} [dim]cached[/]")
        elif m := re.search(rf"Task {self.TASK} finished with status (\w+)", line):
            name, status = m.group(1), m.group(2)
            took = time.perf_counter() - self.started.get(name, time.perf_counter())
            if status != "SUCCESS":
                self.failed_task = self.failed_task or name
            if show:
                mark = "[green]✓[/]" if status == "SUCCESS" else "[red]✗[/]"
                self.console.print(f"  {mark} {name:<14} [dim]{took:5.1f} s[/]")
        elif m := re.search(r"(?:KfopsError|kfops\.components\.contracts\.KfopsError): (.*)$", line):
            self.errors.append(m.group(1).strip())
        elif self.errors and re.match(r"\s*(?:- |\S.*: \d+ of \d+ expectations)", line) and not self.failed_task:
            # The lines a multi-line error goes on with (validation lists every failed expectation).
            self.errors[-1] += "\n    " + line.strip()
        elif show and (re.search(r"\bepoch \d+: train_loss", line) or "MLflow run" in line):
            self.console.print(f"    [dim]{line.split('INFO]:')[-1].strip()}[/]")

    def close(self) -> None:
        if self.buffer:
            self._line(ANSI.sub("", self.buffer))
        self.log.close()


def _console(file=None):
    from rich.console import Console

    # Bind to the stream as it is now: `kfops run` swaps sys.stdout for its progress reader. Piped output
    # (logs, CI) gets a wide page instead of rich's 80 columns, so tables are not squeezed to slivers.
    stream = file or sys.stdout
    width = None if getattr(stream, "isatty", lambda: False)() else 200
    return Console(highlight=False, soft_wrap=True, file=stream, width=width)


# ------------------------------------------------------------------------------------------------ run
def _training_arguments(args, ws) -> dict:
    """Pipeline arguments for `kfops run`, from the flags and the workspace."""
    from kfops import datagen

    arguments: dict = {"artifact_store": args.artifact_store or ws.store, "tensorboard_root": ws.tensorboard}
    if args.data_version:
        arguments["data_version"] = args.data_version
    if args.data:
        arguments["data_uri"] = args.data if args.data.startswith("s3://") else str(Path(args.data).resolve())
    elif not args.data_version:
        arguments["data_uri"] = str(datagen.default_data_path(ws.root, rows=args.rows, seed=args.data_seed))
    default_data = not args.data and not args.data_version
    arguments["target"] = args.target or datagen.TARGET if default_data else args.target or ""
    if not arguments["target"]:
        raise SystemExit("kfops run: --target is required with --data or --data-version")
    if default_data:
        arguments["drop_columns"] = list(datagen.ID_COLUMNS)
        arguments["time_column"] = datagen.TIME_COLUMN
    for flag, key in (
        ("numeric", "numeric_features"),
        ("categorical", "categorical_features"),
        ("drop", "drop_columns"),
        ("hidden_sizes", "hidden_sizes"),
    ):
        if getattr(args, flag) is not None:
            arguments[key] = getattr(args, flag)
    for flag in (
        "time_column",
        "positive_class",
        "epochs",
        "batch_size",
        "learning_rate",
        "dropout",
        "optimizer",
        "weight_decay",
        "class_weighting",
        "seed",
        "device",
        "model_name",
        "experiment",
        "validation_fraction",
        "test_fraction",
        "threshold",
    ):
        value = getattr(args, flag)
        if value is not None:
            arguments[flag] = value
    if args.split_by_time:
        arguments["split_by_time"] = True
    if args.no_promote:
        arguments["promote_champion"] = False
    if args.suite:
        arguments["expectation_suite"] = (
            args.suite if args.suite.startswith("s3://") else str(Path(args.suite).resolve())
        )
    if args.warn_only:
        arguments["validation_mode"] = "warn"
    if args.max_missing is not None:
        arguments["max_missing"] = args.max_missing
    if args.thresholds:
        from kfops.components.gate.logic import load_thresholds, thresholds_json

        arguments["thresholds"] = thresholds_json(load_thresholds(args.thresholds))
    return arguments


def cmd_run(args) -> int:
    from kfops.pipelines.local import workspace

    console = _console()
    ws = workspace(args.workspace)
    if args.artifact_store is None and os.environ.get("KFOPS_ARTIFACT_STORE"):
        args.artifact_store = os.environ["KFOPS_ARTIFACT_STORE"]
    arguments = _training_arguments(args, ws)
    console.print(f"[bold]kfops run[/] · workspace [cyan]{ws.root}[/]")
    console.print(
        f"  data: {arguments.get('data_uri') or 'stored version ' + arguments['data_version']}"
        f" · target '{arguments['target']}'"
    )

    from kfops.pipelines.local import run_pipeline
    from kfops.pipelines.training import training_pipeline

    log_dir = ws.root / "logs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    progress = PipelineProgress(log_path, console, verbose=args.verbose)
    started = time.perf_counter()
    stdout = sys.stdout
    sys.stdout = progress
    # kfp.local reports cache hits through the root logger, outside its own log context.
    root = logging.getLogger()
    handler = logging.StreamHandler(progress)
    saved_handlers, level = root.handlers[:], root.level
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            # kfp.local warns that the suite's image is not a Python image: expected, tasks run here.
            warnings.simplefilter("ignore", RuntimeWarning)
            # ...and that resource requests and display names have no effect locally.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"kfp\.")
            task = run_pipeline(training_pipeline, arguments, ws, enable_caching=not args.no_cache)
    except RuntimeError as err:
        sys.stdout = stdout
        progress.close()
        detail = progress.errors[-1] if progress.errors else ANSI.sub("", str(err))
        console.print(f"[red bold]error[/] in task '{progress.failed_task or '?'}': {detail}")
        console.print(f"  nothing was registered · full log: {log_path}")
        return EXIT_USER_ERROR if progress.errors else EXIT_FAILURE
    finally:
        sys.stdout = stdout
        root.handlers = saved_handlers
        root.setLevel(level)
    progress.close()
    elapsed = time.perf_counter() - started
    outputs = dict(task.outputs)
    _print_summary(console, ws, arguments, outputs, elapsed, log_path, as_json=args.json)
    return 0


def _print_summary(
    console, ws, arguments: dict, outputs: dict, elapsed: float, log_path: Path, as_json: bool = False
) -> None:
    import mlflow

    from kfops.components.contracts import METRIC_NAMES

    mlflow.set_tracking_uri(ws.tracking_uri())
    client = mlflow.MlflowClient()
    run = client.get_run(outputs["run_id"])
    from kfops.pipelines.training import DEFAULT_MODEL_NAME

    model_name = arguments.get("model_name", DEFAULT_MODEL_NAME)
    version = client.get_model_version(model_name, outputs["model_version"])
    aliases = client.get_registered_model(model_name).aliases
    from kfops.components.contracts import TAG_BLESSED, TAG_BLESSING_MESSAGE

    metrics = {k: run.data.metrics[k] for k in METRIC_NAMES if k in run.data.metrics}
    summary = {
        "data_sha256": outputs["data_sha256"],
        "run_id": outputs["run_id"],
        "model_name": model_name,
        "model_version": outputs["model_version"],
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(outputs["model_version"])),
        "metrics": metrics,
        "seconds": round(elapsed, 1),
        "workspace": str(ws.root),
        "mlflow_tracking_uri": ws.tracking_uri(),
        "experiment_id": run.info.experiment_id,
        "model_uri": f"models:/{model_name}/{outputs['model_version']}",
        "download_uri": client.get_model_version_download_uri(model_name, outputs["model_version"]),
        "tensorboard": run.data.tags.get("kfops.tensorboard_uri", ""),
        "log": str(log_path),
        "device": run.data.tags.get("kfops.device", ""),
        "blessed": version.tags.get(TAG_BLESSED) == "true",
        "blessing": version.tags.get(TAG_BLESSING_MESSAGE, ""),
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"{model_name} v{version.version} · {elapsed:.1f} s", show_header=True)
    table.add_column("metric")
    table.add_column("test", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"  data version   {summary['data_sha256']}")
    console.print(
        f"  MLflow run     {summary['run_id']} (experiment {summary['experiment_id']}, trained on {summary['device']})"
    )
    color = "green" if summary["blessed"] else "red"
    console.print(f"  gate           [{color}]{summary['blessing'] or 'no verdict recorded'}[/]")
    console.print(f"  model          {summary['model_uri']} · aliases: {', '.join(summary['aliases']) or 'none'}")
    console.print(f"  model files    {summary['download_uri']}")
    console.print(f"  MLflow store   {summary['mlflow_tracking_uri']}")
    console.print(f"  TensorBoard    {summary['tensorboard']}")
    console.print(f"  run log        {log_path}")
    if summary["mlflow_tracking_uri"].startswith("sqlite:"):
        console.print(f"[dim]  open the MLflow UI:  mlflow ui --backend-store-uri {summary['mlflow_tracking_uri']}[/]")
    console.print(f"[dim]  open TensorBoard:    tensorboard --logdir {ws.tensorboard}[/]")


# ------------------------------------------------------------------------------------------------ compile
def cmd_compile(args) -> int:
    from kfops.pipelines.compile import compile_all, stale_files

    if args.check:
        stale = stale_files(image=args.image, cuda_image=args.cuda_image)
        if stale:
            print("out of date (run `kfops compile`):\n  " + "\n  ".join(stale), file=sys.stderr)
            return EXIT_FAILURE
        print("compiled pipelines and components are current")
        return 0
    components_dir = Path(args.output_dir, "components") if args.output_dir else None
    for path in compile_all(
        image=args.image, cuda_image=args.cuda_image, output_dir=args.output_dir, components_dir=components_dir
    ):
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------ data
def cmd_data_generate(args) -> int:
    from kfops.datagen import write_transactions

    path = write_transactions(args.output, rows=args.rows, seed=args.seed, drift=args.drift)
    print(f"wrote {args.rows:,} transactions to {path}")
    return 0


def cmd_data_versions(args) -> int:
    from kfops.components.ingest.logic import list_versions
    from kfops.pipelines.local import workspace

    store = args.artifact_store or os.environ.get("KFOPS_ARTIFACT_STORE") or workspace(args.workspace).store
    versions = list_versions(store)
    if args.json:
        print(json.dumps([json.loads(v.to_json()) for v in versions], indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"data versions in {store}")
    for column in ("sha256", "rows", "columns", "source", "created"):
        table.add_column(column)
    for v in versions:
        table.add_row(v.sha256, f"{v.rows:,}", str(len(v.columns)), v.source, v.created_at)
    _console().print(table)
    return 0


# ------------------------------------------------------------------------------------------------ suite
def cmd_suite_init(args) -> int:
    from kfops.components.ingest.logic import read_table
    from kfops.components.validate.logic import profile_suite

    frame = read_table(args.data)
    if args.target and args.target not in frame.columns:
        from kfops.components.contracts import KfopsError

        raise KfopsError(f"{args.data}: target column '{args.target}' not found")
    suite = profile_suite(
        frame,
        target=args.target or "",
        name=args.name or Path(args.output).stem,
        ignore=args.ignore or [],
        max_missing=args.max_missing,
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(suite, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(suite['expectations'])} expectations for {len(frame.columns)} columns to {args.output}")
    return 0


def cmd_suite_validate(args) -> int:
    from kfops.components.ingest.logic import read_table
    from kfops.components.validate.logic import validate_frame

    frame = read_table(args.data)
    summary, result = validate_frame(
        frame,
        args.data,
        suite_uri=args.suite or "",
        target=args.target or "",
        max_missing=args.max_missing,
        mode="warn",
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(summary.message())
    return 0 if summary.success else EXIT_FAILURE


# ------------------------------------------------------------------------------------------------ parser
def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """The training pipeline's flags, shared by `kfops run` and `kfops retrain`."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="CSV or Parquet file: a local path or s3:// URI")
    data.add_argument("--data-version", help="retrain on a stored snapshot, by its sha256")
    data.add_argument("--target", help="the label column (default data: is_fraud)")
    data.add_argument("--numeric", type=_csv_list, help="numeric feature columns (comma-separated)")
    data.add_argument("--categorical", type=_csv_list, help="categorical feature columns (comma-separated)")
    data.add_argument("--drop", type=_csv_list, help="columns to leave out, such as ids (comma-separated)")
    data.add_argument("--positive-class", help="the positive label value (default: 1/true/yes, else the rarer)")
    data.add_argument("--time-column", help="event time column")
    data.add_argument("--split-by-time", action="store_true", help="newest rows go to validation and test")
    data.add_argument("--validation-fraction", type=float)
    data.add_argument("--test-fraction", type=float)
    data.add_argument("--rows", type=int, default=100_000, help="rows of default data to generate")
    data.add_argument("--data-seed", type=int, default=7, help="seed of the default data generator")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden-sizes", type=_int_list, help="e.g. 64,32")
    model.add_argument("--epochs", type=int)
    model.add_argument("--batch-size", type=int)
    model.add_argument("--learning-rate", type=float)
    model.add_argument("--dropout", type=float)
    model.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    model.add_argument("--weight-decay", type=float)
    model.add_argument("--class-weighting", choices=["none", "balanced"])
    model.add_argument("--seed", type=int)
    model.add_argument("--device", choices=["auto", "cpu", "cuda"])
    model.add_argument("--threshold", type=float, help="decision threshold on the positive probability")
    reg = parser.add_argument_group("tracking and registry")
    reg.add_argument("--model-name", help="registered model name (default fraud-detector)")
    reg.add_argument("--experiment", help="MLflow experiment (default kfops-training)")
    reg.add_argument(
        "--no-promote",
        action="store_true",
        help="register a blessed model as challenger only; do not make it the champion",
    )
    gates = parser.add_argument_group("quality gates")
    gates.add_argument(
        "--suite",
        help="Great Expectations suite JSON for the data (default: a suite drawn from "
        "the data's schema); write one with `kfops suite init`",
    )
    gates.add_argument("--warn-only", action="store_true", help="record validation failures and go on")
    gates.add_argument("--max-missing", type=float, help="default suite: allowed share of empty values (0.05)")
    gates.add_argument(
        "--thresholds",
        help="YAML/JSON gate thresholds (default: accuracy >= 0.90, macro precision/recall/F1 >= 0.85, macro F1 "
        "at most 0.01 below the champion's)",
    )
    where = parser.add_argument_group("where")
    where.add_argument("--workspace", help="local workspace folder (default ./.kfops or $KFOPS_WORKSPACE)")
    where.add_argument("--artifact-store", help="folder or s3:// URI for data snapshots (default: workspace)")
    where.add_argument("--no-cache", action="store_true", help="run every step even if cached")
    where.add_argument("--verbose", "-v", action="store_true", help="show every task's full log")
    where.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kfops", description="Kubeflow Pipelines MLOps suite.")
    parser.add_argument("--version", action="version", version=f"kfops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run the training pipeline locally (kfp.local, no cluster)",
        description="Run the training pipeline locally. With no data flags it trains on the "
        "bundled default data (generated card transactions).",
    )
    _add_training_flags(run)
    run.set_defaults(func=cmd_run)

    comp = sub.add_parser("compile", help="compile pipelines and components to YAML")
    comp.add_argument("--image", help="the suite's component image")
    comp.add_argument("--cuda-image", help="the CUDA variant, for GPU training")
    comp.add_argument(
        "--output-dir", help="write pipelines here (components under its components/) instead of beside the code"
    )
    comp.add_argument("--check", action="store_true", help="exit 1 if the committed YAML is out of date")
    comp.set_defaults(func=cmd_compile)

    data_cmd = sub.add_parser("data", help="default data and stored data versions")
    data_sub = data_cmd.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser("generate", help="write generated card transactions (CSV or Parquet)")
    gen.add_argument("--output", required=True, help="file to write (.csv or .parquet)")
    gen.add_argument("--rows", type=int, default=100_000)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--drift", type=float, default=0.0, help="0..1: shift distributions as a later month would")
    gen.set_defaults(func=cmd_data_generate)
    ver = data_sub.add_parser("versions", help="list the data snapshots in the artifact store")
    ver.add_argument("--workspace")
    ver.add_argument("--artifact-store")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_data_versions)
    from kfops.cli_registry import add_commands; add_commands(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.cli_monitor import add_commands as add_monitor; add_monitor(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.cli_predict import add_commands; add_commands(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.cli_retrain import add_commands as add_retrain; add_retrain(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.cli_ab import add_commands as add_ab; add_ab(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.cli_deploy import add_commands as add_deploy; add_deploy(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.cli_features import add_commands as add_features; add_features(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.serving.cli import add_serve_command; add_serve_command(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.cli_sweep import add_commands as add_sweep; add_sweep(sub)  # noqa: E702, I001  # fmt: skip
    from kfops.cli_platform import add_commands as add_platform; add_platform(sub)  # noqa: E702, I001  # fmt: skip

    suite = sub.add_parser("suite", help="Great Expectations suites for the validate step")
    suite_sub = suite.add_subparsers(dest="suite_command", required=True)
    init = suite_sub.add_parser("init", help="profile a reference dataset into a suite you can edit")
    init.add_argument("--data", required=True, help="reference CSV or Parquet (local or s3://)")
    init.add_argument("--output", required=True, help="suite JSON to write")
    init.add_argument("--target", help="the label column (its classes become a value set)")
    init.add_argument("--ignore", type=_csv_list, help="columns to leave out, such as ids (comma-separated)")
    init.add_argument("--name", help="suite name (default: the output file's name)")
    init.add_argument("--max-missing", type=float, default=0.05, help="allowed share of empty values")
    init.set_defaults(func=cmd_suite_init)
    check = suite_sub.add_parser("validate", help="validate a dataset with a suite (or the default suite)")
    check.add_argument("--data", required=True)
    check.add_argument("--suite", help="suite JSON (default: the default suite drawn from the data)")
    check.add_argument("--target")
    check.add_argument("--max-missing", type=float, default=0.05)
    check.add_argument("--json", action="store_true", help="print GX's result JSON")
    check.set_defaults(func=cmd_suite_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from kfops.components.contracts import KfopsError

    try:
        return int(args.func(args) or 0)
    except KfopsError as err:
        print(f"kfops {args.command}: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
