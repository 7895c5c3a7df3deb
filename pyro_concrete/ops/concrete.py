"""Kernels of the categorical Concrete family: the fused sampler and the log-densities.

Notation: ``logits`` θ ∈ R^K, ``temperature`` τ > 0, Gumbel noise ``G = -log E`` with
``E ~ Exponential(1)``. A Concrete sample in log space is ``y = log_softmax((θ + G) / τ)``.

Everything is computed in log space: at low temperature ``exp(y)`` underflows to exact
zeros in float32 while ``y`` stays finite, so densities are always evaluated from ``y``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .noise import safe_log

__all__ = [
    "concrete_log_density",
    "concrete_log_density_at_log_value",
    "exp_concrete_log_density",
    "exp_concrete_log_density_of_own_sample",
    "floored_exp",
    "gumbel_softmax_log_sample",
    "log_floor",
]


# torch's log_softmax kernel is slow along a short last dimension on CPU (about 5x slower
# than the elementwise route below for K < 16); above that it is the faster one.
_SHORT_LAST_DIM = 16


def log_floor(dtype: torch.dtype) -> float:
    """``log`` of the smallest normal float of ``dtype``: below it ``exp`` underflows."""
    return math.log(torch.finfo(dtype).tiny)


def floored_exp(y: Tensor) -> Tensor:
    """``exp(max(y, log tiny))``: ``exp(y)`` with underflow replaced by the smallest normal.

    A component below the smallest normal float ``tiny`` would otherwise come out as a
    subnormal or ``0.0``; the difference is below ``tiny`` in absolute value, while torch's
    CPU ``exp`` is 50-180x slower on inputs that underflow (measured). As a side effect the
    result has no exact zeros, so its logarithm is finite.
    """
    return y.clamp_min(log_floor(y.dtype)).exp_()


def _log_softmax_inplace(z: Tensor) -> Tensor:
    """:func:`log_softmax`, overwriting ``z`` on the short-row route."""
    if z.shape[-1] >= _SHORT_LAST_DIM:
        return torch.log_softmax(z, dim=-1)
    z.sub_(z.amax(-1, keepdim=True))
    return z.sub_(floored_exp(z).sum(-1, keepdim=True).log_())


def _log_softmax_and_softmax(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(log_softmax(z, -1), floored_exp of it)``, overwriting ``z`` on the short-row route."""
    y = _log_softmax_inplace(z)
    return y, floored_exp(y)


