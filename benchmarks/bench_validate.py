"""Validation speed: 1 million rows x 20 columns, 10 expectations, through the validate stage's own code path
(``kfops.components.validate.logic.run_suite``: Great Expectations 1.x on pandas), against the same ten checks
written in plain pandas. Goal: under 3 s and 1.5 GB peak memory.

Each side runs in a fresh process that builds the data, then validates it; the figures are the validation's
wall time (best of --repeats) and the process's peak resident memory (data included). GX's import time is
reported apart: a pipeline step pays it once per run.

    python benchmarks/bench_validate.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

SUITE = {
    "name": "bench",
    "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "n0", "min_value": -6, "max_value": 6}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "n1", "min_value": -6, "max_value": 6, "mostly": 0.99},
        },
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "n2", "min_value": -6, "max_value": 6}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "n3", "mostly": 0.95}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "n4", "mostly": 0.95}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "c0"}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "c0", "value_set": ["a", "b", "c", "d"]}},
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "c1", "value_set": ["a", "b", "c", "d"], "mostly": 0.99},
        },
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "n5", "min_value": -0.1, "max_value": 0.1}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "n6", "min_value": -0.1, "max_value": 0.1}},
    ],
}

CHILD = r'''
import json, resource, sys, time
import numpy as np, pandas as pd
rows, side, repeats = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
suite = json.loads(sys.argv[4])
rng = np.random.default_rng(0)
data = {f"n{i}": rng.standard_normal(rows) for i in range(15)}
data["n3"][rng.random(rows) < 0.02] = np.nan
data["n4"][rng.random(rows) < 0.02] = np.nan
letters = np.array(["a", "b", "c", "d"], dtype=object)
for i in range(5):
    data[f"c{i}"] = letters[rng.integers(0, 4, rows)]
frame = pd.DataFrame(data)

def plain(frame):
    """The same ten checks in plain pandas: fraction of rows passing against mostly, or the mean's range."""
    results = []
    for e in suite["expectations"]:
        kw, col = e["kwargs"], frame[e["kwargs"]["column"]]
        mostly = kw.get("mostly", 1.0)
        if e["type"] == "expect_column_values_to_be_between":
            present = col.dropna()
            ok = present.between(kw["min_value"], kw["max_value"]).mean() >= mostly
        elif e["type"] == "expect_column_values_to_not_be_null":
            ok = col.notna().mean() >= mostly
        elif e["type"] == "expect_column_values_to_be_in_set":
            present = col.dropna()
            ok = present.isin(kw["value_set"]).mean() >= mostly
        else:
            ok = kw["min_value"] <= col.mean() <= kw["max_value"]
        results.append(bool(ok))
    return all(results), results

import_seconds = 0.0
if side == "gx":
    started = time.perf_counter()
    from kfops.components.validate.logic import _gx, run_suite
    _gx()
    import_seconds = time.perf_counter() - started
times = []
for _ in range(repeats):
    started = time.perf_counter()
    if side == "gx":
        summary, _ = run_suite(frame, suite, source="bench")
        ok = summary.success
    else:
        ok, _ = plain(frame)
    times.append(time.perf_counter() - started)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"best": min(times), "times": times, "peak_mb": peak_mb, "import": import_seconds, "ok": ok}))
'''


def run_side(side: str, rows: int, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(rows), side, str(repeats), json.dumps(SUITE)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    gx = run_side("gx", args.rows, args.repeats)
    plain = run_side("pandas", args.rows, args.repeats)
    assert gx["ok"] and plain["ok"], "the generated data should pass every check"
    header = (
        f"\n## Validation · {datetime.now(UTC).date()}\n\n"
        f"Machine: the 2-vCPU development machine ({platform.machine()}), Python "
        f"{platform.python_version()}. {args.rows:,} rows x 20 columns (15 numeric, 5 text), 10 "
        "expectations (values between x3, not null x3, in set x2, mean between x2); best of "
        f"{args.repeats}, peak RSS of the process including the data. Goal: under 3 s and 1.5 GB.\n\n"
        "| implementation | validation (s) | peak memory (MB) | import (s) |\n|---|---:|---:|---:|\n"
    )
    table = (
        f"| kfops validate (Great Expectations {gx_version()}) | {gx['best']:.2f} | {gx['peak_mb']:.0f} | "
        f"{gx['import']:.1f} |\n"
        f"| plain pandas, same checks | {plain['best']:.2f} | {plain['peak_mb']:.0f} | - |\n"
    )
    verdict = (
        f"\nGX takes {gx['best'] / plain['best']:.1f}x the plain-pandas time; "
        f"{'meets' if gx['best'] < 3 and gx['peak_mb'] < 1536 else 'misses'} the goal.\n"
    )
    print(header + table + verdict)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(header + table + verdict)


def gx_version() -> str:
    from importlib import metadata

    return metadata.version("great-expectations")


if __name__ == "__main__":
    main()
