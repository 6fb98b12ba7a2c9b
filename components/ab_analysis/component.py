"""KFP wrappers for the A/B analysis: a Markdown report for the Kubeflow UI, the result as JSON, and the verdict.

Two faces of one analysis: ``ab_analysis`` reads a Dataset artifact of an earlier step; ``ab_analysis_uri`` reads
a path or ``s3://`` URI (the serving payload log lives outside the pipeline). KFP has no optional artifact input
that runs everywhere (kfp.local rejects one, kubeflow/pipelines#13061), hence two components.
"""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from kfops.components.kfp_support import component_op


def ab_analysis(
    logged: Input[Dataset],
    outcomes_uri: str,
    join_on: str,
    variant_column: str,
    outcome_column: str,
    metric: str,
    alpha: float,
    power: float,
    control: str,
    treatment: str,
    minimum_detectable_effect: float,
    higher_is_better: bool,
    report: Output[Markdown],
    result: Output[Artifact],
) -> NamedTuple("ABOutputs", [("verdict", str), ("message", str)]):
    """Compare two variants' outcomes in a Dataset (CSV, Parquet or JSONL; a file or a folder of them):
    Welch's t-test or a two-proportion z-test, effect size, confidence interval, power and a verdict.

    Args:
        logged: The logged predictions with their variants (a Dataset: CSV, Parquet or JSONL, a file or a folder).

    Returns:
        report: The analysis as Markdown, for the Kubeflow UI.
        result: The analysis as JSON.
        verdict: challenger better, challenger worse, no significant difference, or insufficient sample.
        message: The verdict in words.
    """
    from kfops.components.ab_analysis.component import ab_analysis_uri

    return ab_analysis_uri(
        logged.path,
        outcomes_uri,
        join_on,
        variant_column,
        outcome_column,
        metric,
        alpha,
        power,
        control,
        treatment,
        minimum_detectable_effect,
        higher_is_better,
        report,
        result,
    )


def ab_analysis_uri(
    data_uri: str,
    outcomes_uri: str,
    join_on: str,
    variant_column: str,
    outcome_column: str,
    metric: str,
    alpha: float,
    power: float,
    control: str,
    treatment: str,
    minimum_detectable_effect: float,
    higher_is_better: bool,
    report: Output[Markdown],
    result: Output[Artifact],
) -> NamedTuple("ABOutputs", [("verdict", str), ("message", str)]):
    """Compare two variants' outcomes read from a path or s3:// URI (a file, or a folder such as the serving
    payload log), optionally joined with an outcomes table: the same analysis as ``ab_analysis``.

    Args:
        data_uri: The logged predictions with their variants: a file or folder (e.g. the payload log), local or s3://.

    Returns:
        report: The analysis as Markdown, for the Kubeflow UI.
        result: The analysis as JSON.
        verdict: challenger better, challenger worse, no significant difference, or insufficient sample.
        message: The verdict in words.
    """
    from collections import namedtuple

    from kfops.components.ab_analysis.logic import run_ab_analysis

    outcome = run_ab_analysis(
        data_uri,
        variant_column=variant_column,
        outcome_column=outcome_column,
        metric=metric,
        alpha=alpha,
        power=power,
        control=control,
        treatment=treatment,
        minimum_detectable_effect=minimum_detectable_effect if minimum_detectable_effect > 0 else None,
        higher_is_better=higher_is_better,
        outcomes_uri=outcomes_uri,
        join_on=join_on,
        report_path=report.path,
        result_path=result.path,
    )
    result.metadata.update(
        {"verdict": outcome.verdict, "metric": outcome.metric, "p_value": outcome.p_value, "test": outcome.test}
    )
    print(outcome.message)
    outputs = namedtuple("ABOutputs", ["verdict", "message"])
    return outputs(outcome.verdict, outcome.message)


ab_analysis_op = component_op(ab_analysis)
ab_analysis_uri_op = component_op(ab_analysis_uri)
