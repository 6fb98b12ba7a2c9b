"""Where the GPU training step runs: tolerations, nodeSelector and accelerator type, as compile options and
pipeline parameters.

GPU node pools are usually tainted (``nvidia.com/gpu:NoSchedule`` on GKE, EKS and with the NVIDIA GPU Operator)
and often labelled by accelerator (``cloud.google.com/gke-accelerator=nvidia-l4``). ``kfops compile`` takes

- ``--gpu-toleration KEY[=VALUE][:EFFECT]`` (repeatable; ``none`` for no toleration): without a value the
  toleration matches the key whatever its value (``operator: Exists``); default ``nvidia.com/gpu:NoSchedule``;
- ``--gpu-node-selector KEY=VALUE`` (repeatable): default none;
- ``--accelerator-type NAME``: the extended resource the step asks for, default ``nvidia.com/gpu``;

and writes them as the defaults of the GPU training pipeline's parameters ``gpu_tolerations`` (a list of
Kubernetes tolerations), ``gpu_node_selector`` (label -> value) and ``accelerator_type``, which a run may change
in the Kubeflow UI. kfp-kubernetes takes both placements from pipeline parameters (``add_toleration_json``,
``add_node_selector_json``); a list of tolerations in one parameter needs a KFP backend of 2.5 or newer
(kubeflow/pipelines#11860), as the compiled YAML does anyway. ``set_accelerator_type`` writes a reference to the
parameter in ``resources.accelerator.resourceType``, which KFP's driver resolves at run time.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.components.kfp_support import DEFAULT_ACCELERATOR_TYPE, DEFAULT_GPU_TOLERATIONS

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
NO_TOLERATION = "none"
# Kubernetes qualified names (label and taint keys, extended resources): an optional DNS-subdomain prefix and '/',
# then a name of at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUALIFIED = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_NAME})?$")


def _check_key(key: str, what: str) -> None:
    prefix = key.rpartition("/")[0]
    if not _QUALIFIED.match(key) or len(prefix) > 253:
        raise KfopsError(
            f"{what}: key {key!r} is not a Kubernetes qualified name (an optional DNS prefix and '/', then at most "
            "63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        )


def _check_value(value: str, what: str) -> None:
    if not _LABEL_VALUE.match(value):
        raise KfopsError(
            f"{what}: value {value!r} is not a Kubernetes label value (at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit)"
        )


def parse_toleration(text: str) -> dict[str, str]:
    """``KEY[=VALUE][:EFFECT]`` (kubectl's taint syntax) as a Kubernetes toleration: ``Equal`` with a value,
    ``Exists`` without one (any value); no effect tolerates every effect of the key."""
    what = f"GPU toleration {text!r}"
    spec, _, effect = text.partition(":")
    key, has_value, value = spec.partition("=")
    _check_key(key, what)
    if has_value:
        _check_value(value, what)
    if effect and effect not in EFFECTS:
        raise KfopsError(f"{what}: effect {effect!r} must be one of {', '.join(EFFECTS)}")
    toleration = {"key": key, "operator": "Equal" if has_value else "Exists"}
    if has_value:
        toleration["value"] = value
    if effect:
        toleration["effect"] = effect
    return toleration


def parse_node_selector(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as one nodeSelector entry."""
    what = f"GPU node selector {text!r}"
    key, has_value, value = text.partition("=")
    if not has_value:
        raise KfopsError(f"{what}: write it as KEY=VALUE, e.g. cloud.google.com/gke-accelerator=nvidia-l4")
    _check_key(key, what)
    _check_value(value, what)
    return key, value


def check_accelerator_type(name: str) -> str:
    """An extended resource name such as ``nvidia.com/gpu``: a device plugin's resources are domain-prefixed."""
    what = f"accelerator type {name!r}"
    if "/" not in name:
        raise KfopsError(f"{what}: an accelerator is an extended resource named DOMAIN/NAME, e.g. nvidia.com/gpu")
    _check_key(name, what)
    return name


@dataclass(frozen=True)
class GpuPlacement:
    """The GPU step's tolerations, nodeSelector and accelerator type: the defaults of its pipeline parameters."""

    tolerations: tuple[Mapping[str, Any], ...] = DEFAULT_GPU_TOLERATIONS
    node_selector: Mapping[str, str] = field(default_factory=dict)
    accelerator_type: str = DEFAULT_ACCELERATOR_TYPE

    @classmethod
    def from_options(
        cls,
        tolerations: Sequence[str] | None = None,
        node_selector: Iterable[str] = (),
        accelerator_type: str | None = None,
    ) -> GpuPlacement:
        """From ``kfops compile``'s option texts; ``tolerations`` None keeps the default, ``["none"]`` gives none."""
        if tolerations is None:
            parsed: tuple[Mapping[str, Any], ...] = DEFAULT_GPU_TOLERATIONS
        elif list(tolerations) == [NO_TOLERATION]:
            parsed = ()
        else:
            if NO_TOLERATION in tolerations:
                raise KfopsError("GPU toleration 'none' means no toleration: give it alone, not with others")
            parsed = tuple(parse_toleration(t) for t in tolerations)
        selector: dict[str, str] = {}
        for text in node_selector:
            key, value = parse_node_selector(text)
            if key in selector and selector[key] != value:
                raise KfopsError(f"GPU node selector: {key} is given twice ({selector[key]!r} and {value!r})")
            selector[key] = value
        return cls(parsed, selector, check_accelerator_type(accelerator_type or DEFAULT_ACCELERATOR_TYPE))

    def parameters(self) -> tuple[inspect.Parameter, ...]:
        """The GPU pipeline's placement parameters, with these defaults (plain lists and dicts, as KFP writes)."""

        def parameter(name: str, annotation: type, default: Any) -> inspect.Parameter:
            return inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation
            )

        return (
            parameter("gpu_tolerations", list, [dict(t) for t in self.tolerations]),
            parameter("gpu_node_selector", dict, dict(sorted(self.node_selector.items()))),
            parameter("accelerator_type", str, self.accelerator_type),
        )


def place_on_gpu(task, params: Mapping[str, Any], gpu_count: int) -> None:
    """Ask for ``gpu_count`` accelerators of the pipeline's ``accelerator_type`` for ``task``, with its
    ``gpu_tolerations`` and ``gpu_node_selector`` (pipeline parameters in ``params``: resolved at run time)."""
    from kfp import kubernetes

    task.set_accelerator_type(params["accelerator_type"]).set_accelerator_limit(gpu_count)
    kubernetes.add_toleration_json(task, params["gpu_tolerations"])
    kubernetes.add_node_selector_json(task, params["gpu_node_selector"])
