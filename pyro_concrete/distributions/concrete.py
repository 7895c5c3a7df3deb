"""The Concrete (Gumbel-Softmax) distribution and its log-space twin, ExpConcrete."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints
from ..ops.concrete import (
    exp_concrete_log_density_along_path,
    floored_exp,
    log_density_of_value,
    log_of_simplex_point,
    log_sample,
    shifted_logits,
)
from ..ops.noise import draw_softmax_noise
from ..parameters import compute_dtype
from ._base import TemperedDistribution
from ._own_sample import OwnSampleMemory

__all__ = ["Concrete", "ExpConcrete", "GumbelSoftmax"]


class _ConcreteFamily(TemperedDistribution):
    """Sampling and the density shared by ExpConcrete and Concrete."""

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

    def _compute(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Shifted logits, temperature and the mask, in the dtype the kernels compute in
        (computed on each call: a distribution's logits may be updated in place)."""
        dtype = compute_dtype(self.logits.dtype)
        theta, masked = shifted_logits(self.logits)
        return theta.to(dtype), self.temperature.to(dtype), masked

    def _log_sample(self, sample_shape) -> tuple[Tensor, Tensor | None]:
        """The ExpConcrete sample ``y`` in the compute dtype (float32 for half precision), and
        the mask (None: no masked category)."""
        logits, temperature, masked = self._compute()
        shape = self._extended_shape(torch.Size(sample_shape))
        noise = draw_softmax_noise(shape, logits.dtype, logits.device)
        return log_sample(logits, temperature.unsqueeze(-1), noise, masked, self.logits.dtype), masked

    def _log_density(
        self, log_value: Tensor, jacobian: bool, computed: tuple[Tensor, Tensor, Tensor | None] | None = None
    ) -> Tensor:
        """The density at a general log-space value; ``computed``: :meth:`_compute`'s result,
        when the caller has it."""
        logits, temperature, masked = self._compute() if computed is None else computed
        return log_density_of_value(log_value, logits, temperature, masked, jacobian=jacobian)


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

    ``log_prob`` is a pure function of the parameters and the value, differentiable to every
    order in all three (``torch.func`` transforms, ``torch.jit.trace`` and ``torch.compile``
    included): no state is kept between calls.

    **Masks.** A ``-inf`` logit (a zero probability, or a logit more than half the dtype's
    largest float below its row's maximum, as ``masked_fill(mask, finfo.min)`` makes) masks
    its category: the distribution is the ExpConcrete of the other ``K'`` categories, its
    samples are exactly ``-inf`` there and its density is that of the ``K'`` categories (a
    value finite at a masked category, or ``-inf`` at another, has log-density ``-inf``).
    A sample entry that would pass the dtype's most negative float (huge logit gaps, tiny
    temperatures, float16) saturates there.

    Args:
        temperature (float or Tensor): positive temperature, one per batch element: it
            broadcasts with ``logits.shape[:-1]``. A temperature of shape ``(..., 1)`` with
            as many dimensions as ``logits`` (torch's convention) has its last dimension
            dropped, so ``(n, 1)`` with logits ``(n, K)`` gives batch shape ``(n,)``. May
            require grad.
        probs (Tensor): ``(..., K)`` nonnegative probabilities summing to one (zeros mask).
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (``-inf`` masks).
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = ExpConcrete(0.1, logits=torch.randn(4, 10))
        >>> y = d.rsample()              # (4, 10), finite, logsumexp(y, -1) == 0
        >>> d.log_prob(y).shape
        torch.Size([4])
        >>> masked = ExpConcrete(0.5, probs=torch.tensor([0.3, 0.0, 0.7]))
        >>> masked.rsample()[1]          # a masked category is exactly -inf
        tensor(-inf)
    """

    support = constraints.log_simplex

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return self._log_sample(sample_shape)[0].to(self.logits.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        """The log-density at ``value`` (float32 for half-precision parameters, whose range
        the log-density of a low-temperature sample exceeds)."""
        if self._validate_args:
            self._validate_sample(value)
        return self._log_density(value, jacobian=False)


class Concrete(OwnSampleMemory, _ConcreteFamily):
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
    from ``y``, never from ``log x``.

    **The exact pre-image.** For its own most recent sample (the same tensor, unmodified) the
    distribution still holds ``y`` and evaluates ``log p_Y(y) - Σ_k y_k`` there: the value
    of the general formula at the exact point rather than at the rounded ``log x``. This is a
    gain in precision only: the same formula, the same gradient terms. While the sample is on
    its ``rsample`` graph, the density is differentiated through ``y`` (exact derivatives of
    every order in the parameters, also for components that underflowed, whose derivative
    through ``x`` is lost to rounding); the sample tensor ``x`` itself is then not an input
    of the result's graph, so ``torch.autograd.grad(lp, x)`` raises (it never returns 0):
    to differentiate with respect to the value, score ``x.detach().requires_grad_()``.
    Drawn by ``sample()`` or detached, the sample is scored at the exact ``y`` with the
    derivative of ``log x`` with respect to the value. Any other value ``x`` is scored as
    ``log p_Y(log x) - Σ log x`` with exact zeros read as the smallest subnormal float:
    finite, and exact wherever ``x`` is above ``tiny``. To score values whose components
    underflow accurately, keep them in log space with :class:`ExpConcrete`.

    Half-precision samples are computed in float32 (floored at float32's ``tiny``) and then
    rounded: components below float16's or bfloat16's range become subnormal or ``0`` there;
    the own sample is still scored from its float32 pre-image.

    The density is with respect to Lebesgue measure on the first ``K - 1`` coordinates.
    Masked categories (``-inf`` logits, zero probs) are exactly ``0`` in every sample; the
    density is that of the Concrete over the other categories (see :class:`ExpConcrete`).

    Args:
        temperature (float or Tensor): positive temperature, one per batch element
            (broadcasting rule as in :class:`ExpConcrete`). May require grad.
        probs (Tensor): ``(..., K)`` nonnegative probabilities summing to one (zeros mask).
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (``-inf`` masks).
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = Concrete(torch.tensor(0.5, requires_grad=True), logits=torch.randn(3))
        >>> x = d.rsample((1000,))       # (1000, 3) points of the simplex
        >>> d.log_prob(x).mean().backward()
    """

    support = constraints.simplex

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        log_value, masked = self._log_sample(sample_shape)
        return self._remember(floored_exp(log_value, masked).to(self.logits.dtype), log_value)

    def log_prob(self, value: Tensor) -> Tensor:
        """The log-density at ``value`` (float32 for half-precision parameters)."""
        computed = self._compute()
        logits, temperature, masked = computed

        def log_of(x: Tensor) -> Tensor:
            return log_of_simplex_point(x, masked)

        own = self._recall_pre_image(value, log_of)  # y of the own sample
        if own is None:
            if self._validate_args:
                self._validate_sample(value)
            return self._log_density(log_of(value), True, computed)
        log_value, on_path = own
        if not on_path:
            return self._log_density(log_value, True, computed)
        density = exp_concrete_log_density_along_path(log_value, logits, temperature, masked)
        kept = log_value if masked is None else log_value.masked_fill(masked, 0.0)
        return density - kept.sum(-1)


GumbelSoftmax = Concrete
