"""``kfops monitor``: drift of a window of logged predictions (or any dataset) against the training data.

Exit codes: 0 the monitor ran (drift or not); 1 with ``--fail-on-drift`` when the dataset drifted; 2 bad input
(a missing file, an unknown model, a bad option). An unreachable Pushgateway or webhook is a warning only.
"""

from __future__ import annotations

import os
import sys

from kfops.cli.console import csv_list

EXIT_DRIFT = 1


def cmd_monitor(args) -> int:
    from kfops.components.contracts import KfopsError
    from kfops.components.monitor.columns import DriftOptions
    from kfops.components.monitor.logic import monitor

    if not args.reference and not args.model:
        raise KfopsError("monitor: pass --reference PATH or --model NAME@ALIAS (or both: the model's features)")
    kinds = {name: "numeric" for name in args.numeric or []} | {name: "categorical" for name in args.categorical or []}
    features = args.features or None
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    artifact_store = args.artifact_store or os.environ.get("KFOPS_ARTIFACT_STORE", "")
    if args.model and (not tracking_uri or not artifact_store):
        from kfops.components.workspace import workspace

        ws = workspace(args.workspace)
        tracking_uri = tracking_uri or ws.tracking_uri()
        artifact_store = artifact_store or ws.store
    options = DriftOptions(
        stattest=args.stattest,
        threshold=args.threshold,
        drift_share=args.drift_share,
        min_rows=args.min_rows,
    )
    outcome = monitor(
        args.current,
        args.output,
        args.reference or "",
        model=args.model or "",
        tracking_uri=tracking_uri,
        artifact_store=artifact_store,
        options=options,
        features=features,
        kinds=kinds,
        ignore=args.ignore or [],
        target=args.target or "",
        date_from=args.date_from or "",
        date_to=args.date_to or "",
        model_version=args.model_version or "",
        html=not args.no_html,
        report=args.report,
        sample_rows=args.sample_rows,
        pushgateway=args.pushgateway or "",
        webhook=args.webhook or "",
        job=args.job,
        report_url=args.report_url or "",
    )
    result = outcome.result
    model_spec = outcome.reference.spec if outcome.reference else None
    if not args.target and not args.features and not args.ignore and model_spec is None:
        # Without a model or --target nothing says which column is the label: it would be compared as a feature.
        print(
            "note: no --target given: every column but ids and timestamps is compared, a label among them too; "
            "name it with --target COLUMN (or --model NAME@ALIAS)",
            file=sys.stderr,
        )
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        _print_summary(result, outcome.paths)
    return EXIT_DRIFT if args.fail_on_drift and result.dataset_drift else 0


def _print_summary(result, paths) -> None:
    from rich.table import Table

    from kfops.cli.console import make_console

    console = make_console()
    table = Table(title=f"drift · {result.current} vs {result.reference}")
    for column in ("feature", "kind", "test", "score", "threshold", "drift", "rows ref / cur"):
        table.add_column(column, justify="right" if column in ("score", "threshold") else "left")
    for item in [*result.features, *result.prediction_drift]:
        drift = "[red bold]yes[/]" if item.drift_detected else ("[dim]n/a[/]" if item.status != "ok" else "no")
        score = "" if item.score is None else f"{item.score:.4g}"
        table.add_row(
            item.name,
            item.kind,
            item.test,
            score,
            f"{item.threshold:g}",
            drift,
            f"{item.reference_rows:,} / {item.current_rows:,}",
        )
    console.print(table)
    color = {"drift": "red", "no_drift": "green"}.get(result.verdict, "yellow")
    console.print(f"[{color} bold]{result.headline()}[/]")
    for message in result.messages:
        console.print(f"  [yellow]![/] {message}")
    if result.missing_columns:
        console.print(f"  [yellow]![/] missing from the current window: {', '.join(result.missing_columns)}")
    if result.extra_columns:
        console.print(f"  [dim]not in the reference (not tested): {', '.join(result.extra_columns)}[/]")
    if result.left_out:
        left_out = "; ".join(f"{name} ({why})" for name, why in result.left_out.items())
        console.print(f"  [dim]left out, no features: {left_out}[/]")
    for channel, what in result.notifications.items():
        console.print(f"  {channel}: {what}")
    for kind, path in paths.items():
        console.print(f"  [dim]{kind:<9} {path}[/]")


