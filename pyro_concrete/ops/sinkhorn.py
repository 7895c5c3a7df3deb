"""Kernels of the permutation family: Sinkhorn normalisation and the exact assignment.

Notation: ``scores`` S, an ``(..., n, n)`` batch of real matrices; temperature τ > 0, one per
matrix; standard Gumbel noise ``G`` of the matrices' shape. The Gumbel-Sinkhorn sample
(Mena, Belanger, Linderman & Snoek 2018) is ``exp(log_sinkhorn((S + G) / τ, L))``, a matrix
that is doubly stochastic to the tolerance ``L`` iterations give; as ``τ → 0`` (and
``L → ∞``) it tends to the permutation matrix ``P`` maximising ``Σ_ij P_ij (S + G)_ij``, which
:func:`hard_assignment` computes exactly.

:func:`log_sinkhorn` and :func:`gumbel_sinkhorn_log_sample` are compositions of differentiable
torch operations: derivatives of every order, ``torch.func`` (``grad``, ``jacrev``, ``vmap``)
and ``torch.jit.trace`` work as for any torch code. Half-precision inputs are computed in
float32 and rounded back (see :func:`~pyro_concrete.parameters.compute_dtype`).
:func:`hard_assignment` solves a linear assignment problem per matrix with SciPy on the CPU:
it has no derivative and is not for ``torch.func`` transforms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_int
from ..parameters import Number, compute_dtype, kernel_temperature

__all__ = ["gumbel_sinkhorn_log_sample", "hard_assignment", "log_sinkhorn"]


def check_square(name: str, value: Tensor) -> int:
    """``n`` for a ``(..., n, n)`` tensor; ``ValueError`` naming ``name`` otherwise (not
    checked while ``torch.jit.trace`` records, where the comparison would be recorded too)."""
    if not torch.jit.is_tracing() and (value.dim() < 2 or value.shape[-1] != value.shape[-2]):
        raise ValueError(
            f"{name} must be a batch of square matrices (..., n, n), got shape {tuple(value.shape)}"
        )
    return value.shape[-1]


def _normalise(x: Tensor, dim: int) -> Tensor:
    """``x - logsumexp(x, dim)``, computed after a shift by the detached maximum along ``dim``.

    ``x - logsumexp(x)`` is invariant to shifting ``x`` along ``dim``, so the shift changes no
    derivative of any order; it keeps the result accurate to the rounding of ``x - max``
    rather than of ``x`` (entries of size ``1 / τ`` at low temperature).
    """
    x = x - x.detach().amax(dim, keepdim=True)
    return x - x.logsumexp(dim, keepdim=True)


def log_sinkhorn(log_alpha: Tensor, num_iters: int) -> Tensor:
    """Sinkhorn normalisation in log space: ``num_iters`` times, normalise the rows, then the
    columns.

    Each iteration subtracts ``logsumexp`` over the last dimension (rows), then over
    dimension -2 (columns). The result is the log of a matrix with positive entries whose
    columns sum to 1 to rounding (the last step normalises them) and whose rows sum to 1 to
    the tolerance the iterations reach: the iteration converges to the doubly-stochastic
    matrix ``diag(u) exp(log_alpha) diag(v)`` (Sinkhorn 1964), slowly where the entries of
    ``log_alpha`` are far apart (low temperature: use more iterations there).

    Args:
        log_alpha (Tensor): ``(..., n, n)`` finite scores.
        num_iters (int): number of row-and-column iterations (>= 1).

    Returns:
        Tensor: ``(..., n, n)``, of ``log_alpha``'s dtype, differentiable to every order.

    Example::

        >>> log_p = log_sinkhorn(torch.randn(2, 4, 4, dtype=torch.float64), num_iters=200)
        >>> p = log_p.exp()
        >>> bool(torch.allclose(p.sum(-1), torch.ones(2, 4, dtype=torch.float64)))
        True
        >>> bool(torch.allclose(p.sum(-2), torch.ones(2, 4, dtype=torch.float64)))
        True
    """
    num_iters = check_int("num_iters", num_iters, minimum=1)
    check_square("log_alpha", log_alpha)
    out_dtype = log_alpha.dtype
    x = log_alpha.to(compute_dtype(out_dtype))
    for _ in range(num_iters):
        x = _normalise(x, -1)
        x = _normalise(x, -2)
    return x.to(out_dtype)


def gumbel_sinkhorn_log_sample(
    scores: Tensor, temperature: Tensor | Number, gumbel: Tensor, num_iters: int
) -> Tensor:
    """Reparameterised Gumbel-Sinkhorn sample in log space, from given Gumbel noise.

    ``log_sinkhorn((scores + gumbel) / temperature, num_iters)`` (Mena et al. 2018). The
    scores are shifted by their detached row maxima before the noise is added, and the sum
    by its own after: the first row normalisation removes any row shift, so no derivative
    changes, and scores far from 0 (``1e4 + S`` in float32) keep the noise's precision.

    Args:
        scores (Tensor): ``(..., n, n)`` finite scores, broadcastable to ``gumbel``.
        temperature (float or Tensor): one per matrix, broadcastable with
            ``gumbel.shape[:-2]``. Values are not checked here.
        gumbel (Tensor): standard Gumbel noise of the sample's shape ``(..., n, n)``.
        num_iters (int): Sinkhorn iterations (>= 1).

    Returns:
        Tensor: the broadcast shape, of ``scores``' dtype, differentiable with respect to
        ``scores`` and ``temperature`` to every order; its ``exp`` is the sample.

    Example::

        >>> from pyro_concrete.ops import draw_gumbel
        >>> g = draw_gumbel(torch.Size([5, 3, 3]), torch.float64, torch.device("cpu"))
        >>> scores = torch.randn(3, 3, dtype=torch.float64)
        >>> x = gumbel_sinkhorn_log_sample(scores, 1.0, g, num_iters=100).exp()
        >>> x.shape
        torch.Size([5, 3, 3])
        >>> bool(torch.allclose(x.sum(-2), torch.ones(5, 3, dtype=torch.float64)))
        True
    """
    num_iters = check_int("num_iters", num_iters, minimum=1)
    check_square("scores", scores)
    check_square("gumbel", gumbel)
    out_dtype = scores.dtype
    dtype = compute_dtype(out_dtype)
    tau = kernel_temperature(temperature, scores, 2).to(dtype)
    theta = scores.to(dtype)
    a = (theta - theta.detach().amax(-1, keepdim=True)) + gumbel.to(dtype)
    a = a - a.detach().amax(-1, keepdim=True)
    return log_sinkhorn(a / tau[..., None, None], num_iters).to(out_dtype)


def hard_assignment(scores: Tensor) -> Tensor:
    """The permutation matrix ``P`` maximising ``Σ_ij P_ij scores_ij``, for every matrix.

    Solved exactly by ``scipy.optimize.linear_sum_assignment(..., maximize=True)`` on a
    detached float64 CPU copy (exact for every float dtype), one matrix at a time. With ties
    (probability 0 for continuous noise) one of the optimal permutations is returned. SciPy
    is needed here (it comes with the ``test`` extra).

    Args:
        scores (Tensor): ``(..., n, n)`` finite scores.

    Returns:
        Tensor: ``(..., n, n)`` of ``scores``' dtype and device, entries exactly ``0.0`` and
        ``1.0``, one ``1.0`` in each row and each column. No gradient.

    Raises:
        ValueError: ``scores`` is not a batch of square matrices, or has a non-finite entry.

    Example::

        >>> hard_assignment(torch.tensor([[1.0, 3.0], [0.0, 1.0]]))   # 3 + 0 beats 1 + 1
        tensor([[0., 1.],
                [1., 0.]])
    """
    n = check_square("scores", scores)
    if scores.numel() == 0 or scores.device.type == "meta":  # nothing to assign, or shapes only
        return torch.zeros_like(scores, requires_grad=False)
    try:
        from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("hard_assignment needs SciPy: pip install scipy") from error
    import numpy as np

    matrices = scores.detach().reshape(-1, n, n).to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(matrices).all():
        raise ValueError(f"scores must be finite, got non-finite entries in\n{scores}")
    columns = np.empty(matrices.shape[:2], dtype=np.int64)
    for k, matrix in enumerate(matrices):
        columns[k] = linear_sum_assignment(matrix, maximize=True)[1]  # rows come out as 0..n-1
    index = torch.from_numpy(columns).to(scores.device).reshape(scores.shape[:-1] + (1,))
    zeros = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
    return zeros.scatter_(-1, index, 1.0)
