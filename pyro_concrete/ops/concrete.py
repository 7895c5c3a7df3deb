"""Kernels of the categorical Concrete family: the sampler and the log-densities.

Notation: ``logits`` θ ∈ [-inf, inf)^K, ``temperature`` τ > 0, Gumbel noise ``G``. A
Concrete sample in log space is ``y = log_softmax((θ + G) / τ)``.

Every kernel here is a composition of differentiable torch operations: derivatives of every
order, ``torch.func`` (``grad``, ``jacrev``, ``hessian``, ``vmap``), ``torch.jit.trace`` and
``torch.compile`` work as for any torch code. Three things are handled in the arithmetic
itself, with masks applied by ``masked_fill`` so that no ``inf - inf`` or ``0 * inf`` reaches
a gradient:

- **Masks.** A category whose logit is ``-inf``, or more than half the dtype's largest float
  below the row's largest logit (a ``finfo.min`` mask), is a structural zero
  (:func:`structural_zeros`). The Concrete with masked categories is the Concrete on the face
  of the others: its sample is exactly ``-inf`` (log space) / ``0`` there, and its density is
  that of the Concrete over the ``K'`` unmasked categories.
- **Huge logits and tiny temperatures.** ``θ + G`` is shifted by its row maximum before the
  division by τ, so the largest entry is 0; an entry whose ``(θ + G - max) / τ`` would pass
  the output dtype's most negative float saturates there (a finite sample in the support;
  its derivative is 0, as it is for any rounding to a bound).
- **Half precision.** float16 and bfloat16 inputs are computed in float32 (see
  :func:`~pyro_concrete.parameters.compute_dtype`); samples are rounded back to the input's
  dtype (saturating at its range), log-densities are returned in float32, whose range they
  need at low temperature.

Densities are evaluated from ``y``: at low temperature ``exp(y)`` underflows to exact zeros in
float32 while ``y`` stays finite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..parameters import Number, compute_dtype, kernel_temperature
from .noise import smallest_subnormal

__all__ = [
    "concrete_log_density",
    "concrete_log_density_at_log_value",
    "exp_concrete_log_density",
    "floored_exp",
    "gumbel_softmax_log_sample",
    "log_floor",
    "structural_zeros",
]


def _masking_gap(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max / 2


def _may_branch_on_values(t: Tensor) -> bool:
    """Whether Python may read ``t``'s values to pick a code path.

    Only on the CPU, where the fast paths were measured to pay (on an accelerator reading a
    value is a host synchronisation, and the masking passes are cheap), and not while
    ``torch.jit.trace`` records (the trace would keep one path for every later input), while
    ``torch.compile`` traces (a graph break), or inside a ``torch.func`` transform (``vmap`` has
    no single value to read). Where it may not, the general path runs: the same results up to
    rounding, a little slower.
    """
    return t.device.type == "cpu" and not (
        torch.jit.is_tracing() or torch.compiler.is_compiling() or _inside_function_transform()
    )


def _inside_function_transform() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...) is active."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def shifted_logits(logits: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(θ - max θ, masked)``: the logits shifted so that each row's largest is 0, with masked
    entries (:func:`structural_zeros`) replaced by the finite ``-0.75 finfo.max``, and the mask.

    Every density and sample of the family is invariant to shifting a row of logits, so the
    shift (by a detached maximum) changes no derivative of any order; it keeps ``θ + G`` from
    overflowing for logits near the dtype's largest float. The finite fill is below every
    unmasked entry by at least ``finfo.max / 4``, so it never wins a row's maximum, and keeps
    ``inf`` out of every product whose gradient is taken; callers set masked outputs to
    ``-inf`` or ``0`` last. Derivative 0 at masked entries.

    The mask is ``None`` when no category is masked (found by one reduction where
    :func:`_may_branch_on_values` allows reading it): the kernels then skip every masking pass.
    The shift itself always happens: ``θ + G`` at the logits' own magnitude would lose the
    noise to rounding (logits ``1e8 + [0, 0, -1]``).
    """
    theta = logits - logits.detach().amax(-1, keepdim=True)
    gap = _masking_gap(logits.dtype)
    if _may_branch_on_values(theta) and (theta.numel() == 0 or theta.detach().amin() >= -gap):
        return theta, None
    masked = _beyond_gap(theta.detach(), logits.dtype)
    return theta.masked_fill(masked, -1.5 * gap), masked


