"""The committed YAML: current, strictly valid pipeline spec, GPU request where asked, no credentials."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kfops.pipelines.compile import COMPILED_DIR, compile_all, component_dir, stale_files

PIPELINES = sorted(COMPILED_DIR.glob("*.yaml"))
COMPONENT_YAMLS = sorted(component_dir().glob("*/*.yaml"))
SECRET_PATTERNS = [
    re.compile(r"AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN", re.I),
    re.compile(r"password|passwd|token\s*[:=]", re.I),
    re.compile(r"AKIA[0-9A-Z]{16}"),  # an AWS access key id
    re.compile(r"minioadmin", re.I),
]


def test_committed_yaml_is_current():
    assert stale_files() == [], "run `kfops compile` and commit the result"


def test_compile_is_deterministic(tmp_path):
    first = compile_all(output_dir=tmp_path / "a", components_dir=tmp_path / "ca")
    second = compile_all(output_dir=tmp_path / "b", components_dir=tmp_path / "cb")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_expected_files_exist():
    assert {p.name for p in PIPELINES} == {
        "training.yaml",
        "training-gpu.yaml",
        "deployment.yaml",
        "continuous-training.yaml",
        "batch-prediction.yaml",
        "katib-sweep.yaml",
        "feature-materialization.yaml",
    }
    assert {p.parent.name for p in COMPONENT_YAMLS} == {
        "ingest",
        "validate",
        "preprocess",
        "train",
        "evaluate",
        "gate",
        "register",
        "ab_analysis",
        "deploy",
        "rollout",
        "monitor",
        "batch_predict",
        "outcomes",
        "sweep",
        "features",
    }


@pytest.mark.parametrize("path", PIPELINES + COMPONENT_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_parses_strictly_into_pipeline_spec(path: Path):
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    assert spec.schema_version == "2.1.0"
    for doc in docs[1:]:
        json_format.ParseDict(doc, pipeline_spec_pb2.PlatformSpec())


@pytest.mark.parametrize("path", PIPELINES + COMPONENT_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_credentials_anywhere(path: Path):
    text = path.read_text()
    spec_text, *platform_texts = text.split("\n---\n")
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(spec_text), f"{path} matches {pattern.pattern}"
    spec = yaml.safe_load(spec_text)
    for executor in spec["deploymentSpec"]["executors"].values():
        names = {e["name"] for e in executor["container"].get("env", [])}
        assert names <= {"KFOPS_IMAGE"}
    # The kfp-kubernetes platform spec (pipelines/cluster_env.py) names credentials only as environment
    # variables filled from the Secret kfops-s3 in the run's namespace: never a value.
    for platform_text in platform_texts:
        platform = yaml.safe_load(platform_text)
        for config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
            assert {s["secretName"] for s in config.get("secretAsEnv", [])} <= {"kfops-s3"}
            rest = yaml.safe_dump({k: v for k, v in config.items() if k != "secretAsEnv"})
            for pattern in SECRET_PATTERNS:
                assert not pattern.search(rest), f"{path} matches {pattern.pattern}"


def _executors(name: str) -> dict:
    spec = next(yaml.safe_load_all((COMPILED_DIR / name).read_text()))
    return spec["deploymentSpec"]["executors"]


def test_gpu_variant_requests_the_accelerator_on_train_only():
    gpu = _executors("training-gpu.yaml")
    train = gpu["exec-train"]["container"]
    assert train["image"].startswith("ghcr.io/kfops/kfops-cuda:")
    # the accelerator type is the pipeline parameter accelerator_type (test_gpu_placement.py), nvidia.com/gpu by default
    assert train["resources"]["accelerator"]["resourceType"] == (
        "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}"
    )
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    for name, executor in gpu.items():
        if name != "exec-train":
            assert "accelerator" not in executor["container"].get("resources", {})
            assert executor["container"]["image"].startswith("ghcr.io/kfops/kfops:")
    cpu = _executors("training.yaml")
    assert "accelerator" not in cpu["exec-train"]["container"].get("resources", {})
    assert cpu["exec-train"]["container"]["image"].startswith("ghcr.io/kfops/kfops:")


def test_images_are_configurable_at_compile_time(tmp_path):
    compile_all(
        image="registry.local/kfops:dev",
        cuda_image="registry.local/kfops-cuda:dev",
        output_dir=tmp_path,
        components_dir=tmp_path / "c",
    )
    spec = next(yaml.safe_load_all((tmp_path / "training-gpu.yaml").read_text()))
    images = {k: v["container"]["image"] for k, v in spec["deploymentSpec"]["executors"].items()}
    assert images.pop("exec-train") == "registry.local/kfops-cuda:dev"
    assert set(images.values()) == {"registry.local/kfops:dev"}


def test_caching_is_off_for_the_data_version_gate_and_registry_steps():
    spec = next(yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    # validate-data holds the data to the current champion's suite: registry state, like the gate's
    for name in ("version-data", "validate-data", "gate", "register"):
        assert tasks[name]["cachingOptions"] == {}, name
    for name in ("split-data", "train", "evaluate"):
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name
    # The validation step is given the suite's content too, and nothing splits data before it passes.
    validate_inputs = tasks["validate-data"]["inputs"]["parameters"]
    assert validate_inputs["suite_sha256"]["taskOutputParameter"]["producerTask"] == "version-data"
    assert "validate-data" in tasks["split-data"]["dependentTasks"]
    # Cached steps receive the data's sha256, never the file path.
    split_inputs = tasks["split-data"]["inputs"]["parameters"]
    assert split_inputs["data_sha256"]["taskOutputParameter"]["producerTask"] == "version-data"
    assert "data_uri" not in split_inputs


@pytest.mark.parametrize("path", COMPONENT_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_components_load_on_their_own(path: Path):
    from kfp import components

    component = components.load_component_from_file(str(path))
    assert component.name == path.stem.replace("_", "-")


def _dag(spec: dict, component: str) -> dict:
    return spec["components"][component]["dag"]["tasks"]


def test_promotion_runs_only_when_blessed_and_wanted():
    spec = next(yaml.safe_load_all((COMPILED_DIR / "training.yaml").read_text()))
    outer = spec["root"]["dag"]["tasks"]["condition-1"]
    assert outer["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-blessed'] == true"
    blessed = _dag(spec, "comp-condition-1")
    # Not deploying: promote when wanted. Deploying: the deployment steps, and no promotion of their own here.
    assert blessed["condition-2"]["triggerPolicy"]["condition"].endswith("pipelinechannel--deploy'] == false")
    assert "promote_champion" in _dag(spec, "comp-condition-2")["condition-3"]["triggerPolicy"]["condition"]
    assert "promote" in _dag(spec, "comp-condition-3")
    assert blessed["condition-4"]["triggerPolicy"]["condition"].endswith("pipelinechannel--deploy'] == true")
    deploying = _dag(spec, "comp-condition-4")
    assert set(deploying) == {"deploy", "condition-5", "condition-6"}
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert json.loads(defaults["thresholds"]["defaultValue"])["roc_auc"] == {"baseline": {"absolute": 0.05}}
    assert defaults["promote_champion"]["defaultValue"] is True
    assert defaults["deploy"]["defaultValue"] is False  # local runs never reach for a cluster


def test_deployment_rolls_a_canary_out_and_promotes_anything_else():
    spec = next(yaml.safe_load_all((COMPILED_DIR / "deployment.yaml").read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"deploy", "condition-1", "condition-2"}
    canary, other = tasks["condition-1"], tasks["condition-2"]
    assert (
        canary["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--deploy-operation'] == 'canary'"
    )
    assert (
        other["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--deploy-operation'] != 'canary'"
    )
    assert set(_dag(spec, "comp-condition-1")) == {"rollout"}
    assert set(_dag(spec, "comp-condition-2")) == {"promote"}
    promote_version = _dag(spec, "comp-condition-2")["promote"]["inputs"]["parameters"]["version"]
    assert promote_version["componentInputParameter"] == "pipelinechannel--deploy-deployed_version"
    for name in ("deploy", "rollout", "promote"):  # cluster and registry state: never a cached answer
        owner = (
            tasks if name == "deploy" else _dag(spec, "comp-condition-1" if name == "rollout" else "comp-condition-2")
        )
        assert owner[name]["cachingOptions"] == {}, name
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["version"]["defaultValue"] == "challenger"
    assert defaults["steps"]["defaultValue"] == [10.0, 25.0, 50.0, 100.0]
