"""The binary Concrete distribution (relaxed Bernoulli) and its logit-space twin."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints
from ..ops.binary import (
    binary_concrete_log_density_at_logit,
    certain_outcomes,
    logit_binary_concrete_log_density,
    logit_of_unit_point,
    logit_sample,
)
from ..ops.noise import draw_logistic
from ..parameters import compute_dtype
from ._base import TemperedDistribution
from ._own_sample import OwnSampleMemory

__all__ = ["BinaryConcrete", "LogitBinaryConcrete"]


class _BinaryConcreteFamily(TemperedDistribution):
    """Sampling shared by both classes (parameters, expand, repr: see TemperedDistribution)."""

    arg_constraints = {
        "temperature": constraints.positive_finite,
        "logits": torch_constraints.real,
        "probs": torch_constraints.unit_interval,
    }
    has_rsample = True
    _event_dim = 0

    def _compute(self) -> tuple[Tensor, Tensor]:
        """Logits and temperature in the dtype the kernels compute in."""
        dtype = compute_dtype(self.logits.dtype)
        return self.logits.to(dtype), self.temperature.to(dtype)

    def _logit_rsample(self, sample_shape) -> Tensor:
        """The LogitBinaryConcrete sample in the compute dtype (float32 for half precision)."""
        logits, temperature = self._compute()
        shape = self._extended_shape(torch.Size(sample_shape))
        noise = draw_logistic(shape, logits.dtype, logits.device)
        return logit_sample(logits, temperature, noise, self.logits.dtype, certain_outcomes(self.logits))

    def _logit_density(self, logit_value: Tensor, jacobian: bool) -> Tensor:
        """The kernels' density (dtypes promoted, halves in float32) at a logit-space value."""
        kernel = binary_concrete_log_density_at_logit if jacobian else logit_binary_concrete_log_density
        return kernel(logit_value, self.logits, self.temperature)


class LogitBinaryConcrete(_BinaryConcreteFamily):
    r"""The binary Concrete distribution in logit space (Maddison et al. 2017, appendix B).

    A sample is ``y = (logits + L) / temperature`` with ``L = log U - log(1 - U)`` standard
    Logistic noise; ``sigmoid(y)`` is a :class:`BinaryConcrete` sample and ``y > 0`` is
    exactly ``Bernoulli(logits=logits)`` at every temperature. The density on the real
    line is

    .. math::
        \log p(y) = \log\tau + \theta - \tau y - 2\,\mathrm{softplus}(\theta - \tau y),

    evaluated stably for any finite logits: unlike torch's ``LogitRelaxedBernoulli``,
    nothing passes through ``probs`` (which clamps logits near ±16 in float32 and zeroes
    their gradient beyond). Work in logit space when the temperature is low: ``y`` stays
    exact where ``sigmoid(y)`` rounds to ``0.0`` or ``1.0``.

    Args:
        temperature (float or Tensor): positive, finite temperature, broadcasting with
            ``logits``. May require grad.
        probs (float or Tensor): probabilities in ``[0, 1]``, turned into logits as
            ``log p - log1p(-p)``. Give exactly one of ``probs`` and ``logits``.
        logits (float or Tensor): log-odds θ (any size, e.g. ±50, works; ``±inf`` is a
            certain outcome: the point mass at ``±inf``, whose log-density there is 0).
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = LogitBinaryConcrete(torch.tensor(0.5, requires_grad=True), logits=torch.randn(3))
        >>> y = d.rsample((1000,))       # (1000, 3) real numbers
        >>> d.log_prob(y).mean().backward()
    """

    support = torch_constraints.real

    @property
    def mean(self) -> Tensor:
        return self.logits / self.temperature

    @property
    def variance(self) -> Tensor:
        return (math.pi**2 / 3) / self.temperature.pow(2)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return self._logit_rsample(sample_shape).to(self.logits.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        """The log-density at ``value`` (float32 for half-precision parameters)."""
        if self._validate_args:
            self._validate_sample(value)
        return self._logit_density(value, jacobian=False)


class BinaryConcrete(OwnSampleMemory, _BinaryConcreteFamily):
    r"""The binary Concrete (relaxed Bernoulli) distribution on the unit interval.

    Maddison, Mnih & Teh 2017; Jang, Gu & Poole 2017. A sample is ``x = sigmoid(y)`` for
    the :class:`LogitBinaryConcrete` sample ``y = (logits + L) / temperature``; it tends to
    a ``Bernoulli(logits=logits)`` sample as the temperature goes to 0, and
    ``P(X <= x) = sigmoid(temperature * logit(x) - logits)``. The density is

    .. math::
        \log p(x) = \log\tau + \theta - (\tau+1)(\log x + \log(1-x))
                    - 2\log\big(e^{\theta - \tau\log x} + (1-x)^{-\tau}\big).

    At low temperature ``x`` rounds to exactly ``1.0`` or ``0.0`` in float32 (for
    ``y > 16.6`` or ``y < -88.7``; at ``θ = 0`` that is 16% of the samples at ``τ = 0.1``
    and 75% at ``τ = 0.01``), where the textbook density is NaN or infinite and torch's
    ``RelaxedBernoulli`` clips. This class remembers the logit ``y``
    of its own most recent sample (the same tensor, unmodified) and scores it exactly from
    ``y``, with exact gradients. Any other value ``x`` is scored through
    ``y = log x - log1p(-x)``, with the endpoints read as the nearest interior floats
    (finite; see :func:`~pyro_concrete.ops.binary_concrete_log_density`). To score saved
    saturated samples accurately, keep them in logit space with :class:`LogitBinaryConcrete`.

    Args:
        temperature (float or Tensor): positive, finite temperature, broadcasting with
            ``logits``. May require grad.
        probs (float or Tensor): probabilities in ``[0, 1]`` (0 and 1: certain outcomes).
            Give exactly one of ``probs`` and ``logits``.
        logits (float or Tensor): log-odds θ (any size, e.g. ±50, works; ``±inf`` is a
            certain outcome).
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = BinaryConcrete(0.1, logits=torch.tensor([-50.0, 0.0, 50.0], requires_grad=True))
        >>> x = d.rsample((10000,))      # in [0, 1]; many exactly 0.0 or 1.0
        >>> d.log_prob(x).isfinite().all()
        tensor(True)
    """

    support = torch_constraints.unit_interval

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        logit_value = self._logit_rsample(sample_shape)
        return self._remember(torch.sigmoid(logit_value).to(self.logits.dtype), logit_value)

    def _logit_of(self, value: Tensor) -> Tensor:
        return logit_of_unit_point(value, self.logits)

    def log_prob(self, value: Tensor) -> Tensor:
        """The log-density at ``value`` (float32 for half-precision parameters)."""
        own = self._recall_pre_image(value, self._logit_of)  # y of the own sample
        if own is None:
            if self._validate_args:
                self._validate_sample(value)
            return self._logit_density(self._logit_of(value), jacobian=True)
        return self._logit_density(own[0], jacobian=True)