def _beyond_gap(shifted: Tensor, dtype: torch.dtype) -> Tensor:
    """Masked entries of row-shifted logits: more than the gap below the row's maximum, or
    NaN (``-inf - -inf``: a row of ``-inf`` only, every category masked)."""
    return ~(shifted >= -_masking_gap(dtype))


def mask_for_value(masked: Tensor | None, value: Tensor) -> Tensor | None:
    """The mask with which :func:`log_density` scores a general ``value``: None (every masking
    pass skipped) only where no category is masked and ``value`` has no ``-inf`` entry, which
    one reduction decides where :func:`_may_branch_on_values` allows; an all-False mask where
    it cannot be decided."""
    if masked is not None:
        return masked
    if _may_branch_on_values(value) and not (value == -torch.inf).any():
        return None
    return torch.zeros((), dtype=torch.bool, device=value.device).expand(value.shape[-1:])


def structural_zeros(logits: Tensor) -> Tensor:
    """Where a category is masked: a ``-inf`` logit, or one more than ``finfo.max / 2`` below
    the largest logit of its row (the ``masked_fill(mask, finfo.min)`` idiom).

    Such a category has probability ``exp(-finfo.max / 2)``, zero in every dtype; treating it
    as an exact zero keeps ``(θ + G) / τ`` and the densities free of overflow. In a row whose
    logits are all ``-inf`` every category is masked (such a row has no distribution).

    Args:
        logits (Tensor): ``(..., K)``.

    Returns:
        Tensor: bool, of ``logits``' shape.

    Example::

        >>> structural_zeros(torch.tensor([0.0, -float("inf"), torch.finfo(torch.float32).min]))
        tensor([False,  True,  True])
    """
    detached = logits.detach()
    return _beyond_gap(detached - detached.amax(-1, keepdim=True), logits.dtype)


def log_floor(dtype: torch.dtype) -> float:
    """``log`` of the smallest normal float of ``dtype``: below it ``exp`` underflows."""
    return math.log(torch.finfo(dtype).tiny)


_FIND = object()  # floored_exp's default: find the -inf entries of y


def floored_exp(y: Tensor, masked: Tensor | object | None = _FIND) -> Tensor:
    """``exp(max(y, log tiny))``: ``exp(y)`` with underflow replaced by the smallest normal.

    A component below the smallest normal float ``tiny`` would otherwise come out as a
    subnormal or ``0.0``; the difference is below ``tiny`` in absolute value, while torch's
    CPU ``exp`` is 50-180x slower on inputs that underflow (measured). ``-inf`` (a masked
    category) stays exactly ``0``. The derivative is 0 below the floor.

    Args:
        y (Tensor): log-space values.
        masked (Tensor or None, optional): where ``y`` is ``-inf``, when the caller knows it
            (None: nowhere), which spares the search.
    """
    x = _clamp_min(y, log_floor(y.dtype)).exp()
    if masked is None:
        return x
    return x.masked_fill(y == -torch.inf if not isinstance(masked, Tensor) else masked, 0.0)


def _clamp_min(t: Tensor, floor: float) -> Tensor:
    """``t.clamp_min(floor)``, skipped where one reduction shows nothing is below ``floor``
    (the same values and derivatives; the clamp's backward pass is slow on CPU)."""
    if _may_branch_on_values(t) and (t.numel() == 0 or t.detach().amin() >= floor):
        return t
    return t.clamp_min(floor)


