"""The base class of every distribution of the package: parameters, shapes, expand, repr.

Each family differs in how it samples and scores; how it reads ``temperature``,
``logits`` and ``probs``, follows ``validate_args``, expands and prints itself is the
same and lives here once.
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions.utils import lazy_property

from ..parameters import Number, broadcast_shape, concrete_parameters, temperature_batch_shape

__all__ = ["PackageDistribution", "TemperedDistribution"]


def temperature_repr(t: Tensor) -> str:
    """A temperature for a repr: its value when every entry is the same, else its shape (always
    its shape on the ``meta`` device, which has no values)."""
    uniform = t.numel() > 0 and t.device.type != "meta" and bool((t == t.reshape(-1)[0]).all())
    return f"{t.reshape(-1)[0].item():g}" if uniform else f"Tensor{tuple(t.shape)}"


class PackageDistribution(TorchDistribution):
    """What every distribution of the package shares, whatever its parameters: validation that
    follows torch's global default unless set, no value check on the ``meta`` device, and
    ``sample`` as ``rsample`` without gradient."""

    def _set_validate_args(self, validate_args: bool | None) -> None:
        if validate_args is None:
            self.__dict__.pop("_validate_args", None)  # follow torch's global default
        else:
            self._validate_args = validate_args

    def _validate_sample(self, value: Tensor) -> None:
        # A tensor on the meta device has a shape but no values: nothing to check.
        if value.device.type != "meta":
            super()._validate_sample(value)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


class TemperedDistribution(PackageDistribution):
    """A distribution parameterised by a temperature and exactly one of probs or logits.

    The constructor takes torch's and Pyro's argument order,
    ``(temperature, probs=None, logits=None, validate_args=None)``, so every class is a
    drop-in replacement for its torch or Pyro counterpart. Subclasses set ``_event_dim``
    (1 for the categorical families, 0 for the binary ones) and may extend :meth:`expand`
    for extra attributes and :meth:`_repr_fields` for the repr. Parameter values are
    validated by :func:`concrete_parameters` (one clear message per argument, reductions
    instead of torch's elementwise loop over ``arg_constraints``); ``validate_args=None``
    follows torch's global default as torch does.
    """

    _event_dim: int

    def __init__(
        self,
        temperature: Tensor | Number,
        probs: Tensor | Number | None = None,
        logits: Tensor | Number | None = None,
        validate_args: bool | None = None,
    ) -> None:
        validate = self._validate_args if validate_args is None else validate_args
        params = concrete_parameters(temperature, probs, logits, event_dim=self._event_dim, validate=validate)
        self.temperature = params.temperature
        self.logits = params.logits
        if params.probs is not None:
            self.probs = params.probs
        super().__init__(params.batch_shape, params.event_shape, validate_args=False)
        self._set_validate_args(validate_args)

    @lazy_property
    def probs(self) -> Tensor:
        """``softmax(logits)`` (categorical families) or ``sigmoid(logits)`` (binary ones)."""
        return torch.softmax(self.logits, dim=-1) if self._event_dim else torch.sigmoid(self.logits)

    @classmethod
    def infer_shapes(cls, temperature=(), probs=None, logits=None, **kwargs):
        """Batch and event shapes from argument shapes, with the temperature rule of ``__init__``."""
        shape = torch.Size(logits if logits is not None else probs)
        split = len(shape) - cls._event_dim
        t_shape = temperature_batch_shape(torch.Size(temperature), shape, cls._event_dim)
        return broadcast_shape(shape[:split], t_shape), shape[split:]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        new.logits = self.logits.expand(batch_shape + self._event_shape)
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape + self._event_shape)
        TorchDistribution.__init__(new, batch_shape, self._event_shape, validate_args=False)
        new._set_validate_args(self.__dict__.get("_validate_args"))
        return new

    def _parameters_require_grad(self) -> bool:
        return self.logits.requires_grad or self.temperature.requires_grad

    def _repr_fields(self) -> list[str]:
        return [
            f"temperature: {temperature_repr(self.temperature)}",
            f"logits: Tensor{tuple(self.logits.shape)}",
        ]

    def __repr__(self) -> str:
        fields = [*self._repr_fields(), f"batch_shape: {tuple(self.batch_shape)}"]
        if self._event_dim:
            fields.append(f"event_shape: {tuple(self.event_shape)}")
        return f"{type(self).__name__}({', '.join(fields)})"
