"""Noise and safe logarithms shared by every sampler of the package."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "draw_gumbel",
    "draw_logistic",
    "draw_softmax_noise",
    "neg_logistic_log_density",
    "safe_log",
]


def smallest_subnormal(dtype: torch.dtype) -> float:
    """The smallest positive float of ``dtype`` (a subnormal)."""
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps


def safe_log(x: Tensor) -> Tensor:
    """``log(x)`` with exact zeros read as the smallest positive float of ``x.dtype``.

    A float that is exactly ``0.0`` carries no information beyond "smaller than the
    smallest subnormal"; reading it as that number keeps densities and gradients finite
    (clamping *before* the log keeps the backward pass free of ``0 * inf``).
    """
    return x.clamp_min(smallest_subnormal(x.dtype)).log()


def draw_gumbel(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Draws standard Gumbel noise ``G = -log(-log U)``, ``U ~ Uniform[tiny, 1)``.

    A uniform draw is about 8x cheaper than ``Tensor.exponential_`` on CPU; ``U = 0`` (drawn
    with probability about ``2^-24`` in float32) is raised to the smallest normal float. The
    draw is out of place (``torch.rand``), so ``torch.func.vmap(..., randomness="different")``
    draws independent noise per batch entry. The tails are those of the floating-point grid
    of ``U`` (``G`` in about [-4.5, 16.6] in float32, [-6.5, 36.7] in float64), as for every
    sampler built on ``torch.rand``.

    Returns:
        Tensor: noise of shape ``shape`` (a fresh buffer the caller owns).

    Example::

        >>> g = draw_gumbel(torch.Size([1000, 3]), torch.float32, torch.device("cpu"))
        >>> d = (g + torch.tensor([0.0, 1.0, 2.0])).argmax(-1)   # Categorical(softmax([0, 1, 2]))
        >>> d.shape
        torch.Size([1000])
    """
    if torch.finfo(dtype).bits < 32:
        # A half-precision uniform grid cuts the tails (float16 noise spans about
        # [-2.3, 7.6]), which visibly biases Gumbel-max frequencies: draw in float32.
        return draw_gumbel(shape, torch.float32, device).to(dtype)
    tiny = torch.finfo(dtype).tiny
    noise = torch.rand(shape, dtype=dtype, device=device)
    return noise.clamp_min_(tiny).log_().neg_().log_().neg_()


def draw_logistic(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Draws standard Logistic noise ``L = log U - log(1 - U)``, ``U ~ Uniform(0, 1)``.

    One ``torch.rand`` draw and one in-place ``logit_`` pass on that buffer (a uniform
    draw is about 8x cheaper than ``Tensor.exponential_`` on CPU). ``logit_`` first clamps
    ``U`` to ``[eps/2, 1 - eps/2]`` (``eps`` of ``dtype``): ``U = 0`` (drawn with
    probability ``eps/2``) becomes the next point of ``torch.rand``'s grid, and ``1 - U``
    can never be ``0`` even where a backend rounds a uniform draw up to ``1``, so ``L`` is
    always finite. Its tails are symmetric and those of the uniform grid: ``|L| <= 16.64``
    in float32, ``<= 36.74`` in float64 (the exact tail beyond is ``P(|L| > 16.64) = 1.2e-7``).
    Half-precision noise is drawn in float32 and rounded.

    Args:
        shape (torch.Size): shape of the noise.
        dtype (torch.dtype): a floating dtype.
        device (torch.device): where to draw it.

    Returns:
        Tensor: noise of shape ``shape`` (a fresh buffer the caller owns).

    Example::

        >>> L = draw_logistic(torch.Size([1000]), torch.float32, torch.device("cpu"))
        >>> y = (L + 0.3) / 0.5          # a LogitBinaryConcrete(0.5, logits=0.3) sample
    """
    if torch.finfo(dtype).bits < 32:
        # The grid of a half-precision uniform draw would cut the tails at |L| <= 7.6
        # (float16) or 5.5 (bfloat16), visibly shrinking the variance: draw in float32.
        return draw_logistic(shape, torch.float32, device).to(dtype)
    half_eps = torch.finfo(dtype).eps / 2
    return torch.rand(shape, dtype=dtype, device=device).logit_(half_eps)


def neg_logistic_log_density(t: Tensor) -> Tensor:
    """``h(t) = softplus(t) + softplus(-t)``, the negated standard Logistic log-density.

    Computed as ``2 softplus(|t|) - |t|``. softplus returns its argument unchanged above
    ``log(1/eps)``, where the neglected ``log1p(exp(-|t|)) < eps`` is below the rounding of
    ``|t|``: the result is accurate to rounding in every dtype, and ``exp`` never
    underflows. The autograd derivative is ``tanh(t / 2)``, exactly 0 at ``t = 0``.
    """
    magnitude = t.abs()
    threshold = -math.log(torch.finfo(t.dtype).eps)
    return 2 * F.softplus(magnitude, threshold=threshold) - magnitude


def draw_softmax_noise(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Noise for ``softmax((θ + noise) / τ)``, as :func:`draw_gumbel`, half the cost for K = 2.

    The Concrete sample and its argmax depend on the Gumbel noise only through its
    differences within a row. For ``K = 2`` the difference ``G_1 - G_2`` is standard
    Logistic, so ``(L, 0)`` with ``L`` from :func:`draw_logistic` gives samples with
    exactly the law of ``(G_1, G_2)``'s, from half the random numbers. For other ``K``
    this is :func:`draw_gumbel`. Not for estimators that need each coordinate to be
    Gumbel (Gumbel-Rao's conditional noise): use :func:`draw_gumbel` there.
    """
    if shape[-1] != 2:
        return draw_gumbel(shape, dtype, device)
    logistic = draw_logistic(shape[:-1], dtype, device)
    return torch.stack([logistic, torch.zeros_like(logistic)], -1)
