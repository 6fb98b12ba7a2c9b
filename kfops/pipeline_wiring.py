"""Wiring, the pipelines' part: what the compiled pipelines' steps refer to (their kfp-kubernetes platform spec
and the in-cluster addresses among their parameter values) and what the objects they create at run time refer to
(deploy's InferenceService, the Katib trial template, the TrainJob), built by the suite's own builders from the
compiled parameter defaults. ``kfops.platform_wiring`` checks them against a rendered overlay.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.platform_wiring import (
    CONFIG_MAP,
    PVC,
    SECRET,
    TRAINING_ENV_KEYS,
    Reference,
    _address_references,
    object_references,
)


# ------------------------------------------------------------------------------------------------ pipelines
@dataclass
class PipelineTask:
    """One step of a compiled pipeline with the parameter values it gets when the run passes no argument."""

    path: str  # "condition-1/deploy"
    component: str
    function: str  # the Python function the step runs (--function_to_execute), "" for other containers
    executor: str
    image: str
    parameters: dict[str, Any]  # known values only (a parameter fed by another step is left out)
    platform: dict[str, Any] = field(default_factory=dict)  # the executor's kfp-kubernetes config
    # The enclosing DAG's known inputs: kfp-kubernetes names an object by one of them (componentInputParameter).
    dag_inputs: dict[str, Any] = field(default_factory=dict)


def read_pipeline(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, kfp-kubernetes platform spec or {}) of a compiled pipeline or component YAML."""
    import yaml

    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as err:
        raise KfopsError(f"cannot read compiled pipeline {path}: {err}") from err
    if not documents or not isinstance(documents[0], dict) or "root" not in documents[0]:
        raise KfopsError(f"{path}: not a compiled KFP pipeline (no `root` in its first document)")
    platform = next((d for d in documents[1:] if isinstance(d, dict) and "platforms" in d), {})
    return documents[0], ((platform.get("platforms") or {}).get("kubernetes") or {})


def _defaults(definitions: Mapping[str, Any] | None) -> dict[str, Any]:
    parameters = (definitions or {}).get("parameters") or {}
    return {name: d["defaultValue"] for name, d in parameters.items() if isinstance(d, dict) and "defaultValue" in d}


def pipeline_tasks(spec: Mapping[str, Any], platform: Mapping[str, Any] | None = None) -> list[PipelineTask]:
    """Every container step, nested DAGs (conditions, loops, inner pipelines) included, with its parameters
    resolved from constants and the pipeline's defaults (KFP v2 IR)."""
    components = spec.get("components") or {}
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    configs = ((platform or {}).get("deploymentSpec") or {}).get("executors") or {}
    root = spec.get("root") or {}
    tasks: list[PipelineTask] = []

    def visit(dag: Mapping[str, Any], inputs: Mapping[str, Any], prefix: str) -> None:
        for name, task in (dag.get("tasks") or {}).items():
            component_name = (task.get("componentRef") or {}).get("name", "")
            component = components.get(component_name) or {}
            values = _defaults(component.get("inputDefinitions"))
            for parameter, source in ((task.get("inputs") or {}).get("parameters") or {}).items():
                values.pop(parameter, None)  # an argument replaces the default, known or not
                if "componentInputParameter" in source and source["componentInputParameter"] in inputs:
                    values[parameter] = inputs[source["componentInputParameter"]]
                elif "constant" in (source.get("runtimeValue") or {}):
                    values[parameter] = source["runtimeValue"]["constant"]
            path = f"{prefix}{name}"
            if "dag" in component:
                visit(component["dag"], values, f"{path}/")
                continue
            label = component.get("executorLabel", "")
            container = (executors.get(label) or {}).get("container") or {}
            args = [str(a) for a in container.get("args") or []]
            function = args[args.index("--function_to_execute") + 1] if "--function_to_execute" in args[:-1] else ""
            tasks.append(PipelineTask(path, component_name, function, label, str(container.get("image", "")),
                                      values, dict(configs.get(label) or {}), dict(inputs)))  # fmt: skip

    visit(root.get("dag") or {}, _defaults(root.get("inputDefinitions")), "")
    return tasks


def _platform_name(item: Mapping[str, Any], field_name: str, task: PipelineTask) -> str | None:
    """An object's name in a kfp-kubernetes entry: the constant, or the task input it comes from when known."""
    parameter = item.get(f"{field_name}Parameter") or {}
    if "constant" in (parameter.get("runtimeValue") or {}):
        return str(parameter["runtimeValue"]["constant"])
    if "componentInputParameter" in parameter:
        value = task.dag_inputs.get(parameter["componentInputParameter"])
        return str(value) if value is not None else None
    if parameter:  # another step's output: known only at run time
        return None
    return str(item[field_name]) if item.get(field_name) else None


