"""The system tools some tests start or run, found in one place.

``require(name)`` gives a tool's path. Without it a test is skipped with one line that names the tool and the
command that installs it, and under ``CI`` (set by .ci/run and the GitHub workflow) it fails instead, so CI can
never pass by skipping. ``make test`` lists the skips at the end (pytest's ``-rs``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
APT = "apt-get install -y --no-install-recommends"
# tool -> how to install it (the README's "System tools" section lists the same).
INSTALL = {
    "prometheus": f"{APT} prometheus",
    "promtool": f"{APT} prometheus",
    "prometheus-pushgateway": f"{APT} prometheus-pushgateway",
    "redis-server": f"{APT} redis-server",
    "kubectl": "kubectl 1.27 or newer (kustomize v5 inside): https://kubernetes.io/docs/tasks/tools/",
    "checkov": "make checkov-venv",
    "wrk": f"{APT} wrk",
    # tests/topology: the MLflow server's database (Debian keeps the binaries in /usr/lib/postgresql/<major>/bin)
    "initdb": f"{APT} postgresql",
}
KUSTOMIZE_MAJOR = 5


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(message: str):
    """Skip (or, under CI, fail) the running test: ``message`` names the tool and how to install it."""
    if in_ci():
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def find(name: str) -> str | None:
    """Where a tool is, or None; checkov lives in its own virtualenv (``make checkov-venv``), and PostgreSQL's
    ``initdb`` in Debian's versioned folder when it is not on PATH."""
    if name == "checkov":
        for candidate in (os.environ.get("KFOPS_CHECKOV"), str(REPO_ROOT / ".venv-checkov" / "bin" / "checkov")):
            if candidate and Path(candidate).is_file():
                return candidate
        return None
    if name == "initdb" and shutil.which(name) is None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
        return str(found[-1]) if found else None
    return shutil.which(name)


@cache
def _kustomize_major(kubectl: str) -> int | None:
    try:
        out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Kustomize Version:\s*v(\d+)", out)
    return int(match.group(1)) if match else None


def require(name: str) -> str:
    """The tool's path; a skip naming its install command when it is missing (a failure under CI)."""
    path = find(name)
    if path is None:
        missing(f"{name} is not installed: {INSTALL[name]}")
    if name == "kubectl":
        major = _kustomize_major(path)
        if major is None or major < KUSTOMIZE_MAJOR:
            missing(f"{path} has no kustomize v{KUSTOMIZE_MAJOR} (found {major}): {INSTALL[name]}")
    return path
