"""A kfops model loads and scores with kfops out of reach: the code it needs travels in the model (``code/kfops``,
``train/model_code.py``). Each family's model is loaded by ``mlflow.pyfunc.load_model`` in a fresh Python whose
import system cannot find an installed kfops (an editable finder removed, the top-level ``kfops`` resolvable only
inside the model folder), and answers exactly as the installed kfops's loader does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import train_prepared

ISOLATED = r"""
import importlib.machinery, json, sys
model_dir = sys.argv[1]
code = model_dir + "/code"
# No installed kfops: drop an editable install's finder, and resolve the top-level package only in the model
# folder, once MLflow has put its code on sys.path.
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]


class OnlyTheModelsKfops:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "kfops":
            return None
        # only where MLflow put the model's code on sys.path
        spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if p.startswith(model_dir)])
        if spec is None:
            raise ModuleNotFoundError("no kfops here", name=name)
        return spec


sys.meta_path.insert(0, OnlyTheModelsKfops)
try:
    import kfops  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("kfops was importable before the model was loaded")
import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model(model_dir)
import kfops

assert kfops.__file__.startswith(code), kfops.__file__
rows = pd.read_parquet(sys.argv[2])
print(json.dumps({"kfops": kfops.__file__, "predictions": model.predict(rows).to_dict(orient="list")}))
"""


@pytest.mark.parametrize("family", ["mlp", "gbdt"])
def test_the_model_loads_and_answers_with_no_kfops_installed(tmp_path, prepared, fast_config, mlflow_store, family):
    import dataclasses

    from kfops.components.model_store import load_model_dir
    from kfops.components.transform import model_input_frame

    config = dataclasses.replace(
        fast_config, model_family=family, model_params={"max_iter": 30} if family == "gbdt" else {}
    )
    path_before = list(sys.path)
    train_prepared(prepared, config, tmp_path / "model", tmp_path / "tb")
    assert sys.path == path_before  # saving loaded the model to check its example; its code path is gone again
    model_dir = tmp_path / "model"
    shipped = sorted(str(p.relative_to(model_dir / "code")) for p in (model_dir / "code").rglob("*.py"))
    assert "kfops/components/train/pyfunc.py" in shipped and "kfops/components/transform.py" in shipped
    assert not any(p.startswith(("kfops/cli", "kfops/components/serving", "kfops/pipelines")) for p in shipped)

    loaded = load_model_dir(model_dir)
    assert str(model_dir / "code") not in sys.path  # the installed kfops stays first for what starts later
    raw = pd.read_parquet(prepared["test_raw"]).head(50)
    rows = model_input_frame(loaded.spec, raw)
    expected = loaded.predict(rows)
    rows.to_parquet(tmp_path / "rows.parquet")

    done = subprocess.run(
        [sys.executable, "-c", ISOLATED, str(model_dir), str(tmp_path / "rows.parquet")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repository: nothing to import from the working directory
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(answer["kfops"]).is_relative_to(model_dir / "code")
    assert answer["predictions"]["prediction"] == expected["prediction"].tolist()
    assert answer["predictions"]["probability"] == pytest.approx(expected["probability"].tolist(), abs=1e-9)


def wait_until_up(url: str, proc, log: Path, seconds: float) -> None:
    """Until ``url`` answers 200; fails with the server's log when it exits or ``seconds`` pass."""
    import time
    import urllib.request

    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def venv_without_kfops(root: Path) -> Path:
    """A virtualenv that sees this environment's third-party packages (MLflow, torch, scikit-learn...) through a
    .pth path line, but not kfops: the editable install's finder lives in a .pth file of this environment's
    site-packages, and a path added by a .pth line has its own .pth files ignored. Its python."""
    import site
    import venv

    venv.EnvBuilder(with_pip=False).create(root)
    packages = next(p for p in site.getsitepackages() if p.endswith("site-packages"))
    target = next((root / "lib").glob("python3*/site-packages"))
    (target / "packages.pth").write_text(packages + "\n")
    python = root / "bin" / "python"
    # MLflow's scoring server starts `uvicorn` by name: the venv's own, as a pip-installed one would be.
    (root / "bin" / "uvicorn").write_text(f'#!/bin/sh\nexec "{python}" -m uvicorn "$@"\n')
    (root / "bin" / "uvicorn").chmod(0o755)
    probe = subprocess.run([str(python), "-c", "import kfops"], capture_output=True, text=True, cwd=root)
    assert probe.returncode != 0 and "No module named 'kfops'" in probe.stderr, probe
    return python


