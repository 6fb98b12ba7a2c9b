"""The model families' own parameters: each family but the MLP (whose fields are ``TrainConfig``'s) has a typed
config here, filled from ``TrainConfig.model_params``. Standard library only, as every contract."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from kfops.components.contracts import KfopsError


@dataclass
class GbdtConfig:
    """The gradient-boosted trees' own parameters (``TrainConfig.model_params`` when ``model_family`` is gbdt):
    scikit-learn's HistGradientBoosting names and meanings. ``seed`` and ``class_weighting`` come from
    TrainConfig; the other MLP fields do not apply. Boosting stops when the validation split's loss has not
    improved for ``n_iter_no_change`` iterations."""

    learning_rate: float = 0.1
    max_iter: int = 500
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    max_features: float = 1.0  # share of features each split considers
    n_iter_no_change: int = 20

    def check(self) -> None:
        where = "train: model_params"
        if self.learning_rate <= 0:
            raise KfopsError(f"{where}.learning_rate must be positive, got {self.learning_rate}")
        for name in ("max_iter", "min_samples_leaf", "n_iter_no_change"):
            if int(getattr(self, name)) < 1:
                raise KfopsError(f"{where}.{name} must be at least 1, got {getattr(self, name)}")
        if int(self.max_leaf_nodes) < 2:
            raise KfopsError(f"{where}.max_leaf_nodes must be at least 2, got {self.max_leaf_nodes}")
        if self.l2_regularization < 0:
            raise KfopsError(f"{where}.l2_regularization must be >= 0, got {self.l2_regularization}")
        if not 0.0 < self.max_features <= 1.0:
            raise KfopsError(f"{where}.max_features must be in (0, 1], got {self.max_features}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GbdtConfig:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise KfopsError(f"train: model_params: unknown gbdt parameter(s) {unknown}; known: {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in data.items():
            kind = hints[name]
            try:
                number = float(value)
            except (TypeError, ValueError) as err:
                raise KfopsError(f"train: model_params.{name} must be a number, got {value!r}") from err
            if isinstance(value, bool) or (kind is int and not number.is_integer()):
                raise KfopsError(f"train: model_params.{name} must be {'an integer' if kind is int else 'a number'}, "
                                 f"got {value!r}")  # fmt: skip
            values[name] = kind(number)
        config = cls(**values)
        config.check()
        return config
