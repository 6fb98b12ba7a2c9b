"""What every command shares: exit codes, list-valued flags, the rich console, and the progress view of a
kfp.local run (one line per pipeline step)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in csv_list(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def json_object(text: str) -> dict:
    """A flag's JSON object (``'{"max_leaf_nodes": 63}'``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{...}}), got {text!r}")
    return value


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
        elif self.errors and not self.failed_task and re.match(CONTINUED_ERROR, line):
            # The lines a multi-line error goes on with (validation lists every failed expectation).
            self.errors[-1] += "\n    " + line.strip()
        elif show and (re.search(r"\bepoch \d+: train_loss", line) or "MLflow run" in line):
            self.console.print(f"    [dim]{line.split('INFO]:')[-1].strip()}[/]")

    def close(self) -> None:
        if self.buffer:
            self._line(ANSI.sub("", self.buffer))
        self.log.close()


# The lines a multi-line error goes on with (validation lists every failed expectation, then how to go on).
CONTINUED_ERROR = re.compile(r"\s*(?:- |\S.*: \d+ of \d+ expectations|How to go on: )")


def make_console(file=None):
    from rich.console import Console

    # Bind to the stream as it is now: `kfops run` swaps sys.stdout for its progress reader. Piped output
    # (logs, CI) gets a wide page instead of rich's 80 columns, so tables are not squeezed to slivers.
    stream = file or sys.stdout
    width = None if getattr(stream, "isatty", lambda: False)() else 200
    return Console(highlight=False, soft_wrap=True, file=stream, width=width)


def tracking_uri(args) -> str:
    """The MLflow store a command talks to: ``--tracking-uri``, else MLFLOW_TRACKING_URI, else the workspace's."""
    if args.tracking_uri:
        return args.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from kfops.components.workspace import workspace

    return workspace(args.workspace).tracking_uri()
