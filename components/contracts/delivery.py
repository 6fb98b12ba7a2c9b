"""Delivery contracts: what to deploy (``DeploySpec``) and what a canary must hold (``CanaryThresholds``).

The deploy and rollout stages, ``kfops deploy`` and ``kfops rollout`` read these; the InferenceService
manifests (``kfops.components.isvc``) are built from a ``DeploySpec``. Standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, ClassVar

from kfops.components.contracts import ALIAS_CHAMPION, KfopsError, fields_from_parameters

DEFAULT_RUNTIME = "kfops-pytorch-tabular"  # manifests/serving/servingruntime.yaml
DEFAULT_SERVICE_ACCOUNT = "kfops-model-reader"  # holds the S3 secret (manifests/README.md)

KNATIVE = "knative"
STANDARD = "standard"
MODES = (KNATIVE, STANDARD)

SCALE_METRICS = ("cpu", "memory", "concurrency", "rps")
LOGGER_MODES = ("all", "request", "response")
PROTOCOLS = ("v1", "v2")
# KServe names the Knative revisions {name}-predictor-00001: that must fit a 63-character DNS label.
MAX_NAME_LENGTH = 47

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_finite_number(value: Any) -> bool:
    """A real, finite number (not a bool, NaN or infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_quantity(value: str, what: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2Gi", "1.5") as a number; KfopsError naming ``what`` if bad."""
    from kubernetes.utils import parse_quantity as kubernetes_quantity

    text = str(value).strip()
    try:
        if any(c.isspace() for c in text):  # the client's parser allows "2 Gi"; the API server does not
            raise ValueError(text)
        return kubernetes_quantity(text)
    except (ValueError, ArithmeticError):
        raise KfopsError(f"deploy: {what} '{value}' is not a Kubernetes quantity (e.g. 500m, 2, 1Gi, 512Mi)") from None


# ------------------------------------------------------------------------------------------------ the spec
@dataclass
class DeploySpec:
    """What to serve and how: the deploy component's and ``kfops deploy``'s parameters, typed."""

    model_name: str
    version: str = ALIAS_CHAMPION  # a version number or an alias ("champion", "@challenger")
    name: str = ""  # the InferenceService; "" = model_name
    namespace: str = ""  # "" = the pod's namespace in a cluster, else the kubeconfig context's
    mode: str = KNATIVE  # KServe deployment mode: knative or standard
    canary_percent: int = 10  # a new version's share while the serving one stays stable; 100 = replace at once
    runtime: str = DEFAULT_RUNTIME
    image: str = ""  # "" = the runtime's image; else this image with the runtime's arguments, env and probes
    protocol_version: str = "v2"
    cpu_request: str = "1"
    cpu_limit: str = "1"  # the server runs one torch thread per CPU of the limit: keep it whole
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"
    gpus: int = 0  # nvidia.com/gpu limit; needs a CUDA serving image
    min_replicas: int = 1
    max_replicas: int = 3
    scale_metric: str = ""  # "" = KServe's default; cpu, memory (HPA) or concurrency, rps (Knative only)
    scale_target: int = 0  # 0 = KServe's default for the metric
    service_account: str = DEFAULT_SERVICE_ACCOUNT  # "" = the namespace's default account
    logger_url: str = ""  # payload logger: CloudEvents of requests/responses sent here ("" = off)
    logger_mode: str = "all"

    # field -> the deploy component's parameter, where the two differ
    PARAMETER_NAMES: ClassVar[dict[str, str]] = {"name": "isvc_name", "mode": "deployment_mode"}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> DeploySpec:
        """The spec from the deploy component's parameters: each field given under its parameter name (a field
        with none keeps its default; other names are ignored)."""
        return cls(**fields_from_parameters(cls, parameters, cls.PARAMETER_NAMES))

    @property
    def isvc_name(self) -> str:
        return self.name or self.model_name

    def check(self) -> None:
        """Refuse a spec KServe or Kubernetes would reject, naming the field and the value."""
        if not self.model_name or "/" in self.model_name or "@" in self.model_name:
            raise KfopsError(f"deploy: model name {self.model_name!r} is not valid (non-empty, no '/' or '@')")
        name = self.isvc_name
        if not _DNS1035.match(name) or len(name) > MAX_NAME_LENGTH:
            hint = " (the model name is used when no InferenceService name is given)" if not self.name else ""
            raise KfopsError(
                f"deploy: InferenceService name '{name}'{hint} must be lowercase letters, digits and '-', start with "
                f"a letter, end with a letter or digit, and have at most {MAX_NAME_LENGTH} characters"
            )
        if self.namespace and (not _DNS1123_LABEL.match(self.namespace) or len(self.namespace) > 63):
            raise KfopsError(f"deploy: namespace '{self.namespace}' is not a valid Kubernetes namespace name")
        if self.mode not in MODES:
            raise KfopsError(f"deploy: mode must be knative or standard, got '{self.mode}'")
        if isinstance(self.canary_percent, bool) or not 0 <= int(self.canary_percent) <= 100:
            raise KfopsError(f"deploy: canary_percent must be an integer from 0 to 100, got {self.canary_percent}")
        for what, value in (("runtime", self.runtime), ("service_account", self.service_account)):
            if (value or what == "runtime") and not _DNS1123_SUBDOMAIN.match(value or ""):
                raise KfopsError(f"deploy: {what} '{value}' is not a valid Kubernetes object name")
        if self.protocol_version not in PROTOCOLS:
            raise KfopsError(f"deploy: protocol_version must be v1 or v2, got '{self.protocol_version}'")
        for resource in ("cpu", "memory"):
            request = parse_quantity(getattr(self, f"{resource}_request"), f"{resource}_request")
            limit = parse_quantity(getattr(self, f"{resource}_limit"), f"{resource}_limit")
            if request <= 0 or request > limit:
                raise KfopsError(
                    f"deploy: {resource}_request '{getattr(self, f'{resource}_request')}' must be positive and at most "
                    f"{resource}_limit '{getattr(self, f'{resource}_limit')}'"
                )
        if self.gpus < 0:
            raise KfopsError(f"deploy: gpus must be 0 or more, got {self.gpus}")
        lowest = 1 if self.mode == STANDARD else 0
        if self.min_replicas < lowest:
            why = " (Standard mode autoscales with an HPA, which cannot scale to zero)" if self.mode == STANDARD else ""
            raise KfopsError(f"deploy: min_replicas must be at least {lowest}{why}, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise KfopsError(
                f"deploy: max_replicas ({self.max_replicas}) must be at least 1 and at least min_replicas "
                f"({self.min_replicas})"
            )
        if self.scale_metric and self.scale_metric not in SCALE_METRICS:
            raise KfopsError(
                f"deploy: scale_metric must be one of {', '.join(SCALE_METRICS)}, got '{self.scale_metric}'"
            )
        if self.mode == STANDARD and self.scale_metric in ("concurrency", "rps"):
            raise KfopsError(
                f"deploy: scale_metric '{self.scale_metric}' needs Knative's autoscaler; Standard mode scales on cpu "
                "or memory"
            )
        if self.scale_target < 0 or (self.scale_target and not self.scale_metric):
            raise KfopsError(
                f"deploy: scale_target {self.scale_target} needs a scale_metric and must be positive (0 = default)"
            )
        if self.logger_url and not re.match(r"^https?://[^/\s]+", self.logger_url):
            raise KfopsError(f"deploy: logger_url '{self.logger_url}' must be an http:// or https:// URL")
        if self.logger_mode not in LOGGER_MODES:
            raise KfopsError(f"deploy: logger_mode must be one of {', '.join(LOGGER_MODES)}, got '{self.logger_mode}'")


# ---------------------------------------------------------------------------------------------- thresholds
@dataclass
class CanaryThresholds:
    """What a canary must hold in each step window.

    - ``max_error_rate``: the canary's share of 5xx answers, at most this (0.01 = 1%).
    - ``max_error_rate_increase``: canary error rate minus stable's, at most this (absolute, 0.005 = 0.5 points).
    - ``max_p99_seconds``: the canary's p99 latency, at most this many seconds (None: no absolute limit).
    - ``max_p99_ratio`` and ``p99_slack_seconds``: the canary's p99 at most the larger of ``ratio x stable p99``
      and ``stable p99 + slack``; the slack keeps millisecond jitter on tiny latencies from tripping the ratio.
    - ``min_requests``: requests each variant must answer in the window before it is judged (the canary at all,
      stable for the checks against it).
    """

    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.005
    max_p99_seconds: float | None = None
    max_p99_ratio: float = 1.5
    p99_slack_seconds: float = 0.025
    min_requests: int = 50

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        for name in ("max_error_rate", "max_error_rate_increase"):
            value = getattr(self, name)
            if not is_finite_number(value) or not 0.0 <= value <= 1.0:
                raise KfopsError(f"canary thresholds: {name} must be a share between 0 and 1, got {value!r}")
        if self.max_p99_seconds is not None and (
            not is_finite_number(self.max_p99_seconds) or self.max_p99_seconds <= 0
        ):
            raise KfopsError(
                f"canary thresholds: max_p99_seconds must be a positive number of seconds or None, "
                f"got {self.max_p99_seconds!r}"
            )
        if not is_finite_number(self.max_p99_ratio) or self.max_p99_ratio < 1.0:
            raise KfopsError(f"canary thresholds: max_p99_ratio must be a number >= 1, got {self.max_p99_ratio!r}")
        if not is_finite_number(self.p99_slack_seconds) or self.p99_slack_seconds < 0:
            raise KfopsError(
                f"canary thresholds: p99_slack_seconds must be a number of seconds >= 0, got {self.p99_slack_seconds!r}"
            )
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise KfopsError(f"canary thresholds: min_requests must be an integer >= 1, got {self.min_requests!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CanaryThresholds:
        """Thresholds from a mapping (e.g. parsed JSON/YAML); missing keys keep their defaults."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise KfopsError(f"canary thresholds must be a mapping of name to value, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise KfopsError(
                f"canary thresholds: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))
