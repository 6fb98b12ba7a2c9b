"""Cold `kfops run` on the default data, and where its time goes, step by step.

Two targets, interleaved in rounds with the order rotated each round:

- ``fresh``: every task a fresh Python process, as kfp.local starts them (``KFOPS_TASK_SERVER=0``); the baseline;
- ``warm``: tasks forked from the task server's warm interpreter (``pipelines/task_server.py``), the default.

Cold means a new workspace each run: the default data is generated, the snapshot written, the sqlite MLflow store
created (copied from the migrated empty template that the first run on a machine makes and keeps in the user's
cache, ``components/sqlite_store.py``; the report says whether it was there before the first round), no KFP cache.
Each run is a new ``python -m kfops run`` process. Per step, from the run's own log (kfp.local's driver timestamps and
the KFP executor's timestamps inside the task):

- start: from kfp.local starting the task to the executor's first line (process start, kfp's executor import, and
  for ``warm`` the wait for the server: for the import in progress to end, and for the preloads the step needs);
- body: the component function: its imports and its work;
- end: from the executor writing its outputs to kfp.local seeing the task finished (interpreter teardown, atexit).

``--imports`` adds one run per target under ``PYTHONPROFILEIMPORTTIME=1`` and lists, per step, the packages whose
import took longest inside the task (for ``warm``: what the server had not preloaded yet).

    python benchmarks/bench_local_run.py [--rounds 5] [--imports] [--no-write]

Figures go to benchmarks/RESULTS.md with the machine, the date, the load and this command. The goal (issue 20):
under 15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
GOAL_SECONDS = 15.0
TARGETS = {"fresh": {"KFOPS_TASK_SERVER": "0"}, "warm": {"KFOPS_TASK_SERVER": "1"}}
BASELINE = "fresh"

_DRIVER = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) - INFO - (.*)$")
_EXECUTOR = re.compile(r"\[KFP Executor (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO\]: (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_IMPORT = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)")


def _driver_time(clock: str, launched: datetime) -> datetime:
    """kfp.local's log stamps the time of day only: place it on the day the run was launched."""
    hour, minute, rest = clock.split(":")
    stamp = launched.replace(hour=int(hour), minute=int(minute), second=0, microsecond=0) + timedelta(
        seconds=float(rest)
    )
    return stamp + timedelta(days=1) if stamp < launched - timedelta(hours=1) else stamp


def parse_log(text: str, launched: datetime, exited: datetime) -> dict:
    """Per-step start/body/end seconds, the driver's time before the first step and after the last, and per-step
    import seconds by top-level package (present when the run profiled imports)."""
    steps: dict[str, dict[str, float]] = {}
    imports: dict[str, dict[str, float]] = {}
    marks: dict[str, datetime] = {}
    task = None
    pipeline_started = pipeline_finished = None
    for raw in text.splitlines():
        line = _ANSI.sub("", raw)
        if m := _DRIVER.match(line):
            when, message = _driver_time(m.group(1), launched), m.group(2)
            if message.startswith("Running pipeline"):
                pipeline_started = when
            elif m2 := re.match(r"Executing task '([\w-]+)'", message):
                task = m2.group(1)
                marks = {"executing": when}
                imports[task] = {}
            elif m2 := re.match(r"Task '([\w-]+)' finished with status (\w+)", message):
                if {"executing", "looking", "input", "wrote"} <= marks.keys():
                    steps[m2.group(1)] = {
                        "start": (marks["looking"] - marks["executing"]).total_seconds(),
                        "body": (marks["wrote"] - marks["input"]).total_seconds(),
                        "end": (when - marks["wrote"]).total_seconds(),
                        "total": (when - marks["executing"]).total_seconds(),
                    }
            elif message.startswith("Pipeline") and "finished" in message:
                pipeline_finished = when
        elif m := _EXECUTOR.search(line):
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=launched.tzinfo)
            message = m.group(2)
            if message.startswith("Looking for component"):
                marks["looking"] = when
            elif message.startswith("Got executor_input"):
                marks["input"] = when
            elif message.startswith("Wrote executor output"):
                marks["wrote"] = when
        elif (m := _IMPORT.search(line)) and task is not None and len(m.group(2)) == 2:
            package = m.group(3).split(".")[0]
            imports[task][package] = imports[task].get(package, 0.0) + int(m.group(1)) / 1e6
    if pipeline_started is None or pipeline_finished is None:
        raise RuntimeError("the run's log has no pipeline start or end")
    return {
        "steps": steps,
        "before_first_step": (pipeline_started - launched).total_seconds(),
        "after_last_step": (exited - pipeline_finished).total_seconds(),
        "imports": imports,
    }


