"""Drift at scale: the monitor stage against Evidently's DataDriftPreset on the same data, in rounds (harness.py).

Data: a reference and a current window of ``--rows`` rows x 20 numeric features (normal, lognormal, gamma and
rounded columns), with known shifts on 6 features (mean shifts of 0.12-0.3 sd, scale x1.3, a mixture change),
written to Parquet; and a ``--stream-rows`` current window (10 million by default) written the same way, chunk
by chunk. Each measurement runs in its own process, which reports the wall time of the drift computation and
the process's peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, data included):

- ``kfops-html``: ``kfops.components.monitor.logic.monitor`` as ``kfops monitor`` runs it by default: both
  sides streamed from the Parquet files, the statistics, and kfops's own HTML report drawn from them
  (html_report.py); the child checks that the report marks exactly the features the result calls drifted;
- ``kfops``: the same with ``html=False`` (``kfops monitor --no-html``): the statistics only;
- ``kfops-evidently``: ``report="evidently"`` (``kfops monitor --report evidently``): the statistics, then
  Evidently's HTML report on a 20,000-row sample of each side (Evidently's import included, as a fresh
  ``kfops monitor`` pays it); ``--skip-evidently-report`` leaves it out;
- ``evidently``: ``Report([DataDriftPreset()]).run(current, reference)`` on the two tables read into pandas
  (reading and import not in its drift time; in its process time);
- once, after the rounds: the ``--stream-rows`` window against the same reference, the default path.

The targets run in ``--rounds`` interleaved rounds (order rotated), each process pinned to the same CPUs with the
same thread settings; ratios are Evidently's time over kfops', per round, median with min-max, for the drift time
and for the whole process (imports and reading included). Goals: the default path (with its HTML report) at
least 20x faster than Evidently with the same per-feature decisions, under 1 GB; the 10M window under 2 GB. The
section replaces the "Drift at scale" section of RESULTS.md in place (appended when there is none;
``--no-append`` to skip).

    python benchmarks/bench_drift.py [--rows 1000000] [--stream-rows 10000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import harness
except ImportError:  # python -m benchmarks.bench_drift
    from benchmarks import harness

TARGETS = ("kfops-html", "kfops", "kfops-evidently", "evidently")
SECTION = "## Drift at scale"
FEATURES = 20
# Feature -> (kind of column, shift in the current window). Unlisted features keep their distribution.
SHIFTS = {
    "f00": "mean +0.3 sd",
    "f04": "mean +0.2 sd",
    "f08": "mean +0.12 sd",
    "f01": "scale x1.3",
    "f05": "scale x1.3",
    "f10": "mixture: 20% of rows from a second mode",
}
CHUNK_ROWS = 250_000

GENERATE = r"""
import sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

path, rows, seed, shift, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
rng = np.random.default_rng(seed)
writer = None
for start in range(0, rows, chunk):
    n = min(chunk, rows - start)
    columns = {}
    for i in range(20):
        kind = i % 4
        if kind == 0:
            x = rng.normal(0.0, 1.0, n)
        elif kind == 1:
            x = rng.lognormal(1.0, 0.8, n)
        elif kind == 2:
            x = rng.gamma(2.0, 2.0, n)
        else:
            x = rng.normal(10.0, 3.0, n).round(2)
        if shift:
            if i in (0, 4):
                x = x + (0.3 if i == 0 else 0.2) * 1.0
            elif i == 8:
                x = x + 0.12 * 1.0
            elif i in (1, 5):
                x = x * 1.3
            elif i == 10:
                second = rng.random(n) < 0.2
                x = np.where(second, rng.gamma(2.0, 2.0, n) + 6.0, x)
        columns[f"f{i:02d}"] = x
    table = pa.table(columns)
    if writer is None:
        writer = pq.ParquetWriter(path, table.schema)
    writer.write_table(table, row_group_size=chunk)
