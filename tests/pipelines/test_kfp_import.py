"""``import_kfp_without_client``: kfp imported for a local run without its API client, and nothing else changed."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, os, sys
from kfops.components.kfp_support import import_kfp_without_client
import_kfp_without_client()
from kfp import dsl, local
without_client = "kfp.client" not in sys.modules and "kubernetes" not in sys.modules
runtime_env = os.environ.get("_KFP_RUNTIME")

@dsl.component(base_image="python:3.11")
def double(x: int) -> int:
    return 2 * x

@dsl.pipeline
def twice(x: int = 1) -> int:
    return double(x=double(x=x).output).output

from kfp import compiler
compiler.Compiler().compile(twice, os.path.join(os.path.dirname(__file__), "twice.yaml"))
from kfp.client import Client  # still there for whoever needs it
print(json.dumps({"without_client": without_client, "runtime_env": runtime_env,
                  "pipeline_api": hasattr(dsl, "pipeline") and hasattr(dsl, "ParallelFor"),
                  "client": Client.__name__}))
"""


def run_probe(tmp_path, env_value: str | None) -> dict:
    import os

    script = tmp_path / "probe.py"  # a file: kfp reads a lightweight component's source
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    if env_value is not None:
        env["_KFP_RUNTIME"] = env_value
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kfp_imports_without_its_client_and_keeps_its_pipeline_api(tmp_path):
    found = run_probe(tmp_path, None)
    assert found == {"without_client": True, "runtime_env": None, "pipeline_api": True, "client": "Client"}


def test_a_callers_own_runtime_flag_is_left_as_it_was(tmp_path):
    assert run_probe(tmp_path, "false")["runtime_env"] == "false"
