"""Canary analysis: compare a canary with the stable model over one step window, from Prometheus or /metrics.

A variant (stable or canary) is a PromQL label selector over the predictors' metrics (``kfops.serving.metrics``):
by default ``model="<served name>",version="<model version>"``, plus any matchers that tell pods apart in a
cluster (``revision="..."``, ``job="..."``). Per variant and window the analysis reads:

- requests: answers of the scoring endpoints, ``model_requests_total`` summed over ``status_code``;
- 5xx errors: those with a ``5..`` status. 4xx answers are the client's mistakes, not the canary's, and count
  only as requests;
- p99 latency: the 0.99 quantile of ``model_prediction_latency_seconds{stage="total"}`` (successful requests),
  linearly interpolated within the histogram's buckets as PromQL's ``histogram_quantile`` does.

Two sources give these numbers through one interface (``MetricSource``):

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
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from kfops.components.contracts import KfopsError

log = logging.getLogger(__name__)

ADVANCE = "advance"
ROLLBACK = "rollback"
INSUFFICIENT_DATA = "insufficient_data"
VERDICTS = (ADVANCE, ROLLBACK, INSUFFICIENT_DATA)
EXTEND = "extend"  # next_action's third answer: hold the step for another window

LATENCY_QUANTILE = 0.99
REQUESTS_METRIC = "model_requests_total"
LATENCY_METRIC = "model_prediction_latency_seconds"
LATENCY_STAGE = "total"
DEFAULT_MAX_EXTENSIONS = 2

_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


class MetricsUnavailable(KfopsError):
    """The metrics source did not answer (unreachable, an HTTP error, a query error): no verdict is possible."""


# ---------------------------------------------------------------------------------------------- thresholds
@dataclass
class CanaryThresholds:
    """What a canary must hold in each step window.

    - ``max_error_rate``: the canary's share of 5xx answers, at most this (0.01 = 1%).
    - ``max_error_rate_increase``: canary error rate minus stable's, at most this (absolute, 0.005 = 0.5 points).
    - ``max_p99_seconds``: the canary's p99 latency, at most this many seconds (None: no absolute limit).
    - ``max_p99_ratio`` and ``p99_slack_seconds``: the canary's p99 at most the larger of ``ratio x stable p99``
      and ``stable p99 + slack``; the slack keeps millisecond jitter on tiny latencies from tripping the ratio.
    - ``min_requests``: requests each variant must answer in the window before it is judged (the canary at all,
      stable for the checks against it).
    """

    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.005
    max_p99_seconds: float | None = None
    max_p99_ratio: float = 1.5
    p99_slack_seconds: float = 0.025
    min_requests: int = 50

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        for name in ("max_error_rate", "max_error_rate_increase"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise KfopsError(f"canary thresholds: {name} must be a share between 0 and 1, got {value!r}")
        if self.max_p99_seconds is not None and (not _is_number(self.max_p99_seconds) or self.max_p99_seconds <= 0):
            raise KfopsError(
                f"canary thresholds: max_p99_seconds must be a positive number of seconds or None, "
                f"got {self.max_p99_seconds!r}"
            )
        if not _is_number(self.max_p99_ratio) or self.max_p99_ratio < 1.0:
            raise KfopsError(f"canary thresholds: max_p99_ratio must be a number >= 1, got {self.max_p99_ratio!r}")
        if not _is_number(self.p99_slack_seconds) or self.p99_slack_seconds < 0:
            raise KfopsError(
                f"canary thresholds: p99_slack_seconds must be a number of seconds >= 0, got {self.p99_slack_seconds!r}"
            )
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise KfopsError(f"canary thresholds: min_requests must be an integer >= 1, got {self.min_requests!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CanaryThresholds:
        """Thresholds from a mapping (e.g. parsed JSON/YAML); missing keys keep their defaults."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise KfopsError(f"canary thresholds must be a mapping of name to value, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise KfopsError(
                f"canary thresholds: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None  # PromQL regexes are anchored
        return found if self.op == "=~" else not found


def parse_selector(selector: str) -> list[Matcher]:
    """PromQL label matchers (``model="fraud",version=~"3|4"``, braces optional) -> Matchers."""
    if not isinstance(selector, str):
        raise KfopsError(f"variant selector must be a string of PromQL label matchers, got {selector!r}")
    text = selector.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    matchers: list[Matcher] = []
    pos = 0
    while pos < len(text):
        found = _MATCHER.match(text, pos)
        if found is None or found.end() == pos:
            raise KfopsError(
                f"variant selector {selector!r} is not a list of PromQL label matchers "
                f'(label="value", label=~"regex", ...): cannot read it from {text[pos:]!r}'
            )
        label, op, raw = found.group(1), found.group(2), found.group(3)
        value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw)
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as err:
                raise KfopsError(f"variant selector {selector!r}: bad regex {value!r} for {label}: {err}") from err
        matchers.append(Matcher(label, op, value))
        pos = found.end()
    if not matchers:
        raise KfopsError('variant selector is empty: name at least the model, e.g. model="fraud",version="3"')
    return matchers


