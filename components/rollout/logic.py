"""The progressive canary: move traffic to the canary step by step, judge each step, promote or roll back.

``run_rollout`` drives one InferenceService on which ``deploy`` started a canary (``kfops.components.deploy``):

1. For each step below 100% (default 10, 25, 50): give the canary that share (``traffic.set_canary_percent``,
   which waits until KServe reports the split), hold it for ``window_s`` while real traffic flows, then compare
   canary with stable (``analysis.analyze_step``: 5xx error rate and p99 latency, from Prometheus or from the
   predictors' own ``/metrics``). Too few canary requests extends the window (at most ``max_extensions`` times,
   judged over the cumulative window); a healthy step advances; a breach rolls back.
2. The last step (100%) promotes: the canary becomes the stable model (``traffic.promote_canary``) and, in the
   registry, ``champion`` (``promotion.promote``: the version it replaces becomes ``previous``).

A rollback puts all traffic on the stable model and writes it back as the latest spec (``traffic.rollback``),
and leaves the registry as the alias policy in ``contracts`` says: if ``champion`` had already been moved to
the canary version it goes back to the stable one, and ``challenger`` no longer points at the rolled-back
version (so nothing redeploys it by alias). A rollout that cannot reach a verdict (Prometheus unreachable, a
traffic change KServe never reports, the API refusing a write) is not a pass: traffic goes back on stable the
same way, and the error says what happened.

Every decision with its numbers goes to the Markdown report and, with ``tracking_uri``, to an MLflow run in the
``kfops-rollout`` experiment (per-step metrics, the report, the analyses as JSON); the canary's model version is
tagged ``kfops.rollout.status`` (``promoted`` / ``rolled_back``) and ``kfops.rollout.reason``.

Plain Python; MLflow and the Kubernetes client are imported where they are used.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kfops.components.contracts import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    DEFAULT_PROMOTION_METRIC,
    TAG_BLESSED,
    KfopsError,
)
from kfops.components.rollout.analysis import (
    ADVANCE,
    EXTEND,
    ROLLBACK,
    CanaryThresholds,
    StepAnalysis,
    analyses_markdown,
    analysis_metrics,
    analyze_step,
    next_action,
)
from kfops.components.rollout.metric_sources import MetricSource, PrometheusSource, ScrapeSource, variant_selector

log = logging.getLogger(__name__)

DEFAULT_STEPS = (10, 25, 50, 100)
DEFAULT_EXPERIMENT = "kfops-rollout"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
TAG_ROLLOUT_STATUS = "kfops.rollout.status"
TAG_ROLLOUT_REASON = "kfops.rollout.reason"


@dataclass
class RolloutPlan:
    """What to roll out and how. ``steps`` are canary traffic percentages, increasing, ending at 100."""

    namespace: str
    isvc_name: str
    model_name: str  # the registered model whose aliases follow the rollout
    served_name: str = ""  # the `model` label in the predictors' metrics (default: the InferenceService's name)
    steps: Sequence[int] = DEFAULT_STEPS
    window_s: float = 300.0
    max_extensions: int = 2
    # Prometheus: the time after a window for its last samples to be scraped before it is queried.
    settle_s: float = 30.0
    thresholds: CanaryThresholds = field(default_factory=CanaryThresholds)
    prometheus_url: str = ""  # one of: Prometheus, or the predictors' own /metrics below
    stable_metrics_urls: Sequence[str] = ()
    canary_metrics_urls: Sequence[str] = ()
    stable_selector: str = ""  # extra PromQL matchers that pick the stable pods (e.g. revision="...")
    canary_selector: str = ""
    promotion_metric: str = DEFAULT_PROMOTION_METRIC
    traffic_timeout_s: float = 600.0  # per traffic change, for KServe to report it
    poll_s: float = 5.0

    def check(self) -> None:
        if not self.namespace or not self.isvc_name or not self.model_name:
            raise KfopsError(
                f"rollout: model name, namespace and InferenceService name are required, got "
                f"{self.model_name!r}, {self.namespace!r}, {self.isvc_name!r}"
            )
        steps = list(self.steps)
        if not steps:
            raise KfopsError("rollout: steps is empty; give canary percentages such as 10, 25, 50, 100")
        for value in steps:
            if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
                raise KfopsError(f"rollout: step {value!r} is not a whole percentage")
            if not 0 < value <= 100:
                raise KfopsError(f"rollout: step {value} is outside 1..100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise KfopsError(f"rollout: steps must increase, got {steps}")
        if steps[-1] != 100:
            raise KfopsError(f"rollout: the last step must be 100 (it promotes the canary), got {steps}")
        if not self.window_s > 0:
            raise KfopsError(f"rollout: window_s must be positive, got {self.window_s}")
        if self.settle_s < 0 or self.max_extensions < 0:
            raise KfopsError("rollout: settle_s and max_extensions must not be negative")
        if bool(self.prometheus_url) == bool(self.stable_metrics_urls or self.canary_metrics_urls):
            raise KfopsError(
                "rollout: give either a Prometheus URL or the stable and canary predictors' /metrics URLs "
                f"(got prometheus_url={self.prometheus_url!r}, stable={list(self.stable_metrics_urls)}, "
                f"canary={list(self.canary_metrics_urls)})"
            )
        if not self.prometheus_url and not (self.stable_metrics_urls and self.canary_metrics_urls):
            raise KfopsError("rollout: scraping /metrics needs URLs for both the stable and the canary predictors")
        self.thresholds.check()

    def source(self) -> MetricSource:
        if self.prometheus_url:
            return PrometheusSource(self.prometheus_url)
        return ScrapeSource({"stable": list(self.stable_metrics_urls), "canary": list(self.canary_metrics_urls)})


@dataclass
class RolloutResult:
    outcome: str  # promoted or rolled_back
    model_name: str
    canary_version: str
    stable_version: str
    champion: str  # where `champion` points when the rollout ends ("" if nowhere)
    reason: str
    analyses: list[StepAnalysis]
    decisions: list[str]
    report: str  # Markdown
    mlflow_run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "model_name": self.model_name,
            "canary_version": self.canary_version,
            "stable_version": self.stable_version,
            "champion": self.champion,
            "reason": self.reason,
            "decisions": list(self.decisions),
            "analyses": [a.to_dict() for a in self.analyses],
            "mlflow_run_id": self.mlflow_run_id,
        }


class RolloutAborted(KfopsError):
    """The rollout reached no verdict (metrics unavailable, a traffic change not reported, an API error); traffic
    was put back on the stable model. ``result`` is the rolled-back RolloutResult with the report."""

    def __init__(self, message: str, result: RolloutResult):
        super().__init__(message)
        self.result = result


class _Log:
    """Timestamped decisions, for the report."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        self.lines.append(f"{stamp} {text}")
        log.info("rollout: %s", text)