def row_sum(t: Tensor) -> Tensor:
    """``t.sum(-1)``; for two categories as the product with ``(1, 1)``, the same floats (one
    addition per row): torch's CPU reduction over a last dimension of size 2 is about 10x
    slower than the product (measured). The product's backward (an outer product) allocates
    the gradient that the sum's consumers materialise from its expanded one: the same peak
    memory (measured)."""
    if t.shape[-1] == 2:
        return torch.matmul(t, t.new_ones(2))
    return t.sum(-1)


# torch's CPU log_softmax is slow along a short last dimension (about 5x slower than the
# elementwise route of _log_softmax for K < 16, measured); above that it is the faster one.
_SHORT_LAST_DIM = 16


def _log_softmax(z: Tensor, *, row_max_is_zero: bool = False) -> Tensor:
    """``log_softmax(z, -1)``; for short rows as ``z - m - log Σ exp(z - m)`` in elementwise
    operations (``m`` the detached row maximum, skipped where it is known to be 0), with the
    exponentials floored at the smallest normal float (a change below rounding in the sum;
    CPU ``exp`` is slow on underflow). Composite: every derivative order, every transform."""
    if z.shape[-1] >= _SHORT_LAST_DIM:
        return torch.log_softmax(z, -1)
    if z.shape[-1] == 2:  # log_softmax([u, v]) = -softplus([v - u, u - v]): no reduction
        d = z[..., 1:] - z[..., :1]
        return -F.softplus(torch.cat([d, -d], -1))
    if not row_max_is_zero:
        z = z - z.detach().amax(-1, keepdim=True)
    return z - _clamp_min(z, log_floor(z.dtype)).exp().sum(-1, keepdim=True).log()


def log_sample(
    logits: Tensor, temperature: Tensor, noise: Tensor, masked: Tensor | None, out_dtype: torch.dtype
) -> Tensor:
    """``log_softmax((θ + noise) / τ)`` with masks and saturation, in the compute dtype.

    The kernel behind every categorical sampler of the package; no checks, no casts. Written
    so that no ``inf`` enters a product whose gradient is taken: masked logits are finite
    (:func:`shifted_logits`), the shifted ``a = θ + noise - max <= 0`` is finite, and
    ``a · (1/τ)`` is clamped at the floor (gradient 0 there, and ``0 · a`` for the
    temperature); masked entries are set to ``-inf`` last. The two steps are
    :func:`perturbed_logits` and :func:`log_sample_of_perturbed`.

    Args:
        logits (Tensor): ``(..., K)`` shifted logits (:func:`shifted_logits`), broadcastable
            to ``noise``.
        temperature (Tensor): ``(..., 1)``, broadcastable to ``noise``.
        noise (Tensor): ``(..., K)`` (Gumbel noise, or zeros for ``softmax(θ / τ)``).
        masked (Tensor or None): the mask of :func:`shifted_logits` (None: no masked category).
        out_dtype (torch.dtype): the dtype the sample will be rounded to: entries saturate
            at its most negative float.
    """
    return log_sample_of_perturbed(perturbed_logits(logits, noise), temperature, masked, out_dtype)


def perturbed_logits(logits: Tensor, noise: Tensor) -> Tensor:
    """``a = θ + noise - max(θ + noise)``, the row maximum detached (``log_softmax`` is
    shift-invariant in every derivative), so that ``a <= 0`` with a 0 in every row.

    The shift is applied in place to the fresh sum (its backward needs no value), which spares
    a full-size temporary; a new tensor either way.
    """
    a = logits + noise
    return a.sub_(a.detach().amax(-1, keepdim=True))


