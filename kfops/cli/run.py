"""`kfops run`: the training pipeline, locally, with a live line per step and a summary."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from kfops.cli.console import (
    ANSI,
    EXIT_FAILURE,
    EXIT_USER_ERROR,
    PipelineProgress,
    csv_list,
    int_list,
    json_object,
    make_console,
)


def training_arguments(args, ws, default_data_file: str | None = None) -> dict:
    """Pipeline arguments for `kfops run`, from the flags and the workspace. ``default_data_file``: the default
    data, already generated (else generated here when the flags ask for it)."""
    from kfops import datagen

    arguments: dict = {"artifact_store": args.artifact_store or ws.store, "tensorboard_root": ws.tensorboard}
    if args.data_version:
        arguments["data_version"] = args.data_version
    if args.data:
        arguments["data_uri"] = args.data if args.data.startswith("s3://") else str(Path(args.data).resolve())
    elif not args.data_version:
        arguments["data_uri"] = default_data_file or str(
            datagen.default_data_path(ws.root, rows=args.rows, seed=args.data_seed)
        )
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
        "task",
        "epochs",
        "batch_size",
        "learning_rate",
        "dropout",
        "optimizer",
        "weight_decay",
        "class_weighting",
        "early_stopping_patience",
        "seed",
        "device",
        "model_name",
        "experiment",
        "validation_fraction",
        "test_fraction",
        "threshold",
        "threshold_objective",
        "model_family",
        "model_params",
        "model_module",
        "imported_model",
    ):
        value = getattr(args, flag)
        if value is not None:
            arguments[flag] = value
    if args.threshold is not None:
        if args.threshold_objective not in (None, "fixed"):
            raise SystemExit("kfops run: --threshold fixes the decision threshold; drop --threshold-objective")
        arguments["threshold_objective"] = "fixed"
    if args.threshold_objective is not None:
        from kfops.components.contracts import TrainConfig

        TrainConfig(threshold_objective=args.threshold_objective).check()
    if args.model_module and not args.model_module.startswith("s3://"):
        module = Path(args.model_module).expanduser().resolve()
        if not module.is_file():
            from kfops.components.contracts import KfopsError

            raise KfopsError(f"--model-module {args.model_module}: no such file")
        arguments["model_module"] = str(module)  # the train step runs elsewhere: an absolute path
    if args.model_module and args.model_family is None:
        arguments["model_family"] = "module"
    if args.imported_model:
        from kfops.components.train.imported import check_trusted_source

        check_trusted_source(args.imported_model, arguments["artifact_store"], args.trust)
    if args.imported_model and args.model_family is None:
        arguments["model_family"] = "imported"
    if args.model_family is not None or args.model_params is not None or args.model_module or args.imported_model:
        from kfops.components.contracts import TrainConfig

        # the family and its parameters checked here, not minutes later in the train step
        keys = ("model_family", "model_params", "model_module", "imported_model", "device")
        family = {k: arguments[k] for k in keys if k in arguments}
        TrainConfig.from_dict(family).check()
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
    if args.thresholds or default_data:
        from kfops.components.gate.logic import REFERENCE_THRESHOLDS, load_thresholds, thresholds_json

        # The bundled fraud demo keeps the reference document's fixed floors; other data is judged against the
        # naive baseline (the pipeline's default).
        thresholds = load_thresholds(args.thresholds) if args.thresholds else REFERENCE_THRESHOLDS
        arguments["thresholds"] = thresholds_json(thresholds)
    if not args.model_name and not default_data:
        arguments["model_name"] = _model_name(args, arguments)
    return arguments


def _model_name(args, arguments: dict) -> str:
    """Without --model-name: drawn from the data file (or the stored version's source) and the target."""
    from kfops.components.registry import model_name_from_data

    source = args.data or ""
    if not source:
        from kfops.components.datasets import list_versions

        found = [v for v in list_versions(arguments["artifact_store"]) if v.sha256.startswith(args.data_version)]
        source = found[0].source if found else f"data-{args.data_version[:12]}"
    return model_name_from_data(source, arguments["target"])


def cmd_run(args) -> int:
    from kfops.components.workspace import workspace
    from kfops.pipelines import task_server
    from kfops.pipelines.local import configure_environment

    console = make_console()
    ws = workspace(args.workspace)
    if args.artifact_store is None and os.environ.get("KFOPS_ARTIFACT_STORE"):
        args.artifact_store = os.environ["KFOPS_ARTIFACT_STORE"]
    server = None
    if task_server.enabled():
        # Started first, so its imports overlap this process's own (kfp, the pipeline, the default data).
        configure_environment(ws)
        (ws.root / "logs").mkdir(parents=True, exist_ok=True)
        from kfops.components.tracking import new_local_store

        server = task_server.TaskServer.start(
            preload=task_server.TRAINING_PRELOAD_NEW_STORE if new_local_store() else task_server.TRAINING_PRELOAD,
            log_path=ws.root / "logs" / f"task-server-{time.strftime('%Y%m%d-%H%M%S')}.log",
        )
    try:
        return _run(args, ws, console, server)
    finally:
        if server is not None:
            server.stop()


def _default_data_in_server(args, ws, server):
    """The default data generated in a child of the task server, in the background (a future of its path), while
    this process imports kfp and the pipeline: the driver never imports pandas. None when the flags name other data
    or there is no server to ask."""
    if args.data or args.data_version or server is None or not server.accepts(None):
        return None
    from concurrent.futures import ThreadPoolExecutor

    query = {"workspace": str(ws.root), "rows": args.rows, "seed": args.data_seed}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfops-default-data")
    generating = pool.submit(server.call, "kfops.datagen:default_data_path", query)
    pool.shutdown(wait=False)  # its one thread ends with the call
    return generating


def _run(args, ws, console, server) -> int:
    generating = _default_data_in_server(args, ws, server)
    from kfops.components.kfp_support import import_kfp_without_client

    import_kfp_without_client()  # kfops run submits nothing: kfp's API client is not needed
    from kfops.pipelines.local import run_pipeline
    from kfops.pipelines.training import DEFAULT_MODEL_NAME, training_pipeline  # kfp: while the data is made

    default_data_file = None
    if generating is not None:
        with contextlib.suppress(RuntimeError):  # the server could not make it: training_arguments does, here
            default_data_file = generating.result()
    arguments = training_arguments(args, ws, default_data_file)
    console.print(f"[bold]kfops run[/] · workspace [cyan]{ws.root}[/]")
    console.print(
        f"  data: {arguments.get('data_uri') or 'stored version ' + arguments['data_version']}"
        f" · target '{arguments['target']}'"
    )
    console.print(f"  model: [cyan]{arguments.get('model_name', DEFAULT_MODEL_NAME)}[/] (--model-name to change)")

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
            task = run_pipeline(
                training_pipeline, arguments, ws, enable_caching=not args.no_cache, server=server, keep_server=True
            )
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
    _print_summary(console, ws, arguments, outputs, elapsed, log_path, as_json=args.json, server=server)
    return 0


def _print_summary(
    console,
    ws,
    arguments: dict,
    outputs: dict,
    elapsed: float,
    log_path: Path,
    as_json: bool = False,
    server=None,
) -> None:
    from kfops.pipelines.training import DEFAULT_MODEL_NAME

    model_name = arguments.get("model_name", DEFAULT_MODEL_NAME)
    query = {
        "tracking_uri": ws.tracking_uri(),
        "model_name": model_name,
        "run_id": outputs["run_id"],
        "model_version": outputs["model_version"],
    }
    found = None
    if server is not None and server.accepts(None):
        # MLflow is loaded in the task server: a child of it reads the run, and the driver need not import MLflow
        with contextlib.suppress(RuntimeError):  # the server gone or the call failed: read it here instead
            found = server.call("kfops.pipelines.run_summary:training_summary", query)
    if found is None:
        from kfops.pipelines.run_summary import training_summary

        found = training_summary(**query)
    summary = {
        "task": found["task"],
        "model_family": found["model_family"],
        "data_sha256": outputs["data_sha256"],
        "run_id": outputs["run_id"],
        "model_name": model_name,
        "model_version": outputs["model_version"],
        "aliases": found["aliases"],
        "metrics": found["metrics"],
        "seconds": round(elapsed, 1),
        "workspace": str(ws.root),
        "mlflow_tracking_uri": ws.tracking_uri(),
        "experiment_id": found["experiment_id"],
        "model_uri": f"models:/{model_name}/{outputs['model_version']}",
        "download_uri": found["download_uri"],
        "tensorboard": found["tensorboard"],
        "log": str(log_path),
        "device": found["device"],
        "blessed": found["blessed"],
        "blessing": found["blessing"],
    }
    task, metrics = summary["task"], summary["metrics"]
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"{model_name} v{found['version']} · {elapsed:.1f} s", show_header=True)
    table.add_column("metric")
    table.add_column("test", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    how = (
        "as asked (--task)" if arguments.get("task", "auto") != "auto" else "inferred from the target; --task to choose"
    )
    console.print(f"  task           {task} ({how})")
    console.print(f"  model family   {summary['model_family']}")
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


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """The training pipeline's flags, shared by `kfops run` and `kfops retrain`."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="CSV or Parquet file: a local path or s3:// URI")
    data.add_argument("--data-version", help="retrain on a stored snapshot, by its sha256")
    data.add_argument("--target", help="the label column (default data: is_fraud)")
    data.add_argument("--numeric", type=csv_list, help="numeric feature columns (comma-separated)")
    data.add_argument("--categorical", type=csv_list, help="categorical feature columns (comma-separated)")
    data.add_argument("--drop", type=csv_list, help="columns to leave out, such as ids (comma-separated)")
    data.add_argument("--positive-class", help="the positive label value (default: 1/true/yes, else the rarer)")
    data.add_argument(
        "--task",
        choices=("auto", "binary", "multiclass", "regression"),
        help="what the target is (default auto: two values binary, text or few whole numbers multiclass, many "
        "numbers regression)",
    )
    data.add_argument("--time-column", help="event time column")
    data.add_argument("--split-by-time", action="store_true", help="newest rows go to validation and test")
    data.add_argument("--validation-fraction", type=float)
    data.add_argument("--test-fraction", type=float)
    data.add_argument("--rows", type=int, default=100_000, help="rows of default data to generate")
    data.add_argument("--data-seed", type=int, default=7, help="seed of the default data generator")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        "--model-family",
        dest="model_family",
        choices=("mlp", "gbdt", "module", "imported"),
        help="the model family: mlp (the torch MLP, default), gbdt (gradient-boosted trees, scikit-learn's "
        "HistGradientBoosting), module (--model-module's; implied by it) or imported (--imported-model's)",
    )
    model.add_argument(
        "--model-module",
        help="your own training code: a Python file (local or s3://) defining train(train, validation, spec, "
        "params) that returns a fitted model (see components/train/README.md); its family is 'module'",
    )
    model.add_argument(
        "--imported-model",
        help="a model trained elsewhere, instead of training one: an MLflow model URI (models:/NAME/V, runs:/ID/PATH, "
        "a folder or s3://); `kfops models import` runs this with the data's features taken from its signature",
    )
    model.add_argument(
        "--trust",
        action="store_true",
        help="--imported-model from a source kfops does not trust by default (another bucket, an http(s) URI): "
        "loading it runs its pickled code",
    )
    model.add_argument(
        "--model-params",
        type=json_object,
        help='the family\'s own parameters as JSON, e.g. \'{"max_leaf_nodes": 63, "learning_rate": 0.05}\' for gbdt',
    )
    model.add_argument("--hidden-sizes", type=int_list, help="e.g. 64,32")
    model.add_argument("--epochs", type=int)
    model.add_argument("--batch-size", type=int)
    model.add_argument("--learning-rate", type=float)
    model.add_argument("--dropout", type=float)
    model.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    model.add_argument("--weight-decay", type=float)
    model.add_argument(
        "--class-weighting",
        choices=["auto", "none", "balanced"],
        help="weight the positive class by the class ratio (auto: when positives are under 20%% of the rows)",
    )
    model.add_argument("--early-stopping-patience", type=int, help="epochs without a better validation loss")
    model.add_argument("--seed", type=int)
    model.add_argument("--device", choices=["auto", "cpu", "cuda"])
    model.add_argument(
        "--threshold",
        type=float,
        help="fix the decision threshold on the positive probability (default: chosen on the validation split)",
    )
    model.add_argument(
        "--threshold-objective",
        help='how the decision threshold is chosen on the validation split: f1 (default), youden, "precision>=P", '
        '"recall>=R"',
    )
    reg = parser.add_argument_group("tracking and registry")
    reg.add_argument(
        "--model-name",
        help="registered model name (default: from the data file and target, e.g. churn.csv and Exited give "
        "churn-exited; fraud-detector for the bundled data)",
    )
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
        help="YAML/JSON gate thresholds (default: ROC-AUC and balanced accuracy at least 0.05 above the naive "
        "class-prior baseline, macro F1 at most 0.01 below the champion's; examples/thresholds/ has files; the "
        "bundled demo uses examples/thresholds/reference.yaml)",
    )
    where = parser.add_argument_group("where")
    where.add_argument("--workspace", help="local workspace folder (default ./.kfops or $KFOPS_WORKSPACE)")
    where.add_argument("--artifact-store", help="folder or s3:// URI for data snapshots (default: workspace)")
    where.add_argument("--no-cache", action="store_true", help="run every step even if cached")
    where.add_argument("--verbose", "-v", action="store_true", help="show every task's full log")
    where.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_commands(sub) -> None:
    run = sub.add_parser(
        "run",
        help="run the training pipeline locally (kfp.local, no cluster)",
        description="Run the training pipeline locally. With no data flags it trains on the "
        "bundled default data (generated card transactions).",
    )
    add_training_flags(run)
    run.set_defaults(func=cmd_run)
