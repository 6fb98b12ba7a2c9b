"""Cluster sweeps on Katib: a sweep spec as a Katib ``Experiment`` (kubeflow.org/v1beta1), submitted and
watched through the suite's Kubernetes client, and Katib's best trial read back as training parameters.

The mapping (``spec.py`` has the spec's format):

- method: ``random`` -> ``random``, ``grid`` -> ``grid``, ``bayes`` -> ``tpe`` (the algorithm the local sweep
  runs) or, with ``kfops.katib_algorithm: bayesianoptimization``, Katib's Gaussian-process ``bayesianoptimization``.
- metric -> ``objective`` (``type`` minimize/maximize, ``objectiveMetricName``; the other metrics the training
  prints are ``additionalMetricNames``; every strategy ``latest``: the training prints the best epoch's values
  last). ``run_cap`` -> ``maxTrialCount``, ``kfops.parallel`` -> ``parallelTrialCount``,
  ``kfops.max_failed`` -> ``maxFailedTrialCount`` (default: the budget).
- ``early_terminate: hyperband`` -> ``earlyStopping: medianstop`` with ``start_step: min_iter``: Katib has no
  hyperband early stopping (its hyperband is a suggestion algorithm); median stopping after ``min_iter`` epochs
  is the closest rule it runs.
- parameters -> ``parameters[]`` with ``feasibleSpace`` (numbers as strings, as Katib wants them):
  ``categorical`` -> ``categorical`` (``discrete`` for numbers; layer lists as ``"64,32"``), ``int_uniform`` ->
  ``int``, ``uniform`` -> ``double`` (``distribution: uniform``), ``q_*`` -> ``step: q`` (``int`` for integer
  hyperparameters), ``log_uniform*`` -> ``distribution: logUniform`` (exponents exponentiated),
  ``normal``/``log_normal`` -> ``normal``/``logNormal`` with ``min``/``max`` = mu -/+ 3 sigma (exponentiated
  for log_normal), which Katib reads back as mean (min + max) / 2 and sigma (max - min) / 6. Constants are no
  Katib parameters: they are fixed arguments of every trial.
- trial template: a ``batch/v1`` Job whose container (``training``) runs the suite's image with
  ``python -m kfops.components.train`` (``components/train/entry.py``) on ``preprocess``'s outputs, each searched
  parameter as ``${trialParameters.<name>}``, and the trial's name as the MLflow tag ``kfops.katib_trial``;
  metrics come from its stdout (Katib's ``StdOut`` collector reads ``name=value``). Every trial is an MLflow
  child run of the sweep's parent run. MLflow and S3 settings reach the pod from a Secret (``envFrom``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from kfops.components.contracts import KfopsError, TrainConfig
from kfops.components.contracts.sweep import (
    FAMILY_PARAMETER_PREFIX,
    INT_FIELDS,
    LIST_FIELDS,
    ParameterSpace,
    SweepSpec,
    family_parameter_type,
)
from kfops.components.kube import CustomResource, KubeClient, KubeError, wait_for_condition
from kfops.components.sweep.spec import katib_bounds

API_VERSION = "kubeflow.org/v1beta1"
KATIB_EXPERIMENTS = CustomResource(
    group="kubeflow.org",
    version="v1beta1",
    plural="experiments",
    kind="Experiment",
    provider="Katib",
    rbac_doc="components/sweep/README.md",
)
CONTAINER = "training"
SUCCESS_CONDITION = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
FAILURE_CONDITION = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
TRIAL_NAME_PARAMETER = "trial_name"
TRIAL_TAG = "kfops.katib_trial"
KATIB_DISTRIBUTIONS = {"uniform": "uniform", "log": "logUniform", "normal": "normal", "log_normal": "logNormal"}
# Flags of `python -m kfops.components.train` for each TrainConfig field.
FLAGS = {name: "--" + name.replace("_", "-") for name in TrainConfig.__dataclass_fields__}
FLAGS["decision_threshold"] = "--threshold"
NOT_FLAGS = ("cuda_graphs",)
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class TrialData:
    """``preprocess``'s outputs (local paths are useless to a pod: s3:// URIs on a cluster) and their version."""

    train_features: str
    validation_features: str
    feature_spec: str
    raw_train: str
    data_sha256: str = ""
    data_uri: str = ""


