import math

import numpy as np
import pytest

from rnnimp import validation
from rnnimp.errors import InvalidParameterError


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "4", None])
def test_positive_int_refuses(value):
    with pytest.raises(InvalidParameterError) as caught:
        validation.positive_int("samples", value)
    assert str(caught.value) == f"samples: must be a positive integer, got {value!r}"
    assert caught.value.parameter == "samples"


@pytest.mark.parametrize("value", [0.0, -0.1, math.inf, math.nan])
def test_positive_finite_refuses(value):
    with pytest.raises(InvalidParameterError, match="noise_scale: must be a finite number > 0"):
        validation.positive_finite("noise_scale", value)


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.2])
def test_open_unit_interval_refuses(value):
    with pytest.raises(InvalidParameterError, match="confidence: must be strictly between 0 and 1"):
        validation.open_unit_interval("confidence", value)


def test_accepts_good_values():
    assert validation.positive_int("n", np.int64(3)) == 3
    assert validation.positive_finite("s", 0.2) == 0.2
    assert validation.open_unit_interval("c", 0.95) == 0.95


@pytest.mark.parametrize(
    "array, rule",
    [
        (np.zeros((3, 4)), "must have 3 dimensions"),
        (np.zeros((0, 4, 2)), "must not be empty"),
        (np.array([[["a"]]]), "must hold real numbers"),
        (np.array([[[1.0, np.nan]]]), "must hold only finite values"),
        (np.array([[[1.0, np.inf]]]), "must hold only finite values"),
    ],
)
def test_series_array_refuses(array, rule):
    with pytest.raises(InvalidParameterError, match=f"X: {rule}"):
        validation.series_array("X", array)


def test_series_array_converts_to_contiguous_float32():
    array = validation.series_array("X", np.ones((2, 3, 4), dtype=np.float64)[:, :, ::2])
    assert array.dtype == np.float32 and array.flags.c_contiguous and array.shape == (2, 3, 2)
