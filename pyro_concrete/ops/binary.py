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
"""

from __future__ import annotations

import torch
from torch import Tensor

from .noise import neg_logistic_log_density, safe_log

__all__ = [
    "binary_concrete_log_density",
    "binary_concrete_log_density_at_logit",
    "binary_concrete_logit_sample",
    "logit_binary_concrete_log_density",
    "safe_logit",
]


def binary_concrete_logit_sample(
    logits: Tensor, temperature: Tensor | float, noise: Tensor, *, consume_noise: bool = False
) -> Tensor:
    """Reparameterised LogitBinaryConcrete sample ``y = (logits + noise) / temperature``.

    ``sigmoid(y)`` is the BinaryConcrete sample. Keep ``y``: at low temperature
    ``sigmoid(y)`` rounds to exactly ``1.0`` or ``0.0`` in float32 (``y > 16.6`` or
    ``y < -88.7``), where
    the ``(0, 1)``-space density can only be evaluated from ``y``
    (:func:`binary_concrete_log_density_at_logit`).

    Args:
        logits (Tensor): logits θ, broadcastable to ``noise``; finite values of any size
            (e.g. ±50) work, nothing is clamped.
        temperature (Tensor or float): positive temperature, broadcastable to ``noise``.
        noise (Tensor): standard Logistic noise of the sample's shape
            (see :func:`~pyro_concrete.ops.draw_logistic`).
        consume_noise (bool): if True, ``noise`` is overwritten with the result (saves a
            full-size allocation); it must then be a buffer the caller owns.

    Returns:
        Tensor: ``y`` of ``noise``'s shape, differentiable with respect to ``logits`` and
        ``temperature`` (``dy/dθ = 1/τ``, ``dy/dτ = -y/τ``).

    Example::

        >>> L = draw_logistic(torch.Size([4, 3]), torch.float32, torch.device("cpu"))
        >>> y = binary_concrete_logit_sample(torch.zeros(3), torch.tensor(0.5), L)
        >>> x = torch.sigmoid(y)
    """
    if not consume_noise:
        noise = noise.clone()
    return noise.add_(logits).div_(temperature)


def logit_binary_concrete_log_density(value: Tensor, logits: Tensor, temperature: Tensor) -> Tensor:
    """Log-density of the LogitBinaryConcrete distribution at ``value`` (logit space).

    ``log p(y) = log τ + θ - τ y - 2 softplus(θ - τ y) = log τ - h(θ - τ y)`` with ``h``
    the negated standard Logistic log-density: ``τ y - θ`` is Logistic, and the map has
    Jacobian ``τ``. Stable for any finite ``logits`` and ``value`` (no ``exp`` overflows).

    Args:
        value (Tensor): points ``y`` on the real line.
        logits (Tensor): logits θ, broadcastable with ``value``.
        temperature (Tensor): temperature τ, broadcastable with ``value``.

    Returns:
        Tensor: the log-density, of the broadcast shape.
    """
    return torch.log(temperature) - neg_logistic_log_density(logits - temperature * value)


def binary_concrete_log_density_at_logit(logit_value: Tensor, logits: Tensor, temperature: Tensor) -> Tensor:
    """BinaryConcrete log-density of ``x = sigmoid(logit_value)``, computed from the logit.

    ``log p_X(x) = log p_Y(y) - log x - log(1 - x)`` with ``log x + log(1 - x) = -h(y)``.
    Exact even where ``x`` itself rounds to ``0.0`` or ``1.0`` in float32,
    with the exact partial derivatives with respect to ``y``, ``logits`` and
    ``temperature``. This is how a distribution scores its own samples.

    Args:
        logit_value (Tensor): ``y = logit(x)``.
        logits (Tensor): logits θ, broadcastable with ``logit_value``.
        temperature (Tensor): temperature τ, broadcastable with ``logit_value``.
    """
    return logit_binary_concrete_log_density(logit_value, logits, temperature) + neg_logistic_log_density(
        logit_value
    )


def binary_concrete_log_density(value: Tensor, logits: Tensor, temperature: Tensor) -> Tensor:
    """BinaryConcrete log-density of ``value`` in ``[0, 1]``, computed through logit space.

    ``log p_X(x) = log p_Y(logit x) - log x - log(1 - x)`` with ``logit x = log x -
    log1p(-x)``, which is equal to the textbook form
    ``log τ + θ - (τ+1)(log x + log(1-x)) - 2 log(exp(θ - τ log x) + (1-x)^(-τ))``
    without its overflowing powers. The endpoints, which a float32 sample reaches by
    rounding at low temperature, are read as the nearest interior floats: ``0.0`` as the
    smallest subnormal (see :func:`~pyro_concrete.ops.safe_log`), ``1.0`` as
    ``1 - eps/2``. The result is then finite, but it is the density at that interior
    point: to score such samples exactly keep their logit (see
    :func:`binary_concrete_log_density_at_logit`).

    Args:
        value (Tensor): points ``x`` in ``[0, 1]``.
        logits (Tensor): logits θ, broadcastable with ``value``.
        temperature (Tensor): temperature τ, broadcastable with ``value``.
    """
    return binary_concrete_log_density_at_logit(safe_logit(value), logits, temperature)


def safe_logit(x: Tensor) -> Tensor:
    """``log x - log1p(-x)`` with ``0.0`` read as the smallest subnormal float (see
    :func:`~pyro_concrete.ops.safe_log`) and ``1.0`` as ``1 - eps/2``: finite on ``[0, 1]``,
    with finite gradients."""
    below_one = 1.0 - torch.finfo(x.dtype).eps / 2
    return safe_log(x) - torch.log1p(-x.clamp_max(below_one))