def test_mlflow_models_serve_answers_like_kfops_in_a_venv_without_kfops(tmp_path, prepared, fast_config, mlflow_store):
    """`mlflow models serve -m models:/NAME/1 --env-manager local` in a venv with no kfops: the registered model's
    answers over HTTP equal the kfops loader's (what `kfops serve` scores with)."""
    import os
    import signal
    import urllib.request

    import mlflow

    from kfops.components.model_store import load_model
    from kfops.components.transform import model_input_frame
    from tests.conftest import free_port

    outcome = train_prepared(prepared, fast_config, tmp_path / "model", tmp_path / "tb")
    mlflow.register_model(outcome.model_uri, "standalone")
    loaded = load_model("standalone/1", mlflow_store)
    rows = model_input_frame(loaded.spec, pd.read_parquet(prepared["test_raw"]).head(40))
    expected = loaded.predict(rows)

    python = venv_without_kfops(tmp_path / "venv")
    port = free_port()
    log = tmp_path / "serve.log"
    path = f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PYTHONPATH": "", "PATH": path}
    command = [str(python), "-m", "mlflow", "models", "serve", "-m", "models:/standalone/1", "--env-manager", "local"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", proc, log, 120)
        body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            served = pd.DataFrame(json.loads(answer.read())["predictions"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert served["prediction"].tolist() == expected["prediction"].tolist()
    assert served["probability"].tolist() == pytest.approx(expected["probability"].tolist(), abs=1e-9)
    assert "kfops/components/train/pyfunc.py" not in log.read_text()  # no kfops traceback in the server's log


MLSERVER_VENV = Path(__file__).resolve().parents[2] / ".venv-mlserver"
MLSERVER_PACKAGES = ("mlserver==1.7.1", "mlserver-mlflow==1.7.1", "pandas<3")


def mlserver_venv() -> Path:
    """MLServer with its MLflow runtime in its own virtualenv (it pins an older FastAPI than the suite's), built once
    per checkout; torch, which the MLP needs and MLServer does not bring, comes from this environment through a .pth
    line after the venv's own packages. No kfops in it. Its python."""
    import site
    import venv

    python = MLSERVER_VENV / "bin" / "python"
    stamp = MLSERVER_VENV / (".installed-" + "-".join(MLSERVER_PACKAGES).replace("<", "lt").replace("=", ""))
    if not stamp.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(MLSERVER_VENV)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *MLSERVER_PACKAGES], check=True, timeout=900)
        stamp.touch()
    packages = next(p for p in site.getsitepackages() if p.endswith("site-packages"))
    target = next((MLSERVER_VENV / "lib").glob("python3*/site-packages"))
    (target / "zz-suite-packages.pth").write_text(packages + "\n")  # "zz": after the venv's own
    return python


@pytest.mark.slow
def test_mlservers_mlflow_runtime_answers_like_kfops_without_kfops(tmp_path, prepared, fast_config, mlflow_store):
    """KServe's stock runtime for `modelFormat: mlflow` is MLServer with mlserver-mlflow: it loads the model folder
    in a venv with no kfops, and its V2 answers (pandas content type) equal the kfops loader's."""
    import os
    import signal
    import urllib.request

    from kfops.components.model_store import load_model_dir
    from kfops.components.transform import model_input_frame
    from tests.conftest import free_port

    train_prepared(prepared, fast_config, tmp_path / "model", tmp_path / "tb")
    loaded = load_model_dir(tmp_path / "model")
    rows = model_input_frame(loaded.spec, pd.read_parquet(prepared["test_raw"]).head(40))
    expected = loaded.predict(rows)

    python = mlserver_venv()
    probe = subprocess.run([str(python), "-c", "import kfops"], capture_output=True, text=True, cwd=tmp_path)
    assert "No module named 'kfops'" in probe.stderr
    http, grpc, metrics = free_port(), free_port(), free_port()
    (tmp_path / "srv" / "m").mkdir(parents=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "parallel_workers": 0,
    }
    (tmp_path / "srv" / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": "fraud",
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(tmp_path / "model")},
    }
    (tmp_path / "srv" / "m" / "model-settings.json").write_text(json.dumps(model))
    log = tmp_path / "mlserver.log"
    env = {**os.environ, "PYTHONPATH": "", "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(python.parent / "mlserver"), "start", str(tmp_path / "srv")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        wait_until_up(f"http://127.0.0.1:{http}/v2/models/fraud/ready", proc, log, 180)
        inputs = []
        for name, column in rows.items():
            if column.dtype.kind == "f":
                data = [None if pd.isna(v) else float(v) for v in column]
                inputs.append({"name": name, "datatype": "FP64", "shape": [len(column)], "data": data})
            else:
                data = ["" if v is None else v for v in column]
                inputs.append({"name": name, "datatype": "BYTES", "shape": [len(column)], "data": data})
        body = json.dumps({"inputs": inputs, "parameters": {"content_type": "pd"}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{http}/v2/models/fraud/infer", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            outputs = {o["name"]: o["data"] for o in json.loads(answer.read())["outputs"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # A blank category arrives as "" (the V2 BYTES tensor has no null); both mean "not a known category" to the model.
    assert outputs["prediction"] == expected["prediction"].tolist()
    assert outputs["probability"] == pytest.approx(expected["probability"].tolist(), abs=1e-9)
