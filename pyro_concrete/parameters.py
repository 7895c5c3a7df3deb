"""Parameter handling shared by every distribution of the package.

One place decides how ``temperature``, ``logits`` and ``probs`` are read, broadcast and
validated, so that every family fails the same way on the same bad input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import constraints

Number = float | int


class ConcreteParameters(NamedTuple):
    temperature: Tensor  # batch_shape
    logits: Tensor  # batch_shape + event_shape
    probs: Tensor | None  # batch_shape + event_shape, when given by the user
    batch_shape: torch.Size
    event_shape: torch.Size


def _as_float_tensor(name: str, value: Tensor | Number, like: Tensor | None = None) -> Tensor:
    if isinstance(value, bool) or not isinstance(value, (Tensor, float, int)):
        raise TypeError(f"{name} must be a float or a Tensor, got {type(value).__name__}")
    if isinstance(value, Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real, got dtype {value.dtype}")
        if not value.is_floating_point():
            value = value.to(torch.get_default_dtype() if like is None else like.dtype)
        return value
    if like is not None:
        return torch.tensor(float(value), dtype=like.dtype, device=like.device)
    return torch.tensor(float(value), dtype=torch.get_default_dtype())


def temperature_batch_shape(temperature_shape: torch.Size, logits_shape: torch.Size, event_dim: int):
    """The temperature's shape as a batch parameter (see the broadcasting rule below).

    The temperature is one number per batch element: it broadcasts with
    ``logits.shape[:-event_dim]``. torch's relaxed distributions instead broadcast it
    against the whole logits tensor, so users write ``temperature`` of shape ``(n, 1)``
    for logits ``(n, K)``. A temperature whose last dimension is 1 and that has at least
    as many dimensions as the logits is read that way: its last dimension is dropped.
    """
    if (
        event_dim == 1
        and len(temperature_shape) >= len(logits_shape)
        and len(temperature_shape) > 0
        and temperature_shape[-1] == 1
    ):
        return temperature_shape[:-1]
    return temperature_shape


def broadcast_shape(a: torch.Size, b: torch.Size) -> torch.Size:
    """The broadcast of two shapes (``torch.broadcast_shapes`` costs ~8 us a call on CPU,
    a noticeable share of constructing a small distribution in every SVI step)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return torch.Size(out)


def _invalid(name: str, value: Tensor, expected: str) -> ValueError:
    return ValueError(
        f"Expected parameter {name} (Tensor of shape {tuple(value.shape)}) to be {expected}, "
        f"but found invalid values:\n{value}"
    )


def _check_temperature(temperature: Tensor) -> None:
    # Below the smallest normal float, (θ + G) / τ overflows: not a usable temperature.
    tiny = torch.finfo(temperature.dtype).tiny
    if not torch._is_all_true(constraints.positive_finite.check(temperature) & (temperature >= tiny)):
        raise _invalid("temperature", temperature, "positive, finite and at least the smallest normal float")


def _check_logits(logits: Tensor) -> None:
    # One reduction decides the common case; the elementwise test only runs when the
    # sum is not finite (a NaN or an infinity, or finite logits whose sum overflows).
    if not torch.isfinite(logits.sum()) and not torch._is_all_true(torch.isfinite(logits)):
        raise _invalid("logits", logits, "finite (NaN and infinite logits have no Concrete density)")


def _check_probs(probs: Tensor, event_dim: int) -> None:
    if event_dim == 1:
        ok = (probs > 0).all() & torch._is_all_true(constraints.simplex.check(probs))
        expected = "strictly positive and to sum to 1 along the last dimension"
    else:
        ok = ((probs > 0) & (probs < 1)).all()
        expected = "in the open interval (0, 1)"
    if not torch._is_all_true(ok):
        raise _invalid("probs", probs, expected)


def concrete_parameters(
    temperature: Tensor | Number,
    logits: Tensor | None,
    probs: Tensor | None,
    *,
    event_dim: int,
    validate: bool,
) -> ConcreteParameters:
    """Reads, validates and broadcasts the parameters of a Concrete-type distribution.

    Args:
        temperature: a positive float or Tensor (see :func:`temperature_batch_shape`).
        logits, probs: exactly one of them; ``probs`` are turned into logits by ``log``
            (for ``event_dim == 1``) or ``log(p) - log1p(-p)`` (for ``event_dim == 0``).
        event_dim: 1 for the categorical families, 0 for the binary ones.
        validate: whether to check values (shapes and the logits/probs choice are always
            checked).
    """
    if (logits is None) == (probs is None):
        raise ValueError(
            "Exactly one of `logits` or `probs` must be specified, got "
            + ("both" if logits is not None else "neither")
        )
    name = "logits" if logits is not None else "probs"
    given = _as_float_tensor(name, logits if logits is not None else probs)
    if event_dim and given.dim() >= 1 and given.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one category, got shape {tuple(given.shape)}")
    if given.dim() < event_dim:
        raise ValueError(
            f"{name} must have at least {event_dim} dimension(s), got shape {tuple(given.shape)}"
        )
    number = temperature if isinstance(temperature, (float, int)) else None
    temperature = _as_float_tensor("temperature", temperature, like=given)
    dtype = torch.promote_types(given.dtype, temperature.dtype)
    # A Python number needs no tensor check if it is a normal float of the dtype (one that
    # rounds to 0, a subnormal or inf there is checked, and rejected, as a tensor).
    info = torch.finfo(dtype)
    checked = validate and number is not None and info.tiny <= number <= info.max
    given, temperature = given.to(dtype), temperature.to(dtype)
    if validate:
        if not checked:  # a valid Python number needs no tensor check
            _check_temperature(temperature)
        if logits is not None:
            _check_logits(given)
        else:
            _check_probs(given, event_dim)
    t_shape = temperature_batch_shape(temperature.shape, given.shape, event_dim)
    temperature = temperature.reshape(t_shape)
    event_shape = given.shape[given.dim() - event_dim :]
    try:
        batch_shape = broadcast_shape(given.shape[: given.dim() - event_dim], t_shape)
    except ValueError:
        raise ValueError(
            f"temperature of shape {tuple(t_shape)} does not broadcast with the batch shape "
            f"{tuple(given.shape[: given.dim() - event_dim])} of {name}"
        ) from None
    given = given.expand(batch_shape + event_shape)
    temperature = temperature.expand(batch_shape)
    if probs is not None:
        new_logits = given.log() if event_dim == 1 else given.log() - torch.log1p(-given)
        return ConcreteParameters(temperature, new_logits, given, batch_shape, event_shape)
    return ConcreteParameters(temperature, given, None, batch_shape, event_shape)
