"""Canary analysis: compare a canary with the stable model over one step window, from Prometheus or /metrics.

A variant (stable or canary) is a PromQL label selector over the predictors' metrics (``kfops.serving.metrics``):
by default ``model="<served name>",version="<model version>"``, plus any matchers that tell pods apart in a
cluster (``revision="..."``, ``job="..."``). Per variant and window the analysis reads:

- requests: answers of the scoring endpoints, ``model_requests_total`` summed over ``status_code``;
- 5xx errors: those with a ``5..`` status. 4xx answers are the client's mistakes, not the canary's, and count
  only as requests;
- p99 latency: the 0.99 quantile of ``model_prediction_latency_seconds{stage="total"}`` (successful requests),
  linearly interpolated within the histogram's buckets as PromQL's ``histogram_quantile`` does.

Two sources give these numbers through one interface (``MetricSource``, in ``metric_sources``, which also parses
the selectors):

- ``PrometheusSource(url)``: instant queries to ``/api/v1/query`` over the last ``W`` seconds
  (``increase(...[W])``, ``histogram_quantile(0.99, sum by (le) (rate(..._bucket[W])))``);
- ``ScrapeSource({"stable": [urls], "canary": [urls]})``: the predictors' own ``/metrics``, scraped at the start
  and at the end of the window; counter deltas (a counter that went down restarted: its delta is its new value)
  and the p99 of the bucket deltas. Matchers on labels a sample does not carry (``job``, ``pod``: labels
  Prometheus adds) are ignored there, since the URL already picks the pod.

``analyze_step`` turns the two variants' numbers into a ``StepAnalysis`` with a verdict:

- ``insufficient_data``: the canary answered fewer than ``min_requests`` in the window. No threshold is judged
  on so few requests. Policy (``next_action``): extend the window (re-analyse over the longer, cumulative window)
  at most ``max_extensions`` times, then roll back; a canary that never gets enough traffic is not proven safe.
- ``rollback``: at least one threshold is breached; each breach is a reason with its numbers.
- ``advance``: every threshold holds.

Checks against stable (error-rate increase, p99 ratio) need stable to have ``min_requests`` too; otherwise (at
the 100% step stable gets no traffic) they are skipped and the analysis says so, and the absolute checks decide.
A metrics source that cannot answer raises ``MetricsUnavailable`` (a ``KfopsError`` naming the URL and the
query): that is no verdict, and the rollout loop must keep (or put back) all traffic on stable.

``analyses_markdown`` renders a list of step analyses for a report artifact; ``analysis_metrics`` gives a flat
dict of numbers for ``mlflow.log_metrics(..., step=analysis.step)``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.components.contracts.delivery import CanaryThresholds
from kfops.components.rollout.metric_sources import MetricSource, Variant, WindowStats, _check_window

log = logging.getLogger(__name__)

ADVANCE = "advance"
ROLLBACK = "rollback"
INSUFFICIENT_DATA = "insufficient_data"
VERDICTS = (ADVANCE, ROLLBACK, INSUFFICIENT_DATA)
EXTEND = "extend"  # next_action's third answer: hold the step for another window
DEFAULT_MAX_EXTENSIONS = 2


# ------------------------------------------------------------------------------------------------- analysis
@dataclass
class Check:
    """One threshold judged: ``passed`` is None when it was skipped (``detail`` says why)."""

    name: str
    value: float | None
    limit: float | None
    passed: bool | None
    detail: str


@dataclass
class StepAnalysis:
    """The verdict of one canary step window, with every number it rests on."""

    step: int
    traffic_percent: float | None
    window_s: float
    stable: WindowStats
    canary: WindowStats
    verdict: str
    reasons: list[str]
    checks: list[Check]
    thresholds: CanaryThresholds
    source: str
    ended_at: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "traffic_percent": self.traffic_percent,
            "window_s": self.window_s,
            "stable": self.stable.to_dict(),
            "canary": self.canary.to_dict(),
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "checks": [asdict(c) for c in self.checks],
            "thresholds": self.thresholds.to_dict(),
            "source": self.source,
            "ended_at": self.ended_at,
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepAnalysis:
        return cls(
            step=int(data["step"]),
            traffic_percent=data.get("traffic_percent"),
            window_s=float(data["window_s"]),
            stable=WindowStats.from_dict(data["stable"]),
            canary=WindowStats.from_dict(data["canary"]),
            verdict=data["verdict"],
            reasons=list(data.get("reasons", [])),
            checks=[Check(**c) for c in data.get("checks", [])],
            thresholds=CanaryThresholds.from_dict(data.get("thresholds")),
            source=data.get("source", ""),
            ended_at=data.get("ended_at", ""),
            notes=list(data.get("notes", [])),
        )

    @classmethod
    def from_json(cls, text: str) -> StepAnalysis:
        return cls.from_dict(json.loads(text))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f} s"


def _count(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 or value >= 100 else f"{value:.1f}"


def judge(
    stable: WindowStats, canary: WindowStats, thresholds: CanaryThresholds
) -> tuple[str, list[str], list[Check], list[str]]:
    """The verdict on two variants' window numbers: (verdict, reasons, checks, notes)."""
    t = thresholds
    checks: list[Check] = []
    notes: list[str] = []
    if canary.requests < t.min_requests:
        reason = (
            f"canary answered {_count(canary.requests)} requests in {canary.window_s:g} s, fewer than the "
            f"{t.min_requests} needed to judge it"
        )
        if canary.errors_5xx > 0:
            reason += f" ({_count(canary.errors_5xx)} of them 5xx)"
        checks.append(Check("min_requests", canary.requests, float(t.min_requests), False, reason))
        return INSUFFICIENT_DATA, [reason], checks, notes
    checks.append(
        Check(
            "min_requests", canary.requests, float(t.min_requests), True, f"canary answered {_count(canary.requests)}"
        )
    )

    rate = canary.error_rate or 0.0
    breach = rate > t.max_error_rate
    checks.append(
        Check(
            "error_rate",
            rate,
            t.max_error_rate,
            not breach,
            f"canary error rate {_pct(rate)} ({_count(canary.errors_5xx)} of {_count(canary.requests)} requests "
            f"answered 5xx) {'is above' if breach else 'is within'} the limit {_pct(t.max_error_rate)}",
        )
    )

    stable_usable = stable.requests >= t.min_requests
    if not stable_usable:
        notes.append(
            f"stable answered {_count(stable.requests)} requests (fewer than {t.min_requests}): the checks against "
            "stable were skipped"
        )
    if stable_usable:
        stable_rate = stable.error_rate or 0.0
        increase = rate - stable_rate
        breach = increase > t.max_error_rate_increase
        checks.append(
            Check(
                "error_rate_increase",
                increase,
                t.max_error_rate_increase,
                not breach,
                f"canary error rate {_pct(rate)} is {increase * 100:+.2f} points against stable's {_pct(stable_rate)} "
                f"({'above' if breach else 'within'} the limit of +{t.max_error_rate_increase * 100:.2f} points)",
            )
        )
    else:
        checks.append(
            Check("error_rate_increase", None, t.max_error_rate_increase, None, "skipped: too few stable requests")
        )

    p99 = canary.p99_seconds
    if t.max_p99_seconds is not None:
        if p99 is None:
            checks.append(Check("p99_seconds", None, t.max_p99_seconds, None, "skipped: no canary latency observed"))
        else:
            breach = p99 > t.max_p99_seconds
            checks.append(
                Check(
                    "p99_seconds",
                    p99,
                    t.max_p99_seconds,
                    not breach,
                    f"canary p99 latency {_secs(p99)} {'is above' if breach else 'is within'} the limit "
                    f"{_secs(t.max_p99_seconds)}",
                )
            )

    if p99 is None:
        checks.append(Check("p99_ratio", None, None, None, "skipped: no canary latency observed"))
    elif not stable_usable or stable.p99_seconds is None:
        checks.append(Check("p99_ratio", None, None, None, "skipped: no stable latency to compare with"))
    else:
        base = stable.p99_seconds
        limit = max(base * t.max_p99_ratio, base + t.p99_slack_seconds)
        breach = p99 > limit
        ratio = p99 / base if base > 0 else math.inf
        checks.append(
            Check(
                "p99_ratio",
                p99,
                limit,
                not breach,
                f"canary p99 latency {_secs(p99)} is {ratio:.2f} x stable's {_secs(base)} "
                f"({'above' if breach else 'within'} the limit {_secs(limit)}: the larger of "
                f"{t.max_p99_ratio:g} x stable and stable + {t.p99_slack_seconds:g} s)",
            )
        )

    reasons = [c.detail for c in checks if c.passed is False]
    return (ROLLBACK if reasons else ADVANCE), reasons, checks, notes