def log_sample_of_perturbed(
    perturbed: Tensor, temperature: Tensor, masked: Tensor | None, out_dtype: torch.dtype
) -> Tensor:
    """:func:`log_sample` from ``a`` (:func:`perturbed_logits`): ``log_softmax(a / τ)``, saturated
    at ``out_dtype``'s most negative float, ``-inf`` at masked categories.

    Deterministic in ``a``: run again on the same ``a`` (without gradient) it returns the same
    floats, which is how :class:`~pyro_concrete.Concrete` recovers a sample's pre-image from
    the ``a`` that autograd saves for the temperature's gradient (instead of keeping both).
    """
    z = _clamp_min(perturbed * temperature.reciprocal(), torch.finfo(out_dtype).min)
    y = _log_softmax(z, row_max_is_zero=True)
    return y if masked is None else y.masked_fill(masked, -torch.inf)


def gumbel_softmax_log_sample(
    logits: Tensor, temperature: Tensor | Number, gumbel: Tensor
) -> tuple[Tensor, Tensor]:
    """Reparameterised ExpConcrete and Concrete sample from given Gumbel noise.

    Args:
        logits (Tensor): ``(..., K)`` unnormalised log-probabilities (``-inf`` masks a
            category), broadcastable to ``gumbel``.
        temperature (float or Tensor): one temperature per row, broadcastable with
            ``gumbel.shape[:-1]`` (torch's ``(..., 1)`` form is read the same way: see
            :func:`~pyro_concrete.parameters.kernel_temperature`).
        gumbel (Tensor): standard Gumbel noise of the sample's shape ``(..., K)``.

    Returns:
        ``(y, x)`` with ``y = log_softmax((logits + gumbel) / temperature)`` (the ExpConcrete
        sample, ``-inf`` at masked categories) and ``x = floored_exp(y)`` (the Concrete sample:
        ``exp(y)`` with components below the smallest normal float raised to it, exact ``0``
        at masked categories), both in ``logits``' dtype and differentiable with respect to
        ``logits`` and ``temperature`` to every order.

    Example::

        >>> from pyro_concrete.ops import draw_gumbel
        >>> g = draw_gumbel(torch.Size([5, 3]), torch.float64, torch.device("cpu"))
        >>> y, x = gumbel_softmax_log_sample(torch.zeros(3, dtype=torch.float64), 0.5, g)
        >>> bool(torch.allclose(x.sum(-1), torch.ones(5, dtype=torch.float64)))
        True
    """
    out_dtype = logits.dtype
    dtype = compute_dtype(out_dtype)
    tau = kernel_temperature(temperature, logits, 1).to(dtype).unsqueeze(-1)
    theta, masked = shifted_logits(logits)
    y = log_sample(theta.to(dtype), tau, gumbel.to(dtype), masked, out_dtype)
    return y.to(out_dtype), floored_exp(y, masked).to(out_dtype)


def log_density(
    value: Tensor, logits: Tensor, temperature: Tensor, masked: Tensor | None, *, jacobian: bool
) -> Tensor:
    """ExpConcrete (``jacobian=False``) or Concrete (``True``) log-density at the log-space
    point ``value``, in the compute dtype: the kernel behind every density of the family.

    With ``keep`` the categories that are neither masked nor ``-inf`` in ``value``, ``K'`` their
    number and ``a = θ - τ y``:
    ``lgamma K' + (K'-1) log τ + Σ_keep log_softmax_keep(a)`` (minus ``Σ_keep y`` for the
    Concrete density of ``x = exp(y)``). A value that is ``-inf`` where the category is not
    masked, or finite where it is, lies off the distribution's face: ``-inf``.

    Args:
        value (Tensor): ``(..., K)`` log-space points, broadcastable with ``logits``.
        logits (Tensor): ``(..., K)`` shifted logits (:func:`shifted_logits`).
        temperature (Tensor): ``(...)``, broadcastable with ``value.shape[:-1]``.
        masked (Tensor or None): the mask of :func:`shifted_logits`; None only for a value
            known to have no ``-inf`` entry (the own sample of a distribution with no masked
            category), which skips every masking pass.
    """
    if masked is None:
        a = torch.addcmul(logits, temperature.unsqueeze(-1), value, value=-1)
        density = _log_softmax(a).sum(-1) + _log_normaliser(value.shape[-1], temperature)
        return density - value.sum(-1) if jacobian else density
    on_face = value > -torch.inf
    dropped = ~on_face | masked
    off_face = (on_face == masked).any(-1)
    kept_value = value.masked_fill(dropped, 0.0)
    a = (logits - temperature.unsqueeze(-1) * kept_value).masked_fill(dropped, -torch.inf)
    scores = _log_softmax(a).masked_fill(dropped, 0.0).sum(-1)
    density = scores + _log_normaliser(dropped, temperature)
    if jacobian:
        density = density - kept_value.sum(-1)
    return density.masked_fill(off_face, -torch.inf)