@dataclass
class TrialPod:
    """How each trial's pod runs."""

    image: str
    env_secret: str = ""  # a Secret with MLFLOW_TRACKING_URI, MLFLOW_S3_ENDPOINT_URL and the AWS variables
    service_account: str = ""
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0
    experiment: str = "kfops-sweep"  # MLflow experiment of the trials
    parent_run_id: str = ""
    base: TrainConfig = field(default_factory=TrainConfig)  # values of hyperparameters the spec leaves alone


def algorithm(spec: SweepSpec) -> str:
    return spec.katib_algorithm if spec.method == "bayes" else spec.method


def _number(value: float, integer: bool) -> str:
    if integer:
        return str(round(value))
    return repr(float(value)) if value != int(value) or abs(value) >= 1e16 else str(float(value))


def katib_name(name: str) -> str:
    """The Katib parameter of a training parameter: ``model_params.max_iter`` is ``model_params__max_iter`` (a
    name with no dot, as trialParameters references and environment-style names want)."""
    return name.replace(".", "__")


def _choice(value: Any) -> str:
    if isinstance(value, dict):  # model_params: the JSON --model-params reads
        return json.dumps(value, sort_keys=True)
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def parameter_spec(space: ParameterSpace) -> dict[str, Any]:
    """One Katib ``ParameterSpec``."""
    if space.distribution == "categorical":
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in space.values)
        kind = "discrete" if numeric and space.name not in LIST_FIELDS else "categorical"
        return {
            "name": katib_name(space.name),
            "parameterType": kind,
            "feasibleSpace": {"list": [_choice(v) for v in space.values]},
        }
    integer = space.integer
    low, high = katib_bounds(space)
    if integer:
        low, high = math.ceil(low - 1e-9), math.floor(high + 1e-9)
    feasible = {"min": _number(low, integer), "max": _number(high, integer)}
    if space.q:
        feasible["step"] = _number(space.q, integer)
    if space.normal:
        feasible["distribution"] = KATIB_DISTRIBUTIONS["log_normal" if space.log else "normal"]
    elif space.log:
        feasible["distribution"] = KATIB_DISTRIBUTIONS["log"]
    elif space.distribution != "int_uniform":
        feasible["distribution"] = KATIB_DISTRIBUTIONS["uniform"]
    return {
        "name": katib_name(space.name),
        "parameterType": "int" if integer else "double",
        "feasibleSpace": feasible,
    }


def _fixed_args(spec: SweepSpec, base: TrainConfig) -> list[str]:
    """Flags for every hyperparameter the sweep does not search: the spec's constants over ``base``."""
    searched = {p.name for p in spec.searched}
    prefix = FAMILY_PARAMETER_PREFIX
    values = base.to_dict() | {k: v for k, v in spec.fixed.items() if not k.startswith(prefix)}
    fixed_family = {k.removeprefix(prefix): v for k, v in spec.fixed.items() if k.startswith(prefix)}
    if fixed_family:
        values["model_params"] = dict(values.get("model_params") or {}) | fixed_family
    args: list[str] = []
    for name, value in values.items():
        if name in searched or name in NOT_FLAGS:
            continue
        args += [FLAGS[name], _choice(value)]
    if not base.cuda_graphs:
        args.append("--no-cuda-graphs")
    return args


def experiment_name(spec: SweepSpec, suffix: str = "") -> str:
    """A DNS-1035 name from the spec's name (Katib's rule for Experiments), at most 40 characters: Katib
    names trials ``<experiment>-<8 characters>`` and their Jobs after them."""
    base = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-") or "sweep"
    if not base[0].isalpha():
        base = f"sweep-{base}"
    name = f"{base[: 40 - len(suffix) - 1].rstrip('-')}-{suffix}" if suffix else base[:40].rstrip("-")
    if not _DNS1035.match(name):
        raise KfopsError(f"cannot make a Katib Experiment name from sweep name {spec.name!r}")
    return name