def cold_run(target: str, profile_imports: bool = False) -> dict:
    """One `kfops run` in a new workspace; its wall time, its log's breakdown and its test metrics."""
    with tempfile.TemporaryDirectory(prefix="kfops-bench-run-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KFOPS_", "PYTHONPROFILE"))}
        env.update(TARGETS[target])
        if profile_imports:
            env["PYTHONPROFILEIMPORTTIME"] = "1"
        launched = datetime.now().astimezone()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "kfops", "run", "--workspace", tmp, "--json"],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the run's whole process tree (the driver, the task server, its light server and every task: each reaped
        # by its parent): what it asks of the 2 cores, whatever else runs beside it
        cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
        exited = launched + timedelta(seconds=seconds)
        if proc.returncode != 0:
            sys.exit(
                f"kfops run ({target}) failed with {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        summary = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1 :])
        log = Path(summary["log"]).read_text(encoding="utf-8", errors="replace")
        preloads, waits = {}, []
        for server_log in Path(summary["log"]).parent.glob("task-server-*.log"):
            text = server_log.read_text()
            for m in re.finditer(r"^(\S+) task server: preloaded (\S+) in", text, re.MULTILINE):
                preloads[m.group(2)] = (_driver_time(m.group(1), launched) - launched).total_seconds()
            waits += re.findall(r"^\S+ task server: (\S+ waits for \S+)", text, re.MULTILINE)
        parsed = parse_log(log, launched, exited)
        return {
            "target": target,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "metrics": summary["metrics"],
            "preloads": preloads,
            "waits": waits,
            **parsed,
        }


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def report(
    runs: list[dict], rounds: int, profiles: list[dict], command: str, load: tuple, template_cached: bool = True
) -> str:
    by_target = {t: [r for r in runs if r["target"] == t] for t in TARGETS}
    ratios = [by_target[BASELINE][i]["seconds"] / by_target["warm"][i]["seconds"] for i in range(rounds)]
    lines = [
        f"\n## Local pipeline: cold `kfops run`, per step · {datetime.now(UTC).date()}\n",
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, {platform.processor() or 'unknown CPU'}), "
        f"Python {platform.python_version()}; load average {load[0][0]:.2f} before, {load[1][0]:.2f} after "
        "(the machine is shared).",
        f"Command: `{command}`. {rounds} rounds, targets interleaved, order rotated each round; median (min-max).",
        "Default data (100,000 rows), a new workspace each run (data generated, sqlite MLflow store created from "
        "the cached template, which was "
        f"{'already' if template_cached else 'not yet: the first run made it'} in the user's cache; no KFP "
        "cache). `fresh`: every task a new Python process, as kfp.local starts them (`KFOPS_TASK_SERVER=0`); "
        "`warm`: tasks forked from the task server's warm interpreter (the default). "
        f"Goal: under {GOAL_SECONDS:.0f} s.\n",
        "| target | wall (s) | CPU, user + system, all processes (s) | driver before the first step (s) | driver "
        "after the last step (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for target, items in by_target.items():
        lines.append(
            f"| {target} | {_spread([r['seconds'] for r in items])} | {_spread([r['cpu_seconds'] for r in items])} | "
            f"{_spread([r['before_first_step'] for r in items])} | {_spread([r['after_last_step'] for r in items])} |"
        )
    lines.append(f"\n`fresh` / `warm` wall time, per round: median {_spread(ratios)}.\n")
    steps = list(by_target[BASELINE][0]["steps"])
    lines += [
        "Per step, median seconds (start: process start to the executor's first line; body: the component's imports"
        " and work; end: teardown until kfp.local sees it finished):\n",
        "| step | " + " | ".join(f"{t} start | {t} body | {t} end" for t in TARGETS) + " |",
        "|---|" + "---:|" * (3 * len(TARGETS)),
    ]
    for step in steps:
        cells = []
        for items in by_target.values():
            for part in ("start", "body", "end"):
                cells.append(f"{statistics.median(r['steps'][step][part] for r in items):.2f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    last_warm = by_target["warm"][-1]
    if last_warm["preloads"]:
        lines.append(
            "\nThe task server's preloads, seconds after `kfops run` started (last `warm` run): "
            + ", ".join(f"{name} {at:.1f}" for name, at in last_warm["preloads"].items())
            + f"; its first step started at {last_warm['before_first_step']:.1f}. Tasks and calls that came before "
            + f"the preloads they need and waited for them: {'; '.join(last_warm['waits']) or 'none'}."
        )
    metrics = {t: items[0]["metrics"] for t, items in by_target.items()}
    same = all(m == metrics[BASELINE] for m in metrics.values())
    f1 = metrics[BASELINE].get("f1_macro")
    lines.append(
        f"\nTest metrics {'identical in every target' if same else 'DIFFER between targets'} "
        f"(f1_macro {f1:.4f}, same seed)."
    )
    for profile in profiles:
        lines.append(
            f"\nImports inside each step under `PYTHONPROFILEIMPORTTIME=1` ({profile['target']}; profiling inflates "
            "them), the packages over 0.1 s:\n"
        )
        for step, packages in profile["imports"].items():
            top = sorted(((s, p) for p, s in packages.items() if s >= 0.1), reverse=True)
            total = sum(packages.values())
            lines.append(f"- {step}: {total:.2f} s" + (": " + ", ".join(f"{p} {s:.2f}" for s, p in top) if top else ""))
    warm = statistics.median(r["seconds"] for r in by_target["warm"])
    lines.append(f"\nMedian {warm:.1f} s: {'meets' if warm < GOAL_SECONDS else 'misses'} the goal.\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--imports", action="store_true", help="one more run per target, profiling imports")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    command = "python benchmarks/bench_local_run.py " + " ".join(sys.argv[1:])
    from kfops.components.sqlite_store import template_path

    template_cached = template_path().is_file()
    load_before = os.getloadavg()
    names = list(TARGETS)
    runs = []
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for target in order:
            run = cold_run(target)
            runs.append(run)
            print(f"round {round_index + 1} {target}: {run['seconds']:.1f} s", flush=True)
    profiles = [cold_run(target, profile_imports=True) for target in names] if args.imports else []
    text = report(runs, args.rounds, profiles, command.strip(), (load_before, os.getloadavg()), template_cached)
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
