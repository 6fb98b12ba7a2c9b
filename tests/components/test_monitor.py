"""The monitor stage: known shifts flagged exactly, the same decisions as Evidently's own run, the streaming
statistics within their stated bounds of scipy's exact ones, bad input named (never a crash), and the real
parts around it: payload-log folders, S3 (moto), a real Pushgateway, a real webhook receiver, the CLI, the KFP
wrappers, and a registered model's training data as the reference."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kfops.components.contracts import KfopsError
from kfops.components.contracts.monitoring import DriftResult
from kfops.components.monitor import sources
from kfops.components.monitor.columns import DriftOptions
from kfops.components.monitor.drift import compute_drift
from kfops.components.monitor.logic import monitor
from kfops.components.monitor.report import to_markdown
from tests.conftest import free_port
from tests.tools import require

KINDS = {
    "income": "numeric",
    "spend": "numeric",
    "visits": "numeric",
    "tenure": "numeric",
    "basket": "numeric",
    "region": "categorical",
    "plan": "categorical",
    "member": "categorical",
    "promo": "categorical",
}
SHIFTED = {"tenure", "basket", "plan", "promo"}
SEED = 4  # ref seed 4, current seed 1004: no chance flag among the unshifted features at 600 or 5,000 rows


def customers(rows: int, seed: int, shift: bool = False) -> pd.DataFrame:
    """Generated customer data; with ``shift``: tenure +10 (1.25 sd), basket x1.6, the plan mix and the promo
    rate change. Income, spend, visits, region and member keep their distributions."""
    rng = np.random.default_rng(seed)
    s = 1.0 if shift else 0.0
    return pd.DataFrame(
        {
            "income": rng.normal(50, 12, rows).round(2),
            "spend": rng.lognormal(3, 0.6, rows).round(2),
            "visits": rng.poisson(6, rows),
            "tenure": rng.normal(24 + 10 * s, 8, rows).round(1),
            "basket": (rng.lognormal(2, 0.5, rows) * (1 + 0.6 * s)).round(2),
            "region": rng.choice(["north", "south", "east", "west"], rows),
            "plan": rng.choice(["basic", "plus", "pro"], rows, p=[0.3, 0.3, 0.4] if shift else [0.5, 0.3, 0.2]),
            "member": rng.choice(["yes", "no"], rows, p=[0.4, 0.6]),
            "promo": rng.choice(["yes", "no"], rows, p=[0.45, 0.55] if shift else [0.2, 0.8]),
        }
    )


def pair(rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    return customers(rows, SEED), customers(rows, SEED + 1000, shift=True)


@pytest.fixture(scope="module")
def evidently_run():
    """Evidently's DataDriftPreset on a reference and a current table: {column: (test name, drifted, score)}.
    Imported once for the module (~8 s)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = {
        "K-S p_value": "ks",
        "chi-square p_value": "chisquare",
        "Z-test p_value": "z",
        "Wasserstein distance (normed)": "wasserstein",
        "Jensen-Shannon distance": "jensenshannon",
    }

    def run(reference: pd.DataFrame, current: pd.DataFrame, kinds: dict[str, str]) -> dict:
        numeric = [c for c, k in kinds.items() if k == "numeric"]
        categorical = [c for c, k in kinds.items() if k == "categorical"]
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        snapshot = Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(current[list(kinds)], data_definition=definition),
            Dataset.from_pandas(reference[list(kinds)], data_definition=definition),
        )
        data = snapshot.dict()
        scores = {
            m["config"]["column"]: (names[m["config"]["method"]], m["value"])
            for m in data["metrics"]
            if m["config"]["type"].endswith("ValueDrift")
        }
        drifted = {
            t["metric_config"]["params"]["column"]: t["status"] == "FAIL"
            for t in data["tests"]
            if t["metric_config"]["params"]["type"].endswith("ValueDrift")
        }
        return {c: (scores[c][0], drifted[c], scores[c][1]) for c in kinds}

    return run


