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
- ``"reinmax"``: ReinMax (Liu et al. 2023, Algorithm 2), a second-order (Heun) correction:
  forward ``D ~ Categorical(π)``, backward the Jacobian of
  ``2 π1 - π / 2`` with ``π1 = (D + softmax(θ / τ)) / 2`` read as a softmax of θ (that is,
  ``2 J(π1) - J(π) / 2`` with ``J(p) = diag(p) - p pᵀ``). It gives no gradient to the
  temperature. At ``τ = 1`` its expectation is the exact gradient for any loss that is a
  quadratic function of ``D``; its authors recommend ``τ >= 1``. Higher derivatives
  (``create_graph=True``) are those of the algorithm's stop-gradient formulation.

The hard forward value is produced inside a custom autograd function, never as
``hard - soft.detach() + soft``: that expression rounds (``1 - s + s`` need not be ``1``)
and costs two full-size temporaries. When no gradient is needed (``torch.no_grad()`` or
inputs that do not require grad), only the hard sample is drawn.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..parameters import concrete_parameters
from .binary import binary_concrete_logit_sample
from .concrete import gumbel_softmax_log_sample
from .noise import draw_gumbel, draw_logistic, draw_softmax_noise

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


def check_estimator(estimator: str, rao_samples: int) -> None:
    """Raises ``ValueError`` naming the argument if ``estimator`` or ``rao_samples`` is invalid."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
    if isinstance(rao_samples, bool) or not isinstance(rao_samples, numbers.Integral) or rao_samples < 1:
        raise ValueError(f"rao_samples must be an integer >= 1, got {rao_samples!r}")


# -- shared plumbing ------------------------------------------------------------------


def _prepare(
    logits: Tensor, temperature: Tensor | float, event_dim: int, validate: bool
) -> tuple[Tensor, Tensor]:
    """Logits and temperature read as the distributions read them (one dtype, validated,
    the temperature broadcasting rule of :func:`~pyro_concrete.parameters.temperature_batch_shape`),
    expanded to ``batch_shape + event_shape`` and ``batch_shape``."""
    params = concrete_parameters(temperature, logits, None, event_dim=event_dim, validate=validate)
    return params.logits, params.temperature


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _one_hot(index: Tensor, num_categories: int, dtype: torch.dtype) -> Tensor:
    shape = index.shape[:-1] + (num_categories,)
    return torch.zeros(shape, dtype=dtype, device=index.device).scatter_(-1, index, 1.0)


def _sum_to_batch(grad: Tensor, batch_ndim: int) -> Tensor:
    """Sums the leading (sample) dimensions of ``grad`` away, keeping the last ``batch_ndim``."""
    extra = grad.dim() - batch_ndim
    return grad.sum(tuple(range(extra))) if extra > 0 else grad


class _HardOneHot(torch.autograd.Function):
    """Forward: the one-hot vector of ``index``. Backward: the identity onto ``surrogate``.

    ``surrogate`` is the differentiable soft sample whose Jacobian the estimator uses; its
    own autograd node (the fused Concrete sampler) applies that Jacobian, so this node
    adds no saved tensors and no arithmetic to the backward pass.
    """

    @staticmethod
    def forward(ctx, surrogate: Tensor, index: Tensor) -> Tensor:
        return _one_hot(index, surrogate.shape[-1], surrogate.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _HardSign(torch.autograd.Function):
    """Forward: ``positive`` as 0.0/1.0. Backward: the mean over the leading dimension of
    the Jacobian of ``sigmoid(y)``.

    ``y`` has shape ``(S,) + positive.shape``: ``S`` logit-space soft samples (``S = 1``
    for ST, ``rao_samples`` for Gumbel-Rao). The soft samples ``sigmoid(y)`` are never
    materialised in the forward pass; the backward pass needs one full-size temporary.
    """

    @staticmethod
    def forward(ctx, y: Tensor, positive: Tensor) -> Tensor:
        ctx.save_for_backward(y)
        return positive.to(y.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (y,) = ctx.saved_tensors
        s = torch.sigmoid(y)
        if torch.is_grad_enabled():  # a graph of this backward pass is being recorded
            return grad * (s * (1 - s)) / y.shape[0], None
        # s (1 - s) = s - s^2, computed in the temporary s itself.
        jac = s.addcmul_(s, s, value=-1.0)
        return jac.mul_(grad).div_(y.shape[0]), None


# -- categorical ----------------------------------------------------------------------


def conditional_gumbel(
    logits: Tensor, index: Tensor, gumbel: Tensor, *, consume_noise: bool = False
) -> Tensor:
    """Gumbel noise conditioned on the Gumbel-max sample (Paulus et al. 2020, appendix).

    Given independent standard Gumbel noise ``gumbel`` and a category ``D = index``,
    returns noise ``G'`` distributed as ``G | argmax(θ + G) = D``. With
    ``log Z = logsumexp θ``, the maximum is ``M = log Z + gumbel_D`` (a ``Gumbel(log Z)``,
    independent of the argmax), and for ``j ≠ D``,
    ``θ_j + G'_j = -log(exp(-M) + exp(-(θ_j + gumbel_j)))``, a ``Gumbel(θ_j)`` truncated
    below ``M`` (computed with ``logaddexp``: no overflow for any logits). The result is
    ``G' = x - θ``; it is computed without gradient.

    Args:
        logits (Tensor): ``(..., K)``, broadcastable to ``gumbel``.
        index (Tensor): ``(..., 1)`` int64 category of each row, broadcastable to
            ``gumbel.shape[:-1] + (1,)``.
        gumbel (Tensor): standard Gumbel noise ``(..., K)``.
        consume_noise (bool): if True, ``gumbel`` is overwritten with the result.

    Returns:
        Tensor: the conditional noise, of ``gumbel``'s shape.

    Example::

        >>> g = draw_gumbel(torch.Size([4, 3]), torch.float64, torch.device("cpu"))
        >>> d = torch.tensor([[0], [1], [2], [2]])
        >>> gc = conditional_gumbel(torch.zeros(3), d, g)
        >>> bool(((torch.zeros(3) + gc).argmax(-1, keepdim=True) == d).all())
        True
    """
    with torch.no_grad():
        logits = logits.detach()
        out = gumbel if consume_noise else gumbel.clone()
        index = index.expand(out.shape[:-1] + (1,))
        top = out.gather(-1, index).add_(logits.logsumexp(-1, keepdim=True))  # M
        out.add_(logits).neg_()  # -(θ + G)
        torch.logaddexp(out, top.neg(), out=out)
        out.neg_().scatter_(-1, index, top)
        return out.sub_(logits)


def _gumbel_max(logits: Tensor, shape: torch.Size) -> Tensor:
    gumbel = draw_softmax_noise(shape, logits.dtype, logits.device)
    return gumbel.add_(logits).argmax(-1, keepdim=True)


class _ReinMax(torch.autograd.Function):
    """Forward: the one-hot ``D`` of ``index``. Backward: ``(2 J(π1) - J(π0) / 2) grad``.

    ``π0 = softmax(θ)``, ``π1 = (D + softmax(θ / τ)) / 2``, ``J(p) v = p ⊙ v - p (p · v)``
    (Liu et al. 2023, Algorithm 2; the stop-gradients there make ``π1`` act as a softmax
    of θ in the backward pass and cut the temperature out of it).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(logits, temperature, index)
        return _one_hot(index, logits.shape[-1], logits.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, temperature, index = ctx.saved_tensors
        differentiable = torch.is_grad_enabled()  # a graph of this backward is being recorded
        pi0 = torch.softmax(logits, -1)
        with torch.no_grad():
            tempered = torch.softmax(logits / temperature.unsqueeze(-1), -1)
            pi1 = torch.zeros_like(grad).scatter_(-1, index, 0.5).add_(tempered, alpha=0.5)
        if differentiable:
            # Algorithm 2's π1 = softmax(stopgrad(log π1 - θ) + θ): its value, and as a
            # function of θ (for higher derivatives) a softmax of θ, not of θ / τ.
            pi1 = torch.softmax((pi1.log() - logits).detach() + logits, -1)
        # J(p) v = p ⊙ v - p (p · v).
        j1 = pi1 * grad
        s1 = j1.sum(-1, keepdim=True)
        j0 = pi0 * grad
        s0 = j0.sum(-1, keepdim=True)
        if differentiable:
            total = 2 * (j1 - pi1 * s1) - 0.5 * (j0 - pi0 * s0)
        else:
            total = j1.addcmul_(pi1, s1, value=-1.0).mul_(2.0)
            total.add_(j0.addcmul_(pi0, s0, value=-1.0), alpha=-0.5)
        return _sum_to_batch(total, logits.dim()), None, None


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
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities.
        temperature (float or Tensor): positive, one per row: broadcastable with
            ``logits.shape[:-1]`` (a temperature of shape ``(..., 1)`` with as many
            dimensions as ``logits``, torch's convention, has its last dimension
            dropped). May require grad.
        estimator (str): ``"st"``, ``"gumbel_rao"`` or ``"reinmax"``.
        rao_samples (int): number of conditional noise draws for ``"gumbel_rao"`` (>= 1).
        sample_shape (torch.Size): leading shape of independent samples.
        validate (bool): check that the temperature is positive and finite and the logits
            finite (one reduction each); pass False where that was checked already.

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
    num_categories = shape[-1]
    if not _needs_grad(logits, temperature):
        return _one_hot(_gumbel_max(logits, shape), num_categories, logits.dtype)
    if estimator == "reinmax":
        return _ReinMax.apply(logits, temperature, _gumbel_max(logits, shape))
    draws = rao_samples if estimator == "gumbel_rao" else 1
    if draws == 1:
        # Only differences of the noise within a row matter to the soft sample and its argmax.
        noise = draw_softmax_noise(shape, logits.dtype, logits.device)
        y, x = gumbel_softmax_log_sample(logits, temperature.unsqueeze(-1), noise, consume_noise=True)
        return _HardOneHot.apply(x, y.argmax(-1, keepdim=True))
    # The first draw decides D and is itself a draw of the noise given D; the others are
    # drawn given D.
    gumbel = draw_gumbel(torch.Size([draws]) + shape, logits.dtype, logits.device)
    index = (gumbel[0] + logits).argmax(-1, keepdim=True)
    conditional_gumbel(logits, index, gumbel[1:], consume_noise=True)
    _, x = gumbel_softmax_log_sample(logits, temperature.unsqueeze(-1), gumbel, consume_noise=True)
    return _HardOneHot.apply(x.mean(0), index)


# -- binary ---------------------------------------------------------------------------


def conditional_logistic(
    logits: Tensor, positive: Tensor, logistic: Tensor, *, consume_noise: bool = False
) -> Tensor:
    """Logistic noise conditioned on the sign of ``θ + L`` (binary Gumbel-Rao).

    Given independent standard Logistic noise ``L'`` (``logistic``) and the outcome
    ``b = positive`` (True where ``θ + L > 0``), returns ``L`` distributed as
    ``L | (θ + L > 0) = b``. With ``s = ±1`` the sign of the outcome,
    ``θ + L = s · logaddexp(softplus(L'), L' + s θ)``: the two-class case of
    :func:`conditional_gumbel` with logits ``(θ, 0)``, where the ratio of the two
    exponential variables is ``exp(L')``. Its conditional CDF is
    ``(e^v - 1) / (e^v + e^θ)`` for ``v > 0`` (``b`` true), as it should be. Computed
    without gradient.

    Args:
        logits (Tensor): broadcastable to ``logistic``.
        positive (Tensor): bool outcome, broadcastable to ``logistic``.
        logistic (Tensor): standard Logistic noise.
        consume_noise (bool): if True, ``logistic`` is overwritten with the result.

    Example::

        >>> noise = draw_logistic(torch.Size([5]), torch.float64, torch.device("cpu"))
        >>> b = torch.tensor([True, False, True, True, False])
        >>> lc = conditional_logistic(torch.tensor(2.0), b, noise)
        >>> bool(((2.0 + lc > 0) == b).all())
        True
    """
    with torch.no_grad():
        logits = logits.detach()
        sign = positive.to(logistic.dtype).mul_(2.0).sub_(1.0)
        out = logistic if consume_noise else logistic.clone()
        shifted = torch.addcmul(out, sign, logits)  # L' + s θ
        torch.logaddexp(F.softplus(out, threshold=torch.inf), shifted, out=out)
        return out.mul_(sign).sub_(logits)


class _BinaryReinMax(torch.autograd.Function):
    """Forward: ``positive`` as 0.0/1.0. Backward: ReinMax for two classes, logits ``(θ, 0)``.

    With ``p = sigmoid(θ)`` and ``r = sigmoid(-s θ / τ)`` (``s = ±1`` the outcome's sign),
    ``π1 (1 - π1) = r (2 - r) / 4``, so the gradient is
    ``grad · (r (2 - r) - p (1 - p)) / 2``, written without cancellation.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: Tensor, positive: Tensor) -> Tensor:
        ctx.save_for_backward(logits, temperature, positive)
        return positive.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, temperature, positive = ctx.saved_tensors
        p0 = torch.sigmoid(logits) * torch.sigmoid(-logits)
        with torch.no_grad():
            tempered = logits / temperature
            r = torch.sigmoid(torch.where(positive, -tempered, tempered))
        if not torch.is_grad_enabled():
            return _sum_to_batch((r * (2 - r) - p0) * grad * 0.5, logits.dim()), None, None
        # Recording a graph of this backward: as in the categorical case, π1 is a sigmoid
        # of θ shifted by a constant, logit(π1) = ±(log(1 - r/2) - log(r/2)).
        with torch.no_grad():
            pi1_logit = torch.log1p(-r / 2) - torch.log(r / 2)
            pi1_logit = torch.where(positive, pi1_logit, -pi1_logit)
        shifted = (pi1_logit - logits).detach() + logits
        pq1 = torch.sigmoid(shifted) * torch.sigmoid(-shifted)
        return _sum_to_batch((2 * pq1 - 0.5 * p0) * grad, logits.dim()), None, None


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
        logits (Tensor): log-odds, any shape.
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
    if not _needs_grad(logits, temperature) or estimator == "reinmax":
        positive = draw_logistic(shape, logits.dtype, logits.device).add_(logits) > 0
        if not _needs_grad(logits, temperature):
            return positive.to(logits.dtype)
        return _BinaryReinMax.apply(logits, temperature, positive)
    draws = rao_samples if estimator == "gumbel_rao" else 1
    noise = draw_logistic(torch.Size([draws]) + shape, logits.dtype, logits.device)
    if draws == 1:
        y = binary_concrete_logit_sample(logits, temperature, noise, consume_noise=True)
        return _HardSign.apply(y, y[0] > 0)
    # As in the categorical case, the first draw decides the outcome.
    positive = (noise[0] + logits) > 0
    conditional_logistic(logits, positive, noise[1:], consume_noise=True)
    y = binary_concrete_logit_sample(logits, temperature, noise, consume_noise=True)
    return _HardSign.apply(y, positive)