def build_experiment(spec: SweepSpec, data: TrialData, pod: TrialPod, name: str, namespace: str) -> dict[str, Any]:
    """The Katib Experiment that runs ``spec`` on the cluster."""
    if not _DNS1035.match(name) or len(name) > 63:
        raise KfopsError(f"Katib Experiment name {name!r} must be a DNS-1035 label (a-z, 0-9, '-'; 63 at most)")
    searched = spec.searched
    args = [
        "--train-features",
        data.train_features,
        "--validation-features",
        data.validation_features,
        "--feature-spec",
        data.feature_spec,
        "--raw-train",
        data.raw_train,
        "--data-sha256",
        data.data_sha256,
        "--data-uri",
        data.data_uri or data.raw_train,
        "--experiment",
        pod.experiment,
        "--tag",
        f"{TRIAL_TAG}=${{trialParameters.{TRIAL_NAME_PARAMETER}}}",
        "--tag",
        f"kfops.katib_experiment={name}",
        *_fixed_args(spec, pod.base),
    ]
    if pod.parent_run_id:
        args += ["--parent-run-id", pod.parent_run_id]
    for space in searched:
        if space.name.startswith(FAMILY_PARAMETER_PREFIX):
            # One --model-param NAME=VALUE each; training merges them into model_params (gbdt trials only).
            param = space.name.removeprefix(FAMILY_PARAMETER_PREFIX)
            args += ["--model-param", f"{param}=${{trialParameters.{katib_name(space.name)}}}"]
        else:
            args += [FLAGS[space.name], f"${{trialParameters.{space.name}}}"]
    requests = {"cpu": pod.cpu, "memory": pod.memory}
    limits: dict[str, Any] = {"memory": pod.memory}
    if pod.gpus:
        limits["nvidia.com/gpu"] = pod.gpus
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pod.image,
        "command": ["python", "-m", "kfops.components.train"],
        "args": args,
        "env": [{"name": "KFOPS_IMAGE", "value": pod.image}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": {"requests": requests, "limits": limits},
    }
    if pod.env_secret:
        container["envFrom"] = [{"secretRef": {"name": pod.env_secret}}]
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if pod.service_account:
        pod_spec["serviceAccountName"] = pod.service_account
    objective_names = [
        m for m in ("val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc", "val_pr_auc") if m != spec.metric
    ]
    experiment: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "kfops"}},
        "spec": {
            "objective": {
                "type": spec.goal,
                "objectiveMetricName": spec.metric,
                "additionalMetricNames": objective_names,
                "metricStrategies": [{"name": m, "value": "latest"} for m in (spec.metric, *objective_names)],
            },
            "algorithm": {"algorithmName": algorithm(spec)},
            "parallelTrialCount": spec.parallel,
            "maxTrialCount": spec.trials,
            "maxFailedTrialCount": spec.trials if spec.max_failed is None else spec.max_failed,
            "resumePolicy": "Never",
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": [parameter_spec(p) for p in searched],
            "trialTemplate": {
                "primaryContainerName": CONTAINER,
                "successCondition": SUCCESS_CONDITION,
                "failureCondition": FAILURE_CONDITION,
                "trialParameters": [
                    *(
                        {"name": katib_name(p.name), "reference": katib_name(p.name), "description": p.distribution}
                        for p in searched
                    ),
                    {"name": TRIAL_NAME_PARAMETER, "reference": "${trialSpec.Name}", "description": "trial name"},
                ],
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {
                        "backoffLimit": 0,
                        "template": {
                            "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                            "spec": pod_spec,
                        },
                    },
                },
            },
        },
    }
    if spec.early_terminate is not None:
        experiment["spec"]["earlyStopping"] = {
            "algorithmName": "medianstop",
            "algorithmSettings": [
                {"name": "min_trials_required", "value": str(max(2, spec.parallel))},
                {"name": "start_step", "value": str(spec.early_terminate.min_iter)},
            ],
        }
    if spec.description:
        experiment["metadata"]["annotations"] = {"kfops.io/description": spec.description[:1000]}
    return experiment


