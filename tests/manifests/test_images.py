"""The container images (images/*/Dockerfile), ``make images``, and the names the compiled pipelines and the
manifests use. No Docker engine here: the Dockerfiles are checked as text, and ``make -n images`` shows the
exact build commands.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kfops import __version__
from kfops.components.kfp_support import DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE
from tests.manifests.test_serving_manifests import _SECRET_PATTERNS

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = REPO_ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
SUITE_SCRIPT = IMAGES / "suite-image.sh"
PINNED_BASE = re.compile(r"^FROM (?P<name>[\w./-]+):(?P<tag>[\w.-]+)@sha256:[0-9a-f]{64}$", re.MULTILINE)
SENSITIVE = re.compile(r"(?i)(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)")


def _make_images(*variables: str) -> dict[str, str]:
    """images/<folder> -> the tag `make images` gives it (from a dry run)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        [make, "-n", "images", *variables], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    tags = {}
    for line in result.stdout.replace("\\\n", " ").splitlines():  # continued lines joined
        match = re.search(r"docker build -f images/([\w-]+)/Dockerfile -t (\S+) .*--build-arg KFOPS_IMAGE=(\S+)", line)
        if match:
            assert match.group(2) == match.group(3), line
            assert line.rstrip().endswith(" ."), "the build context is the repository root"
            tags[match.group(1)] = match.group(2)
    return tags


