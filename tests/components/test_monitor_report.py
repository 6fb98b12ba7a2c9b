"""kfops's own drift report (components/monitor/html_report.py): on real data (scikit-learn's breast cancer set and
a shifted copy, as CSV) it names exactly the features the result names, escapes hostile column names, loads
nothing from outside, counts every value once, and is the same file given the same inputs; on a large streamed
reference its quantiles and histograms agree with numpy's on the raw values."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kfops.components.monitor.columns import DriftOptions
from kfops.components.monitor.html_report import feature_views
from kfops.components.monitor.logic import monitor
from kfops.components.monitor.profiles import WindowAccumulator, profile_reference
from kfops.components.monitor.sources import frame_chunks

HOSTILE = "<script>alert('x')</script>"
SHIFTED = {"mean_radius", "worst_texture", "mean_area", "clinic", HOSTILE}


class ReportParser(HTMLParser):
    """Per feature section: its name, decision and the histogram's counts; every tag and attribute seen."""

    def __init__(self) -> None:
        super().__init__()
        self.features: dict[str, dict] = {}
        self.tags: list[tuple[str, dict]] = []
        self._current = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section" and "data-feature" in attrs:
            self._current = attrs["data-feature"]
            self.features[self._current] = {"drift": attrs["data-drift"] == "yes"}
        if tag == "g" and attrs.get("class") in ("ref", "cur"):
            counts = [int(c) for c in attrs["data-counts"].split(",")]
            self.features[self._current][attrs["class"]] = counts


def breast_cancer(tmp_path: Path) -> tuple[Path, Path]:
    """The breast cancer table with a categorical column, blanks and a hostile column name, and a copy with five
    features shifted (three numeric, the category mix, the hostile one), written to CSV."""
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_"))
    rng = np.random.default_rng(3)
    df["clinic"] = rng.choice(["north", "south", "east"], len(df), p=[0.6, 0.3, 0.1])
    df[HOSTILE] = rng.normal(0, 1, len(df))
    df.loc[rng.random(len(df)) < 0.1, "mean_smoothness"] = np.nan
    current = df.copy()
    current["mean_radius"] *= 1.3
    current["worst_texture"] += 5
    current["mean_area"] *= 0.7
    current["clinic"] = rng.choice(["north", "south", "east", "west"], len(df), p=[0.2, 0.2, 0.2, 0.4])
    current[HOSTILE] += 2
    current.loc[rng.random(len(df)) < 0.3, "mean_smoothness"] = np.nan
    ref_file, cur_file = tmp_path / "reference.csv", tmp_path / "current.csv"
    df.to_csv(ref_file, index=False)
    current.to_csv(cur_file, index=False)
    return ref_file, cur_file


def test_the_report_names_the_results_drifted_features_escaped_self_contained_and_counting_every_row(tmp_path):
    ref_file, cur_file = breast_cancer(tmp_path)
    out = monitor(str(cur_file), tmp_path / "a", str(ref_file), target="target")
    result = out.result
    assert set(result.drifted) == SHIFTED
    text = out.paths["html"].read_text(encoding="utf-8")
    parser = ReportParser()
    parser.feed(text)

    # The same features, the same decisions, as drift.json.
    saved = json.loads(out.paths["json"].read_text())
    assert {f["name"]: f["drift_detected"] for f in saved["features"]} == {
        name: f["drift"] for name, f in parser.features.items()
    }
    # Escaped: the hostile name is shown as text, never as a tag; nothing runs, nothing is fetched.
    assert HOSTILE not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert not [tag for tag, _ in parser.tags if tag in ("script", "link", "img", "iframe", "object")]
    fetched = [
        (tag, value)
        for tag, attrs in parser.tags
        for key, value in attrs.items()
        if key in ("src", "href") and value and not value.startswith("#")
    ]
    assert fetched == []
    assert "http://" not in text and "https://" not in text

    # Every non-empty value in exactly one bar of its side; the blanks in the missing share.
    for f in saved["features"]:
        bars = parser.features[f["name"]]
        assert sum(bars["ref"]) == f["reference_rows"] and sum(bars["cur"]) == f["current_rows"], f["name"]
        assert len(bars["ref"]) == len(bars["cur"]) > 1
    smooth = next(f for f in saved["features"] if f["name"] == "mean_smoothness")
    assert smooth["current_rows"] + smooth["current_missing"] == result.current_rows
    assert f"{smooth['current_missing'] / result.current_rows:.2%}" in text
    clinic = parser.features["clinic"]
    assert len(clinic["ref"]) == 4 and clinic["ref"].count(0) == 1 and 0 not in clinic["cur"]  # 'west' is new
    assert "The HTML report (`drift.html`) draws both sides" in out.paths["markdown"].read_text()

    # Deterministic: the same inputs give the same file, but for the timestamp.
    again = monitor(str(cur_file), tmp_path / "b", str(ref_file), target="target")
    second = again.paths["html"].read_text(encoding="utf-8")
    assert second.replace(again.result.created_at, "T") == text.replace(result.created_at, "T")


