"""Where canary analysis gets its numbers: a variant's PromQL selector (parsed, matched), the window's
requests, 5xx errors and latency quantile, from Prometheus (``PrometheusSource``) or the predictors' own
``/metrics`` scraped twice (``ScrapeSource``), behind one ``MetricSource`` interface.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from kfops.components import http
from kfops.components.contracts import KfopsError
from kfops.components.contracts.delivery import is_finite_number

LATENCY_QUANTILE = 0.99
REQUESTS_METRIC = "model_requests_total"
LATENCY_METRIC = "model_prediction_latency_seconds"
LATENCY_STAGE = "total"

_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


class MetricsUnavailable(KfopsError):
    """The metrics source did not answer (unreachable, an HTTP error, a query error): no verdict is possible."""


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
    if not is_finite_number(window_s) or window_s <= 0:
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
        try:
            answer = http.get_json(
                f"{self.url}/api/v1/query", params={"query": expr}, headers=self.headers, timeout=self.timeout
            )
        except http.StatusError as err:
            detail = _prometheus_error(err.body)
            message = f"Prometheus at {self.url} answered HTTP {err.status} to query {expr}"
            raise MetricsUnavailable(message + (f": {detail}" if detail else "")) from err
        except http.NotJSON as err:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} answered query {expr} with something that is not JSON: {err.body[:200]!r}"
            ) from err
        except http.Unreachable as err:
            raise MetricsUnavailable(f"Prometheus at {self.url} is unreachable ({err.reason}); query: {expr}") from err
        if not isinstance(answer, dict) or answer.get("status") != "success":
            detail = _error_detail(answer) or repr(answer)[:300]
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
    return _error_detail(answer)


def _error_detail(answer: Any) -> str:
    """Prometheus' ``errorType: error`` from a decoded answer; "" when it has none."""
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
            text = http.get(url, timeout=self.timeout).text()
        except http.StatusError as err:
            raise MetricsUnavailable(f"predictor metrics at {url} answered HTTP {err.status}") from err
        except http.Unreachable as err:
            raise MetricsUnavailable(f"predictor metrics at {url} are unreachable ({err.reason})") from err
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
