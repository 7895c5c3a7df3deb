"""The permutation family: relaxed and exact random permutation matrices from perturbed scores.

Both classes draw standard Gumbel noise ``G`` for an ``(n, n)`` matrix of ``scores`` S and
read the perturbed matrix ``S + G``: :class:`GumbelSinkhorn` returns its Sinkhorn
relaxation at temperature τ, a doubly-stochastic matrix (Mena, Belanger, Linderman & Snoek
2018); :class:`GumbelSinkhornStraightThrough` returns the exact optimal assignment of
``S + G``, a permutation matrix, with the relaxation's gradient. Neither law has a tractable
density (see each class). The kernels live in :mod:`pyro_concrete.ops.sinkhorn`.
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints
from .._checks import check_int
from ..ops.noise import draw_gumbel
from ..ops.sinkhorn import check_square, gumbel_sinkhorn_log_sample, hard_assignment
from ..parameters import (
    Number,
    _as_float_tensor,
    _check_temperature,
    _invalid,
    broadcast_shape,
    compute_dtype,
)
from ._base import PackageDistribution, temperature_repr

__all__ = ["GumbelSinkhorn", "GumbelSinkhornStraightThrough"]


def _check_scores(scores: Tensor) -> None:
    if scores.device.type != "meta" and not torch._is_all_true(torch.isfinite(scores)):
        raise _invalid("scores", scores, "finite")


class _PermutationFamily(PackageDistribution):
    """Parameters, shapes, expand, noise and repr shared by both classes."""

    arg_constraints = {
        "temperature": constraints.positive_finite,
        "scores": torch_constraints.independent(torch_constraints.real, 2),
    }
    has_rsample = True

    def __init__(
        self,
        temperature: Tensor | Number,
        scores: Tensor,
        num_iters: int = 20,
        validate_args: bool | None = None,
    ) -> None:
        self.num_iters = check_int("num_iters", num_iters, minimum=1)
        if not isinstance(scores, Tensor):
            raise TypeError(f"scores must be a Tensor, got {type(scores).__name__}")
        given = _as_float_tensor("scores", scores)
        n = check_square("scores", given)
        if n < 2:
            raise ValueError(f"scores must be (..., n, n) with n >= 2, got shape {tuple(given.shape)}")
        tau = _as_float_tensor("temperature", temperature, like=given)
        dtype = torch.promote_types(given.dtype, tau.dtype)
        given, tau = given.to(dtype), tau.to(device=given.device, dtype=dtype)
        if self._validate_args if validate_args is None else validate_args:
            _check_temperature(tau)
            _check_scores(given)
        try:
            batch_shape = broadcast_shape(given.shape[:-2], tau.shape)
        except ValueError:
            raise ValueError(
                f"temperature of shape {tuple(tau.shape)} does not broadcast with the batch shape "
                f"{tuple(given.shape[:-2])} of scores"
            ) from None
        event_shape = torch.Size((n, n))
        self.temperature = tau.expand(batch_shape)
        self.scores = given.expand(batch_shape + event_shape)
        super().__init__(batch_shape, event_shape, validate_args=False)
        self._set_validate_args(validate_args)

    @classmethod
    def infer_shapes(cls, temperature=(), scores=(2, 2), **kwargs):
        """Batch and event shapes from argument shapes, with the rule of ``__init__``."""
        scores = torch.Size(scores)
        return broadcast_shape(scores[:-2], torch.Size(temperature)), scores[-2:]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new.scores = self.scores.expand(batch_shape + self._event_shape)
        new.num_iters = self.num_iters
        TorchDistribution.__init__(new, batch_shape, self._event_shape, validate_args=False)
        new._set_validate_args(self.__dict__.get("_validate_args"))
        return new

    def _noise(self, sample_shape) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        return draw_gumbel(shape, compute_dtype(self.scores.dtype), self.scores.device)

    def __repr__(self) -> str:
        fields = [
            f"temperature: {temperature_repr(self.temperature)}",
            f"scores: Tensor{tuple(self.scores.shape)}",
            f"num_iters: {self.num_iters}",
            f"batch_shape: {tuple(self.batch_shape)}",
            f"event_shape: {tuple(self.event_shape)}",
        ]
        return f"{type(self).__name__}({', '.join(fields)})"


class GumbelSinkhorn(_PermutationFamily):
    r"""The Gumbel-Sinkhorn relaxation of a random permutation matrix (Mena et al. 2018).

    A sample is ``exp(log_sinkhorn((scores + G) / temperature, num_iters))`` with ``G``
    standard Gumbel noise of the matrix's shape: a positive ``(n, n)`` matrix whose columns
    sum to 1 to rounding and whose rows sum to 1 as far as the Sinkhorn iteration has
    converged (see :func:`~pyro_concrete.ops.sinkhorn.log_sinkhorn`). As ``temperature → 0``
    (with enough iterations) it tends to the permutation matrix of the optimal assignment of
    ``scores + G``, the value of :class:`GumbelSinkhornStraightThrough`. The iteration
    converges slowly at low temperature: measured on random ``N(0, 1)`` scores, ``n <= 10``,
    the largest row-sum error is about ``5e-2`` at ``τ = 1`` with 20 iterations, ``6e-3``
    with 100, ``1e-6`` with 1000; at ``τ = 0.1`` and 1000 iterations it is still ``4e-3``.
    The :attr:`support` is therefore the column-stochastic matrices (what every sample is);
    :data:`pyro_concrete.constraints.doubly_stochastic` (rows too, within ``1e-3``) holds the
    samples of a converged iteration only: raise ``num_iters`` as the temperature falls.

    **No density.** The law of the Sinkhorn operator of Gumbel-perturbed scores has no
    tractable density, so :meth:`log_prob` raises ``NotImplementedError``; Mena et al. train
    with a surrogate. Use :meth:`rsample` in an objective that does not score the value
    (plain PyTorch, or Pyro with the KL term computed separately), and either

    - for exact permutation values, :class:`GumbelSinkhornStraightThrough` (same noise, same
      gradient); or
    - for an ELBO in Pyro, the surrogate of Mena et al.: make the perturbed matrix the random
      variable, ``X = pyro.sample("x", dist.Gumbel(scores, 1.0).to_event(2))`` in the model
      and the guide (independent Gumbel entries: a tractable density and KL), and apply
      ``log_sinkhorn(X / temperature, num_iters)`` deterministically.

    Args:
        temperature (float or Tensor): positive finite temperature, one per matrix
            (broadcasts with ``scores.shape[:-2]``). May require grad.
        scores (Tensor): ``(..., n, n)`` finite scores (log-potentials of assigning row ``i``
            to column ``j``), ``n >= 2``. May require grad.
        num_iters (int): Sinkhorn iterations per sample (>= 1).
        validate_args (bool, optional): whether to validate arguments (torch's default if
            None).

    Example::

        >>> scores = torch.randn(4, 4, requires_grad=True)
        >>> d = GumbelSinkhorn(0.5, scores, num_iters=50)
        >>> x = d.rsample((8,))          # (8, 4, 4), columns summing to 1
        >>> bool(torch.allclose(x.sum(-2), torch.ones(8, 4)))
        True
        >>> (x * torch.eye(4)).sum().backward()   # gradients for the scores and temperature
    """

    support = constraints.column_stochastic

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        noise = self._noise(sample_shape)
        return gumbel_sinkhorn_log_sample(self.scores, self.temperature, noise, self.num_iters).exp()

    def log_prob(self, value: Tensor) -> Tensor:
        """Not available: raises ``NotImplementedError`` (see the class docstring)."""
        raise NotImplementedError(
            "GumbelSinkhorn has no tractable density (Mena et al. 2018 train with a surrogate), so "
            "log_prob is not defined. Use GumbelSinkhornStraightThrough for exact permutation "
            "values, or a KL surrogate in the model: sample the perturbed scores "
            "dist.Gumbel(scores, 1.0).to_event(2) at the site and apply "
            "pyro_concrete.ops.sinkhorn.log_sinkhorn(x / temperature, num_iters) to them."
        )


class GumbelSinkhornStraightThrough(_PermutationFamily):
    r"""A random permutation matrix, the optimal assignment of Gumbel-perturbed scores, with the
    Gumbel-Sinkhorn gradient.

    The value is exactly the permutation matrix ``P`` maximising ``Σ_ij P_ij (scores + G)_ij``
    (:func:`~pyro_concrete.ops.sinkhorn.hard_assignment`, ``G`` standard Gumbel noise): entries
    exactly ``0.0`` and ``1.0``, one ``1.0`` in each row and column. :meth:`rsample` attaches
    the gradient of the Sinkhorn relaxation of the same noise, ``hard + (soft - soft.detach())``
    with ``soft`` the :class:`GumbelSinkhorn` sample: the forward value is bitwise the
    permutation, and the derivatives of every order with respect to ``scores`` and
    ``temperature`` are the soft sample's. :meth:`sample` returns the permutation without
    computing the relaxation. The assignment runs on the CPU with SciPy (per matrix), so this
    class needs SciPy and does not work under ``torch.func`` transforms.

    **No probability mass function.** The law of the perturbed assignment (perturb-and-MAP)
    has no known closed form for ``n >= 3``: :meth:`log_prob` raises
    ``NotImplementedError``. Use :meth:`rsample` in an objective that does not score the value,
    or the surrogate described in :class:`GumbelSinkhorn`.

    Args:
        temperature (float or Tensor): positive finite temperature of the relaxation that
            gives the gradient, one per matrix. May require grad.
        scores (Tensor): ``(..., n, n)`` finite scores, ``n >= 2``. May require grad.
        num_iters (int): Sinkhorn iterations of the relaxation (>= 1).
        validate_args (bool, optional): whether to validate arguments (torch's default if
            None).

    Example::

        >>> scores = torch.randn(3, 3, requires_grad=True)
        >>> d = GumbelSinkhornStraightThrough(0.5, scores)
        >>> p = d.rsample((5,))          # (5, 3, 3) permutation matrices
        >>> bool(d.support.check(p).all())
        True
        >>> (p * torch.randn(3, 3)).sum().backward()   # the Gumbel-Sinkhorn gradient
    """

    support = constraints.permutation_matrix

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        noise = self._noise(sample_shape)
        hard = hard_assignment(self.scores.detach().to(noise.dtype) + noise).to(self.scores.dtype)
        if not (torch.is_grad_enabled() and (self.scores.requires_grad or self.temperature.requires_grad)):
            return hard
        soft = gumbel_sinkhorn_log_sample(self.scores, self.temperature, noise, self.num_iters).exp()
        return hard + (soft - soft.detach())

    def log_prob(self, value: Tensor) -> Tensor:
        """Not available: raises ``NotImplementedError`` (see the class docstring)."""
        raise NotImplementedError(
            "GumbelSinkhornStraightThrough has no log_prob: the law of the optimal assignment of "
            "Gumbel-perturbed scores has no known closed form. Use rsample in an objective that "
            "does not score the value, or a KL surrogate in the model (see GumbelSinkhorn's "
            "docstring: sample dist.Gumbel(scores, 1.0).to_event(2) and apply the Sinkhorn or "
            "hard_assignment to it)."
        )
