"""Request builders shared by the serving tests."""

from __future__ import annotations

import math

import pandas as pd

from kfops.components.contracts import FeatureSpec


def clean(value):
    """NaN (pandas' missing) becomes JSON null; numpy scalars become Python ones."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def v1_objects(frame: pd.DataFrame) -> list[dict]:
    return [{k: clean(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def v1_lists(spec: FeatureSpec, frame: pd.DataFrame) -> list[list]:
    return [[clean(row[name]) for name in spec.feature_names] for row in frame.to_dict(orient="records")]


def v2_inputs(spec: FeatureSpec, frame: pd.DataFrame, column_shape: bool = False) -> list[dict]:
    n = len(frame)
    inputs = []
    for col in spec.columns:
        values = [clean(v) for v in frame[col.name].tolist()]
        inputs.append(
            {
                "name": col.name,
                "datatype": "FP64" if col.kind == "numeric" else "BYTES",
                "shape": [n, 1] if column_shape else [n],
                "data": [[v] for v in values] if column_shape else values,
            }
        )
    return inputs
