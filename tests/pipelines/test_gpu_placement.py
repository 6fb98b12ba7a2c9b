"""GPU placement: the GPU training step's tolerations, nodeSelector and accelerator type are compile options
(``kfops compile``) and pipeline parameters, and a distributed TrainJob's GPU nodes get the same."""

from __future__ import annotations

import inspect

import pytest
import yaml

from kfops.components.contracts import KfopsError
from kfops.components.kfp_support import DEFAULT_ACCELERATOR_TYPE, DEFAULT_GPU_TOLERATIONS
from kfops.components.train.trainjob import PATCH_MANAGER, TRAINER_JOB, TrainJobSpec, build_trainjob
from kfops.pipelines.compile import COMPILED_DIR
from kfops.pipelines.placement import GpuPlacement, parse_node_selector, parse_toleration
from tests.crd_schemas import schema_errors

NVIDIA = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _documents(path):
    spec, *platform = yaml.safe_load_all(path.read_text())
    executors = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
    return spec, executors


def _placement(path):
    """(parameter defaults, train executor's resources, each executor's tolerations/nodeSelector config)."""
    spec, k8s = _documents(path)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {
        name: parameters[name].get("defaultValue")
        for name in ("gpu_tolerations", "gpu_node_selector", "accelerator_type")
        if name in parameters
    }
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"].get("resources", {})
    placed = {
        name: {k: config[k] for k in ("tolerations", "nodeSelector") if k in config} for name, config in k8s.items()
    }
    return defaults, resources, {name: p for name, p in placed.items() if p}


def test_the_committed_gpu_pipeline_places_training_by_its_parameters():
    defaults, resources, placed = _placement(COMPILED_DIR / "training-gpu.yaml")
    assert defaults == {"gpu_tolerations": [NVIDIA], "gpu_node_selector": {}, "accelerator_type": "nvidia.com/gpu"}
    # resolved at run time from the parameters (KFP's driver resolves the placeholder and the JSON parameters)
    assert resources["accelerator"] == {
        "count": "1",
        "resourceCount": "1",
        "resourceType": "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}",
    }
    assert placed == {
        "exec-train": {
            "tolerations": [{"tolerationJson": {"componentInputParameter": "gpu_tolerations"}}],
            "nodeSelector": {"nodeSelectorJson": {"componentInputParameter": "gpu_node_selector"}},
        }
    }
    spec, _ = _documents(COMPILED_DIR / "training-gpu.yaml")
    train_inputs = spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert train_inputs["pipelinechannel--accelerator_type"] == {"componentInputParameter": "accelerator_type"}


def test_the_cpu_pipelines_have_no_gpu_placement():
    defaults, resources, placed = _placement(COMPILED_DIR / "training.yaml")
    assert defaults == {} and "accelerator" not in resources and placed == {}
    _, executors = _documents(COMPILED_DIR / "continuous-training.yaml")
    assert not any("tolerations" in c or "nodeSelector" in c for c in executors.values())


