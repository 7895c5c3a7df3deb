"""Constraints of pyro_concrete: the probability simplex and the log-simplex.

torch's ``constraints.simplex`` accepts ``|sum(x) - 1| < 1e-6`` whatever the dtype and
the number of categories ``K``, which rejects correctly rounded float32 points for large
``K`` (a float32 sum of 1000 terms is off by up to about 1e-4 in the worst case). The
constraints here accept ``|sum(x) - 1| <= max(1e-6, 4 K eps)``: never stricter than
torch's, and looser only by the rounding error that summing ``K`` floats can carry.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

__all__ = ["log_simplex", "positive_finite", "simplex", "sum_tolerance"]


def sum_tolerance(value: Tensor) -> float:
    """Largest ``|sum(x) - 1|`` accepted for a rounded point of the simplex.

    Each of the ``K`` terms and each partial sum carries a rounding error of at most
    about one unit in the last place, so the sum of a correctly rounded point is off by
    at most a small multiple of ``K eps``; torch's fixed ``1e-6`` is kept as the floor.
    """
    return max(1e-6, 4.0 * value.shape[-1] * torch.finfo(value.dtype).eps)


class _Simplex(constraints.Constraint):
    """Nonnegative vectors in the rightmost dimension that sum to one within rounding."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        in_range = (value >= 0).all(-1)
        return in_range & ((value.sum(-1) - 1).abs() <= sum_tolerance(value))


class _LogSimplex(constraints.Constraint):
    """Finite log-probability vectors: ``y <= 0`` and ``logsumexp(y) == 0`` within rounding."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        in_range = ((value <= 0) & (value > -torch.inf)).all(-1)
        return in_range & (value.logsumexp(-1).abs() <= sum_tolerance(value))


class _PositiveFinite(constraints.Constraint):
    """Positive, finite reals (a temperature of ``inf`` or ``nan`` is not a temperature)."""

    event_dim = 0

    def check(self, value: Tensor) -> Tensor:
        return (value > 0) & (value < torch.inf)


simplex = _Simplex()
log_simplex = _LogSimplex()
positive_finite = _PositiveFinite()