def test_quantiles_and_bars_of_a_large_streamed_reference_agree_with_numpy_on_the_raw_values():
    """Past 4,096 distinct values the histogram sits on ~4,000 sampled reference quantiles: the report's quantiles
    lie within one of those intervals of numpy's, and window values beyond the reference's range get their own
    bars."""
    rng = np.random.default_rng(11)
    reference = pd.DataFrame({"x": rng.lognormal(1.0, 0.7, 60_000), "y": rng.normal(0, 1, 60_000)})
    current = pd.DataFrame({"x": rng.lognormal(1.3, 0.7, 40_000), "y": rng.normal(0, 1, 40_000)})
    options = DriftOptions()
    profile = profile_reference(lambda: frame_chunks(reference, 16_384), options)
    window = WindowAccumulator(profile, options)
    for chunk in frame_chunks(current, 16_384):
        window.add(chunk)
    result = window.result()
    views = {v.drift.name: v for v in feature_views(result, profile, window)}
    assert result.drifted == ["x"]
    x = views["x"]
    for side, values in ((x.reference, reference["x"]), (x.current, current["x"])):
        for q in (5, 25, 50, 75, 95):
            exact = float(np.quantile(values, q / 100))
            # one interval of ~4,000 reference quantiles holds ~1/4000 of the mass: well within 0.1% in rank
            rank = float(np.mean(values <= side.stats[f"p{q}"]))
            assert rank == pytest.approx(q / 100, abs=1e-3), (q, exact, side.stats[f"p{q}"])
        assert side.stats["mean"] == pytest.approx(float(values.mean()))
    hist = x.histogram
    assert sum(hist.reference) == 60_000 and sum(hist.current) == 40_000
    # A long tail: the bars cover the reference's 0.5%-99.5% quantiles, both sides' tails in the end bars.
    assert hist.above and hist.labels[-1].startswith("above the reference's 99.5% quantile")
    cut = hist.edges[-2]
    assert cut == pytest.approx(np.quantile(reference["x"], 0.995), rel=0.01)
    assert hist.current[-1] == int((current["x"] > cut).sum()) and hist.reference[-1] == int(
        (reference["x"] > cut).sum()
    )
    assert hist.reference[-1] == pytest.approx(300, abs=30)
    y = views["y"].histogram  # no long tail: the bars span the reference's range, min to max
    assert (
        y.edges[int(y.below)] == reference["y"].min()
        and y.edges[len(y.edges) - 1 - int(y.above)] == reference["y"].max()
    )
    assert not y.below or y.reference[0] == 0  # only the window's values lie beyond the reference's range
    # An inner bar counts exactly the values in its [left, right) extent.
    left, right = hist.edges[5], hist.edges[6]
    assert hist.current[5] == int(((current["x"] >= left) & (current["x"] < right)).sum())
    assert len(hist.labels) <= 42


def test_the_cli_writes_kfops_report_by_default(tmp_path, capsys):
    from kfops.cli import main

    ref_file, cur_file = breast_cancer(tmp_path)
    args = ["monitor", "--reference", str(ref_file), "--current", str(cur_file), "--target", "target", "--json"]
    assert main([*args, "--output", str(tmp_path / "kfops")]) == 0
    drifted = set(json.loads(capsys.readouterr().out)["drifted"])
    own = (tmp_path / "kfops" / "drift.html").read_text(encoding="utf-8")
    parser = ReportParser()
    parser.feed(own)
    assert {name for name, f in parser.features.items() if f["drift"]} == drifted == SHIFTED
    assert main([*args, "--output", str(tmp_path / "none"), "--no-html"]) == 0
    assert not (tmp_path / "none" / "drift.html").exists()
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--output", str(tmp_path / "bad"), "--report", "plotly"])
    assert stopped.value.code == 2
    assert "invalid choice: 'plotly'" in capsys.readouterr().err


@pytest.mark.slow  # Evidently's import and report: ~17 s on 2 busy cores
def test_the_cli_writes_evidentlys_report_when_asked(tmp_path, capsys):
    from kfops.cli import main

    ref_file, cur_file = breast_cancer(tmp_path)
    args = ["monitor", "--reference", str(ref_file), "--current", str(cur_file), "--target", "target"]
    assert main([*args, "--output", str(tmp_path / "ev"), "--report", "evidently", "--sample-rows", "400"]) == 0
    theirs = (tmp_path / "ev" / "drift.html").read_text(encoding="utf-8")
    assert "root_metric_" in theirs and "data-feature" not in theirs and "mean_radius" in theirs  # Evidently's
    assert "Evidently's own run on a stratified sample" in (tmp_path / "ev" / "drift.md").read_text()
