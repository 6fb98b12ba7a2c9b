"""Data-parallel training: 2 gloo processes under torchrun on this CPU against one process, the training
command under torchrun logging one MLflow run, and the Kubeflow Trainer TrainJob (CRD schema, exact requests to a
fake API server)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest

from kfops.components.contracts import KfopsError, TrainConfig
from kfops.components.train import distributed
from kfops.components.train.trainjob import TrainJobSpec, build_trainjob, submit_and_wait
from tests.components.fake_jobs import FakeJobsKube, condition, trainjobs_path
from tests.conftest import free_port
from tests.crd_schemas import schema_errors

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
CONFIG = TrainConfig(hidden_sizes=[16, 8], epochs=4, batch_size=256, early_stopping_patience=0, seed=3, dropout=0.0)

FIT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from kfops.components.contracts import TrainConfig
    from kfops.components.transform import load_matrix
    from kfops.components.train import distributed
    from kfops.components.train.loop import fit

    context = distributed.init_from_env("cpu")
    train, validation, config, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    result = fit(*load_matrix(train), *load_matrix(validation), TrainConfig.from_dict(config))
    weights = {k: v.flatten().tolist() for k, v in result.model.state_dict().items()}
    rows = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in result.history]
    with open(f"{out}/rank{context.rank if context else 0}.json", "w") as fh:
        json.dump({"history": rows, "weights": weights, "world": result.world_size}, fh)
    distributed.shutdown()
    """
)


