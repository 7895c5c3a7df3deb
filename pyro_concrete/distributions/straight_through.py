"""The straight-through family: exact discrete samples with relaxed gradients.

:class:`ConcreteStraightThrough` and :class:`BinaryConcreteStraightThrough` are discrete
distributions (one-hot categorical, Bernoulli) whose ``rsample`` carries a gradient
estimator; the estimators live in :mod:`pyro_concrete.ops.straight_through`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions.score_parts import ScoreParts
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints, ops
from ..ops import concrete as concrete_kernels
from ..parameters import Number, compute_dtype
from ._base import TemperedDistribution

__all__ = ["BinaryConcreteStraightThrough", "ConcreteStraightThrough"]


def _weighted_log_probs(value: Tensor, log_p: Tensor, ruled_out: Tensor) -> Tensor:
    """``value · log_p`` for a discrete log-probability that is linear in ``value``.

    Its value is exact, ruled-out outcomes (masked categories, the impossible outcome of a
    certain binary variable) contributing 0 (never ``0 · inf``). Its derivative with respect
    to ``value`` is ``log_p`` (the straight-through signal of a model term), except at
    ruled-out outcomes and where ``|log_p|`` exceeds ``sqrt`` of the dtype's largest float
    (``1.8e19`` in float32; logits that far apart): there it is 0, so that a product of it with
    a gradient cannot overflow into ``inf`` and then NaN. Derivatives with respect to ``log_p``
    are exact to every order.
    """
    forward = value.detach() * torch.where(ruled_out, 0.0, log_p)
    beyond = log_p.detach().abs() > math.sqrt(torch.finfo(log_p.dtype).max)
    return forward + (value - value.detach()) * torch.where(ruled_out | beyond, 0.0, log_p)


def _within_sqrt_max(*log_ps: Tensor) -> bool:
    """Whether no entry of the (nonpositive) log-probabilities is beyond ``sqrt`` of their
    dtype's largest float, the bound of :func:`_weighted_log_probs` (NaN: False). One
    reduction each, nothing of full size allocated; call only where
    :func:`~pyro_concrete.ops.concrete._may_branch_on_values` allows."""
    return all(bool(log_p.detach().amin() >= -math.sqrt(torch.finfo(log_p.dtype).max)) for log_p in log_ps)


def _plain_product_is_exact(log_p: Tensor, logits: Tensor) -> bool:
    """Whether ``(value * log_p).sum(-1)`` may stand for :func:`_weighted_log_probs` of the
    categorical (and ``log_prob``'s ``-inf`` for impossible values): no category of
    ``logits`` is masked (:func:`~pyro_concrete.ops.structural_zeros` all False, decided on
    each row's smallest entry: ``x - max`` rounds monotonically in ``x``) and ``|log_p| <=
    sqrt(finfo.max)``. There both have the same value (``(v - v.detach()) · log_p`` adds an
    exact zero) and the same derivatives of every order with respect to ``value`` and
    ``log_p``: each ``where`` passes ``log_p`` and its gradient through unchanged (for finite
    values; an infinite entry, outside the support, scores ``±inf`` here where the general
    expression gives NaN). Decided from row-sized reductions, only where Python may read
    values; else False."""
    if log_p.numel() == 0 or not concrete_kernels._may_branch_on_values(log_p):
        return False
    smallest, largest = torch.aminmax(logits.detach(), dim=-1)
    gap = concrete_kernels._masking_gap(logits.dtype)
    return bool((smallest - largest).amin() >= -gap) and _within_sqrt_max(log_p)


def straight_through_score_parts(d: TemperedDistribution, value: Tensor) -> ScoreParts:
    """Pyro's score parts of a straight-through distribution ``d``: pathwise for a value that
    carries (or needs) no gradient of its own, a score function for a value that has no
    sample path.

    Pyro treats every value of a reparameterised distribution as carrying its gradient
    along the sample path (score function 0). That holds for an ``rsample`` of this
    distribution, but not for a value enumerated by ``TraceEnum_ELBO`` in a guide, which
    has no sample path: its weight and gradient must come from ``log_prob``, as for a
    discrete distribution, or guide-side enumeration sums the values instead of
    weighting them. The rule reads the value alone, never what the distribution sampled
    before (one instance may serve several sites, or be sampled again for logging):

    - a value with more batch dimensions than the distribution (parallel enumeration,
      ``enumerate_support()``) is weighted by ``log_prob``;
    - a value that does not require grad while the parameters do, with gradients being
      recorded (sequential enumeration, a value given by hand), likewise;
    - any other value (an ``rsample``, or anything while no gradient is recorded, e.g.
      ``SVI.evaluate_loss``) is pathwise.
    """
    log_prob = d.log_prob(value)
    enumerated = value.dim() - d._event_dim > len(d.batch_shape)
    no_path = torch.is_grad_enabled() and not value.requires_grad and d._parameters_require_grad()
    if enumerated or no_path:
        return ScoreParts(log_prob=log_prob, score_function=log_prob, entropy_term=0)  # type: ignore[arg-type]
    # Pyro reads the number 0 (not a zero Tensor) as "no score function" (is_identically_zero).
    return ScoreParts(log_prob=log_prob, score_function=0, entropy_term=log_prob)  # type: ignore[arg-type]


class _StraightThroughFamily(TemperedDistribution):
    """The estimator choice shared by both classes (parameters, expand, repr: see the base)."""

    has_rsample = True
    has_enumerate_support = True

    def __init__(
        self,
        temperature: Tensor | Number,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        estimator: str = "st",
        rao_samples: int = 10,
        validate_args: bool | None = None,
    ) -> None:
        self.rao_samples = ops.check_estimator(estimator, rao_samples)
        self.estimator = estimator
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, self._get_checked_instance(type(self), _instance))
        new.estimator = self.estimator
        new.rao_samples = self.rao_samples
        return new

    def _repr_fields(self) -> list[str]:
        rao = [f"rao_samples: {self.rao_samples}"] if self.estimator == "gumbel_rao" else []
        return [*super()._repr_fields(), f"estimator: {self.estimator!r}", *rao]

    def score_parts(self, value: Tensor) -> ScoreParts:
        """Pyro's score parts: see :func:`straight_through_score_parts`."""
        return straight_through_score_parts(self, value)

    def _shape(self, sample_shape) -> torch.Size:
        return self._extended_shape(torch.Size(sample_shape))


class ConcreteStraightThrough(_StraightThroughFamily):
    r"""A one-hot categorical distribution whose ``rsample`` carries a relaxed gradient.

    Samples are one-hot vectors with entries exactly ``0.0`` and ``1.0``, distributed as
    ``OneHotCategorical(logits=logits)``; ``log_prob`` is the exact discrete
    log-probability ``log softmax(logits)[argmax value]``, so an ELBO built with it is an
    honest estimate for a discrete model. The gradient of ``rsample`` with respect to
    ``logits`` and ``temperature`` is the chosen estimator's:

    - ``"st"``: straight-through Gumbel-Softmax (Jang et al. 2017), the Jacobian of the
      soft sample ``softmax((logits + G) / temperature)``;
    - ``"gumbel_rao"``: Gumbel-Rao (Paulus et al. 2020), the ST gradient averaged over
      ``rao_samples`` draws of the Gumbel noise given the sample: same expectation as
      ``"st"``, lower variance, about ``rao_samples`` times the sampling cost;
    - ``"reinmax"``: ReinMax (Liu et al. 2023), a second-order correction of ST (no
      gradient for the temperature; its authors recommend ``temperature >= 1``).

    Nothing is stored on the sample tensor or in the distribution: copies, views, casts and
    detached samples are scored like the original. Unlike Pyro's
    ``RelaxedOneHotCategoricalStraightThrough``, ``sample()`` returns hard values too, and
    ``expand`` keeps the class and estimator. Masked categories (``-inf`` logits, zero
    probs) are never drawn, get zero gradient, and have ``log_prob`` ``-inf``, exactly as in
    ``OneHotCategorical``.

    Args:
        temperature (float or Tensor): positive temperature of the relaxation, one per
            batch element (broadcasting rule as in :class:`~pyro_concrete.Concrete`).
            May require grad.
        probs (Tensor): ``(..., K)`` nonnegative probabilities summing to one (zeros mask).
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (``-inf`` masks).
        estimator (str): ``"st"``, ``"gumbel_rao"`` or ``"reinmax"``.
        rao_samples (int): conditional noise draws of ``"gumbel_rao"`` (>= 1).
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = ConcreteStraightThrough(0.5, logits=torch.randn(4, 3, requires_grad=True),
        ...                             estimator="gumbel_rao")
        >>> z = d.rsample()              # (4, 3), exactly one-hot
        >>> d.log_prob(z).shape          # log softmax(logits) at the sampled categories
        torch.Size([4])
    """

    arg_constraints = {
        "temperature": constraints.positive_finite,
        "logits": torch_constraints.real_vector,
        "probs": constraints.simplex,
    }
    support = torch_constraints.one_hot
    _event_dim = 1

    @property
    def num_categories(self) -> int:
        return self._event_shape[0]

    @property
    def log_probs(self) -> Tensor:
        """``log_softmax(logits)``, in the dtype the kernels compute in (float32 for half
        precision): exact under a large common offset of the logits, where
        ``logits - logsumexp(logits)`` loses the difference to rounding.

        Recomputed on each access (batch-sized, cheap), so that every ``log_prob`` call has
        its own autograd graph.
        """
        return torch.log_softmax(self.logits.to(compute_dtype(self.logits.dtype)), -1)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        index = self.logits.argmax(-1, keepdim=True)
        return torch.zeros_like(self.logits).scatter_(-1, index, 1.0)

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    def entropy(self) -> Tensor:
        return -_weighted_log_probs(self.probs, self.log_probs, ops.structural_zeros(self.logits)).sum(-1)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        # Parameters were read and checked in __init__: straight to the kernel.
        return ops.sample_one_hot(
            self.logits, self.temperature, self._shape(sample_shape), self.estimator, self.rao_samples
        )

    def log_prob(self, value: Tensor) -> Tensor:
        """``log softmax(logits)`` at the category of the one-hot ``value``.

        Computed as ``sum_k value_k log p_k``: exact for one-hot values (a single nonzero
        term), and for other values (only without validation) the cross-entropy. Linear in
        ``value``, so its derivative with respect to the value is ``log p`` (the
        straight-through signal of a model term), 0 at masked categories (and where
        ``|log p|`` is beyond ``sqrt`` of the dtype's largest float); a value that puts weight
        on a masked category has log-probability ``-inf``. float32 for half-precision
        parameters.
        """
        if self._validate_args:
            self._validate_sample(value)
        log_p = self.log_probs
        if _plain_product_is_exact(log_p, self.logits):
            return (value * log_p).sum(-1)  # nothing masked, nothing beyond sqrt(finfo.max)
        masked = ops.structural_zeros(self.logits)
        total = _weighted_log_probs(value, log_p, masked).sum(-1)
        impossible = ((value != 0) & masked).any(-1)
        return torch.where(impossible, -torch.inf, total)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        k = self.num_categories
        values = torch.eye(k, dtype=self.logits.dtype, device=self.logits.device)
        values = values.reshape((k,) + (1,) * len(self.batch_shape) + (k,))
        if expand:
            values = values.expand((k,) + self.batch_shape + (k,))
        return values


class BinaryConcreteStraightThrough(_StraightThroughFamily):
    r"""A Bernoulli distribution whose ``rsample`` carries a relaxed gradient.

    Samples are exactly ``0.0`` or ``1.0``, distributed as ``Bernoulli(logits=logits)``;
    ``log_prob`` is the Bernoulli log-probability ``log sigmoid(±logits)``, computed from
    the logits without clamping (finite for logits of any size). The estimators are the
    two-class cases of those of :class:`ConcreteStraightThrough`: ``"st"`` differentiates
    the binary Concrete sample ``sigmoid((logits + L) / temperature)`` (``L`` standard
    Logistic noise), ``"gumbel_rao"`` averages that over ``rao_samples`` draws of ``L``
    given the outcome, ``"reinmax"`` is ReinMax with logits ``(logits, 0)``.

    Args:
        temperature (float or Tensor): positive, broadcastable with ``logits``. May
            require grad.
        probs (Tensor): probabilities of ``1``, in ``[0, 1]`` (0 and 1: certain outcomes).
        logits (Tensor): log-odds (``±inf``: certain outcomes).
        estimator (str): ``"st"``, ``"gumbel_rao"`` or ``"reinmax"``.
        rao_samples (int): conditional noise draws of ``"gumbel_rao"`` (>= 1).
        validate_args (bool, optional): whether to validate arguments and values.

    Example::

        >>> d = BinaryConcreteStraightThrough(0.3, logits=torch.zeros(5, requires_grad=True))
        >>> b = d.rsample((10,))         # (10, 5) of exact 0.0 / 1.0
        >>> d.log_prob(b).sum().backward()
    """

    arg_constraints = {
        "temperature": constraints.positive_finite,
        "logits": torch_constraints.real,
        "probs": torch_constraints.unit_interval,
    }
    support = torch_constraints.boolean
    _event_dim = 0

    @property
    def _log_p1(self) -> Tensor:
        return F.logsigmoid(self.logits.to(compute_dtype(self.logits.dtype)))  # exact for any θ

    @property
    def _log_p0(self) -> Tensor:
        return F.logsigmoid(-self.logits.to(compute_dtype(self.logits.dtype)))

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    @property
    def variance(self) -> Tensor:
        return torch.sigmoid(self.logits) * torch.sigmoid(-self.logits)

    def _ruled_out(self) -> tuple[Tensor, Tensor]:
        """Where an infinite (or beyond half the largest float) logit rules out 1, and 0."""
        certain = ops.certain_outcomes(self.logits)
        return certain & (self.logits < 0), certain & (self.logits > 0)

    def _plain_product_is_exact(self, log_p1: Tensor, log_p0: Tensor) -> bool:
        """The binary case of :func:`_plain_product_is_exact`: no logit certain
        (:func:`~pyro_concrete.ops.certain_outcomes`, ``|θ| > finfo.max / 2`` in the logits'
        own dtype, all False: one ``aminmax``) and neither log-probability beyond
        ``sqrt(finfo.max)``; then ``value · log p1 + (1 - value) · log p0`` has the value and
        derivatives of every order of the general expression."""
        if log_p1.numel() == 0 or not concrete_kernels._may_branch_on_values(log_p1):
            return False
        smallest, largest = torch.aminmax(self.logits.detach())
        half = torch.finfo(self.logits.dtype).max / 2
        return bool((smallest >= -half) & (largest <= half)) and _within_sqrt_max(log_p1, log_p0)

    def entropy(self) -> Tensor:
        p = self.probs
        no_1, no_0 = self._ruled_out()
        return -(_weighted_log_probs(p, self._log_p1, no_1) + _weighted_log_probs(1 - p, self._log_p0, no_0))

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return ops.sample_binary(
            self.logits, self.temperature, self._shape(sample_shape), self.estimator, self.rao_samples
        )

    def log_prob(self, value: Tensor) -> Tensor:
        """``value · log p + (1 - value) · log(1 - p)``: exact for 0/1 values; ``-inf`` for an
        outcome that an infinite logit rules out (never ``0 * inf``)."""
        if self._validate_args:
            self._validate_sample(value)
        log_p1, log_p0 = self._log_p1, self._log_p0
        if self._plain_product_is_exact(log_p1, log_p0):
            return value * log_p1 + (1 - value) * log_p0  # nothing certain, nothing beyond
        no_1, no_0 = self._ruled_out()
        total = _weighted_log_probs(value, log_p1, no_1) + _weighted_log_probs(1 - value, log_p0, no_0)
        impossible = ((value != 0) & no_1) | ((value != 1) & no_0)
        return torch.where(impossible, -torch.inf, total)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        values = torch.tensor([0.0, 1.0], dtype=self.logits.dtype, device=self.logits.device)
        values = values.reshape((2,) + (1,) * len(self.batch_shape))
        if expand:
            values = values.expand((2,) + self.batch_shape)
        return values
