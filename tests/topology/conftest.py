"""The cluster's shape on one machine: the MLflow server as ``manifests/base/mlflow`` deploys it, on PostgreSQL,
with its artifact root on S3 (moto) behind a fault-injecting proxy.

- PostgreSQL 15 from Debian (``initdb``/``pg_ctl`` into a temporary folder, TCP on 127.0.0.1 only, password
  authentication), run as the ``postgres`` user through ``runuser`` when the tests run as root (PostgreSQL
  refuses root);
- moto's S3 server on 127.0.0.1, reached only through ``tests/fault_proxy.FaultProxy``, so a test can make S3
  refuse connections without losing moto's in-memory state;
- ``mlflow server`` with the Deployment's own arguments, read from the manifest (``--workers``,
  ``--backend-store-uri postgresql+psycopg2://...``, ``--default-artifact-root s3://mlflow``,
  ``--no-serve-artifacts``, ``--allowed-hosts``) and its environment (``PGUSER``/``PGPASSWORD``,
  ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``); only the database's host and port and the listening address differ.

``faulted_run`` is the one `kfops run` the tests share (a run costs a minute or more on two cores): S3 refuses
connections for 20 s while ingest writes the snapshot and again while register checks the model files, and the
MLflow server is killed and restarted while training runs. tests/topology/test_pipeline_faults.py checks what the
faults left; tests/topology/test_cluster_shape.py serves, monitors, promotes and rolls back its model.

Every process is started here and stopped by its own pid (``pg_ctl`` by its data folder's pid file; MLflow's
server by its process group, which holds its workers). ``make test-topology`` runs these tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.fault_proxy import FaultProxy
from tests.tools import require
from tests.topology.helpers import OUTAGE_S, RestartDuringTraining, run_args

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "manifests" / "base" / "mlflow" / "deployment.yaml"
DB_USER, DB_PASSWORD, DB_NAME = "mlflow", "kfops-topology-db", "mlflow"
S3_KEY, S3_SECRET, REGION = "topology-key", "topology-secret", "us-east-1"
ARTIFACT_BUCKET = "mlflow"


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Postgres:
    bin_dir: Path
    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        password_file = self.root / "password"
        password_file.write_text(DB_PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(password_file, "postgres", "postgres")
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                DB_USER,
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ]
        )
        self.start()
        self._run([str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, DB_NAME])

    def _run(self, command: list[str]) -> None:
        env = {**os.environ, "PGPASSWORD": DB_PASSWORD}
        done = subprocess.run(_as_postgres(command), capture_output=True, text=True, env=env, timeout=120)
        if done.returncode:
            raise RuntimeError(
                f"{' '.join(command)} exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def start(self) -> None:
        # TCP on 127.0.0.1 only; no Unix socket (its default folder belongs to the system's cluster).
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        log = self.root / "postgres.log"
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://127.0.0.1:{self.port}/{DB_NAME}"


def _postgres_bin() -> Path:
    """PostgreSQL's bin folder (createdb and pg_ctl beside initdb); skipped (failed under CI) without it."""
    return Path(require("initdb")).resolve().parent  # Debian links initdb into PATH; the real folder has the rest


def manifest_server() -> tuple[list[str], dict[str, str]]:
    """The mlflow container's args and its literal env values (the rest come from Secrets) in the manifest."""
    deployment = yaml.safe_load(MANIFEST.read_text())
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow")
    literal = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return list(container["args"]), literal


