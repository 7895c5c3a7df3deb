"""The categorical Gumbel-Rao estimator (Paulus, Maddison & Krause 2020), at the cost of its draws.

Gumbel-Rao returns the Gumbel-max sample ``D`` and, as its gradient, the straight-through
gradient averaged over ``k`` draws of the noise conditioned on ``D``: the Jacobian of
``s̄ = (1/k) Σ_i softmax((θ + G'_i) / τ)``. Its cost is set by those draws: ``k`` random
numbers per element. This module spends little else.

**The draws in closed form.** With ``w = exp θ``, ``Z = Σ w``, ``p = w / Z`` and independent
standard Exponential variables ``E_ij = -log u_ij``, a draw of ``θ + G'`` given ``D`` is
``M = log Z - log E_iD`` at ``D`` and ``-log(E_iD / Z + E_ij / w_j)`` elsewhere (the
truncated Gumbels of :func:`~pyro_concrete.ops.conditional_gumbel`). Only differences within
a row matter to a softmax, and relative to ``M`` they are

    ``ℓ_ij = -log(1 + (E_ij / E_iD) / p_j) = -(log(1 / p_j) + log(p_j + E_ij / E_iD))``,

``ℓ_iD = 0``. The second form never overflows (``p_j`` may underflow to 0, where the ratio
takes over; a masked category has ``log(1 / p_j)`` of order ``finfo.max`` and a soft value of
exactly 0). A soft sample is then ``e_i / n_i`` with ``e_i = exp(ℓ_i / τ)`` and its row sum
``n_i >= 1``: per element and draw, one uniform number, two logarithms and one exponential,
on buffers owned by the kernel and updated in place (the first draw's and the others' apart:
in-place passes over a slice are up to twice as slow at small ``K``). The first draw is the
one that decides ``D`` (noise that produced ``D`` is one draw of the noise given ``D``), so
``k`` draws need ``k`` random numbers per element in all.

**Uniform numbers from random bits.** ``aten::random`` fills an int64 buffer with 63
random bits per word, from torch's generator, at less than ``torch.rand``'s cost per float32
number (about 1.4x less on CPU, measured); each 32-bit half of a word gives 23 bits ``m``, and
``u = (m + 1/2) 2^-23`` (exact) is uniform on the midpoints of a grid: never 0 nor 1, so
``E`` is finite and positive (float64: 52 bits per word, ``u`` in ``[2^-53, 1 - 2^-53]``).

**The gradient.** The Jacobian of a softmax is symmetric, so the vector-Jacobian product
needs only the soft samples ``s_i``: with respect to ``θ``,
``(s̄ ⊙ g - (1/k) Σ_i s_i (s_i · g)) / τ``; with respect to ``τ``,
``-(1/(k τ)) Σ_i [(s_i ⊙ log s_i) · g - (s_i · log s_i)(s_i · g)]`` (the Jacobian annihilates
each row's constant, so ``log s_i`` stands for ``ℓ_i / τ``). The ``e_i`` are kept unnormalised:
``s̄`` and ``Σ_i s_i (s_i · g)`` are batched matrix products with the weights ``1 / n_i``, so
no pass is spent on normalising. Where a second derivative is asked for
(``create_graph=True``), the backward pass rebuilds the soft samples as
``softmax((θ - θ.detach() + τ.detach() log s_i) / τ)``, equal in value and differentiable,
and evaluates the same formulas on them: derivatives of every order are those of ``s̄``.
Under ``torch.jit.trace``, ``torch.compile`` and ``torch.func`` the same numbers come from a
plain composition of torch operations (softmax and mean over the draws), which autograd and
the transforms differentiate themselves; a test holds the two equal to second order.

**Memory and cost.** The draws are made in blocks of rows of about :data:`BLOCK_ELEMENTS`
numbers, small enough for the allocator to reuse between blocks. The ``k`` soft samples per
element are kept for the backward pass. ``python benchmarks/estimators.py --cost-only``
times a step against ST and against this floor: ``k`` uniform numbers per element, two
logarithms and an exponential of each, kept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd import forward_ad

from .concrete import _inside_function_transform

__all__ = ["BLOCK_ELEMENTS", "draw_log_uniform", "draw_uniform_midpoints", "gumbel_rao_soft_mean"]

# Random numbers per block of rows: 4 MiB of float32, reused by the allocator between calls.
BLOCK_ELEMENTS = 1 << 20

_MANTISSA_BITS = {torch.float32: 23, torch.float64: 52}
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}
_ONE_BITS = {torch.float32: 0x3F800000, torch.float64: 0x3FF0000000000000}


def draw_log_uniform(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``log u`` for ``u`` from :func:`draw_uniform_midpoints`: ``-log u`` is a standard
    Exponential variable (on a grid: its largest value 16.6 in float32, 36.7 in float64, as
    for ``torch.rand``), finite and positive.

    Example::

        >>> e = -draw_log_uniform(torch.Size([100_000]), torch.float32, torch.device("cpu"))
        >>> bool(0.98 < e.mean() < 1.02)   # standard Exponential
        True
    """
    return draw_uniform_midpoints(shape, dtype, device).log_()


