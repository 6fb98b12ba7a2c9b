"""Katib Experiments checked against Katib's own OpenAPI spec and the rules of its validating webhook.

Katib's CRD has no schema (it preserves unknown fields), so Katib's OpenAPI spec (committed as
``tests/schemas/katib/swagger.json``, ``components.schemas``) is the reference: ``v1beta1.Experiment`` with its
``$ref``s resolved, unknown fields rejected on every object that lists its properties (as strict field validation
would), and the embedded trial Job's pod template checked against ``io.k8s.api.core.v1.PodTemplateSpec`` from
the same file. The webhook's rules that a schema cannot say (kubeflow/katib
pkg/webhook/v1beta1/experiment/validator) are checked beside it: objective type and metric, algorithm names Katib
ships, parameter types and distributions, feasible spaces, trial template conditions, container name, and every
``${trialParameters.x}`` substituted and declared.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SWAGGER = Path(__file__).resolve().parent / "schemas" / "katib" / "swagger.json"
PREFIX = "#/components/schemas/"
# Katib's default katib-config: the suggestion and early-stopping algorithms it ships.
ALGORITHMS = {
    "random",
    "grid",
    "tpe",
    "multivariate-tpe",
    "bayesianoptimization",
    "cmaes",
    "sobol",
    "hyperband",
    "enas",
    "darts",
    "pbt",
}
EARLY_STOPPING = {"medianstop"}
PARAMETER_TYPES = {"double", "int", "discrete", "categorical"}
DISTRIBUTIONS = {"uniform", "logUniform", "normal", "logNormal"}
COLLECTORS = {"StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None", "Push"}
META_KEYS = {"Name", "Namespace", "Kind", "APIVersion"}
SUBSTITUTION = re.compile(r"\$\{trialParameters\.([^}]+)\}")


def _strict(node):
    """Reject unknown fields: objects listing properties get additionalProperties false (unless they say)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@cache
def _schemas() -> dict:
    document = json.loads(SWAGGER.read_text())
    return {"components": {"schemas": _strict(document["components"]["schemas"])}}


@cache
def _validator(definition: str) -> Draft202012Validator:
    root = _schemas()
    registry = Registry().with_resource("katib", Resource.from_contents(root, default_specification=DRAFT202012))
    schema = {"$ref": f"katib{PREFIX}{definition}"}
    return Draft202012Validator(schema, registry=registry)


def _errors(obj, definition: str, where: str = "") -> list[str]:
    return sorted(
        f"{where}{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in _validator(definition).iter_errors(obj)
    )


