"""constraints.txt (the versions the tests run with) agrees with setup.cfg's requirements, and every place that
installs the suite uses it."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO_ROOT / "constraints.txt"


def locked(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"constraints.txt:{number}: {line!r} is not NAME==VERSION"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = Version(match.group(2))
    return pins


def requirements(setup_cfg: str) -> list[tuple[str, Requirement]]:
    """(where, requirement) for install_requires and every extra."""
    parser = configparser.ConfigParser()
    parser.read_string(setup_cfg)
    found = [("install_requires", Requirement(r)) for r in parser["options"]["install_requires"].split("\n") if r]
    for extra, value in parser["options.extras_require"].items():
        found += [(f"extra {extra!r}", Requirement(r)) for r in value.split("\n") if r.strip()]
    return found


def disagreements(setup_cfg: str, constraints: str) -> list[str]:
    pins = locked(constraints)
    problems = []
    for where, requirement in requirements(setup_cfg):
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} ({where}) is not pinned in constraints.txt")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement} ({where}) excludes the pinned {name}=={pins[name]}")
    return problems


def test_constraints_satisfy_setup_cfg():
    assert disagreements((REPO_ROOT / "setup.cfg").read_text(), CONSTRAINTS.read_text()) == []


def test_a_disagreement_is_named():
    setup_cfg = (
        "[options]\ninstall_requires =\n    pandas>=2.2,<3\n    rich>=13\n[options.extras_require]\ndev =\n    ruff\n"
    )
    assert disagreements(setup_cfg, "pandas==3.0.1\nruff==0.9.0\n") == [
        "pandas<3,>=2.2 (install_requires) excludes the pinned pandas==3.0.1",
        "rich>=13 (install_requires) is not pinned in constraints.txt",
    ]


def test_torch_is_pinned_without_a_local_label():
    # `torch==2.13.0` matches the CPU wheel (2.13.0+cpu) and a CUDA image's own build of the same release
    assert "torch" in locked(CONSTRAINTS.read_text())
    assert not re.search(r"^torch==\S*\+", CONSTRAINTS.read_text(), re.M)


def test_every_install_uses_the_constraints():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert '-c constraints.txt -e ".[dev]"' in makefile
    assert '-c constraints.txt "torch==$(TORCH_VERSION)"' in makefile
    assert re.search(r"^\$\(STAMP\):.*constraints\.txt", makefile, re.M)
    images = REPO_ROOT / "images"
    for build_file in sorted([*images.glob("*/Dockerfile"), *images.glob("*.sh")]):
        text = build_file.read_text()
        if '"/src[features]"' in text:
            assert "-c /src/constraints.txt" in text or "-c /tmp/constraints.txt" in text, build_file
