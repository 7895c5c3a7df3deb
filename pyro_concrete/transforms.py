"""Transforms for the constraints of pyro_concrete, registered with torch's registries.

Importing :mod:`pyro_concrete` registers, for the package's own constraint classes only
(:mod:`pyro_concrete.constraints`), a transform with torch's
:data:`~torch.distributions.biject_to` (bijections, used by HMC/NUTS and by Pyro's
autoguides such as ``AutoNormal``) and :data:`~torch.distributions.transform_to` (used by
``pyro.param(..., constraint=...)`` and Pyro's initialisation):

=================================  ===============================  ==============================
constraint                         ``biject_to``                    ``transform_to``
=================================  ===============================  ==============================
``positive_finite``                ``ExpTransform``                 ``ExpTransform``
``simplex``                        ``StickBreakingTransform``       ``SoftmaxTransform``
``log_simplex``                    :class:`LogSimplexTransform`     :class:`LogSoftmaxTransform`
=================================  ===============================  ==============================

the same choices torch makes for its own ``positive`` and ``simplex`` constraints.
Registration is keyed by the package's constraint *classes*, so torch's and Pyro's own
constraints keep their transforms; registering again (e.g. on a module reload) replaces
an entry by an equal one.

The log-simplex bijection ``u -> log_softmax([u, 0])`` maps the log-ratio coordinates
``u_k = y_k - y_K`` (``k < K``) to the log-probability vector ``y``. The density of
:class:`~pyro_concrete.ExpConcrete` is defined with respect to Lebesgue measure on exactly
these coordinates, so the transform's ``log_abs_det_jacobian`` relative to that measure is
``0``: ``ExpConcrete(...).log_prob(T(u))`` *is* the log-density of ``u`` on ``R^{K-1}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import biject_to, transform_to
from torch.distributions import constraints as torch_constraints
from torch.distributions.transforms import (
    ExpTransform,
    SoftmaxTransform,
    StickBreakingTransform,
    Transform,
)

from . import constraints

__all__ = ["LogSimplexTransform", "LogSoftmaxTransform", "PinTransform", "register_transforms"]


class LogSimplexTransform(Transform):
    r"""Bijection from ``R^{K-1}`` to the log-simplex: ``u -> log_softmax([u, 0])``.

    The inverse is ``y -> y[..., :-1] - y[..., -1:]``, the log-ratios to the last
    component. ``log_abs_det_jacobian`` is ``0``: the log-simplex is measured by Lebesgue
    measure on the log-ratio coordinates ``u`` (the measure of
    :class:`~pyro_concrete.ExpConcrete`'s density, equivalently ``dx / prod_k x_k`` on the
    simplex), so a density ``p_Y`` on the log-simplex pulls back to ``p_U(u) = p_Y(T(u))``.

    Shapes: ``(..., K-1) -> (..., K)``.

    Example::

        >>> t = LogSimplexTransform()
        >>> y = t(torch.tensor([0.0, 1.0]))          # log-probabilities, 3 categories
        >>> bool(torch.allclose(y.exp().sum(), torch.tensor(1.0)))
        True
        >>> t.inv(y)
        tensor([0., 1.])
    """

    domain = torch_constraints.real_vector
    codomain = constraints.log_simplex
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogSimplexTransform)

    def _call(self, u: Tensor) -> Tensor:
        return F.pad(u, (0, 1)).log_softmax(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        return y[..., :-1] - y[..., -1:]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1])

    def forward_shape(self, shape):
        if len(shape) < 1:
            raise ValueError("LogSimplexTransform needs at least one dimension")
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        if len(shape) < 1 or shape[-1] < 1:
            raise ValueError("LogSimplexTransform's inverse needs a last dimension of size >= 1")
        return shape[:-1] + (shape[-1] - 1,)


class LogSoftmaxTransform(Transform):
    r"""Map from ``R^K`` onto the log-simplex: ``x -> log_softmax(x)`` (not bijective).

    The log-space twin of torch's ``SoftmaxTransform``: symmetric in the coordinates and
    convenient for optimisation (``transform_to``), but not injective (adding a constant to
    ``x`` changes nothing), so it has no Jacobian and is not for densities; the inverse
    returns the representative ``y`` itself (``logsumexp(y) = 0``).

    Example::

        >>> y = LogSoftmaxTransform()(torch.zeros(4))  # log(1/4) four times
    """

    domain = torch_constraints.real_vector
    codomain = constraints.log_simplex

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogSoftmaxTransform)

    def _call(self, x: Tensor) -> Tensor:
        return x.log_softmax(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        return y - y.logsumexp(-1, keepdim=True)

    def forward_shape(self, shape):
        if len(shape) < 1:
            raise ValueError("LogSoftmaxTransform needs at least one dimension")
        return shape

    def inverse_shape(self, shape):
        if len(shape) < 1:
            raise ValueError("LogSoftmaxTransform needs at least one dimension")
        return shape


class PinTransform(Transform):
    """``u ↦ where(pinned, values, u)``: unconstrained logits to :class:`~.constraints.Pinned`."""

    bijective = False  # pinned entries forget u

    def __init__(self, constraint: constraints.Pinned, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self._constraint = constraint
        self.domain = torch_constraints.independent(torch_constraints.real, constraint.event_dim)
        self.codomain = constraint

    def __eq__(self, other) -> bool:
        return isinstance(other, PinTransform) and other._constraint is self._constraint

    def with_cache(self, cache_size: int = 1) -> PinTransform:
        return self if self._cache_size == cache_size else PinTransform(self._constraint, cache_size)

    def _call(self, x: Tensor) -> Tensor:
        c = self._constraint
        return torch.where(c.pinned.to(x.device), c.values.to(x.device, x.dtype), x)

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.where(self._constraint.pinned.to(y.device), torch.zeros_like(y), y)


def _exp(constraint) -> Transform:
    return ExpTransform()


def _stick_breaking(constraint) -> Transform:
    return StickBreakingTransform()


def _softmax(constraint) -> Transform:
    return SoftmaxTransform()


def _log_simplex_bijection(constraint) -> Transform:
    return LogSimplexTransform()


def _log_softmax(constraint) -> Transform:
    return LogSoftmaxTransform()


def register_transforms() -> None:
    """Registers the package's constraints with ``biject_to`` and ``transform_to``.

    Called on ``import pyro_concrete``; idempotent (each call stores the same factories
    under the same keys), and keyed only by the package's own constraint classes.
    """
    biject_to.register(constraints.positive_finite, _exp)
    transform_to.register(constraints.positive_finite, _exp)
    biject_to.register(constraints.simplex, _stick_breaking)
    transform_to.register(constraints.simplex, _softmax)
    biject_to.register(constraints.log_simplex, _log_simplex_bijection)
    transform_to.register(constraints.log_simplex, _log_softmax)
    transform_to.register(constraints.Pinned, PinTransform)


register_transforms()
