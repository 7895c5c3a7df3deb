"""Constraints of pyro_concrete: the simplex and the log-simplex, k-hot vectors and the
k-hypersimplex, permutation, doubly- and column-stochastic matrices.

torch's ``constraints.simplex`` accepts ``|sum(x) - 1| < 1e-6`` whatever the dtype and
the number of categories ``K``, which rejects correctly rounded float32 points for large
``K`` (a float32 sum of 1000 terms is off by up to about 1e-4 in the worst case). The
constraints here accept ``|sum(x) - 1| <= max(1e-6, 4 K eps)``: never stricter than
torch's, and looser only by the rounding error that summing ``K`` floats can carry.

**Validation policy for cast values.** ``eps`` is that of float32 or of the value's dtype,
whichever is coarser: a point computed in float32 and then cast to float64 (a sample of a
float32 distribution scored by a float64 one, data stored in float32) carries float32's
rounding, which float64's ``eps`` would reject. A value is therefore accepted when it is a
point of the support rounded to float32 or finer, whatever dtype it is held in.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

__all__ = [
    "KHot",
    "KHypersimplex",
    "Pinned",
    "column_stochastic",
    "doubly_stochastic",
    "log_simplex",
    "permutation_matrix",
    "positive_finite",
    "simplex",
    "sum_tolerance",
]


def sum_tolerance(value: Tensor) -> float:
    """Largest ``|sum(x) - 1|`` accepted for a rounded point of the simplex.

    Each of the ``K`` terms and each partial sum carries a rounding error of at most
    about one unit in the last place, so the sum of a correctly rounded point is off by
    at most a small multiple of ``K eps``; torch's fixed ``1e-6`` is kept as the floor.
    ``eps`` is never finer than float32's (see the module docstring: values cast from float32
    validate).
    """
    eps = max(torch.finfo(value.dtype).eps, torch.finfo(torch.float32).eps)
    return max(1e-6, 4.0 * value.shape[-1] * eps)


class _Simplex(constraints.Constraint):
    """Nonnegative vectors in the rightmost dimension that sum to one within rounding."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        in_range = (value >= 0).all(-1)
        return in_range & ((value.sum(-1) - 1).abs() <= sum_tolerance(value))


class _LogSimplex(constraints.Constraint):
    """Log-probability vectors: ``y <= 0``, not NaN, and ``logsumexp(y) == 0`` within rounding.

    ``-inf`` entries are allowed (a masked category's, whose probability is exactly 0); a row
    of ``-inf`` only is not (its logsumexp is ``-inf``).
    """

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        in_range = (value <= 0).all(-1)  # False for NaN
        return in_range & (value.logsumexp(-1).abs() <= sum_tolerance(value))


class _PositiveFinite(constraints.Constraint):
    """Positive, finite reals (a temperature of ``inf`` or ``nan`` is not a temperature)."""

    event_dim = 0

    def check(self, value: Tensor) -> Tensor:
        return (value > 0) & (value < torch.inf)


class Pinned(constraints.Constraint):
    """Real numbers, except the ``pinned`` entries, which hold ``values`` (``±inf``).

    The logits of a guided site whose prior rules some outcomes out (masked categories,
    Bernoulli probabilities 0 or 1): the guide never draws them, and the unconstrained
    parameter (finite, ``0`` at pinned entries) gets zero gradient there.
    """

    is_discrete = False

    def __init__(self, pinned: Tensor, values: Tensor, event_dim: int) -> None:
        self.pinned = pinned
        self.values = values
        self.event_dim = event_dim
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        pinned, values = self.pinned.to(value.device), self.values.to(value.device, value.dtype)
        ok = torch.where(pinned, value == values, torch.isfinite(value))
        return ok.flatten(ok.dim() - self.event_dim).all(-1) if self.event_dim else ok


class KHypersimplex(constraints.Constraint):
    """Points of the k-hypersimplex: entries in ``[0, 1]`` that sum to ``k`` within rounding
    (``k`` times :func:`sum_tolerance`), in the rightmost dimension."""

    event_dim = 1

    def __init__(self, k: int) -> None:
        self.k = k
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        in_range = ((value >= 0) & (value <= 1)).all(-1)
        return in_range & ((value.sum(-1) - self.k).abs() <= self.k * sum_tolerance(value))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"


class KHot(constraints.Constraint):
    """k-hot vectors: entries exactly ``0`` or ``1``, exactly ``k`` ones, in the rightmost dimension."""

    is_discrete = True
    event_dim = 1

    def __init__(self, k: int) -> None:
        self.k = k
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        binary = ((value == 0) | (value == 1)).all(-1)
        return binary & (value.sum(-1) == self.k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"


class _DoublyStochastic(constraints.Constraint):
    """``(..., n, n)`` matrices with entries in ``[0, 1]`` whose rows and columns each sum to 1
    within ``atol`` (the Birkhoff polytope, to the tolerance a finite Sinkhorn iteration
    reaches). NaN is never in it."""

    event_dim = 2

    def __init__(self, atol: float = 1e-3) -> None:
        self.atol = atol
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        in_range = ((value >= 0) & (value <= 1)).flatten(-2).all(-1)
        rows = ((value.sum(-1) - 1).abs() <= self.atol).all(-1)
        columns = ((value.sum(-2) - 1).abs() <= self.atol).all(-1)
        return in_range & rows & columns

    def __repr__(self) -> str:
        return f"DoublyStochastic(atol={self.atol:g})"


class _PermutationMatrix(constraints.Constraint):
    """``(..., n, n)`` permutation matrices: entries exactly 0 or 1, one 1 in each row and
    each column."""

    is_discrete = True
    event_dim = 2

    def check(self, value: Tensor) -> Tensor:
        binary = ((value == 0) | (value == 1)).flatten(-2).all(-1)
        return binary & (value.sum(-1) == 1).all(-1) & (value.sum(-2) == 1).all(-1)

    def __repr__(self) -> str:
        return "PermutationMatrix()"


class _ColumnStochastic(constraints.Constraint):
    """``(..., n, n)`` matrices with entries in ``[0, 1]`` whose columns each sum to 1 within
    rounding (:func:`sum_tolerance`): the samples of a Gumbel-Sinkhorn iteration, which ends
    with a column normalisation, whatever its rows have converged to."""

    event_dim = 2

    def check(self, value: Tensor) -> Tensor:
        in_range = ((value >= 0) & (value <= 1)).flatten(-2).all(-1)
        return in_range & ((value.sum(-2) - 1).abs() <= sum_tolerance(value.transpose(-1, -2))).all(-1)

    def __repr__(self) -> str:
        return "ColumnStochastic()"


simplex = _Simplex()
log_simplex = _LogSimplex()
positive_finite = _PositiveFinite()
doubly_stochastic = _DoublyStochastic()
column_stochastic = _ColumnStochastic()
permutation_matrix = _PermutationMatrix()