def _log_normaliser(dropped: Tensor | int, temperature: Tensor) -> Tensor:
    """``lgamma K' + (K'-1) log τ`` with ``K'`` the categories left in each row: ``dropped``
    marks the categories out of each row, or is the number ``K`` when none is."""
    if isinstance(dropped, int):
        return temperature.log() * (dropped - 1) + math.lgamma(dropped)
    k = (dropped.shape[-1] - dropped.sum(-1)).to(temperature.dtype)
    return torch.lgamma(k) + (k - 1) * temperature.log()


def exp_concrete_log_density_along_path(
    difference: Tensor, temperature: Tensor, masked: Tensor | None
) -> Tensor:
    """:func:`log_density` (``jacobian=False``) at the own reparameterised sample ``y``, in the
    form whose graph is cheapest to differentiate along the sample path.

    At ``y = log_softmax((θ + G) / τ)``, ``θ_k - τ y_k = -G_k + c`` with ``c`` shared by the
    row: ``Σ_keep log_softmax(θ - τ y)`` is a function of the noise alone. It is evaluated
    without a graph (the same value as :func:`log_density`), and only
    ``lgamma K' + (K'-1) log τ`` is differentiated: as functions of the parameters at fixed
    noise, the two agree in every derivative of every order (except where a sample entry
    saturated at the dtype's floor, where neither is the exact function).

    Args:
        difference (Tensor): ``θ - τ v`` without graph, ``θ`` the shifted logits
            (:func:`shifted_logits`) and ``v`` any point with ``log_softmax(v) = y`` on the kept
            categories: ``y`` itself, or the tempered ``a / τ`` (saturated as the sampler
            saturates it) whose ``log_softmax`` ``y`` is; the two differ by a constant per row,
            which ``log_softmax`` ignores. A buffer the caller gives up: it is overwritten.
        temperature (Tensor): ``(...)``, broadcastable with ``difference.shape[:-1]``.
        masked (Tensor or None): the mask of :func:`shifted_logits`.
    """
    # Detached rather than under no_grad: torch.jit.trace records no grad mode, and a replay
    # that tracked gradients would see the buffer change in place.
    t = difference.detach()
    if masked is None:
        scores = row_sum(_log_softmax(t))
    else:  # the kept categories only (the own sample is -inf exactly at the masked ones)
        scores = row_sum(_log_softmax(t.masked_fill_(masked, -torch.inf)).masked_fill_(masked, 0.0))
    normaliser = _log_normaliser(t.shape[-1] if masked is None else masked, temperature)
    value = scores + normaliser.detach()
    return value - normaliser.detach() + normaliser


def log_density_of_value(
    value: Tensor, logits: Tensor, temperature: Tensor, masked: Tensor | None, *, jacobian: bool
) -> Tensor:
    """:func:`log_density` at a general log-space ``value``: the dtypes promoted (never below
    the compute dtype) and the mask decided by :func:`mask_for_value`. ``logits``, ``masked``:
    as :func:`shifted_logits` returns them; ``temperature`` of the batch shape."""
    dtype = compute_dtype(torch.promote_types(value.dtype, logits.dtype))
    value = value.to(dtype)
    mask = mask_for_value(masked, value)
    return log_density(value, logits.to(dtype), temperature.to(dtype), mask, jacobian=jacobian)


