"""Canary analysis against real parts: two `kfops serve` predictors (stable and canary versions of one model), a
fault-injecting proxy in front of the canary, a real Prometheus scraping them all, and the predictors' own
/metrics. Each scenario holds one window of real traffic, judged by both sources over that window."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import httpx
import pytest

from kfops.components.contracts import KfopsError
from kfops.components.rollout.analysis import (
    ADVANCE,
    EXTEND,
    INSUFFICIENT_DATA,
    ROLLBACK,
    CanaryThresholds,
    StepAnalysis,
    analyses_markdown,
    analysis_metrics,
    analyze_step,
    judge,
    next_action,
)
from kfops.components.rollout.metric_sources import (
    MetricsUnavailable,
    PrometheusSource,
    ScrapeSource,
    Variant,
    WindowStats,
    histogram_quantile,
    parse_selector,
    variant_selector,
)
from tests.conftest import free_port
from tests.serving.conftest import registered_model  # noqa: F401  (the session's tiny real model)
from tests.serving.helpers import v1_objects

from .canary_env import (
    SERVED_NAME,
    FaultProxy,
    Load,
    Predictor,
    PrometheusServer,
    StaticHistogramExporter,
    need_prometheus,
    prometheus_binary,
)

CANARY_MODEL = "fraud-canary-analysis"
WINDOW_S = 4.0
# Real-traffic thresholds: the defaults, with a p99 slack wide enough that a scheduling hiccup on a shared 2-core
# machine does not fail a healthy canary, and narrow enough that +200 ms does.
THRESHOLDS = CanaryThresholds(p99_slack_seconds=0.1)
STATIC_RATES = {"0.005": 10.0, "0.01": 30.0, "0.025": 70.0, "0.05": 90.0, "0.1": 97.0, "0.25": 99.5, "+Inf": 100.0}


# --------------------------------------------------------------------------------------------- the real world
@dataclass
class World:
    stable: Predictor
    canary: Predictor
    errors: FaultProxy  # canary, every 10th request a 500
    slow: FaultProxy  # canary, +200 ms
    exporter: StaticHistogramExporter
    prometheus: PrometheusServer | None
    stable_version: str
    canary_version: str
    rows: list[dict]

    def selector(self, version: str, job: str) -> str:
        return variant_selector(SERVED_NAME, version, f'job="{job}"')


@pytest.fixture(scope="module")
def world(registered_model, tmp_path_factory):  # noqa: F811
    import mlflow

    m = registered_model
    root = tmp_path_factory.mktemp("canary")
    client = mlflow.MlflowClient(m.tracking_uri)
    logged = client.get_model_version(m.name, m.version)
    client.create_registered_model(CANARY_MODEL)
    # The same trained model registered twice: stable and canary differ in version, as a retrained model would.
    stable_version = client.create_model_version(CANARY_MODEL, logged.source, logged.run_id).version
    canary_version = client.create_model_version(CANARY_MODEL, logged.source, logged.run_id).version
    stable = Predictor(f"{CANARY_MODEL}/{stable_version}", m.tracking_uri, root / "stable.log")
    canary = Predictor(f"{CANARY_MODEL}/{canary_version}", m.tracking_uri, root / "canary.log")
    started = [stable, canary]
    try:
        stable.wait_ready()
        canary.wait_ready()
        errors = FaultProxy(canary.base, str(canary_version), error_every=10)
        started.append(errors)
        slow = FaultProxy(canary.base, str(canary_version), delay_s=0.2)
        started.append(slow)
        exporter = StaticHistogramExporter(STATIC_RATES)
        started.append(exporter)
        binary = prometheus_binary()
        prometheus = None
        if binary:
            targets = {
                "stable": stable.target,
                "canary": canary.target,
                "canary-5xx": errors.target,
                "canary-slow": slow.target,
                "static": exporter.target,
            }
            prometheus = PrometheusServer(binary, root / "prometheus", targets)
            started.append(prometheus)
            prometheus.wait_targets_up(targets)
        rows = v1_objects(m.rows.head(64))
        yield World(stable, canary, errors, slow, exporter, prometheus, str(stable_version), str(canary_version), rows)
    finally:
        for part in reversed(started):
            part.stop()


@dataclass
class Window:
    scrape: StepAnalysis
    prometheus: StepAnalysis | None
    canary_statuses: dict[int, int]


def hold_window(world: World, canary_base: str, job: str, threads: int, pause_s: float) -> Window:
    """Real traffic to stable and to the canary for one window; the window judged from the predictors' own
    /metrics (scraped at its start and end) and then from Prometheus over the same last WINDOW_S seconds."""
    stable_selector = world.selector(world.stable_version, "stable")
    canary_selector = world.selector(world.canary_version, job)
    scrape = ScrapeSource({"stable": world.stable.base, "canary": canary_base})
    with (
        Load(world.stable.base, world.rows, threads=1, pause_s=0.015),
        Load(canary_base, world.rows, threads=threads, pause_s=pause_s) as canary_load,
    ):
        time.sleep(0.3)  # traffic flows before the window opens, as it does when a step is held
        by_scrape = analyze_step(scrape, stable_selector, canary_selector, WINDOW_S, THRESHOLDS, step=1)
        by_prometheus = None
        if world.prometheus is not None:
            source = PrometheusSource(world.prometheus.url)
            # Prometheus's window ends at the query, so every series must have a sample from after the scrape
            # window closed; a fixed sleep was not enough on a loaded machine, where a scrape can come seconds late.
            wait_for_scrape_after(source, (stable_selector, canary_selector), time.time())
            by_prometheus = analyze_step(source, stable_selector, canary_selector, WINDOW_S, THRESHOLDS, hold=False)
    return Window(by_scrape, by_prometheus, dict(canary_load.statuses))


def wait_for_scrape_after(source: PrometheusSource, selectors: tuple[str, ...], since: float, limit_s: float = 20):
    deadline = time.monotonic() + limit_s
    # The oldest of the newest samples of every series the selectors match (timestamp() keeps their labels apart).
    expr = "min(" + " or ".join(f"timestamp(model_requests_total{{{s}}})" for s in selectors) + ")"
    while True:
        newest = [float(row["value"][1]) for row in source.query(expr)]
        if newest and newest[0] >= since:
            return
        assert time.monotonic() < deadline, f"Prometheus took over {limit_s} s to scrape after {since}: {newest}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def healthy(world) -> Window:
    return hold_window(world, world.canary.base, "canary", threads=1, pause_s=0.015)


@pytest.fixture(scope="module")
def five_xx(world) -> Window:
    return hold_window(world, world.errors.base, "canary-5xx", threads=1, pause_s=0.015)


@pytest.fixture(scope="module")
def slow(world) -> Window:
    return hold_window(world, world.slow.base, "canary-slow", threads=8, pause_s=0.0)


@pytest.fixture(scope="module")
def quiet(world) -> Window:
    return hold_window(world, world.canary.base, "canary", threads=1, pause_s=0.5)


def by_source(window: Window, source: str) -> StepAnalysis:
    return need_prometheus(window.prometheus) if source == "prometheus" else window.scrape


SOURCES = ["prometheus", "scrape"]


# ---------------------------------------------------------------------------------------- real-traffic tests
@pytest.mark.parametrize("source", SOURCES)
def test_a_healthy_canary_advances(healthy, source):
    a = by_source(healthy, source)
    assert a.verdict == ADVANCE, analyses_markdown([a])
    assert a.reasons == []
    assert a.canary.requests >= THRESHOLDS.min_requests and a.stable.requests >= THRESHOLDS.min_requests
    assert a.canary.errors_5xx == 0 and a.canary.error_rate == 0
    assert 0 < a.canary.p99_seconds < 0.25 and 0 < a.stable.p99_seconds < 0.25
    assert {c.name: c.passed for c in a.checks} == {
        "min_requests": True,
        "error_rate": True,
        "error_rate_increase": True,
        "p99_ratio": True,
    }


@pytest.mark.parametrize("source", SOURCES)
def test_a_canary_answering_10_percent_5xx_is_rolled_back_within_one_window(five_xx, source):
    a = by_source(five_xx, source)
    assert five_xx.canary_statuses.get(500, 0) > 0
    assert a.verdict == ROLLBACK
    assert 0.07 <= a.canary.error_rate <= 0.13, a.canary
    assert a.stable.error_rate == 0
    failed = {c.name for c in a.checks if c.passed is False}
    assert failed == {"error_rate", "error_rate_increase"}
    reason = next(r for r in a.reasons if r.startswith("canary error rate") and "limit 1.00%" in r)
    assert f"{a.canary.error_rate * 100:.2f}%" in reason and "answered 5xx" in reason
    assert "is above the limit 1.00%" in reason


@pytest.mark.parametrize("source", SOURCES)
def test_a_canary_200_ms_slower_is_rolled_back_on_its_p99(slow, source):
    a = by_source(slow, source)
    assert a.verdict == ROLLBACK, analyses_markdown([a])
    # Every answer took 200+ ms: at least 0.1 + 0.15 * 0.99 (all in the (0.1, 0.25] bucket); more when a busy
    # machine pushes the slowest answers past 250 ms into a wider bucket.
    assert a.canary.p99_seconds >= 0.2485 - 0.01
    assert a.stable.p99_seconds < 0.1
    assert [c.name for c in a.checks if c.passed is False] == ["p99_ratio"]
    (reason,) = a.reasons
    assert reason.startswith(f"canary p99 latency {a.canary.p99_seconds:.4f} s is ")
    assert f"stable's {a.stable.p99_seconds:.4f} s (above the limit" in reason


@pytest.mark.parametrize("source", SOURCES)
def test_too_few_canary_requests_is_insufficient_data_then_extended_then_rolled_back(quiet, source):
    a = by_source(quiet, source)
    assert a.verdict == INSUFFICIENT_DATA
    assert 0 < a.canary.requests < THRESHOLDS.min_requests
    (reason,) = a.reasons
    assert f"fewer than the {THRESHOLDS.min_requests} needed" in reason
    assert [next_action(a, used) for used in range(4)] == [EXTEND, EXTEND, ROLLBACK, ROLLBACK]


def test_both_sources_see_the_same_traffic(healthy, five_xx):
    need_prometheus(healthy.prometheus)
    for window in (healthy, five_xx):
        scraped, queried = window.scrape, window.prometheus
        # Prometheus extrapolates its samples to the window's edges; the scrape counts exactly.
        assert queried.canary.requests == pytest.approx(scraped.canary.requests, rel=0.35)
        assert queried.stable.requests == pytest.approx(scraped.stable.requests, rel=0.35)
    assert 0.09 <= five_xx.scrape.canary.error_rate <= 0.11  # every 10th answer, counted exactly


def test_histogram_quantile_matches_prometheus_on_a_real_exporter(world):
    prometheus = need_prometheus(world.prometheus)
    source = PrometheusSource(prometheus.url)
    rates = [(float(le), rate) for le, rate in STATIC_RATES.items()]
    for q in (0.05, 0.5, 0.9, 0.99, 0.995, 0.999):
        expr = (
            f"histogram_quantile({q}, sum by (le) "
            f'(rate(model_prediction_latency_seconds_bucket{{model="static"}}[5s])))'
        )
        (row,) = source.query(expr)
        assert float(row["value"][1]) == pytest.approx(histogram_quantile(q, rates), rel=1e-9), q
    assert histogram_quantile(0.999, rates) == 0.25  # past the last finite bucket: its upper bound


def test_scrape_source_p99_is_the_bucket_deltas_quantile(world):
    source = ScrapeSource({"canary": f"http://{world.exporter.target}"})
    variant = Variant("canary", 'model="static",job="ignored-here"')
    source.begin_window([variant])
    time.sleep(0.3)
    stats = source.window_stats(variant, 0.3)
    rates = [(float(le), rate) for le, rate in STATIC_RATES.items()]
    assert stats.p99_seconds == pytest.approx(histogram_quantile(0.99, rates), rel=1e-9)
    assert stats.requests == 0  # the exporter has no request counter


def test_an_unreachable_prometheus_is_a_clear_error_naming_the_url_and_query():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MetricsUnavailable, match=rf"Prometheus at {url} is unreachable .*model_requests_total"):
        analyze_step(PrometheusSource(url, timeout=2), 'model="a",version="1"', 'model="a",version="2"', 5, hold=False)


def test_a_prometheus_query_error_and_a_non_prometheus_url_are_clear_errors(world):
    prometheus = need_prometheus(world.prometheus)
    with pytest.raises(MetricsUnavailable, match=r"answered HTTP 400 to query sum\(: bad_data: .*parse error"):
        PrometheusSource(prometheus.url).query("sum(")
    # A predictor is no Prometheus: its 404 names the URL and the query.
    with pytest.raises(MetricsUnavailable, match=rf"Prometheus at {world.stable.base} answered HTTP 404 to query up"):
        PrometheusSource(world.stable.base).query("up")


def test_an_unreachable_predictor_metrics_url_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/metrics"
    source = ScrapeSource({"stable": url, "canary": url})
    with pytest.raises(MetricsUnavailable, match=rf"predictor metrics at {url} are unreachable"):
        analyze_step(source, 'model="a",version="1"', 'model="a",version="2"', 0.1)


def test_the_report_and_the_mlflow_numbers_of_real_windows(healthy, five_xx, tmp_path):
    import mlflow

    analyses = [healthy.scrape, StepAnalysis.from_dict(five_xx.scrape.to_dict())]
    analyses[1].step, analyses[1].traffic_percent = 2, 25
    text = analyses_markdown(analyses)
    assert text.count("## Step") == 2
    assert "## Step 2 · 25% canary · " in text and ": **rollback**" in text and ": **advance**" in text
    assert f"| error rate | 0.00% | {five_xx.scrape.canary.error_rate * 100:.2f}% |" in text
    assert "| error_rate | " in text and "**breach**" in text
    assert "- every threshold held" in text
    metrics = analysis_metrics(analyses[1])
    assert metrics["canary.error_rate"] == five_xx.scrape.canary.error_rate
    assert metrics["canary.verdict"] == -1.0 and metrics["canary.traffic_percent"] == 25.0
    assert metrics["stable.requests"] == five_xx.scrape.stable.requests
    # The dict is what mlflow.log_metrics takes, step by step, into a real store.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        for a in analyses:
            mlflow.log_metrics(analysis_metrics(a), step=a.step)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "canary.verdict")
    assert [(h.step, h.value) for h in history] == [(1, 1.0), (2, -1.0)]
    again = StepAnalysis.from_json(analyses[1].to_json())
    assert again.to_dict() == analyses[1].to_dict()


# --------------------------------------------------------------------------------------------- plain logic
def stats(variant: str, requests: float, errors_5xx: float = 0, errors_4xx: float = 0, p99: float | None = 0.01):
    return WindowStats(variant, f'version="{variant}"', 60.0, requests, errors_5xx, errors_4xx, requests, p99)


def test_histogram_quantile_by_hand():
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.5, 40.0), (math.inf, 40.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)  # rank 20: halfway through (0.1, 0.2]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: the end of the first bucket
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.04)  # rank 4 in (0, 0.1]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * (39.6 - 30) / 10)
    assert histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]) is None  # no observations
    assert histogram_quantile(0.99, [(0.1, 1.0), (0.2, 2.0)]) is None  # no +Inf bucket
    # Several series with the same le are summed; a bucket lower than the one below is flattened.
    assert histogram_quantile(
        0.375, [(0.1, 5.0), (0.1, 5.0), (0.2, 9.0), (0.2, 11.0), (math.inf, 40.0)]
    ) == pytest.approx(0.15)
    assert histogram_quantile(0.5, [(0.1, 20.0), (0.2, 10.0), (math.inf, 40.0)]) == 0.1


def test_4xx_answers_are_client_errors_not_canary_faults():
    verdict, reasons, _, _ = judge(stats("s", 1000), stats("c", 200, errors_4xx=80), CanaryThresholds())
    assert verdict == ADVANCE and reasons == []


def test_each_breached_threshold_is_a_reason_with_its_numbers():
    t = CanaryThresholds(max_error_rate=0.05, max_error_rate_increase=0.01, max_p99_seconds=0.3, max_p99_ratio=2)
    verdict, reasons, checks, _ = judge(stats("s", 1000, 10, p99=0.1), stats("c", 200, 6, p99=0.35), t)
    assert verdict == ROLLBACK
    assert reasons == [
        "canary error rate 3.00% is +2.00 points against stable's 1.00% (above the limit of +1.00 points)",
        "canary p99 latency 0.3500 s is above the limit 0.3000 s",
        "canary p99 latency 0.3500 s is 3.50 x stable's 0.1000 s (above the limit 0.2000 s: the larger of "
        "2 x stable and stable + 0.025 s)",
    ]
    assert {c.name: c.passed for c in checks}["error_rate"] is True


def test_the_p99_slack_keeps_tiny_latencies_from_tripping_the_ratio():
    t = CanaryThresholds(max_p99_ratio=1.5, p99_slack_seconds=0.025)
    assert judge(stats("s", 500, p99=0.002), stats("c", 500, p99=0.02), t)[0] == ADVANCE  # 10x, but +18 ms
    verdict, reasons, _, _ = judge(stats("s", 500, p99=0.002), stats("c", 500, p99=0.03), t)
    assert verdict == ROLLBACK and "above the limit 0.0270 s" in reasons[0]


def test_without_enough_stable_traffic_only_the_absolute_checks_decide():
    t = CanaryThresholds(max_p99_seconds=0.5)
    verdict, reasons, checks, notes = judge(stats("s", 3, p99=0.001), stats("c", 400, 2, p99=0.2), t)
    assert verdict == ADVANCE and reasons == []
    skipped = {c.name for c in checks if c.passed is None}
    assert skipped == {"error_rate_increase", "p99_ratio"}
    assert notes == ["stable answered 3 requests (fewer than 50): the checks against stable were skipped"]
    assert judge(stats("s", 0), stats("c", 400, 40), t)[0] == ROLLBACK  # 10% errors, stable or not


def test_too_few_requests_is_insufficient_data_even_with_errors():
    verdict, reasons, _, _ = judge(stats("s", 1000), stats("c", 20, 5), CanaryThresholds(min_requests=50))
    assert verdict == INSUFFICIENT_DATA
    assert reasons == ["canary answered 20 requests in 60 s, fewer than the 50 needed to judge it (5 of them 5xx)"]


def test_next_action_policy():
    advance = StepAnalysis(0, 10, 60, stats("s", 1), stats("c", 1), ADVANCE, [], [], CanaryThresholds(), "x")
    assert next_action(advance, 5) == ADVANCE
    advance.verdict = ROLLBACK
    assert next_action(advance, 0) == ROLLBACK
    advance.verdict = INSUFFICIENT_DATA
    assert next_action(advance, 0, max_extensions=0) == ROLLBACK
    assert next_action(advance, 0, max_extensions=1) == EXTEND


def test_selectors_and_thresholds_are_checked():
    assert variant_selector("fraud", 3, 'revision="fraud-predictor-00002"') == (
        'model="fraud",version="3",revision="fraud-predictor-00002"'
    )
    assert [(m.label, m.op, m.value) for m in parse_selector('{job=~"canary.*", pod!="x\\"y"}')] == [
        ("job", "=~", "canary.*"),
        ("pod", "!=", 'x"y'),
    ]
    assert parse_selector('job=~"canary.*"')[0].matches({"job": "canary-5xx"})
    assert not parse_selector('job=~"canary"')[0].matches({"job": "canary-5xx"})  # anchored, as in PromQL
    with pytest.raises(KfopsError, match=r"variant selector 'model=fraud' is not a list of PromQL label matchers"):
        parse_selector("model=fraud")
    with pytest.raises(KfopsError, match="bad regex"):
        parse_selector('job=~"("')
    with pytest.raises(KfopsError, match="max_error_rate must be a share between 0 and 1, got 5"):
        CanaryThresholds(max_error_rate=5)
    with pytest.raises(KfopsError, match="unknown key\\(s\\) max_error"):
        CanaryThresholds.from_dict({"max_error": 0.1})
    with pytest.raises(KfopsError, match="min_requests must be an integer >= 1, got 0"):
        CanaryThresholds.from_dict({"min_requests": 0})
    assert CanaryThresholds.from_dict({"max_p99_seconds": 0.5}).max_p99_seconds == 0.5
    with pytest.raises(KfopsError, match="window must be a positive number of seconds, got 0"):
        analyze_step(PrometheusSource("http://127.0.0.1:1"), 'model="a"', 'model="b"', 0)
    with pytest.raises(KfopsError, match="must start with http"):
        PrometheusSource("127.0.0.1:9090")
    with pytest.raises(KfopsError, match="has no /metrics URL for variant 'canary'"):
        ScrapeSource({"stable": "http://127.0.0.1:1"}).begin_window([Variant("canary", 'model="a"')])


def test_the_proxy_counts_what_it_answers(world):
    # The fault proxy is a test part; this keeps its own numbers honest (every 10th answer a 500).
    before = world.errors.requests.labels(SERVED_NAME, world.canary_version, "500")._value.get()
    with httpx.Client(timeout=30) as client:
        codes = [
            client.post(f"{world.errors.base}/v1/models/{SERVED_NAME}:predict", json={"instances": world.rows[:1]})
            for _ in range(20)
        ]
    assert sorted(c.status_code for c in codes).count(500) == 2
    assert world.errors.requests.labels(SERVED_NAME, world.canary_version, "500")._value.get() == before + 2
