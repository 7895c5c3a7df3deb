r"""Subsets of ``k`` of ``K`` items: the relaxed top-k and its straight-through twin.

Both are parameterised like the categorical family, by a temperature and the items' logits
(or probs) ``(..., K)``, plus the subset size ``k``. Their noise is the Gumbel-top-k trick
(:mod:`pyro_concrete.ops.subset`): the ``k`` largest of ``θ + G`` are ``k`` draws without
replacement from ``softmax(θ)``.
"""

from __future__ import annotations

import itertools
import math

import torch
from pyro.distributions.score_parts import ScoreParts
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints, ops
from .._checks import check_int
from ..ops.concrete import shifted_logits
from ..ops.subset import relaxed_top_k, subset_log_prob, top_k_hot
from ..parameters import Number
from ._base import TemperedDistribution
from .straight_through import straight_through_score_parts

__all__ = ["RelaxedSubset", "SubsetStraightThrough"]


class _SubsetFamily(TemperedDistribution):
    """The subset size ``k`` and the checks shared by both classes."""

    _event_dim = 1
    has_rsample = True

    def __init__(
        self,
        temperature: Tensor | Number,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        *,
        k: int,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)
        self.k = check_int("k", k, minimum=1)
        num_items = self.event_shape[-1]
        if self.k > num_items:
            raise ValueError(f"k must be at most the number of items {num_items}, got {k}")
        if self._validate_args and self.logits.device.type != "meta":
            unmasked = (~ops.structural_zeros(self.logits)).sum(-1)
            if torch._is_any_true(unmasked < self.k):
                raise ValueError(f"k = {self.k} exceeds the number of items not masked in a row of logits")

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, self._get_checked_instance(type(self), _instance))
        new.k = self.k
        return new

    def _repr_fields(self) -> list[str]:
        return [*super()._repr_fields(), f"k: {self.k}"]

    def _noise(self, sample_shape) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        dtype = self.logits.dtype if self.logits.dtype in (torch.float32, torch.float64) else torch.float32
        return ops.draw_gumbel(shape, dtype, self.logits.device)


class RelaxedSubset(_SubsetFamily):
    r"""A relaxed subset of ``k`` of ``K`` items: the entropy-regularised top-k of
    ``θ + G`` (Paulus et al. 2020), a point of the k-hypersimplex.

    A sample is ``y_i = sigmoid((θ_i + G_i - c) / τ)`` with ``c`` such that ``Σ y_i = k``;
    as ``τ → 0`` it tends to the k-hot vector of the ``k`` largest ``θ_i + G_i``, a sample
    of ``k`` items drawn without replacement from ``softmax(θ)``
    (:func:`~pyro_concrete.ops.subset.relaxed_top_k`). For ``k = 1`` the relaxation differs
    from :class:`~pyro_concrete.Concrete` (a sigmoid against a threshold, not a softmax), with
    the same limit.

    **No density.** The law of ``y`` has no closed-form density, so ``log_prob`` raises
    ``NotImplementedError``: use it where only samples and their gradients are needed (the
    relaxed feature selection of a Concrete autoencoder, a relaxed top-k inside a model), and
    :class:`SubsetStraightThrough` where a ``log_prob`` is needed (a guide, or a prior scored
    by an ELBO).

    Args:
        temperature (float or Tensor): positive temperature ``τ``, broadcastable with the
            batch shape.
        probs (Tensor): ``(..., K)`` item probabilities (normalised along the last dim).
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities; ``-inf`` excludes an item.
        k (int): the subset size, ``1 <= k <= K`` (keyword only).
        validate_args (bool, optional): check arguments and values (torch's default if None).

    Example::

        >>> d = RelaxedSubset(0.5, logits=torch.zeros(6), k=2)
        >>> y = d.rsample((3,))
        >>> y.shape, bool(torch.allclose(y.sum(-1), torch.full((3,), 2.0)))
        (torch.Size([3, 6]), True)
    """

    @torch_constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self) -> constraints.KHypersimplex:
        return constraints.KHypersimplex(self.k)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        return relaxed_top_k(self.logits, self.temperature, self._noise(sample_shape), self.k)

    def log_prob(self, value: Tensor) -> Tensor:
        raise NotImplementedError(
            "RelaxedSubset has no tractable density (the relaxed top-k of Gumbel noise has no "
            "closed form): for a log_prob use SubsetStraightThrough, whose values are exact "
            "k-hot vectors scored with the exact probability of the set"
        )


