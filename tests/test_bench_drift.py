"""bench_drift writes its section of RESULTS.md in place: the "Drift at scale" section is replaced (the sections
around it untouched), or appended when there is none. The benchmark itself runs for minutes (`make bench-drift`)."""

from __future__ import annotations

from benchmarks import bench_drift

BEFORE = "# Benchmark results\n\nIntro.\n\n## Router · 2026-12-06\n\nrouter figures\n\n"
AFTER = "## Batch prediction · 2026-12-05\n\nbatch figures\n"


def test_the_drift_section_is_replaced_in_place_and_appended_when_missing(tmp_path, monkeypatch):
    real = bench_drift.harness.RESULTS
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench_drift.harness, "RESULTS", results)
    new = "\n## Drift at scale · 2026-12-07\n\nnew drift figures\n"

    results.write_text(BEFORE + "## Drift at scale · 2026-12-05\n\nold drift figures\n| a | b |\n\n" + AFTER)
    bench_drift.write_section(new)
    assert results.read_text() == BEFORE + "## Drift at scale · 2026-12-07\n\nnew drift figures\n\n" + AFTER

    results.write_text(BEFORE + "## Drift at scale · 2026-12-05\n\nold, the last section\n")
    bench_drift.write_section(new)
    assert results.read_text() == BEFORE + "## Drift at scale · 2026-12-07\n\nnew drift figures\n\n"

    results.write_text(BEFORE + AFTER)
    bench_drift.write_section(new)
    assert results.read_text() == BEFORE + AFTER + new
    assert "new drift figures" not in real.read_text(encoding="utf-8")  # the real file is left alone
