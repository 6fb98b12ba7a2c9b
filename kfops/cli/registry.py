"""``kfops runs ...`` and ``kfops models ...``: look into MLflow runs and the model registry, promote, roll back.

Each command takes ``--tracking-uri`` (default: MLFLOW_TRACKING_URI, else the local workspace's sqlite store) and
``--json`` for scripts. MLflow is imported only when a command runs, so ``kfops --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime

from kfops.cli.console import tracking_uri

DEFAULT_EXPERIMENT = "kfops-training"  # as kfops.components.train.logic.DEFAULT_EXPERIMENT
KEY_PARAMS = ("hidden_sizes", "learning_rate", "epochs", "batch_size", "optimizer", "dropout")
EXIT_NOT_PROMOTED = 1


# ------------------------------------------------------------------------------------------------ helpers
def _client(args):
    import mlflow

    uri = tracking_uri(args)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _time(millis) -> str:
    if not millis:
        return ""
    return datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.6g}"
    return str(value)


def _get_run(client, run_id: str):
    from mlflow.exceptions import MlflowException

    from kfops.components.contracts import KfopsError

    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise KfopsError(f"run '{run_id}' does not exist") from err
        raise KfopsError(f"cannot read run '{run_id}': {err.message}") from err


def _ordered_metric_names(*metric_dicts) -> list[str]:
    from kfops.components.contracts import METRIC_NAMES

    present = set().union(*metric_dicts)
    return [m for m in METRIC_NAMES if m in present] + sorted(present - set(METRIC_NAMES))


def _comparison(runs: list) -> dict:
    """Metrics and params of two runs side by side (None for a missing run); differences are second minus first."""
    first, second = ({} if r is None else r.data.metrics for r in runs)
    metrics = {}
    for name in _ordered_metric_names(first, second):
        a, b = _finite(first.get(name)), _finite(second.get(name))
        difference = b - a if a is not None and b is not None else None
        metrics[name] = {"first": a, "second": b, "difference": difference, "differs": a != b}
    first_p, second_p = ({} if r is None else r.data.params for r in runs)
    params = {}
    for name in sorted(set(first_p) | set(second_p)):
        a, b = first_p.get(name), second_p.get(name)
        params[name] = {"first": a, "second": b, "differs": a != b}
    return {"metrics": metrics, "params": params}


def _print_comparison(title: str, labels: tuple[str, str], comparison: dict) -> None:
    from rich.table import Table

    from kfops.cli.console import make_console

    table = Table(title=title)
    table.add_column("", width=1)
    table.add_column("kind")
    table.add_column("name")
    table.add_column(labels[0], justify="right", overflow="fold")
    table.add_column(labels[1], justify="right", overflow="fold")
    table.add_column("difference", justify="right")
    for kind, rows in (("metric", comparison["metrics"]), ("param", comparison["params"])):
        for name, row in rows.items():
            if kind == "metric":
                difference = "" if row["difference"] is None else f"{row['difference']:+.4f}"
            else:
                difference = "changed" if row["differs"] else ""
            table.add_row(
                "≠" if row["differs"] else "",
                kind,
                name,
                _fmt(row["first"]),
                _fmt(row["second"]),
                difference,
                style="bold" if row["differs"] else None,
            )
    console = make_console()
    console.print(table)
    differing = sum(r["differs"] for part in comparison.values() for r in part.values())
    total = sum(len(part) for part in comparison.values())
    console.print(f"  {differing} of {total} rows differ (marked ≠); difference = {labels[1]} - {labels[0]}")


# ------------------------------------------------------------------------------------------------ runs
def cmd_runs_search(args) -> int:
    from mlflow.exceptions import MlflowException

    from kfops.components.contracts import KfopsError

    client = _client(args)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise KfopsError(f"experiment '{args.experiment}' does not exist (experiments: {known})")
    if args.max <= 0:
        raise KfopsError(f"--max must be positive, got {args.max}")
    try:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=args.filter or "",
            order_by=args.order_by or None,
            max_results=args.max,
        )
    except MlflowException as err:
        what = f"--filter {args.filter!r}" if args.filter else ""
        if args.order_by:
            what += (" or " if what else "") + f"--order-by {args.order_by!r}"
        raise KfopsError(f"bad {what or 'search'}: {err.message}") from err

    names = _ordered_metric_names(*(r.data.metrics for r in runs))
    from kfops.components.contracts import METRIC_NAMES

    metric_names = [m for m in names if m in METRIC_NAMES]
    rows = [
        {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "start_time": _time(r.info.start_time),
            "status": r.info.status,
            "metrics": {m: _finite(r.data.metrics[m]) for m in metric_names if m in r.data.metrics},
            "params": dict(r.data.params),
            "data_sha256": r.data.tags.get("kfops.data_sha256", ""),
        }
        for r in runs
    ]
    if args.json:
        _print_json(rows)
        return 0
    from rich.table import Table

    from kfops.cli.console import make_console

    params = [p for p in KEY_PARAMS if any(p in row["params"] for row in rows)]
    table = Table(title=f"runs in {args.experiment}" + (f" where {args.filter}" if args.filter else ""))
    table.add_column("run id", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("start time", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in (*metric_names, *params):
        table.add_column(column, justify="right" if column in metric_names else "left", overflow="fold")
    for row in rows:
        table.add_row(
            row["run_id"],
            row["run_name"],
            row["start_time"],
            row["status"],
            *(_fmt(row["metrics"].get(m)) for m in metric_names),
            *(row["params"].get(p, "") for p in params),
        )
    console = make_console()
    console.print(table)
    console.print(f"  {len(rows)} run(s)")
    return 0


def cmd_runs_compare(args) -> int:
    client = _client(args)
    comparison = _comparison([_get_run(client, args.run1), _get_run(client, args.run2)])
    if args.json:
        _print_json({"runs": [args.run1, args.run2], **comparison})
        return 0
    labels = (args.run1[:8], args.run2[:8])
    _print_comparison(f"run {labels[0]} vs {labels[1]}", labels, comparison)
    return 0


# ------------------------------------------------------------------------------------------------ models
def _version_summary(client, version) -> dict:
    from kfops.components.contracts import TAG_BLESSED, TAG_BLESSING_BASELINE, TAG_BLESSING_MESSAGE, TAG_METRIC_PREFIX

    tags = dict(version.tags or {})
    metrics = {}
    for key, value in tags.items():
        if key.startswith(TAG_METRIC_PREFIX):
            try:
                metrics[key[len(TAG_METRIC_PREFIX) :]] = float(value)
            except ValueError:
                metrics[key[len(TAG_METRIC_PREFIX) :]] = value
    aliases = {a: str(v) for a, v in (client.get_registered_model(version.name).aliases or {}).items()}
    number = str(version.version)
    run_tags = _run_tags(client, version.run_id)
    return {
        "name": version.name,
        "version": number,
        "aliases": sorted(a for a, v in aliases.items() if v == number),
        # What the model predicts and how: the training run's tags (a version registered from elsewhere has none).
        "task": run_tags.get("kfops.task", ""),
        "model_family": run_tags.get("kfops.model_family", ""),
        "status": version.status,
        "created": _time(version.creation_timestamp),
        "description": version.description or "",
        "run_id": version.run_id or "",
        "source": version.source,
        "download_uri": client.get_model_version_download_uri(version.name, number),
        "data_sha256": tags.get("kfops.data_sha256", ""),
        "blessed": tags.get(TAG_BLESSED, ""),
        "blessing_message": tags.get(TAG_BLESSING_MESSAGE, ""),
        "blessing_baseline_version": tags.get(TAG_BLESSING_BASELINE, ""),
        "metrics": {k: metrics[k] for k in _ordered_metric_names(metrics)},
        "tags": tags,
    }


def _run_tags(client, run_id: str | None) -> dict[str, str]:
    """The run's tags, or none when the version has no run or its run was deleted (the version outlives it)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        return dict(client.get_run(run_id).data.tags)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def cmd_models_list(args) -> int:
    client = _client(args)
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for model in sorted(models, key=lambda m: m.name):
        versions = client.search_model_versions(
            f"name = '{model.name}'", order_by=["version_number DESC"], max_results=1
        )
        rows.append(
            {
                "name": model.name,
                "aliases": {a: str(v) for a, v in sorted((model.aliases or {}).items())},
                "latest_version": str(versions[0].version) if versions else "",
                "updated": _time(model.last_updated_timestamp),
                "description": model.description or "",
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    from rich.table import Table

    from kfops.cli.console import make_console

    table = Table(title=f"registered models in {tracking_uri(args)}")
    for column in ("name", "aliases", "latest version", "updated"):
        table.add_column(column, overflow="fold")
    for row in rows:
        aliases = ", ".join(f"{a}=v{v}" for a, v in row["aliases"].items())
        table.add_row(row["name"], aliases, row["latest_version"], row["updated"])
    make_console().print(table)
    return 0


def cmd_models_show(args) -> int:
    from kfops.components.registry import resolve_ref

    client = _client(args)
    summary = _version_summary(client, resolve_ref(client, args.ref))
    if args.json:
        _print_json(summary)
        return 0
    from rich.table import Table

    from kfops.cli.console import make_console

    console = make_console()
    console.print(f"[bold]{summary['name']}[/] version {summary['version']}")
    for label, key in (
        ("aliases", "aliases"),
        ("task", "task"),
        ("model family", "model_family"),
        ("status", "status"),
        ("created", "created"),
        ("run id", "run_id"),
        ("source", "source"),
        ("download URI", "download_uri"),
        ("data sha256", "data_sha256"),
        ("blessed", "blessed"),
        ("blessing", "blessing_message"),
        ("baseline", "blessing_baseline_version"),
        ("description", "description"),
    ):
        value = summary[key]
        value = ", ".join(value) if isinstance(value, list) else value
        console.print(f"  {label:<13} {value or '[dim]-[/]'}")
    if summary["metrics"]:
        table = Table(title="metrics (version tags)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in summary["metrics"].items():
            table.add_row(name, _fmt(value))
        console.print(table)
    others = {k: v for k, v in summary["tags"].items() if not k.startswith("kfops.metric.")}
    if others:
        table = Table(title="tags")
        table.add_column("tag")
        table.add_column("value", overflow="fold")
        for key, value in sorted(others.items()):
            table.add_row(key, value)
        console.print(table)
    return 0


def cmd_models_compare(args) -> int:
    from kfops.components.registry import resolve_version

    client = _client(args)
    versions = [resolve_version(client, args.name, ref) for ref in (args.v1, args.v2)]
    runs = [_get_run(client, v.run_id) if v.run_id else None for v in versions]
    labels = (f"v{versions[0].version}", f"v{versions[1].version}")
    comparison = _comparison(runs)
    if args.json:
        _print_json(
            {
                "name": args.name,
                "versions": [str(v.version) for v in versions],
                "runs": [v.run_id or "" for v in versions],
                **comparison,
            }
        )
        return 0
    _print_comparison(f"{args.name} {labels[0]} vs {labels[1]} (metrics and params of their runs)", labels, comparison)
    return 0


def _print_result(args, result) -> None:
    from dataclasses import asdict

    if args.json:
        _print_json(asdict(result))
        return
    from kfops.cli.console import make_console

    mark = "[green]✓[/]" if result.won else "[yellow]✗[/]"
    make_console().print(f"{mark} {result.message}")


NUMERIC_SIGNATURE_TYPES = ("double", "float", "long", "integer", "boolean")


def cmd_models_import(args) -> int:
    """A model trained elsewhere into the chain: ``kfops run --imported-model`` on the reference data, its
    features the model's signature inputs (numbers numeric, text categorical; every other column kept out)."""
    import tempfile

    from kfops.cli import main
    from kfops.components.train.imported import check_trusted_source, download, signature_columns
    from kfops.components.workspace import workspace

    store = os.environ.get("KFOPS_ARTIFACT_STORE") or workspace(args.workspace).store
    check_trusted_source(args.model_uri, store, args.trust)  # before anything loads it
    argv = ["run", "--data", args.reference_data, "--target", args.target, "--imported-model", args.model_uri]
    argv += ["--trust"] if args.trust else []
    with tempfile.TemporaryDirectory(prefix="kfops-import-") as tmp:
        # the signature (fetched once here; the train step fetches the model again where it runs)
        columns = signature_columns(download(args.model_uri, tmp))
    if columns:
        numeric = [name for name, kind in columns.items() if kind in NUMERIC_SIGNATURE_TYPES]
        categorical = [name for name, kind in columns.items() if kind not in NUMERIC_SIGNATURE_TYPES]
        argv += ["--numeric", ",".join(numeric)] if numeric else []
        argv += ["--categorical", ",".join(categorical)] if categorical else []
    name = args.model_name
    if not name and args.model_uri.startswith("models:/"):
        name = args.model_uri[len("models:/") :].split("/")[0].split("@")[0]  # the model keeps its name
    passed = {
        "--model-name": name,
        "--task": args.task,
        "--positive-class": args.positive_class,
        "--threshold": args.threshold,
        "--workspace": args.workspace,
        "--thresholds": args.thresholds,
    }
    for flag, value in passed.items():
        if value is not None and value != "":
            argv += [flag, str(value)]
    argv += ["--no-promote"] if args.no_promote else []
    argv += ["--json"] if args.json else []
    return main(argv)


def cmd_models_promote(args) -> int:
    from kfops.components.registry import promote, resolve_ref

    client = _client(args)
    version = resolve_ref(client, args.ref)
    result = promote(client, version.name, str(version.version), metric=args.metric, force=args.force)
    _print_result(args, result)
    return 0 if result.won else EXIT_NOT_PROMOTED


def cmd_models_rollback(args) -> int:
    from kfops.components.registry import rollback

    client = _client(args)
    _print_result(args, rollback(client, args.name))
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the workspace's)"
    )
    parser.add_argument("--workspace", help="local workspace folder whose mlflow.db to use (default ./.kfops)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_commands(subparsers) -> None:
    """Add the ``runs`` and ``models`` commands to the ``kfops`` parser's subparsers."""
    from kfops.components.contracts import DEFAULT_PROMOTION_METRIC, METRIC_NAMES

    runs = subparsers.add_parser("runs", help="search and compare MLflow training runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    search = runs_sub.add_parser("search", help="list runs of an experiment, filtered and ordered")
    search.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help=f"experiment name (default {DEFAULT_EXPERIMENT})"
    )
    search.add_argument(
        "--filter", help="MLflow search filter, e.g. \"metrics.accuracy > 0.9 and params.epochs = '12'\""
    )
    search.add_argument(
        "--order-by", action="append", help='e.g. "metrics.accuracy DESC" (repeatable; default: newest first)'
    )
    search.add_argument("--max", type=int, default=10, help="at most this many runs (default 10)")
    _common(search)
    search.set_defaults(func=cmd_runs_search)
    compare = runs_sub.add_parser("compare", help="params and metrics of two runs side by side")
    compare.add_argument("run1")
    compare.add_argument("run2")
    _common(compare)
    compare.set_defaults(func=cmd_runs_compare)

    models = subparsers.add_parser("models", help="registered models: list, show, compare, promote, roll back")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="registered models with their aliases and latest version")
    _common(listing)
    listing.set_defaults(func=cmd_models_list)
    show = models_sub.add_parser("show", help="one model version: aliases, run, files, tags, metrics")
    show.add_argument("ref", metavar="NAME@ALIAS|NAME/VERSION", help="e.g. fraud-detector@champion or fraud-detector/3")
    _common(show)
    show.set_defaults(func=cmd_models_show)
    mcompare = models_sub.add_parser("compare", help="metrics and params of two versions' runs side by side")
    mcompare.add_argument("name")
    mcompare.add_argument("v1", help="a version number or @alias")
    mcompare.add_argument("v2", help="a version number or @alias")
    _common(mcompare)
    mcompare.set_defaults(func=cmd_models_compare)
    importing = models_sub.add_parser(
        "import",
        help="bring a model trained elsewhere (an MLflow model) into the chain: evaluated, gated, registered",
        description="Bring an existing MLflow model (scikit-learn, XGBoost, any pyfunc) into the chain: the "
        "reference data goes through the data steps (validation, split, feature spec) with the model's signature "
        "inputs as the features, the model is wrapped in the suite's format, evaluated on the test split, gated "
        "and registered under the suite's aliases; then `kfops serve` and the deployment take it like a trained "
        "one. Loading the model runs its pickled code: import only from a registry or path you trust.",
    )
    importing.add_argument("--model-uri", required=True, help="models:/NAME/V, models:/NAME@ALIAS, runs:/ID/PATH, "
                           "a model folder or s3://")  # fmt: skip
    importing.add_argument("--reference-data", required=True, help="CSV or Parquet with the features and the target")
    importing.add_argument("--target", required=True, help="the target column of the reference data")
    importing.add_argument("--model-name", help="registered name (default: the source model's, for models:/)")
    importing.add_argument("--task", choices=("auto", "binary", "multiclass", "regression"))
    importing.add_argument("--positive-class")
    importing.add_argument("--threshold", type=float, help="binary: the decision threshold (default 0.5)")
    importing.add_argument("--thresholds", help="gate thresholds YAML/JSON (default: the task's)")
    importing.add_argument("--no-promote", action="store_true", help="register as challenger only")
    importing.add_argument(
        "--trust",
        action="store_true",
        help="import from a source kfops does not trust by default (another bucket, an http(s) URI): loading the "
        "model runs its pickled code",
    )
    importing.add_argument("--workspace")
    importing.add_argument("--json", action="store_true")
    importing.set_defaults(func=cmd_models_import)
    promote = models_sub.add_parser(
        "promote",
        help="make a blessed version the champion (its predecessor becomes previous)",
        description="Make a blessed version the champion; the version it replaces becomes previous (the gate "
        "has already judged it against that champion). Concurrent promotions are settled by the metric, then the "
        "newer version; one that loses such a race exits 1.",
    )
    promote.add_argument("ref", metavar="NAME/VERSION", help="e.g. fraud-detector/3 (or NAME@challenger)")
    promote.add_argument(
        "--metric",
        default=DEFAULT_PROMOTION_METRIC,
        choices=METRIC_NAMES,
        help=f"metric that decides between candidates (default {DEFAULT_PROMOTION_METRIC})",
    )
    promote.add_argument("--force", action="store_true", help="promote even if the gate did not bless the version")
    _common(promote)
    promote.set_defaults(func=cmd_models_promote)
    rollback = models_sub.add_parser("rollback", help="champion goes back to previous (run again to undo)")
    rollback.add_argument("name")
    _common(rollback)
    rollback.set_defaults(func=cmd_models_rollback)
