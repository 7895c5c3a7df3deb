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
    left, right = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(left, right, strict=True):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"shapes {left} and {right} do not broadcast")
        out.append(y if x == 1 else x)
    return torch.Size(out)


def _invalid(name: str, value: Tensor, expected: str) -> ValueError:
    return ValueError(
        f"Expected parameter {name} (Tensor of shape {tuple(value.shape)}) to be {expected}, "
        f"but found invalid values:\n{value}"
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float32 for the half-precision dtypes.

    float16 spans only ``±65504``: ``(θ + G) / τ`` and the log-densities of a relaxed sample
    leave that range at the temperatures people train with (``τ = 1e-3``), and bfloat16's
    8-bit mantissa cuts the noise's tails. The kernels read half-precision inputs in
    float32 and round the samples back.
    """
    return torch.float32 if torch.finfo(dtype).bits < 32 else dtype


def smallest_temperature(dtype: torch.dtype) -> float:
    """The smallest temperature accepted for parameters of ``dtype``: ``sqrt(tiny)`` of the
    dtype the kernels compute in (about ``1.1e-19`` in float32, ``1.5e-154`` in float64).

    Below it ``1 / τ²`` overflows, so the derivative of a sample with respect to the
    temperature could not be represented.
    """
    return torch.finfo(compute_dtype(dtype)).tiny ** 0.5


def _has_data(t: Tensor) -> bool:
    """False on the ``meta`` device, whose tensors have shapes but no values to check."""
    return t.device.type != "meta"


def _check_temperature(temperature: Tensor) -> None:
    if not _has_data(temperature):
        return
    smallest = smallest_temperature(temperature.dtype)
    if not torch._is_all_true(constraints.positive_finite.check(temperature) & (temperature >= smallest)):
        raise _invalid("temperature", temperature, f"positive, finite and at least {smallest:.3g}")


def _check_logits(logits: Tensor, event_dim: int) -> None:
    """NaN is never a logit; ``-inf`` masks a category (a structural zero, as in torch's
    ``Categorical``); ``+inf`` is a certain outcome of a binary variable but has no meaning
    among categories; a categorical row needs at least one category that is not masked."""
    if not _has_data(logits):
        return
    # One reduction decides the common case (all finite); the elementwise tests only run
    # when the sum is not finite (a NaN, an infinity, or finite logits whose sum overflows).
    # torch._is_all_true / _is_any_true, as torch's own validation uses, also answer inside
    # torch.func transforms (vmap), where a Python bool of a tensor would raise.
    if torch._is_all_true(torch.isfinite(logits.sum())):
        return
    if torch._is_any_true(torch.isnan(logits)):
        raise _invalid("logits", logits, "free of NaN")
    if event_dim == 0:
        return
    if torch._is_any_true(logits == torch.inf):
        raise _invalid(
            "logits", logits, "below +inf (-inf masks a category; +inf has no categorical meaning)"
        )
    if torch._is_any_true((logits == -torch.inf).all(-1)):
        raise _invalid(
            "logits", logits, "finite in at least one category of every row (every category is masked)"
        )


def _check_probs(probs: Tensor, event_dim: int) -> None:
    if not _has_data(probs):
        return
    if event_dim == 1:
        ok = torch._is_all_true(constraints.simplex.check(probs))
        expected = "nonnegative and to sum to 1 along the last dimension"
    else:
        ok = torch._is_all_true((probs >= 0) & (probs <= 1))
        expected = "in the closed interval [0, 1]"
    if not ok:
        raise _invalid("probs", probs, expected)


def _logits_of_probs(probs: Tensor, event_dim: int) -> Tensor:
    """``log p`` (categorical) or ``log p - log1p(-p)`` (binary), with 0 (and 1) sent to
    ``-inf`` (and ``+inf``) with zero derivative there rather than NaN."""
    zero, one = probs == 0, probs == 1
    safe = probs.masked_fill(zero | one, 0.5)
    logits = safe.log() if event_dim == 1 else safe.log() - torch.log1p(-safe)
    return logits.masked_fill(zero, -torch.inf).masked_fill(one, torch.inf if event_dim == 0 else 0.0)


def concrete_parameters(
    temperature: Tensor | Number,
    probs: Tensor | Number | None,
    logits: Tensor | Number | None,
    *,
    event_dim: int,
    validate: bool,
) -> ConcreteParameters:
    """Reads, validates and broadcasts the parameters of a Concrete-type distribution.

    Args:
        temperature: a positive float or Tensor (see :func:`temperature_batch_shape`).
        probs, logits: exactly one of them; ``probs`` are turned into logits by ``log``
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
    name, raw = ("logits", logits) if logits is not None else ("probs", probs)
    assert raw is not None
    given = _as_float_tensor(name, raw)
    if event_dim and given.dim() >= 1 and given.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one category, got shape {tuple(given.shape)}")
    if given.dim() < event_dim:
        raise ValueError(
            f"{name} must have at least {event_dim} dimension(s), got shape {tuple(given.shape)}"
        )
    number = temperature if isinstance(temperature, (float, int)) else None
    temperature = _as_float_tensor("temperature", temperature, like=given)
    dtype = torch.promote_types(given.dtype, temperature.dtype)
    # A Python number needs no tensor check if it lies in the accepted range of the dtype
    # (one that rounds to 0 or inf there is checked, and rejected, as a tensor).
    checked = (
        validate and number is not None and smallest_temperature(dtype) <= number <= torch.finfo(dtype).max
    )
    # A 0-dim CPU temperature may come with logits on another device (torch lets such
    # scalars mix): it is moved to the logits' device once, here.
    given, temperature = given.to(dtype), temperature.to(device=given.device, dtype=dtype)
    if validate:
        if not checked:  # a valid Python number needs no tensor check
            _check_temperature(temperature)
        if logits is not None:
            _check_logits(given, event_dim)
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
        # Zero probabilities become -inf logits (masked categories; a binary probability of
        # 0 or 1 becomes -inf or +inf logits).
        new_logits = _logits_of_probs(given, event_dim)
        return ConcreteParameters(temperature, new_logits, given, batch_shape, event_shape)
    return ConcreteParameters(temperature, given, None, batch_shape, event_shape)


def kernel_temperature(temperature: Tensor | Number, logits: Tensor, event_dim: int) -> Tensor:
    """The temperature as every public kernel of :mod:`pyro_concrete.ops` reads it.

    One convention for the kernels and the distributions: a Python number or a Tensor with
    one temperature per batch element (it broadcasts with ``logits.shape[:-event_dim]``);
    torch's ``(..., 1)`` form, with at least as many dimensions as ``logits``, has its last
    dimension dropped (see :func:`temperature_batch_shape`). The result is on the logits'
    device (a 0-dim CPU temperature mixes with logits anywhere, as in torch). Values are not
    checked here.
    """
    t = _as_float_tensor("temperature", temperature, like=logits)
    t = t.to(device=logits.device)
    return t.reshape(temperature_batch_shape(t.shape, logits.shape, event_dim))
