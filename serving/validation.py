"""Request rows in, typed feature columns out: the predictor's V1 and V2 validation, against the model's FeatureSpec.

Every malformed request is a ``kserve.errors.InvalidInput`` (HTTP 400) whose message names the field (see the
predictor's module doc for the rules on values).

**Raw records.** A row may also carry the training data's other columns (``FeatureSpec.passthrough_columns``: ids,
timestamps, entity keys, dropped columns) and its target. Those never reach the model. The passthrough columns come
back beside the features (``extras``) for the payload log, so outcomes can later be joined on a business id; the
target is accepted and ignored. A field the training data never had is a 400 naming it (a typo guard) unless the
validator was made with ``allow_extra_fields``, which ignores such fields (they are not logged either: their names
and contents are whatever a caller sends). In V2 the same holds for inputs: one named after a passthrough column
(BYTES, BOOL or any numeric type, one value per row) is logged, the target input is ignored.

**Columnar.** A request is read column by column, never value by value in Python where it can be helped: the rows'
shapes are checked in one C-level pass (every V1 object row's keys exactly the features, or every list row the
features' width), the columns are taken out of the rows at once (``operator.itemgetter`` and ``zip``), and each
column is checked whole: the set of its values' types first, then a numeric column as one float64 array (finite,
within float32's range; nulls become NaN), a categorical one as text or null. A column that fails any of these goes
through the per-value checks (``transform.request_column``), which raise the exact message naming the row, the
feature and the value: the fast path decides only whether a column is clean, never what an error says. Numeric
feature columns come back as float64 arrays (NaN for missing), categorical ones as lists of str or None.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import pandas as pd
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from kfops.components.contracts import PAYLOAD_META_COLUMNS, PAYLOAD_PREDICTION_COLUMNS, KfopsError
from kfops.components.model_store import LoadedModel
from kfops.components.transform import MAX_ABS_NUMBER, request_column, request_value
from kfops.serving.protocol import BadBody, flat_values, parse_json, show, v1_instances

NUMERIC_V2_TYPES = frozenset(
    {"FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"}
)
# The payload log's own fields: a raw column of the same name is logged under this prefix instead of overwriting it.
LOGGED_PREFIX = "input_"
_RESERVED = frozenset(PAYLOAD_META_COLUMNS) | frozenset(PAYLOAD_PREDICTION_COLUMNS)
_SCALARS = (str, int, float, bool)
_NONE = type(None)
_NUMBERS_OR_NULL = frozenset({float, int, _NONE})
_TEXT_OR_NULL = frozenset({str, _NONE})
_NESTED = (list, dict)


def clean_numbers(values) -> np.ndarray | None:
    """A numeric column as float64 (NaN for null) when every value is a finite int or float within float32's
    range, or null; None when any is not (the caller then finds and names it value by value)."""
    types = set(map(type, values))
    if not types <= _NUMBERS_OR_NULL:
        return None  # text, booleans, numpy scalars...: the per-value path decides
    try:
        array = np.array(values, dtype=np.float64)  # null becomes NaN
    except (OverflowError, ValueError, TypeError):
        return None
    within = np.abs(array) <= MAX_ABS_NUMBER  # False for NaN and infinities
    if within.all():
        return array
    # The NaNs from nulls are the only values allowed outside: clean when every failing value is a null.
    if _NONE in types and int(within.size - np.count_nonzero(within)) == values.count(None):
        return array
    return None


def _v1_where(i: int) -> str:
    return f"instances[{i}]"


def logged_name(column: str) -> str:
    """The payload-log field a raw (non-feature) column is written to: its own name, or ``input_<name>`` when the
    log already has a field of that name (``timestamp``, ``request_id``, ``prediction``...)."""
    return f"{LOGGED_PREFIX}{column}" if column in _RESERVED else column


class FeatureValidator:
    """Turns request values into typed feature columns, raising InvalidInput that names the field."""

    def __init__(self, loaded: LoadedModel, max_request_rows: int, allow_extra_fields: bool = False) -> None:
        self.spec = loaded.spec
        self.names = loaded.spec.feature_names
        self.kinds = {c.name: c.kind for c in loaded.spec.columns}
        self.known = frozenset(self.names)
        self.max_request_rows = max_request_rows
        self.allow_extra_fields = allow_extra_fields
        # Raw columns logged beside the features, by the name they are logged under; the target is only accepted.
        self.passthrough = {name: logged_name(name) for name in loaded.spec.passthrough_columns}
        self.accepted = frozenset(self.passthrough) | {loaded.spec.target}

    def check_rows(self, n: int, where: str) -> None:
        if n == 0:
            raise InvalidInput(f"{where} is empty: send at least one row")
        if n > self.max_request_rows:
            raise InvalidInput(
                f"{where} has {n} rows, more than this server's maximum of {self.max_request_rows} per request"
            )

    def value(self, name: str, value: Any, where: str) -> Any:
        """One validated value (``transform.request_value``): InvalidInput names the field."""
        try:
            return request_value(self.kinds[name], name, value, where)
        except KfopsError as err:
            raise InvalidInput(str(err)) from None

    def column(self, name: str, values, where) -> np.ndarray | list:
        """A whole column validated at once (see the module doc): numeric as a float64 array, categorical as a list;
        ``where(i)`` names row i in the message of a bad value."""
        if self.kinds[name] == "numeric":
            clean = clean_numbers(values)
            if clean is not None:
                return clean
        elif set(map(type, values)) <= _TEXT_OR_NULL:
            return list(values)
        try:  # something in the column is not clean: the per-value checks give the exact message
            checked = request_column(self.kinds[name], name, list(values), where)
        except KfopsError as err:
            raise InvalidInput(str(err)) from None
        return np.asarray(checked, dtype=np.float64) if self.kinds[name] == "numeric" else checked

    def frame(self, columns: dict[str, list]) -> pd.DataFrame:
        data = {}
        for name in self.names:
            if self.kinds[name] == "numeric":
                data[name] = np.asarray(columns[name], dtype=np.float64)
            else:
                data[name] = pd.Series(columns[name], dtype=object)
        return pd.DataFrame(data)

    def _unknown(self, names) -> list[str]:
        if self.allow_extra_fields:
            return []
        return sorted(str(n) for n in names if n not in self.known and n not in self.accepted)

    def _unknown_message(self, unknown: list[str], what: str) -> str:
        return (
            f"unknown {what}(s) {unknown[:10]}: neither a feature nor a column of the model's training data (a typo? "
            "a server started with --allow-extra-fields ignores such fields)"
        )

    # ------------------------------------------------------------------------------------------ V1
    def v1(self, body: Any) -> tuple[dict[str, list], dict[str, list] | None]:
        """Feature columns, and the raw columns to log (by logged name; None when no row sent any)."""
        try:
            instances = v1_instances(parse_json(body) if isinstance(body, bytes | bytearray | str) else body)
        except BadBody as err:
            raise InvalidInput(str(err)) from None
        self.check_rows(len(instances), "'instances'")
        fast = self._v1_columns(instances)
        if fast is not None:
            return fast, None
        width = len(self.names)
        # Check every row's shape first, then validate column by column (vectorised where it can be).
        lists = 0
        wider: list[int] = []  # object rows with keys beyond the features
        for i, row in enumerate(instances):
            where = f"instances[{i}]"
            if isinstance(row, dict):
                if row.keys() != self.known:
                    unknown = self._unknown(row)
                    missing = [n for n in self.names if n not in row]
                    if unknown or missing:
                        parts = []
                        if unknown:
                            parts.append(self._unknown_message(unknown, "field"))
                        if missing:
                            parts.append(f"missing feature(s) {missing}")
                        raise InvalidInput(f"{where}: {' and '.join(parts)}; the model expects {self.names}")
                    wider.append(i)
            elif isinstance(row, list):
                lists += 1
                if len(row) != width:
                    raise InvalidInput(
                        f"{where}: a list instance must have {width} values (one per feature, in the order "
                        f"{self.names}), got {len(row)}"
                    )
            else:
                raise InvalidInput(
                    f"{where} must be an object keyed by feature name or a list of {width} values, "
                    f"got {type(row).__name__}"
                )
        columns: dict[str, list] = {}
        for j, name in enumerate(self.names):
            if lists == 0:
                values = [row[name] for row in instances]
            elif lists == len(instances):
                values = [row[j] for row in instances]
            else:
                values = [row[name] if isinstance(row, dict) else row[j] for row in instances]
            columns[name] = self.column(name, values, lambda i: f"instances[{i}]")
        return columns, (self._v1_extras(instances, wider) if wider else None)

    def _v1_columns(self, instances: list) -> dict[str, np.ndarray | list] | None:
        """The common request, columns in C-level passes: every row an object keyed by exactly the features, or
        every row a list of the features' width. None for anything else (the row-by-row path names the problem)."""
        names = self.names
        row_types = set(map(type, instances))
        if row_types != {dict} and row_types != {list}:
            return None
        if set(map(len, instances)) != {len(names)}:
            return None
        if row_types == {dict}:
            # As many keys as features and every feature found: the keys are exactly the features.
            try:
                if len(names) == 1:
                    values = [row[names[0]] for row in instances]
                    return {names[0]: self.column(names[0], values, _v1_where)}
                rows = list(map(operator.itemgetter(*names), instances))  # the features' values, a tuple a row
            except KeyError:
                return None
        else:
            rows = instances
        columns = zip(*rows, strict=True)  # every row has len(names) values (checked above)
        return {name: self.column(name, values, _v1_where) for name, values in zip(names, columns, strict=True)}

    def _v1_extras(self, instances: list, wider: list[int]) -> dict[str, list] | None:
        passthrough = self.passthrough
        extras: dict[str, list] = {}
        n = len(instances)
        for i in wider:
            for key, value in instances[i].items():
                logged = passthrough.get(key)
                if logged is None:
                    continue  # a feature, the target, or an extra field that is allowed but not logged
                if value is not None and not isinstance(value, _SCALARS):
                    raise InvalidInput(
                        f"instances[{i}]: field '{key}' must be a string, number, boolean or null (it is logged, not "
                        f"scored), got {type(value).__name__} {show(value)}"
                    )
                column = extras.get(logged)
                if column is None:
                    column = extras[logged] = [None] * n
                column[i] = value
        return extras or None

    # ------------------------------------------------------------------------------------------ V2
    def v2(self, request: InferRequest, nan_is_missing: bool = False) -> tuple[dict[str, list], dict[str, list] | None]:
        """Columns from a V2 request, and the raw columns to log; ``nan_is_missing`` for encodings without null
        (gRPC, binary tensors)."""
        inputs = list(request.inputs or [])
        if not inputs:
            raise InvalidInput(f"'inputs' is empty: send one input per feature {self.names}")
        by_name: dict[str, Any] = {}
        for infer_input in inputs:
            name = infer_input.name
            if name in by_name:
                raise InvalidInput(f"input '{name}' appears more than once")
            by_name[name] = infer_input
        unknown = self._unknown(by_name)
        missing = [n for n in self.names if n not in by_name]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(self._unknown_message(unknown, "input"))
            if missing:
                parts.append(f"missing input(s) {missing}")
            raise InvalidInput(f"{' and '.join(parts)}; the model expects one input per feature: {self.names}")
        columns: dict[str, list] = {}
        rows = None
        for name in self.names:
            values = self._v2_values(by_name[name], nan_is_missing, self.kinds[name])
            if rows is None:
                rows = len(values)
                self.check_rows(rows, f"input '{name}'")
            elif len(values) != rows:
                raise InvalidInput(
                    f"input '{name}' has {len(values)} rows but input '{self.names[0]}' has {rows}: "
                    "every input must have the same number of rows"
                )
            columns[name] = self.column(name, values, lambda i, where=f"input '{name}'": f"{where} row {i}")
        extras = None
        if len(by_name) > len(self.names):
            extras = {}
            for name, infer_input in by_name.items():
                logged = self.passthrough.get(name)
                if logged is None:
                    continue  # a feature (done above), the target, or an allowed extra input
                values = self._v2_values(infer_input, nan_is_missing, None)
                if len(values) != rows:
                    raise InvalidInput(
                        f"input '{name}' has {len(values)} rows but input '{self.names[0]}' has {rows}: "
                        "every input must have the same number of rows"
                    )
                extras[logged] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        return columns, extras or None

    def _v2_values(self, infer_input, nan_is_missing: bool, kind: str | None) -> list:
        """One input's values, a row each; ``kind`` None for a raw column that is only logged."""
        name = infer_input.name
        where = f"input '{name}'"
        datatype = str(infer_input.datatype or "").upper()
        if kind == "numeric" and datatype not in NUMERIC_V2_TYPES:
            raise InvalidInput(f"{where}: numeric feature must have datatype FP64, FP32 or INT64, got {datatype!r}")
        if kind == "categorical" and datatype != "BYTES":
            raise InvalidInput(f"{where}: categorical feature must have datatype BYTES, got {datatype!r}")
        if kind is None and datatype not in NUMERIC_V2_TYPES and datatype not in ("BYTES", "BOOL"):
            raise InvalidInput(
                f"{where}: a column of the training data that is logged, not scored, must have datatype BYTES, BOOL "
                f"or a numeric type, got {datatype!r}"
            )
        shape = infer_input.shape
        if (
            not isinstance(shape, list | tuple)
            or not shape
            or len(shape) > 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            or (len(shape) == 2 and shape[1] != 1)
        ):
            raise InvalidInput(f"{where}: shape must be [n] or [n, 1], got {show(shape)}")
        data = infer_input.data
        if data is None:
            try:  # binary tensor extension
                data = infer_input.as_numpy().reshape(-1).tolist()
            except Exception as err:
                raise InvalidInput(f"{where}: cannot read its data: {err}") from None
        if not isinstance(data, list):
            raise InvalidInput(f"{where}: 'data' must be a list, got {type(data).__name__}")
        types = set(map(type, data))
        if not any(issubclass(t, _NESTED) for t in types):
            flat = data  # shape [n]: already a value a row (a shared list: nothing below writes to it)
        else:
            try:
                flat = flat_values(data, where)
            except BadBody as err:
                raise InvalidInput(str(err)) from None
            types = set(map(type, flat))
        if nan_is_missing and datatype.startswith("FP") and float in types:
            # NaN: the float tensors' missing value (see the predictor's module doc)
            flat = [None if value != value else value for value in flat]
        if len(flat) != shape[0]:
            raise InvalidInput(f"{where}: shape {list(shape)} says {shape[0]} rows but 'data' holds {len(flat)}")
        return flat
