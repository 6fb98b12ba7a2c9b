"""The GPU scripts (benchmarks/gpu_run.sh, benchmarks/gpu_check.py) on a machine without a GPU: they parse, fail
clearly, run their CPU parts; and the CUDA image's torch is the one its build checks, the docs name, and the GPU
figures are either measured on or marked as not measured on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_DOCKERFILE = REPO / "images" / "component-cuda" / "Dockerfile"


def image_torch() -> str:
    found = re.search(r"^FROM pytorch/pytorch:([0-9][0-9.]*)-", CUDA_DOCKERFILE.read_text(), re.MULTILINE)
    assert found, "the CUDA image's base names no pytorch/pytorch:<torch version>-... tag"
    return found.group(1)


def no_gpu() -> bool:
    import torch

    return shutil.which("nvidia-smi") is None and not torch.cuda.is_available()


def test_the_cuda_images_torch_is_the_one_its_build_checks_and_the_docs_name():
    version = image_torch()
    assert f"torch.__version__.startswith('{version}')" in (REPO / "images" / "suite-image.sh").read_text()
    assert f"torch {version}" in (REPO / "images" / "README.md").read_text()


def test_the_readme_quotes_gpu_figures_only_measured_on_the_images_torch():
    """A README line quoting GPU throughput names the torch it was measured with, and that is the CUDA image's;
    figures from another torch stay in benchmarks/RESULTS.md, and the README says where they are and why."""
    version = image_torch()
    readme = (REPO / "README.md").read_text()
    # a README bullet or paragraph, wrapped lines joined
    blocks = [" ".join(b.split()) for b in re.split(r"\n\s*\n|\n- ", readme)]
    quoting = [b for b in blocks if ("H200" in b or "H100" in b) and re.search(r"\d+x at batch|samples/s", b)]
    for block in quoting:
        measured = re.search(r"measured with torch (\d+\.\d+\.\d+)", block)
        assert measured, f"GPU figures without the torch they were measured with: {block!r}"
        assert measured.group(1) == version, f"GPU figures measured on torch {measured.group(1)}, not {version}"
    if not quoting:
        training = next(b for b in blocks if b.startswith("`benchmarks/bench_training.py`"))
        assert "RESULTS.md" in training and "not quoted here" in training and "gpu_run.sh" in training


def test_gpu_run_sh_parses_and_reads_the_images_torch():
    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_run.sh")], check=True)
    read = subprocess.run(
        ["sed", "-n", r"s|^FROM pytorch/pytorch:\([0-9][0-9.]*\)-.*|\1|p", str(CUDA_DOCKERFILE)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert read.stdout.strip() == image_torch()


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU: gpu_run.sh would run in full")
def test_gpu_run_sh_stops_clearly_without_a_gpu(tmp_path):
    done = subprocess.run(
        ["bash", "benchmarks/gpu_run.sh"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "no NVIDIA GPU" in done.stderr
    assert not (tmp_path / "pip.log").exists()  # it stopped before installing anything


@pytest.mark.skipif(not no_gpu(), reason="this machine has a GPU")
def test_gpu_check_stops_clearly_without_a_gpu():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--cpu-only" in done.stderr


def test_the_quality_check_fails_a_worse_variant_and_a_cuda_run_without_its_graph():
    from benchmarks.gpu_check import verdicts

    cpu = {"loss": 0.30, "auc": 0.96, "device": "cpu", "cuda_graphs": "False"}
    shipped = {"loss": 0.31, "auc": 0.955, "device": "cuda", "cuda_graphs": "True"}
    reference = {"loss": 0.05, "auc": 0.95, "device": "cuda"}  # its own (unweighted) loss: AUC is compared
    assert verdicts({"cpu": cpu, "cuda": shipped, "reference": reference}) == []
    eager_fallback = {**shipped, "cuda_graphs": "False"}
    assert any("did not replay a CUDA graph" in f for f in verdicts({"cpu": cpu, "cuda": eager_fallback}))
    worse = {**shipped, "loss": 0.40}
    assert any("val_loss" in f for f in verdicts({"cpu": cpu, "cuda": worse}))
    assert any("ROC-AUC" in f for f in verdicts({"cpu": cpu, "reference": {**reference, "auc": 0.90}}))
    assert any("not finite" in f for f in verdicts({"cpu": cpu, "cuda": {**shipped, "loss": float("nan")}}))


@pytest.mark.slow
def test_gpu_check_cpu_parts_train_through_the_shipped_path():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--cpu-only", "--rows", "4000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert re.search(r"cpu: best val_loss [\d.]+, val ROC-AUC [\d.]+, \d+ epochs, [\d,]+ samples/s on cpu", done.stdout)
    assert "reference: best val_loss" in done.stdout
    assert done.stdout.rstrip().endswith("PASS")
