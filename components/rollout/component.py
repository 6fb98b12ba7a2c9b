"""KFP wrapper for rollout: the progressive canary on a KServe InferenceService, promote or roll back."""

from typing import NamedTuple

from kfp.dsl import Artifact, Markdown, Output


def rollout(
    model_name: str,
    isvc_name: str,
    namespace: str,
    report: Output[Markdown],
    result: Output[Artifact],
    steps: list = [10, 25, 50, 100],  # noqa: B006 - a KFP default, never mutated
    window_seconds: float = 300.0,
    max_extensions: int = 2,
    settle_seconds: float = 30.0,
    prometheus_url: str = "",
    stable_metrics_urls: list = [],  # noqa: B006
    canary_metrics_urls: list = [],  # noqa: B006
    stable_selector: str = "",
    canary_selector: str = "",
    max_error_rate: float = 0.01,
    max_error_rate_increase: float = 0.005,
    max_p99_seconds: float = 0.0,
    max_p99_ratio: float = 1.5,
    p99_slack_seconds: float = 0.025,
    min_requests: int = 50,
    promotion_metric: str = "f1_macro",
    fail_on_rollback: bool = True,
    mlflow_tracking_uri: str = "",
    timeout_seconds: int = 600,
    poll_seconds: float = 5.0,
) -> NamedTuple("RolloutOutputs", [("outcome", str), ("champion", str), ("message", str)]):
    """Move traffic to the canary ``deploy`` started on ``namespace/isvc_name`` step by step, judging each step
    against stable (5xx rate, p99 latency) from Prometheus or the predictors' /metrics; promote it at the last
    step or roll it back at the first breach. ``max_p99_seconds`` 0 means no absolute p99 limit. A rollback fails
    the step when ``fail_on_rollback`` (the report is in MLflow's kfops-rollout run either way).

    Args:
        max_extensions: Times a step's window may be extended for too few requests before the canary is rolled back.
        settle_seconds: Seconds after each traffic change before the window starts.
        stable_metrics_urls: Metrics URLs scraped for the stable model instead of Prometheus (with canary_metrics_urls).
        canary_metrics_urls: Metrics URLs scraped for the canary instead of Prometheus (with stable_metrics_urls).
        stable_selector: Extra PromQL matchers that pick the stable model's pods.
        canary_selector: Extra PromQL matchers that pick the canary's pods.
        max_error_rate_increase: Highest rise of the canary's error rate over the stable model's.
        max_p99_seconds: Highest p99 latency of the canary in seconds; 0: no absolute limit.
        p99_slack_seconds: Latency slack added to the stable model's p99 before max_p99_ratio applies.
        fail_on_rollback: Fail the step when the canary is rolled back (the report is in MLflow either way).

    Returns:
        report: The rollout step by step, as Markdown.
        result: The rollout as JSON.
        outcome: promoted or rolled_back.
        champion: The champion version after the rollout.
        message: What happened, in words.
    """
    import json
    import logging
    from collections import namedtuple
    from pathlib import Path

    from kfops.components.contracts import KfopsError
    from kfops.components.contracts.delivery import CanaryThresholds
    from kfops.components.kube import connect
    from kfops.components.rollout.logic import PROMOTED, RolloutAborted, RolloutPlan, run_rollout

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = RolloutPlan(
        namespace=namespace,
        isvc_name=isvc_name,
        model_name=model_name,
        steps=[int(s) for s in steps],  # kfp.local hands list items over as floats
        window_s=window_seconds,
        max_extensions=max_extensions,
        settle_s=settle_seconds,
        thresholds=CanaryThresholds(
            max_error_rate=max_error_rate,
            max_error_rate_increase=max_error_rate_increase,
            max_p99_seconds=max_p99_seconds or None,
            max_p99_ratio=max_p99_ratio,
            p99_slack_seconds=p99_slack_seconds,
            min_requests=min_requests,
        ),
        prometheus_url=prometheus_url,
        stable_metrics_urls=list(stable_metrics_urls),
        canary_metrics_urls=list(canary_metrics_urls),
        stable_selector=stable_selector,
        canary_selector=canary_selector,
        promotion_metric=promotion_metric,
        traffic_timeout_s=float(timeout_seconds),
        poll_s=poll_seconds,
    )

    def write(outcome) -> None:
        Path(report.path).write_text(outcome.report, encoding="utf-8")
        Path(result.path).write_text(json.dumps(outcome.to_dict(), indent=2), encoding="utf-8")
        result.metadata.update({"outcome": outcome.outcome, "canary_version": outcome.canary_version})

    try:
        outcome = run_rollout(plan, connect(), mlflow_tracking_uri)
    except RolloutAborted as err:
        write(err.result)
        raise
    write(outcome)
    message = f"{outcome.outcome}: {outcome.reason}"
    print(outcome.report)
    if outcome.outcome != PROMOTED and fail_on_rollback:
        raise KfopsError(f"rollout of {model_name} version {outcome.canary_version} rolled back: {outcome.reason}")
    outputs = namedtuple("RolloutOutputs", ["outcome", "champion", "message"])
    return outputs(outcome.outcome, outcome.champion, message)
