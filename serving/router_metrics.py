"""The router's Prometheus metrics (``RouterMetrics``: one registry per Router), named in ``router``'s docstring."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from kfops.serving.router_types import DIFF_BUCKETS, LATENCY_BUCKETS


# ------------------------------------------------------------------------------------------------ metrics
class RouterMetrics:
    """The router's Prometheus collectors, on a registry of their own (one per Router)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "router_requests_total",
            "Answers to callers, by the variant that served them (stable, challenger, mixed; none: the router "
            "answered itself) and status code.",
            ["variant", "status_code"],
            registry=r,
        )
        self.latency = Histogram(
            "router_request_latency_seconds",
            "Seconds from a request's arrival to its answer, by serving variant.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter("router_rows_total", "Rows routed in ab mode, by variant.", ["variant"], registry=r)
        self.upstream = Counter(
            "router_upstream_requests_total",
            "Calls to each upstream (shadow calls included), by outcome: status code, timeout or unreachable.",
            ["variant", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "router_upstream_latency_seconds",
            "Seconds per upstream call, by variant.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "router_fallbacks_total",
            "Challenger calls that failed and were served by stable instead, by reason (5xx, timeout, unreachable).",
            ["reason"],
            registry=r,
        )
        self.shadow = Counter(
            "router_shadow_requests_total",
            "Shadow copies: sent to the challenger (then completed or failed), or shed (not sent: best effort).",
            ["outcome"],
            registry=r,
        )
        self.shadow_shed = Counter(
            "router_shadow_shed_total",
            "Shadow copies not sent, by reason: busy (callers or shadow calls at their limit and the queue full), "
            "stale (queued too long), closing (the router stopped).",
            ["reason"],
            registry=r,
        )
        self.shadow_in_flight = Gauge("router_shadow_in_flight", "Shadow calls now in flight.", registry=r)
        self.shadow_queued = Gauge("router_shadow_queued", "Shadow copies waiting to be sent.", registry=r)
        self.agreement = Counter(
            "router_shadow_agreement_total",
            "Shadowed rows whose predicted class agreed (agree=true) or not between stable and challenger.",
            ["agree"],
            registry=r,
        )
        self.diff_total = Counter(
            "router_shadow_probability_abs_diff_total",
            "Sum over shadowed rows of |stable probability - challenger probability|.",
            registry=r,
        )
        self.mean_diff = Histogram(
            "router_shadow_mean_abs_probability_diff",
            "Per shadowed request: the mean |stable probability - challenger probability| of its rows.",
            buckets=DIFF_BUCKETS,
            registry=r,
        )
        self.split = Gauge("router_split_percent", "The challenger's percent, by mode.", ["mode"], registry=r)
        if process:
            ProcessCollector(registry=r)
        self._children: dict = {}

    def child(self, metric, *labels):
        """A labelled child, cached: ``labels()`` takes a lock and builds a key on every call."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (0.0 when absent): for tests and diagnostics."""
        return float(self.registry.get_sample_value(name, labels or {}) or 0.0)