# ------------------------------------------------------------------------------------------------ decisions
@pytest.mark.parametrize(
    ("rows", "numeric_test", "categorical_tests"),
    [(600, "ks", {"chisquare", "z"}), (5000, "wasserstein", {"jensenshannon"})],
)
def test_known_shifts_are_flagged_exactly(rows, numeric_test, categorical_tests):
    reference, current = pair(rows)
    result = compute_drift(reference, current, features=list(KINDS), kinds=KINDS)
    assert set(result.drifted) == SHIFTED
    assert {f.test for f in result.features if f.kind == "numeric"} == {numeric_test}
    assert {f.test for f in result.features if f.kind == "categorical"} == categorical_tests
    assert all(f.exact for f in result.features)
    # 4 of 9 features: below Evidently's default share of 0.5, above 0.4.
    assert (result.verdict, result.drifted_features, result.tested_features) == ("no_drift", 4, 9)
    assert compute_drift(reference, current, DriftOptions(drift_share=0.4), kinds=KINDS).verdict == "drift"
    # The same data against itself: nothing drifts.
    same = compute_drift(reference, reference.sample(frac=1.0, random_state=1), kinds=KINDS)
    assert same.drifted == [] and same.verdict == "no_drift"


def _assert_same_as_evidently(result: DriftResult, theirs: dict) -> None:
    for item in result.features:
        test, drifted, score = theirs[item.name]
        assert item.test == test, item.name
        assert item.drift_detected == drifted, (item.name, item.score, score)
        if item.score_bounds is None or item.score_bounds[0] == item.score_bounds[1]:
            assert item.score == pytest.approx(score, rel=1e-9, abs=1e-12), item.name
        else:  # streaming Wasserstein / K-S: Evidently's exact score lies within the stated bounds
            low, high = sorted(item.score_bounds)
            assert low * (1 - 1e-9) <= score <= high * (1 + 1e-9), (item.name, item.score_bounds, score)


@pytest.mark.parametrize("rows", [600, 5000])
def test_decisions_match_evidentlys_own_run(rows, evidently_run):
    reference, current = pair(rows)
    result = compute_drift(reference, current, kinds=KINDS, chunk_rows=1024)
    _assert_same_as_evidently(result, evidently_run(reference, current, KINDS))


def test_decisions_match_evidently_on_the_fraud_data_with_its_drift_option(evidently_run):
    from kfops.datagen import generate_transactions

    kinds = {
        **{c: "numeric" for c in ("amount", "avg_amount_30d", "transactions_last_24h", "hour_of_day")},
        **{c: "numeric" for c in ("distance_from_home_km", "account_age_days", "customer_age", "card_present")},
        **{c: "categorical" for c in ("merchant_category", "channel", "country", "device_type")},
    }
    reference = generate_transactions(5000, seed=21)
    current = generate_transactions(5000, seed=22, drift=0.5)
    result = compute_drift(reference, current, features=list(kinds), kinds=kinds, chunk_rows=2000)
    theirs = evidently_run(reference, current, kinds)
    _assert_same_as_evidently(result, theirs)
    assert {"amount", "transactions_last_24h"} <= set(result.drifted)


# ------------------------------------------------------------------------------------------------ streaming
def test_streaming_ks_and_wasserstein_lie_within_their_bounds_of_scipy():
    rng = np.random.default_rng(7)
    n_ref, n_cur = 60_000, 45_000
    reference = pd.DataFrame(
        {
            "normal": rng.normal(0, 1, n_ref),
            "heavy": rng.lognormal(3, 1.2, n_ref),
            "rounded": rng.normal(0, 1, n_ref).round(1),  # few distinct values: exact
        }
    )
    current = pd.DataFrame(
        {
            "normal": rng.normal(0.02, 1.0, n_cur),
            "heavy": rng.lognormal(3.01, 1.2, n_cur),
            "rounded": rng.normal(0.01, 1.05, n_cur).round(1),
        }
    )
    for test in ("ks", "wasserstein"):
        # Small chunks: the statistics are merged over ~15 reference and ~11 current chunks.
        result = compute_drift(reference, current, DriftOptions(stattest=test, bins=2000), chunk_rows=4096)
        for item in result.features:
            ref, cur = reference[item.name], current[item.name]
            if test == "ks":
                exact = stats.ks_2samp(ref, cur).pvalue
            else:
                exact = stats.wasserstein_distance(ref, cur) / max(float(np.std(ref)), 0.001)
            low, high = sorted(item.score_bounds)
            assert low * (1 - 1e-9) <= exact <= high * (1 + 1e-9), (test, item.name, exact, item.score_bounds)
            if item.name == "rounded":
                assert low == high and item.score == pytest.approx(exact, rel=1e-9)
            if test == "wasserstein":  # tight next to the 0.1 threshold, even on a long lognormal tail
                assert high - low <= 0.001, (item.name, item.score_bounds)


