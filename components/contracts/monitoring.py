"""The monitor's contract: the drift verdict on one window against one reference (``DriftResult``), per column
(``FeatureDrift``), as the monitor writes it to ``drift.json`` and the retrain trigger, alerts and Prometheus
exporter read it. Standard library only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from kfops.components.contracts import KfopsError

VERDICT_DRIFT = "drift"
VERDICT_NO_DRIFT = "no_drift"
VERDICT_INSUFFICIENT = "insufficient_data"
STATUS_OK = "ok"
STATUS_INSUFFICIENT = "insufficient_data"


def _finite_or_none(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, numpy scalars plain Python numbers (``item()``)."""
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass
class FeatureDrift:
    """The drift verdict on one column."""

    name: str
    kind: str  # numeric | categorical
    test: str  # ks | chisquare | z | wasserstein | jensenshannon | psi | kl
    threshold: float
    score: float | None  # p-value (ks, chisquare, z) or distance (the others); None when no test ran
    drift_detected: bool
    status: str = STATUS_OK  # ok | insufficient_data
    test_label: str = ""
    reference_rows: int = 0  # non-empty values in the reference
    current_rows: int = 0  # non-empty values in the current window
    current_missing: int = 0  # empty values in the current window (null, NaN, infinite, not a number)
    # Where the streaming form approximates the exact test: the interval the exact score lies in, and whether
    # the decision is the exact test's for sure (both ends of the interval on the same side of the threshold).
    score_bounds: list[float] | None = None
    exact: bool = True
    statistic: float | None = None  # the K-S D or the chi-square statistic, where there is one
    reference_summary: dict[str, Any] = field(default_factory=dict)
    current_summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass
class DriftResult:
    """The monitor's verdict on one window against one reference."""

    verdict: str  # drift | no_drift | insufficient_data
    dataset_drift: bool
    drift_share: float  # drifted / tested features
    drift_share_threshold: float  # dataset drift when drift_share >= this (Evidently's default 0.5)
    tested_features: int
    drifted_features: int
    features: list[FeatureDrift]
    prediction_drift: list[FeatureDrift] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)  # features the current window lacks
    extra_columns: list[str] = field(default_factory=list)  # current columns the reference lacks
    skipped_columns: dict[str, str] = field(default_factory=dict)  # column -> why it is not tested
    left_out: dict[str, str] = field(default_factory=dict)  # reference column -> why it is no feature
    reference: str = ""
    current: str = ""
    reference_rows: int = 0
    current_rows: int = 0
    model: str = ""
    model_version: str = ""
    stattest: str = "auto"
    messages: list[str] = field(default_factory=list)
    notifications: dict[str, str] = field(default_factory=dict)  # pushgateway / webhook: what happened
    created_at: str = ""
    seconds: float = 0.0

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drift_detected]

    def feature(self, name: str) -> FeatureDrift:
        for item in [*self.features, *self.prediction_drift]:
            if item.name == name:
                return item
        raise KfopsError(f"drift result has no feature '{name}'")

    def to_dict(self) -> dict[str, Any]:
        data = _finite_or_none(asdict(self))
        data["drifted"] = self.drifted
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> DriftResult:
        data = json.loads(text)
        data.pop("drifted", None)
        data["features"] = [FeatureDrift(**f) for f in data.get("features", [])]
        data["prediction_drift"] = [FeatureDrift(**f) for f in data.get("prediction_drift", [])]
        return cls(**data)

    def headline(self) -> str:
        """One line: the verdict and why."""
        if self.verdict == VERDICT_INSUFFICIENT:
            return "insufficient data: " + (self.messages[0] if self.messages else "no feature could be tested")
        names = ", ".join(self.drifted) or "none"
        word = "DRIFT" if self.dataset_drift else "no dataset drift"
        return (
            f"{word}: {self.drifted_features} of {self.tested_features} features drifted "
            f"(share {self.drift_share:.2f}, threshold {self.drift_share_threshold:.2f}); drifted: {names}"
        )
