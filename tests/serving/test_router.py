"""The shadow / A/B / canary router (serving/router.py) against real predictors on 127.0.0.1.

One real deployment per module: ``kfops serve --model NAME@champion --challenger NAME@challenger --mode ab``
(two child predictor processes serving two registered versions trained with different seeds, and the router
in front of them). Most tests drive further routers in-process (httpx's ASGI transport) against those two real
predictors, directly or through a real faulty/slow HTTP server (tests/serving/upstreams.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from kfops.cli import main as kfops_main
from kfops.serving.router import Router
from kfops.serving.router_cli import route_main
from kfops.serving.router_types import CHALLENGER, STABLE, RouterConfig, assign, bucket
from tests.conftest import train_prepared

from .helpers import v1_objects, v2_inputs
from .upstreams import FaultyUpstream, free_port

NAME = "fraud"
KEY = "customer_id"
V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def router_registry(registered_model, tmp_path_factory) -> str:
    """A copy of the shared serving registry for these tests to add a version to: the session's own store keeps
    the one version the other serving tests expect, whichever module runs first."""
    root = tmp_path_factory.mktemp("router-registry")
    shutil.copyfile(registered_model.tracking_uri.removeprefix("sqlite:///"), root / "mlflow.db")
    return f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def challenger_version(registered_model, router_registry, prepared, fast_config, tmp_path_factory) -> str:
    """A second version of the registered model, trained with another seed, with alias challenger."""
    import mlflow

    m = registered_model
    root = tmp_path_factory.mktemp("challenger-model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", router_registry)
        mp.setenv("KFOPS_MLFLOW_ARTIFACT_ROOT", str(root / "mla"))
        mlflow.set_tracking_uri(router_registry)
        outcome = train_prepared(
            prepared,
            dataclasses.replace(fast_config, seed=fast_config.seed + 100),
            str(root / "model"),
            str(root / "tb"),
            experiment="serving-tests",
            tracking_uri=router_registry,
        )
        version = mlflow.register_model(outcome.model_uri, m.name)
        mlflow.MlflowClient(router_registry).set_registered_model_alias(m.name, "challenger", version.version)
    return str(version.version)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kfops serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def _closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def deployment(registered_model, router_registry, challenger_version, tmp_path_factory):
    """A real `kfops serve --challenger` (router + two child predictors), stopped by its pid at the end: the
    children must be gone with it."""
    m = registered_model
    work = tmp_path_factory.mktemp("router")
    log = work / "serve.log"
    port = free_port()
    command = [sys.executable, "-m", "kfops.cli", "serve", "--model", f"{m.name}@champion", "--name", NAME]
    command += ["--challenger", f"{m.name}@challenger", "--mode", "ab", "--split", "50", "--entity-key", KEY]
    command += ["--tracking-uri", router_registry, "--port", str(port), "--max-wait-ms", "1", "--log-level", "WARNING"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/v2/health/ready", proc, log)
        config = httpx.get(f"{base}/router", timeout=5).json()
        yield SimpleNamespace(
            url=base,
            stable=config["stable_url"],
            challenger=config["challenger_url"],
            stable_version=m.version,
            challenger_version=challenger_version,
            config=config,
            model=m,
        )
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    assert _closed(config["stable_url"]) and _closed(config["challenger_url"]), "child predictors outlived the router"


def _rows(m, start: int, n: int, ids=None) -> list[dict]:
    rows = v1_objects(m.rows.iloc[start : start + n])
    for i, row in enumerate(rows):
        if ids is not None:
            row[KEY] = ids[i]
    return rows


def _without_key(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != KEY} for row in rows]


def _direct(url: str, rows: list[dict]) -> list[dict]:
    answer = httpx.post(f"{url}{V1}", json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def _same(a: list[dict], b: list[dict]) -> None:
    assert [p["prediction"] for p in a] == [p["prediction"] for p in b]
    assert [p["model_version"] for p in a] == [p["model_version"] for p in b]
    assert [p["probability"] for p in a] == pytest.approx([p["probability"] for p in b], abs=1e-6)


def _in_process(config: RouterConfig, scenario, upstream_client: str = "own"):
    """Run ``scenario(router, client)`` against a fresh in-process Router (its own metrics registry)."""

    async def main():
        router = Router(config, registry=CollectorRegistry(), client=upstream_client)
        transport = httpx.ASGITransport(app=router)
        async with httpx.AsyncClient(transport=transport, base_url="http://router", timeout=30) as client:
            try:
                return await scenario(router, client)
            finally:
                await router.close()

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------ hashing
def _reference_assignment(user_id, split_ratio: float) -> str:
    """The reference document's ABTestingFramework.get_model_for_user, verbatim (model_a = the challenger)."""
    hash_value = int(hashlib.md5(str(user_id).encode()).hexdigest(), 16)
    assignment = (hash_value % 100) / 100.0
    return "model_a" if assignment < split_ratio else "model_b"


