r"""KL divergences between the distributions of pyro_concrete, registered with torch.

Importing :mod:`pyro_concrete` registers these with :func:`torch.distributions.kl_divergence`
(every pair involves at least one class of this package; nothing of torch's or Pyro's own
pairs changes). Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` calls ``kl_divergence``
for every latent site and uses the exact value where one is registered.

Exact discrete KLs (the temperature and the estimator play no part: the straight-through
classes *are* the categorical and Bernoulli distributions):

- :class:`~pyro_concrete.ConcreteStraightThrough` against torch's (and Pyro's)
  ``OneHotCategorical`` and against itself, both ways:
  ``KL(q || p) = sum_k q_k (log q_k - log p_k)``;
- :class:`~pyro_concrete.BinaryConcreteStraightThrough` against ``Bernoulli`` and against
  itself, both ways.

Relaxed pairs with *equal* temperatures. The map from the noisy logits ``θ + G`` (modulo
a shared constant) to a sample is the same bijection for both distributions, so the KL
does not depend on the common temperature, and it is the same for a distribution and its
log-space twin:

- ``LogitBinaryConcrete``/``BinaryConcrete``: with ``d = θ_q - θ_p`` the difference of
  logits, ``y`` is a Logistic variable shifted by ``d/τ`` at the same scale, and

  .. math:: \mathrm{KL} = d \coth(d/2) - 2 \quad(= d^2/6 + O(d^4)).

- ``ExpConcrete``/``Concrete``: with ``δ = θ_p - θ_q`` (``q`` the first argument), writing
  ``E_k = exp(-G_k)`` (iid Exponential(1)),
  ``KL = -Σ_k δ_k + K (E[log Σ_k e^{δ_k} E_k] - ψ(K))``, and by Frullani's integral with
  ``t = e^s``

  .. math:: \mathrm{KL} = -\sum_k \delta_k + K \int_{-\infty}^{\infty}
            \Big(e^{-K\,\mathrm{softplus}(s)} - e^{-\sum_k \mathrm{softplus}(s + \delta_k)}\Big)\,ds,

  a one-dimensional integral of a function analytic in the strip ``|Im s| < π``, which
  the trapezoid rule with step ``h = 1/4`` evaluates to float64 rounding. The grid is the
  same for every input: ``s`` in ``[-(40 + 2 log K), 40 + log K]`` (see
  :func:`categorical_relaxed_kl` for why nothing beyond matters, whatever the logits), so
  the cost is ``O(K · 350)`` per batch element and memory is bounded for any finite
  logits. For ``K = 2`` this equals the binary closed form above.

Masks (``-inf`` logits, zero probs, or :func:`~pyro_concrete.ops.structural_zeros`'
``finfo.min`` masks). The discrete KLs follow the definition with ``0 log 0 = 0``:
``+inf`` where the first argument has mass on a category (outcome) the second rules out,
finite otherwise, with finite derivatives (zero with respect to masked entries). A Concrete
with masked categories lives on the face of its unmasked categories, so for the relaxed
categorical pairs: with the same masked categories in a row, the KL is that of the two
Concretes over the ``K'`` unmasked categories (``K'`` may differ between rows); with
different masks it is ``+inf`` both ways — where the first argument has mass on a category
the second masks, and also where the first masks a category the second does not (a
distribution on a lower-dimensional face is not absolutely continuous with respect to a
density on a larger one). Binary relaxed pairs likewise: ``±inf`` logits are point masses
at 0 or 1, the KL of two equal ones is 0, of a point mass and anything else ``+inf``. The
returned ``+inf`` has zero gradient. Probabilities given to torch's ``OneHotCategorical`` /
``Bernoulli`` are read as given (torch's own logits clamp a zero probability to ``log(eps)``).

Half-precision inputs (float16, bfloat16) are computed in float32 and the results rounded
back (a KL beyond the dtype's range is ``+inf``).

Relaxed pairs with different temperatures have no known closed form: these functions
raise ``NotImplementedError`` for them, which ``TraceMeanField_ELBO`` answers by falling
back to its Monte Carlo estimate (``log q(z) - log p(z)`` at the guide's sample). The
same happens when either temperature requires grad: the KL's derivative in a temperature
moved away from the other is not given by these formulas (even where they are equal).

Mismatched pairs raise a ``TypeError`` explaining what to change: a relaxed
(continuous) guide against a discrete model site (the KL is ``+inf``: a continuous
distribution is not absolutely continuous with respect to a discrete one; Pyro's ELBOs
would otherwise mix a density with a probability mass, the silent wrong answer of Pyro
issue 2628), and a one-hot guide against an integer-valued ``Categorical`` model site.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, OneHotCategorical, register_kl

from . import _sites, ops
from .distributions import (
    BinaryConcrete,
    BinaryConcreteStraightThrough,
    Concrete,
    ConcreteStraightThrough,
    ExpConcrete,
    LogitBinaryConcrete,
)

__all__ = ["binary_relaxed_kl", "categorical_relaxed_kl"]

_QUADRATURE_STEP = 0.25
_QUADRATURE_TAIL = 40.0
# Taylor coefficients of x coth(x) - 1 in powers of x²: 2^{2n} B_{2n} / (2n)!, n = 1..6.
_COTH_SERIES = (1 / 3, -1 / 45, 2 / 945, -1 / 4725, 2 / 93555, -1382 / 638512875)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for the half-precision dtypes (their range and mantissa are too short for the
    quadrature and the series), the dtype itself otherwise."""
    return torch.promote_types(dtype, torch.float32)