def test_compile_options_change_the_defaults(tmp_path, capsys):
    from kfops.cli import build_parser

    argv = [
        "compile",
        "--output-dir",
        str(tmp_path),
        "--gpu-toleration",
        "dedicated=ml-gpu:NoSchedule",
        "--gpu-toleration",
        "nvidia.com/gpu",
        "--gpu-node-selector",
        "cloud.google.com/gke-accelerator=nvidia-l4",
        "--gpu-node-selector",
        "pool=gpu",
        "--accelerator-type",
        "amd.com/gpu",
    ]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    assert f"wrote {tmp_path / 'training-gpu.yaml'}" in capsys.readouterr().out
    defaults, _, placed = _placement(tmp_path / "training-gpu.yaml")
    assert defaults == {
        "gpu_tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ml-gpu", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists"},
        ],
        "gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4", "pool": "gpu"},
        "accelerator_type": "amd.com/gpu",
    }
    assert set(placed) == {"exec-train"}
    # 'none': no toleration by default
    args = build_parser().parse_args(["compile", "--output-dir", str(tmp_path / "b"), "--gpu-toleration", "none"])
    assert args.func(args) == 0
    assert _placement(tmp_path / "b" / "training-gpu.yaml")[0]["gpu_tolerations"] == []
    # the CPU pipeline is what it was
    assert (tmp_path / "training.yaml").read_bytes() == (COMPILED_DIR / "training.yaml").read_bytes()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--gpu-toleration", "nvidia.com/gpu:NoWhere", "effect 'NoWhere' must be one of NoSchedule"),
        ("--gpu-toleration", "bad key=x", "key 'bad key' is not a Kubernetes qualified name"),
        ("--gpu-toleration", "k=v a l", "value 'v a l' is not a Kubernetes label value"),
        ("--gpu-node-selector", "pool", "write it as KEY=VALUE"),
        ("--gpu-node-selector", "pool.=gpu", "key 'pool.' is not a Kubernetes qualified name"),
        ("--accelerator-type", "gpu", "an accelerator is an extended resource named DOMAIN/NAME"),
    ],
)
def test_bad_compile_options_are_refused_naming_the_option_and_value(flag, value, message, capsys):
    from kfops.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["compile", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert flag in error and message in error and repr(value) in error


def test_toleration_and_selector_syntax():
    assert parse_toleration("nvidia.com/gpu:NoSchedule") == NVIDIA
    assert parse_toleration("sku=gpu:NoExecute") == {
        "key": "sku",
        "operator": "Equal",
        "value": "gpu",
        "effect": "NoExecute",
    }
    assert parse_toleration("dedicated") == {"key": "dedicated", "operator": "Exists"}
    assert parse_node_selector("node.kubernetes.io/instance-type=g5.xlarge") == (
        "node.kubernetes.io/instance-type",
        "g5.xlarge",
    )
    with pytest.raises(KfopsError, match="'none' means no toleration"):
        GpuPlacement.from_options(["none", "sku=gpu:NoSchedule"])
    with pytest.raises(KfopsError, match="pool is given twice"):
        GpuPlacement.from_options(None, ["pool=a", "pool=b"])
    assert GpuPlacement.from_options() == GpuPlacement()


def test_the_gpu_parameters_come_from_the_placement():
    from kfops.pipelines.training import build_training_pipeline

    placement = GpuPlacement.from_options(["sku=gpu:NoSchedule"], ["pool=gpu"], "amd.com/gpu")
    inputs = build_training_pipeline(accelerator="gpu", placement=placement).component_spec.inputs
    assert inputs["gpu_tolerations"].default == [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]
    assert inputs["gpu_node_selector"].default == {"pool": "gpu"}
    assert inputs["accelerator_type"].default == "amd.com/gpu"
    with pytest.raises(ValueError, match="accelerator='gpu' only"):
        build_training_pipeline(accelerator="cpu", placement=placement)


def _job(**changes) -> TrainJobSpec:
    fields = dict(
        name="fraud-ddp",
        namespace="team-a",
        image="ghcr.io/kfops/kfops-cuda:dev",
        train_features="s3://kfops/run/train_features",
        validation_features="s3://kfops/run/validation_features",
        feature_spec="s3://kfops/run/feature_spec",
        raw_train="s3://kfops/run/train",
        num_nodes=2,
        gpus_per_node=1,
    )
    return TrainJobSpec(**{**fields, **changes})


def _pod_patch(manifest):
    (patch,) = manifest["spec"]["runtimePatches"]
    assert patch["manager"] == PATCH_MANAGER
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == TRAINER_JOB
    return job["template"]["spec"]["template"]["spec"]


def test_a_gpu_trainjob_gets_the_default_placement():
    manifest = build_trainjob(_job())
    assert schema_errors(manifest) == []
    assert _pod_patch(manifest) == {"tolerations": [NVIDIA]}
    assert manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 1


def test_a_trainjobs_placement_follows_its_options():
    toleration = {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    manifest = build_trainjob(
        _job(tolerations=[toleration], node_selector={"pool": "gpu"}, accelerator_type="amd.com/gpu", gpus_per_node=2)
    )
    assert schema_errors(manifest) == []
    assert _pod_patch(manifest) == {"tolerations": [toleration], "nodeSelector": {"pool": "gpu"}}
    limits = manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert limits["amd.com/gpu"] == 2 and "nvidia.com/gpu" not in limits
    # a CPU job has no GPU placement; a GPU job with none has no patch
    assert "runtimePatches" not in build_trainjob(_job(gpus_per_node=0, node_selector={"pool": "gpu"}))["spec"]
    assert "runtimePatches" not in build_trainjob(_job(tolerations=[]))["spec"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"accelerator_type": "gpu"}, "accelerator_type 'gpu' must be an extended resource name"),
        ({"tolerations": [{"key": "a", "tolerance": "x"}]}, "must be a Kubernetes toleration"),
        ({"node_selector": {"pool": 3}}, "must map label names to label values"),
    ],
)
def test_bad_trainjob_placement_is_refused(changes, message):
    with pytest.raises(KfopsError, match=message):
        build_trainjob(_job(**changes))


def test_the_distributed_train_component_takes_the_same_placement():
    from kfops.components.train.component import train_distributed

    parameters = inspect.signature(train_distributed).parameters
    assert parameters["gpu_tolerations"].default == [dict(t) for t in DEFAULT_GPU_TOLERATIONS]
    assert parameters["gpu_node_selector"].default == {}
    assert parameters["accelerator_type"].default == DEFAULT_ACCELERATOR_TYPE
    spec = next(
        yaml.safe_load_all((COMPILED_DIR.parent.parent / "components/train/train_distributed.yaml").read_text())
    )
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["gpu_tolerations"]["defaultValue"] == [NVIDIA]
    assert inputs["accelerator_type"]["description"]
