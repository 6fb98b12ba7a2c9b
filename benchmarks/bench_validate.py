"""Validation speed: 1 million rows x 20 columns, 10 expectations, through the validate stage's own code path
(``kfops.components.validate.logic.run_suite``: Great Expectations 1.x on pandas), against the same ten checks
written in plain pandas. Goal: under 3 s and 1.5 GB peak memory.

Each side runs in a fresh process that builds the data, then validates it --repeats times; its figures are the
median validation wall time and the process's peak resident memory (data included). The two sides run in
--rounds rounds (order rotated, pinned alike: harness.py); each figure is the median over the rounds with min-max,
the ratio the median of the per-round ratios. GX's import time is reported apart: a pipeline step pays it once
per run.

    python benchmarks/bench_validate.py [--rows 1000000] [--rounds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

try:
    import harness
except ImportError:  # python -m benchmarks.bench_validate
    from benchmarks import harness

SIDES = ("gx", "pandas")

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
median = sorted(times)[len(times) // 2]
print(json.dumps({"median": median, "times": times, "peak_mb": peak_mb, "import": import_seconds, "ok": ok}))
'''


def run_side(side: str, rows: int, repeats: int, pinning: harness.Pinning) -> dict:
    out = subprocess.run(
        pinning.server([sys.executable, "-c", CHILD, str(rows), side, str(repeats), json.dumps(SUITE)]),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **harness.thread_env(pinning.threads)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=harness.MIN_ROUNDS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pinning = harness.Pinning("", ",".join(map(str, cpus)), len(cpus))  # no client: all CPUs to each side
    before = harness.MachineLoad.sample()
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for number, order in harness.rounds(SIDES, args.rounds):
        for side in order:
            result = run_side(side, args.rows, args.repeats, pinning)
            assert result["ok"], f"{side}: the generated data should pass every check"
            runs[side].append(result)
            print(f"round {number + 1} {side:>6}: {result['median']:.2f} s, {result['peak_mb']:.0f} MB", flush=True)
    after = harness.MachineLoad.sample()

    def spread(side: str, key: str) -> harness.Spread:
        return harness.Spread.of([r[key] for r in runs[side]])

    ratio = harness.Spread.of(
        harness.per_round_ratios([r["median"] for r in runs["gx"]], [r["median"] for r in runs["pandas"]])
    )
    gx_seconds, gx_peak = spread("gx", "median").median, spread("gx", "peak_mb").median
    text = (
        f"\n## Validation · {time.strftime('%Y-%m-%d', time.gmtime())}\n\n"
        + harness.provenance(
            None,
            before,
            after,
            f"Both sides pinned to CPUs {pinning.server_cpus} with {pinning.threads} math threads. {args.rows:,} rows "
            "x 20 columns (15 numeric, 5 text), 10 expectations (values between x3, not null x3, in set x2, mean "
            f"between x2); per process the median of {args.repeats} validations; {args.rounds} rounds, order "
            "rotated; median over rounds (min-max). Peak RSS of the process, data included. Goal: under 3 s and "
            "1.5 GB.",
        )
        + "\n\n| implementation | validation (s) | peak memory (MB) | import (s) |\n|---|---:|---:|---:|\n"
        f"| kfops validate (Great Expectations {gx_version()}) | {spread('gx', 'median').text(2)} | "
        f"{spread('gx', 'peak_mb').text(0)} | {spread('gx', 'import').text(1)} |\n"
        f"| plain pandas, same checks | {spread('pandas', 'median').text(2)} | "
        f"{spread('pandas', 'peak_mb').text(0)} | - |\n"
        f"\nGX takes {ratio.text(1)}x the plain-pandas time (per round); "
        f"{'meets' if gx_seconds < 3 and gx_peak < 1536 else 'misses'} the goal at the medians.\n"
    )
    print(text)
    if not args.no_write:
        harness.append_results(text)


def gx_version() -> str:
    from importlib import metadata

    return metadata.version("great-expectations")


if __name__ == "__main__":
    main()