# -- exact discrete KLs ----------------------------------------------------------------


def _kl_terms(log_p: Tensor, zero_p: Tensor, log_q: Tensor, zero_q: Tensor) -> tuple[Tensor, Tensor]:
    """``p (log p - log q)`` per outcome with ``0 log 0 = 0``, and where it is ``+inf``.

    The log-probabilities hold a finite placeholder at structural zeros (see
    :func:`~pyro_concrete._sites.categorical_log_probs`), so every product below is
    finite and so is every derivative; an outcome that ``p`` allows and ``q`` rules out is
    reported in the second result instead of being computed.
    """
    skip = zero_p | zero_q
    terms = torch.where(skip, 0.0, log_p.exp() * (log_p - log_q))
    return terms, ~zero_p & zero_q


def _kl_one_hot(p, q) -> Tensor:
    _sites.note_exact_kl(p)  # TraceMeanField_ELBO: the guide's prior term is exact
    terms, infinite = _kl_terms(*_sites.categorical_log_probs(p), *_sites.categorical_log_probs(q))
    return torch.where(infinite.any(-1), torch.inf, terms.sum(-1))


def _kl_binary(p, q) -> Tensor:
    log_p1, log_p0, zero_p1, zero_p0 = _sites.bernoulli_log_probs(p)
    log_q1, log_q0, zero_q1, zero_q0 = _sites.bernoulli_log_probs(q)
    terms1, infinite1 = _kl_terms(log_p1, zero_p1, log_q1, zero_q1)
    terms0, infinite0 = _kl_terms(log_p0, zero_p0, log_q0, zero_q0)
    return torch.where(infinite1 | infinite0, torch.inf, terms1 + terms0)


register_kl(ConcreteStraightThrough, ConcreteStraightThrough)(_kl_one_hot)
register_kl(ConcreteStraightThrough, OneHotCategorical)(_kl_one_hot)
register_kl(OneHotCategorical, ConcreteStraightThrough)(_kl_one_hot)
register_kl(BinaryConcreteStraightThrough, BinaryConcreteStraightThrough)(_kl_binary)
register_kl(BinaryConcreteStraightThrough, Bernoulli)(_kl_binary)
register_kl(Bernoulli, BinaryConcreteStraightThrough)(_kl_binary)


