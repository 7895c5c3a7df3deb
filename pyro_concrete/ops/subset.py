r"""Kernels of the subset (top-k) family: Gumbel-top-k samples, their relaxation, the set's law.

**Gumbel-top-k** (Kool et al. 2019). The ``k`` largest of ``θ + G`` (``G`` iid standard Gumbel)
are a sample of ``k`` items *without replacement* from ``softmax(θ)``: the order in which they
rank is that of successive draws, and the set ``S`` they form has the probability of the
unordered sample.

**The relaxation** (the entropy-regularised top-k of Paulus et al. 2020, "Gradient estimation
with stochastic softmax tricks"): the point of the k-hypersimplex
``{y : 0 ≤ y_i ≤ 1, Σ y_i = k}`` that maximises ``<θ + G, y> + τ H(y)``, with ``H`` the sum of
the binary entropies of the ``y_i``. Its solution is ``y_i = sigmoid((θ_i + G_i - c) / τ)`` for
the threshold ``c`` at which ``Σ y_i = k``, and it tends to the k-hot vector of the
Gumbel-top-k set of the same noise as ``τ → 0``. Xie & Ermon's relaxation (``k`` successive
softmaxes, each removing the chosen item with ``log(1 - a)``) was tried first and rejected: at
finite temperature an item can be chosen twice, so entries exceed 1 (1.96 was seen at
``τ = 0.01`` for two close keys): it is not a point of the k-hypersimplex.

**The probability of a set** (Kool et al. 2020, eq. 4): with ``w = exp(θ)`` and
``a_i = w_i / Σ_{j ∉ S} w_j``,

.. math:: P(S) = \int_0^1 \prod_{i \in S} \big(1 - u^{a_i}\big)\,du
               = \int_{-\infty}^{\infty} \exp\Big(t - e^{t}
                 + \sum_{i \in S} \log\big(1 - e^{-a_i e^{t}}\big)\Big)\,dt,

(``u = exp(-e^t)``). The second integrand is analytic in the strip ``|Im t| < π/2`` and falls
like ``e^{(k+1) t}`` below and like ``exp(-e^t)`` above, so the trapezoid rule on a fixed grid
(from ``-42`` to ``log(k + 1) + 4``, step ``1/4``, or ``0.5 / sqrt(k)`` from ``k = 4`` on, since
the peak narrows with ``k``: about 190 nodes for small ``k``, 1,000 at ``k = 100``) gives
``log P(S)`` in float64 to about ``1e-11`` relative, for any logits (the grid depends on ``k``
only; the tests compare it with the sum over the ``k!`` orders of the draws, and with
``-log C(K, k)`` for uniform logits up to ``k = 100``). For ``k = 1`` it is ``softmax(θ)_i``.
The cost is ``O(k · nodes)`` per row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..parameters import compute_dtype
from .concrete import shifted_logits, structural_zeros

__all__ = ["relaxed_top_k", "subset_log_prob", "top_k_hot"]

_BISECTION_STEPS = 40  # brackets the threshold to 520 / 2**40 = 5e-10 (units of τ); Newton does the rest
_NEWTON_STEPS = 3
_SPAN = 200.0  # keys beyond ±200 τ of the k-th largest saturate: sigmoid(±140) is 0 or 1
_QUADRATURE_STEP = 0.25
_QUADRATURE_LOWER = -42.0


def top_k_hot(scores: Tensor, k: int) -> Tensor:
    """The k-hot vector ``(..., K)`` of the ``k`` largest ``scores`` of each row (no gradient)."""
    index = scores.detach().topk(k, dim=-1).indices
    return torch.zeros_like(scores).scatter_(-1, index, 1.0)


def relaxed_top_k(logits: Tensor, temperature: Tensor, gumbel: Tensor, k: int) -> Tensor:
    """The entropy-regularised top-k of the perturbed logits (see the module docstring).

    ``y_i = sigmoid((θ_i + G_i - c) / τ)`` with the threshold ``c`` for which ``Σ y_i = k``:
    ``c`` is bracketed by bisection (without gradient), then refined by Newton steps that carry
    the gradient: at the root each step's derivative is the implicit one, and the steps are
    repeated so that the second derivatives agree too (``gradgradcheck`` in the tests).

    Args:
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (``-inf`` masks an item),
            broadcastable to ``gumbel``.
        temperature (Tensor): one temperature per row, broadcastable with ``gumbel.shape[:-1]``.
        gumbel (Tensor): standard Gumbel noise of the sample's shape ``(..., K)``.
        k (int): the subset size, ``1 <= k <=`` the unmasked items of every row.

    Returns:
        Tensor: ``y`` of ``gumbel``'s shape in ``logits``' dtype: a point of the
        k-hypersimplex (``0 <= y_i <= 1``, ``Σ y_i = k`` to rounding), exact ``0`` at masked
        items and exact ``1`` at every unmasked item of a row with only ``k`` of them;
        differentiable with respect to ``logits`` and ``temperature``.

    Example::

        >>> from pyro_concrete.ops import draw_gumbel
        >>> g = draw_gumbel(torch.Size([5, 4]), torch.float64, torch.device("cpu"))
        >>> y = relaxed_top_k(torch.zeros(4, dtype=torch.float64), torch.tensor(0.5), g, 2)
        >>> bool(torch.allclose(y.sum(-1), torch.full((5,), 2.0, dtype=torch.float64)))
        True
    """
    out_dtype = logits.dtype
    dtype = compute_dtype(out_dtype)
    theta, masked = shifted_logits(logits)
    tau = temperature.to(dtype).unsqueeze(-1)
    perturbed = theta.to(dtype) + gumbel.to(dtype)
    free = torch.ones_like(perturbed, dtype=torch.bool) if masked is None else ~masked.expand_as(perturbed)
    if masked is not None:  # masked keys are -inf, reached without an infinite derivative
        perturbed = torch.where(free, perturbed, torch.zeros_like(perturbed))
    # Keys in units of τ, centred on the k-th largest perturbed logit (detached: a shift of every
    # key changes no derivative) before dividing, so that the threshold is found at the scale of
    # the keys, not of the logits (float32 keys of 1e8 are 16 apart). Only keys within a few
    # dozen of 0 can be fractional: the others saturate at ±_SPAN (derivative 0).
    kth = perturbed.detach().masked_fill(~free, -torch.inf).topk(k, -1).values[..., -1:]
    keys = ((perturbed - kth) / tau).clamp(-_SPAN, _SPAN)
    if masked is not None:
        keys = torch.where(free, keys, torch.full_like(keys, -torch.inf))
    low_end, high_end = -_SPAN - 60.0, _SPAN + 60.0
    with torch.no_grad():
        low = torch.full_like(kth, low_end)
        high = torch.full_like(kth, high_end)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (low + high)
            above = torch.sigmoid(keys - mid).sum(-1, keepdim=True) > k
            low, high = torch.where(above, mid, low), torch.where(above, high, mid)
        threshold = 0.5 * (low + high)
    # Where every y_i has saturated at 0 or 1 (slope below eps) the threshold is left as
    # bisected: y then has derivative 0, and a Newton step would divide rounding by ~0. A step
    # never leaves the bracket.
    eps = torch.finfo(dtype).eps
    for _ in range(_NEWTON_STEPS):
        y = torch.sigmoid(keys - threshold)
        slope = (y * (1 - y)).sum(-1, keepdim=True)
        steep = slope > eps
        step = (y.sum(-1, keepdim=True) - k) / torch.where(steep, slope, torch.ones_like(slope))
        threshold = (threshold + torch.where(steep, step, torch.zeros_like(step))).clamp(low_end, high_end)
    y = torch.sigmoid(keys - threshold)
    if masked is not None:
        y = y.masked_fill(~free, 0.0)
    return y.to(out_dtype)


def _log_one_minus_exp_neg_exp(z: Tensor) -> Tensor:
    """``log(1 - exp(-e^z))``: ``z - e^z / 2`` below ``-20`` (error ``O(e^{2z})``),
    ``-exp(-e^z)`` above 4, else direct. Derivatives are finite everywhere."""
    small, large = z < -20.0, z > 4.0
    direct = torch.log(-torch.expm1(-torch.exp(z.clamp(-20.0, 4.0))))
    tiny = z.clamp(max=-20.0)
    # above 4, 1 - exp(-e^z) is within e^-54 of 1: log ≈ -exp(-e^z), with e^z kept finite
    near_one = -torch.exp(-torch.exp(z.clamp(4.0, 80.0)))
    return torch.where(small, tiny - 0.5 * torch.exp(tiny), torch.where(large, near_one, direct))


def _quadrature_step(k: int) -> float:
    """The trapezoid step: 1/4, finer for large ``k`` (the integrand's peak narrows like
    ``1/sqrt(k)``): ``0.5 / sqrt(k)`` from ``k = 4`` on."""
    return min(_QUADRATURE_STEP, 0.5 / math.sqrt(k))


def _quadrature_nodes(k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    upper = math.log(k + 1) + 4.0
    step = _quadrature_step(k)
    n = math.ceil((upper - _QUADRATURE_LOWER) / step) + 1
    return _QUADRATURE_LOWER + step * torch.arange(n, dtype=dtype, device=device)


def subset_log_prob(logits: Tensor, value: Tensor, k: int) -> Tensor:
    r"""``log P(S)`` of the set ``S`` that a k-hot ``value`` marks, under Gumbel-top-k.

    The probability that the ``k = Σ value`` largest of ``logits + G`` are the items of
    ``S``: that of drawing them, in any order, without replacement (see the module
    docstring for the integral and its quadrature).

    Args:
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (``-inf`` masks an item).
        value (Tensor): ``(..., K)`` 0/1 with ``k`` ones in every row, broadcastable with
            ``logits``.
        k (int): the subset size (it sets the quadrature grid; read from no value, so that the
            kernel works under ``torch.func`` and ``torch.compile``).

    Returns:
        Tensor: ``log P(S)`` of the broadcast batch shape, computed in float64 and returned
        in the compute dtype of ``logits`` (float32 for half precision): ``-inf`` where ``S``
        holds a masked item, ``0`` where ``S`` holds every unmasked item; differentiable with
        respect to ``logits`` to every order.

    Example::

        >>> logits = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
        >>> value = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
        >>> p = subset_log_prob(logits, value, 2).exp()   # p(0)p(2|0) + p(2)p(0|2)
        >>> w = logits.exp() / logits.exp().sum()
        >>> bool(torch.isclose(p, w[0] * w[2] / (1 - w[0]) + w[2] * w[0] / (1 - w[2])))
        True
    """
    logits, value = torch.broadcast_tensors(logits, value)
    # float64 throughout: a float32 logsumexp of integrands near -1e4 rounds the weights its
    # backward uses (a 1e-2 bias of the gradient was measured at logits 1e4 apart)
    out_dtype = compute_dtype(logits.dtype)
    dtype = torch.float64
    chosen = value > 0.5
    masked = structural_zeros(logits)
    theta, _ = shifted_logits(logits)
    theta = theta.to(dtype)
    # log a_i = θ_i - logsumexp of the items outside S (masked ones excluded)
    outside = theta.masked_fill(chosen | masked, -torch.inf).logsumexp(-1, keepdim=True)
    none_outside = torch.isneginf(outside)  # S holds every unmasked item: P(S) = 1
    log_a = theta - torch.where(none_outside, torch.zeros_like(outside), outside)
    bad = (chosen & masked).any(-1)  # a masked item in S: P(S) = 0
    safe_log_a = torch.where(chosen & ~masked, log_a, torch.zeros_like(log_a))
    t = _quadrature_nodes(max(k, 1), dtype, logits.device)  # (n,)
    # log(1 - exp(-a e^t)) for the items of S: (..., n, K), 0 for the others
    z = safe_log_a.unsqueeze(-2) + t.unsqueeze(-1)
    in_set = (chosen & ~masked).unsqueeze(-2)
    terms = torch.where(in_set, _log_one_minus_exp_neg_exp(z), torch.zeros_like(z))
    log_integrand = t - torch.exp(t) + terms.sum(-1)
    ends = torch.zeros_like(t)
    ends[0] = ends[-1] = math.log(0.5)
    log_p = torch.logsumexp(log_integrand + ends, -1) + math.log(_quadrature_step(max(k, 1)))
    log_p = torch.where(none_outside.squeeze(-1), torch.zeros_like(log_p), log_p)
    return torch.where(bad, torch.full_like(log_p, -torch.inf), log_p).to(out_dtype)