def analyze_step(
    source: MetricSource,
    stable_selector: str,
    canary_selector: str,
    window_s: float,
    thresholds: CanaryThresholds | None = None,
    *,
    step: int = 0,
    traffic_percent: float | None = None,
    hold: bool = True,
    sleep=time.sleep,
) -> StepAnalysis:
    """Compare canary with stable over one window and give the verdict.

    ``hold=True`` marks the window's start, sleeps ``window_s`` (the step is held while traffic flows), then
    reads the numbers. ``hold=False`` reads the window that just ended: with Prometheus the last ``window_s``
    seconds; with ScrapeSource the time since the caller's own ``source.begin_window(...)``.
    Raises ``MetricsUnavailable`` when the source cannot answer (then traffic must stay on stable).
    """
    window_s = _check_window(window_s)
    thresholds = thresholds or CanaryThresholds()
    stable = Variant("stable", stable_selector)
    canary = Variant("canary", canary_selector)
    for variant in (stable, canary):
        variant.matchers()
    if hold:
        source.begin_window([stable, canary])
        sleep(window_s)
    stable_stats = source.window_stats(stable, window_s)
    canary_stats = source.window_stats(canary, window_s)
    verdict, reasons, checks, notes = judge(stable_stats, canary_stats, thresholds)
    analysis = StepAnalysis(
        step=step,
        traffic_percent=traffic_percent,
        window_s=canary_stats.window_s,
        stable=stable_stats,
        canary=canary_stats,
        verdict=verdict,
        reasons=reasons,
        checks=checks,
        thresholds=thresholds,
        source=source.description,
        ended_at=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=notes,
    )
    log.info("canary step %d: %s %s", step, verdict, "; ".join(reasons))
    return analysis


