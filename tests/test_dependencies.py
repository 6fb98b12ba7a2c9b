"""Every third-party package the suite's code imports is declared in setup.cfg, and every declared one is used:
nothing rests on another package's requirements, nothing is installed for no reason."""

from __future__ import annotations

import ast
import configparser
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("kfops", "components", "pipelines", "serving")
# imported only where present, with a fallback (components/feature_store/store.py explains why it cannot be a
# requirement)
OPTIONAL_IMPORTS = {"s3fs"}
# declared though never imported by name: what needs them
USED_WITHOUT_IMPORT = {
    "boto3": "MLflow's s3:// artifact store",
    "tensorboard": "torch.utils.tensorboard's SummaryWriter",
}


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party module -> files importing it (imports inside functions included)."""
    found: dict[str, set[str]] = {}
    for root in SOURCES:
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top != "kfops" and top not in sys.stdlib_module_names:
                        found.setdefault(top, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def declared() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    lines = parser["options"]["install_requires"].splitlines()
    for value in parser["options.extras_require"].values():
        lines += value.splitlines()
    return {canonicalize_name(Requirement(line).name) for line in lines if line.strip() and not line.startswith("#")}


def test_every_import_is_declared():
    distributions = packages_distributions()
    names = declared()
    undeclared = []
    for module, files in sorted(imported_modules().items()):
        if module in OPTIONAL_IMPORTS:
            continue
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert providers, f"{module} (imported in {sorted(files)}) is not installed"
        if not providers & names:
            undeclared.append(f"{module} from {sorted(providers)} (imported in {sorted(files)[0]})")
    assert undeclared == [], "imported but not declared in setup.cfg: " + "; ".join(undeclared)


def test_every_declared_runtime_requirement_is_used():
    distributions = packages_distributions()
    provided = {canonicalize_name(d) for module in imported_modules() for d in distributions.get(module, [])}
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    runtime = {
        canonicalize_name(Requirement(line).name)
        for line in parser["options"]["install_requires"].splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    unused = sorted(runtime - provided - set(USED_WITHOUT_IMPORT))
    assert unused == [], f"declared in install_requires but never imported: {unused}"
