"""Parse one raw column into its normalised type, marking values that do not parse.

Each parser takes the non-null values of a column (any dtype: CSV strings, JSON objects,
parquet types) and returns ``(values, bad)``: the parsed values (object Series, same index) and
a boolean mask of values of the wrong type. Fast paths cover columns that already have the
right dtype.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from datetime import date, datetime

import numpy as np
import pandas as pd

from icg.data.schemas import Kind

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_SPLIT = re.compile(r"[\s,;]+")
_EPOCH = pd.Timestamp(0, tz="UTC")

Parsed = tuple[pd.Series, pd.Series]


def null_mask(series: pd.Series) -> pd.Series:
    """True where a value is missing: None/NaN/NaT or a blank string."""
    mask = series.isna()
    if series.dtype == object:
        blank = [isinstance(v, str) and not v.strip() for v in series.tolist()]
        mask |= pd.Series(blank, index=series.index, dtype=bool)
    elif pd.api.types.is_string_dtype(series.dtype):
        mask |= series.str.strip().eq("").fillna(False).astype(bool)
    return mask


def _elementwise(series: pd.Series, fn: Callable[[object], object]) -> Parsed:
    """Apply ``fn`` to each value; ``fn`` raises (TypeError/ValueError) for a bad value."""
    out: list[object] = []
    bad: list[bool] = []
    for value in series.tolist():
        try:
            out.append(fn(value))
            bad.append(False)
        except (TypeError, ValueError, OverflowError):
            out.append(None)
            bad.append(True)
    return pd.Series(out, index=series.index, dtype=object), pd.Series(bad, index=series.index)


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        return str(int(value))  # integer ids are accepted and written as strings
    raise TypeError(f"expected a string, got {type(value).__name__}")


def parse_string(series: pd.Series) -> Parsed:
    """Strings; integers (ids) are turned into their decimal string."""
    if (pd.api.types.is_string_dtype(series.dtype) and series.dtype != object) or (
        pd.api.types.infer_dtype(series, skipna=True) == "string"  # all str: C-speed check
    ):
        return series.astype(object), pd.Series(False, index=series.index)
    return _elementwise(series, _string)


def _int(value: object) -> int:
    if isinstance(value, bool | np.bool_):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            value = float(text)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def parse_int(series: pd.Series) -> Parsed:
    """Integers; integral floats and numeric strings are accepted, booleans are not."""
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype(object), pd.Series(False, index=series.index)
    return _elementwise(series, _int)


def _bool(value: object) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected a boolean, got {value!r}")


def parse_bool(series: pd.Series) -> Parsed:
    """Booleans; 0/1 and true/false/yes/no/t/f/y/n strings are accepted."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype(object), pd.Series(False, index=series.index)
    return _elementwise(series, _bool)


def _datetime_seconds(ts: pd.Series) -> pd.Series:
    """Unix seconds from a datetime Series; naive times are taken as UTC."""
    if ts.dt.tz is None:
        ts = ts.dt.tz_localize("UTC")
    return ((ts - _EPOCH) // pd.Timedelta(seconds=1)).astype("int64")


def _timestamp(value: object) -> int:
    if isinstance(value, bool | np.bool_):
        raise TypeError("expected a timestamp, got a boolean")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"expected a timestamp, got {value!r}")
        return math.floor(value)
    if isinstance(value, datetime | date | pd.Timestamp | np.datetime64):
        ts = pd.Timestamp(value)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
        return int((ts - _EPOCH) // pd.Timedelta(seconds=1))
    if isinstance(value, str):
        text = value.strip()
        try:
            return _timestamp(float(text)) if not text.lstrip("-").isdigit() else int(text)
        except ValueError:
            if not any(c.isdigit() for c in text):  # "now", "today": not data
                raise
            return _timestamp(pd.Timestamp(text))
    raise TypeError(f"expected a timestamp, got {type(value).__name__}")


def parse_timestamp(series: pd.Series) -> Parsed:
    """Int64 Unix seconds from integers (kept as given), floats (floored), datetimes (UTC when
    naive) or strings holding either a number or an ISO-8601 date-time."""
    ok = pd.Series(False, index=series.index)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return _datetime_seconds(series).astype(object), ok
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype(object), ok
    return _elementwise(series, _timestamp)


class NonFinite(ValueError):
    """An embedding holding NaN or infinity."""


def _embedding(value: object) -> np.ndarray:
    if isinstance(value, str):
        text = value.strip()
        if len(text) >= 2 and text[0] + text[-1] in ("[]", "()"):
            text = text[1:-1]
        parts = [p for p in _SPLIT.split(text) if p]
        arr = np.array([float(p) for p in parts], dtype=np.float64)
    elif isinstance(value, list | tuple | np.ndarray):
        if any(isinstance(v, bool | str | np.bool_) for v in value):
            raise TypeError("embedding values must be numbers")
        arr = np.asarray(value, dtype=np.float64)
    else:
        raise TypeError(f"expected a list of floats, got {type(value).__name__}")
    if arr.ndim != 1:
        raise TypeError(f"expected a flat list of floats, got shape {arr.shape}")
    with np.errstate(over="ignore"):  # overflow becomes inf, rejected just below
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise NonFinite("embedding holds NaN or infinite values (after float32 conversion)")
    return out


def parse_embedding(series: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Float32 vectors from lists/arrays or strings like "[0.1, 0.2]" or "0.1 0.2".

    Returns:
        (values, wrong_type, non_finite): parsed np.ndarray values (None where bad) and two
        masks. Lengths are checked by the caller, which knows the expected dimension.
    """
    out: list[object] = []
    wrong: list[bool] = []
    nonfinite: list[bool] = []
    for value in series.tolist():
        try:
            out.append(_embedding(value))
            wrong.append(False)
            nonfinite.append(False)
        except NonFinite:
            out.append(None)
            wrong.append(False)
            nonfinite.append(True)
        except (TypeError, ValueError, OverflowError):
            out.append(None)
            wrong.append(True)
            nonfinite.append(False)
    idx = series.index
    return (
        pd.Series(out, index=idx, dtype=object),
        pd.Series(wrong, index=idx),
        pd.Series(nonfinite, index=idx),
    )


PARSERS: dict[Kind, Callable[[pd.Series], Parsed]] = {
    Kind.STRING: parse_string,
    Kind.PATH: parse_string,
    Kind.INT: parse_int,
    Kind.BOOL: parse_bool,
    Kind.TIMESTAMP: parse_timestamp,
}
