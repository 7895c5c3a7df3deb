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

from typing import Any, NamedTuple

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
    state: Any


class OwnSampleMemory:
    """Mixin for distributions that score their own most recent sample from saved state.

    ``_remember(value, state)`` stores ``state`` for the tensor ``value`` that ``rsample``
    returns; ``_recall(value)`` gives it back only for that very tensor, unmodified (same
    object, same version counter), and None for anything else, which must then be scored
    from its value alone. The memory is not pickled, and a fresh instance (``expand``,
    unpickling) starts without one.
    """

    _own_sample: _Memory | None = None

    def _remember(self, value: Tensor, state: Any) -> Tensor:
        self._own_sample = _Memory(value, tensor_version(value), state)
        return value

    def _recall(self, value: Tensor) -> Any | None:
        own = self._own_sample
        if own is not None and value is own.value and tensor_version(value) == own.version:
            return own.state
        return None

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_own_sample", None)  # a sample is not part of the distribution
        return state
