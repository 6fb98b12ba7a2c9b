"""``kfops ab analyze``: compare two variants' logged outcomes (Welch's t-test or a two-proportion z-test).

Only argparse at import time; pandas and scipy load when the command runs.
"""

from __future__ import annotations

import argparse
import sys

# As in kfops.components.ab_analysis.logic (not imported here: it brings pandas into every start-up).
METRIC_KINDS = ("conversion", "continuous", "auto", "absolute_error", "squared_error")
FORMATS = ("auto", "csv", "parquet", "jsonl")
DEFAULT_CONTROL = "stable"
DEFAULT_TREATMENT = "challenger"


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from err
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text!r}")
    return value


def cmd_ab_analyze(args) -> int:
    from kfops.components.ab_analysis.logic import ab_markdown, run_ab_analysis

    result = run_ab_analysis(
        args.data,
        variant_column=args.variant_column,
        outcome_column=args.outcome_column,
        metric=args.metric,
        alpha=args.alpha,
        power=args.power,
        control=args.control,
        treatment=args.treatment,
        minimum_detectable_effect=args.mde,
        higher_is_better=not args.lower_is_better,
        outcomes_uri=args.outcomes or "",
        join_on=args.join_on,
        data_format=args.format,
        report_path=args.output,
    )
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
        return 0
    from rich.markdown import Markdown

    from kfops.cli.console import make_console

    console = make_console()
    console.print(Markdown(ab_markdown(result)))
    if args.output:
        console.print(f"  report written to {args.output}")
    return 0


def add_commands(subparsers) -> None:
    """Add ``ab`` (``kfops ab analyze``) to the ``kfops`` parser's subparsers."""
    ab = subparsers.add_parser("ab", help="A/B analysis of two model variants' outcomes")
    ab_sub = ab.add_subparsers(dest="ab_command", required=True)
    analyze = ab_sub.add_parser(
        "analyze",
        help="compare two variants' outcomes: test, effect size, confidence interval, power, verdict",
        description="Reads outcomes per variant from a CSV/Parquet/JSONL file or folder (local or s3://), e.g. "
        "the serving payload log joined with an outcomes table, and compares the treatment with the control.",
    )
    analyze.add_argument("data", metavar="FILE", help="file or folder (local or s3://) with a row per request")
    analyze.add_argument("--outcomes", metavar="FILE", help="outcomes table to join on --join-on (file or folder)")
    analyze.add_argument("--join-on", default="request_id", help="join key of --outcomes (default request_id)")
    analyze.add_argument("--variant-column", default="variant", help="column naming the variant (default variant)")
    analyze.add_argument("--outcome-column", default="outcome", help="column holding the outcome (default outcome)")
    analyze.add_argument(
        "--metric",
        choices=METRIC_KINDS,
        default="auto",
        help="conversion (0/1: two-proportion z-test), continuous (Welch's t-test), auto (conversion when "
        "every outcome is 0 or 1), or a regression model's absolute_error / squared_error of the logged prediction "
        "against the outcome (Welch's t-test, lower is better)",
    )
    analyze.add_argument("--alpha", type=_share, default=0.05, help="significance level (default 0.05)")
    analyze.add_argument("--power", type=_share, default=0.8, help="power for the sample-size figures (default 0.8)")
    analyze.add_argument("--control", default=DEFAULT_CONTROL, help=f"control variant (default {DEFAULT_CONTROL})")
    analyze.add_argument(
        "--treatment", default=DEFAULT_TREATMENT, help=f"treatment variant (default {DEFAULT_TREATMENT})"
    )
    analyze.add_argument(
        "--mde",
        type=float,
        help="smallest difference worth detecting (absolute: a rate difference for conversions); a "
        "non-significant result on a sample too small for it is 'insufficient sample'",
    )
    analyze.add_argument("--lower-is-better", action="store_true", help="a lower outcome is better (e.g. latency)")
    analyze.add_argument("--format", choices=FORMATS, default="auto", help="file format (default: by name or content)")
    analyze.add_argument("--output", metavar="REPORT.md", help="write the Markdown report here")
    analyze.add_argument("--json", action="store_true", help="print the result as JSON")
    analyze.set_defaults(func=cmd_ab_analyze)
