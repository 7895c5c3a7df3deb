"""Kernels of the binary Concrete family: the logit-space sampler and the log-densities.

Notation: ``logits`` θ ∈ R, ``temperature`` τ > 0, standard Logistic noise
``L = log U - log(1 - U)``. A binary Concrete sample in logit space is
``y = (θ + L) / τ`` (the LogitBinaryConcrete distribution); ``x = sigmoid(y)`` is the
BinaryConcrete sample in ``(0, 1)`` (Maddison et al. 2017, appendix B).

Both densities are written with one even function, the negated standard Logistic
log-density ``h(t) = -log(sigmoid(t) sigmoid(-t)) = softplus(t) + softplus(-t)``:

* ``y = (θ + L) / τ`` gives ``log p_Y(y) = log τ - h(θ - τ y)``;
* ``x = sigmoid(y)`` has ``log x + log(1 - x) = -h(y)``, so
  ``log p_X(x) = log p_Y(y) + h(y)`` with ``y = logit(x)``.

``h`` is evaluated as ``2 softplus(|t|) - |t|``, whose softplus only sees ``|t| >= 0``: no
overflow, and no ``exp`` underflow (slow on CPU) because softplus returns its argument
beyond a threshold where the correction is below rounding. Nothing goes through
``probs``: torch's ``LogitRelaxedBernoulli`` clamps probabilities, which caps the logits
near ±16 in float32 and zeroes their gradient beyond.

Infinite logits, and logits beyond half the dtype's largest float (the ``finfo.min`` mask
idiom), are certain outcomes (probability 1 of ``x = 1`` for ``+inf``, of ``x = 0`` for
``-inf``; see :func:`certain_outcomes`): the two-category Concrete with one category masked, a point mass at
``y = ±inf`` whose log-density is 0 there and ``-inf`` elsewhere, as for a categorical
Concrete with one category left. A finite sample ``(θ + L) / τ`` that would overflow
saturates at the dtype's largest float. Half-precision inputs are computed in float32 (see
:mod:`pyro_concrete.ops.concrete`). Every kernel is a composition of differentiable torch
operations (any derivative order, ``torch.func``, JIT, ``torch.compile``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..parameters import Number, compute_dtype, kernel_temperature
from .noise import neg_logistic_log_density, safe_log

__all__ = [
    "binary_concrete_log_density",
    "binary_concrete_log_density_at_logit",
    "binary_concrete_logit_sample",
    "certain_outcomes",
    "logit_binary_concrete_log_density",
    "safe_logit",
]


def certain_outcomes(logits: Tensor) -> Tensor:
    """Where a binary variable is certain: ``|logit|`` above half the dtype's largest float
    (``±inf`` included), the two-category case of
    :func:`~pyro_concrete.ops.structural_zeros` (one outcome is masked).

    Example::

        >>> certain_outcomes(torch.tensor([0.0, float("inf"), torch.finfo(torch.float32).min]))
        tensor([False,  True,  True])
    """
    return logits.detach().abs() > torch.finfo(logits.dtype).max / 2


def _outcome(logits: Tensor) -> Tensor:
    """``+inf`` where the logit is positive, ``-inf`` elsewhere: a certain outcome in logit space."""
    return torch.where(logits.detach() > 0, torch.inf, -torch.inf)


def logit_sample(
    logits: Tensor, temperature: Tensor, noise: Tensor, out_dtype: torch.dtype, certain: Tensor
) -> Tensor:
    """``(θ + noise) / τ`` in the compute dtype, ``±inf`` for certain outcomes
    (:func:`certain_outcomes` of the logits in their own dtype), saturating at the largest
    float of ``out_dtype``: the kernel behind every binary sampler. No checks."""
    largest = torch.finfo(out_dtype).max
    a = torch.where(certain, 0.0, logits) + noise
    inside = (a.abs() <= temperature * largest) & ~certain
    y = torch.where(inside, a, 0.0) / temperature
    bound = torch.where(certain, _outcome(logits), a.sign() * largest)
    return torch.where(inside, y, bound)


def binary_concrete_logit_sample(logits: Tensor, temperature: Tensor | Number, noise: Tensor) -> Tensor:
    """Reparameterised LogitBinaryConcrete sample ``y = (logits + noise) / temperature``.

    ``sigmoid(y)`` is the BinaryConcrete sample. Keep ``y``: at low temperature
    ``sigmoid(y)`` rounds to exactly ``1.0`` or ``0.0`` in float32 (``y > 16.6`` or
    ``y < -88.7``), where the ``(0, 1)``-space density can only be evaluated from ``y``
    (:func:`binary_concrete_log_density_at_logit`).

    Args:
        logits (Tensor): logits θ, broadcastable to ``noise``; any size, ``±inf`` included
            (a certain outcome: ``y = ±inf``); nothing is clamped.
        temperature (float or Tensor): positive temperature, broadcastable with ``logits``.
        noise (Tensor): standard Logistic noise of the sample's shape
            (see :func:`~pyro_concrete.ops.draw_logistic`).

    Returns:
        Tensor: ``y`` of ``noise``'s shape in ``logits``' dtype, differentiable with respect
        to ``logits`` and ``temperature`` (``dy/dθ = 1/τ``, ``dy/dτ = -y/τ``) to every order.

    Example::

        >>> from pyro_concrete.ops import draw_logistic
        >>> L = draw_logistic(torch.Size([4, 3]), torch.float32, torch.device("cpu"))
        >>> y = binary_concrete_logit_sample(torch.zeros(3), 0.5, L)
        >>> x = torch.sigmoid(y)
    """
    dtype = compute_dtype(logits.dtype)
    tau = kernel_temperature(temperature, logits, 0).to(dtype)
    certain = certain_outcomes(logits)
    return logit_sample(logits.to(dtype), tau, noise.to(dtype), logits.dtype, certain).to(logits.dtype)


def logit_density(
    value: Tensor, logits: Tensor, temperature: Tensor, certain: Tensor, *, jacobian: bool
) -> Tensor:
    """LogitBinaryConcrete (``jacobian=False``) or BinaryConcrete at ``sigmoid(value)``
    (``True``) log-density, in the compute dtype: the kernel behind every binary density.

    ``log τ - h(θ - τ y)``, plus ``h(y)`` for the density of ``x = sigmoid(y)``; where the
    outcome is certain (``certain``: :func:`certain_outcomes`) or ``y`` is infinite, 0 if ``y``
    is the certain outcome (the point mass) and ``-inf`` otherwise.
    """
    degenerate = certain | value.isinf()
    finite_value = torch.where(degenerate, 0.0, value)
    t = torch.where(degenerate, 0.0, logits) - temperature * finite_value
    density = torch.log(temperature) - neg_logistic_log_density(t)
    if jacobian:
        density = density + neg_logistic_log_density(finite_value)
    point_mass = torch.where(certain & (value == _outcome(logits)), 0.0, -torch.inf)
    return torch.where(degenerate, point_mass, density)


def _public_density(value: Tensor, logits: Tensor, temperature: Tensor | Number, jacobian: bool) -> Tensor:
    dtype = compute_dtype(torch.promote_types(value.dtype, logits.dtype))
    tau = kernel_temperature(temperature, logits, 0).to(dtype)
    certain = certain_outcomes(logits)
    return logit_density(value.to(dtype), logits.to(dtype), tau, certain, jacobian=jacobian)


def logit_binary_concrete_log_density(value: Tensor, logits: Tensor, temperature: Tensor | Number) -> Tensor:
    """Log-density of the LogitBinaryConcrete distribution at ``value`` (logit space).

    ``log p(y) = log τ + θ - τ y - 2 softplus(θ - τ y) = log τ - h(θ - τ y)`` with ``h``
    the negated standard Logistic log-density: ``τ y - θ`` is Logistic, and the map has
    Jacobian ``τ``. Stable for any finite ``logits`` and ``value`` (no ``exp`` overflows);
    infinite logits are point masses (see the module docstring).

    Args:
        value (Tensor): points ``y`` on the extended real line.
        logits (Tensor): logits θ, broadcastable with ``value``.
        temperature (float or Tensor): temperature τ, broadcastable with ``value``.

    Returns:
        Tensor: the log-density, of the broadcast shape (float32 for half-precision inputs).

    Example::

        >>> logit_binary_concrete_log_density(torch.tensor(0.0), torch.tensor(0.0), 1.0)
        tensor(-1.3863)
    """
    return _public_density(value, logits, temperature, jacobian=False)


def binary_concrete_log_density_at_logit(
    logit_value: Tensor, logits: Tensor, temperature: Tensor | Number
) -> Tensor:
    """BinaryConcrete log-density of ``x = sigmoid(logit_value)``, computed from the logit.

    ``log p_X(x) = log p_Y(y) - log x - log(1 - x)`` with ``log x + log(1 - x) = -h(y)``.
    Exact even where ``x`` itself rounds to ``0.0`` or ``1.0`` in float32, with the exact
    derivatives of every order with respect to ``y``, ``logits`` and ``temperature``. This is
    how a distribution scores its own samples. Arguments as in
    :func:`logit_binary_concrete_log_density`.
    """
    return _public_density(logit_value, logits, temperature, jacobian=True)


def logit_of_unit_point(value: Tensor, logits: Tensor) -> Tensor:
    """:func:`safe_logit` in the compute dtype, except that ``1.0`` and ``0.0`` are read as
    ``+inf`` and ``-inf`` where the logit says that outcome is certain."""
    y = safe_logit(value).to(compute_dtype(value.dtype))
    certain = certain_outcomes(logits)
    y = torch.where(certain & (logits > 0) & (value == 1), torch.inf, y)
    return torch.where(certain & (logits < 0) & (value == 0), -torch.inf, y)


def binary_concrete_log_density(value: Tensor, logits: Tensor, temperature: Tensor | Number) -> Tensor:
    """BinaryConcrete log-density of ``value`` in ``[0, 1]``, computed through logit space.

    ``log p_X(x) = log p_Y(logit x) - log x - log(1 - x)`` with ``logit x = log x -
    log1p(-x)``, which is equal to the textbook form
    ``log τ + θ - (τ+1)(log x + log(1-x)) - 2 log(exp(θ - τ log x) + (1-x)^(-τ))``
    without its overflowing powers. The endpoints, which a float32 sample reaches by
    rounding at low temperature, are read as the nearest interior floats: ``0.0`` as the
    smallest subnormal (see :func:`~pyro_concrete.ops.safe_log`), ``1.0`` as
    ``1 - eps/2`` (unless the logit is infinite: then they are the certain outcome). The
    result is then finite, but it is the density at that interior point: to score such
    samples exactly keep their logit (see :func:`binary_concrete_log_density_at_logit`).

    Args:
        value (Tensor): points ``x`` in ``[0, 1]``.
        logits (Tensor): logits θ, broadcastable with ``value``.
        temperature (float or Tensor): temperature τ, broadcastable with ``value``.
    """
    return binary_concrete_log_density_at_logit(logit_of_unit_point(value, logits), logits, temperature)


def safe_logit(x: Tensor) -> Tensor:
    """``log x - log1p(-x)`` with ``0.0`` read as the smallest subnormal float (see
    :func:`~pyro_concrete.ops.safe_log`) and ``1.0`` as ``1 - eps/2``: finite on ``[0, 1]``,
    with finite gradients."""
    below_one = 1.0 - torch.finfo(x.dtype).eps / 2
    return safe_log(x) - torch.log1p(-x.clamp_max(below_one))
