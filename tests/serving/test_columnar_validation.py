"""The validator's columnar fast path decides only whether a column is clean: every bad value still gets the
per-value message (row, feature, value), and every clean column the values the per-value checks would give."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from kfops.components.contracts import KfopsError
from kfops.components.model_store import load_model
from kfops.components.transform import request_value
from kfops.serving.validation import FeatureValidator, clean_numbers

from .helpers import clean, v1_lists, v1_objects

ROWS = 6
BAD_ROW = 4
NUMERIC_BAD = ["12.5", True, math.nan, math.inf, -math.inf, 1.5e38, -(10**39), 10**400, [1.0], {"a": 1}]
CATEGORICAL_BAD = [1.5, False, [1], {"k": "v"}]


@pytest.fixture(scope="module")
def validator(registered_model):
    return FeatureValidator(load_model(str(registered_model.model_dir)), max_request_rows=100)


def per_value_message(kind: str, name: str, value) -> str:
    with pytest.raises(KfopsError) as caught:
        request_value(kind, name, value, f"instances[{BAD_ROW}]")
    return str(caught.value)


def bad_cases(spec):
    numeric = next(c.name for c in spec.columns if c.kind == "numeric")
    categorical = next(c.name for c in spec.columns if c.kind == "categorical")
    return [("numeric", numeric, v) for v in NUMERIC_BAD] + [("categorical", categorical, v) for v in CATEGORICAL_BAD]


@pytest.mark.parametrize("form", ["objects", "lists", "mixed"])
def test_a_bad_value_gets_the_per_value_message_naming_its_row_feature_and_value(validator, registered_model, form):
    spec = registered_model.spec
    rows = registered_model.rows.head(ROWS)
    for kind, name, value in bad_cases(spec):
        objects, lists = v1_objects(rows), v1_lists(spec, rows)
        objects[BAD_ROW][name] = value
        lists[BAD_ROW][spec.feature_names.index(name)] = value
        # "mixed" (objects and lists in one request) takes the row-by-row path: both paths must say the same
        instances = {"objects": objects, "lists": lists, "mixed": [lists[0], *objects[1:]]}[form]
        with pytest.raises(InvalidInput) as caught:
            validator.v1({"instances": instances})
        assert str(caught.value) == per_value_message(kind, name, value), (form, name, value)


def test_clean_columns_hold_what_the_per_value_checks_give(validator, registered_model):
    spec = registered_model.spec
    rows = registered_model.rows.head(ROWS)
    objects = v1_objects(rows)
    numeric = [c.name for c in spec.columns if c.kind == "numeric"]
    categorical = [c.name for c in spec.columns if c.kind == "categorical"]
    # nulls, ints, the range's edge, and an int category (text to the model) in one request
    objects[0][numeric[0]] = None
    objects[1][numeric[0]] = 7
    objects[2][numeric[0]] = -1e38
    objects[3][categorical[0]] = None
    objects[4][categorical[0]] = 42
    for instances in (objects, [[row[n] for n in spec.feature_names] for row in objects]):
        columns, extras = validator.v1({"instances": instances})
        assert extras is None
        for name in spec.feature_names:
            kind = validator.kinds[name]
            want = [request_value(kind, name, row[name], "x") for row in objects]
            if kind == "numeric":
                assert isinstance(columns[name], np.ndarray) and columns[name].dtype == np.float64
                np.testing.assert_array_equal(columns[name], np.asarray(want, dtype=np.float64))
            else:
                assert columns[name] == want


def test_clean_numbers_refuses_anything_the_per_value_checks_would_question():
    assert clean_numbers((1, 2.5, None)) is not None
    assert np.isnan(clean_numbers((None, None))).all()
    for bad in ((1.0, math.nan), (None, math.inf), (1.0, 2e38), (True, 1.0), ("1", 2.0), (10**400,), (np.float64(1),)):
        assert clean_numbers(bad) is None, bad


def test_v2_columns_take_the_same_fast_path_and_name_the_input_and_row(validator, registered_model):
    spec = registered_model.spec
    rows = registered_model.rows.head(ROWS)

    def request(bad_name=None, bad_value=None, nested=False):
        inputs = []
        for col in spec.columns:
            values = [clean(v) for v in rows[col.name].tolist()]
            if col.name == bad_name:
                values[BAD_ROW] = bad_value
            data = [[v] for v in values] if nested else values
            datatype = "FP64" if col.kind == "numeric" else "BYTES"
            shape = [ROWS, 1] if nested else [ROWS]
            inputs.append(InferInput(name=col.name, shape=shape, datatype=datatype, data=data))
        return InferRequest(model_name="m", infer_inputs=inputs)

    flat, _ = validator.v2(request())
    nested, _ = validator.v2(request(nested=True))
    for name in spec.feature_names:
        np.testing.assert_array_equal(np.asarray(flat[name], dtype=object), np.asarray(nested[name], dtype=object))
    numeric = next(c.name for c in spec.columns if c.kind == "numeric")
    for nested_form in (False, True):
        with pytest.raises(InvalidInput, match=rf"^input '{numeric}' row {BAD_ROW}: feature '{numeric}' must be a"):
            validator.v2(request(numeric, "oops", nested=nested_form))
