"""The Concrete (Gumbel-Softmax) distribution and its log-space twin, ExpConcrete."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints
from ..ops.concrete import (
    exp_concrete_log_density_along_path,
    floored_exp,
    log_density_of_value,
    log_of_simplex_point,
    log_sample_of_perturbed,
    perturbed_logits,
    row_sum,
    shifted_logits,
)
from ..ops.noise import draw_softmax_noise
from ..parameters import compute_dtype
from ._base import TemperedDistribution
from ._own_sample import OwnSampleMemory

__all__ = ["Concrete", "ExpConcrete", "GumbelSoftmax"]


class _Perturbed(NamedTuple):
    """A sample's ``a = θ + G - max`` and what turns it into ``y`` (see
    :func:`~pyro_concrete.ops.concrete.log_sample_of_perturbed`)."""

    perturbed: Tensor
    temperature: Tensor  # (..., 1), without graph
    masked: Tensor | None
    out_dtype: torch.dtype

    # Detached, not under no_grad: torch.jit.trace records no grad mode (see
    # exp_concrete_log_density_along_path).

    def log_value(self) -> Tensor:
        """``y``, without graph: the same floats as the sampler returned."""
        return log_sample_of_perturbed(self.perturbed.detach(), self.temperature, self.masked, self.out_dtype)

    def tempered(self) -> Tensor:
        """``a / τ`` saturated as in the sampler (``y`` is its ``log_softmax``): a new buffer,
        without graph."""
        z = self.perturbed.detach() * self.temperature.reciprocal()
        return z.clamp_min_(torch.finfo(self.out_dtype).min)


class _OwnSample(NamedTuple):
    """What :class:`Concrete` keeps of its latest ``rsample`` while the temperature requires
    grad: the ``a`` that autograd saves for the temperature's gradient instead of ``y``, and
    ``Σ_keep y`` with the sample's graph (the one term of the density that is differentiated
    through ``y``). Keeping ``y`` as well would hold one more tensor of the sample's size
    through the whole backward pass (autograd drops its own reference to ``y`` early)."""

    source: _Perturbed
    log_value_sum: Tensor


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

    def _log_sample(self, sample_shape) -> tuple[Tensor, Tensor | None, _Perturbed]:
        """The ExpConcrete sample ``y`` in the compute dtype (float32 for half precision), the
        mask (None: no masked category), and what ``y`` was computed from."""
        logits, temperature, masked = self._compute()
        shape = self._extended_shape(torch.Size(sample_shape))
        perturbed = perturbed_logits(logits, draw_softmax_noise(shape, logits.dtype, logits.device))
        tau = temperature.unsqueeze(-1)
        y = log_sample_of_perturbed(perturbed, tau, masked, self.logits.dtype)
        return y, masked, _Perturbed(perturbed, tau.detach(), masked, self.logits.dtype)

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
    gain in precision only: the same formula, the same gradient terms. (While the temperature
    requires grad it holds instead the ``(logits + G) - max`` that autograd saves for the
    temperature's gradient, from which ``y`` is recomputed exactly when needed, and
    ``Σ_k y_k``: one tensor of the sample's size fewer stays alive through the backward
    pass.) While the sample is on
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
        log_value, masked, source = self._log_sample(sample_shape)
        x = floored_exp(log_value, masked).to(self.logits.dtype)
        if not (torch.is_grad_enabled() and self.temperature.requires_grad):
            return self._remember(x, log_value)
        # Autograd saves ``a`` for the temperature's gradient: keep it rather than y.
        kept = log_value if masked is None else log_value.masked_fill(masked, 0.0)
        return self._remember(x, _OwnSample(source, row_sum(kept)))

    def _recall(self, value: Tensor):
        # y of the own sample; off its path, the kept ``a`` is turned back into y (on it, the
        # density needs only what _OwnSample holds).
        state = super()._recall(value)
        if isinstance(state, _OwnSample) and not self._on_sample_path(value):
            return state.source.log_value()
        return state

    def _on_sample_path(self, value: Tensor) -> bool:
        own = self._own_sample
        return own is not None and value.grad_fn is not None and value.grad_fn is own.grad_fn

    def log_prob(self, value: Tensor) -> Tensor:
        """The log-density at ``value`` (float32 for half-precision parameters)."""
        own = self._recall_pre_image(value, self._log_of)  # y of the own sample
        if own is None:
            if self._validate_args:
                self._validate_sample(value)
            computed = self._compute()
            return self._log_density(log_of_simplex_point(value, computed[2]), True, computed)
        log_value, on_path = own
        if not on_path:
            return self._log_density(log_value, True)
        # Along the sample path the density is a value without graph plus terms in τ and y
        # (exp_concrete_log_density_along_path): the logits are needed as values only, in a
        # fresh buffer that the kernel may overwrite.
        dtype = compute_dtype(self.logits.dtype)
        theta, masked = shifted_logits(self.logits.detach())
        theta, temperature = theta.to(dtype), self.temperature.to(dtype)
        if isinstance(log_value, _OwnSample):
            v, kept_sum = log_value.source.tempered(), log_value.log_value_sum
        else:
            v = log_value.detach()
            kept_sum = row_sum(log_value if masked is None else log_value.masked_fill(masked, 0.0))
        # θ - τ v in theta's buffer (fresh, without graph) where the shapes allow
        tau = temperature.detach().unsqueeze(-1)
        if theta.shape == v.shape:
            difference = theta.addcmul_(tau, v, value=-1)
        else:
            difference = torch.addcmul(theta, tau, v, value=-1)
        del theta, v  # a tempered buffer is freed before the density allocates
        return exp_concrete_log_density_along_path(difference, temperature, masked) - kept_sum

    def _log_of(self, x: Tensor) -> Tensor:
        """``log x`` as the general formula reads a value (see :func:`log_of_simplex_point`)."""
        return log_of_simplex_point(x, shifted_logits(self.logits.detach())[1])


GumbelSoftmax = Concrete