def next_action(analysis: StepAnalysis, extensions_used: int, max_extensions: int = DEFAULT_MAX_EXTENSIONS) -> str:
    """What the rollout loop does after a step's analysis: ``advance``, ``rollback`` or ``extend``.

    ``insufficient_data`` extends the step: hold it for another window and analyse again over the cumulative
    window (``window_s * (extensions_used + 2)`` with Prometheus; with ScrapeSource do not begin a new window),
    at most ``max_extensions`` times; after that the canary is rolled back, since it was never shown healthy.
    """
    if analysis.verdict == ADVANCE:
        return ADVANCE
    if analysis.verdict == ROLLBACK:
        return ROLLBACK
    if analysis.verdict != INSUFFICIENT_DATA:
        raise KfopsError(f"unknown canary verdict {analysis.verdict!r}; known: {', '.join(VERDICTS)}")
    return EXTEND if extensions_used < max_extensions else ROLLBACK


# ------------------------------------------------------------------------------------------------- reporting
_VERDICT_CODE = {ADVANCE: 1.0, INSUFFICIENT_DATA: 0.0, ROLLBACK: -1.0}


def analysis_metrics(analysis: StepAnalysis) -> dict[str, float]:
    """Flat numbers for ``mlflow.log_metrics(metrics, step=analysis.step)``; values that do not exist are left out.

    Keys: ``canary.requests``, ``canary.errors_5xx``, ``canary.errors_4xx``, ``canary.error_rate``,
    ``canary.p99_seconds`` and the same for ``stable.``; ``canary.traffic_percent``, ``canary.window_s`` and
    ``canary.verdict`` (1 advance, 0 insufficient data, -1 rollback).
    """
    metrics: dict[str, float] = {}
    for stats in (analysis.stable, analysis.canary):
        prefix = stats.variant
        for key in ("requests", "errors_5xx", "errors_4xx", "error_rate", "p99_seconds"):
            value = getattr(stats, key)
            if value is not None and math.isfinite(value):
                metrics[f"{prefix}.{key}"] = float(value)
    if analysis.traffic_percent is not None:
        metrics["canary.traffic_percent"] = float(analysis.traffic_percent)
    metrics["canary.window_s"] = float(analysis.window_s)
    metrics["canary.verdict"] = _VERDICT_CODE[analysis.verdict]
    return metrics


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def analyses_markdown(analyses: Sequence[StepAnalysis], title: str = "Canary analysis") -> str:
    """A Markdown report: per step, a table of both variants' numbers, the checks, the verdict and its reasons."""
    lines = [f"# {title}", ""]
    if not analyses:
        return "\n".join([*lines, "No step was analysed.", ""])
    first = analyses[0]
    lines += [
        f"Source: {_md(first.source)}  ",
        f"Stable: `{_md(first.stable.selector)}` · canary: `{_md(first.canary.selector)}`",
        "",
    ]
    for a in analyses:
        traffic = "" if a.traffic_percent is None else f" · {a.traffic_percent:g}% canary"
        lines += [f"## Step {a.step}{traffic} · {a.window_s:g} s window: **{a.verdict}**", ""]
        lines += ["| | stable | canary |", "|---|---:|---:|"]
        s, c = a.stable, a.canary
        lines += [
            f"| requests | {_count(s.requests)} | {_count(c.requests)} |",
            f"| 5xx errors | {_count(s.errors_5xx)} | {_count(c.errors_5xx)} |",
            f"| 4xx (client) | {_count(s.errors_4xx)} | {_count(c.errors_4xx)} |",
            f"| error rate | {_pct(s.error_rate)} | {_pct(c.error_rate)} |",
            f"| p99 latency | {_secs(s.p99_seconds)} | {_secs(c.p99_seconds)} |",
            "",
            "| check | value | limit | result |",
            "|---|---:|---:|---|",
        ]
        for check in a.checks:
            if check.passed is None:
                result = "skipped"
            elif check.passed:
                result = "pass"
            else:
                result = "**too few**" if check.name == "min_requests" else "**breach**"
            value = _fmt_check(check.name, check.value)
            limit = _fmt_check(check.name, check.limit)
            lines.append(f"| {check.name} | {value} | {limit} | {result}: {_md(check.detail)} |")
        lines.append("")
        if a.reasons:
            lines += [f"- {_md(r)}" for r in a.reasons]
        else:
            lines.append("- every threshold held")
        lines += [f"- note: {_md(n)}" for n in a.notes]
        lines.append("")
    return "\n".join(lines)


def _fmt_check(name: str, value: float | None) -> str:
    if value is None:
        return ""
    if name.startswith("error_rate"):
        return _pct(value)
    if name.startswith("p99"):
        return _secs(value)
    return _count(value)
