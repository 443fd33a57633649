"""Checks for user input, applied at the edge before any work starts."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .errors import InvalidParameterError


def positive_int(parameter: str, value: Any) -> int:
    """Return ``value`` as an int if it is an integer >= 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidParameterError(parameter, "must be a positive integer", value)
    return int(value)


def positive_finite(parameter: str, value: Any) -> float:
    """Return ``value`` as a float if it is finite and > 0, else raise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidParameterError(parameter, "must be a finite number > 0", value)
    return float(value)


def gpu_share(parameter: str, value: Any) -> float:
    """Return ``value`` as a float if it is a share of GPUs Ray can grant one actor, else raise.

    A fraction in (0, 1] (actors share a GPU) or a whole number of GPUs: Ray
    refuses fractional quantities above 1.
    """
    share = positive_finite(parameter, value)
    if share > 1 and share != int(share):
        raise InvalidParameterError(parameter, "must be a fraction in (0, 1] or a whole number of GPUs", value)
    return share


def open_unit_interval(parameter: str, value: Any) -> float:
    """Return ``value`` as a float if 0 < value < 1, else raise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0.0 < value < 1.0)
    ):
        raise InvalidParameterError(parameter, "must be strictly between 0 and 1", value)
    return float(value)


def seed(parameter: str, value: Any) -> int:
    """Return ``value`` as an int if it is a non-negative integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidParameterError(parameter, "must be a non-negative integer", value)
    return int(value)


def distinct_names(parameter: str, names: list[str], n_names: int, value: Any) -> list[str]:
    """``names`` if there are ``n_names`` of them, all non-empty and distinct, else raise.

    The one check of feature names, whether they come from the API, the
    command line or a file; ``value`` is what the user gave, for the message.
    """
    if any(not name for name in names):
        raise InvalidParameterError(parameter, "must not contain empty names", value)
    if len(names) != n_names:
        raise InvalidParameterError(parameter, f"must give {n_names} names, one per feature", value)
    if repeated(names):
        raise InvalidParameterError(
            parameter, f"must not repeat a name (repeated: {', '.join(repeated(names))})", value)
    return names


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once in ``names``, sorted."""
    return sorted({name for name in names if names.count(name) > 1})


def series_array(parameter: str, value: Any) -> np.ndarray:
    """Return a C-contiguous float32 array of shape (series, time, features).

    Refuses anything that is not 3-D, is empty, is not numeric, or holds NaN
    or infinite values.
    """
    array = np.asarray(value)
    if array.ndim != 3:
        raise InvalidParameterError(
            parameter, "must have 3 dimensions (series, time, features)", array.shape
        )
    return finite_float32(parameter, array)


def finite_float32(parameter: str, array: np.ndarray) -> np.ndarray:
    """``array`` as C-contiguous float32, refused if empty, not real numbers, or holding NaN or infinities."""
    if 0 in array.shape:
        raise InvalidParameterError(parameter, "must not be empty", array.shape)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidParameterError(parameter, "must hold real numbers", str(array.dtype))
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InvalidParameterError(parameter, "must hold only finite values", f"{bad} NaN or infinite values")
    return array
