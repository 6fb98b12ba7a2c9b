"""The benchmarks on the harness beside serving, router, drift, batch prediction and validation (bench_training,
bench_tasks, bench_families, bench_sweep, bench_features): each run for real, as `make bench` runs it, at tiny
sizes and 1-2 rounds, writing its section to a scratch results file instead of benchmarks/RESULTS.md. The tests
check the section's shape: the exact command, the machine's load before and after, every figure a median with
its min-max, every ratio a median of per-round ratios, and one measurement per target per round. Each takes
15-60 s on 2 shared cores (imports, training, servers): slow-marked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
# "1,234 (1,100-1,300)": a median with its min-max, as harness.Spread.text writes it
SPREAD = r"-?[\d,]+(?:\.\d+)? \(-?[\d,]+(?:\.\d+)?--?[\d,]+(?:\.\d+)?\)"
RATIO = r"[\d,]+\.\d+x \([\d,]+\.\d+-[\d,]+\.\d+\)"


def run_bench(script: str, *args: str, results: Path, timeout: float = 300) -> tuple[str, str]:
    """(the section it appended to ``results``, its stdout); RESULTS.md itself must be left alone."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args, "--results", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"--results {results}" not in RESULTS.read_text()  # others may append to it meanwhile: not ours
    return results.read_text(), done.stdout


def assert_provenance(section: str, script: str, *args: str) -> None:
    assert f"`python benchmarks/{script} {' '.join(args)} --results " in section
    assert re.search(r"Machine before: load average [\d.]+ / [\d.]+ / [\d.]+, CPUs \d+% busy", section)
    assert "; after: load average" in section


def table_rows(section: str, first_cell: str) -> list[list[str]]:
    """The cells of the Markdown table rows whose first cell is ``first_cell``."""
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows if row[0].strip() == first_cell]


@pytest.mark.slow
def test_bench_training_interleaves_both_loops_and_reports_medians_of_per_round_ratios(tmp_path):
    args = ("--rows", "2000", "--batch-sizes", "64,256", "--rounds", "2", "--seconds", "0.1")
    section, out = run_bench("bench_training.py", *args, results=tmp_path / "R.md")
    assert section.startswith("\n## Training throughput · cpu · ")
    assert_provenance(section, "bench_training.py", *args)
    assert "torch/OpenMP thread(s) for both targets" in section and "2 rounds, the order rotated" in section
    for batch in ("64", "256"):
        (row,) = table_rows(section, batch)
        assert re.fullmatch(SPREAD, row[1]) and re.fullmatch(SPREAD, row[2]), row
        assert re.fullmatch(RATIO, row[3]), row
        for number in (1, 2):
            for target in ("reference", "kfops"):
                assert len(re.findall(rf"round {number} batch +{batch} +{target}: ", out)) == 1
    # the order rotates: round 1 starts with the reference loop, round 2 with the suite's
    assert re.search(r"round 1 batch +64 reference:[^\n]*\nround 1 batch +64 +kfops:", out)
    assert re.search(r"round 2 batch +64 +kfops:[^\n]*\nround 2 batch +64 reference:", out)


@pytest.mark.slow
def test_bench_tasks_reports_each_task_with_fit_time_ranges(tmp_path):
    args = ("--rows", "3000", "--rounds", "2", "--tasks", "binary,regression")
    section, out = run_bench("bench_tasks.py", *args, results=tmp_path / "R.md")
    assert "## Every task against scikit-learn · " in section and "(3,000 rows)" in section
    assert_provenance(section, "bench_tasks.py", *args)
    for task, metric in (("binary", "balanced_accuracy"), ("regression", "r2")):
        (row,) = table_rows(section, task)
        assert row[1] == metric
        assert re.fullmatch(r"-?[\d.]+ \(-?[\d.]+--?[\d.]+\)", row[2]), row  # the suite's metric over the rounds
        assert re.fullmatch(r"[+-]\d+\.\d\d%", row[4]), row
        assert re.fullmatch(SPREAD, row[6]) and re.fullmatch(SPREAD, row[7]) and re.fullmatch(RATIO, row[8]), row
        assert len(re.findall(rf"^{task} round \d +(kfops|sklearn): fit ", out, re.MULTILINE)) == 4
    assert not table_rows(section, "multiclass")
    assert "`kfops run` wall" not in section  # --pipeline-rounds not given


def test_bench_tasks_refuses_an_unknown_task():
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_tasks.py", "--tasks", "binary,ranking", "--no-write"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--tasks: unknown task(s) ranking; choose from binary, multiclass, regression" in done.stderr