# ---------------------------------------------------------------------------------------------- the loop
def run_rollout(
    plan: RolloutPlan,
    api,
    tracking_uri: str = "",
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutResult:
    """Roll the running canary of ``plan.isvc_name`` out step by step (see the module doc). Returns the result
    of a completed rollout, promoted or rolled back; raises ``RolloutAborted`` (traffic back on stable) when no
    verdict could be reached, and ``KfopsError`` before any traffic moves when the set-up is wrong."""
    import dataclasses

    from kfops.components.isvc import traffic

    plan = dataclasses.replace(
        plan,
        isvc_name=plan.isvc_name or plan.model_name,  # deploy's default name
        namespace=plan.namespace or getattr(api, "default_namespace", ""),
    )
    plan.check()
    note = _Log()
    state = traffic.serving(api, plan.namespace, plan.isvc_name)
    if not state.has_canary:
        raise KfopsError(
            f"rollout: InferenceService {plan.namespace}/{plan.isvc_name} runs no canary ({state.describe()}); "
            "deploy a new version first (the deploy step or `kfops deploy`)"
        )
    canary, stable = state.canary_version, state.stable_version
    if not canary or not stable:
        raise KfopsError(
            f"rollout: InferenceService {plan.namespace}/{plan.isvc_name} does not say which model versions it "
            f"serves (stable {stable or '?'}, canary {canary or '?'}): it was not deployed by kfops"
        )
    served = plan.served_name or plan.isvc_name
    stable_selector = variant_selector(served, stable, plan.stable_selector)
    canary_selector = variant_selector(served, canary, plan.canary_selector)
    source = plan.source()
    client = _registry(tracking_uri)
    note(f"canary version {canary} beside stable version {stable} ({state.describe()}); metrics: {source.description}")
    _require_blessed(client, plan.model_name, canary)

    analyses: list[StepAnalysis] = []
    timing = {"timeout_s": plan.traffic_timeout_s, "poll_s": plan.poll_s}
    try:
        for index, percent in enumerate(plan.steps, start=1):
            if percent >= 100:
                break
            traffic.set_canary_percent(api, plan.namespace, plan.isvc_name, int(percent), **timing)
            note(f"step {index}: canary version {canary} takes {percent}% of the traffic")
            analysis = _hold_step(plan, source, stable_selector, canary_selector, index, percent, sleep, note)
            analyses.append(analysis)
            if analysis.verdict != ADVANCE:
                reason = f"step {index} at {percent}%: " + "; ".join(analysis.reasons)
                traffic.rollback(
                    api, plan.namespace, plan.isvc_name, stable_storage_uri=state.stable_storage_uri, **timing
                )
                note(f"rolled back: all traffic on stable version {stable} ({reason})")
                champion = _aliases_after_rollback(client, plan.model_name, canary, stable, reason, note)
                return _finish(plan, ROLLED_BACK, canary, stable, champion, reason, analyses, note, tracking_uri)
            note(f"step {index} at {percent}%: healthy, advancing")
        traffic.promote_canary(api, plan.namespace, plan.isvc_name, **timing)
        note(f"promoted: canary version {canary} takes all traffic and is the stable model")
    except Exception as err:
        return _abort(plan, api, state, client, canary, stable, analyses, note, tracking_uri, err)
    champion = _aliases_after_promotion(client, plan, canary, note)
    reason = f"healthy in all {len(analyses)} step(s) below 100%"
    return _finish(plan, PROMOTED, canary, stable, champion, reason, analyses, note, tracking_uri)


def _hold_step(
    plan: RolloutPlan,
    source: MetricSource,
    stable_selector: str,
    canary_selector: str,
    index: int,
    percent: int,
    sleep,
    note: _Log,
) -> StepAnalysis:
    """Hold one step for a window (more while the canary has too few requests) and judge it."""
    prometheus = isinstance(source, PrometheusSource)
    extensions = 0
    while True:
        window = plan.window_s * (extensions + 1)  # cumulative over extensions
        if extensions == 0 and not prometheus:
            analysis = analyze_step(
                source, stable_selector, canary_selector, plan.window_s, plan.thresholds,
                step=index, traffic_percent=percent, hold=True, sleep=sleep,
            )  # fmt: skip
        else:
            # Prometheus: the window is the last `window` seconds, read once its last samples are scraped.
            # /metrics: the window opened by the first analysis goes on (no new begin_window).
            sleep(plan.window_s + (plan.settle_s if prometheus and extensions == 0 else 0.0))
            analysis = analyze_step(
                source, stable_selector, canary_selector, window, plan.thresholds,
                step=index, traffic_percent=percent, hold=False, sleep=sleep,
            )  # fmt: skip
        action = next_action(analysis, extensions, plan.max_extensions)
        if action != EXTEND:
            if action == ROLLBACK and analysis.verdict != ROLLBACK:
                # Never shown healthy: too little traffic after every extension counts as a failed step.
                analysis.reasons = [*analysis.reasons, f"still too few requests after {extensions} extension(s)"]
                analysis.verdict = ROLLBACK
            return analysis
        extensions += 1
        note(f"step {index} at {percent}%: {analysis.reasons[0]}; holding it for another {plan.window_s:g} s")


def _abort(plan, api, state, client, canary, stable, analyses, note, tracking_uri, err) -> RolloutResult:
    """No verdict: put traffic back on stable (best effort), record it, raise RolloutAborted."""
    from kfops.components.isvc import traffic

    reason = f"no verdict: {err}"
    note(f"stopped: {err}")
    try:
        traffic.rollback(
            api,
            plan.namespace,
            plan.isvc_name,
            stable_storage_uri=state.stable_storage_uri,
            timeout_s=plan.traffic_timeout_s,
            poll_s=plan.poll_s,
        )
        note(f"rolled back: all traffic on stable version {stable}")
        where = f"traffic is back on stable version {stable}"
    except KfopsError as second:
        note(f"the rollback failed too: {second}")
        where = f"putting traffic back on stable version {stable} failed as well ({second}); check it by hand"
    champion = _aliases_after_rollback(client, plan.model_name, canary, stable, reason, note)
    result = _finish(plan, ROLLED_BACK, canary, stable, champion, reason, analyses, note, tracking_uri)
    raise RolloutAborted(
        f"rollout of {plan.model_name} version {canary} on {plan.namespace}/{plan.isvc_name} stopped: {err}; {where}",
        result,
    ) from err


# ---------------------------------------------------------------------------------------------- registry
def _registry(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri or None, registry_uri=tracking_uri or None)


def _require_blessed(client, name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_model_version(name, version).tags or {}
    except MlflowException as err:
        raise KfopsError(f"rollout: model {name} version {version} is not in the registry: {err.message}") from None
    if tags.get(TAG_BLESSED) != "true":
        raise KfopsError(
            f"rollout: model {name} version {version} is not blessed ({TAG_BLESSED} is "
            f"{tags.get(TAG_BLESSED, 'not set')}): only a blessed version is rolled out"
        )


def _aliases(client, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in (client.get_registered_model(name).aliases or {}).items()}


def _aliases_after_promotion(client, plan: RolloutPlan, canary: str, note: _Log) -> str:
    from kfops.components.registry import promote

    result = promote(client, plan.model_name, canary, plan.promotion_metric)
    note(result.message)
    if _aliases(client, plan.model_name).get(ALIAS_CHALLENGER) == canary:
        client.delete_registered_model_alias(plan.model_name, ALIAS_CHALLENGER)
    client.set_model_version_tag(plan.model_name, canary, TAG_ROLLOUT_STATUS, PROMOTED)
    client.set_model_version_tag(plan.model_name, canary, TAG_ROLLOUT_REASON, "healthy at every step")
    return result.champion


def _aliases_after_rollback(client, name: str, canary: str, stable: str, reason: str, note: _Log) -> str:
    """`champion` back off the canary if it had been moved there; `challenger` off the canary; tags."""
    from kfops.components.registry import rollback

    try:
        aliases = _aliases(client, name)
        if aliases.get(ALIAS_CHAMPION) == canary:
            if aliases.get(ALIAS_PREVIOUS) == stable:
                note(rollback(client, name).message)
            else:
                client.set_registered_model_alias(name, ALIAS_CHAMPION, stable)
                client.set_registered_model_alias(name, ALIAS_PREVIOUS, canary)
                note(f"model {name}: champion back on the stable version {stable}, previous is {canary}")
        if aliases.get(ALIAS_CHALLENGER) == canary:
            client.delete_registered_model_alias(name, ALIAS_CHALLENGER)
            note(f"model {name}: alias challenger removed from version {canary}")
        client.set_model_version_tag(name, canary, TAG_ROLLOUT_STATUS, ROLLED_BACK)
        client.set_model_version_tag(name, canary, TAG_ROLLOUT_REASON, reason[:5000])
        return _aliases(client, name).get(ALIAS_CHAMPION, "")
    except Exception as err:  # the traffic is already safe; say what the registry still needs
        note(f"the registry could not be updated after the rollback: {err}; fix the aliases of {name} by hand")
        return ""


# ---------------------------------------------------------------------------------------------- the record
def _finish(plan, outcome, canary, stable, champion, reason, analyses, note: _Log, tracking_uri) -> RolloutResult:
    result = RolloutResult(
        outcome=outcome,
        model_name=plan.model_name,
        canary_version=canary,
        stable_version=stable,
        champion=champion,
        reason=reason,
        analyses=analyses,
        decisions=note.lines,
        report="",
    )
    result.report = rollout_markdown(plan, result)
    result.mlflow_run_id = _log_to_mlflow(plan, result, tracking_uri)
    return result


def rollout_markdown(plan: RolloutPlan, result: RolloutResult) -> str:
    head = [
        f"# Rollout of {result.model_name} version {result.canary_version}: {result.outcome.replace('_', ' ')}",
        "",
        f"- InferenceService: `{plan.namespace}/{plan.isvc_name}`",
        f"- Stable version: {result.stable_version}; canary version: {result.canary_version}",
        f"- Steps: {', '.join(f'{p}%' for p in plan.steps)}; window {plan.window_s:g} s, "
        f"at most {plan.max_extensions} extension(s)",
        f"- Outcome: **{result.outcome}**: {result.reason}",
        f"- Champion afterwards: {result.champion or 'none'}",
        "",
        "## Decisions",
        "",
        *[f"- {line}" for line in result.decisions],
        "",
    ]
    body = analyses_markdown(result.analyses) if result.analyses else "No step was judged.\n"
    return "\n".join(head) + "\n" + body


def _log_to_mlflow(plan: RolloutPlan, result: RolloutResult, tracking_uri: str) -> str:
    """One run in the kfops-rollout experiment; "" when MLflow cannot be written (the rollout itself stands)."""
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag

        client = MlflowClient(tracking_uri or None)
        from kfops.components.tracking import ensure_experiment

        # Under the workspace's artifact root like every other experiment (not MLflow's ./mlruns default)
        experiment_id = ensure_experiment(DEFAULT_EXPERIMENT, client)
        run = client.create_run(
            experiment_id,
            run_name=f"rollout {result.model_name} v{result.canary_version}",
            tags={
                "kfops.model_name": result.model_name,
                "kfops.canary_version": result.canary_version,
                "kfops.stable_version": result.stable_version,
                "kfops.rollout.outcome": result.outcome,
                "kfops.inferenceservice": f"{plan.namespace}/{plan.isvc_name}",
            },
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        params = {
            "steps": ",".join(str(p) for p in plan.steps),
            "window_s": plan.window_s,
            "max_extensions": plan.max_extensions,
            "metrics_source": "prometheus" if plan.prometheus_url else "scrape",
            **{f"threshold.{k}": v for k, v in plan.thresholds.to_dict().items()},
        }
        metrics = [
            Metric(key, float(value), now, analysis.step)
            for analysis in result.analyses
            for key, value in analysis_metrics(analysis).items()
        ]
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag("kfops.rollout.reason", result.reason[:5000])],
        )
        client.log_text(run_id, result.report, "rollout/report.md")
        client.log_text(run_id, json.dumps(result.to_dict(), indent=2), "rollout/result.json")
        client.set_terminated(run_id, "FINISHED" if result.outcome == PROMOTED else "FAILED")
        return run_id
    except Exception as err:
        log.warning("rollout: could not log to MLflow: %s", err)
        return ""