# ------------------------------------------------------------------------------------------ submit and wait
@dataclass
class KatibBest:
    """Katib's best trial, read from the Experiment's status."""

    experiment: str
    trial_name: str
    values: dict[str, Any]  # training parameters, typed (searched ones from Katib, the rest from the spec)
    metrics: dict[str, float]  # the trial's reported metrics (latest)
    succeeded: int
    failed: int
    status: dict[str, Any]


def typed_value(spec: SweepSpec, name: str, text: str) -> Any:
    """A Katib parameter assignment (a string) as the training parameter it stands for."""
    try:
        if family_parameter_type(name) is int:
            return round(float(text))
        if name in LIST_FIELDS:
            return [int(v) for v in text.split(",") if v.strip()]
        if name in INT_FIELDS:
            return round(float(text))
        space = spec.parameter(name)
        if space.distribution == "categorical" and all(isinstance(v, str) for v in space.values):
            return text
        return float(text)
    except (ValueError, KeyError) as err:
        raise KfopsError(f"Katib assigned {name}={text!r}, which is not a value of the sweep's {name}") from err


def best_from_status(spec: SweepSpec, name: str, status: dict[str, Any]) -> KatibBest:
    optimal = status.get("currentOptimalTrial") or {}
    assignments = optimal.get("parameterAssignments") or []
    if not optimal.get("bestTrialName") or not assignments:
        raise KfopsError(f"Katib Experiment {name} finished without a best trial (no trial reported {spec.metric})")
    values = dict(spec.fixed)
    by_katib_name = {katib_name(p.name): p.name for p in spec.parameters}
    for assignment in assignments:
        parameter = by_katib_name.get(assignment["name"], assignment["name"])
        values[parameter] = typed_value(spec, parameter, str(assignment["value"]))
    metrics = {}
    for metric in (optimal.get("observation") or {}).get("metrics") or []:
        try:
            metrics[metric["name"]] = float(metric.get("latest"))
        except (TypeError, ValueError):
            continue
    return KatibBest(
        experiment=name,
        trial_name=optimal["bestTrialName"],
        values=values,
        metrics=metrics,
        succeeded=int(status.get("trialsSucceeded") or 0),
        failed=int(status.get("trialsFailed") or 0),
        status=status,
    )


def submit(api: KubeClient, experiment: dict[str, Any]) -> dict[str, Any]:
    """Create the Experiment; one that already exists with the same spec (a retried step) is watched instead."""
    api = api.for_resource(KATIB_EXPERIMENTS)
    namespace, name = experiment["metadata"]["namespace"], experiment["metadata"]["name"]
    try:
        return api.create(namespace, experiment)
    except KubeError as err:
        if err.status != 409:
            raise
    live = api.get(namespace, name) or {}
    if live.get("spec", {}).get("parameters") != experiment["spec"]["parameters"]:
        raise KfopsError(
            f"Katib Experiment {namespace}/{name} already exists with other parameters; delete it or name the sweep "
            "differently"
        ) from None
    return live


def wait(
    api: KubeClient,
    spec: SweepSpec,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float = 10.0,
    on_poll=None,
) -> KatibBest:
    """Wait for the Experiment to succeed and return its best trial; KfopsError when it fails or times out."""
    api = api.for_resource(KATIB_EXPERIMENTS)

    def timeout_message(live: dict[str, Any]) -> str:
        succeeded = (live.get("status") or {}).get("trialsSucceeded", 0)
        return (
            f"Katib Experiment {namespace}/{name} did not finish within {timeout_s:.0f} s "
            f"({succeeded} of {spec.trials} trials succeeded); it keeps running"
        )

    return wait_for_condition(
        api,
        namespace,
        name,
        title="Katib Experiment",
        succeeded="Succeeded",
        result=lambda status: best_from_status(spec, name, status),
        failure_hint=lambda status: f"{status.get('trialsFailed', 0)} trial(s) failed",
        waiting_for="the sweep's trials",
        timeout_s=timeout_s,
        poll_s=poll_s,
        timeout_message=timeout_message,
        on_poll=on_poll,
    )