# drift.TESTS, written out so that building the parser does not import numpy and pandas (a test checks they agree).
TESTS = ("ks", "chisquare", "z", "wasserstein", "jensenshannon", "psi", "kl")


def add_commands(subparsers) -> None:
    """Add ``kfops monitor`` to the ``kfops`` parser's subparsers."""

    mon = subparsers.add_parser(
        "monitor",
        help="drift of logged predictions (or any data) against the training data",
        description="Compare a window of logged predictions (a payload-log folder <sink>/model=NAME/date=DAY/, or "
        "any CSV/Parquet/JSONL file or folder, local or s3://) with a reference: a file, or a registered model's "
        "training data snapshot. Per feature the test Evidently would pick (K-S or chi-square/Z on <= 1000 "
        "reference rows, Wasserstein or Jensen-Shannon above), computed in bounded memory over all rows; writes "
        "drift.json, drift.md and drift.html (drawn from those statistics; --report evidently for Evidently's, on a "
        "sample) to --output.",
    )
    what = mon.add_argument_group("data")
    what.add_argument("--current", required=True, help="the window: a file or folder (local or s3://)")
    what.add_argument("--reference", help="reference data: a file or folder (local or s3://)")
    what.add_argument(
        "--model",
        metavar="NAME@ALIAS",
        help="reference = this model version's training data snapshot; features and kinds from its feature spec",
    )
    what.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="first date= partition of the window")
    what.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="last date= partition of the window")
    what.add_argument("--model-version", help="only the window's rows logged by this model version")
    what.add_argument(
        "--target",
        metavar="COLUMN",
        help="the label: left out of the features (with --model, the model's target is known)",
    )
    what.add_argument(
        "--features",
        type=csv_list,
        help="columns to test (default: the model's, else all but the target, ids and timestamps, as training)",
    )
    what.add_argument("--numeric", type=csv_list, help="treat these columns as numeric (default: inferred)")
    what.add_argument("--categorical", type=csv_list, help="treat these columns as categorical (default: inferred)")
    what.add_argument("--ignore", type=csv_list, help="columns not to test, e.g. the label or ids")
    tests = mon.add_argument_group("tests")
    tests.add_argument(
        "--stattest",
        default="auto",
        choices=["auto", *TESTS],
        help="one test for every column it applies to (default auto: Evidently's choice per column)",
    )
    tests.add_argument("--threshold", type=float, help="override the test's threshold (p-value or distance)")
    tests.add_argument(
        "--drift-share", type=float, default=0.5, help="dataset drift at this share of drifted features (0.5)"
    )
    tests.add_argument(
        "--min-rows", type=int, default=30, help="fewer non-empty values on a side: not tested (default 30)"
    )
    out = mon.add_argument_group("output and alerts")
    out.add_argument("--output", required=True, help="folder for drift.json, drift.md, drift.html")
    out.add_argument("--no-html", action="store_true", help="write no drift.html")
    out.add_argument(
        "--report",
        default="kfops",
        choices=["kfops", "evidently"],
        help="drift.html: kfops (default: drawn from the statistics on all rows, in milliseconds) or evidently "
        "(Evidently's DataDriftPreset on --sample-rows rows per side; ~8 s import, seconds to render)",
    )
    out.add_argument(
        "--sample-rows", type=int, default=20_000, help="rows per side in Evidently's report (--report evidently)"
    )
    out.add_argument("--pushgateway", help="push drift gauges to this Prometheus Pushgateway (host:port or URL)")
    out.add_argument("--job", default="kfops-monitor", help="Pushgateway job name (default kfops-monitor)")
    out.add_argument("--webhook", help="POST a Slack-compatible message here when drift is found")
    out.add_argument("--report-url", help="where readers find the HTML report (linked in the message)")
    out.add_argument("--fail-on-drift", action="store_true", help="exit 1 when the dataset drifted")
    out.add_argument("--json", action="store_true", help="print the drift JSON")
    reg = mon.add_argument_group("registry (with --model)")
    reg.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the workspace's)")
    reg.add_argument("--artifact-store", help="where data snapshots are (default: $KFOPS_ARTIFACT_STORE or workspace)")
    reg.add_argument("--workspace", help="local workspace folder (default ./.kfops)")
    mon.set_defaults(func=cmd_monitor)
