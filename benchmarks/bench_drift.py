"""Drift at scale: the monitor stage's streaming statistics against Evidently's DataDriftPreset on the same data.

Data: a reference and a current window of ``--rows`` rows x 20 numeric features (normal, lognormal, gamma and
rounded columns), with known shifts on 6 features (mean shifts of 0.12-0.3 sd, scale x1.3, a mixture change),
written to Parquet; and a ``--stream-rows`` current window (10 million by default) written the same way, chunk
by chunk. Each measurement runs in its own process, which reports the wall time of the drift computation and
the process's peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, data included):

- ``kfops``: ``kfops.components.monitor.logic.monitor`` (no HTML), both sides streamed from the Parquet files;
- ``kfops + HTML``: the same with Evidently's HTML report on a 20,000-row sample of each side (import included);
- ``Evidently``: ``Report([DataDriftPreset()]).run(current, reference)`` on the two tables read into pandas
  (reading and import not timed). If it does not finish within ``--evidently-timeout`` seconds it is measured on
  ``--fallback-rows`` rows instead and the 1M time extrapolated linearly, labelled so;
- ``kfops, 10M streamed``: the ``--stream-rows`` window against the same reference.

Goals: kfops at least 20x faster than Evidently with the same per-feature decisions, under 1 GB; the 10M window
under 2 GB. A dated section is appended to RESULTS.md (``--no-append`` to skip).

    python benchmarks/bench_drift.py [--rows 1000000] [--stream-rows 10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
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
if mode in ("kfops", "kfops-html"):
    started = time.perf_counter()
    from kfops.components.monitor.logic import monitor
    result["import_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome = monitor(current, out, reference, html=mode == "kfops-html")
    result["seconds"] = time.perf_counter() - started
    drift = outcome.result
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


def _run(args: list[str], timeout: float | None = None) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return None
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


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _same(ours: dict, theirs: dict) -> tuple[bool, list[str]]:
    differ = [name for name in theirs if ours[name]["drift"] != theirs[name]["drift"]]
    return not differ, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--stream-rows", type=int, default=10_000_000)
    parser.add_argument("--evidently-timeout", type=float, default=300.0)
    parser.add_argument("--fallback-rows", type=int, default=200_000)
    parser.add_argument("--workdir", help="where the Parquet files go (default: a temporary folder)")
    parser.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--note", default="", help="a sentence for the RESULTS.md section (what changed)")
    args = parser.parse_args()

    load_before = _uptime()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        reference, current, stream = root / "reference.parquet", root / "current.parquet", root / "stream.parquet"
        generated = _generate(reference, args.rows, 1, False)
        generated += _generate(current, args.rows, 2, True)
        print(f"generated 2 x {args.rows:,} rows in {generated:.1f} s", flush=True)

        ours = _run(["kfops", str(reference), str(current), str(root / "out")])
        print(f"kfops: {ours['seconds']:.2f} s, {ours['peak_rss_mb']:.0f} MB", flush=True)
        html = _run(["kfops-html", str(reference), str(current), str(root / "out-html")])
        print(f"kfops + HTML: {html['seconds']:.2f} s, {html['peak_rss_mb']:.0f} MB", flush=True)

        evidently = _run(["evidently", str(reference), str(current), "-", str(args.rows)], args.evidently_timeout)
        extrapolated = False
        small = None
        if evidently is None:
            print(f"Evidently did not finish {args.rows:,} rows in {args.evidently_timeout:.0f} s", flush=True)
            evidently = _run(["evidently", str(reference), str(current), "-", str(args.fallback_rows)])
            extrapolated = True
            # Like for like: kfops on the same first rows Evidently read.
            heads = [_head(path, args.fallback_rows, root / f"head-{path.name}") for path in (reference, current)]
            small = _run(["kfops", str(heads[0]), str(heads[1]), str(root / "out-small")])
        print(f"Evidently: {evidently['seconds']:.1f} s on {evidently['rows'][0]:,} rows", flush=True)

        t = time.perf_counter()
        _generate(stream, args.stream_rows, 3, True)
        print(f"generated {args.stream_rows:,} rows in {time.perf_counter() - t:.1f} s", flush=True)
        streamed = _run(["kfops", str(reference), str(stream), str(root / "out-stream")])
        print(f"kfops 10M: {streamed['seconds']:.1f} s, {streamed['peak_rss_mb']:.0f} MB", flush=True)
        load_after = _uptime()

    if extrapolated:  # the same decisions are checked at the size Evidently could do
        same, differ = _same(small["features"], evidently["features"])
        evidently_seconds = evidently["seconds"] * args.rows / args.fallback_rows
    else:
        same, differ = _same(ours["features"], evidently["features"])
        evidently_seconds = evidently["seconds"]
    speedup = evidently_seconds / ours["seconds"]
    drifted = sorted(name for name, f in ours["features"].items() if f["drift"])
    widest = max((f["bounds"][1] - f["bounds"][0]) for f in ours["features"].values() if f.get("bounds") is not None)
    report = {
        "rows": args.rows,
        "stream_rows": args.stream_rows,
        "kfops": ours,
        "kfops_html": html,
        "evidently": evidently,
        "evidently_extrapolated": extrapolated,
        "kfops_stream": streamed,
        "speedup": speedup,
        "same_decisions": same,
        "differ": differ,
        "drifted": drifted,
        "expected_drifted": sorted(SHIFTS),
        "widest_wasserstein_bound": widest,
        "load": [load_before, load_after],
        "note": args.note,
    }
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("kfops", "kfops_html", "evidently", "kfops_stream")})
    )
    if not args.no_append:
        _append(report)


def _head(path: Path, rows: int, target: Path) -> Path:
    """The first ``rows`` rows of a Parquet file, as another Parquet file."""
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(path).slice(0, rows), target)
    return target


def _append(report: dict) -> None:
    ours, html, ev, streamed = report["kfops"], report["kfops_html"], report["evidently"], report["kfops_stream"]
    ev_label = "Evidently 0.7.23 DataDriftPreset"
    ev_time = f"{ev['seconds']:.1f}"
    if report["evidently_extrapolated"]:
        ev_label += f" (measured on {ev['rows'][0]:,} rows; time extrapolated linearly to {report['rows']:,})"
        ev_time = f"{report['rows'] / ev['rows'][0] * ev['seconds']:.0f} (extrapolated)"
    rows = report["rows"]
    lines = [
        f"## Drift at scale · {datetime.now(UTC).date().isoformat()}",
        "",
        f"Machine: the 2-vCPU development machine ({platform.machine()}), shared with other work: `uptime` before "
        f"`{report['load'][0].split('load average:')[-1].strip()}`, after "
        f"`{report['load'][1].split('load average:')[-1].strip()}` (load averages). Python "
        f"{platform.python_version()}. Data: {rows:,} reference and {rows:,} current rows x {FEATURES} numeric "
        f"features in Parquet, known shifts on {len(SHIFTS)}: "
        + "; ".join(f"{k} {v}" for k, v in SHIFTS.items())
        + ". Each line is its own process; memory is its peak RSS (ru_maxrss), data included. "
        "Goal: >= 20x faster than Evidently with the same decisions, < 1 GB; 10M rows streamed < 2 GB.",
        "",
        "| implementation | rows (ref / current) | drift time (s) | peak memory (MB) |",
        "|---|---:|---:|---:|",
        f"| kfops monitor (streamed from Parquet, no HTML) | {rows:,} / {rows:,} | {ours['seconds']:.2f} | "
        f"{ours['peak_rss_mb']:.0f} |",
        f"| kfops monitor + Evidently HTML on a 20,000-row sample (Evidently import included) | {rows:,} / {rows:,} "
        f"| {html['seconds']:.1f} | {html['peak_rss_mb']:.0f} |",
        f"| {ev_label} (tables in memory; reading and import not timed) | {ev['rows'][0]:,} / {ev['rows'][1]:,} | "
        f"{ev_time} | {ev['peak_rss_mb']:.0f} |",
        f"| kfops monitor, current streamed from Parquet | {rows:,} / {report['stream_rows']:,} | "
        f"{streamed['seconds']:.1f} | {streamed['peak_rss_mb']:.0f} |",
        "",
        f"Speed-up {report['speedup']:.0f}x. Per-feature decisions "
        + ("identical to Evidently's" if report["same_decisions"] else f"DIFFER on {', '.join(report['differ'])}")
        + f" (Wasserstein, threshold 0.1, on all {FEATURES}); drifted: {', '.join(report['drifted'])} "
        + (
            "(exactly the shifted features)"
            if report["drifted"] == report["expected_drifted"]
            else f"(shifted: {', '.join(report['expected_drifted'])})"
        )
        + f". Widest stated Wasserstein bound (high - low, normed): {report['widest_wasserstein_bound']:.2e}.",
        "",
    ]
    if report["note"]:
        lines[1:1] = ["", report["note"]]
    with open(RESULTS, "a", encoding="utf-8") as fh:
        fh.write("\n" + "\n".join(lines))
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