def test_ks_is_exact_on_a_small_reference_whatever_the_window_size():
    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"x": rng.gamma(2.0, 3.0, 900)})
    current = pd.DataFrame({"x": rng.gamma(2.1, 3.0, 50_000)})
    item = compute_drift(reference, current, chunk_rows=7000).features[0]
    assert item.test == "ks" and item.exact and item.score_bounds[0] == item.score_bounds[1]
    exact = stats.ks_2samp(reference["x"], current["x"])
    assert item.statistic == pytest.approx(exact.statistic, abs=1e-12)
    assert item.score == pytest.approx(exact.pvalue, rel=1e-9)


def test_optional_tests_follow_their_formulas(evidently_run):
    from evidently.legacy.calculations.stattests.chisquare_stattest import _chi_stat_test
    from evidently.legacy.calculations.stattests.jensenshannon import _jensenshannon
    from evidently.legacy.calculations.stattests.psi import _psi
    from evidently.legacy.calculations.stattests.z_stattest import _z_stat_test
    from evidently.legacy.core import ColumnType

    reference, current = pair(3000)
    for name in ("plan", "region", "promo"):
        for test, theirs in (("psi", _psi), ("jensenshannon", _jensenshannon), ("chisquare", _chi_stat_test)):
            ours = compute_drift(reference[[name]], current[[name]], DriftOptions(stattest=test)).features[0]
            expected = theirs(reference[name], current[name], ColumnType.Categorical, 0.1)[0]
            assert ours.test == test and ours.score == pytest.approx(expected, rel=1e-9), (name, test)
    z = compute_drift(reference[["promo"]], current[["promo"]], DriftOptions(stattest="z")).features[0]
    assert z.score == pytest.approx(_z_stat_test(reference["promo"], current["promo"], ColumnType.Categorical, 0.05)[0])

    # kl: the reference document's formula, on the reference's bins (current values outside them in the end bins).
    columns = ["tenure", "basket", "income"]
    kl = compute_drift(reference[columns], current[columns], DriftOptions(stattest="kl"))
    for name in columns:
        ref, cur = reference[name].to_numpy(), current[name].to_numpy()
        edges = np.histogram_bin_edges(ref, bins=50)
        ref_density, _ = np.histogram(ref, bins=edges, density=True)
        cur_density, _ = np.histogram(np.clip(cur, edges[0], edges[-1]), bins=edges, density=True)
        expected = stats.entropy(ref_density + 1e-10, cur_density + 1e-10)
        assert kl.feature(name).score == pytest.approx(expected, rel=1e-9) and kl.feature(name).threshold == 0.5
    # The document's threshold: tenure (shifted 1.25 sd) above 0.5; basket (x1.6) just under it at 0.49.
    assert kl.drifted == ["tenure"]
    ref = reference["basket"].to_numpy()
    cur = current["basket"].to_numpy()

    # psi on a continuous column: reference deciles, plus a bin below its min and one above its max.
    # Deciles by the inverted CDF (the smallest value with F(x) >= i/10), each edge a reference value.
    ordered = np.sort(ref)
    deciles = np.array([ordered[0]] + [ordered[-(-ref.size * i // 10) - 1] for i in range(1, 11)])
    inner = np.histogram(cur[(cur >= deciles[0]) & (cur <= deciles[-1])], bins=deciles)[0]
    cur_share = np.concatenate([[np.sum(cur < deciles[0])], inner, [np.sum(cur > deciles[-1])]]) / cur.size
    ref_share = np.concatenate([[0], np.histogram(ref, bins=deciles)[0], [0]]) / ref.size
    fill = lambda p: np.where(p == 0, min(p[p > 0].min() / 1e6, 1e-4) if p[p > 0].min() <= 1e-4 else 1e-4, p)  # noqa: E731
    expected = np.sum((fill(ref_share) - fill(cur_share)) * np.log(fill(ref_share) / fill(cur_share)))
    psi = compute_drift(reference[["basket"]], current[["basket"]], DriftOptions(stattest="psi")).features[0]
    assert psi.score == pytest.approx(expected, rel=1e-9) and psi.drift_detected


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_and_extra_columns_are_named_and_the_rest_is_tested():
    reference, current = pair(2000)
    current = current.drop(columns=["income", "region"]).assign(coupon=np.arange(len(current)) % 3)
    result = compute_drift(reference, current, kinds=KINDS)
    assert result.missing_columns == ["income", "region"]
    assert result.extra_columns == ["coupon"]
    assert {f.name for f in result.features} == set(KINDS) - {"income", "region"}
    assert set(result.drifted) == SHIFTED
    text = to_markdown(result)
    assert "income, region" in text and "coupon" in text


def test_too_small_a_window_claims_no_drift():
    reference, current = pair(2000)
    result = compute_drift(reference, current.head(12), kinds=KINDS)
    assert result.verdict == "insufficient_data" and not result.dataset_drift and result.drifted == []
    assert all(f.status == "insufficient_data" and f.score is None for f in result.features)
    assert "12 non-empty value(s) of 'tenure'; the test needs at least 30" in result.feature("tenure").message
    # One feature short of data is named; the others are still tested.
    sparse = current.copy()
    sparse.loc[sparse.index[20:], "tenure"] = np.nan
    sparse.loc[sparse.index[:5], "basket"] = "n/a"  # text in a numeric column counts as empty
    result = compute_drift(reference, sparse, kinds=KINDS)
    assert result.feature("tenure").status == "insufficient_data" and not result.feature("tenure").drift_detected
    assert result.feature("basket").current_missing == 5 and result.feature("basket").drift_detected
    assert set(result.drifted) == SHIFTED - {"tenure"} and result.tested_features == 8
    assert any("tenure" in m for m in result.messages)


def test_empty_windows_are_insufficient_data_not_a_crash(tmp_path):
    reference, current = pair(1000)
    ref_file = tmp_path / "ref.parquet"
    reference.to_parquet(ref_file)
    empty_dir = tmp_path / "logs"
    empty_dir.mkdir()
    out = monitor(str(empty_dir), tmp_path / "out1", str(ref_file), html=False)
    assert out.result.verdict == "insufficient_data" and out.result.current_rows == 0
    assert any("no data files" in m for m in out.result.messages)
    assert json.loads(out.paths["json"].read_text())["verdict"] == "insufficient_data"
    zero = tmp_path / "zero.parquet"
    current.head(0).to_parquet(zero)
    out = monitor(str(zero), tmp_path / "out2", str(ref_file), html=False)
    assert out.result.verdict == "insufficient_data"
    assert "the current window is empty" in out.paths["markdown"].read_text()


def test_a_window_of_new_categories_beyond_the_cap_is_drift():
    reference = pd.DataFrame({"code": np.random.default_rng(1).choice(list("abc"), 3000)})
    current = pd.DataFrame({"code": [f"id-{i}" for i in range(3000)]})
    item = compute_drift(reference, current, DriftOptions(max_categories=50)).features[0]
    assert item.drift_detected and "more than 50 distinct values" in item.message


def test_bad_options_and_inputs_are_clear_errors(tmp_path):
    reference, current = pair(100)
    with pytest.raises(KfopsError, match="stattest must be auto or one of"):
        compute_drift(reference, current, DriftOptions(stattest="t-test"))
    with pytest.raises(KfopsError, match="drift_share must be in"):
        compute_drift(reference, current, DriftOptions(drift_share=0))
    with pytest.raises(KfopsError, match="does not exist"):
        monitor(str(tmp_path / "nope.parquet"), tmp_path / "o", str(tmp_path / "nope.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(KfopsError, match=r"cannot read Parquet file .*bad\.parquet"):
        monitor(str(tmp_path / "bad.parquet"), tmp_path / "o", str(tmp_path / "bad.parquet"), html=False)
    with pytest.raises(KfopsError, match="date_from must be a date"):
        sources.open_window(str(tmp_path), date_from="yesterday")


# ------------------------------------------------------------------------------------------------ windows
def payload_log(root: Path, frame: pd.DataFrame, day: str, version: str, fmt: str, model: str = "fraud") -> None:
    """Rows as the serving payload logger writes them: <root>/model=<m>/date=<day>/<file>.jsonl|parquet."""
    folder = root / f"model={model}" / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = frame.assign(
        request_id=[f"r{i}" for i in range(len(frame))],
        timestamp=f"{day}T10:00:00+00:00",
        model=model,
        model_version=version,
        variant="champion",
    )
    name = f"{day}-{version}-{len(list(folder.iterdir()))}"
    if fmt == "jsonl":
        rows.to_json(folder / f"{name}.jsonl", orient="records", lines=True)
    else:
        rows.to_parquet(folder / f"{name}.parquet", index=False)


def test_a_payload_log_folder_filtered_by_date_and_version(tmp_path):
    reference, shifted = pair(3000)
    same = customers(3000, SEED + 2000)
    rng = np.random.default_rng(0)
    for frame in (reference, shifted, same):  # the model's outputs on each
        frame["probability"] = rng.beta(2, 8, len(frame)) if frame is not shifted else rng.beta(4, 6, len(frame))
        frame["prediction"] = np.where(frame["probability"] > 0.5, "1", "0")
    logs = tmp_path / "sink"
    payload_log(logs, same.iloc[:1500], "2026-03-01", "3", "jsonl")
    payload_log(logs, same.iloc[1500:], "2026-03-02", "3", "parquet")
    payload_log(logs, shifted, "2026-03-03", "4", "jsonl")
    payload_log(logs, shifted.head(100), "2026-03-01", "3", "parquet", model="other-model")
    (logs / "model=fraud" / "date=2026-03-01" / ".2026-03-01-tmp.jsonl").write_text("{broken")  # in-flight temp file

    ref_file = tmp_path / "reference.parquet"
    reference.to_parquet(ref_file)
    calm = monitor(str(logs / "model=fraud"), tmp_path / "calm", str(ref_file), date_to="2026-03-02", html=False)
    assert calm.result.current_rows == 3000 and calm.result.drifted == [] and calm.result.verdict == "no_drift"
    assert calm.result.extra_columns == []  # request_id, timestamp, model, ... are the log's own columns
    assert calm.result.model == "fraud"  # from the model= partition: the Pushgateway group
    assert {f.name for f in calm.result.prediction_drift} == {"prediction", "probability"}
    drifted = monitor(str(logs), tmp_path / "drifted", str(ref_file), model_version="4", html=False)
    assert drifted.result.current_rows == 3000 and set(drifted.result.drifted) == SHIFTED
    assert drifted.result.feature("probability").drift_detected
    window = sources.open_window(str(logs), date_from="2026-03-02", model_name="fraud")
    assert [Path(f.uri).parent.name for f in window.files] == ["date=2026-03-02", "date=2026-03-03"]
    assert window.filtered_out == 2
    # Ground truth posted beside the predictor lands in the same sink (<sink>/outcomes/): never window rows.
    from kfops.components.records import log_outcomes

    log_outcomes([{"request_id": "r1", "outcome": "1"}], str(logs))
    assert list((logs / "outcomes").rglob("*.jsonl"))
    everything = sources.open_window(str(logs))
    assert not [f.uri for f in everything.files if "outcomes" in f.uri]
    assert [Path(u).parent.parent.name for u in everything.skipped] == ["outcomes"]


def test_reference_and_window_on_s3(tmp_path, s3_env):
    from kfops.components import storage

    reference, current = pair(2000)
    for name, frame in (("ref/data.parquet", reference), ("logs/date=2026-01-01/part-0.parquet", current)):
        path = tmp_path / name.replace("/", "_")
        frame.to_parquet(path)
        storage.write_bytes(f"s3://monitor/{name}", path.read_bytes())
    out = monitor("s3://monitor/logs", tmp_path / "out", "s3://monitor/ref/data.parquet", kinds=KINDS, html=False)
    local = compute_drift(reference, current, kinds=KINDS)
    assert out.result.drifted == local.drifted and set(out.result.drifted) == SHIFTED
    assert [f.score for f in out.result.features] == pytest.approx([f.score for f in local.features])


def test_the_report_sample_is_bounded_and_keeps_rare_strata():
    from kfops.components.monitor.report import StratifiedSample

    sample = StratifiedSample(rows=1000, seed=0)
    rng = np.random.default_rng(0)
    for start in range(0, 200_000, 20_000):  # 200,000 rows in chunks; 0.1% of them predicted "1"
        chunk = pd.DataFrame(
            {"x": rng.normal(size=20_000), "prediction": np.where(rng.random(20_000) < 0.001, "1", "0")}
        )
        chunk.index += start
        sample.add(chunk, chunk["prediction"])
    frame = sample.frame()
    assert len(frame) == 1000 and all(len(kept) <= 1000 for _, kept in sample.kept.values())
    counts = frame["prediction"].value_counts()
    assert counts["1"] == min(sample.seen["1"], 20) and counts["0"] == 1000 - counts["1"]
    assert abs(frame["x"].mean()) < 0.15  # a uniform sample within the stratum


# ------------------------------------------------------------------------------------------------ alerts
@pytest.fixture
def pushgateway(tmp_path):
    binary = require("prometheus-pushgateway")
    port = free_port()
    log = open(tmp_path / "pushgateway.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        os.kill(proc.pid, signal.SIGTERM)
        pytest.fail(f"pushgateway did not start: {(tmp_path / 'pushgateway.log').read_text()}")
    yield url
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    log.close()


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"type": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/drift", _Receiver.received
    server.shutdown()
    server.server_close()


def test_gauges_reach_a_real_pushgateway_and_the_webhook_gets_the_slack_message(tmp_path, pushgateway, webhook):
    url, received = webhook
    reference, current = pair(3000)
    ref_file, cur_file = tmp_path / "ref.parquet", tmp_path / "cur.parquet"
    reference.to_parquet(ref_file)
    current.to_parquet(cur_file)
    options = DriftOptions(drift_share=0.4)
    out = monitor(
        str(cur_file), tmp_path / "o", str(ref_file), options=options, html=False, pushgateway=pushgateway, webhook=url
    )
    assert out.result.dataset_drift
    assert out.result.notifications["pushgateway"].startswith("pushed 9 feature gauge(s)")
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines() if not line.startswith("#")}
    group = 'instance="",job="kfops-monitor",model="unknown"'
    tenure = out.result.feature("tenure")
    assert lines[f'feature_drift_score{{feature_name="tenure",{group},stattest="wasserstein"}}'] == pytest.approx(
        tenure.score
    )
    assert lines[f'feature_drift_detected{{feature_name="tenure",{group}}}'] == 1
    assert lines[f'feature_drift_detected{{feature_name="income",{group}}}'] == 0
    assert lines[f"dataset_drift_detected{{{group}}}"] == 1
    assert lines[f"dataset_drift_share{{{group}}}"] == pytest.approx(4 / 9)
    [message] = received
    assert message["type"] == "application/json" and set(message["body"]) == {"text"}
    assert "Data drift" in message["body"]["text"] and all(f"`{n}`" in message["body"]["text"] for n in SHIFTED)
    assert "`income`" not in message["body"]["text"]

    # No drift: gauges replaced (same group), no message.
    calm = monitor(str(ref_file), tmp_path / "o2", str(ref_file), html=False, pushgateway=pushgateway, webhook=url)
    assert calm.result.notifications["webhook"] == "not sent: no drift" and len(received) == 1
    with urllib.request.urlopen(f"{pushgateway}/metrics", timeout=5) as response:
        assert f"dataset_drift_detected{{{group}}} 0" in response.read().decode()


def test_unreachable_pushgateway_and_webhook_are_warnings_and_the_result_is_still_written(tmp_path):
    reference, current = pair(1000)
    dead = f"127.0.0.1:{free_port()}"
    out = monitor(
        current, tmp_path / "o", reference, options=DriftOptions(drift_share=0.4), html=False,
        pushgateway=dead, webhook=f"http://{dead}/hook",
    )  # fmt: skip
    assert out.result.dataset_drift
    assert out.result.notifications["pushgateway"].startswith(
        f"failed: cannot push drift gauges to the Pushgateway at {dead}"
    )
    assert out.result.notifications["webhook"].startswith(f"failed: cannot reach webhook http://{dead}/hook")
    saved = DriftResult.from_json(out.paths["json"].read_text())
    assert saved.notifications == out.result.notifications and saved.drifted == out.result.drifted


# ------------------------------------------------------------------------------------------------ entry points
def test_the_cli(tmp_path, capsys):
    from kfops.cli import main
    from kfops.cli import monitor as cli_monitor
    from kfops.components.monitor.columns import TESTS

    assert cli_monitor.TESTS == TESTS

    reference, current = pair(2000)
    ref_file, cur_file = tmp_path / "ref.csv", tmp_path / "cur.jsonl"
    reference.to_csv(ref_file, index=False)
    current.to_json(cur_file, orient="records", lines=True)
    args = ["monitor", "--reference", str(ref_file), "--current", str(cur_file), "--output", str(tmp_path / "o")]
    assert main([*args, "--no-html", "--json", "--categorical", "region,plan,member,promo",
                 "--numeric", "income,spend,visits,tenure,basket"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["drifted"]) == SHIFTED and printed["verdict"] == "no_drift"
    assert (tmp_path / "o" / "drift.json").exists() and (tmp_path / "o" / "drift.md").exists()
    assert main([*args, "--no-html", "--drift-share", "0.4", "--fail-on-drift"]) == 1
    assert "DRIFT: 4 of 9 features drifted" in capsys.readouterr().out
    assert main([*args, "--no-html", "--stattest", "psi", "--ignore", "region,member", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {f["test"] for f in printed["features"]} == {"psi"} and len(printed["features"]) == 7
    assert main(["monitor", "--reference", str(tmp_path / "none.csv"), "--current", str(cur_file),
                 "--output", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


def test_the_kfp_wrappers_write_their_artifacts(tmp_path):
    from kfp import dsl

    from kfops.components.monitor.component import monitor_drift_dataset_op, monitor_drift_op

    reference, current = pair(1500)
    ref_file, cur_file = tmp_path / "ref.parquet", tmp_path / "cur.parquet"
    reference.to_parquet(ref_file)
    current.to_parquet(cur_file)

    def artifacts(prefix):
        return {
            "drift": dsl.Artifact(name="drift", uri=str(tmp_path / prefix / "drift"), metadata={}),
            "report": dsl.HTML(name="report", uri=str(tmp_path / prefix / "report"), metadata={}),
            "summary": dsl.Markdown(name="summary", uri=str(tmp_path / prefix / "summary"), metadata={}),
        }

    params = dict(
        date_from="", date_to="", model_version="", stattest="", threshold=-1.0, drift_share=0.4, min_rows=30,
        features=[], ignore=[], sample_rows=500, pushgateway="", webhook="",
    )  # fmt: skip
    outs = artifacts("a")
    got = monitor_drift_op.python_func(
        current_uri=str(cur_file), reference_uri=str(ref_file), model="", artifact_store="", mlflow_tracking_uri="",
        **params, **outs, report_format="evidently",
    )  # fmt: skip
    assert got.drift_detected is True and got.drift_share == pytest.approx(4 / 9) and got.verdict == "drift"
    assert set(json.loads(Path(outs["drift"].path).read_text())["drifted"]) == SHIFTED
    assert outs["drift"].metadata["verdict"] == "drift"
    assert Path(outs["summary"].path).read_text().startswith("# Drift: drift")
    html = Path(outs["report"].path).read_text()
    assert "<html" in html.lower() and "tenure" in html and "root_metric_" in html  # Evidently's own report

    # The Dataset flavour: a pipeline artifact named without a suffix (split_data writes Parquet so).
    artifact_file = tmp_path / "train"
    shutil.copyfile(ref_file, artifact_file)
    outs = artifacts("b")
    got = monitor_drift_dataset_op.python_func(
        reference=dsl.Dataset(name="train", uri=str(artifact_file), metadata={}),
        current_uri=str(cur_file), **{**params, "drift_share": 0.5, "threshold": 0.2}, **outs,
    )  # fmt: skip
    assert got.drift_detected is False and got.verdict == "no_drift"
    assert {f["threshold"] for f in json.loads(Path(outs["drift"].path).read_text())["features"]} == {0.2}
    html = Path(outs["report"].path).read_text()  # kfops's own report, the default
    assert 'data-feature="tenure"' in html and "root_metric_" not in html


def test_the_html_report_keeps_evidentlys_choice_where_evidently_cannot_take_ours(tmp_path, monkeypatch):
    """A numeric 0/1 column gets the Z-test (Evidently's own choice), which Evidently will not accept by name for
    a numeric column: the report still renders. A report that fails costs the HTML only, never the result."""
    from kfops.components.monitor import logic
    from kfops.datagen import generate_transactions

    ids = ["transaction_id", "customer_id", "event_time", "is_fraud"]
    reference = generate_transactions(600, seed=5).drop(columns=ids)
    current = generate_transactions(600, seed=6, drift=0.5).drop(columns=ids)
    kinds = {"card_present": "numeric"}
    out = monitor(current, tmp_path / "a", reference, kinds=kinds, sample_rows=600, report="evidently")
    assert out.result.feature("card_present").test == "z" and out.result.messages == []
    html = out.paths["html"].read_text()
    assert "card_present" in html and len(html) > 100_000 and "root_metric_" in html

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    for name, report in (("write_html", "evidently"), ("write_report", "kfops")):
        monkeypatch.setattr(logic, name, broken)
        out = monitor(current, tmp_path / report, reference, kinds=kinds, report=report)
        assert "the HTML report could not be rendered: RuntimeError: renderer exploded" in out.result.messages
        assert "renderer exploded" in out.paths["html"].read_text()
        assert DriftResult.from_json(out.paths["json"].read_text()).drifted == out.result.drifted


def test_a_registered_models_training_data_is_the_reference(
    tmp_path, mlflow_store, prepared, fast_config, transactions
):
    from kfops.components.datasets import write_snapshot
    from kfops.components.model_store import load_model
    from kfops.components.register.logic import register_model
    from kfops.components.transform import model_input_frame
    from kfops.datagen import generate_transactions
    from tests.conftest import train_prepared

    store = str(tmp_path / "store")
    version = write_snapshot(transactions, store, source="transactions.parquet")
    outcome = train_prepared(
        prepared, fast_config, tmp_path / "model", tmp_path / "tb", data_sha256=version.sha256, data_uri="gone.csv"
    )
    registered = register_model(
        outcome.model_uri, outcome.run_id, "fraud-monitor", data_sha256=version.sha256, promote_champion=True
    )
    loaded = load_model("fraud-monitor@champion", tracking_uri=mlflow_store)
    current = generate_transactions(3000, seed=99, drift=0.8)
    scored = loaded.predict(model_input_frame(loaded.spec, current))
    current = current.assign(prediction=[str(v) for v in scored["prediction"]], probability=scored["probability"])

    out = monitor(current, tmp_path / "o", model="fraud-monitor@champion", artifact_store=store, html=False)
    assert out.reference.data_uri == version.uri and out.result.reference == version.uri
    assert (out.result.model, out.result.model_version) == ("fraud-monitor", str(registered.version))
    assert [f.name for f in out.result.features] == loaded.spec.feature_names
    # The window's ids, time and label are columns the reference has too (only not features): not "extra".
    assert out.result.extra_columns == [] and out.result.missing_columns == []
    # and they are listed as left out, the target as the spec names it
    assert out.result.left_out == {
        "transaction_id": "not a feature of the model",
        "event_time": "not a feature of the model",
        "customer_id": "not a feature of the model",
        "is_fraud": "the target",
    }
    assert {f.name: f.kind for f in out.result.features} == {c.name: c.kind for c in loaded.spec.columns}
    assert {"amount", "transactions_last_24h", "channel"} <= set(out.result.drifted)
    assert {f.name for f in out.result.prediction_drift} == {"prediction", "probability"}
    assert any("predictions are the model's on a sample" in m for m in out.result.messages)
    # Without the snapshot in the store, the run's data URI is the fallback; here it is gone: a clear error.
    with pytest.raises(KfopsError, match=r"training data of model fraud-monitor .* is not available"):
        monitor(current, tmp_path / "o2", model="fraud-monitor@champion", artifact_store=str(tmp_path / "empty"))


@pytest.mark.parametrize(("n1", "n2"), [(5, 7), (100, 100), (1000, 999), (3000, 7000), (50, 10_000), (1, 1)])
def test_ks_pvalue_from_the_statistic_alone_is_scipys_on_samples(n1, n2):
    # ks_pvalue sees only (D, n1, n2); scipy's ks_2samp on real samples of those sizes is the reference
    from kfops.components.monitor.column_tests import ks_pvalue

    rng = np.random.default_rng(n1 + n2)
    for shift in (0.0, 0.2, 1.0):
        x, y = rng.normal(size=n1), rng.normal(shift, size=n2)
        expected = stats.ks_2samp(x, y, method="auto")
        assert ks_pvalue(float(expected.statistic), n1, n2) == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
