"""Straight-through gradient estimators: exact hard samples with surrogate gradients.

Every function here returns a *hard* sample, a one-hot vector (categorical) or a 0/1 value
(binary) whose entries are exactly ``0.0`` and ``1.0``, and attaches to it the gradient of
the chosen estimator with respect to ``logits`` (and ``temperature`` where the estimator
has one). Notation: ``logits`` θ, temperature τ > 0, ``π = softmax(θ)``, standard Gumbel
noise ``G``, standard Logistic noise ``L``, the sample ``D``.

Estimators (``estimator=``):

- ``"st"``: straight-through Gumbel-Softmax (Jang, Gu & Poole 2017). Forward
  ``D = onehot(argmax(θ + G))``; backward the Jacobian of the soft sample
  ``softmax((θ + G) / τ)`` (binary: ``sigmoid((θ + L) / τ)``).
- ``"gumbel_rao"``: Gumbel-Rao (Paulus, Maddison & Krause 2020). The ST gradient averaged
  over ``rao_samples`` draws of the noise conditioned on the sampled ``D``; the same
  expectation as ``"st"`` and lower variance. The noise that drew ``D`` is one of the
  conditional draws (it is one, given ``D``), so ``rao_samples=1`` is exactly ``"st"``.
  The categorical kernel is :mod:`.gumbel_rao` (closed-form draws, a hand-written backward
  pass in eager mode with the derivatives of every order of the composition it replaces).
- ``"reinmax"``: ReinMax (Liu et al. 2023, Algorithm 2), a second-order (Heun) correction:
  forward ``D ~ Categorical(π)``, backward the Jacobian of
  ``2 π1 - π / 2`` with ``π1 = (D + softmax(θ / τ)) / 2`` read as a softmax of θ (that is,
  ``2 J(π1) - J(π) / 2`` with ``J(p) = diag(p) - p pᵀ``). It gives no gradient to the
  temperature. At ``τ = 1`` its expectation is the exact gradient for any loss that is a
  quadratic function of ``D``; its authors recommend ``τ >= 1``. Higher derivatives
  (``create_graph=True``) are those of the algorithm's stop-gradient formulation.

Every estimator is written as ``hard + (surrogate - surrogate.detach())``: the difference is
exactly ``+0.0`` for a finite surrogate, so the forward value is bitwise the hard sample
(unlike ``hard - soft.detach() + soft``, which rounds: ``1 - s + s`` need not be ``1``),
and the derivatives of every order are the surrogate's. The estimators work under
``torch.func``, ``torch.jit.trace`` and ``torch.compile`` (where Gumbel-Rao runs as plain torch
operations). Masked
categories (``-inf`` logits) are never drawn and get zero gradient; infinite binary logits
are certain outcomes. When no gradient is needed (``torch.no_grad()`` or inputs that do not
require grad), only the hard sample is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

from .._checks import check_int
from ..parameters import compute_dtype, concrete_parameters
from .binary import certain_outcomes, logit_sample
from .concrete import _inside_function_transform, floored_exp, log_sample, shifted_logits, structural_zeros
from .gumbel_rao import gumbel_rao_soft_mean
from .noise import draw_gumbel, draw_logistic, draw_softmax_noise  # noqa: F401 (doctests)

__all__ = [
    "ESTIMATORS",
    "binary_straight_through_sample",
    "check_estimator",
    "conditional_gumbel",
    "conditional_logistic",
    "sample_binary",
    "sample_one_hot",
    "straight_through_sample",
]

ESTIMATORS = ("st", "gumbel_rao", "reinmax")


def check_estimator(estimator: str, rao_samples: int) -> int:
    """Checks ``estimator`` (``ValueError`` naming it) and ``rao_samples`` (``TypeError`` for a
    non-integer, ``ValueError`` below 1); returns ``rao_samples`` as an ``int``."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
    return check_int("rao_samples", rao_samples, minimum=1)


# -- shared plumbing ------------------------------------------------------------------