# -- relaxed pairs of equal temperature ----------------------------------------------------


def _check_same_temperature(p, q) -> None:
    tp, tq = p.temperature, q.temperature
    if tp.requires_grad or tq.requires_grad:
        # Equal now, but the KL's derivative in a learned temperature is not zero in general.
        raise NotImplementedError("KL between relaxed distributions with a learned temperature")
    if not torch._is_all_true(tp == tq):
        raise NotImplementedError("KL between relaxed distributions of different temperatures")


def binary_relaxed_kl(logits_q: Tensor, logits_p: Tensor) -> Tensor:
    r"""``KL(q || p)`` of two binary Concrete distributions of one temperature.

    ``d coth(d / 2) - 2`` with ``d = logits_q - logits_p`` (symmetric in ``d``), evaluated
    as ``d / tanh(d / 2) - 2`` for ``|d| >= 1/2`` and by its Taylor series
    ``d²/6 - d⁴/360 + ...`` below (where the closed form would cancel).

    An infinite logit is a point mass at 0 or 1: two equal ones have KL 0, a point mass
    against anything else ``+inf``; a difference that overflows the dtype gives ``+inf``
    too (the KL is about ``|d|``). Half-precision inputs are computed in float32 and the
    result rounded back.

    Args:
        logits_q (Tensor): logits of the first argument ``q``.
        logits_p (Tensor): logits of ``p``, broadcastable with ``logits_q``.

    Returns:
        Tensor: the KL, of the broadcast shape; ``+inf`` entries have zero gradient.
    """
    logits_q, logits_p = torch.broadcast_tensors(logits_q, logits_p)
    dtype = torch.promote_types(logits_q.dtype, logits_p.dtype)
    work = _work_dtype(dtype)
    # Certain outcomes (infinite logits, or beyond half the dtype's largest float) are point
    # masses, as in the binary kernels.
    point_q, point_p = ops.certain_outcomes(logits_q), ops.certain_outcomes(logits_p)
    logits_q, logits_p = logits_q.to(work), logits_p.to(work)
    point = point_q | point_p
    equal_points = point_q & point_p & ((logits_q > 0) == (logits_p > 0))
    # Placeholders (0) at point masses keep the arithmetic, and so every derivative, finite.
    d = torch.where(point, 0.0, logits_q) - torch.where(point, 0.0, logits_p)
    infinite = (point & ~equal_points) | d.isinf()  # d.isinf(): the difference overflowed
    d = torch.where(infinite, 0.0, d)
    small = d.abs() < 0.5
    d_safe = torch.where(small, torch.ones_like(d), d)
    # 2 x coth(x) - 2 = 2 Σ_n c_n x^{2n} with x = d/2, c_n = 2^{2n} B_{2n} / (2n)!: six terms
    # leave a relative error below 1e-13 for |d| < 1/2; the closed form is exact beyond.
    x2 = (d / 2).square()
    series = torch.zeros_like(d)
    for c in reversed(_COTH_SERIES):
        series = (series + c) * x2
    kl = torch.where(small, 2 * series, d_safe / torch.tanh(d_safe / 2) - 2)
    kl = torch.where(equal_points, 0.0, kl)
    return torch.where(infinite, torch.inf, kl).to(dtype)