class _GumbelSoftmaxLogSample(torch.autograd.Function):
    """``y = log_softmax((logits + gumbel) / temperature)`` and ``x = softmax(...)``, floored.

    One fused node instead of torch's add/div/log_softmax/exp chain: the forward pass
    writes into the caller's noise buffer, and the backward pass needs one full-size
    temporary. Its backward is written in differentiable operations, so higher-order
    gradients work too.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, temperature: Tensor, gumbel: Tensor) -> tuple[Tensor, Tensor]:
        y, x = _log_softmax_and_softmax(gumbel.add_(logits).div_(temperature))
        if y is gumbel:
            ctx.mark_dirty(gumbel)  # the output is the noise buffer, written in place
        ctx.save_for_backward(temperature, y, x)
        ctx.set_materialize_grads(False)
        return y, x

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, grad_x: Tensor | None):
        temperature, y, x = ctx.saved_tensors
        # Gradient with respect to y (x = exp(y)), then through log_softmax to z = (θ + G) / τ:
        # grad_z = grad - softmax(z) * sum(grad).
        if grad_x is None:
            grad = grad_y.clone() if grad_y is not None else torch.zeros_like(y)
        elif grad_y is None:
            grad = grad_x * x
        else:
            grad = torch.addcmul(grad_y, grad_x, x)
        row_sum = grad.sum(-1, keepdim=True)
        # `grad` is our own temporary: update it in place unless a graph of this backward
        # pass is being recorded (double backward).
        differentiable = torch.is_grad_enabled()
        grad = grad - x * row_sum if differentiable else grad.addcmul_(x, row_sum, value=-1.0)
        grad_temperature = None
        if ctx.needs_input_grad[1]:
            # dz/dτ = -z/τ, and sum_k grad_z,k z_k = sum_k grad_z,k y_k since grad_z sums to 0.
            grad_temperature = -(grad * y).sum(-1, keepdim=True) / temperature
        grad_logits = None
        if ctx.needs_input_grad[0]:
            grad_logits = grad / temperature if differentiable else grad.div_(temperature)
        return grad_logits, grad_temperature, None


def gumbel_softmax_log_sample(
    logits: Tensor, temperature: Tensor, gumbel: Tensor, *, consume_noise: bool = False
) -> tuple[Tensor, Tensor]:
    """Reparameterised ExpConcrete and Concrete sample from given Gumbel noise.

    Args:
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities, broadcastable to
            ``gumbel``.
        temperature (Tensor): temperature broadcastable to ``gumbel.shape[:-1] + (1,)``.
        gumbel (Tensor): standard Gumbel noise of the sample's shape ``(..., K)``.
        consume_noise (bool): if True, ``gumbel`` is overwritten (saves a full-size
            allocation); it must then be a buffer the caller owns.

    Returns:
        ``(y, x)`` with ``y = log_softmax((logits + gumbel) / temperature)`` (the
        ExpConcrete sample) and ``x = floored_exp(y)`` (the Concrete sample: ``exp(y)``
        with components below the smallest normal float raised to it), both
        differentiable with respect to ``logits`` and ``temperature``.

    Example::

        >>> from pyro_concrete.ops import draw_gumbel
        >>> g = draw_gumbel(torch.Size([5, 3]), torch.float64, torch.device("cpu"))
        >>> y, x = gumbel_softmax_log_sample(torch.zeros(3), torch.tensor(0.5), g)
    """
    if not consume_noise:
        gumbel = gumbel.clone()
    shape = gumbel.shape
    logits = logits.expand(shape)
    temperature = _scalar_if_uniform(temperature.expand(shape[:-1] + (1,)))
    return _GumbelSoftmaxLogSample.apply(logits, temperature, gumbel)


def _scalar_if_uniform(t: Tensor) -> Tensor:
    """A 0-dim view of ``t`` when ``t`` is one number expanded (all strides 0).

    A float temperature is stored expanded to the batch shape; torch's elementwise kernels
    broadcast a 0-dim operand about 3x faster than a stride-0 one. Autograd maps gradients
    of the view back to ``t``.
    """
    if t.dim() > 0 and not any(t.stride()):
        return t.reshape(-1)[0]
    return t


def _log_constant(num_categories: int, temperature: Tensor) -> Tensor:
    """``lgamma(K) + (K - 1) log τ``, the normalising part of the Concrete density."""
    return temperature.log() * (num_categories - 1) + math.lgamma(num_categories)


def exp_concrete_log_density(value: Tensor, logits: Tensor, temperature: Tensor) -> Tensor:
    """ExpConcrete log-density of a log-simplex point ``value``.

    ``log p(y) = lgamma K + (K-1) log τ + sum_k log_softmax(θ - τ y)_k``, which is the
    textbook ``sum_k (θ_k - τ y_k) - K logsumexp_k(θ_k - τ y_k)`` written so that no large
    terms cancel. The density is with respect to Lebesgue measure on the log-ratio
    coordinates ``y_k - y_K``, ``k < K`` (see :class:`~pyro_concrete.ExpConcrete`).

    Args:
        value (Tensor): ``(..., K)`` log-probability vectors.
        logits (Tensor): ``(..., K)``, broadcastable with ``value``.
        temperature (Tensor): shape broadcastable with ``value.shape[:-1]``.
    """
    scores = _LogDensityOfScores.apply(value, logits, _scalar_if_uniform(temperature), False)
    return scores + _log_constant(value.shape[-1], temperature)


def exp_concrete_log_density_of_own_sample(log_value: Tensor, logits: Tensor, temperature: Tensor) -> Tensor:
    """ExpConcrete log-density of its own reparameterised sample, along the sample path.

    At ``y = log_softmax((θ + G) / τ)`` one has ``θ_k - τ y_k = -G_k + c`` with ``c``
    shared by all ``k``, so the density is ``sum_k log E_k - K log sum_k E_k`` (``E =
    exp(-G)``), a term of the noise alone, plus ``lgamma K + (K-1) log τ``. Along the sample
    path (noise fixed) its derivatives are ``0`` in θ and ``(K-1)/τ`` in τ. The noise term
    is evaluated from ``y`` without a graph and only ``(K-1) log τ`` is differentiated: the
    value and the total derivatives with respect to the parameters of the general formula
    differentiated through the sample, with no backward pass over the sample.

    The result is not a function of ``log_value`` in autograd's graph: differentiating it
    with respect to the sample itself needs :func:`exp_concrete_log_density`.
    """
    with torch.no_grad():
        noise_term = _LogDensityOfScores.forward(None, log_value, logits, temperature, False)
    return noise_term + _log_constant(log_value.shape[-1], temperature)


def concrete_log_density_at_log_value(log_value: Tensor, logits: Tensor, temperature: Tensor) -> Tensor:
    """Concrete log-density of ``x = exp(log_value)``: ``log p_Y(y) - sum_k y_k``.

    Exact wherever ``y`` is known, also where ``exp(y)`` underflows; the Jacobian term is
    folded into the same autograd node as the density.
    """
    scores = _LogDensityOfScores.apply(log_value, logits, _scalar_if_uniform(temperature), True)
    return scores + _log_constant(log_value.shape[-1], temperature)


class _LogDensityOfScores(torch.autograd.Function):
    """``L = sum_k log_softmax(θ - τ y)_k - c sum_k y_k`` (``c = 1``: the Concrete Jacobian).

    One node with a short backward pass: with ``a = θ - τ y``, ``s = softmax(a)`` and
    ``w = 1 - K s = dL/da``, ``dL/dθ = w``, ``dL/dy = -τ w - c`` and
    ``dL/dτ = -sum_k w_k y_k``. Autograd through the elementwise formula would allocate
    about twice as many full-size temporaries. The backward pass is written in
    differentiable operations when a graph of it is recorded, so higher-order gradients
    work too.
    """

    @staticmethod
    def forward(ctx, value: Tensor, logits: Tensor, temperature: Tensor, jacobian: bool) -> Tensor:
        scores = _log_softmax_inplace(torch.addcmul(logits, value, temperature.unsqueeze(-1), value=-1))
        if ctx is not None:  # None: called for the value alone
            ctx.save_for_backward(value, logits, temperature, scores)
            ctx.jacobian = jacobian
        total = scores.sum(-1)
        return total.sub_(value.sum(-1)) if jacobian else total

    @staticmethod
    def backward(ctx, grad: Tensor):
        value, logits, temperature, scores = ctx.saved_tensors
        k, c = value.shape[-1], float(ctx.jacobian)
        g = _scalar_if_uniform(grad).unsqueeze(-1)
        tau = temperature.unsqueeze(-1)
        s = scores.exp()
        grad_value = grad_logits = grad_temperature = None
        if ctx.needs_input_grad[2]:
            # -sum_k g w_k y_k = -g (sum_k y_k - K sum_k s_k y_k)
            row = value.sum(-1, keepdim=True) - k * (s * value).sum(-1, keepdim=True)
            grad_temperature = (-g * row).squeeze(-1).sum_to_size(temperature.shape)
        if ctx.needs_input_grad[1]:
            grad_logits = torch.addcmul(g, s, g, value=-k).sum_to_size(logits.shape)
        if ctx.needs_input_grad[0]:
            # -τ g w - c g = (τ K g) s - (τ + c) g
            if torch.is_grad_enabled():  # a graph of this backward is being recorded
                grad_value = s * (tau * k * g) - (tau + c) * g
            else:
                grad_value = s.mul_(tau * k * g).sub_((tau + c) * g)
            grad_value = grad_value.sum_to_size(value.shape)
        return grad_value, grad_logits, grad_temperature, None


def concrete_log_density(value: Tensor, logits: Tensor, temperature: Tensor) -> Tensor:
    """Concrete log-density of a simplex point ``value``, computed through log space.

    ``log p_X(x) = log p_Y(log x) - sum_k log x_k``; exact zeros in ``x`` (underflow)
    are read as the smallest subnormal float (see :func:`safe_log`).
    """
    return concrete_log_density_at_log_value(safe_log(value), logits, temperature)