def _prepare(
    logits: Tensor, temperature: Tensor | float, event_dim: int, validate: bool
) -> tuple[Tensor, Tensor]:
    """Logits and temperature read as the distributions read them (one dtype, validated,
    the temperature broadcasting rule of :func:`~pyro_concrete.parameters.temperature_batch_shape`),
    expanded to ``batch_shape + event_shape`` and ``batch_shape``."""
    params = concrete_parameters(temperature, None, logits, event_dim=event_dim, validate=validate)
    return params.logits, params.temperature


def _needs_grad(*tensors: Tensor) -> bool:
    """Whether to build the estimator's surrogate: where a derivative may be asked for. Inside
    a ``torch.func`` transform always (under ``vmap`` a tensor reports ``requires_grad=False``
    even where an enclosing ``grad`` differentiates it), and for tensors that carry
    forward-mode tangents (``torch.autograd.forward_ad``)."""
    if _inside_function_transform() or any(forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _one_hot(index: Tensor, num_categories: int, dtype: torch.dtype) -> Tensor:
    """``(..., 1)`` indices to one-hot rows of exact 0.0 / 1.0 (out of place: vmap-safe)."""
    return (index == torch.arange(num_categories, device=index.device)).to(dtype)


def _straight_through(hard: Tensor, surrogate: Tensor) -> Tensor:
    """``hard`` in value (bitwise: ``s - s.detach()`` is ``+0.0``), ``surrogate`` in every derivative."""
    return hard + (surrogate - surrogate.detach()).to(hard.dtype)


# -- categorical ----------------------------------------------------------------------


def conditional_gumbel(logits: Tensor, index: Tensor, gumbel: Tensor) -> Tensor:
    """Gumbel noise conditioned on the Gumbel-max sample (Paulus et al. 2020, appendix).

    Given independent standard Gumbel noise ``gumbel`` and a category ``D = index``,
    returns noise ``G'`` distributed as ``G | argmax(θ + G) = D``. With
    ``log Z = logsumexp θ``, the maximum is ``M = log Z + gumbel_D`` (a ``Gumbel(log Z)``,
    independent of the argmax), and for ``j ≠ D``,
    ``θ_j + G'_j = -log(exp(-M) + exp(-(θ_j + gumbel_j)))``, a ``Gumbel(θ_j)`` truncated
    below ``M`` (computed with ``logaddexp``: no overflow for any logits). The result is
    ``G' = x - θ``; it is computed without gradient. At masked categories
    (:func:`~pyro_concrete.ops.structural_zeros`) the noise is that of logit 0: finite, and
    irrelevant, since a masked category stays masked.

    Args:
        logits (Tensor): ``(..., K)``, broadcastable to ``gumbel``.
        index (Tensor): ``(..., 1)`` int64 category of each row, broadcastable to
            ``gumbel.shape[:-1] + (1,)``.
        gumbel (Tensor): standard Gumbel noise ``(..., K)``.

    Returns:
        Tensor: the conditional noise, a new tensor of ``gumbel``'s shape.

    Example::

        >>> g = draw_gumbel(torch.Size([4, 3]), torch.float64, torch.device("cpu"))
        >>> d = torch.tensor([[0], [1], [2], [2]])
        >>> gc = conditional_gumbel(torch.zeros(3, dtype=torch.float64), d, g)
        >>> bool(((torch.zeros(3) + gc).argmax(-1, keepdim=True) == d).all())
        True
    """
    with torch.no_grad():
        masked = structural_zeros(logits)
        logits = logits.detach().masked_fill(masked, 0.0)
        total = logits.masked_fill(masked, -torch.inf).logsumexp(-1, keepdim=True)
        index = index.expand(gumbel.shape[:-1] + (1,))
        top = gumbel.gather(-1, index) + total  # M
        out = -torch.logaddexp(-(gumbel + logits), -top)
        out = out.scatter(-1, index, top)
        return out - logits


def _gumbel_max(theta: Tensor, shape: torch.Size) -> Tensor:
    """Gumbel-max indices ``(..., 1)`` for shifted logits (:func:`.concrete.shifted_logits`)."""
    return (theta + draw_softmax_noise(shape, theta.dtype, theta.device)).argmax(-1, keepdim=True)


def _reinmax_surrogate(theta: Tensor, temperature: Tensor, masked: Tensor | None, hard: Tensor) -> Tensor:
    """``2 softmax(θ + c) - softmax(θ) / 2`` with ``softmax(θ + c) = π1 = (D + softmax(θ / τ)) / 2``
    in value (``c`` without gradient): Liu et al. 2023, Algorithm 2, whose Jacobian is
    ``2 J(π1) - J(π0) / 2``. No gradient reaches the temperature. ``theta``: shifted logits,
    finite at masked categories, where ``π1`` and ``π0`` are exactly 0."""
    with torch.no_grad():  # and detached: no_grad does not stop forward-mode tangents
        theta_value, tau_value = theta.detach(), temperature.detach().unsqueeze(-1)
        tempered = log_sample(theta_value, tau_value, torch.zeros_like(theta_value), masked, theta.dtype)
        log_pi1 = torch.log((hard + tempered.exp()) / 2)
    pi1 = torch.softmax(theta + (log_pi1 - theta.detach()), -1)
    pi0 = torch.softmax(theta, -1)
    return 2 * pi1 - pi0 / 2


def straight_through_sample(
    logits: Tensor,
    temperature: Tensor | float,
    *,
    estimator: str = "st",
    rao_samples: int = 10,
    sample_shape: Sequence[int] = torch.Size(),
    validate: bool = True,
) -> Tensor:
    """A one-hot categorical sample carrying a straight-through gradient estimator.

    The returned tensor's entries are exactly ``0.0`` and ``1.0``, one ``1.0`` per row, and
    its row ``D`` is distributed as ``Categorical(softmax(logits))``. Its gradient with
    respect to ``logits`` and ``temperature`` is the chosen estimator's (see the module
    docstring): ``"st"`` and ``"gumbel_rao"`` differentiate the soft sample(s)
    ``softmax((θ + G) / τ)``; ``"reinmax"`` gives no gradient to the temperature.

    Args:
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (``-inf`` masks a
            category: it is never drawn).
        temperature (float or Tensor): positive, one per row: broadcastable with
            ``logits.shape[:-1]`` (a temperature of shape ``(..., 1)`` with as many
            dimensions as ``logits``, torch's convention, has its last dimension
            dropped). May require grad.
        estimator (str): ``"st"``, ``"gumbel_rao"`` or ``"reinmax"``.
        rao_samples (int): number of conditional noise draws for ``"gumbel_rao"`` (>= 1).
        sample_shape (torch.Size): leading shape of independent samples.
        validate (bool): check the temperature and the logits (one reduction each); pass
            False where that was checked already.

    Returns:
        Tensor: ``sample_shape + batch_shape + (K,)`` with ``batch_shape`` the broadcast of
        ``logits.shape[:-1]`` and ``temperature.shape``.

    Example::

        >>> logits = torch.randn(32, 10, requires_grad=True)
        >>> z = straight_through_sample(logits, 0.5, estimator="gumbel_rao")
        >>> (z * torch.randn(10)).sum().backward()   # z is exactly one-hot
    """
    check_estimator(estimator, rao_samples)
    logits, temperature = _prepare(logits, temperature, 1, validate)
    shape = torch.Size(sample_shape) + logits.shape
    return sample_one_hot(logits, temperature, shape, estimator, rao_samples)


def sample_one_hot(
    logits: Tensor, temperature: Tensor, shape: torch.Size, estimator: str, rao_samples: int
) -> Tensor:
    """:func:`straight_through_sample` for parameters as the distributions hold them.

    ``logits`` of shape ``batch_shape + (K,)`` and ``temperature`` of ``batch_shape``, one
    dtype, already validated; ``shape`` is ``sample_shape + logits.shape``. No checks.
    """
    out_dtype = logits.dtype
    dtype = compute_dtype(out_dtype)
    theta, masked = shifted_logits(logits)
    theta, temperature = theta.to(dtype), temperature.to(dtype)
    num_categories = shape[-1]
    if not _needs_grad(theta, temperature):
        return _one_hot(_gumbel_max(theta, shape), num_categories, out_dtype)
    if estimator == "reinmax":
        hard = _one_hot(_gumbel_max(theta, shape), num_categories, dtype)
        return _straight_through(hard.to(out_dtype), _reinmax_surrogate(theta, temperature, masked, hard))
    tau = temperature.unsqueeze(-1)
    draws = rao_samples if estimator == "gumbel_rao" else 1
    if draws == 1:
        # Only differences of the noise within a row matter to the soft sample and its argmax.
        y = log_sample(theta, tau, draw_softmax_noise(shape, dtype, theta.device), masked, out_dtype)
        hard = _one_hot(y.argmax(-1, keepdim=True), num_categories, out_dtype)
        return _straight_through(hard, floored_exp(y, masked))
    # Gumbel-Rao: k draws of the noise given D, the first of which decides D.
    rows = theta.expand(shape).reshape(-1, num_categories)
    rows_masked = None if masked is None else masked.expand(shape).reshape(-1, num_categories)
    index, soft = gumbel_rao_soft_mean(rows, tau.expand(shape[:-1] + (1,)).reshape(-1, 1), draws, rows_masked)
    return _straight_through(_one_hot(index, num_categories, out_dtype).view(shape), soft.view(shape))


# -- binary ---------------------------------------------------------------------------


def conditional_logistic(logits: Tensor, positive: Tensor, logistic: Tensor) -> Tensor:
    """Logistic noise conditioned on the sign of ``θ + L`` (binary Gumbel-Rao).

    Given independent standard Logistic noise ``L'`` (``logistic``) and the outcome
    ``b = positive`` (True where ``θ + L > 0``), returns ``L`` distributed as
    ``L | (θ + L > 0) = b``. With ``s = ±1`` the sign of the outcome,
    ``θ + L = s · logaddexp(softplus(L'), L' + s θ)``: the two-class case of
    :func:`conditional_gumbel` with logits ``(θ, 0)``, where the ratio of the two
    exponential variables is ``exp(L')``. Its conditional CDF is
    ``(e^v - 1) / (e^v + e^θ)`` for ``v > 0`` (``b`` true), as it should be. Computed
    without gradient. Where the logit is infinite (a certain outcome) the noise is returned
    unchanged.

    Args:
        logits (Tensor): broadcastable to ``logistic``.
        positive (Tensor): bool outcome, broadcastable to ``logistic``.
        logistic (Tensor): standard Logistic noise.

    Example::

        >>> noise = draw_logistic(torch.Size([5]), torch.float64, torch.device("cpu"))
        >>> b = torch.tensor([True, False, True, True, False])
        >>> lc = conditional_logistic(torch.tensor(2.0, dtype=torch.float64), b, noise)
        >>> bool(((2.0 + lc > 0) == b).all())
        True
    """
    with torch.no_grad():
        certain = certain_outcomes(logits)
        logits = torch.where(certain, 0.0, logits.detach())
        sign = positive.to(logistic.dtype) * 2 - 1
        shifted = logistic + sign * logits  # L' + s θ
        out = sign * torch.logaddexp(F.softplus(logistic, threshold=torch.inf), shifted) - logits
        return torch.where(certain, logistic, out)


def _binary_reinmax_surrogate(
    logits: Tensor, temperature: Tensor, positive: Tensor, certain: Tensor
) -> Tensor:
    """``2 sigmoid(θ + c) - sigmoid(θ) / 2`` with ``sigmoid(θ + c) = π1 = (b + sigmoid(θ / τ)) / 2``
    in value: ReinMax with logits ``(θ, 0)``. With ``r = sigmoid(-s θ / τ)`` (``s = ±1`` the
    outcome's sign), ``logit π1 = s (log(1 - r/2) - log(r/2))``, without cancellation."""
    safe = torch.where(certain, 0.0, logits)
    with torch.no_grad():  # and detached: no_grad does not stop forward-mode tangents
        sign = positive.to(logits.dtype) * 2 - 1
        r = torch.sigmoid(-sign * logits.detach() / temperature.detach())
        pi1_logit = sign * (torch.log1p(-r / 2) - torch.log(r / 2))
    surrogate = 2 * torch.sigmoid(safe + (pi1_logit - safe.detach())) - torch.sigmoid(safe) / 2
    return torch.where(certain, 0.0, surrogate)


def binary_straight_through_sample(
    logits: Tensor,
    temperature: Tensor | float,
    *,
    estimator: str = "st",
    rao_samples: int = 10,
    sample_shape: Sequence[int] = torch.Size(),
    validate: bool = True,
) -> Tensor:
    """A ``Bernoulli(sigmoid(logits))`` sample carrying a straight-through gradient.

    The returned values are exactly ``0.0`` and ``1.0``: ``1`` where ``θ + L > 0`` with
    ``L`` standard Logistic noise. The estimators are the two-class cases of
    :func:`straight_through_sample`: ``"st"`` differentiates the soft sample
    ``sigmoid((θ + L) / τ)``; ``"gumbel_rao"`` averages it over ``rao_samples`` draws of
    ``L`` given the outcome (:func:`conditional_logistic`); ``"reinmax"`` uses
    ``2 π1 (1 - π1) - p (1 - p) / 2`` with ``p = sigmoid(θ)`` and
    ``π1 = (b + sigmoid(θ / τ)) / 2``, and gives no gradient to the temperature.

    Args:
        logits (Tensor): log-odds, any shape (``±inf``: a certain outcome).
        temperature (float or Tensor): positive, broadcastable with ``logits``.
        estimator, rao_samples, sample_shape, validate: as in
            :func:`straight_through_sample`.

    Returns:
        Tensor: ``sample_shape + broadcast(logits.shape, temperature.shape)``.

    Example::

        >>> logits = torch.zeros(100, requires_grad=True)
        >>> b = binary_straight_through_sample(logits, 0.5, estimator="reinmax")
        >>> ((b - 0.3) ** 2).sum().backward()
    """
    check_estimator(estimator, rao_samples)
    logits, temperature = _prepare(logits, temperature, 0, validate)
    shape = torch.Size(sample_shape) + logits.shape
    return sample_binary(logits, temperature, shape, estimator, rao_samples)


def sample_binary(
    logits: Tensor, temperature: Tensor, shape: torch.Size, estimator: str, rao_samples: int
) -> Tensor:
    """:func:`binary_straight_through_sample` for parameters as the distributions hold them.

    ``logits`` and ``temperature`` of ``batch_shape``, one dtype, already validated;
    ``shape`` is ``sample_shape + logits.shape``. No checks.
    """
    out_dtype = logits.dtype
    dtype = compute_dtype(out_dtype)
    certain = certain_outcomes(logits)
    logits, temperature = logits.to(dtype), temperature.to(dtype)
    if not _needs_grad(logits, temperature) or estimator == "reinmax":
        positive = (draw_logistic(shape, dtype, logits.device) + logits) > 0
        if not _needs_grad(logits, temperature):
            return positive.to(out_dtype)
        surrogate = _binary_reinmax_surrogate(logits, temperature, positive, certain)
        return _straight_through(positive.to(out_dtype), surrogate)
    draws = rao_samples if estimator == "gumbel_rao" else 1
    noise = draw_logistic(torch.Size([draws]) + shape, dtype, logits.device)
    # As in the categorical case, the first draw decides the outcome.
    positive = (noise[0] + logits) > 0
    if draws > 1:
        noise = torch.cat([noise[:1], conditional_logistic(logits, positive, noise[1:])])
    soft = torch.sigmoid(logit_sample(logits, temperature, noise, out_dtype, certain)).mean(0)
    return _straight_through(positive.to(out_dtype), soft)
