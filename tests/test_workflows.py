"""The GitHub Actions workflows (.github/workflows): valid against GitHub's workflow schema, and calling the
same commands a developer runs (Makefile targets that exist, `kfops` commands the real parser accepts).

They cannot run here (no GitHub runner, no cluster); these checks keep them from drifting from the code.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kfops.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yaml"))
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _load(path: Path) -> dict:
    # PyYAML reads the `on:` key as True (YAML 1.1); put it back under its name.
    doc = yaml.safe_load(path.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def _steps(doc: dict):
    for job_name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def _commands(doc: dict) -> list[str]:
    """Every shell command line of every `run:` step, continuation lines joined."""
    lines = []
    for _, step in _steps(doc):
        script = step.get("run", "").replace("\\\n", " ")
        lines += [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines


def _check_jsonschema(*paths: Path) -> subprocess.CompletedProcess:
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail("check-jsonschema is not installed in this environment: pip install -e '.[dev]'")
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_three_workflows_exist():
    assert {p.name for p in WORKFLOW_FILES} == {"ci.yaml", "deploy.yaml", "e2e-kind.yaml"}


def test_workflows_match_the_github_actions_schema():
    result = _check_jsonschema(*WORKFLOW_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "ci.yaml"
    broken.write_text((WORKFLOWS / "ci.yaml").read_text().replace("runs-on:", "runs-onn:", 1))
    result = _check_jsonschema(broken)
    assert result.returncode == 1
    assert "'runs-on' is a required property" in result.stdout


def _kfops_argv(line: str) -> list[str] | None:
    """The argument list of a `kfops ...` command line (shell variables and expressions stand in as text)."""
    line = re.sub(r"\$\{\{[^}]*\}\}", "X", line)
    line = line.split(" | ")[0].split(" && ")[0]
    words = shlex.split(line.replace('"${params[@]}"', ""))
    for index, word in enumerate(words):
        if word.endswith("bin/kfops") or (word == "kfops" and index == 0):
            return [w.replace("$", "") for w in words[index + 1 :]]
    return None


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_kfops_commands_parse_with_the_real_cli(path, capsys):
    parser = build_parser()
    argvs = [argv for line in _commands(_load(path)) if (argv := _kfops_argv(line))]
    assert argvs, f"{path.name} runs no kfops command"
    for argv in argvs:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}: `kfops {' '.join(argv)}` is not a valid command: {capsys.readouterr().err}")


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_make_targets_exist(path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    targets = {
        word
        for line in _commands(_load(path))
        if line.startswith("make ")
        for word in shlex.split(line)[1:]
        if "=" not in word
    }
    for target in targets:
        result = subprocess.run([make, "-n", target], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path.name}: make {target}: {result.stderr}"


def test_ci_runs_the_readme_stages():
    commands = "\n".join(_commands(_load(WORKFLOWS / "ci.yaml")))
    makefile = (REPO_ROOT / "Makefile").read_text()
    for needed in ("make lint", "make test", "make check-compiled", "kfops suite validate", "make platform-check"):
        assert needed in commands, needed
    # the make targets run the commands the README names
    assert re.search(r"^check-compiled:.*\n\t\$\(BIN\)/kfops compile --check$", makefile, re.MULTILINE)
    assert re.search(r"^platform-check:.*\n\t\$\(BIN\)/kfops platform check manifests/overlays/local", makefile, re.M)
    assert "check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yaml" in commands
    doc = _load(WORKFLOWS / "ci.yaml")
    assert set(doc["on"]) >= {"push", "pull_request"}
    # CI=1 makes the tests that need Prometheus or checkov fail instead of skipping, as .ci/run does
    assert doc["env"]["CI"] == "1" and "make checkov-venv" in commands


def test_deploy_submits_training_on_main_with_secrets_only_in_env():
    doc = _load(WORKFLOWS / "deploy.yaml")
    assert doc["on"]["workflow_run"] == {"workflows": ["CI"], "types": ["completed"], "branches": ["main"]}
    [job] = doc["jobs"].values()
    assert "conclusion == 'success'" in job["if"]
    submit = next(s for _, s in _steps(doc) if "kfops submit" in s.get("run", ""))
    assert submit["env"]["KFOPS_KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    assert submit["env"]["KFOPS_KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"
    assert "--wait" in submit["run"] and "--upload" in submit["run"]
    for path in WORKFLOW_FILES:
        for _, step in _steps(_load(path)):
            assert "secrets." not in step.get("run", ""), f"{path.name}: a secret inside a script (use env:)"


def test_e2e_brings_up_kind_with_kserve_and_minio_then_calls_a_model():
    commands = "\n".join(_commands(_load(WORKFLOWS / "e2e-kind.yaml")))
    order = [
        "kind create cluster",
        "helm install kserve oci://ghcr.io/kserve/charts/kserve",
        "kfops platform secrets --namespace",
        "kfops platform check manifests/overlays/local",
        "kubectl apply -k manifests/overlays/local",
        "job/minio-bucket-init",
        "kfops run",
        "kfops deploy --model fraud-detector@champion",
        ".github/scripts/call_model.py",
    ]
    positions = [commands.index(step) for step in order]
    assert positions == sorted(positions)
    assert (REPO_ROOT / ".github" / "scripts" / "call_model.py").is_file()


def test_actions_are_pinned_to_a_release():
    for path in WORKFLOW_FILES:
        for _, step in _steps(_load(path)):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+(\.\d+)*", step["uses"]), step["uses"]