@pytest.mark.parametrize("split", [20, 50, 12.5, 0, 100])
def test_ab_assignment_is_the_reference_md5_scheme_and_near_the_split(split):
    ids = [f"cust-{i}" for i in range(5000)] + list(range(5000))
    routed = [assign(i, split) for i in ids]
    expected = [CHALLENGER if _reference_assignment(i, split / 100) == "model_a" else STABLE for i in ids]
    assert routed == expected
    share = 100 * routed.count(CHALLENGER) / len(ids)
    assert abs(share - split) <= 2, share
    assert bucket(42) == bucket("42") and 0 <= bucket("x") < 100


# ------------------------------------------------------------------------------------------------ ab, for real
def test_real_router_ab_is_sticky_and_merges_rows_in_order(deployment):
    d, m = deployment, deployment.model
    ids = [f"c{i}" for i in range(30)] + list(range(1000, 1010))
    rows = _rows(m, 0, 40, ids)
    answer = httpx.post(f"{d.url}{V1}", json={"instances": rows}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-kfops-variant"] == "mixed"
    predictions = answer.json()["predictions"]
    variants = [assign(i, 50) for i in ids]
    assert 5 < variants.count(CHALLENGER) < 35
    versions = {STABLE: d.stable_version, CHALLENGER: d.challenger_version}
    assert [p["model_version"] for p in predictions] == [versions[v] for v in variants]
    # Each row is what its variant's predictor answers for it directly.
    for variant, url in ((STABLE, d.stable), (CHALLENGER, d.challenger)):
        picked = [i for i, v in enumerate(variants) if v == variant]
        _same([predictions[i] for i in picked], _direct(url, _without_key([rows[i] for i in picked])))
    # Sticky: the same entity, alone, goes to the same variant every time.
    for i in (0, 1, 2, 3, 30, 31):
        for _ in range(2):
            alone = httpx.post(f"{d.url}{V1}", json={"instances": [rows[i]]}, timeout=30)
            assert alone.headers["x-kfops-variant"] == variants[i]
            assert alone.json()["predictions"][0]["model_version"] == versions[variants[i]]

    # V2: the entity is an input; the merged outputs are in the request's order.
    frame = m.rows.iloc[0:40]
    entity_input = {"name": KEY, "datatype": "BYTES", "shape": [40], "data": [str(i) for i in ids]}
    inputs = [*v2_inputs(m.spec, frame), entity_input]
    v2 = httpx.post(f"{d.url}{V2}", json={"inputs": inputs}, timeout=30)
    assert v2.status_code == 200, v2.text
    body = v2.json()
    outputs = {o["name"]: o for o in body["outputs"]}
    v2_variants = [assign(str(i), 50) for i in ids]
    assert body["parameters"]["challenger_rows"] == [i for i, v in enumerate(v2_variants) if v == CHALLENGER]
    assert body["parameters"]["challenger_model_version"] == d.challenger_version
    assert outputs["prediction"]["shape"] == [40]
    for variant, url in ((STABLE, d.stable), (CHALLENGER, d.challenger)):
        picked = [i for i, v in enumerate(v2_variants) if v == variant]
        direct = _direct(url, _without_key([rows[i] for i in picked]))
        assert [outputs["prediction"]["data"][i] for i in picked] == [p["prediction"] for p in direct]
        assert [outputs["probability"]["data"][i] for i in picked] == pytest.approx(
            [p["probability"] for p in direct], abs=1e-6
        )

    # The router's own metrics, labelled by variant.
    text = httpx.get(f"{d.url}/metrics", timeout=5).text
    assert 'router_requests_total{status_code="200",variant="mixed"} 2.0' in text
    assert 'router_rows_total{variant="challenger"}' in text and 'router_upstream_requests_total{outcome="200"' in text
    assert "process_cpu_seconds_total" in text
    assert httpx.get(f"{d.url}/v2/models/{NAME}/ready", timeout=5).status_code == 200
    assert httpx.get(f"{d.url}/v2/models/other/ready", timeout=5).status_code == 404


def test_ab_entity_from_header_missing_entity_and_row_numbers_in_errors(deployment):
    d, m = deployment, deployment.model
    config = RouterConfig(d.stable, d.challenger, "ab", split=50, model_name=NAME, entity_key=KEY)

    async def scenario(router, client):
        rows = _rows(m, 50, 3)
        missing = await client.post(V1, json={"instances": rows})
        assert missing.status_code == 400
        assert (
            "instances[0] has no 'customer_id'" in missing.json()["error"] and "x-entity-id" in missing.json()["error"]
        )
        # One entity for the whole request from the header (list instances carry no field names).
        lists = [[row[n] for n in m.spec.feature_names] for row in rows]
        for entity in ("alice", "bob", "carol", "dave"):
            answer = await client.post(V1, json={"instances": lists}, headers={"x-entity-id": entity})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-kfops-variant"] == assign(entity, 50)
        wrong_type = await client.post(V1, json={"instances": [{**rows[0], KEY: [1, 2]}]})
        assert (
            wrong_type.status_code == 400
            and "entity field 'customer_id' must be a string or a number" in (wrong_type.json()["error"])
        )
        # A predictor's 400 for a row of a mixed batch names the caller's row number, not the part's.
        ids = list(range(20))
        batch = _rows(m, 60, 20, ids)
        bad = next(i for i in range(10, 20) if assign(i, 50) == CHALLENGER)
        batch[bad]["amount"] = "lots"
        answer = await client.post(V1, json={"instances": batch})
        assert answer.status_code == 400
        assert f"instances[{bad}]: feature 'amount' must be a number" in answer.json()["error"]
        no_input = await client.post(V2, json={"inputs": v2_inputs(m.spec, m.rows.iloc[:2])})
        assert no_input.status_code == 400 and "no input named 'customer_id'" in no_input.json()["error"]
        assert router.metrics.value("router_requests_total", {"variant": "none", "status_code": "400"}) == 3

    _in_process(config, scenario)


# ------------------------------------------------------------------------------------------------ shadow
def _v1_metric(url: str, version: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    prefix = f'model_requests_total{{model="{NAME}",status_code="200",version="{version}"}} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix))


def test_shadow_answers_from_stable_and_mirrors_every_request_to_the_challenger(deployment, tmp_path):
    d, m = deployment, deployment.model
    before = _v1_metric(d.challenger, d.challenger_version)
    with FaultyUpstream(d.challenger) as challenger:
        config = RouterConfig(
            d.stable, challenger.url, "shadow", model_name=NAME, entity_key=KEY, shadow_log=str(tmp_path / "shadow")
        )

        async def scenario(router, client):
            rows = 0
            for i in range(30):
                batch = _rows(m, 100 + i, 1 + i % 3, [f"s{i}"] * (1 + i % 3))
                rows += len(batch)
                answer = await client.post(V1, json={"instances": batch}, headers={"x-request-id": f"req-{i}"})
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-kfops-variant"] == STABLE
                assert {p["model_version"] for p in answer.json()["predictions"]} == {d.stable_version}
            await router.wait_for_shadows()
            return router.metrics, rows

        metrics, rows = _in_process(config, scenario)
    assert challenger.received == 30
    assert _v1_metric(d.challenger, d.challenger_version) - before == 30
    assert metrics.value("router_shadow_requests_total", {"outcome": "sent"}) == 30
    assert metrics.value("router_shadow_requests_total", {"outcome": "completed"}) == 30
    assert metrics.value("router_shadow_requests_total", {"outcome": "shed"}) == 0  # one caller at a time: all mirrored
    agree = metrics.value("router_shadow_agreement_total", {"agree": "true"})
    assert agree + metrics.value("router_shadow_agreement_total", {"agree": "false"}) == rows
    assert metrics.value("router_shadow_probability_abs_diff_total") > 0  # two differently seeded models
    assert metrics.value("router_shadow_mean_abs_probability_diff_count") == 30
    assert metrics.value("router_requests_total", {"variant": "stable", "status_code": "200"}) == 30
    assert metrics.value("router_upstream_requests_total", {"variant": "challenger", "outcome": "200"}) == 30
    records = [
        orjson.loads(line) for f in (tmp_path / "shadow").rglob("*.jsonl") for line in f.read_text().splitlines()
    ]
    assert len(records) == rows and {r["challenger_version"] for r in records} == {d.challenger_version}
    assert {r["request_id"] for r in records} == {f"req-{i}" for i in range(30)}
    assert sum(r["agree"] for r in records) == agree


def test_a_slow_or_down_shadow_challenger_never_delays_or_fails_the_caller(deployment):
    d, m = deployment, deployment.model
    body = {"instances": _rows(m, 200, 1)}

    async def timed(client, n):
        latencies = []
        for _ in range(n):
            started = time.perf_counter()
            answer = await client.post(V1, json=body)
            latencies.append(time.perf_counter() - started)
            assert answer.status_code == 200 and answer.headers["x-kfops-variant"] == STABLE
        return latencies

    with FaultyUpstream(d.challenger, delay_s=0.5) as slow:
        config = RouterConfig(
            d.stable,
            slow.url,
            "shadow",
            model_name=NAME,
            challenger_timeout_s=0.3,
            shadow_max_in_flight=3,
            shadow_max_queued=0,  # nothing waits: past 3 in flight, copies are shed
        )

        async def scenario(router, client):
            latencies = await timed(client, 12)
            await router.wait_for_shadows()
            return router.metrics, latencies

        metrics, latencies = _in_process(config, scenario)
    # The challenger sleeps 500 ms; the caller never waits for it.
    assert max(latencies) < 0.25, latencies
    sent = metrics.value("router_shadow_requests_total", {"outcome": "sent"})
    shed = metrics.value("router_shadow_requests_total", {"outcome": "shed"})
    assert sent + shed == 12 and shed >= 1 and sent >= 3
    assert metrics.value("router_shadow_shed_total", {"reason": "busy"}) == shed
    assert metrics.value("router_shadow_requests_total", {"outcome": "failed"}) == sent  # all timed out at 0.3 s
    assert metrics.value("router_upstream_requests_total", {"variant": "challenger", "outcome": "timeout"}) == sent

    down = RouterConfig(d.stable, f"http://127.0.0.1:{free_port()}", "shadow", model_name=NAME)

    async def scenario_down(router, client):
        latencies = await timed(client, 10)
        await router.wait_for_shadows()
        return router.metrics, latencies

    metrics, latencies = _in_process(down, scenario_down)
    assert max(latencies) < 0.25, latencies
    assert metrics.value("router_shadow_requests_total", {"outcome": "failed"}) == 10
    assert metrics.value("router_upstream_requests_total", {"variant": "challenger", "outcome": "unreachable"}) == 10


def test_a_stalled_shadow_challenger_gets_a_bounded_number_of_copies_and_the_rest_are_shed(deployment):
    d, m = deployment, deployment.model
    body = {"instances": _rows(m, 300, 1)}
    with FaultyUpstream(d.challenger, delay_s=3.0) as stalled:  # answers nothing within the 1.5 s timeout
        config = RouterConfig(
            d.stable,
            stalled.url,
            "shadow",
            model_name=NAME,
            challenger_timeout_s=1.5,
            shadow_max_in_flight=2,
            shadow_max_queued=4,
            shadow_max_delay_s=0.2,
        )

        async def scenario(router, client):
            latencies = []
            for _ in range(30):
                started = time.perf_counter()
                assert (await client.post(V1, json=body)).status_code == 200
                latencies.append(time.perf_counter() - started)
            queued = len(router.shadows.queue)
            await router.wait_for_shadows()
            return router.metrics, latencies, queued

        metrics, latencies, queued = _in_process(config, scenario)
    assert max(latencies) < 0.25, latencies  # the callers never wait on the stalled challenger
    assert queued <= 4
    sent = metrics.value("router_shadow_requests_total", {"outcome": "sent"})
    shed = metrics.value("router_shadow_requests_total", {"outcome": "shed"})
    busy = metrics.value("router_shadow_shed_total", {"reason": "busy"})
    stale = metrics.value("router_shadow_shed_total", {"reason": "stale"})
    # Two calls hold the challenger until they time out; every other copy waits at most 0.2 s, then is shed.
    assert sent == 2 and shed == 28 and busy + stale == 28 and busy > 0 and stale > 0
    assert metrics.value("router_shadow_requests_total", {"outcome": "failed"}) == 2


def test_shadow_copies_wait_for_callers_and_are_shed_under_concurrent_load(deployment):
    d, m = deployment, deployment.model
    bodies = [{"instances": _rows(m, 400 + i, 1)} for i in range(64)]
    config = RouterConfig(d.stable, d.challenger, "shadow", model_name=NAME, shadow_max_queued=2)

    async def scenario(router, client):
        async def caller(k: int) -> list[int]:
            return [(await client.post(V1, json=bodies[i])).status_code for i in range(k, 64, 8)]

        codes = [code for codes in await asyncio.gather(*(caller(k) for k in range(8))) for code in codes]
        await router.wait_for_shadows()
        return router.metrics, codes

    metrics, codes = _in_process(config, scenario)
    assert codes == [200] * 64
    sent = metrics.value("router_shadow_requests_total", {"outcome": "sent"})
    shed = metrics.value("router_shadow_requests_total", {"outcome": "shed"})
    assert sent + shed == 64 and shed > 0  # 8 callers at once: most copies wait for a quiet moment or are shed
    assert metrics.value("router_shadow_requests_total", {"outcome": "completed"}) == sent


# ------------------------------------------------------------------------------------------------ canary
def test_canary_with_a_failing_challenger_falls_back_so_no_caller_sees_an_error(deployment):
    d, m = deployment, deployment.model
    with FaultyUpstream(d.challenger, fail_fraction=0.3, seed=7) as faulty:
        config = RouterConfig(d.stable, faulty.url, "canary", split=100, model_name=NAME)

        async def scenario(router, client):
            answers = []
            for start in range(0, 80, 8):
                answers += await asyncio.gather(
                    *(client.post(V1, json={"instances": _rows(m, 300 + start + k, 1)}) for k in range(8))
                )
            return router.metrics, answers

        metrics, answers = _in_process(config, scenario)
    assert [a.status_code for a in answers] == [200] * 80
    assert 10 <= faulty.failed <= 40
    served = {STABLE: [], CHALLENGER: []}
    for answer in answers:
        served[answer.headers["x-kfops-variant"]].append(answer.json()["predictions"][0]["model_version"])
    assert len(served[STABLE]) == faulty.failed and set(served[STABLE]) == {d.stable_version}
    assert set(served[CHALLENGER]) == {d.challenger_version}
    assert metrics.value("router_fallbacks_total", {"reason": "5xx"}) == faulty.failed
    assert metrics.value("router_upstream_requests_total", {"variant": "challenger", "outcome": "500"}) == faulty.failed
    assert metrics.value("router_requests_total", {"variant": "stable", "status_code": "200"}) == faulty.failed

    # A 4xx from the challenger is the caller's bad input: returned as is, no fallback.
    async def bad_input(router, client):
        answer = await client.post(V1, json={"instances": [{"amount": 1.0}]})
        assert router.metrics.value("router_fallbacks_total", {"reason": "5xx"}) == 0
        return answer

    bad = _in_process(RouterConfig(d.stable, d.challenger, "canary", split=100, model_name=NAME), bad_input)
    assert bad.status_code == 400 and bad.headers["x-kfops-variant"] == CHALLENGER
    assert "missing feature(s)" in bad.json()["error"]


def test_canary_split_sends_about_that_share_and_zero_sends_none(deployment):
    d, m = deployment, deployment.model
    body = {"instances": _rows(m, 400, 1)}

    async def count(router, client):
        served = [(await client.post(V1, json=body)).headers["x-kfops-variant"] for _ in range(60)]
        return served.count(CHALLENGER)

    random.seed(3)
    assert 8 <= _in_process(RouterConfig(d.stable, d.challenger, "canary", split=30, model_name=NAME), count) <= 30
    assert _in_process(RouterConfig(d.stable, d.challenger, "canary", split=0, model_name=NAME), count) == 0


def test_when_stable_fails_the_caller_gets_502_or_503_naming_it(deployment):
    d, m = deployment, deployment.model
    body = {"instances": _rows(m, 500, 1)}
    nowhere = f"http://127.0.0.1:{free_port()}"

    async def down(router, client):
        answer = await client.post(V1, json=body)
        ready = await client.get("/v2/health/ready")
        return answer, ready

    answer, ready = _in_process(RouterConfig(nowhere, nowhere, "canary", split=100, model_name=NAME), down)
    assert answer.status_code == 503 and answer.json()["error"].startswith(f"stable upstream {nowhere}/v1/models/")
    assert "unreachable" in answer.json()["error"]
    assert ready.status_code == 503 and ready.json()["ready"] is False

    with FaultyUpstream(d.stable, fail_fraction=1.0) as broken:
        config = RouterConfig(broken.url, d.challenger, "shadow", model_name=NAME)
        answer, _ = _in_process(config, down)
    assert answer.status_code == 502 and "answered 500: injected failure" in answer.json()["error"]
    assert answer.json()["error"].startswith(f"stable upstream {broken.url}")

    async def up(router, client):
        return [await client.get(p) for p in ("/v2/health/ready", f"/v2/models/{NAME}/ready", "/v2/health/live")]

    assert [a.status_code for a in _in_process(RouterConfig(d.stable, nowhere, "shadow", model_name=NAME), up)] == [
        200,
        200,
        200,
    ]


# ------------------------------------------------------------------------------------------------ bad input
def _fuzz_bodies(m, rng: random.Random) -> list[tuple[str, bytes]]:
    row = _rows(m, 580, 1, ["f0"])[0]
    scalars = [None, True, 0, -1, 1e308, "", "x" * 300, [], {}, [None], {"a": 1}]
    bodies: list[tuple[str, bytes]] = [
        (V1, b""),
        (V1, b"{"),
        (V1, b"null"),
        (V1, b"[1, 2]"),
        (V1, b'"instances"'),
        (V1, b'{"instances": 3}'),
        (V1, b'{"instances": []}'),
        (V1, b'{"instances": [1, "a", null]}'),
        (V1, b"\xff\xfe\x00"),
        (V2, b'{"inputs": 1}'),
        (V2, b'{"inputs": [1]}'),
        (V2, b'{"inputs": [{"name": "customer_id", "data": 5}]}'),
        (
            V2,
            b'{"inputs": [{"name": "customer_id", "shape": [2], "data": ["a", "b"]}, {"name": "amount", "data": [1]}]}',
        ),
        (V2, b'{"inputs": [{"name": "customer_id", "data": [[1, 2]]}]}'),
    ]
    for _ in range(60):
        mutated = dict(row)
        key = rng.choice(list(mutated))
        mutated[key] = rng.choice(scalars)
        if rng.random() < 0.3:
            mutated[rng.choice(["extra", KEY, "amount"])] = rng.choice(scalars)
        bodies.append((V1, orjson.dumps({"instances": [mutated, row][: rng.randint(1, 2)]})))
        entity_input = {"name": KEY, "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
        inputs = [*v2_inputs(m.spec, m.rows.iloc[580:582]), entity_input]
        victim = rng.choice(inputs)
        victim[rng.choice(["data", "shape", "datatype", "name"])] = rng.choice([*scalars, [1], ["a", "b", "c"]])
        bodies.append((V2, orjson.dumps({"inputs": inputs})))
        raw = bytearray(orjson.dumps({"instances": [row]}))
        for _ in range(3):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        bodies.append((V1, bytes(raw)))
    return bodies


def test_bad_input_is_a_400_naming_the_problem_and_fuzzing_never_gets_a_5xx(deployment):
    d, m = deployment, deployment.model
    bodies = _fuzz_bodies(m, random.Random(11))

    def fuzz():
        async def scenario(router, client):
            statuses = []
            for path, body in bodies:
                answer = await client.post(path, content=body, headers={"content-type": "application/json"})
                assert answer.status_code < 500, (path, body[:200], answer.status_code, answer.text)
                if answer.status_code >= 400:
                    assert answer.json()["error"]
                statuses.append(answer.status_code)
            big = await client.post(V1, content=b"x" * 5000)
            assert big.status_code == 400 and "larger than the router's maximum of 4,096 bytes" in big.json()["error"]
            not_json = await client.post(V1, content=b"{nope")
            return statuses, not_json

        return scenario

    for mode in ("ab", "canary", "shadow"):
        config = RouterConfig(
            d.stable, d.challenger, mode, split=50, model_name=NAME, entity_key=KEY, max_body_bytes=4096
        )
        statuses, not_json = _in_process(config, fuzz())
        assert statuses.count(400) > len(bodies) // 2, mode
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"], mode


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_flags_are_checked_before_anything_starts(capsys):
    assert kfops_main(["serve", "--model", "m@champion", "--mode", "ab"]) == 2
    assert "--mode only apply with --challenger" in capsys.readouterr().err
    assert kfops_main(["serve", "--model", "m@champion", "--challenger", "m@challenger"]) == 2
    assert "--challenger needs --mode" in capsys.readouterr().err
    assert kfops_main(["serve", "--model", "a", "--challenger", "b", "--mode", "ab"]) == 2
    assert "--mode ab needs --entity-key" in capsys.readouterr().err
    assert kfops_main(["route", "--stable", "http://a", "--challenger", "b:1", "--mode", "canary"]) == 2
    assert "--challenger must be an http(s)://host[:port] base URL, got 'b:1'" in capsys.readouterr().err
    assert route_main(["--stable", "http://a", "--challenger", "http://b", "--mode", "canary", "--split", "120"]) == 2
    assert "--split is the challenger's percent, between 0 and 100, got 120.0" in capsys.readouterr().err
    # python -m kfops.serving route ...: what the router InferenceService's container runs
    proc = subprocess.run(
        [sys.executable, "-m", "kfops.serving", "route", "--stable", "http://a", "--challenger", "http://b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--mode" in proc.stderr


def test_local_children_are_predictor_commands_and_a_shadow_challenger_gets_only_idle_cpu():
    from kfops.cli import build_parser
    from kfops.serving.router_cli import _child_command, lower_priority

    argv = ["serve", "--model", "m@champion", "--challenger", "m@challenger", "--payload-log", "/logs", "--mode", "ab"]
    args = build_parser().parse_args(argv)
    stable = _child_command(args, "m@champion", "m", 1234, "stable", "sqlite:///x.db")
    challenger = _child_command(args, "m@challenger", "m", 1235, "challenger", "sqlite:///x.db")
    assert stable[:3] == [sys.executable, "-m", "kfops.serving"]
    assert " ".join(stable[3:]).startswith("--model m@champion --name m --host 127.0.0.1 --port 1234 --variant stable")
    assert "--tracking-uri sqlite:///x.db" in " ".join(stable) and "--payload-log /logs" in " ".join(stable)
    assert "--variant challenger" in " ".join(challenger)
    # What shadow mode does to its challenger child, on a real process.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        how = lower_priority(proc.pid)
        if how == "SCHED_IDLE":
            assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
        else:
            assert how == "nice 19" and os.getpriority(os.PRIO_PROCESS, proc.pid) == 19
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------------ the server
def _exchange(url: str, data: bytes, until: bytes = b"", timeout: float = 10) -> bytes:
    """Raw bytes to the real router, and what comes back: until ``until`` has arrived (and the connection is
    still open), or, with no ``until``, until the router closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while not (until and until in received):
            chunk = sock.recv(65536)
            if not chunk:
                assert not until, f"the router closed the connection: {received[:300]!r}"
                break
            received += chunk
    return received


def test_the_routers_own_http_server_pipelines_limits_and_closes_properly(deployment):
    d, m = deployment, deployment.model
    body = orjson.dumps({"instances": _rows(m, 10, 1, ["p1"])})
    post = b"POST %s HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        V1.encode(),
        len(body),
        body,
    )
    # Pipelined: three requests in one write, three answers in order on one connection.
    pipelined = b"GET /v2/health/live?x=1 HTTP/1.1\r\nHost: r\r\n\r\n" + post + b"GET /nope HTTP/1.1\r\n\r\n"
    answers = _exchange(d.url, pipelined, until=b"no route for GET /nope")
    statuses = re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+", answers)
    assert statuses == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found"], answers[:600]
    assert answers.index(b'{"live":true}') < answers.index(b'"predictions"') < answers.index(b"no route for GET /nope")
    assert b"x-kfops-variant: " in answers and b"date: " in answers.lower()
    # Expect: 100-continue is honoured; HEAD has headers only; HTTP/1.0 closes after its answer.
    expect = post.replace(b"Host: r\r\n", b"Host: r\r\nExpect: 100-continue\r\n")
    assert _exchange(d.url, expect, until=b'"predictions"').startswith(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
    )
    head = _exchange(d.url, b"HEAD /v2/health/live HTTP/1.1\r\nHost: r\r\n\r\n", until=b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 13\r\n" in head and head.endswith(b"\r\n\r\n")
    old = _exchange(d.url, b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert b"connection: close" in old and old.endswith(b'{"live":true}')
    # A body over the limit is refused from its Content-Length, unread; bytes that are not HTTP get a 400.
    huge = b"POST %s HTTP/1.1\r\nHost: r\r\nContent-Length: 999999999999\r\n\r\n{" % V1.encode()
    refused = _exchange(d.url, huge)
    assert refused.startswith(b"HTTP/1.1 400 Bad Request") and b"larger than the router's maximum" in refused
    garbage = _exchange(d.url, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 Bad Request") and b"invalid HTTP request" in garbage
    assert httpx.get(f"{d.url}/v2/health/live", timeout=5).status_code == 200  # still serving


def test_the_library_alternatives_uvicorn_and_aiohttp_route_the_same(deployment, tmp_path):
    """``kfops route --http-server uvicorn --http-client aiohttp`` (what bench_router.py measures against the own
    server and client) answers as the deployment's router does, and stops cleanly on SIGTERM."""
    d, m = deployment, deployment.model
    port = free_port()
    command = [sys.executable, "-m", "kfops.serving", "route", "--stable", d.stable, "--challenger", d.challenger]
    command += ["--name", NAME, "--mode", "ab", "--split", "50", "--entity-key", KEY, "--port", str(port)]
    command += ["--http-server", "uvicorn", "--http-client", "aiohttp", "--log-level", "WARNING"]
    log = tmp_path / "route.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/v2/health/ready", proc, log)
        body = {"instances": _rows(m, 40, 12, [f"lib{i}" for i in range(12)])}
        mine = httpx.post(f"{url}{V1}", json=body, timeout=30)
        theirs = httpx.post(f"{d.url}{V1}", json=body, timeout=30)
        assert mine.status_code == theirs.status_code == 200, mine.text
        assert mine.headers["x-kfops-variant"] == theirs.headers["x-kfops-variant"]
        _same(mine.json()["predictions"], theirs.json()["predictions"])
        huge = httpx.post(f"{url}{V1}", content=b"{" * (65 * 1024 * 1024), timeout=30)
        assert huge.status_code == 400 and "larger than the router's maximum" in huge.json()["error"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]

    # aiohttp's failures are the router's usual ones: an upstream that is down is a 503 naming it.
    nowhere = f"http://127.0.0.1:{free_port()}"

    async def down(router, client):
        return await client.post(V1, json={"instances": _rows(m, 0, 1)})

    config = RouterConfig(nowhere, nowhere, "canary", split=100, model_name=NAME)
    answer = _in_process(config, down, upstream_client="aiohttp")
    assert answer.status_code == 503 and "unreachable" in answer.json()["error"]
