"""The house rules, as tests: who may import whom, and how long a module may grow.

- Stage logic (``components/<stage>/logic.py``) never imports kfp: tests and other code call it directly.
- A stage (a folder with a ``component.py``) imports the shared seams (``components/*.py``: contracts, storage,
  tables, records, roles, kube, http, tracking, registry, model_store, transform, datasets, scoring, workspace,
  study; and the folders without a ``component.py``: ``components/isvc/``, ``components/feature_store/``) and
  never another stage or serving.
- Serving never imports pipelines or stages.
- Nothing imports the CLI (``kfops.cli``) but the CLI itself and ``python -m kfops``.
- The contracts (``components/contracts/``) import only the standard library and each other at module level, so
  every stage, serving and the CLI can read them without loading anything heavy.
- No module outside tests is over ``MAX_LINES`` lines.

``KNOWN`` lists what is still in the way, each with why; the tests fail on anything new, and on an entry that no
longer applies (so the list only shrinks).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOTS = {"components": "kfops.components", "pipelines": "kfops.pipelines", "serving": "kfops.serving", "kfops": "kfops"}
MAX_LINES = 600

# (importing module, imported module): why it is still there
KNOWN_IMPORTS: dict[tuple[str, str], str] = {}
# module: why it is still over MAX_LINES
KNOWN_LONG = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    root, rest = ROOTS[parts[0]], parts[1:]
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([root, *rest])


def sources() -> list[Path]:
    return sorted(p for root in ROOTS for p in (REPO_ROOT / root).rglob("*.py"))


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from kfops.components import registry` imports a module by its name
            found |= {f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}")}
    return found


def is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] != "kfops" or len(parts) < 2:
        return False
    folder = {"components": "components", "pipelines": "pipelines", "serving": "serving"}.get(parts[1])
    base = REPO_ROOT / folder / Path(*parts[2:]) if folder else REPO_ROOT / "kfops" / Path(*parts[1:])
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def stage_of(module: str) -> str | None:
    """``kfops.components.<stage>.x`` -> stage; shared seams (``kfops.components.x``, or a folder of them) have
    none."""
    parts = module.split(".")
    if len(parts) >= 4 and is_stage_package(module):
        return parts[2]
    return None


def is_stage_package(module: str) -> bool:
    """A stage is a folder with a KFP wrapper (``component.py``); a folder without one is a shared seam."""
    if not module.startswith("kfops.components.") or len(module.split(".")) < 3:
        return False
    return (REPO_ROOT / "components" / module.split(".")[2] / "component.py").is_file()


def broken_rules(module: str, imported: str) -> list[str]:
    rules = []
    stage = stage_of(module)
    if module.endswith(".logic") and stage and imported.split(".")[0] == "kfp":
        rules.append("logic imports kfp")
    if stage and imported.startswith("kfops.serving"):
        rules.append("a stage imports serving")
    if stage and is_stage_package(imported) and imported.split(".")[2] != stage:
        rules.append("a stage imports another stage")
    if module.startswith("kfops.serving") and (imported.startswith("kfops.pipelines") or is_stage_package(imported)):
        rules.append("serving imports pipelines or a stage")
    if (
        (imported == "kfops.cli" or imported.startswith("kfops.cli."))
        and not module.startswith("kfops.cli")
        and module != "kfops.__main__"
    ):
        rules.append("imports the CLI")
    return rules


def violations() -> dict[tuple[str, str], list[str]]:
    found = {}
    for path in sources():
        module = module_name(path)
        for imported in sorted(imports(path)):
            rules = broken_rules(module, imported)
            if rules:
                found[(module, imported)] = rules
    return found


def test_import_rules_hold():
    found = violations()
    new = {pair: rules for pair, rules in found.items() if pair not in KNOWN_IMPORTS}
    assert new == {}, "imports that break the house rules:\n" + "\n".join(
        f"  {a} imports {b}: {', '.join(r)}" for (a, b), r in sorted(new.items())
    )
    gone = sorted(set(KNOWN_IMPORTS) - set(found))
    assert gone == [], f"no longer imported, take out of KNOWN_IMPORTS: {gone}"


@pytest.mark.parametrize(
    ("module", "imported", "rule"),
    [
        ("kfops.components.gate.logic", "kfops.components.evaluate.logic", "a stage imports another stage"),
        ("kfops.components.monitor.logic", "kfops.serving.metrics", "a stage imports serving"),
        ("kfops.components.train.logic", "kfp.dsl", "logic imports kfp"),
        ("kfops.serving.cli", "kfops.pipelines.local", "serving imports pipelines or a stage"),
        ("kfops.components.contracts", "kfops.cli.console", "imports the CLI"),
    ],
)
def test_each_rule_catches_its_breach(module, imported, rule):
    assert rule in broken_rules(module, imported)


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("kfops.components.gate.logic", "kfops.components.scoring"),
        ("kfops.components.gate.component", "kfops.components.gate.logic"),
        ("kfops.serving.predictor", "kfops.components.model_store"),
        ("kfops.serving.feature_lookup", "kfops.components.feature_store.online"),
        ("kfops.components.train.component", "kfops.components.study"),
        ("kfops.cli.run", "kfops.pipelines.local"),
        ("kfops.components.train.component", "kfp"),
    ],
)
def test_what_the_rules_allow(module, imported):
    assert broken_rules(module, imported) == []


def test_no_module_is_over_the_size_limit():
    lengths = {module_name(p): len(p.read_text().splitlines()) for p in sources()}
    long = {m: n for m, n in lengths.items() if n > MAX_LINES}
    new = sorted(f"{m} ({n} lines)" for m, n in long.items() if m not in KNOWN_LONG)
    assert new == [], f"modules over {MAX_LINES} lines (split them along their jobs): {new}"
    shrunk = sorted(set(KNOWN_LONG) - set(long))
    assert shrunk == [], f"now within {MAX_LINES} lines, take out of KNOWN_LONG: {shrunk}"


def heavy_contract_imports(path: Path) -> list[str]:
    """The module-level imports of a contracts module that are neither the standard library nor the contracts."""
    found = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [
            n
            for n in names
            if n.split(".")[0] not in sys.stdlib_module_names and not n.startswith("kfops.components.contracts")
        ]
    return found


def test_the_contracts_import_only_the_standard_library():
    folder = REPO_ROOT / "components" / "contracts"
    modules = sorted(folder.glob("*.py"))
    assert {p.stem for p in modules} >= {"__init__", "delivery", "monitoring", "sweep"}
    heavy = {p.name: heavy_contract_imports(p) for p in modules if heavy_contract_imports(p)}
    assert heavy == {}, f"contracts importing more than the standard library at module level: {heavy}"


def test_the_contracts_rule_sees_a_heavy_import(tmp_path):
    module = tmp_path / "contract.py"
    module.write_text("import json\nimport numpy as np\nfrom pandas import DataFrame\n\n\ndef f():\n    import torch\n")
    assert heavy_contract_imports(module) == ["numpy", "pandas"]


@pytest.mark.parametrize(
    ("moved", "where"),
    [
        ("DeploySpec", "kfops.components.contracts.delivery"),
        ("CanaryThresholds", "kfops.components.contracts.delivery"),
        ("DriftResult", "kfops.components.contracts.monitoring"),
        ("SweepSpec", "kfops.components.contracts.sweep"),
    ],
)
def test_no_stage_defines_a_contract_of_its_own(moved, where):
    """Each contract is defined once, in the contracts package; stages may re-export it but not redefine it."""
    defining = sorted(
        module_name(path)
        for path in sources()
        if any(isinstance(n, ast.ClassDef) and n.name == moved for n in ast.parse(path.read_text()).body)
    )
    assert defining == [where]