@dataclass
class MlflowServer:
    """``mlflow server`` with the manifest's arguments; restartable on the same port and backend."""

    backend_store_uri: str
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args, _ = manifest_server()
        replaced = []
        for arg in args:
            flag = arg.split("=", 1)[0]
            if flag == "--host":
                arg = "--host=127.0.0.1"
            elif flag == "--port":
                arg = f"--port={self.port}"
            elif flag == "--backend-store-uri":
                arg = f"--backend-store-uri={self.backend_store_uri}"
            replaced.append(arg)
        return [str(Path(sys.executable).with_name("mlflow")), *replaced]

    def start(self, timeout: float = 120) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.starts += 1
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server and its workers (its own process group), as a crashed pod."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@dataclass
class Topology:
    postgres: Postgres
    moto_port: int
    proxy: FaultProxy
    mlflow: MlflowServer

    @property
    def s3_endpoint(self) -> str:
        return self.proxy.endpoint

    def client_env(self) -> dict[str, str]:
        """What a pipeline pod gets from the kfops-platform ConfigMap and the kfops-s3 Secret, pointing here."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow.uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "KFOPS_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": REGION,
        }


def _start_moto() -> tuple[subprocess.Popen, int]:
    import socket

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    raise RuntimeError("moto S3 server did not start")


@pytest.fixture(scope="session")
def topology():
    """PostgreSQL, moto behind a FaultProxy, and the MLflow server on both; stopped at the end of the session."""
    bin_dir = _postgres_bin()
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.fail("running as root needs runuser (util-linux) to start PostgreSQL as the postgres user")
    root = Path(tempfile.mkdtemp(prefix="kfops-topology-"))
    os.chmod(root, 0o755)  # the postgres user must reach its data folder inside
    postgres = Postgres(bin_dir, root / "postgres")
    moto, proxy, server = None, None, None
    try:
        postgres.init()
        moto, moto_port = _start_moto()
        proxy = FaultProxy(moto_port).start()
        _, literal_env = manifest_server()
        env = {
            **os.environ,
            **literal_env,
            "PGUSER": DB_USER,
            "PGPASSWORD": DB_PASSWORD,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "MLFLOW_S3_ENDPOINT_URL": proxy.endpoint,
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        server = MlflowServer(postgres.url, env, root / "mlflow-server.log")
        server.start()
        topology = Topology(postgres, moto_port, proxy, server)
        _make_bucket(topology)
        yield topology
    finally:
        if server is not None:
            server.stop()
        if proxy is not None:
            proxy.stop()
        if moto is not None:
            os.kill(moto.pid, signal.SIGTERM)
            moto.wait(timeout=10)
        if postgres.data.exists():
            with contextlib.suppress(RuntimeError):  # not running
                postgres.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _make_bucket(topology: Topology) -> None:
    """The artifact root's bucket, as the platform's MinIO set-up job creates it."""
    from minio import Minio

    client = Minio(f"127.0.0.1:{topology.moto_port}", access_key=S3_KEY, secret_key=S3_SECRET, secure=False)
    if not client.bucket_exists(ARTIFACT_BUCKET):
        client.make_bucket(ARTIFACT_BUCKET)


@pytest.fixture
def topology_env(topology, monkeypatch):
    """This test's process (and the pipeline tasks it starts) pointed at the topology, as a pod would be."""
    for name in ("KFOPS_MLFLOW_ARTIFACT_ROOT", "KFOPS_WORKSPACE", "KFOPS_ARTIFACT_STORE", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in topology.client_env().items():
        monkeypatch.setenv(name, value)
    import mlflow

    mlflow.set_tracking_uri(topology.mlflow.uri)
    yield topology
    # The next test starts with S3 answering: no armed trip left, no outage still running.
    topology.proxy.disarm()
    deadline = time.time() + 120
    while topology.proxy.is_refusing() and time.time() < deadline:
        time.sleep(0.2)


@dataclass
class FaultedRun:
    code: int
    output: str
    result: dict | None  # kfops run's --json summary, when it succeeded
    workspace: Path
    trips: list[str]  # the S3 outages that fired, by what started them
    restarter: RestartDuringTraining
    server_starts_before: int


@pytest.fixture(scope="session")
def faulted_run(topology, tmp_path_factory, transactions) -> FaultedRun:
    """`kfops run` against the topology with three faults injected (see the module doc); every process-wide
    change it makes (environment, MLflow's globals) is undone afterwards."""
    import contextlib
    import io
    import json

    from kfops.cli import main
    from kfops.components import storage
    from tests.isolation import process_state_restored

    folder = tmp_path_factory.mktemp("faulted-run")
    proxy, server = topology.proxy, topology.mlflow
    with process_state_restored():
        for name in ("KFOPS_MLFLOW_ARTIFACT_ROOT", "KFOPS_WORKSPACE", "KFOPS_ARTIFACT_STORE", "MLFLOW_REGISTRY_URI"):
            os.environ.pop(name, None)
        os.environ.update(topology.client_env())
        storage.write_bytes("s3://raw/tx.parquet", transactions.to_parquet(index=False))
        outages_before = len(proxy.outages)
        proxy.trip_on(r"PUT /kfops-store/datasets/\S+/data\.parquet ", OUTAGE_S)
        proxy.trip_on(r"HEAD /mlflow/\S+/MLmodel ", OUTAGE_S)
        starts = server.starts
        restarter = RestartDuringTraining(server, "topology-faults")
        restarter.start()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                code = main(
                    ["run", *run_args(folder, "s3://raw/tx.parquet", "--experiment", "topology-faults"), "--json"]
                )
        finally:
            restarter.stop.set()
            restarter.join(timeout=120)
            proxy.disarm()
    text = out.getvalue()
    result = json.loads(text[text.index("{") :]) if code == 0 and "{" in text else None
    trips = [why for *_, why in proxy.outages[outages_before:] if why.startswith("trip")]
    return FaultedRun(code, text, result, folder / "ws", trips, restarter, starts)
