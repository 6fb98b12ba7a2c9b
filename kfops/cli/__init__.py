"""The ``kfops`` command line: one module per command group, each with ``add_commands(sub)``; ``console`` holds
what they share. Nothing outside this package imports it.

Start-up stays light: each command imports what it needs (kfp, mlflow, torch) only when it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kfops import __version__
from kfops.cli.console import EXIT_USER_ERROR

# the command groups, in the order `kfops --help` lists them
COMMAND_GROUPS = (
    "run",
    "compile",
    "data",
    "registry",
    "monitor",
    "predict",
    "retrain",
    "ab",
    "deploy",
    "features",
    "serve",
    "sweep",
    "platform",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="kfops", description="Kubeflow Pipelines MLOps suite.")
    parser.add_argument("--version", action="version", version=f"kfops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        if group == "serve":  # served by the serving package, which the serving image runs on its own
            from kfops.serving.cli import add_serve_command

            add_serve_command(sub)
        else:
            importlib.import_module(f"kfops.cli.{group}").add_commands(sub)
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
