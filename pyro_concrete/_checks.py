"""Checks of scalar arguments: the one place the package validates an int or a float.

Every public function and class of the package that takes a plain Python number checks it
here, so a bad argument always fails the same way:

- ``TypeError`` when the argument is not a number of the right kind (a ``bool``, a string,
  a tensor, ``None``, or a float where an int is meant), naming the argument and the type
  received;
- ``ValueError`` when it is a number outside its range (NaN and, unless allowed, the
  infinities included), naming the argument, the range and the value.

Each check returns the value converted to ``int`` or ``float`` (so NumPy scalars come out
as Python numbers). Tensors are not scalars here: arguments that may be tensors (a
distribution's temperature) are checked as tensors where they are used.

Example::

    >>> check_positive_float("temperature", 0.5)
    0.5
    >>> check_int("rao_samples", 0, minimum=1)
    Traceback (most recent call last):
        ...
    ValueError: rao_samples must be an int >= 1, got 0
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_float", "check_int", "check_nonnegative_float", "check_positive_float"]


def _range(kind: str, minimum: float | None, maximum: float | None, above: bool) -> str:
    """``'a float > 0'``, ``'an int >= 1'``, ``'a float in [0, 1]'``..."""
    if minimum is not None and maximum is not None:
        return f"{kind} in {'(' if above else '['}{minimum:g}, {maximum:g}]"
    if minimum is not None:
        return f"{kind} {'>' if above else '>='} {minimum:g}"
    if maximum is not None:
        return f"{kind} <= {maximum:g}"
    return kind


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``, checked to be an integer in ``[minimum, maximum]``.

    Args:
        name (str): the argument's name, for the error message.
        value: the argument. Python and NumPy integers are accepted; ``bool`` is not.
        minimum, maximum (int, optional): inclusive bounds.

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: it lies outside the bounds.
    """
    kind = _range("an int", minimum, maximum, above=False)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def check_float(
    name: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a ``float``, checked to be a real number in its range (never NaN).

    Args:
        name (str): the argument's name, for the error message.
        value: the argument. Python and NumPy reals (ints included) are accepted; ``bool``
            is not.
        minimum, maximum (float, optional): bounds; ``maximum`` is inclusive.
        above (bool): ``minimum`` is exclusive (``value > minimum``) rather than inclusive.
        finite (bool): reject ``inf`` and ``-inf`` (the default).

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: it is NaN, infinite (when ``finite``), or outside the bounds.
    """
    kind = _range("a finite float" if finite else "a float", minimum, maximum, above)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    value = float(value)
    bad = (
        math.isnan(value)
        or (finite and math.isinf(value))
        or (minimum is not None and (value <= minimum if above else value < minimum))
        or (maximum is not None and value > maximum)
    )
    if bad:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value


def check_positive_float(name: str, value: object) -> float:
    """``value`` as a ``float``, checked to be finite and ``> 0`` (see :func:`check_float`)."""
    return check_float(name, value, minimum=0.0, above=True)


def check_nonnegative_float(name: str, value: object) -> float:
    """``value`` as a ``float``, checked to be finite and ``>= 0`` (see :func:`check_float`)."""
    return check_float(name, value, minimum=0.0)
