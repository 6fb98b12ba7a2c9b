"""A real server process (`python -m kfops.serving`) on 127.0.0.1, driven with KServe's own REST client; and the
`kfops serve` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

from kfops.cli import build_parser, main

from .helpers import clean, v1_objects

NAME = "fraud"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/v2/models/{NAME}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def test_a_real_server_answers_kserves_own_client_over_v1_and_v2(registered_model, tmp_path):
    m = registered_model
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": m.tracking_uri}
    command = [sys.executable, "-m", "kfops.serving", "--model", f"{m.name}@champion", "--name", NAME]
    command += ["--host", "127.0.0.1", "--port", str(port), "--max-batch-rows", "64", "--max-wait-ms", "2"]
    command += ["--payload-log", str(tmp_path / "payloads"), "--grpc-port", str(grpc_port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(base, proc, log)
        rows = m.rows.iloc[100:112]
        expected = m.expected(rows)
        # gRPC tensors have no null: NaN is a missing number; categorical rows are complete.
        categorical = [c.name for c in m.spec.columns if c.kind == "categorical"]
        full_rows = m.rows.dropna(subset=categorical).head(12).copy()
        full_rows.loc[full_rows.index[0], "amount"] = np.nan

        async def drive():
            v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30))
            v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
            try:
                assert await v1.is_model_ready(base, NAME) and await v2.is_model_ready(base, NAME)
                v1_out = await v1.infer(base, {"instances": v1_objects(rows)}, model_name=NAME)
                inputs = [
                    InferInput(
                        name=col.name,
                        shape=[len(rows)],
                        datatype="FP64" if col.kind == "numeric" else "BYTES",
                        data=[clean(v) for v in rows[col.name].tolist()],
                    )
                    for col in m.spec.columns
                ]
                v2_out = await v2.infer(base, InferRequest(model_name=NAME, infer_inputs=inputs), model_name=NAME)
                with pytest.raises(httpx.HTTPStatusError, match="missing feature"):
                    await v1.infer(base, {"instances": [{"amount": 1.0}]}, model_name=NAME)
                again = await v1.infer(base, {"instances": v1_objects(rows.head(1))}, model_name=NAME)
                # V2 over gRPC, on the same host, the same model and validation.
                complete = [
                    InferInput(
                        name=col.name,
                        shape=[len(full_rows)],
                        datatype="FP64" if col.kind == "numeric" else "BYTES",
                        data=full_rows[col.name].tolist(),
                    )
                    for col in m.spec.columns
                ]
                grpc_client = InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=2, timeout=30)
                try:
                    grpc_out = await grpc_client.infer(InferRequest(model_name=NAME, infer_inputs=complete))
                    with pytest.raises(grpc.RpcError) as bad:
                        await grpc_client.infer(InferRequest(model_name=NAME, infer_inputs=complete[1:]))
                    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "missing input(s) ['amount']" in bad.value.details()
                finally:
                    await grpc_client.close()
                return v1_out, v2_out, again, grpc_out
            finally:
                await v1.close()
                await v2.close()

        v1_out, v2_out, again, grpc_out = asyncio.run(drive())
        grpc_outputs = {o.name: o for o in grpc_out.outputs}
        grpc_expected = m.expected(full_rows)
        assert [v.decode() if isinstance(v, bytes) else v for v in grpc_outputs["prediction"].data] == (
            grpc_expected["prediction"].tolist()
        )
        assert np.allclose(grpc_outputs["probability"].data, grpc_expected["probability"], atol=1e-6)
        labels = expected["prediction"].tolist()
        assert [p["prediction"] for p in v1_out["predictions"]] == labels
        assert np.allclose([p["probability"] for p in v1_out["predictions"]], expected["probability"], atol=1e-6)
        assert {p["model_version"] for p in v1_out["predictions"]} == {m.version}
        outputs = {o.name: o for o in v2_out.outputs}
        assert [v.decode() if isinstance(v, bytes) else v for v in outputs["prediction"].data] == labels
        assert np.allclose(outputs["probability"].data, expected["probability"], atol=1e-6)
        # KServe's client drops the response's model_version field when it parses a REST answer; the version
        # is also in the response parameters, which it keeps.
        assert v2_out.parameters["model_version"] == m.version
        assert again["predictions"][0]["prediction"] == labels[0]
        text = httpx.get(f"{base}/metrics", timeout=5).text
        assert f'model_request_errors_total{{model="{NAME}",status_code="400"}} 1.0' in text
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
    records = [
        json.loads(line) for f in (tmp_path / "payloads").rglob("*.jsonl") for line in f.read_text().splitlines()
    ]
    assert len(records) == 12 + 12 + 1 + 12 and {r["model_version"] for r in records} == {m.version}


def test_kfops_serve_is_a_cli_command_and_a_bad_reference_exits_1(registered_model, capsys):
    args = build_parser().parse_args(["serve", "--model", "fraud-serving@champion", "--port", "9000"])
    assert args.command == "serve" and args.host == "127.0.0.1" and args.max_batch_rows == 256
    uri = registered_model.tracking_uri
    port = str(free_port())
    code = main(
        ["serve", "--model", "no-such-model@champion", "--tracking-uri", uri, "--port", port, "--log-level", "ERROR"]
    )
    assert code == 1
    assert main(["serve", "--model", "x@champion", "--max-batch-rows", "0"]) == 2
    assert "--max-batch-rows must be >= 1" in capsys.readouterr().err


def test_every_server_binds_loopback_unless_told_otherwise():
    """Outside a container the predictor and the router listen on 127.0.0.1 only: reaching them from another
    machine takes an explicit --host 0.0.0.0 (what the serving image's entry point passes)."""
    import inspect

    from kfops.serving.app import serve
    from kfops.serving.router import serve_router

    parser = build_parser()
    assert parser.parse_args(["serve", "--model", "m@champion"]).host == "127.0.0.1"
    assert parser.parse_args(["serve", "--model", "m@champion", "--challenger", "c@challenger"]).host == "127.0.0.1"
    assert (
        parser.parse_args(["route", "--stable", "http://a", "--challenger", "http://b", "--mode", "shadow"]).host
        == "127.0.0.1"
    )
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_router).parameters["host"].default == "127.0.0.1"
    dockerfile = (Path(__file__).resolve().parents[2] / "images" / "serving" / "Dockerfile").read_text()
    assert "0.0.0.0" in dockerfile  # the one place that opens it: the container, where KServe's probes reach it