class SubsetStraightThrough(_SubsetFamily):
    r"""Subsets of ``k`` of ``K`` items drawn without replacement, as exact k-hot vectors, with
    the straight-through gradient of :class:`RelaxedSubset`.

    ``rsample`` returns the k-hot vector of the ``k`` largest ``θ_i + G_i`` (Gumbel-top-k, an
    exact sample of ``k`` items without replacement from ``softmax(θ)``), and differentiates
    as the relaxed top-k of the same noise (``hard + (soft - soft.detach())``). Only the ST
    estimator carries over from the categorical family: Gumbel-Rao would need the noise
    conditioned on the whole top-k set, and ReinMax has no k-hot form.

    ``log_prob`` is the exact log-probability of the *set* (the order of the draws summed out),
    computed from the integral of Kool et al. 2020 by the trapezoid rule in float64 on a
    grid that depends on ``k`` only, to float64 rounding for any logits
    (:func:`~pyro_concrete.ops.subset.subset_log_prob`; the tests compare it with the sum
    over the ``k!`` orders of the draws). It is not
    differentiable in the value (a set's probability has no natural linear extension to the
    k-hypersimplex): under ``Trace_ELBO`` a prior term ``log p(z)`` of such a site passes no
    straight-through gradient to the guide; use it where the KL or score is taken another
    way. ``enumerate_support`` lists the ``C(K, k)`` subsets.

    Args: as :class:`RelaxedSubset`.

    Example::

        >>> d = SubsetStraightThrough(0.5, logits=torch.tensor([0.0, 1.0, 2.0, 3.0]), k=2)
        >>> z = d.rsample()
        >>> int(z.sum()), bool(d.log_prob(d.enumerate_support()).exp().sum().isclose(torch.tensor(1.0)))
        (2, True)
    """

    has_enumerate_support = True

    @torch_constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.KHot:
        return constraints.KHot(self.k)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        noise = self._noise(sample_shape)
        theta, _ = shifted_logits(self.logits.detach())
        hard = top_k_hot(theta.to(noise.dtype) + noise, self.k).to(self.logits.dtype)
        if not self._parameters_require_grad() or not torch.is_grad_enabled():
            return hard
        soft = relaxed_top_k(self.logits, self.temperature, noise, self.k)
        return hard + (soft - soft.detach())

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return subset_log_prob(self.logits, value.detach(), self.k)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        num_items = self.event_shape[-1]
        subsets = list(itertools.combinations(range(num_items), self.k))
        index = torch.tensor(subsets, device=self.logits.device)
        values = torch.zeros(len(index), num_items, dtype=self.logits.dtype, device=self.logits.device)
        values.scatter_(-1, index, 1.0)
        values = values.reshape((len(index),) + (1,) * len(self.batch_shape) + (num_items,))
        if expand:
            values = values.expand((len(index), *self.batch_shape, num_items))
        return values

    def score_parts(self, value: Tensor) -> ScoreParts:
        """Pyro's score parts, by the rule of the straight-through classes
        (:func:`~pyro_concrete.distributions.straight_through.straight_through_score_parts`)."""
        return straight_through_score_parts(self, value)

    @property
    def num_subsets(self) -> int:
        """``C(K, k)``: the size of the support."""
        return math.comb(self.event_shape[-1], self.k)
