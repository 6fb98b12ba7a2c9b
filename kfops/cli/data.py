"""`kfops data` (generate, versions) and `kfops suite` (init, validate): the data and its expectations."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kfops.cli.console import EXIT_FAILURE, csv_list, make_console


def cmd_data_generate(args) -> int:
    from kfops.datagen import write_transactions

    path = write_transactions(args.output, rows=args.rows, seed=args.seed, drift=args.drift)
    print(f"wrote {args.rows:,} transactions to {path}")
    return 0


def cmd_data_versions(args) -> int:
    from kfops.components.datasets import list_versions, validation_of
    from kfops.components.workspace import workspace

    store = args.artifact_store or os.environ.get("KFOPS_ARTIFACT_STORE") or workspace(args.workspace).store
    versions = list_versions(store)
    verdicts = {v.sha256: validation_of(store, v.sha256) for v in versions}
    if args.json:
        print(json.dumps([json.loads(v.to_json()) | {"validation": verdicts[v.sha256]} for v in versions], indent=2))
        return 0
    from rich.table import Table

    def verdict(record: dict | None) -> str:
        if record is None:
            return "not validated"
        return "passed" if record["success"] else f"failed ({record['failed_expectations']})"

    table = Table(title=f"data versions in {store}")
    for column in ("sha256", "rows", "columns", "source", "created", "validation"):
        table.add_column(column)
    for v in versions:
        table.add_row(v.sha256, f"{v.rows:,}", str(len(v.columns)), v.source, v.created_at, verdict(verdicts[v.sha256]))
    make_console().print(table)
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


def add_commands(sub) -> None:
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

    suite = sub.add_parser("suite", help="Great Expectations suites for the validate step")
    suite_sub = suite.add_subparsers(dest="suite_command", required=True)
    init = suite_sub.add_parser("init", help="profile a reference dataset into a suite you can edit")
    init.add_argument("--data", required=True, help="reference CSV or Parquet (local or s3://)")
    init.add_argument("--output", required=True, help="suite JSON to write")
    init.add_argument("--target", help="the label column (its classes become a value set)")
    init.add_argument("--ignore", type=csv_list, help="columns to leave out, such as ids (comma-separated)")
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