def _public_density(value: Tensor, logits: Tensor, temperature: Tensor | Number, jacobian: bool) -> Tensor:
    theta, masked = shifted_logits(logits)
    tau = kernel_temperature(temperature, logits, 1)
    return log_density_of_value(value, theta, tau, masked, jacobian=jacobian)


def exp_concrete_log_density(value: Tensor, logits: Tensor, temperature: Tensor | Number) -> Tensor:
    r"""ExpConcrete log-density of a log-simplex point ``value``.

    ``log p(y) = lgamma K + (K-1) log τ + Σ_k log_softmax(θ - τ y)_k``, which is the textbook
    ``Σ_k (θ_k - τ y_k) - K logsumexp_k(θ_k - τ y_k)`` written so that no large terms cancel,
    with respect to Lebesgue measure on the log-ratio coordinates ``y_k - y_K``, ``k < K``
    (see :class:`~pyro_concrete.ExpConcrete`). With masked categories, the same over the
    unmasked ones (see the module docstring).

    Args:
        value (Tensor): ``(..., K)`` log-probability vectors.
        logits (Tensor): ``(..., K)``, broadcastable with ``value``.
        temperature (float or Tensor): one per row, broadcastable with ``value.shape[:-1]``
            (torch's ``(..., 1)`` form is read the same way).

    Returns:
        Tensor: the broadcast batch shape; float32 for half-precision inputs.

    Example::

        >>> logits = torch.tensor([0.0, 1.0, -float("inf")])
        >>> y = torch.tensor([-0.5, -0.9325, -float("inf")])     # a point of the face
        >>> exp_concrete_log_density(y, logits, 0.5).isfinite()
        tensor(True)
    """
    return _public_density(value, logits, temperature, jacobian=False)


def concrete_log_density_at_log_value(
    log_value: Tensor, logits: Tensor, temperature: Tensor | Number
) -> Tensor:
    """Concrete log-density of ``x = exp(log_value)``: ``log p_Y(y) - Σ_k y_k``.

    Exact wherever ``y`` is known, also where ``exp(y)`` underflows. Arguments and result
    as in :func:`exp_concrete_log_density`.
    """
    return _public_density(log_value, logits, temperature, jacobian=True)


def log_of_simplex_point(value: Tensor, masked: Tensor | None) -> Tensor:
    """``log(value)`` in the compute dtype for a point of the simplex, with exact zeros read as
    the smallest subnormal float of ``value``'s dtype where the category is not masked
    (underflow: finite, derivative 0) and as ``-inf`` where it is (the face of a masked
    Concrete)."""
    positive = value > 0
    logs = torch.where(positive, value, 1.0).to(compute_dtype(value.dtype)).log()
    underflow = math.log(smallest_subnormal(value.dtype))
    zero = underflow if masked is None else torch.where(masked, -torch.inf, underflow)
    return torch.where(positive, logs, zero)


def concrete_log_density(value: Tensor, logits: Tensor, temperature: Tensor | Number) -> Tensor:
    """Concrete log-density of a simplex point ``value``, computed through log space.

    ``log p_X(x) = log p_Y(log x) - Σ_k log x_k``; exact zeros in ``x`` are read as the
    smallest subnormal float (underflow) where the category is not masked, and as the face of
    the masked categories where it is. Arguments and result as in
    :func:`exp_concrete_log_density`.

    Example::

        >>> x = torch.full((3,), 1 / 3)            # the centre of the simplex, logits 0, τ = 1:
        >>> concrete_log_density(x, torch.zeros(3), 1.0)     # lgamma(3) + 0 - 3 log 3 + 3 log 3
        tensor(0.6931)
    """
    theta, masked = shifted_logits(logits)
    tau = kernel_temperature(temperature, logits, 1)
    return log_density_of_value(log_of_simplex_point(value, masked), theta, tau, masked, jacobian=True)
