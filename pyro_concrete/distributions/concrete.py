"""The Concrete (Gumbel-Softmax) distribution and its log-space twin, ExpConcrete."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints, ops
from ._base import TemperedDistribution
from ._own_sample import OwnSampleMemory

__all__ = ["Concrete", "ExpConcrete", "GumbelSoftmax"]


class _OwnSample(NamedTuple):
    log_value: Tensor  # the ExpConcrete sample y (the value itself for ExpConcrete)
    noise_log_density: Tensor  # sum_k log E_k - K log sum_k E_k, see ops.draw_softmax_noise


class _ConcreteFamily(OwnSampleMemory, TemperedDistribution):
    """Sampling and the own-sample density shared by ExpConcrete and Concrete."""

    arg_constraints = {
        "temperature": constraints.positive_finite,
        "logits": torch_constraints.real_vector,
        "probs": constraints.simplex,
    }
    has_rsample = True
    _event_dim = 1

    @property
    def num_categories(self) -> int:
        return self._event_shape[0]

    def _draw(self, sample_shape) -> tuple[Tensor, Tensor, _OwnSample]:
        shape = self._extended_shape(torch.Size(sample_shape))
        noise, noise_log_density = ops.draw_softmax_noise(shape, self.logits.dtype, self.logits.device)
        log_value, value = ops.gumbel_softmax_log_sample(
            self.logits, self.temperature.unsqueeze(-1), noise, consume_noise=True
        )
        return log_value, value, _OwnSample(log_value, noise_log_density)

    def _exp_log_prob(self, value: Tensor) -> tuple[Tensor, Tensor | None]:
        """The ExpConcrete log-density of ``value``'s log-space point, and that point.

        For the distribution's own most recent sample this is the closed form in the noise
        when ``value`` carries the sample's graph (then it is the exact total derivative),
        or when no parameter requires grad. A sample drawn without a graph (``sample()``,
        ``no_grad``) is scored by the general formula at its exact ``y``, so that the score
        ``d log p(x) / d logits`` at a fixed ``x`` is right. Returns None for the point
        when ``value`` is not the own sample.
        """
        own = self._recall(value)
        if own is None:
            return None, None
        if value.requires_grad or not self._parameters_require_grad():
            density = ops.exp_concrete_log_density_at_noise(
                own.noise_log_density, self.num_categories, self.temperature
            )
            # A zero-weighted link keeps the result in the graph of the logits (its exact
            # derivative with respect to them is zero here).
            return density + own.log_value[..., 0] * 0, own.log_value
        return ops.exp_concrete_log_density(own.log_value, self.logits, self.temperature), own.log_value


class ExpConcrete(_ConcreteFamily):
    r"""The Concrete distribution in log space (Maddison et al. 2017, appendix C).

    A sample is the log-probability vector ``y = log_softmax((logits + G) / temperature)``
    with ``G`` standard Gumbel noise; ``exp(y)`` is a :class:`Concrete` sample. Work in
    log space when the temperature is low: ``y`` stays finite where ``exp(y)`` underflows,
    and the KL term of an ELBO computed between ExpConcrete densities is stable.

    The density is

    .. math::
        \log p(y) = \log\Gamma(K) + (K-1)\log\tau + \sum_k (\theta_k - \tau y_k)
                    - K \operatorname{logsumexp}_k(\theta_k - \tau y_k).

    with respect to Lebesgue measure on the log-ratio coordinates ``u_k = y_k - y_K``,
    ``k < K`` (equivalently the permutation-symmetric measure ``dx / prod_k x_k`` on the
    simplex), the convention of torch's ``ExpRelaxedCategorical``. It is *not* a density of
    the first ``K - 1`` coordinates of ``y``; it is the one for which
    ``log p_X(x) = log p_Y(log x) - sum_k log x_k`` gives the :class:`Concrete` density, and
    for which the bijection ``u -> log_softmax([u, 0])`` has unit Jacobian.

    At the distribution's own most recent reparameterised sample (the same tensor,
    unmodified, still attached to the graph of ``rsample``) the density is evaluated in
    the closed form ``lgamma K + (K-1) log τ + Σ log E_k - K log Σ E_k`` of the noise
    ``E = exp(-G)``, which is exact and costs no pass over the logits: along the sample
    path it is the same function of ``logits`` and ``temperature`` as the general formula,
    so the value and the (total) gradients agree. Any other value, including a sample
    drawn without a graph (``sample()``, whose score ``d log p / d logits`` at the fixed
    value is wanted), goes through the general formula.

    Args:
        temperature (float or Tensor): positive temperature, one per batch element: it
            broadcasts with ``logits.shape[:-1]``. A temperature of shape ``(..., 1)`` with
            as many dimensions as ``logits`` (torch's convention) has its last dimension
            dropped, so ``(n, 1)`` with logits ``(n, K)`` gives batch shape ``(n,)``. May
            require grad.
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (finite).
        probs (Tensor): ``(..., K)`` strictly positive probabilities summing to one.
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = ExpConcrete(0.1, logits=torch.randn(4, 10))
        >>> y = d.rsample()              # (4, 10), finite, logsumexp(y, -1) == 0
        >>> d.log_prob(y).shape
        torch.Size([4])
    """

    support = constraints.log_simplex

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        log_value, _, own = self._draw(sample_shape)
        return self._remember(log_value, own)

    def log_prob(self, value: Tensor) -> Tensor:
        density, _ = self._exp_log_prob(value)
        if density is not None:
            return density
        if self._validate_args:
            self._validate_sample(value)
        return ops.exp_concrete_log_density(value, self.logits, self.temperature)


class Concrete(_ConcreteFamily):
    r"""The Concrete (Gumbel-Softmax) distribution on the probability simplex.

    Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017. A sample is
    ``x = softmax((logits + G) / temperature)`` with ``G`` standard Gumbel noise;
    ``argmax x`` is exactly ``Categorical(logits=logits)``-distributed at every
    temperature, and ``x`` tends to that one-hot vector as the temperature goes to 0.

    Sampling goes through log space: ``x = exp(y)`` for the :class:`ExpConcrete` sample
    ``y``. At low temperature most components of ``exp(y)`` underflow (at ``τ = 0.1,
    K = 100`` in float32, in every sample): torch's ``RelaxedOneHotCategorical`` returns
    exact ``0.0`` there and its ``log_prob`` is NaN. Here components below the smallest
    normal float ``tiny`` are returned as ``tiny`` (an absolute change below ``1.2e-38``
    in float32, and it spares CPU ``exp`` a 100x slow path), and ``log_prob`` is computed
    from ``y``, never from ``log x``: for the distribution's own most recent sample (the
    same tensor, unmodified) the distribution still holds ``y`` and evaluates
    ``log p_Y(y) - Σ_k y_k`` exactly, with exact gradients. Any other value ``x`` is
    scored as ``log p_Y(log x) - Σ log x`` with exact zeros read as the smallest subnormal
    float: finite, and exact wherever ``x`` is above ``tiny``. To score values whose
    components underflow accurately, keep them in log space with :class:`ExpConcrete`.

    The density is with respect to Lebesgue measure on the first ``K - 1`` coordinates.

    Args:
        temperature (float or Tensor): positive temperature, one per batch element
            (broadcasting rule as in :class:`ExpConcrete`). May require grad.
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (finite).
        probs (Tensor): ``(..., K)`` strictly positive probabilities summing to one.
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = Concrete(torch.tensor(0.5, requires_grad=True), logits=torch.randn(3))
        >>> x = d.rsample((1000,))       # (1000, 3) points of the simplex
        >>> d.log_prob(x).mean().backward()
    """

    support = constraints.simplex

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        _, value, own = self._draw(sample_shape)
        return self._remember(value, own)

    def log_prob(self, value: Tensor) -> Tensor:
        density, log_value = self._exp_log_prob(value)
        if density is not None:
            return density - log_value.sum(-1)
        if self._validate_args:
            self._validate_sample(value)
        return ops.concrete_log_density(value, self.logits, self.temperature)


GumbelSoftmax = Concrete
