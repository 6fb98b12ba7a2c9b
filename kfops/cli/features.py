"""``kfops features ...``: the feature store (Feast) over the ingested snapshots.

- ``apply``: register the suite's definitions (components/feature_store/definitions.py) with a stored snapshot as
  the source.
- ``materialize``: load the offline data into the online store, incrementally or over a time window, and push
  the freshness gauges to a Pushgateway when asked.
- ``training-set``: join the feature service point in time onto an entity file (entity key, event time, label,
  request-time features).
- ``online``: what the online store answers for some entity ids (with TTLs applied), for checking.

The repository defaults to ``<workspace>/features`` (``./.kfops/features``). Feast loads only when a command runs.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict
from pathlib import Path


def _repo(args) -> str:
    if args.repo:
        return args.repo if args.repo.startswith("s3://") else str(Path(args.repo).expanduser().resolve())
    from kfops.components.workspace import workspace

    return str(Path(workspace(args.workspace).root, "features"))


def _print_json(payload) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "never materialised"
    if abs(seconds) < 120:
        return f"{seconds:.0f} s"
    if abs(seconds) < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if abs(seconds) < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ------------------------------------------------------------------------------------------------ apply
def _snapshot_source(args) -> str:
    """The source Parquet: --source, else the snapshot of --data-version, else the newest stored snapshot that
    passed validation."""
    from kfops.components import storage
    from kfops.components.contracts import KfopsError
    from kfops.components.datasets import SNAPSHOT_FILE, latest_validated_version, snapshot_uri
    from kfops.components.workspace import workspace

    if args.source:
        return args.source
    store = args.artifact_store or workspace(args.workspace).store
    sha = args.data_version
    if not sha:
        try:
            sha = latest_validated_version(store).sha256
        except KfopsError as err:
            raise KfopsError(f"{err} (--data-version), or give --source") from err
    uri = storage.join(snapshot_uri(store, sha), SNAPSHOT_FILE)
    if not storage.exists(uri):
        raise KfopsError(f"data version {sha} is not in the artifact store {store} ({uri} does not exist)")
    return uri


def cmd_apply(args) -> int:
    from kfops.cli.console import make_console
    from kfops.components.feature_store.store import open_store
    from kfops.components.features.logic import apply_definitions, init_repo

    repo = _repo(args)
    if not repo.startswith("s3://"):
        init_repo(repo)
    source = _snapshot_source(args)
    report = apply_definitions(open_store(repo), source)
    if args.json:
        _print_json({"repo": repo, **asdict(report)})
        return 0
    console = make_console()
    console.print(f"feature repository {repo} · source {report.source}")
    for view, features in report.feature_views.items():
        console.print(f"  view     {view}: {', '.join(features)}")
    for service, views in report.services.items():
        console.print(f"  service  {service}: {', '.join(views)}")
    return 0


# ------------------------------------------------------------------------------------------------ materialize
def cmd_materialize(args) -> int:
    from kfops.cli.console import make_console
    from kfops.components.feature_store.store import open_store
    from kfops.components.features.logic import materialize

    store = open_store(_repo(args))
    report = materialize(store, end=args.end, start=args.start, views=args.view)
    pushed = ""
    if args.pushgateway:
        from kfops.components.features.freshness import push_freshness

        pushed = push_freshness(report.views, args.pushgateway, store.project)
    if args.json:
        _print_json({**report.to_dict(), "pushed": pushed})
        return 0
    console = make_console()
    window = f"{report.start} .. {report.end}" if report.start else f"incremental up to {report.end}"
    console.print(f"materialised {len(report.views)} view(s), {window}, in {report.seconds:.1f} s")
    for view in report.views:
        console.print(f"  {view.name:<20} online up to {view.materialized_until or '-'} · lag {_lag(view.lag_seconds)}")
    if pushed:
        console.print(pushed)
    return 0


# ------------------------------------------------------------------------------------------------ training set
def _write_table(frame, uri: str) -> None:
    from kfops.components import storage
    from kfops.components.contracts import KfopsError

    buffer = io.BytesIO()
    lower = uri.lower()
    if lower.endswith((".parquet", ".pq")):
        frame.to_parquet(buffer, index=False)
    elif lower.endswith(".csv"):
        buffer.write(frame.to_csv(index=False).encode("utf-8"))
    else:
        raise KfopsError(f"--output {uri}: use a .parquet or .csv file")
    if not storage.is_s3(uri):
        Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
    storage.write_bytes(uri if storage.is_s3(uri) else str(Path(uri).expanduser()), buffer.getvalue())


def cmd_training_set(args) -> int:
    from kfops.cli.console import make_console
    from kfops.components.feature_store.store import open_store
    from kfops.components.features.logic import training_set
    from kfops.components.ingest.logic import read_table

    entities = read_table(args.entities)
    store = open_store(_repo(args))
    frame, report = training_set(store, entities, args.service, args.timestamp_column, source=args.entities)
    _write_table(frame, args.output)
    if args.json:
        _print_json({"output": args.output, **asdict(report)})
        return 0
    console = make_console()
    console.print(
        f"training set {args.output}: {report.rows:,} rows ({report.lookups:,} distinct entity/time lookups), "
        f"{len(report.features)} features of service '{report.service}', {report.seconds:.1f} s"
    )
    for view, reasons in report.missing.items():
        detail = ", ".join(f"{n:,} {reason.replace('_', ' ')}" for reason, n in reasons.items())
        console.print(f"  {view}: missing in {sum(reasons.values()):,} row(s) ({detail}); the model imputes them")
    return 0


# ------------------------------------------------------------------------------------------------ online
def cmd_online(args) -> int:
    from kfops.cli.console import make_console
    from kfops.components.feature_store.online import online_features
    from kfops.components.feature_store.store import open_store

    store = open_store(_repo(args))
    frame, fallbacks = online_features(store, args.service, args.entity, now=args.at)
    if args.json:
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        for record, blanked in zip(records, fallbacks, strict=True):
            record["fallbacks"] = [{"feature_view": v, "reason": r} for v, r in blanked]
        _print_json(records)
        return 0
    from rich.table import Table

    table = Table(title=f"online features of service '{args.service}'")
    for column in frame.columns:
        table.add_column(str(column))
    table.add_column("fallbacks")
    for (_, row), blanked in zip(frame.iterrows(), fallbacks, strict=True):
        cells = ["-" if v is None or v != v else str(v) for v in row.tolist()]
        table.add_row(*cells, ", ".join(f"{v} {r}" for v, r in blanked) or "-")
    make_console().print(table)
    return 0


# ------------------------------------------------------------------------------------------------ parser
def add_commands(subparsers) -> None:
    """Add ``features`` to the ``kfops`` parser's subparsers."""
    from kfops.components.feature_store.definitions import FRAUD_SERVICE, TIMESTAMP_FIELD

    features = subparsers.add_parser(
        "features",
        help="the feature store (Feast): apply, materialize, training sets, online lookups",
        description="A Feast feature repository over the ingested snapshots: local by default (Parquet offline "
        "store, sqlite online store under <workspace>/features).",
    )
    sub = features.add_subparsers(dest="features_command", required=True)

    def common(parser) -> None:
        parser.add_argument(
            "--repo",
            help="feature repository: a folder or s3:// prefix with feature_store.yaml (default <workspace>/features)",
        )
        parser.add_argument("--workspace", help="local workspace folder (default ./.kfops or $KFOPS_WORKSPACE)")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    apply = sub.add_parser(
        "apply",
        help="register the feature definitions over a stored data snapshot",
        description="Create the repository if needed and register the entity, source, feature views and services. "
        "The source is --source, else the snapshot of --data-version, else the newest stored snapshot that passed "
        "validation.",
    )
    common(apply)
    source = apply.add_mutually_exclusive_group()
    source.add_argument("--data-version", help="a stored snapshot's sha256 (kfops data versions)")
    source.add_argument("--source", help="a Parquet file (local or s3://) to use as the source instead")
    apply.add_argument("--artifact-store", help="folder or s3:// URI holding the snapshots (default: workspace)")
    apply.set_defaults(func=cmd_apply)

    mat = sub.add_parser(
        "materialize",
        help="load feature values into the online store (incremental, or a --start/--end window)",
        description="Without --start, each view continues from where its last materialisation ended (the first "
        "time: from --end minus its TTL). Times are ISO 8601 (UTC unless they say otherwise) or 'now'.",
    )
    common(mat)
    mat.add_argument("--start", help="window start (default: incremental)")
    mat.add_argument("--end", default="now", help="window end (default: now)")
    mat.add_argument("--view", action="append", help="only this feature view (repeatable; default: all)")
    mat.add_argument("--pushgateway", help="push freshness gauges here (host:port or URL), job kfops-features")
    mat.set_defaults(func=cmd_materialize)

    train = sub.add_parser(
        "training-set",
        help="join features point in time onto an entity file (key, event time, label, request features)",
        description="Each row gets the feature values as of its own event time (never later ones, none older "
        "than the view's TTL). Rows keep their order and other columns; features with no value stay empty "
        "and are counted (training imputes them).",
    )
    common(train)
    train.add_argument("--entities", required=True, help="CSV or Parquet entity file (local or s3://)")
    train.add_argument("--output", required=True, help=".parquet or .csv file to write (local or s3://)")
    train.add_argument("--service", default=FRAUD_SERVICE, help=f"feature service (default {FRAUD_SERVICE})")
    train.add_argument(
        "--timestamp-column", default=TIMESTAMP_FIELD, help=f"the event-time column (default {TIMESTAMP_FIELD})"
    )
    train.set_defaults(func=cmd_training_set)

    online = sub.add_parser("online", help="show the online features of some entity ids (TTLs applied)")
    common(online)
    online.add_argument("--entity", action="append", required=True, help="an entity id (repeatable)")
    online.add_argument("--service", default=FRAUD_SERVICE, help=f"feature service (default {FRAUD_SERVICE})")
    online.add_argument("--at", help="judge TTLs as of this time instead of now (ISO 8601)")
    online.set_defaults(func=cmd_online)
