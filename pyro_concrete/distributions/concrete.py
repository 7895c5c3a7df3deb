"""The Concrete (Gumbel-Softmax) distribution and its log-space twin, ExpConcrete."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints, ops
from ._base import TemperedDistribution
from ._own_sample import OwnSampleMemory

__all__ = ["Concrete", "ExpConcrete", "GumbelSoftmax"]


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

    def _draw(self, sample_shape) -> tuple[Tensor, Tensor]:
        """The ExpConcrete sample ``y`` and the Concrete sample ``x``."""
        shape = self._extended_shape(torch.Size(sample_shape))
        noise = ops.draw_softmax_noise(shape, self.logits.dtype, self.logits.device)
        temperature = self.temperature.unsqueeze(-1)
        return ops.gumbel_softmax_log_sample(self.logits, temperature, noise, consume_noise=True)


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
    unmodified, still on the graph of ``rsample``), ``θ_k - τ y_k = -G_k + c`` with ``c``
    shared by all ``k``: the density is a term of the noise alone,
    ``Σ log E_k - K log Σ E_k`` with ``E = exp(-G)``, plus ``lgamma K + (K-1) log τ``.
    ``log_prob`` then evaluates the noise term without building a graph and differentiates
    only ``(K-1) log τ``: the same value and the same total derivatives with respect to
    the parameters as differentiating the general formula through the sample, and no
    backward pass over the sample. That result is not a function of the sample tensor in
    autograd's graph (asking for a derivative with respect to ``y`` itself raises rather
    than returning 0); to differentiate with respect to the value, score a copy,
    ``d.log_prob(y.clone())``, which goes through the general formula like any other value.

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
        log_value, _ = self._draw(sample_shape)
        return self._remember(log_value, log_value)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._recall_on_path(value) is not None:
            density = ops.exp_concrete_log_density_of_own_sample(value, self.logits, self.temperature)
            # Keep the result in the graph of the logits (its total derivative there is 0),
            # but not in that of the sample: see the class docstring.
            return density + self.logits[..., 0] * 0 if self.logits.requires_grad else density
        # The own sample is known to be in the support: no validation pass for it.
        if self._validate_args and self._recall(value) is None:
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
    in float32, and it spares CPU ``exp`` a 50-180x slow path), and ``log_prob`` is computed
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
        log_value, value = self._draw(sample_shape)
        return self._remember(value, log_value)

    def log_prob(self, value: Tensor) -> Tensor:
        log_value = self._recall_on_path(value)  # y of the own sample, on its graph
        if log_value is not None:
            density = ops.exp_concrete_log_density_of_own_sample(log_value, self.logits, self.temperature)
            return density - log_value.sum(-1)
        log_value = self._recall_pre_image(value, ops.safe_log)  # y of a detached own sample
        if log_value is None:
            if self._validate_args:
                self._validate_sample(value)
            log_value = ops.safe_log(value)
        return ops.concrete_log_density_at_log_value(log_value, self.logits, self.temperature)


GumbelSoftmax = Concrete