def _quote(value: str) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def variant_selector(model: str, version: str | int, extra: str = "") -> str:
    """The default selector of a variant: ``model="<name>",version="<version>"`` plus ``extra`` matchers."""
    if not str(model).strip() or not str(version).strip():
        raise KfopsError(f"a variant needs a model name and a version, got model={model!r} version={version!r}")
    selector = f"model={_quote(model)},version={_quote(str(version))}"
    if extra and extra.strip():
        extra_text = extra.strip().strip("{}").strip().strip(",")
        parse_selector(extra_text)  # a clear error for bad extra matchers
        selector = f"{selector},{extra_text}"
    return selector


@dataclass(frozen=True)
class Variant:
    name: str  # "stable" or "canary": what ScrapeSource looks its URLs up by
    selector: str  # PromQL label matchers, without braces

    def matchers(self) -> list[Matcher]:
        return parse_selector(self.selector)


# --------------------------------------------------------------------------------------------- window stats
@dataclass
class WindowStats:
    """One variant's numbers over one window. Counts are floats: Prometheus' ``increase`` extrapolates."""

    variant: str
    selector: str
    window_s: float
    requests: float = 0.0
    errors_5xx: float = 0.0
    errors_4xx: float = 0.0
    latency_count: float = 0.0  # requests in the latency histogram (successful ones)
    p99_seconds: float | None = None  # None: no latency observed in the window

    @property
    def error_rate(self) -> float | None:
        """Share of 5xx answers, None without requests."""
        if self.requests <= 0:
            return None
        return min(1.0, max(0.0, self.errors_5xx / self.requests))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_rate"] = self.error_rate
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowStats:
        return cls(**{k: v for k, v in data.items() if k != "error_rate"})