writer.close()
"""

CHILD = r"""
import json, resource, sys, time
mode, reference, current, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
result = {"mode": mode}
if mode.startswith("kfops"):
    started = time.perf_counter()
    from kfops.components.monitor.logic import monitor
    result["import_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    report = "evidently" if mode == "kfops-evidently" else "kfops"
    outcome = monitor(current, out, reference, html=mode != "kfops", report=report)
    result["seconds"] = time.perf_counter() - started
    drift = outcome.result
    if "html" in outcome.paths:
        import re
        text = outcome.paths["html"].read_text(encoding="utf-8")
        result["html_bytes"] = len(text.encode())
        if report == "kfops":  # the report's own per-feature decisions, read back from the file
            marked = re.findall(r'data-feature="([^"]*)" data-drift="(yes|no)"', text)
            result["html_drifted"] = sorted(name for name, flag in marked if flag == "yes")
            result["html_features"] = len(marked)
    result["rows"] = [drift.reference_rows, drift.current_rows]
    result["features"] = {
        f.name: {"test": f.test, "score": f.score, "drift": f.drift_detected, "bounds": f.score_bounds}
        for f in drift.features
    }
else:
    import pandas as pd
    started = time.perf_counter()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    result["import_seconds"] = time.perf_counter() - started
    rows = int(sys.argv[5])
    ref = pd.read_parquet(reference).head(rows)
    cur = pd.read_parquet(current).head(rows)
    columns = list(ref.columns)
    definition = DataDefinition(numerical_columns=columns)
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )
    data = snapshot.dict()
    result["seconds"] = time.perf_counter() - started
    result["rows"] = [len(ref), len(cur)]
    methods = {m["config"]["column"]: (m["config"]["method"], m["value"]) for m in data["metrics"]
               if m["config"]["type"].endswith("ValueDrift")}
    status = {t["metric_config"]["params"]["column"]: t["status"] == "FAIL" for t in data["tests"]
              if t["metric_config"]["params"]["type"].endswith("ValueDrift")}
    result["features"] = {c: {"test": methods[c][0], "score": methods[c][1], "drift": status[c]} for c in columns}
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
"""


def _run(args: list[str], pinning: harness.Pinning, timeout: float | None = None) -> dict:
    env = {**os.environ, **harness.thread_env(pinning.threads)}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            pinning.server([sys.executable, "-c", CHILD, *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as err:
        raise SystemExit(f"{args[0]} did not finish in {timeout:.0f} s (--evidently-timeout, or fewer --rows)") from err
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_seconds"] = time.perf_counter() - started
    return result


def _generate(path: Path, rows: int, seed: int, shift: bool) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", GENERATE, str(path), str(rows), str(seed), "1" if shift else "0", str(CHUNK_ROWS)],
        check=True,
    )
    return time.perf_counter() - started


def _decisions(result: dict) -> dict[str, bool]:
    return {name: f["drift"] for name, f in result["features"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stream-rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS)
    parser.add_argument("--evidently-timeout", type=float, default=900.0)
    parser.add_argument("--workdir", help="where the Parquet files go (default: a temporary folder)")
    parser.add_argument(
        "--skip-evidently-report",
        action="store_true",
        help="leave out the kfops-evidently target (kfops monitor --report evidently)",
    )
    parser.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--note", default="", help="a sentence for the RESULTS.md section (what changed)")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    # No client here: every target gets all the CPUs and as many math threads.
    pinning = harness.Pinning("", ",".join(map(str, cpus)), len(cpus))
    before = harness.MachineLoad.sample()
    targets = [t for t in TARGETS if not (args.skip_evidently_report and t == "kfops-evidently")]
    runs: dict[str, list[dict]] = {target: [] for target in targets}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        reference, current, stream = root / "reference.parquet", root / "current.parquet", root / "stream.parquet"
        generated = _generate(reference, args.rows, 1, False)
        generated += _generate(current, args.rows, 2, True)
        print(f"generated 2 x {args.rows:,} rows in {generated:.1f} s", flush=True)
        for number, order in harness.rounds(targets, args.rounds):
            for target in order:
                if target == "evidently":
                    command = ["evidently", str(reference), str(current), "-", str(args.rows)]
                    result = _run(command, pinning, args.evidently_timeout)
                else:
                    result = _run([target, str(reference), str(current), str(root / f"out-{target}")], pinning)
                runs[target].append(result)
                print(
                    f"round {number + 1} {target:>10}: drift {result['seconds']:7.2f} s, process "
                    f"{result['process_seconds']:7.2f} s, {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
        t = time.perf_counter()
        _generate(stream, args.stream_rows, 3, True)
        print(f"generated {args.stream_rows:,} rows in {time.perf_counter() - t:.1f} s", flush=True)
        streamed = _run(["kfops-html", str(reference), str(stream), str(root / "out-stream")], pinning)
        print(f"kfops {args.stream_rows:,}: {streamed['seconds']:.1f} s, {streamed['peak_rss_mb']:.0f} MB", flush=True)
    after = harness.MachineLoad.sample()
    text = report(args, runs, streamed, pinning, before, after)
    print(text)
    if not args.no_append:
        write_section(text)


def write_section(text: str) -> None:
    """Replace the "Drift at scale" section of RESULTS.md (up to the next section) with ``text``, or append it."""
    current = harness.RESULTS.read_text(encoding="utf-8")
    found = re.search(rf"^{re.escape(SECTION)}\b.*?(?=^## |\Z)", current, flags=re.M | re.S)
    if found is None:
        with harness.RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(text if text.startswith("\n") else "\n" + text)
        return
    body = text.strip("\n") + "\n\n"
    harness.RESULTS.write_text(current[: found.start()] + body + current[found.end() :], encoding="utf-8")


LABELS = {
    "kfops-html": "kfops monitor, default (statistics + kfops's HTML report from them)",
    "kfops": "kfops monitor --no-html (statistics only)",
    "kfops-evidently": "kfops monitor --report evidently (statistics + Evidently's HTML on a 20,000-row sample per "
    "side; its import included)",
    "evidently": "Evidently 0.7.23 DataDriftPreset (tables in memory; drift time excludes import and reading)",
}


def report(args, runs: dict[str, list[dict]], streamed: dict, pinning, before, after) -> str:
    rows = args.rows
    targets = list(runs)
    theirs = _decisions(runs["evidently"][0])
    # Decisions must agree in every round, between every path.
    disagreements = sorted(
        {
            f"{target} round {i + 1}: {name}"
            for target in targets
            for i, result in enumerate(runs[target])
            for name, drift in _decisions(result).items()
            if drift != theirs[name]
        }
    )
    drifted = sorted(name for name, drift in _decisions(runs["kfops"][0]).items() if drift)
    # kfops's report must mark exactly the features its result calls drifted, and show every feature.
    report_differs = [
        f"round {i + 1}"
        for i, r in enumerate([*runs["kfops-html"], streamed])
        if r.get("html_drifted") != sorted(n for n, d in _decisions(r).items() if d)
        or r.get("html_features") != len(r["features"])
    ]
    widest = max(
        (f["bounds"][1] - f["bounds"][0]) for f in runs["kfops"][0]["features"].values() if f.get("bounds") is not None
    )
    spread = {
        target: {
            key: harness.Spread.of([r[key] for r in runs[target]])
            for key in ("seconds", "process_seconds", "peak_rss_mb")
        }
        for target in targets
    }
    html_kb = harness.Spread.of([r["html_bytes"] / 1024 for r in runs["kfops-html"]])
    lines = [
        "",
        f"{SECTION} · {time.strftime('%Y-%m-%d', time.gmtime())}",
        "",
        harness.provenance(
            None,
            before,
            after,
            f"Every process pinned to CPUs {pinning.server_cpus} (`taskset`) with {pinning.threads} math threads. "
            f"Data: {rows:,} reference and {rows:,} current rows x {FEATURES} numeric features in Parquet, known "
            f"shifts on {len(SHIFTS)}: " + "; ".join(f"{k} {v}" for k, v in SHIFTS.items()) + f". {args.rounds} "
            f"rounds, the {len(targets)} targets in each, order rotated; each its own process. Memory: the "
            "process's peak RSS (ru_maxrss), data included. Figures: median over rounds (min-max).",
        ),
        "",
        "| implementation | drift time (s) | process wall time (s) | peak memory (MB) |",
        "|---|---:|---:|---:|",
        *(
            f"| {LABELS[t]} | {spread[t]['seconds'].text(2)} | {spread[t]['process_seconds'].text(1)} | "
            f"{spread[t]['peak_rss_mb'].text(0)} |"
            for t in targets
        ),
        f"| kfops monitor, default, {args.stream_rows:,} current rows streamed (once, after the rounds) | "
        f"{streamed['seconds']:.1f} | {streamed['process_seconds']:.1f} | {streamed['peak_rss_mb']:.0f} |",
        "",
        "Speed-up, Evidently's time over kfops', per round (median, min-max); goal >= 20x on the default path:",
        "",
    ]
    for target in [t for t in targets if t != "evidently"]:
        for key, what in (("seconds", "drift time"), ("process_seconds", "process wall time")):
            ratio = harness.Spread.of(
                harness.per_round_ratios([r[key] for r in runs["evidently"]], [r[key] for r in runs[target]])
            )
            lines.append(f"- {LABELS[target].split(' (')[0]}, {what}: {ratio.text(1)}x")
    lines += [
        "",
        "Per-feature decisions "
        + ("identical to Evidently's in every round" if not disagreements else "DIFFER: " + ", ".join(disagreements))
        + f" (Wasserstein, threshold 0.1, on all {FEATURES}); drifted: {', '.join(drifted)} "
        + ("(exactly the shifted features)" if drifted == sorted(SHIFTS) else f"(shifted: {', '.join(sorted(SHIFTS))})")
        + f". Widest stated Wasserstein bound (high - low, normed): {widest:.2e}. kfops's report "
        + (
            "marks exactly the result's drifted features in every round and in the streamed run"
            if not report_differs
            else "DIFFERS from the result in " + ", ".join(report_differs)
        )
        + f"; its size {html_kb.text(0)} KB.",
    ]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