def _quadrature_nodes(num_categories: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The trapezoid nodes of :func:`categorical_relaxed_kl`: they depend on ``K`` alone.

    ``s`` from ``-(40 + 2 log K)`` to ``40 + log K`` in steps of ``1/4`` (354 nodes at
    ``K = 16``, 417 at ``K = 1000``); the bounds are derived there.
    """
    log_k = math.log(max(num_categories, 1))
    lower, upper = -(_QUADRATURE_TAIL + 2 * log_k), _QUADRATURE_TAIL + log_k
    n = math.ceil((upper - lower) / _QUADRATURE_STEP) + 1
    return torch.linspace(lower, lower + (n - 1) * _QUADRATURE_STEP, n, dtype=dtype, device=device)


def categorical_relaxed_kl(logits_q: Tensor, logits_p: Tensor) -> Tensor:
    r"""``KL(q || p)`` of two Concrete (or ExpConcrete) distributions of one temperature.

    Evaluates ``-Σ δ + K ∫ (e^{-K softplus(s)} - e^{-Σ_k softplus(s + δ_k)}) ds`` with
    ``δ = logits_p - logits_q`` by the trapezoid rule (see the module docstring); the
    integrand is formed as ``e^{-B} expm1(B - A)`` so that nothing cancels in its tails.

    Masked categories (``-inf`` or ``finfo.min`` logits, see
    :func:`~pyro_concrete.ops.structural_zeros`): a row whose two arguments mask the same
    categories gets the KL over its ``K'`` unmasked categories (``K'`` per row); a row
    whose masks differ gets ``+inf`` (see the module docstring). Half-precision inputs are
    computed in float32 and the result is rounded back.

    Time and memory are ``O(K · 350)`` per batch element for any finite logits: the grid
    does not depend on them (issue 8, item 7: a grid spanning the logits' range took 91 s
    for one logit at ``-1e5`` in a ``(256, 16)`` batch, and ran out of memory at ``-1e9``).

    Args:
        logits_q (Tensor): ``(..., K)`` logits of the first argument ``q``.
        logits_p (Tensor): ``(..., K)`` logits of ``p``, broadcastable with ``logits_q``.

    Returns:
        Tensor: the KL, of the broadcast batch shape; ``+inf`` entries have zero gradient.

    Raises:
        ValueError: if a row has every category masked.
    """
    logits_q, logits_p = torch.broadcast_tensors(logits_q, logits_p)
    dtype = torch.promote_types(logits_q.dtype, logits_p.dtype)
    zero_q, zero_p = ops.structural_zeros(logits_q), ops.structural_zeros(logits_p)
    if logits_q.device.type != "meta" and torch._is_any_true(zero_q.all(-1) | zero_p.all(-1)):
        raise ValueError("categorical_relaxed_kl: a row of logits has every category masked")
    same = (zero_q == zero_p).all(-1, keepdim=True)
    # Categories in the sum: the unmasked ones of a row with equal masks; every one of a row
    # with different masks (its result is +inf; zeros keep its arithmetic finite).
    free = ~zero_q | ~same
    logits_q, logits_p = logits_q.to(_work_dtype(dtype)), logits_p.to(_work_dtype(dtype))
    # The KL is invariant to a constant added to either set of logits. Shifting each row to
    # a maximum of 0 puts every unmasked logit in [-finfo.max / 2, 0], so δ cannot overflow.
    shifted_q = logits_q - logits_q.detach().amax(-1, keepdim=True)
    shifted_p = logits_p - logits_p.detach().amax(-1, keepdim=True)
    masked = zero_q | zero_p
    delta = torch.where(masked, 0.0, shifted_p) - torch.where(masked, 0.0, shifted_q)
    # Then max δ = 0 over the categories in the sum.
    peak = torch.where(free, delta.detach(), -torch.inf).amax(-1, keepdim=True)
    delta = torch.where(free, delta - peak, 0.0)
    used = free.to(delta.dtype)
    k = used.sum(-1)  # K' per row
    # Truncation, for any δ (max δ = 0): with A = K' softplus(s), B = Σ_k softplus(s + δ_k)
    # over the K' categories in the sum, and f = e^{-A} - e^{-B},
    # - for s >= 0: softplus is increasing and softplus(x) > x, so A >= K' s >= s and
    #   B >= softplus(s + 0) > s (the term with δ_k = 0; the others are positive); both
    #   exponentials lie in (0, e^{-s}], so |f| <= e^{-s} and |∫_U^∞ f| <= e^{-U};
    # - for s <= 0: δ_k <= 0 gives 0 <= A - B = Σ_k (softplus(s) - softplus(s + δ_k))
    #   <= K' softplus(s) <= K' e^s, and |f| = e^{-B} (1 - e^{-(A - B)}) <= A - B, so
    #   |∫_{-∞}^L f| <= K' e^L.
    # With U = 40 + log K and L = -(40 + 2 log K) the KL (K' times the integral) loses at
    # most 2 e^{-40} ≈ 8.5e-18 to truncation, whatever the logits. A δ_k far below -U only
    # moves the transition of its softplus beyond U, where both exponentials are already
    # below e^{-40}: the grid need not reach it (which made its size grow with the logits).
    s = _quadrature_nodes(logits_q.shape[-1], delta.dtype, delta.device)
    sp_s = F.softplus(s)  # (n,)
    shifted = F.softplus(s.unsqueeze(-1) + delta.unsqueeze(-2))  # (..., n, K)
    # B - A = Σ_k (softplus(s + δ_k) - softplus(s)) term by term: small and accurate for
    # s -> -inf, where B and A are both small and close.
    b_minus_a = ((shifted - sp_s.unsqueeze(-1)) * used.unsqueeze(-2)).sum(-1)
    b = b_minus_a + k.unsqueeze(-1) * sp_s
    integrand = torch.exp(-b) * torch.expm1(b_minus_a)
    integral = _QUADRATURE_STEP * (integrand.sum(-1) - 0.5 * (integrand[..., 0] + integrand[..., -1]))
    kl = -(delta * used).sum(-1) + k * integral
    return torch.where(same.squeeze(-1), kl, torch.inf).to(dtype)


@register_kl(LogitBinaryConcrete, LogitBinaryConcrete)
@register_kl(BinaryConcrete, BinaryConcrete)
def _kl_binary_relaxed(p, q) -> Tensor:
    _check_same_temperature(p, q)
    return binary_relaxed_kl(p.logits, q.logits)


@register_kl(ExpConcrete, ExpConcrete)
@register_kl(Concrete, Concrete)
def _kl_categorical_relaxed(p, q) -> Tensor:
    _check_same_temperature(p, q)
    return categorical_relaxed_kl(p.logits, q.logits)


# -- mismatched pairs: a clear error instead of a silent wrong answer -----------------------


def _mismatch(p, q, problem: str, advice: str) -> TypeError:
    return TypeError(f"kl_divergence({type(p).__name__}, {type(q).__name__}): {problem}: {advice}.")


def _kl_relaxed_vs_discrete(p, q):
    raise _mismatch(
        p,
        q,
        "a relaxed (continuous) guide for a discrete model site has infinite KL",
        _sites.relaxed_guide_for_discrete_site(binary=p.event_dim == 0),
    )


def _kl_one_hot_vs_integer(p, q):
    raise _mismatch(
        p,
        q,
        "the guide draws one-hot vectors but the model's Categorical site takes integer indices",
        _sites.one_hot_for_integer_site(),
    )


for _relaxed in (Concrete, ExpConcrete):
    register_kl(_relaxed, OneHotCategorical)(_kl_relaxed_vs_discrete)
    register_kl(_relaxed, ConcreteStraightThrough)(_kl_relaxed_vs_discrete)
    register_kl(_relaxed, Categorical)(_kl_relaxed_vs_discrete)
for _relaxed in (BinaryConcrete, LogitBinaryConcrete):
    register_kl(_relaxed, Bernoulli)(_kl_relaxed_vs_discrete)
    register_kl(_relaxed, BinaryConcreteStraightThrough)(_kl_relaxed_vs_discrete)
register_kl(ConcreteStraightThrough, Categorical)(_kl_one_hot_vs_integer)
del _relaxed