def platform_references(task: PipelineTask) -> list[Reference]:
    """What the step's kfp-kubernetes config mounts or reads (``used_by`` left empty, ``at`` the field)."""
    config = task.platform
    refs: list[Reference] = []
    for entry_field, kind, name_field, keys_field in (
        ("secretAsEnv", SECRET, "secretName", "secretKey"),
        ("secretAsVolume", SECRET, "secretName", None),
        ("configMapAsEnv", CONFIG_MAP, "configMapName", "configMapKey"),
        ("configMapAsVolume", CONFIG_MAP, "configMapName", None),
        ("imagePullSecret", SECRET, "secretName", None),
    ):
        for item in config.get(entry_field) or []:
            name = _platform_name(item, name_field, task)
            if name is None:
                continue
            keys = [k.get(keys_field) for k in item.get("keyToEnv") or []] if keys_field else []
            for key in keys or [None]:
                refs.append(Reference(kind, name, "", key, optional=bool(item.get("optional")),
                                      at=f"kfp-kubernetes {entry_field}"))  # fmt: skip
    for item in config.get("pvcMount") or []:
        if "componentInputParameter" in item:
            name = task.dag_inputs.get(item["componentInputParameter"])
        else:
            name = item.get("constant") or _platform_name(item, "pvcName", task)
        if name:
            refs.append(Reference(PVC, str(name), "", at="kfp-kubernetes pvcMount"))
    return refs


def _sample_sweep_spec():
    from kfops.components.sweep.spec import parse_spec

    # The trial template's references do not depend on the searched space; any valid spec builds it.
    return parse_spec({"method": "random", "parameters": {"learning_rate": {"values": [0.001, 0.01]}}}, "wiring")


def generated_objects(task: PipelineTask, namespace: str) -> list[tuple[str, dict[str, Any], Sequence[str]]]:
    """(what, object, envFrom keys) for each object the step creates at run time, built by the suite's own
    builders from the step's parameters: deploy's InferenceService, katib_sweep's Experiment (its trial
    template), train_distributed's TrainJob."""
    params = task.parameters
    image = str(params.get("image") or task.image)
    data = "s3://kfops/wiring-check"  # the data URIs name no Kubernetes object
    if task.function == "deploy":
        from kfops.components.contracts.delivery import DeploySpec
        from kfops.components.isvc.spec import build_inferenceservice

        spec = DeploySpec.from_parameters({**params, "model_name": params.get("model_name") or "model"})
        manifest = build_inferenceservice(spec, "1", f"{data}/model")
        return [("the InferenceService (components/isvc/spec.py)", manifest, ())]
    if task.function == "katib_sweep":
        from kfops.components.sweep.katib import TrialData, TrialPod, build_experiment

        pod = TrialPod(image=image, env_secret=str(params.get("env_secret", "")),
                       service_account=str(params.get("service_account", "")))  # fmt: skip
        trial = TrialData(f"{data}/train", f"{data}/validation", f"{data}/spec.json", f"{data}/raw")
        experiment = build_experiment(_sample_sweep_spec(), trial, pod, "kfops-wiring-check", namespace or "default")
        template = experiment["spec"]["trialTemplate"]
        return [("the Katib Experiment trial template (components/sweep/katib.py)", template, TRAINING_ENV_KEYS)]
    if task.function == "train_distributed":
        from kfops.components.train.trainjob import DEFAULT_RUNTIME, TrainJobSpec, build_trainjob

        spec = TrainJobSpec(
            name="kfops-wiring-check",
            namespace=namespace or "default",
            image=image,
            train_features=f"{data}/train",
            validation_features=f"{data}/validation",
            feature_spec=f"{data}/spec.json",
            raw_train=f"{data}/raw",
            runtime=str(params.get("runtime") or DEFAULT_RUNTIME),
            env_secret=str(params.get("env_secret", "")),
        )
        return [("the TrainJob (components/train/trainjob.py)", build_trainjob(spec), ())]
    return []


_GENERATED_DAG = re.compile(r"^(condition|condition-branches|for-loop|exit-handler)-\d+$")


def step_name(path: str) -> str:
    """A step's path without the DAGs KFP names itself: condition-1/condition-4/rollout -> rollout."""
    return "/".join(part for part in path.split("/") if not _GENERATED_DAG.match(part)) or path


def pipeline_references(path: str | Path, label: str, namespace: str) -> list[Reference]:
    """The references of one compiled pipeline (or component YAML): its steps' kfp-kubernetes config, the
    in-cluster addresses among their parameters, and the objects its steps create. Steps that name the same
    thing the same way are one reference ("steps a, b, c")."""
    spec, platform = read_pipeline(path)
    steps: dict[Reference, list[str]] = {}
    refs: list[Reference] = []
    for task in pipeline_tasks(spec, platform):
        name = step_name(task.path)
        found = platform_references(task)
        for parameter, value in sorted(task.parameters.items()):
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str):
                    found += _address_references(text, "", f"parameter {parameter}")
        for ref in found:
            steps.setdefault(ref, []).append(name)
        for what, obj, env_from_keys in generated_objects(task, namespace):
            refs += object_references(obj, f"{what} that {label} step {name} creates", env_from_keys=env_from_keys)
    grouped = [
        replace(ref, used_by=f"{label} step{'s' if len(names) > 1 else ''} {', '.join(dict.fromkeys(names))}")
        for ref, names in steps.items()
    ]
    return grouped + refs
