"""Shared fixtures: small generated data, a real sqlite MLflow store, a real S3 endpoint (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# prometheus_client picks its value class from the environment when first imported, and a test that imports Feast
# directly sets PROMETHEUS_MULTIPROC_DIR (the suite itself imports it through feature_store/feast_env.py, which does
# not): imported here first, every test's metrics stay in-process whatever order the modules run in.
import prometheus_client.values  # noqa: F401
import pytest

from kfops.components.contracts import SplitConfig, TrainConfig
from kfops.datagen import generate_transactions
from tests.isolation import process_state_restored

SMALL_ROWS = 4000


def pytest_addoption(parser):
    parser.addoption(
        "--shuffle-modules",
        metavar="SEED",
        type=int,
        default=None,
        help="run the test modules in an order shuffled with SEED (tests inside a module keep theirs): checks that "
        "no module depends on what an earlier one left behind",
    )


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle-modules")
    if seed is None:
        return
    import random

    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    order = sorted(modules)
    random.Random(seed).shuffle(order)
    items[:] = [item for module in order for item in modules[module]]


def pytest_report_header(config):
    seed = config.getoption("--shuffle-modules")
    return f"test modules shuffled with seed {seed}" if seed is not None else None


@pytest.fixture(autouse=True)
def _isolated_process_state():
    """Every test starts from the process state the one before it found (tests/isolation.py)."""
    with process_state_restored():
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def transactions():
    """4,000 generated transactions (copy before changing)."""
    return generate_transactions(rows=SMALL_ROWS, seed=11)


@pytest.fixture
def data_file(tmp_path, transactions) -> Path:
    path = tmp_path / "transactions.parquet"
    transactions.to_parquet(path, index=False)
    return path


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow tracking and registry store, set in the environment as a pod's would be."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("KFOPS_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "mlartifacts"))
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def fast_config() -> TrainConfig:
    return TrainConfig(hidden_sizes=[16, 8], epochs=4, batch_size=256, early_stopping_patience=2, seed=3, device="cpu")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, transactions):
    """Splits, fitted feature spec and transformed matrices for the small data, written to files."""
    from kfops.components.datasets import canonical_sha256
    from kfops.components.ingest.logic import resolve_schema, split_frame, write_split
    from kfops.components.preprocess.logic import fit_feature_spec
    from kfops.components.transform import encode_labels, save_matrix, transform_features

    root = tmp_path_factory.mktemp("prepared")
    schema = resolve_schema(transactions, "transactions", "is_fraud", drop=["transaction_id", "customer_id"])
    splits = split_frame(transactions, "is_fraud", SplitConfig(seed=5))
    sha = canonical_sha256(transactions)
    spec = fit_feature_spec(
        splits["train"],
        "is_fraud",
        schema.numeric,
        schema.categorical,
        schema.positive_class,
        schema.negative_class,
        data_sha256=sha,
    )
    spec.save(root / "feature_spec.json")
    paths = {"spec": root / "feature_spec.json", "sha256": sha, "schema": schema}
    for name, frame in splits.items():
        write_split(frame, root / f"{name}.parquet")
        save_matrix(str(root / f"{name}.npz"), transform_features(spec, frame), encode_labels(spec, frame["is_fraud"]))
        paths[f"{name}_raw"] = root / f"{name}.parquet"
        paths[f"{name}_matrix"] = root / f"{name}.npz"
    return paths


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, in its own process (stopped by its pid)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        os.kill(proc.pid, signal.SIGTERM)
        pytest.fail("moto S3 server did not start")
    yield endpoint
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> str:
    monkeypatch.setenv("KFOPS_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


def train_prepared(prepared, config: TrainConfig, model_dir, tensorboard_dir, **kwargs):
    """Train a real model on the ``prepared`` fixture's data and log it to MLflow (``kwargs`` go to train_model)."""
    from kfops.components.train.logic import train_model

    return train_model(
        str(prepared["train_matrix"]),
        str(prepared["validation_matrix"]),
        str(prepared["spec"]),
        str(prepared["train_raw"]),
        config,
        str(model_dir),
        str(tensorboard_dir),
        **kwargs,
    )