def experiment_errors(experiment: dict) -> list[str]:
    """Every problem with a Katib Experiment manifest (empty when Katib would accept it)."""
    errors = _errors({k: v for k, v in experiment.items() if k != "status"}, "v1beta1.Experiment")
    if experiment.get("apiVersion") != "kubeflow.org/v1beta1" or experiment.get("kind") != "Experiment":
        errors.append("apiVersion/kind must be kubeflow.org/v1beta1 Experiment")
    name = (experiment.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    spec = experiment.get("spec") or {}
    objective = spec.get("objective") or {}
    if objective.get("type") not in ("minimize", "maximize"):
        errors.append(f"spec.objective.type: {objective.get('type')!r} must be minimize or maximize")
    if not objective.get("objectiveMetricName"):
        errors.append("spec.objective.objectiveMetricName: must be specified")
    if objective.get("objectiveMetricName") in (objective.get("additionalMetricNames") or []):
        errors.append("spec.objective.additionalMetricNames: must not contain the objective metric")
    if (spec.get("algorithm") or {}).get("algorithmName") not in ALGORITHMS:
        errors.append(f"spec.algorithm.algorithmName: {spec.get('algorithm')} is not an algorithm Katib ships")
    early = spec.get("earlyStopping")
    if early is not None and early.get("algorithmName") not in EARLY_STOPPING:
        errors.append(f"spec.earlyStopping.algorithmName: {early.get('algorithmName')!r} is not one Katib ships")
    for key in ("maxTrialCount", "parallelTrialCount"):
        if key in spec and spec[key] <= 0:
            errors.append(f"spec.{key}: must be greater than 0")
    if spec.get("parallelTrialCount", 0) > spec.get("maxTrialCount", 1 << 30):
        errors.append("spec.parallelTrialCount: must not exceed spec.maxTrialCount")
    if spec.get("maxFailedTrialCount", 0) > spec.get("maxTrialCount", 1 << 30):
        errors.append("spec.maxFailedTrialCount: must not exceed spec.maxTrialCount")
    names = set()
    for i, parameter in enumerate(spec.get("parameters") or []):
        where = f"spec.parameters.{i}"
        names.add(parameter.get("name"))
        kind, space = parameter.get("parameterType"), parameter.get("feasibleSpace") or {}
        if kind not in PARAMETER_TYPES:
            errors.append(f"{where}.parameterType: {kind!r} is not supported")
        if space.get("distribution", "uniform") not in DISTRIBUTIONS:
            errors.append(f"{where}.feasibleSpace.distribution: {space['distribution']!r} is not supported")
        if kind in ("double", "int"):
            if space.get("list"):
                errors.append(f"{where}.feasibleSpace.list: not for parameterType {kind}")
            if not (space.get("min") or space.get("max")):
                errors.append(f"{where}.feasibleSpace: min or max required for parameterType {kind}")
            for key in ("min", "max", "step"):
                if key in space:
                    try:
                        value = float(space[key])
                    except ValueError:
                        errors.append(f"{where}.feasibleSpace.{key}: {space[key]!r} is not a number")
                        continue
                    if kind == "int" and value != int(value):
                        errors.append(f"{where}.feasibleSpace.{key}: {space[key]!r} is not an integer")
            if "min" in space and "max" in space and float(space["min"]) >= float(space["max"]):
                errors.append(f"{where}.feasibleSpace: min must be below max")
        elif kind in ("discrete", "categorical") and (
            any(k in space for k in ("min", "max", "step")) or not space.get("list")
        ):
            errors.append(f"{where}.feasibleSpace: {kind} takes a non-empty list only")
    if spec.get("algorithm", {}).get("algorithmName") == "grid":
        for i, parameter in enumerate(spec.get("parameters") or []):
            if parameter.get("parameterType") == "double" and not parameter["feasibleSpace"].get("step"):
                errors.append(f"spec.parameters.{i}: grid needs a step for double parameters")
    errors += _trial_template_errors(spec.get("trialTemplate") or {}, names)
    collector = ((spec.get("metricsCollectorSpec") or {}).get("collector") or {}).get("kind", "StdOut")
    if collector not in COLLECTORS:
        errors.append(f"spec.metricsCollectorSpec.collector.kind: {collector!r} is not a collector kind")
    return errors


def _trial_template_errors(template: dict, parameter_names: set) -> list[str]:
    errors = []
    if not template.get("primaryContainerName"):
        errors.append("spec.trialTemplate.primaryContainerName: must be specified")
    if not template.get("successCondition") or not template.get("failureCondition"):
        errors.append("spec.trialTemplate: successCondition and failureCondition must be specified")
    trial_spec = template.get("trialSpec")
    if trial_spec is None:
        return [*errors, "spec.trialTemplate.trialSpec: must be specified"]
    text = json.dumps(trial_spec)
    declared = {}
    for i, parameter in enumerate(template.get("trialParameters") or []):
        name, reference = parameter.get("name", ""), parameter.get("reference", "")
        if not name or not reference or "{" in name or "}" in name:
            errors.append(f"spec.trialTemplate.trialParameters.{i}: name and reference required, no braces in name")
            continue
        meta = re.fullmatch(r"\$\{trialSpec\.(\w+)\}", reference)
        if not (meta and meta.group(1) in META_KEYS) and reference not in parameter_names:
            errors.append(f"spec.trialTemplate.trialParameters.{i}.reference: {reference!r} is no parameter")
        declared[name] = reference
        if f"${{trialParameters.{name}}}" not in text:
            errors.append(f"spec.trialTemplate.trialParameters.{i}: {name} is not used in the trialSpec")
    for used in SUBSTITUTION.findall(text):
        if used not in declared:
            errors.append(f"spec.trialTemplate.trialSpec: ${{trialParameters.{used}}} is not declared")
    metadata = trial_spec.get("metadata") or {}
    if metadata.get("name") or metadata.get("namespace"):
        errors.append("spec.trialTemplate.trialSpec: metadata.name and metadata.namespace must be omitted")
    if trial_spec.get("apiVersion") == "batch/v1" and trial_spec.get("kind") == "Job":
        template_spec = (trial_spec.get("spec") or {}).get("template") or {}
        errors += _errors(
            template_spec, "io.k8s.api.core.v1.PodTemplateSpec", "spec.trialTemplate.trialSpec.spec.template."
        )
        containers = (template_spec.get("spec") or {}).get("containers") or []
        if template.get("primaryContainerName") not in {c.get("name") for c in containers}:
            errors.append("spec.trialTemplate.primaryContainerName: no container of that name in the trialSpec")
    else:
        errors.append("spec.trialTemplate.trialSpec: expected a batch/v1 Job")
    return errors
