"""A/B analysis: the statistics checked against scipy and hand computation, seeded simulations of a real effect
and of none, reading the real payload log (local and S3) joined with outcomes, the CLI and the KFP wrappers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from kfp import dsl

from kfops.cli import main
from kfops.components.ab_analysis.component import ab_analysis_op, ab_analysis_uri_op
from kfops.components.ab_analysis.logic import (
    BETTER,
    CONTINUOUS,
    CONVERSION,
    INSUFFICIENT,
    NO_DIFFERENCE,
    WORSE,
    ABResult,
    ab_markdown,
    analyze_ab,
    run_ab_analysis,
)
from kfops.components.ab_analysis.reading import load_outcomes
from kfops.components.ab_analysis.statistics import (
    mde_continuous,
    mde_conversion,
    required_n_continuous,
    required_n_conversion,
    two_proportion_test,
    welch_test,
)
from kfops.components.contracts import KfopsError
from kfops.serving.payload_log import PayloadLogger

Z_975, Z_80 = 1.959963984540054, 0.8416212335729143  # standard normal quantiles, from tables


def frame(control: list | np.ndarray, treatment: list | np.ndarray, names=("stable", "challenger")) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant": [names[0]] * len(control) + [names[1]] * len(treatment),
            "outcome": list(control) + list(treatment),
        }
    )


# ------------------------------------------------------------------------------------------------ statistics
def test_welch_matches_scipy_ttest_ind_unequal_variances():
    from scipy import stats

    rng = np.random.default_rng(4)
    a, b = rng.normal(10, 2, 80), rng.normal(11, 5, 45)
    ours = welch_test(a, b, alpha=0.05)
    theirs = stats.ttest_ind(b, a, equal_var=False)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-10)
    assert ours.df == pytest.approx(theirs.df, rel=1e-12)
    low, high = theirs.confidence_interval(0.95)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
    # Cohen's d by hand: the difference over the pooled standard deviation.
    pooled = math.sqrt((79 * a.var(ddof=1) + 44 * b.var(ddof=1)) / 123)
    assert ours.effect_size == pytest.approx((b.mean() - a.mean()) / pooled, rel=1e-12)


def test_two_proportion_z_test_by_hand():
    # Control converts 200 of 1,000, treatment 250 of 1,000.
    result = two_proportion_test(200, 1000, 250, 1000)
    pooled = 450 / 2000
    z = 0.05 / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert z == pytest.approx(2.6774, abs=1e-4)
    assert result.statistic == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-10)
    assert result.p_value == pytest.approx(0.00742, abs=1e-5)
    margin = Z_975 * math.sqrt(0.2 * 0.8 / 1000 + 0.25 * 0.75 / 1000)
    assert (result.ci_low, result.ci_high) == (pytest.approx(0.05 - margin), pytest.approx(0.05 + margin))
    assert result.effect_size == pytest.approx(2 * math.asin(math.sqrt(0.25)) - 2 * math.asin(math.sqrt(0.2)))


def test_sample_size_and_mde_by_hand():
    h = 2 * math.asin(0.5) - 2 * math.asin(math.sqrt(0.2))  # Cohen's h from 20% to 25%
    expected = 2 * ((Z_975 + Z_80) / h) ** 2
    assert required_n_conversion(0.2, 0.05, 0.05, 0.8) == pytest.approx(expected, rel=1e-9)
    assert math.ceil(expected) == 1092  # G*Power / statsmodels NormalIndPower give 1091.9 for h = 0.1199
    # The MDE at that sample is the effect itself: the two are inverses.
    assert mde_conversion(1092, 1092, 0.2, 0.05, 0.8) == pytest.approx(0.05, abs=1e-4)
    assert required_n_continuous(0.5, 1.0, 1.0, 0.05, 0.8) == pytest.approx(2 * (Z_975 + Z_80) ** 2 / 0.25)
    assert mde_continuous(63, 63, 1.0, 1.0, 0.05, 0.8) == pytest.approx(0.5, rel=0.01)


def test_a_seeded_simulation_has_the_power_and_the_false_positive_rate_it_claims():
    rng = np.random.default_rng(12)
    n = math.ceil(required_n_continuous(0.3, 1.0, 1.0, 0.05, 0.8))  # 175 per variant
    sims = 400
    hits = sum(welch_test(rng.normal(0, 1, n), rng.normal(0.3, 1, n)).p_value < 0.05 for _ in range(sims))
    nulls = sum(welch_test(rng.normal(0, 1, n), rng.normal(0, 1, n)).p_value < 0.05 for _ in range(sims))
    assert 0.74 <= hits / sims <= 0.86  # power 0.8
    assert nulls / sims <= 0.08  # alpha 0.05
    n = math.ceil(required_n_conversion(0.2, 0.05, 0.05, 0.8))
    x1, x2 = rng.binomial(n, 0.2, sims), rng.binomial(n, 0.25, sims)
    hits = sum(two_proportion_test(int(a), n, int(b), n).p_value < 0.05 for a, b in zip(x1, x2, strict=True))
    assert 0.74 <= hits / sims <= 0.86


# -------------------------------------------------------------------------------------------------- verdicts
def test_a_real_effect_is_detected_and_a_null_is_not():
    rng = np.random.default_rng(7)
    better = analyze_ab(frame(rng.normal(50, 10, 600), rng.normal(53, 10, 600)))
    assert better.metric == CONTINUOUS and better.verdict == BETTER
    assert better.p_value < 0.001 and better.ci_low > 0 and better.difference == pytest.approx(3, abs=1.5)
    assert better.warnings == []
    null = analyze_ab(frame(rng.normal(50, 10, 600), rng.normal(50, 10, 600)))
    assert null.verdict == NO_DIFFERENCE and null.p_value > 0.05 and null.ci_low < 0 < null.ci_high
    # Lower is better (a latency, a loss): the same higher mean is now worse.
    worse = analyze_ab(frame(rng.normal(50, 10, 600), rng.normal(53, 10, 600)), higher_is_better=False)
    assert worse.verdict == WORSE


def test_conversions_are_detected_automatically_from_0_1_and_booleans():
    rng = np.random.default_rng(3)
    control = rng.random(4000) < 0.10
    treatment = rng.random(4000) < 0.13
    result = analyze_ab(frame(control, treatment))  # booleans
    assert result.metric == CONVERSION and result.test == "two-proportion z-test"
    assert result.control.successes == int(control.sum()) and result.treatment.n == 4000
    assert result.verdict == BETTER and result.effect_size_name == "Cohen's h"
    text = frame(np.where(control, "true", "false"), np.where(treatment, "yes", "no"))
    assert analyze_ab(text).p_value == pytest.approx(result.p_value)


def test_a_small_sample_warns_and_an_asked_for_effect_makes_it_insufficient():
    rng = np.random.default_rng(5)
    data = frame(rng.normal(10, 3, 30), rng.normal(10.6, 3, 30))
    result = analyze_ab(data)
    assert result.verdict == NO_DIFFERENCE
    (warning,) = result.warnings
    needed = math.ceil(result.required_n_observed)
    assert warning.startswith(f"the sample is too small to detect the observed difference of {result.difference:.4g}")
    assert f"needs {needed:,} per variant at alpha 0.05 and power 0.8; the smaller variant has 30" in warning
    asked = analyze_ab(data, minimum_detectable_effect=1.0)
    assert asked.verdict == INSUFFICIENT and asked.required_n_target > 30
    assert any("minimum effect asked for, 1" in w for w in asked.warnings)
    enough = analyze_ab(data, minimum_detectable_effect=5.0)  # 30 per variant detect 5 units at sd 3
    assert enough.verdict == NO_DIFFERENCE and enough.required_n_target < 30


def test_untestable_samples_are_insufficient():
    assert analyze_ab(frame([1.5], [2.0, 3.0])).verdict == INSUFFICIENT
    flat = analyze_ab(frame([2.0, 2.0, 2.0], [3.0, 3.0]), metric=CONTINUOUS)
    assert flat.verdict == INSUFFICIENT and "no variance" in flat.message
    rare = analyze_ab(frame([0] * 40 + [1], [0] * 39 + [1, 1]))
    assert rare.verdict == INSUFFICIENT and "fewer than the 5 the z-test needs" in rare.message
    assert rare.p_value is None and json.loads(rare.to_json())["p_value"] is None


def test_bad_input_names_the_problem():
    good = frame([1.0, 2.0], [3.0, 4.0])
    with pytest.raises(KfopsError, match=r"data has no column 'revenue'; its columns: variant, outcome"):
        analyze_ab(good, outcome_column="revenue")
    bad = good.assign(outcome=["1.5", "n/a?", "2", "3"])
    with pytest.raises(KfopsError, match=r"outcome column 'outcome' has a value that is not .*'n/a\?' \(row 1"):
        analyze_ab(bad, source="x.csv")
    with pytest.raises(KfopsError, match=r"variant column 'variant' is empty in 1 row\(s\) \(first at row 2\)"):
        analyze_ab(good.assign(variant=["stable", "stable", "", "challenger"]))
    three = pd.concat([good, pd.DataFrame({"variant": ["shadow"], "outcome": [1.0]})])
    with pytest.raises(KfopsError, match=r"exactly two variants.*has 3: 'challenger', 'shadow', 'stable'"):
        analyze_ab(three)
    with pytest.raises(KfopsError, match=r"has 'a', 'b', not 'stable' and 'challenger'.*--control/--treatment"):
        analyze_ab(frame([1.0, 2.0], [3.0, 4.0], names=("a", "b")))
    assert analyze_ab(frame([1.0, 2.0], [3.0, 4.0], names=("a", "b")), control="a", treatment="b").treatment.n == 2
    with pytest.raises(KfopsError, match=r"variant 'challenger' has no rows with an outcome"):
        analyze_ab(good.assign(outcome=[1.0, 2.0, None, None]))
    with pytest.raises(KfopsError, match=r"conversion outcome must be 0/1 or true/false.*holds 2"):
        analyze_ab(frame([0, 1, 2], [0, 1]), metric=CONVERSION)
    with pytest.raises(KfopsError, match="alpha must be a number between 0 and 1"):
        analyze_ab(good, alpha=1.5)


def test_version_numbers_as_variants():
    data = pd.DataFrame({"model_version": [3, 3, 3, 4, 4, 4], "latency": [1.0, 2.0, 3.0, 2.0, 3.0, 4.0]})
    result = analyze_ab(data, "model_version", "latency", control="3", treatment="4")
    assert (result.control.n, result.treatment.mean) == (3, 3.0)


# --------------------------------------------------------------------------------------- reading and joining
def write_payload_log(sink: str, fmt: str = "jsonl") -> pd.DataFrame:
    """Scored requests logged by the real payload logger, two variants; returns the outcomes that arrive later."""
    rng = np.random.default_rng(21)
    outcomes = []
    with PayloadLogger(sink, "fraud", fmt=fmt, batch_rows=200, flush_seconds=0.1) as logger:
        for i in range(1200):
            variant = "stable" if i % 2 else "challenger"
            request_id = f"req-{i:05d}"
            logger.log(
                [
                    {
                        "request_id": request_id,
                        "timestamp": f"2026-11-{25 + i % 2}T10:00:00+00:00",
                        "model": "fraud",
                        "model_version": "3" if variant == "stable" else "4",
                        "variant": variant,
                        "amount": float(rng.gamma(2, 30)),
                        "prediction": "0",
                        "probability": 0.1,
                    }
                ]
            )
            if i % 20 > 1:  # a tenth of the requests (of both variants) have no outcome yet
                rate = 0.10 if variant == "stable" else 0.16
                outcomes.append({"request_id": request_id, "converted": int(rng.random() < rate)})
        assert logger.flush(timeout=20)
    assert logger.dropped == 0
    return pd.DataFrame(outcomes)


def test_the_payload_log_joined_with_outcomes(tmp_path):
    sink = tmp_path / "payloads"
    outcomes = write_payload_log(str(sink))
    assert len(list(sink.rglob("date=*/*.jsonl"))) >= 2  # partitioned by date
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)
    frame_, source, unmatched = load_outcomes(str(sink), str(tmp_path / "outcomes.csv"), "request_id")
    assert unmatched == 120 and len(frame_) == 1080
    assert source == f"{sink} joined with {tmp_path / 'outcomes.csv'} on request_id"
    result = run_ab_analysis(
        str(sink),
        "variant",
        "converted",
        outcomes_uri=str(tmp_path / "outcomes.csv"),
        report_path=tmp_path / "report.md",
        result_path=tmp_path / "result.json",
    )
    assert result.metric == CONVERSION and result.control.n == result.treatment.n == 540
    assert result.rows_without_outcome == 120
    assert "120 logged row(s) had no matching outcome and were left out" in result.warnings
    saved = ABResult.from_json((tmp_path / "result.json").read_text())
    assert saved.to_dict() == result.to_dict()
    report = (tmp_path / "report.md").read_text()
    assert f"**Verdict: {result.verdict}**" in report
    assert f"| stable | control | 540 | {result.control.mean:.4g} |" in report
    assert "| p-value |" in report and "| Cohen's h |" in report
    # The same data by model version instead of the variant name.
    by_version = run_ab_analysis(
        str(sink), "model_version", "converted", control="3", treatment="4", outcomes_uri=str(tmp_path / "outcomes.csv")
    )
    assert by_version.p_value == pytest.approx(result.p_value)


def test_join_problems_are_named(tmp_path):
    logged = tmp_path / "logged.csv"
    pd.DataFrame({"request_id": ["a", "b"], "variant": ["stable", "challenger"]}).to_csv(logged, index=False)
    twice = tmp_path / "twice.csv"
    pd.DataFrame({"request_id": ["a", "a", "b"], "outcome": [1, 0, 1]}).to_csv(twice, index=False)
    with pytest.raises(KfopsError, match=rf"outcomes table {twice}: 'request_id' must be unique.*'a'"):
        load_outcomes(str(logged), str(twice))
    other = tmp_path / "other.csv"
    pd.DataFrame({"id": ["x"], "outcome": [1]}).to_csv(other, index=False)
    with pytest.raises(KfopsError, match=rf"outcomes table {other} has no join column 'request_id'"):
        load_outcomes(str(logged), str(other))
    pd.DataFrame({"request_id": ["x"], "outcome": [1]}).to_csv(other, index=False)
    with pytest.raises(KfopsError, match=r"no row of .*logged.csv has an outcome in .*other.csv"):
        load_outcomes(str(logged), str(other))
    with pytest.raises(KfopsError, match=r"outcomes data .*missing.parquet does not exist"):
        load_outcomes(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KfopsError, match=r"no .csv, .parquet or .jsonl files under"):
        load_outcomes(str(tmp_path / "empty"))


def test_parquet_payload_log_on_s3(s3_env, tmp_path):
    outcomes = write_payload_log("s3://ab-test/payloads", fmt="parquet")
    outcomes.to_parquet(tmp_path / "outcomes.parquet")
    from kfops.components import storage

    storage.write_bytes("s3://ab-test/outcomes/outcomes.parquet", (tmp_path / "outcomes.parquet").read_bytes())
    result = run_ab_analysis(
        "s3://ab-test/payloads", "variant", "converted", outcomes_uri="s3://ab-test/outcomes/outcomes.parquet"
    )
    assert result.control.n == result.treatment.n == 540
    assert result.source == "s3://ab-test/payloads joined with s3://ab-test/outcomes/outcomes.parquet on request_id"


# ----------------------------------------------------------------------------------------- CLI and wrappers
@pytest.fixture
def outcome_file(tmp_path):
    rng = np.random.default_rng(9)
    path = tmp_path / "outcomes.jsonl"
    frame(rng.normal(100, 15, 400), rng.normal(104, 15, 400)).to_json(path, orient="records", lines=True)
    return path


def test_cli_ab_analyze(outcome_file, tmp_path, capsys):
    report = tmp_path / "out" / "report.md"
    code = main(["ab", "analyze", str(outcome_file), "--json", "--output", str(report)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "continuous" and result["verdict"] == BETTER
    assert result["control"]["n"] == 400 and 0 < result["p_value"] < 0.05
    assert report.read_text().startswith("# A/B analysis: outcome by variant")
    code = main(["ab", "analyze", str(outcome_file), "--alpha", "0.001", "--mde", "1", "--metric", "continuous"])
    out = capsys.readouterr().out
    assert code == 0 and "Verdict:" in out and "Welch's t-test" in out
    assert main(["ab", "analyze", str(outcome_file), "--outcome-column", "revenue"]) == 2
    assert "kfops ab: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ab", "analyze", str(outcome_file), "--alpha", "2"])


def test_cli_constants_match_the_logic():
    from kfops.cli import ab as cli_ab
    from kfops.components.ab_analysis import logic, reading

    assert cli_ab.METRIC_KINDS == logic.METRIC_KINDS and cli_ab.FORMATS == reading.FORMATS
    assert (cli_ab.DEFAULT_CONTROL, cli_ab.DEFAULT_TREATMENT) == (logic.DEFAULT_CONTROL, logic.DEFAULT_TREATMENT)


def artifact(cls, tmp_path, name):
    return cls(name=name, uri=str(tmp_path / name), metadata={})


def wrapper_arguments(**overrides):
    arguments = dict(
        outcomes_uri="",
        join_on="request_id",
        variant_column="variant",
        outcome_column="outcome",
        metric="auto",
        alpha=0.05,
        power=0.8,
        control="stable",
        treatment="challenger",
        minimum_detectable_effect=0.0,
        higher_is_better=True,
    )
    return {**arguments, **overrides}


def test_the_wrappers(outcome_file, tmp_path):
    # A Dataset artifact from an earlier step: a file with no suffix, recognised by its content.
    dataset = artifact(dsl.Dataset, tmp_path, "logged")
    (tmp_path / "logged").write_bytes(outcome_file.read_bytes())
    report, result = artifact(dsl.Markdown, tmp_path, "report"), artifact(dsl.Artifact, tmp_path, "result")
    out = ab_analysis_op.python_func(logged=dataset, report=report, result=result, **wrapper_arguments())
    assert out.verdict == BETTER and out.message.startswith("challenger better: outcome mean challenger")
    assert json.loads((tmp_path / "result").read_text())["verdict"] == BETTER
    assert result.metadata["verdict"] == BETTER and 0 < result.metadata["p_value"] < 0.05
    assert (tmp_path / "report").read_text() == ab_markdown(ABResult.from_json((tmp_path / "result").read_text()))
    report2, result2 = artifact(dsl.Markdown, tmp_path, "report2"), artifact(dsl.Artifact, tmp_path, "result2")
    out = ab_analysis_uri_op.python_func(
        data_uri=str(outcome_file),
        report=report2,
        result=result2,
        **wrapper_arguments(minimum_detectable_effect=0.5, alpha=0.0001),
    )
    assert out.verdict == INSUFFICIENT
    with pytest.raises(KfopsError, match="has no column 'converted'"):
        ab_analysis_uri_op.python_func(
            data_uri=str(outcome_file), report=report2, result=result2, **wrapper_arguments(outcome_column="converted")
        )


def test_the_compiled_component_runs_in_kfp_local(outcome_file, tmp_path):
    from kfp import components, local

    from kfops.pipelines.compile import component_dir

    op = components.load_component_from_file(str(component_dir() / "ab_analysis" / "ab_analysis_uri.yaml"))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
        enable_caching=False,
    )
    task = op(data_uri=str(outcome_file), **wrapper_arguments())
    assert task.outputs["verdict"] == BETTER
    assert task.outputs["result"].metadata["verdict"] == BETTER
    with open(task.outputs["report"].path, encoding="utf-8") as fh:
        assert f"**Verdict: {BETTER}**" in fh.read()


@pytest.mark.parametrize("metric", ["absolute_error", "squared_error"])
def test_a_regression_challenger_with_smaller_errors_is_found_better(metric):
    """A known gap: the challenger's predictions miss the outcome by half as much as stable's."""
    rng = np.random.default_rng(11)
    outcome = rng.gamma(2.0, 60.0, 1200)
    variant = np.array(["stable", "challenger"] * 600)
    noise = np.where(variant == "stable", 30.0, 15.0)
    logged = pd.DataFrame(
        {"variant": variant, "outcome": outcome, "prediction": outcome + rng.normal(size=1200) * noise}
    )
    result = analyze_ab(logged, metric=metric)
    assert result.metric == CONTINUOUS and result.verdict == BETTER and not result.higher_is_better
    assert result.difference < 0  # the challenger's mean error is the smaller
    if metric == "absolute_error":  # E|N(0, s)| = s sqrt(2/pi)
        assert result.control.mean == pytest.approx(30 * math.sqrt(2 / math.pi), rel=0.1)
    assert any("lower is better" in w for w in result.warnings)
    # the same predictions, no gap: no difference
    same = logged.assign(prediction=outcome + rng.normal(size=1200) * 20.0)
    assert analyze_ab(same, metric=metric).verdict == NO_DIFFERENCE
    with pytest.raises(KfopsError, match=r"needs numeric predictions .* 'prediction' holds 'a'"):
        analyze_ab(logged.assign(prediction="a"), metric=metric)
    with pytest.raises(KfopsError, match="there is no 'prediction' column"):
        analyze_ab(logged.drop(columns="prediction"), metric=metric)
