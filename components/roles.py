"""Which columns of a table are no features: one rule for training (ingest) and for drift monitoring, so that the
monitor compares what a model learns from.

Not features, in this order:

- the target and the time column, when named;
- timestamps: datetime values, or text whose every value is an ISO 8601 date or date-time (``2026-01-03``,
  ``2026-01-03 04:05:06+00:00``, ``2026-01-03T04:05:06Z``), as a CSV holds them;
- ids: text unique per row (at least ``UNIQUE_SHARE`` of the rows distinct, from ``MIN_ROWS`` rows) that is not
  nearly all numbers; whole numbers that number the rows (every value distinct and consecutive, as a DataFrame
  index written to CSV); and a column named like an id (``id``, ``customer_id``, ``CustomerID``, ``uuid``) holding
  whole numbers or text with more than ``MAX_CODES`` distinct values (with fewer it is a code, such as a store id,
  and stays a category).

``not_features(frame, ...)`` returns each such column with why, in the table's column order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from kfops.components.contracts import MAX_CLASSES

UNIQUE_SHARE = 0.9  # distinct values / rows at which text is an id
MIN_ROWS = 50  # fewer rows say nothing about uniqueness
MAX_CODES = 20  # a column named like an id with at most this many distinct values is a code, not an id
NUMERIC_TEXT_SHARE = 0.95  # text with at least this share of numbers is a numeric column with bad values

TARGET = "the target"
TIME_COLUMN = "the time column"
TIMESTAMPS = "timestamps"
UNIQUE_TEXT = "an id: unique per row"
ROW_NUMBERS = "an id: it numbers the rows"

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
# `id` alone or after a separator (customer_id, order-id, "order id"), `Id`/`ID` after a lower-case letter
# (customerId, CustomerID), and uuid/guid anywhere at the end.
# `id`, `uuid` or `guid` alone or after a separator (customer_id, order-id, "order id"), and `Id`/`ID` after a
# lower-case letter or digit (customerId, CustomerID): not "paid" or "valid".
_ID_SUFFIX = re.compile(r"(^|[_\-\s.])(id|uuid|guid)$", re.IGNORECASE)
_CAMEL_ID = re.compile(r"[a-z0-9](Id|ID)$")


def is_continuous_target(series: pd.Series, max_classes: int = MAX_CLASSES) -> bool:
    """A target that can only be a regression's: every value a number, more distinct ones than a classifier may
    have classes (``contracts.MAX_CLASSES``). Validation and splitting treat it by range, not by class."""
    present = series.dropna()
    if present.empty or present.nunique() <= max_classes or pd.api.types.is_bool_dtype(present):
        return False
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def named_like_an_id(name: str) -> bool:
    """``id``, ``customer_id``, ``order-id``, ``customerId``, ``CustomerID``, ``uuid``: not ``paid`` or ``valid``."""
    return bool(_ID_SUFFIX.search(name) or _CAMEL_ID.search(name))


def _text(present: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(present) or pd.api.types.is_bool_dtype(present):
        return False
    return pd.api.types.infer_dtype(present, skipna=True) == "string"


def _whole_numbers(present: pd.Series) -> np.ndarray | None:
    """The values as int64 when they are all whole numbers (an integer column, or floats from a column with
    blanks), else None."""
    if pd.api.types.is_bool_dtype(present):
        return None
    if pd.api.types.is_integer_dtype(present):
        return present.to_numpy(dtype="int64")
    if pd.api.types.is_float_dtype(present):
        values = present.to_numpy(dtype="float64")
        if np.isfinite(values).all() and (values == np.round(values)).all():
            return values.astype("int64")
    return None


def is_timestamp(series: pd.Series) -> bool:
    """Datetime values, or text that is all ISO 8601 dates or date-times."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    present = series.dropna()
    if not len(present):
        return False
    kind = pd.api.types.infer_dtype(present, skipna=True)
    if kind in ("datetime", "datetime64", "date"):
        return True
    if kind != "string" or not _ISO_DATE.match(str(present.iloc[0])):
        return False  # the first value decides cheaply for almost every column
    return bool(present.str.match(_ISO_DATE).all())


def id_reason(name: str, series: pd.Series) -> str:
    """Why the column is an id, or ``""`` when it is not one."""
    present = series.dropna()
    if not len(present):
        return ""
    text = _text(present)
    numbers = None if text else _whole_numbers(present)
    if not text and numbers is None:
        return ""
    distinct = int(present.nunique())
    if len(series) >= MIN_ROWS:
        if text and distinct >= UNIQUE_SHARE * len(series):
            # Text that is nearly all numbers is a numeric column with a few bad values (ingest names them).
            numbers_share = pd.to_numeric(present, errors="coerce").notna().mean()
            if numbers_share < NUMERIC_TEXT_SHARE:
                return UNIQUE_TEXT
        if numbers is not None and distinct == len(series) and int(numbers.max()) - int(numbers.min()) + 1 == distinct:
            return ROW_NUMBERS
    if named_like_an_id(name) and distinct > MAX_CODES:
        return f"an id: named like one, {distinct:,} distinct values"
    return ""


def not_features(
    frame: pd.DataFrame, target: str = "", time_column: str = "", skip: Iterable[str] = ()
) -> dict[str, str]:
    """``{column: why}`` for every column of ``frame`` that is no feature by the rules above, in column order.
    Columns in ``skip`` (already decided elsewhere) are not looked at."""
    skipped = set(skip)
    found: dict[str, str] = {}
    for name in frame.columns:
        name = str(name)
        if name in skipped:
            continue
        if target and name == target:
            found[name] = TARGET
        elif time_column and name == time_column:
            found[name] = TIME_COLUMN
        elif is_timestamp(frame[name]):
            found[name] = TIMESTAMPS
        else:
            why = id_reason(name, frame[name])
            if why:
                found[name] = why
    return found