def torchrun(*args, env=None, timeout=180):
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    command = [*TORCHRUN, "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_gloo_processes_match_one_process(tmp_path, prepared):
    from kfops.components.train.loop import fit
    from kfops.components.transform import load_matrix

    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    config = dict(CONFIG.to_dict(), device="cpu")
    torchrun(
        str(script),
        str(prepared["train_matrix"]),
        str(prepared["validation_matrix"]),
        json.dumps(config),
        str(tmp_path),
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["world"] == 2  # every rank saw the same metrics and weights
    single = fit(
        *load_matrix(str(prepared["train_matrix"])),
        *load_matrix(str(prepared["validation_matrix"])),
        TrainConfig.from_dict(config),
    )
    # Each rank trains its half of every batch, its loss weighted by its share: the same steps as one process,
    # up to float rounding.
    for parallel, alone in zip(ranks[0]["history"], single.history, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert parallel[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key
    for name, values in single.model.state_dict().items():
        assert ranks[0]["weights"][name] == pytest.approx(values.flatten().tolist(), rel=1e-3, abs=1e-5)


def test_the_training_command_under_torchrun_logs_one_run_from_rank_zero(tmp_path, prepared, mlflow_store):
    import mlflow

    done = torchrun(
        "-m",
        "kfops.components.train",
        "--train-features",
        str(prepared["train_matrix"]),
        "--validation-features",
        str(prepared["validation_matrix"]),
        "--feature-spec",
        str(prepared["spec"]),
        "--raw-train",
        str(prepared["train_raw"]),
        "--hidden-sizes",
        "16,8",
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--device",
        "cpu",
        "--experiment",
        "ddp",
        "--tag",
        "kfops.trainjob=job-1",
    )
    runs = mlflow.search_runs(experiment_names=["ddp"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["kfops.world_size"] == "2" and run.data.tags["kfops.trainjob"] == "job-1"
    assert run.data.tags["kfops.model_uri"].startswith("models:/")
    # Katib's StdOut collector format, printed once (rank 0), the best epoch's values last.
    lines = [line for line in done.stdout.splitlines() if line.startswith("val_loss=")]
    assert len(lines) == 1 and float(lines[0].split()[0].split("=")[1]) == pytest.approx(
        run.data.metrics["val_loss"], rel=1e-5
    )
    assert done.stdout.count("epoch 2: ") == 1


def test_slices_cover_each_batch_once():
    for size, world in ((10, 2), (7, 3), (256, 4), (3, 3)):
        parts = [distributed.slice_of(100, 100 + size, r, world) for r in range(world)]
        assert parts[0][0] == 100 and parts[-1][1] == 100 + size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_a_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is None and distributed.current() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(KfopsError, match="start distributed training with torchrun"):
        distributed.init_from_env("cpu")


# ---------------------------------------------------------------------------------------------- TrainJob
def job(**changes) -> TrainJobSpec:
    values = dict(
        name="fraud-ddp",
        namespace="team-a",
        image="ghcr.io/kfops/kfops-cuda:test",
        train_features="s3://kfops/p/train_features",
        validation_features="s3://kfops/p/validation_features",
        feature_spec="s3://kfops/p/feature_spec",
        raw_train="s3://kfops/p/train",
        config=TrainConfig(hidden_sizes=[128, 64], epochs=20, batch_size=8192),
        num_nodes=2,
        gpus_per_node=4,
        env_secret="kfops-training-env",
        checkpoint_uri="s3://kfops/checkpoints/fraud-ddp",
    )
    return TrainJobSpec(**(values | changes))


def test_trainjob_manifest_is_valid_against_the_trainer_crd():
    manifest = build_trainjob(job())
    assert schema_errors(manifest) == []
    trainer = manifest["spec"]["trainer"]
    assert manifest["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    assert trainer["command"] == ["torchrun", "--nproc-per-node", "4", "-m", "kfops.components.train"]
    args = trainer["args"]
    assert args[args.index("--device") + 1] == "cuda" and args[args.index("--hidden-sizes") + 1] == "128,64"
    assert args[args.index("--checkpoint-uri") + 1] == "s3://kfops/checkpoints/fraud-ddp"
    assert "kfops.trainjob=fraud-ddp" in args
    secrets = {e["name"] for e in trainer["env"] if "valueFrom" in e}
    assert "MLFLOW_TRACKING_URI" in secrets and "AWS_SECRET_ACCESS_KEY" in secrets
    cpu = build_trainjob(job(gpus_per_node=0, procs_per_node=2, env_secret=""))
    assert schema_errors(cpu) == [] and "nvidia.com/gpu" not in cpu["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert cpu["spec"]["trainer"]["args"][cpu["spec"]["trainer"]["args"].index("--device") + 1] == "cpu"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Fraud_DDP"}, "DNS-1035"),
        ({"train_features": "/data/train.npz"}, "train_features must be an s3:// URI"),
        ({"num_nodes": 0}, "num_nodes must be at least 1"),
        ({"procs_per_node": 8}, "NCCL needs one GPU per process"),
    ],
)
def test_bad_trainjobs_are_refused(changes, message):
    with pytest.raises(KfopsError, match=message):
        build_trainjob(job(**changes))


@pytest.fixture
def fake():
    server = FakeJobsKube().start()
    yield server
    server.stop()


def test_trainjob_is_submitted_and_waited_for(fake):
    from kfops.components.kube import connect

    manifest = build_trainjob(job())
    fake.job_statuses.extend(
        [
            None,
            {"conditions": [condition("Created", reason="JobsCreationSucceeded")]},
            {"conditions": [condition("Complete")]},
        ]
    )
    result = submit_and_wait(connect(host=fake.url), manifest, timeout_s=30, poll_s=0.01)
    path = trainjobs_path("team-a", "fraud-ddp")
    assert fake.calls() == [("POST", trainjobs_path("team-a")), ("GET", path), ("GET", path), ("GET", path)]
    assert fake.requests[0].body == manifest and fake.requests[0].content_type == "application/json"
    assert result.state == "Complete"
    # A retried step finds its own TrainJob and watches it instead of failing on 409.
    again = submit_and_wait(connect(host=fake.url), manifest, timeout_s=30, poll_s=0.01)
    assert again.state == "Complete" and fake.calls()[-2:] == [("GET", path), ("GET", path)]


def test_a_failed_or_slow_trainjob_is_a_clear_error(fake):
    from kfops.components.kube import connect

    failed = condition("Failed", reason="JobSetFailed", message="node-0 exited 1")
    fake.job_statuses.append({"conditions": [failed]})
    with pytest.raises(KfopsError, match=r"TrainJob team-a/fraud-ddp failed \(JobSetFailed\): node-0 exited 1"):
        submit_and_wait(connect(host=fake.url), build_trainjob(job()), timeout_s=30, poll_s=0.01)
    fake.job_statuses.clear()
    fake.job_statuses.append({"conditions": [condition("Suspended")]})
    with pytest.raises(KfopsError, match="did not complete within 0 s; it is suspended"):
        submit_and_wait(connect(host=fake.url), build_trainjob(job(name="other")), timeout_s=0, poll_s=0.01)
    bad = build_trainjob(job(name="bad"))
    bad["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(KfopsError, match=r"create TrainJob team-a/bad: invalid: .*numNodes"):
        submit_and_wait(connect(host=fake.url), bad, timeout_s=1, poll_s=0.01)