@pytest.mark.slow
def test_bench_families_reports_every_family_against_the_baselines(tmp_path):
    args = ("--rows", "3000", "--rounds", "2", "--requests", "40", "--tasks", "binary")
    section, out = run_bench("bench_families.py", *args, results=tmp_path / "R.md")
    assert "## Model families · " in section and "(3,000 rows)" in section
    assert_provenance(section, "bench_families.py", *args)
    rows = {row[1]: row for row in table_rows(section, "binary")}
    assert sorted(rows) == ["gbdt", "hgb-default", "linear", "mlp"]
    for target, row in rows.items():
        assert re.fullmatch(r"[\d.]+ \([\d.]+-[\d.]+\)", row[2]), row
        assert re.fullmatch(r"[+-]\d+\.\d\d%", row[3]), row
        assert re.fullmatch(SPREAD, row[4]) and re.fullmatch(RATIO, row[5]), row
        assert re.fullmatch(SPREAD, row[6]) and re.fullmatch(SPREAD, row[7]), row
        assert len(re.findall(rf"^binary round \d +{target}: ", out, re.MULTILINE)) == 2
    assert rows["hgb-default"][5] == "1.00x (1.00-1.00)"


@pytest.mark.slow
def test_bench_sweep_interleaves_sweeps_and_ddp(tmp_path):
    args = ("--rows", "3000", "--rounds", "1", "--trials", "2", "--epochs", "1", "--ddp-epochs", "1")
    section, out = run_bench("bench_sweep.py", *args, results=tmp_path / "R.md", timeout=600)
    assert "## Sweeps and data-parallel training · " in section
    assert_provenance(section, "bench_sweep.py", *args)
    for at_once in ("1", "2"):
        sweeps, ddp = section.split("Data-parallel")
        (row,) = table_rows(sweeps, at_once)
        (ddp_row,) = table_rows(ddp, at_once)
        assert all(re.fullmatch(SPREAD, cell) for cell in row[1:]), row
        assert all(re.fullmatch(SPREAD, cell) for cell in ddp_row[1:]), ddp_row
    assert re.search(rf"2 at once against 1, per round: sweep wall {RATIO}, overhead per trial {RATIO}", section)
    assert re.search(rf"2 ranks against 1 process, samples/s per round: {RATIO}", section)
    assert sorted(re.findall(r"round 1 +(\S+):", out)) == ["ddp-1", "ddp-2", "sweep-1", "sweep-2"]


@pytest.mark.slow
def test_bench_features_measures_lookups_predictors_and_the_join(tmp_path):
    args = ("--rounds", "1", "--seconds", "1", "--pit-rows", "3000", "--pit-rounds", "1", "--clients", "python")
    section, out = run_bench("bench_features.py", *args, results=tmp_path / "R.md", timeout=600)
    assert "## Feature store · " in section and "round 1 lookups: " in out
    assert_provenance(section, "bench_features.py", *args)
    assert "every target on CPU" in section  # the predictors pinned alike, the client apart
    lookups = [row for row in table_rows(section, "direct get_online_features, 1 entity")]
    assert len(lookups) == 1 and re.fullmatch(SPREAD, lookups[0][2]), lookups
    predictors = {row[1]: row for row in table_rows(section, "python")}
    assert sorted(predictors) == ["lookup, cache off", "lookup, cache on", "no lookup"]
    for row in predictors.values():
        assert re.fullmatch(SPREAD, row[3]) and row[6] == "0", row  # req/s over the rounds, no errors
    assert re.search(rf"- python, lookup, cache off / no lookup, per round: req/s {RATIO}, p99 {RATIO}", section)
    assert re.search(r"\*\*Point-in-time join\*\*: 3,000 entity rows .* 1 rounds: " + SPREAD + " s", section)


def test_in_process_targets_get_the_cpus_and_threads_asked_for(tmp_path):
    """``--threads N`` in the in-process benchmarks: the first N CPUs and N threads for every library, set in a
    child process (pinning changes the process's own affinity)."""
    from benchmarks import harness

    cpus = sorted(os.sched_getaffinity(0))
    assert harness.Pinning.whole_machine() == harness.Pinning("", ",".join(map(str, cpus)), len(cpus))
    assert harness.Pinning.whole_machine(1) == harness.Pinning("", str(cpus[0]), 1)
    with pytest.raises(SystemExit, match=rf"--threads {len(cpus) + 1}: this process may use {len(cpus)} CPU"):
        harness.Pinning.whole_machine(len(cpus) + 1)
    probe = (
        "import json, os, numpy, torch\n"
        "from threadpoolctl import threadpool_info\n"
        "from benchmarks import harness\n"
        "harness.pin_in_process(harness.Pinning.whole_machine(1))\n"
        "print(json.dumps({'cpus': sorted(os.sched_getaffinity(0)), 'torch': torch.get_num_threads(),\n"
        "    'omp': os.environ['OMP_NUM_THREADS'], 'pools': sorted({p['num_threads'] for p in threadpool_info()})}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"cpus": [cpus[0]], "torch": 1, "omp": "1", "pools": [1]}