def test_dockerfiles_exist():
    assert {p.parent.name for p in DOCKERFILES} == {"component", "component-cuda", "serving", "mlflow"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_conventions(dockerfile):
    text = dockerfile.read_text()
    # one stage, its base pinned by tag and digest, or (the serving image) the component image, which is
    froms = re.findall(r"^FROM .*$", text, re.MULTILINE)
    assert len(froms) == 1 and ":latest" not in froms[0], froms
    if froms[0] == "FROM ${BASE_IMAGE}":
        assert f"ARG BASE_IMAGE={DEFAULT_IMAGE}" in text
        text = (IMAGES / "component" / "Dockerfile").read_text() + text  # the environment it inherits
    else:
        assert PINNED_BASE.match(froms[0]), froms
    # non-root, numeric (Kubernetes runAsNonRoot can only verify a numeric user), and the last USER
    users = re.findall(r"^USER (.+)$", text, re.MULTILINE)
    assert users and users[-1] == "1000:1000"
    assert text.rindex("\nUSER ") > max(m.start() for m in re.finditer(r"^RUN ", text, re.MULTILINE))
    # writes only under /tmp
    assert "HOME=/tmp" in text and "TMPDIR=/tmp" in text
    # no credential baked in, not even an ARG/ENV for one
    for what, pattern in _SECRET_PATTERNS.items():
        assert not pattern.search(text), what
    for name in re.findall(r"^(?:ARG|ENV)\s+(\w+)", text, re.MULTILINE):
        assert not SENSITIVE.search(name), name
    # OCI labels; the image's own name defaults to what `make images` tags it
    own = dockerfile.read_text()
    title = re.search(r'org\.opencontainers\.image\.title="([\w-]+)"', own).group(1)
    for label in ("description", "licenses"):
        assert f"org.opencontainers.image.{label}=" in own
    assert f"ARG KFOPS_IMAGE=ghcr.io/kfops/{title}:{__version__}" in own


@pytest.mark.parametrize("name", ["component", "component-cuda"])
def test_suite_images_install_the_suite(name):
    text = (IMAGES / name / "Dockerfile").read_text()
    # the build steps the suite's images share, the suite installed from the whole repository
    assert "COPY images/suite-image.sh /opt/suite-image.sh" in text
    install = re.search(r"^RUN sh /opt/suite-image\.sh install (\w+)", text, re.MULTILINE)
    assert install and install.group(1) == {"component-cuda": "cuda"}.get(name, name)
    assert text.index("COPY . /src") < install.start()
    if name != "component-cuda":  # CPU torch before the sources, so a source change does not fetch it again
        assert text.index("sh /opt/suite-image.sh torch-cpu") < text.index("COPY . /src")


def test_the_serving_image_is_the_component_image_with_the_server_on_top():
    text = (IMAGES / "serving" / "Dockerfile").read_text()
    assert re.findall(r"^FROM .*$", text, re.MULTILINE) == ["FROM ${BASE_IMAGE}"]
    assert f"ARG BASE_IMAGE={DEFAULT_IMAGE}" in text
    # nothing installed again: the suite, torch and the user are the component image's
    assert "COPY" not in text and "install" not in re.findall(r"^RUN (.*)$", text, re.MULTILINE)[0]
    assert re.findall(r"^RUN (.*)$", text, re.MULTILINE) == ["sh /opt/suite-image.sh smoke serving"]


def test_the_shared_build_steps():
    script = SUITE_SCRIPT.read_text()
    # the suite, with Feast, at the versions the tests ran with; the CUDA image less the torch pin
    assert 'pip install --no-cache-dir -c /src/constraints.txt "/src[features]"' in script
    assert 'pip install --no-cache-dir -c /tmp/constraints.txt "/src[features]"' in script
    assert "pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in script
    # a smoke test per kind of image, importing the suite
    for kind in ("component", "cuda", "serving"):
        assert re.search(rf"^    {kind}\)$", script, re.MULTILINE), kind
    assert "kfops.components.train.logic" in script and "python -m kfops.serving --help" in script
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    assert subprocess.run([sh, "-n", str(SUITE_SCRIPT)], capture_output=True, check=False).returncode == 0
    usage = subprocess.run([sh, str(SUITE_SCRIPT)], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage: suite-image.sh" in usage.stderr


def test_mlflow_image_pins_what_it_installs():
    text = (IMAGES / "mlflow" / "Dockerfile").read_text()
    packages = re.findall(r'"([\w.-]+)==([\w.]+)"', text)
    assert {name for name, _ in packages} == {"mlflow", "psycopg2-binary", "boto3"}
    installed = re.search(r"^RUN pip install (.+?)\\$", text, re.MULTILINE).group(1)
    assert all("==" in arg for arg in installed.split() if arg.startswith('"'))
    assert "COPY" not in text, "the tracking server needs nothing from the repository"


def test_make_images_tags_what_pipelines_and_manifests_name():
    tags = _make_images()
    assert set(tags) == {p.parent.name for p in DOCKERFILES}
    assert tags["component"] == DEFAULT_IMAGE == f"ghcr.io/kfops/kfops:{__version__}"
    assert tags["component-cuda"] == DEFAULT_CUDA_IMAGE
    runtime = yaml.safe_load((REPO_ROOT / "manifests" / "serving" / "servingruntime.yaml").read_text())
    assert tags["serving"] == runtime["spec"]["containers"][0]["image"]
    mlflow = yaml.safe_load((REPO_ROOT / "manifests" / "base" / "mlflow" / "deployment.yaml").read_text())
    assert tags["mlflow"] == mlflow["spec"]["template"]["spec"]["containers"][0]["image"]


def test_make_images_follows_the_registry():
    tags = _make_images("REGISTRY=registry.example.com/ml")
    assert tags["component"] == f"registry.example.com/ml/kfops:{__version__}"
    # the serving image is built after the component image, from the one just tagged
    make = shutil.which("make")
    dry = subprocess.run(
        [make, "-n", "image-serving", "REGISTRY=registry.example.com/ml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.replace("\\\n", " ")
    assert dry.index("-f images/component/Dockerfile") < dry.index("-f images/serving/Dockerfile")
    assert f"--build-arg BASE_IMAGE=registry.example.com/ml/kfops:{__version__}" in dry


def test_compiled_pipelines_name_the_suite_images():
    images = set()
    for path in sorted((REPO_ROOT / "pipelines" / "compiled").glob("*.yaml")):
        found = set(re.findall(r"^\s+image: (\S+)$", path.read_text(), re.MULTILINE))
        assert found, path.name
        assert found <= {DEFAULT_IMAGE, DEFAULT_CUDA_IMAGE}, (path.name, found)
        images |= found
    assert images == {DEFAULT_IMAGE, DEFAULT_CUDA_IMAGE}


def test_build_context_leaves_local_state_out():
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".venv-checkov", ".kfops", "mlruns"} <= ignored