class MetricSource(Protocol):
    """Where window numbers come from."""

    description: str

    def begin_window(self, variants: Sequence[Variant]) -> None:
        """Mark the start of a window (ScrapeSource takes its first scrape; Prometheus needs nothing)."""

    def window_stats(self, variant: Variant, window_s: float) -> WindowStats:
        """The variant's numbers over the window that ends now and lasted ``window_s`` seconds."""


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative histogram buckets ``[(upper bound, count), ...]`` (one must be +Inf), by
    linear interpolation within the bucket that holds it: PromQL's ``histogram_quantile`` (Prometheus 2.x
    ``bucketQuantile``). None when there are no observations or no +Inf bucket."""
    if math.isnan(q):
        return None
    merged: dict[float, float] = {}
    for upper, count in buckets:
        merged[float(upper)] = merged.get(float(upper), 0.0) + float(count)  # same le from several series: sum
    ordered = sorted(merged.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]) or ordered[-1][0] < 0:
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    # Counts of a cumulative histogram never go down; deltas with scrape skew can: flatten like Prometheus.
    uppers = [u for u, _ in ordered]
    counts = []
    running = 0.0
    for _, count in ordered:
        running = max(running, count)
        counts.append(running)
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    b = next((i for i in range(len(counts) - 1) if counts[i] >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return uppers[-2]
    if b == 0 and uppers[0] <= 0:
        return uppers[0]
    start, end, count = 0.0, uppers[b], counts[b]
    if b > 0:
        start = uppers[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def _classify_status(stats: WindowStats, status_code: str, count: float) -> None:
    stats.requests += count
    if status_code.startswith("5"):
        stats.errors_5xx += count
    elif status_code.startswith("4"):
        stats.errors_4xx += count


def _duration(window_s: float) -> str:
    millis = round(window_s * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _check_window(window_s: float) -> float:
    if not _is_number(window_s) or window_s <= 0:
        raise KfopsError(f"canary analysis window must be a positive number of seconds, got {window_s!r}")
    return float(window_s)


# --------------------------------------------------------------------------------------------- Prometheus
class PrometheusSource:
    """Window numbers from Prometheus' HTTP query API (instant queries at the moment of the call)."""

    def __init__(self, url: str, timeout: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise KfopsError(f"Prometheus URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.description = f"Prometheus {self.url}"

    def begin_window(self, variants: Sequence[Variant]) -> None:
        for variant in variants:
            variant.matchers()  # a bad selector fails before the window is held, not after

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (``[{"metric": {...}, "value": [t, "x"]}, ...]``)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        request = urllib.request.Request(url, headers={"Accept": "application/json", **self.headers})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            detail = _prometheus_error(err.read())
            raise MetricsUnavailable(
                f"Prometheus at {self.url} answered HTTP {err.code} to query {expr}" + (f": {detail}" if detail else "")
            ) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise MetricsUnavailable(f"Prometheus at {self.url} is unreachable ({reason}); query: {expr}") from err
        try:
            answer = json.loads(body)
        except ValueError as err:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} answered query {expr} with something that is not JSON: {body[:200]!r}"
            ) from err
        if not isinstance(answer, dict) or answer.get("status") != "success":
            detail = _prometheus_error(body) or repr(answer)[:300]
            raise MetricsUnavailable(f"Prometheus at {self.url} failed query {expr}: {detail}")
        data = answer.get("data") or {}
        if data.get("resultType") != "vector":
            raise MetricsUnavailable(
                f"Prometheus at {self.url}: query {expr} gave a {data.get('resultType')!r} result, expected a vector"
            )
        return list(data.get("result") or [])

    def window_stats(self, variant: Variant, window_s: float) -> WindowStats:
        window_s = _check_window(window_s)
        selector = ",".join(f"{m.label}{m.op}{_quote(m.value)}" for m in variant.matchers())
        w = _duration(window_s)
        stats = WindowStats(variant.name, variant.selector, window_s)
        for row in self.query(f"sum by (status_code) (increase({REQUESTS_METRIC}{{{selector}}}[{w}]))"):
            count = _sample_value(row)
            if count is not None:
                _classify_status(stats, str(row.get("metric", {}).get("status_code", "")), count)
        latency = f'{LATENCY_METRIC}_bucket{{stage="{LATENCY_STAGE}",{selector}}}'
        for row in self.query(
            f"sum(increase({LATENCY_METRIC}_count{{stage={_quote(LATENCY_STAGE)},{selector}}}[{w}]))"
        ):
            stats.latency_count = _sample_value(row) or 0.0
        if stats.latency_count > 0:
            rows = self.query(f"histogram_quantile({LATENCY_QUANTILE}, sum by (le) (rate({latency}[{w}])))")
            values = [v for v in (_sample_value(r) for r in rows) if v is not None]
            stats.p99_seconds = values[0] if values else None
        return stats


