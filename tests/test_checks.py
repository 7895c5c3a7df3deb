"""The package's one validator of scalar arguments (pyro_concrete._checks)."""

import math

import numpy as np
import pytest
import torch

from pyro_concrete._checks import check_float, check_int, check_nonnegative_float, check_positive_float


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3)])
def test_check_int_accepts_integers(value):
    out = check_int("n", value, minimum=1, maximum=3)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, 3.0, "3", None, torch.tensor(3), np.float64(3.0)])
def test_check_int_rejects_other_types_with_type_error(value):
    with pytest.raises(TypeError, match=r"^n must be an int >= 1, got "):
        check_int("n", value, minimum=1)


@pytest.mark.parametrize(
    "value, minimum, maximum, message",
    [
        (0, 1, None, "n must be an int >= 1, got 0"),
        (5, 1, 4, "n must be an int in [1, 4], got 5"),
        (-1, 0, None, "n must be an int >= 0, got -1"),
        (9, None, 8, "n must be an int <= 8, got 9"),
    ],
)
def test_check_int_rejects_out_of_range_with_value_error(value, minimum, maximum, message):
    with pytest.raises(ValueError) as info:
        check_int("n", value, minimum=minimum, maximum=maximum)
    assert str(info.value) == message


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.float64(0.5), np.int64(1)])
def test_check_float_accepts_reals(value):
    out = check_positive_float("tau", value)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [True, "0.5", None, torch.tensor(0.5), 1j, [0.5]])
def test_check_float_rejects_other_types_with_type_error(value):
    with pytest.raises(TypeError, match=r"^tau must be a finite float > 0, got "):
        check_positive_float("tau", value)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_check_positive_float_rejects_bad_values_with_value_error(value):
    with pytest.raises(ValueError, match=r"^tau must be a finite float > 0, got "):
        check_positive_float("tau", value)


def test_check_float_bounds_and_infinities():
    assert check_nonnegative_float("rate", 0) == 0.0
    with pytest.raises(ValueError, match=r"^rate must be a finite float >= 0, got -1e-09$"):
        check_nonnegative_float("rate", -1e-9)
    assert check_float("p", 1.0, minimum=0.0, maximum=1.0) == 1.0
    with pytest.raises(ValueError, match=r"^p must be a finite float in \[0, 1\], got 1.5$"):
        check_float("p", 1.5, minimum=0.0, maximum=1.0)
    with pytest.raises(ValueError, match=r"^p must be a finite float in \(0, 1\], got 0.0$"):
        check_float("p", 0.0, minimum=0.0, maximum=1.0, above=True)
    assert check_float("x", math.inf, finite=False) == math.inf
    with pytest.raises(ValueError, match=r"^x must be a float, got nan$"):
        check_float("x", math.nan, finite=False)
