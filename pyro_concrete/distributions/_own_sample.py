"""A distribution's memory of its own most recent sample.

At low temperature a relaxed sample loses information when it is mapped to its support:
``exp(y)`` underflows to ``0.0``, ``sigmoid(y)`` rounds to ``0.0`` or ``1.0``. The exact
pre-image ``y`` (and anything else the sampler computed) is then needed to score the
sample. The distribution keeps it for the most recent sample, keyed by the identity and
version counter of the returned tensor, never as an attribute on the tensor itself (such
an attribute is lost by ``.clone()``, ``.detach()``, views and casts, and survives in-place
changes that make it wrong).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["OwnSampleMemory", "tensor_version"]


def tensor_version(t: Tensor) -> int | None:
    """``t._version``, or None for inference-mode tensors.

    Inference-mode tensors have no version counter; they cannot be modified in place
    outside inference mode, and identity is then the whole test.
    """
    return None if t.is_inference() else t._version


class _Memory(NamedTuple):
    value: Tensor
    version: int | None
    grad_fn: Any  # the node that produced ``value`` in rsample (None without a graph)
    witness: Tensor | None  # a copy of an inference-mode value (it has no version counter)
    state: Any


class OwnSampleMemory:
    """Mixin for distributions that score their own most recent sample from saved state.

    ``_remember(value, state)`` stores ``state`` for the tensor ``value`` that ``rsample``
    returns; ``_recall(value)`` gives it back only for that very tensor, unmodified (same
    object, same version counter; for inference-mode tensors, which have no version
    counter, equal to a copy taken at sampling time), and None for anything else, which
    must then be scored from its value alone. Changes made through ``.data`` bypass
    autograd's version counter and are not seen (as for autograd itself). The memory is
    not pickled, and a fresh instance (``expand``, unpickling) starts without one.
    """

    _own_sample: _Memory | None = None

    def _remember(self, value: Tensor, state: Any) -> Tensor:
        version = tensor_version(value)
        witness = value.clone() if version is None else None
        self._own_sample = _Memory(value, version, value.grad_fn, witness, state)
        return value

    def _recall(self, value: Tensor) -> Any | None:
        own = self._own_sample
        if own is None or value is not own.value or tensor_version(value) != own.version:
            return None
        if own.witness is not None and not torch.equal(value, own.witness):
            return None
        return own.state

    def _recall_pre_image(
        self, value: Tensor, inverse: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, bool] | None:
        """The exact pre-image ``y`` of the own sample ``value`` (``value = f(y)``), wired
        for autograd as ``value`` is, and whether it is on the sample path; None if ``value``
        is not the own sample.

        While ``value`` still carries the graph of ``rsample``, ``y`` with its graph (``True``):
        every gradient then flows through the sample path. Otherwise (drawn by ``sample()`` or
        under ``no_grad``, detached in place, or a new leaf after ``requires_grad_()``), the
        exact ``y`` without its graph, plus ``inverse(value) - inverse(value).detach()`` when
        ``value`` requires grad (``False``): the value of ``y`` and the derivative of
        ``inverse``, so a score ``d log p(x) / d params`` at the fixed ``x`` and a derivative
        with respect to ``x`` are both right.
        """
        y = self._recall(value)
        own = self._own_sample
        if y is None or own is None:
            return None
        if value.grad_fn is not None and value.grad_fn is own.grad_fn:
            return y, True
        y = y.detach()
        if value.requires_grad:
            pre_image = inverse(value)
            # Zero in value; where the pre-image is infinite (a masked category, a certain
            # binary outcome) the derivative is 0 rather than inf - inf.
            infinite = ~pre_image.isfinite()
            y = y + (pre_image - pre_image.detach()).masked_fill(infinite, 0.0)
        return y, False

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_own_sample", None)  # a sample is not part of the distribution
        return state