def _sample_value(row: Mapping[str, Any]) -> float | None:
    try:
        value = float(row["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _prometheus_error(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip()
    if isinstance(answer, dict) and answer.get("error"):
        return f"{answer.get('errorType', 'error')}: {answer['error']}"
    return ""


# ------------------------------------------------------------------------------------------------- scraping
_Series = tuple[str, frozenset]  # (sample name, frozenset of label items)


class ScrapeSource:
    """Window numbers from the predictors' own ``/metrics``, scraped at the window's start and end.

    ``urls`` maps a variant name (``stable``, ``canary``) to the metrics URL of each of its pods (a URL without
    a path gets ``/metrics``); the counts of all of a variant's URLs are summed.
    """

    def __init__(self, urls: Mapping[str, str | Sequence[str]], timeout: float = 5.0) -> None:
        if not isinstance(urls, Mapping) or not urls:
            raise KfopsError("ScrapeSource needs a mapping of variant name to /metrics URL(s)")
        self.urls: dict[str, list[str]] = {}
        for name, value in urls.items():
            listed = [value] if isinstance(value, str) else list(value)
            if not listed:
                raise KfopsError(f"ScrapeSource: variant {name!r} has no /metrics URL")
            for url in listed:
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    raise KfopsError(f"ScrapeSource: variant {name!r}: {url!r} is not an http(s) URL")
            self.urls[name] = [_metrics_url(u) for u in listed]
        self.timeout = timeout
        self.description = "scraped /metrics of " + "; ".join(f"{k}: {', '.join(v)}" for k, v in self.urls.items())
        self._start: dict[str, tuple[float, dict[_Series, float]]] = {}

    def _urls(self, variant: Variant) -> list[str]:
        if variant.name not in self.urls:
            raise KfopsError(
                f"ScrapeSource has no /metrics URL for variant {variant.name!r} (it has: {', '.join(self.urls)})"
            )
        return self.urls[variant.name]

    def scrape(self, url: str) -> dict[_Series, float]:
        """The samples of one /metrics page that the analysis reads: ``{(name, labels): value}``."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as err:
            raise MetricsUnavailable(f"predictor metrics at {url} answered HTTP {err.code}") from err
        except (urllib.error.URLError, OSError) as err:
            raise MetricsUnavailable(
                f"predictor metrics at {url} are unreachable ({getattr(err, 'reason', err)})"
            ) from err
        wanted = {REQUESTS_METRIC, f"{LATENCY_METRIC}_bucket", f"{LATENCY_METRIC}_count"}
        samples: dict[_Series, float] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in wanted:
                        series = (sample.name, frozenset(sample.labels.items()))
                        samples[series] = samples.get(series, 0.0) + float(sample.value)
        except ValueError as err:
            raise MetricsUnavailable(f"predictor metrics at {url} are not Prometheus text format: {err}") from err
        return samples

    def _scrape_variant(self, variant: Variant) -> dict[_Series, float]:
        merged: dict[_Series, float] = {}
        for i, url in enumerate(self._urls(variant)):
            for (name, labels), value in self.scrape(url).items():
                # Pods expose identical label sets: keep them apart, as Prometheus' instance label would.
                key = (name, labels | {("__url_index__", str(i))})
                merged[key] = value
        return merged

    def begin_window(self, variants: Sequence[Variant]) -> None:
        for variant in variants:
            variant.matchers()
            self._start[variant.name] = (time.monotonic(), self._scrape_variant(variant))

    def window_stats(self, variant: Variant, window_s: float | None = None) -> WindowStats:
        """Numbers since ``begin_window``; ``window_s`` is not used (the window is the time between scrapes)."""
        if variant.name not in self._start:
            raise KfopsError(f"ScrapeSource: begin_window() was not called for variant {variant.name!r}")
        started, before = self._start[variant.name]  # kept: an extended window re-reads from the same start
        after = self._scrape_variant(variant)
        stats = WindowStats(variant.name, variant.selector, round(time.monotonic() - started, 3))
        matchers = variant.matchers()
        buckets: dict[float, float] = {}
        for (name, labels), value in after.items():
            label_map = {k: v for k, v in labels if k != "__url_index__"}
            # A matcher on a label the predictor does not expose (job, pod, revision: Prometheus adds those)
            # cannot select here: the URL already picks the pod.
            if not all(m.matches(label_map) for m in matchers if m.label in label_map):
                continue
            start = before.get((name, labels), 0.0)
            delta = value - start if value >= start else value  # went down: the process restarted
            if name == REQUESTS_METRIC:
                _classify_status(stats, label_map.get("status_code", ""), delta)
            elif label_map.get("stage") != LATENCY_STAGE:
                continue
            elif name.endswith("_count"):
                stats.latency_count += delta
            else:
                upper = float(label_map.get("le", "nan"))
                buckets[upper] = buckets.get(upper, 0.0) + delta
        if stats.latency_count > 0:
            stats.p99_seconds = histogram_quantile(LATENCY_QUANTILE, buckets.items())
        return stats


def _metrics_url(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    return url if parsed.path not in ("", "/") else urllib.parse.urlunparse(parsed._replace(path="/metrics"))


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
