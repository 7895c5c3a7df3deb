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
  the trapezoid rule with step ``h = 1/4`` evaluates to about ``exp(-2π²/h) ≈ 1e-34``
  relative error (float64 rounding dominates); the grid spans the range of ``δ`` plus 40
  on each side (tails below ``e^{-40}``). Cost ``O(K · (80 + range(δ)) / h)`` per batch
  element. For ``K = 2`` this equals the binary closed form above.

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


# -- exact discrete KLs ----------------------------------------------------------------


def _given_probs(d) -> bool:
    """Whether a torch Categorical/Bernoulli was built from ``probs`` (``_param`` is what was given)."""
    return "probs" in d.__dict__ and d._param is d.__dict__["probs"]


def _categorical_log_probs(d) -> Tensor:
    """Normalised log-probabilities of a one-hot categorical, exact where probs were given."""
    if isinstance(d, OneHotCategorical):
        d = d._categorical
        if _given_probs(d):
            return d.probs.log()  # -inf at exact zeros (torch's logits clamp them)
        return d.logits
    return d.log_probs


def _bernoulli_log_probs(d) -> tuple[Tensor, Tensor]:
    """``(log P(1), log P(0))``, exact where probs were given, from logits otherwise."""
    if isinstance(d, Bernoulli) and _given_probs(d):
        return d.probs.log(), torch.log1p(-d.probs)
    return F.logsigmoid(d.logits), F.logsigmoid(-d.logits)


def _xlogy_difference(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """``p (log p - log q)`` with the convention ``0 · anything = 0``."""
    return torch.where(p > 0, p * (log_p - log_q), p.new_zeros(()))


def _kl_one_hot(p, q) -> Tensor:
    log_p, log_q = _categorical_log_probs(p), _categorical_log_probs(q)
    return _xlogy_difference(log_p.exp(), log_p, log_q).sum(-1)


def _kl_binary(p, q) -> Tensor:
    log_p1, log_p0 = _bernoulli_log_probs(p)
    log_q1, log_q0 = _bernoulli_log_probs(q)
    return _xlogy_difference(log_p1.exp(), log_p1, log_q1) + _xlogy_difference(log_p0.exp(), log_p0, log_q0)


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
    if not torch.equal(*torch.broadcast_tensors(tp, tq)):
        raise NotImplementedError("KL between relaxed distributions of different temperatures")


def binary_relaxed_kl(logits_q: Tensor, logits_p: Tensor) -> Tensor:
    r"""``KL(q || p)`` of two binary Concrete distributions of one temperature.

    ``d coth(d / 2) - 2`` with ``d = logits_q - logits_p`` (symmetric in ``d``), evaluated
    as ``d / tanh(d / 2) - 2`` for ``|d| >= 1/2`` and by its Taylor series
    ``d²/6 - d⁴/360 + ...`` below (where the closed form would cancel).

    Args:
        logits_q, logits_p (Tensor): broadcastable logits of the two distributions.

    Returns:
        Tensor: the KL, of the broadcast shape.
    """
    d = logits_q - logits_p
    small = d.abs() < 0.5
    d_safe = torch.where(small, torch.ones_like(d), d)
    # 2 x coth(x) - 2 = 2 Σ_n c_n x^{2n} with x = d/2, c_n = 2^{2n} B_{2n} / (2n)!: six terms
    # leave a relative error below 1e-13 for |d| < 1/2; the closed form is exact beyond.
    x2 = (d / 2).square()
    series = torch.zeros_like(d)
    for c in reversed(_COTH_SERIES):
        series = (series + c) * x2
    return torch.where(small, 2 * series, d_safe / torch.tanh(d_safe / 2) - 2)


def categorical_relaxed_kl(logits_q: Tensor, logits_p: Tensor) -> Tensor:
    r"""``KL(q || p)`` of two Concrete (or ExpConcrete) distributions of one temperature.

    Evaluates ``-Σ δ + K ∫ (e^{-K softplus(s)} - e^{-Σ_k softplus(s + δ_k)}) ds`` with
    ``δ = logits_p - logits_q`` by the trapezoid rule (see the module docstring); the
    integrand is formed as ``e^{-B} expm1(B - A)`` so that nothing cancels in its tails.

    Args:
        logits_q (Tensor): ``(..., K)`` logits of the first argument ``q``.
        logits_p (Tensor): ``(..., K)`` logits of ``p``, broadcastable with ``logits_q``.

    Returns:
        Tensor: the KL, of the broadcast batch shape.
    """
    logits_q, logits_p = torch.broadcast_tensors(logits_q, logits_p)
    k = logits_q.shape[-1]
    delta = logits_p - logits_q
    # The KL is invariant to shifting δ; shift so that max δ = 0 (then A's transition
    # at s = 0 and B's at s = -δ_k >= 0 all lie in [0, -min δ]).
    delta = delta - delta.detach().amax(-1, keepdim=True)
    spread = float(-delta.detach().amin()) if delta.numel() else 0.0
    lower, upper = -_QUADRATURE_TAIL, spread + _QUADRATURE_TAIL / max(k - 1, 1)
    n = math.ceil((upper - lower) / _QUADRATURE_STEP) + 1
    s = torch.linspace(lower, lower + (n - 1) * _QUADRATURE_STEP, n, dtype=delta.dtype, device=delta.device)
    sp_s = F.softplus(s)  # (n,)
    # B - A = Σ_k (softplus(s + δ_k) - softplus(s)), small and accurate for s -> -inf.
    shifted = F.softplus(s.unsqueeze(-1) + delta.unsqueeze(-2))  # (..., n, K)
    b = shifted.sum(-1)
    b_minus_a = (shifted - sp_s.unsqueeze(-1)).sum(-1)
    integrand = torch.exp(-b) * torch.expm1(b_minus_a)
    integral = _QUADRATURE_STEP * (integrand.sum(-1) - 0.5 * (integrand[..., 0] + integrand[..., -1]))
    return -delta.sum(-1) + k * integral


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


def _mismatch(p, q, advice: str) -> TypeError:
    return TypeError(
        f"kl_divergence({type(p).__name__}, {type(q).__name__}): {advice} "
        "(a Monte Carlo ELBO with this pairing mixes a density with a probability mass and is "
        "not a bound on the evidence; see Pyro issue 2628)."
    )


def _kl_relaxed_vs_discrete(p, q):
    straight_through = "BinaryConcreteStraightThrough" if p.event_dim == 0 else "ConcreteStraightThrough"
    raise _mismatch(
        p,
        q,
        f"a relaxed (continuous) guide for a discrete model site has infinite KL. Use {straight_through} "
        "in the guide (exact discrete samples and log_prob with a relaxed gradient), or put the "
        "relaxed distribution in the model too (the relaxed model of Maddison et al. 2017)",
    )


def _kl_one_hot_vs_integer(p, q):
    raise _mismatch(
        p,
        q,
        "the guide draws one-hot vectors but the model's Categorical site takes integer indices, "
        "through which no gradient can reach the model. Write the model site as OneHotCategorical "
        "(and use the one-hot value, e.g. `(z * locs).sum(-1)`), or enumerate the site "
        "(infer={'enumerate': 'parallel'} with TraceEnum_ELBO)",
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
