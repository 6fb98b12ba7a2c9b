"""The end-to-end workflow's client (.github/scripts/call_model.py) against a real predictor process, so the
requests it sends after `kfops deploy` on kind are known to be what the server accepts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .test_server import NAME, free_port, wait_ready

SCRIPT = Path(__file__).resolve().parents[2] / ".github" / "scripts" / "call_model.py"


def test_e2e_call_script_scores_rows_over_v1_and_v2(registered_model, tmp_path):
    m = registered_model
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": m.tracking_uri}
    command = [sys.executable, "-m", "kfops.serving", "--model", f"{m.name}@champion", "--name", NAME]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(base, proc, log)
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--url", base, "--name", NAME, "--rows", "7"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{NAME} at {base}: 7 rows scored over V1 and V2" in result.stdout
        wrong = subprocess.run(
            [sys.executable, str(SCRIPT), "--url", base, "--name", "no-such-model"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert wrong.returncode != 0 and "404" in wrong.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