def draw_uniform_midpoints(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``u`` uniform on the midpoints ``(m + 1/2) 2^-b``, ``m < 2^b``, of ``(0, 1)``: never 0 nor 1.

    ``b`` is the mantissa width of ``dtype`` (23 for float32, 52 for float64). Drawn as random
    bits (``Tensor.random_``, whose 64-bit draws give two float32 numbers each; the same stream
    in eager mode and under ``torch.jit.trace``); inside ``torch.func`` transforms and under
    ``torch.compile``, by ``torch.randint``, a different stream of the same law, which
    ``vmap(randomness="different")`` batches (``torch.compile`` hides from Python whether a
    ``vmap`` is active, so it takes the form that is right in both cases).

    Args:
        shape (torch.Size): shape of the result.
        dtype (torch.dtype): ``torch.float32`` or ``torch.float64``.
        device (torch.device): where to draw.

    Returns:
        Tensor: a fresh buffer the caller owns.
    """
    bits = _MANTISSA_BITS[dtype]
    if not _draws_random_bits():
        mantissa = torch.randint(0, 1 << bits, tuple(shape), dtype=torch.int64, device=device)
        return mantissa.to(dtype).mul_(2.0**-bits).add_(2.0 ** -(bits + 1))
    numel = math.prod(shape)
    per_word = 64 // torch.finfo(dtype).bits
    words = torch.empty(-(-numel // per_word), dtype=torch.int64, device=device).random_()  # 63 bits
    mask = (1 << bits) - 1
    if torch.jit.is_tracing():  # no dtype views in a trace: the same numbers by conversion
        halves = [words.bitwise_and(mask)]
        if per_word == 2:  # the order of the view below on a little-endian machine
            halves.append(words.bitwise_right_shift(32).bitwise_and_(mask))
        mantissa = torch.stack(halves, -1).view(-1)[:numel].view(shape)
        return mantissa.to(dtype).mul_(2.0**-bits).add_(2.0 ** -(bits + 1))
    # 1 + m 2^-b in [1, 2) by setting the exponent bits; minus (1 - 2^-(b+1)), exactly.
    mantissa = words.view(_INT_VIEW[dtype])[:numel].view(shape).bitwise_and_(mask)
    return mantissa.bitwise_or_(_ONE_BITS[dtype]).view(dtype).sub_(1 - 2.0 ** -(bits + 1))


def _draws_random_bits() -> bool:
    """Whether the noise may be drawn as random bits into a buffer of the kernel's own: not
    inside a ``torch.func`` transform, where ``vmap`` would give every entry the same numbers,
    nor under ``torch.compile``, which cannot tell Python whether a ``vmap`` is active."""
    return not (torch.compiler.is_compiling() or _inside_function_transform())


def _row_constants(theta: Tensor) -> tuple[Tensor, Tensor]:
    """``(p, log(1/p))`` of shifted logits: ``softmax θ`` and ``logsumexp θ - θ``."""
    log_inv_p = theta.logsumexp(-1, keepdim=True) - theta
    return torch.exp(-log_inv_p), log_inv_p


def _eager(*tensors: Tensor) -> bool:
    """Whether the hand-written backward pass may serve: not while ``torch.jit.trace`` records,
    ``torch.compile`` traces or a ``torch.func`` transform runs, nor for ``tensors`` that carry
    forward-mode tangents (``torch.autograd.forward_ad``: the backward pass has no forward
    mode). These see the composition instead."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or _inside_function_transform():
        return False
    return all(forward_ad.unpack_dual(t).tangent is None for t in tensors)


def _first_draw_and_others(theta: Tensor, draws: int) -> tuple[Tensor, Tensor, Tensor]:
    """The random part of a block of rows, shared by both paths: ``(x, D, log_u)`` with
    ``x = θ + G`` the first draw's perturbed logits, shape ``(rows, 1, K)`` (``G = -log(-log
    u)``), ``D`` its argmax, shape ``(rows, 1)``, and ``log u`` of the ``draws - 1`` others,
    ``(rows, draws - 1, K)``. Each in a buffer of its own: in-place passes over a contiguous
    buffer are up to twice as fast as over a slice of one."""
    rows, num_categories = theta.shape
    log_u_first = draw_log_uniform(torch.Size([rows, 1, num_categories]), theta.dtype, theta.device)
    log_u = draw_log_uniform(torch.Size([rows, draws - 1, num_categories]), theta.dtype, theta.device)
    perturbed = theta.unsqueeze(-2) - torch.log(-log_u_first)
    return perturbed, perturbed.argmax(-1), log_u


def _negated_log_ratios(theta: Tensor, draws: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(q_first, q_rest, D)`` for one block of rows: ``q = -ℓ >= 0`` (the module docstring;
    0 at ``D``) of the first draw, shape ``(rows, 1, K)``, and of the ``draws - 1`` others,
    ``(rows, draws - 1, K)``, and the Gumbel-max index ``D`` of shape ``(rows, 1)``, decided by
    the first draw. Without gradient; ``theta`` is ``(rows, K)``, shifted."""
    perturbed, index, log_u = _first_draw_and_others(theta, draws)
    first = perturbed.gather(-1, index.unsqueeze(-1)) - perturbed  # x_D - x >= 0
    # The others, given D: q = log(1/p) + log(p + E / E_D), and 0 at D.
    p, log_inv_p = _row_constants(theta.unsqueeze(-2))
    at_d = index.unsqueeze(-1).expand(log_u.shape[:-1] + (1,))
    rest = (log_u / log_u.gather(-1, at_d) + p).log() + log_inv_p
    return first, rest.scatter(-1, at_d, 0.0), index


def _unnormalised_soft_samples(
    theta: Tensor, tau: Tensor, draws: int, masked: Tensor | None
) -> tuple[list[Tensor], Tensor]:
    """The eager form of :func:`_negated_log_ratios`, in place and a step further:
    ``([e_first, n_first, e_rest, n_rest], D)`` with ``e = exp(ℓ / τ)`` (1 at ``D``) and its
    row sums ``n >= 1``, so that the soft samples are ``e / n``. ``tau``: ``(rows, 1, 1)``;
    ``masked``: ``(rows, 1, K)`` or None."""
    perturbed, index, log_u = _first_draw_and_others(theta, draws)
    first = perturbed.sub_(perturbed.gather(-1, index.unsqueeze(-1))).div_(tau).exp_()
    if masked is not None:
        first.masked_fill_(masked, 0.0)
    p, log_inv_p = _row_constants(theta.unsqueeze(-2))
    at_d = index.unsqueeze(-1).expand(log_u.shape[:-1] + (1,))
    log_u.div_(log_u.gather(-1, at_d)).add_(p).log_()
    # ℓ / τ = -(log(1/p) + log(p + E / E_D)) / τ in one pass (a masked category: -inf).
    torch.addcmul(log_inv_p.div(-tau), log_u, tau.reciprocal().neg_(), out=log_u)
    rest = log_u.scatter_(-1, at_d, 0.0).exp_()
    if masked is not None:
        rest.masked_fill_(masked, 0.0)
    return [first, first.sum(-1, keepdim=True), rest, rest.sum(-1, keepdim=True)], index


def _blocks(rows: int, draws: int, num_categories: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of blocks of rows of about :data:`BLOCK_ELEMENTS` random numbers."""
    per_block = max(1, BLOCK_ELEMENTS // (draws * num_categories))
    return [(start, min(start + per_block, rows)) for start in range(0, rows, per_block)]


def gumbel_rao_soft_mean(
    theta: Tensor, temperature: Tensor, draws: int, masked: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The Gumbel-max index and the Gumbel-Rao surrogate ``s̄`` for rows of shifted logits.

    Args:
        theta (Tensor): ``(rows, K)`` logits shifted so that each row's largest is 0, masked
            categories filled with a finite value about ``finfo.max`` below
            (:func:`~pyro_concrete.ops.concrete.shifted_logits`), in the compute dtype.
        temperature (Tensor): ``(rows, 1)``, positive.
        draws (int): ``k >= 2``, the number of conditional noise draws.
        masked (Tensor, optional): ``(rows, K)`` bool, the masked categories (None: none).
            Their soft values are set to exactly 0 (the fill of a half-precision mask, read in
            float32, would not underflow at a large temperature).

    Returns:
        ``(index, s̄)``: ``(rows, 1)`` int64 Gumbel-max categories, and ``(rows, K)``, the mean
        over the draws of the soft samples, differentiable with respect to ``theta`` and
        ``temperature`` to every order (its value is a set of probability vectors; exact 0
        at masked categories).
    """
    blocks = _blocks(theta.shape[0], draws, theta.shape[1])
    indices = []
    if _eager(theta, temperature):
        # The soft samples computed in place, without autograd; _SoftMean's backward pass.
        soft = []
        with torch.no_grad():
            for start, stop in blocks:
                tau = temperature[start:stop].detach().unsqueeze(-1)
                rows_masked = None if masked is None else masked[start:stop].unsqueeze(-2)
                parts, index = _unnormalised_soft_samples(theta[start:stop].detach(), tau, draws, rows_masked)
                soft.extend(parts)
                indices.append(index)
        return torch.cat(indices), _SoftMean.apply(theta, temperature, *soft)
    # The composition: the same values, differentiated by autograd and the transforms.
    means = []
    for start, stop in blocks:
        rows = theta[start:stop]
        with torch.no_grad():
            *parts, index = _negated_log_ratios(rows.detach(), draws)
        # Clamped where a masked category's -q / τ overflows, and multiplied by 1/τ: no inf
        # enters the τ-derivative (as in :func:`~pyro_concrete.ops.concrete.log_sample`).
        inv_tau = temperature[start:stop].unsqueeze(-1).reciprocal()
        lowest = torch.finfo(theta.dtype).min
        scaled = [(((rows - rows.detach()).unsqueeze(-2) - q) * inv_tau).clamp_min(lowest) for q in parts]
        if masked is not None:
            scaled = [z.masked_fill(masked[start:stop].unsqueeze(-2), lowest) for z in scaled]
        soft = [torch.softmax(z, -1) for z in scaled]
        means.append(_mean_of_parts(*soft))
        indices.append(index)
    return torch.cat(indices), torch.cat(means)


def _mean_of_parts(first: Tensor, rest: Tensor) -> Tensor:
    """``(1/k) Σ_i s_i`` of a block's soft samples: the first draw's ``(rows, 1, K)`` and the
    others' ``(rows, k - 1, K)``."""
    return (first.sum(-2) + rest.sum(-2)) / (first.shape[-2] + rest.shape[-2])


class _SoftMean(torch.autograd.Function):
    """``s̄`` from soft samples computed without autograd and held unnormalised, as
    ``(e, n)`` pairs with ``s = e / n`` (two per block of rows: the first draw's and the
    others'), with the vector-Jacobian product of the module docstring (and, under
    ``create_graph``, a differentiable one). Batched matrix products with the weights ``1/n``
    take the place of the normalisation: no pass of the parts' size is spent on it."""

    @staticmethod
    def forward(theta: Tensor, temperature: Tensor, *soft: Tensor) -> Tensor:
        draws = soft[0].shape[-2] + soft[2].shape[-2]
        means = []
        for e_first, n_first, e_rest, n_rest in _quadruples(soft):
            mean = torch.matmul(n_first.reciprocal().transpose(-1, -2), e_first)
            mean = mean + torch.matmul(n_rest.reciprocal().transpose(-1, -2), e_rest)
            means.append(mean.squeeze(-2) / draws)
        return torch.cat(means)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        theta, temperature, *soft = inputs
        ctx.save_for_backward(theta, temperature, output, *soft)

    @staticmethod
    def backward(ctx, grad: Tensor):
        theta, temperature, output, *soft = ctx.saved_tensors
        needs_theta, needs_tau = ctx.needs_input_grad[:2]
        draws = soft[0].shape[-2] + soft[2].shape[-2]
        grads_theta, grads_tau = [], []
        start = 0
        for e_first, n_first, e_rest, n_rest in _quadruples(soft):
            stop = start + e_first.shape[0]
            tau, g, mean = temperature[start:stop], grad[start:stop], output[start:stop]
            if torch.is_grad_enabled() or needs_tau:  # the soft samples themselves
                parts = [e_first / n_first, e_rest / n_rest]
                if torch.is_grad_enabled():  # create_graph: as functions of θ and τ
                    parts = [_rebuilt(s, theta[start:stop], tau) for s in parts]
                    mean = _mean_of_parts(*parts)
                weights = [torch.ones_like(n_first), torch.ones_like(n_rest)]
            else:
                parts, weights = [e_first, e_rest], [n_first.reciprocal(), n_rest.reciprocal()]
            # s_i · g = (e_i · g) / n_i (a product and a sum: CPU's batched matrix product is
            # slower for these shapes), and Σ_i s_i (s_i · g), a batched product.
            dots = [
                (e * g.unsqueeze(-2)).sum(-1, keepdim=True) * w for e, w in zip(parts, weights, strict=True)
            ]
            if needs_theta:
                first, rest = (
                    torch.matmul((d * w).transpose(-1, -2), e).squeeze(-2)
                    for d, w, e in zip(dots, weights, parts, strict=True)
                )
                grads_theta.append((mean * g - (first + rest) / draws) / tau)
            if needs_tau:
                terms = []
                for d, s in zip(dots, parts, strict=True):
                    s_log_s = torch.xlogy(s, s)
                    terms.append(
                        (torch.matmul(s_log_s, g.unsqueeze(-1)) - s_log_s.sum(-1, keepdim=True) * d).sum(-2)
                    )
                grads_tau.append(-(terms[0] + terms[1]) / (draws * tau))
            start = stop
        grad_theta = torch.cat(grads_theta) if needs_theta else None
        grad_tau = torch.cat(grads_tau) if needs_tau else None
        return (grad_theta, grad_tau) + (None,) * len(soft)


def _quadruples(soft: tuple[Tensor, ...]) -> list[tuple[Tensor, ...]]:
    return [tuple(soft[i : i + 4]) for i in range(0, len(soft), 4)]


def _rebuilt(s: Tensor, rows: Tensor, tau: Tensor) -> Tensor:
    """Soft samples ``s`` (rows, m, K) rebuilt as differentiable functions of the rows' logits
    and temperature, equal in value: ``softmax((θ - θ.detach() + τ.detach() log s) / τ)``. A 0
    (a masked category) stays exactly 0, with derivative 0; the smallest normal float in its
    place keeps inf out of the τ-derivative."""
    zero = s == 0
    log_s = torch.log(s.masked_fill(zero, torch.finfo(s.dtype).tiny))
    scaled = (rows - rows.detach()).unsqueeze(-2) + tau.detach().unsqueeze(-1) * log_s
    return torch.softmax(scaled / tau.unsqueeze(-1), -1).masked_fill(zero, 0.0)
