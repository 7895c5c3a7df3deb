r"""Temperature schedules for the Concrete relaxation, usable from any training loop.

A schedule is a function of the training step ``t`` (``schedule(t)`` returns a float) that
also keeps its own step counter, in the style of torch's learning-rate schedulers::

    schedule = ExponentialDecay(initial=1.0, rate=1e-4, minimum=0.5, every=500)
    for t in range(num_steps):
        loss = svi.step(data, temperature=schedule.temperature)   # or schedule(t)
        schedule.step()

Pass a schedule as the ``temperature`` of :class:`~pyro_concrete.infer.AutoConcrete` and
the guide reads ``schedule.temperature`` on every call: only ``schedule.step()`` is left to
the loop. Schedules are plain Python objects with ``state_dict``/``load_state_dict`` for
checkpoints.

Learning the temperature instead
--------------------------------
The temperature of every distribution of the package may be a tensor that requires grad.
In a Pyro guide, make it a parameter constrained to be positive; importing
:mod:`pyro_concrete` registers :data:`pyro_concrete.constraints.positive_finite` with
torch's ``transform_to`` (as ``exp``), so ::

    tau = pyro.param("tau", torch.tensor(1.0), constraint=pyro_concrete.constraints.positive_finite)

is optimised on the log scale and is always a positive, finite number;
:func:`learned_temperature` does exactly this, with an optional floor
(``constraints.greater_than(minimum)``, ``minimum + exp(u)``) for the straight-through
estimators, whose gradient variance grows as the temperature goes to 0.
:class:`~pyro_concrete.infer.AutoConcrete` does it with ``learn_temperature=True``. Note
which objectives actually inform the temperature: in a *relaxed* model (Concrete priors,
Maddison et al. 2017) the ELBO depends on the guide's temperature and learning it is
meaningful; with a straight-through guide for a *discrete* model the forward value, and so
the ELBO, does not depend on the temperature at all, and its gradient only comes from the
surrogate (ReinMax gives it none).
"""

from __future__ import annotations

import math

import pyro
import torch
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from .. import constraints
from .._checks import check_float, check_int, check_positive_float

__all__ = [
    "ConstantTemperature",
    "CosineDecay",
    "ExponentialDecay",
    "LinearDecay",
    "TemperatureSchedule",
    "learned_temperature",
]


class TemperatureSchedule:
    """Base class: a temperature as a function of the step, with its own step counter.

    Subclasses implement :meth:`value_at`. ``schedule(t)`` is ``schedule.value_at(t)``;
    :attr:`temperature` is the value at the schedule's own counter, which :meth:`step`
    advances.
    """

    def __init__(self) -> None:
        self.step_count = 0

    def value_at(self, step: int) -> float:
        """The temperature at training step ``step`` (``step >= 0``)."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.value_at(check_int("step", step, minimum=0))

    @property
    def temperature(self) -> float:
        """The temperature at the current step (:attr:`step_count`)."""
        return self.value_at(self.step_count)

    def step(self, steps: int = 1) -> float:
        """Advances the counter by ``steps`` and returns the new temperature."""
        self.step_count += check_int("steps", steps, minimum=0)
        return self.temperature

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = check_int("step_count", state["step_count"], minimum=0)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "step_count")
        return f"{type(self).__name__}({fields})"


class ConstantTemperature(TemperatureSchedule):
    """A fixed temperature.

    Example::

        >>> ConstantTemperature(0.5)(1000)
        0.5
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.value = check_positive_float("temperature", temperature)

    def value_at(self, step: int) -> float:
        return self.value


class ExponentialDecay(TemperatureSchedule):
    r"""Jang, Gu & Poole 2017's annealing: ``max(minimum, initial * exp(-rate * t))``.

    The temperature is recomputed every ``every`` steps and held in between: ``t`` is the
    step rounded down to a multiple of ``every``. The paper uses ``initial = 1``,
    ``minimum = 0.5``, ``rate`` in ``{1e-5, 1e-4}`` and ``every`` in ``{500, 1000}``.

    Args:
        initial (float): temperature at step 0.
        rate (float): decay rate ``r >= 0`` per step.
        minimum (float): the floor ``tau_min`` (may exceed ``initial``: then constant).
        every (int): recompute period ``N >= 1`` in steps.

    Example::

        >>> s = ExponentialDecay(initial=1.0, rate=1e-4, minimum=0.5, every=1000)
        >>> s(999), s(1000), s(10 ** 6)
        (1.0, 0.9048374180359595, 0.5)
    """

    def __init__(self, initial: float = 1.0, rate: float = 1e-5, minimum: float = 0.5, every: int = 500):
        super().__init__()
        self.initial = check_positive_float("initial", initial)
        self.rate = check_float("rate", rate, minimum=0.0)
        self.minimum = check_positive_float("minimum", minimum)
        self.every = check_int("every", every, minimum=1)

    def value_at(self, step: int) -> float:
        t = step - step % self.every
        return max(self.minimum, self.initial * math.exp(-self.rate * t))


class _Interpolated(TemperatureSchedule):
    """From ``initial`` at step 0 to ``final`` at step ``steps`` and after, along a curve."""

    def __init__(self, initial: float, final: float, steps: int, every: int = 1) -> None:
        super().__init__()
        self.initial = check_positive_float("initial", initial)
        self.final = check_positive_float("final", final)
        self.steps = check_int("steps", steps, minimum=1)
        self.every = check_int("every", every, minimum=1)

    def _shape(self, fraction: float) -> float:
        raise NotImplementedError

    def value_at(self, step: int) -> float:
        t = min(step - step % self.every, self.steps)
        return self.final + (self.initial - self.final) * self._shape(t / self.steps)


class LinearDecay(_Interpolated):
    """Linear interpolation from ``initial`` to ``final`` over ``steps`` steps, then ``final``.

    Args:
        initial (float): temperature at step 0.
        final (float): temperature from step ``steps`` on.
        steps (int): length of the ramp.
        every (int): recompute period in steps (held in between).

    Example::

        >>> LinearDecay(1.0, 0.5, steps=100)(50)
        0.75
    """

    def _shape(self, fraction: float) -> float:
        return 1.0 - fraction


class CosineDecay(_Interpolated):
    """Half-cosine from ``initial`` to ``final`` over ``steps`` steps, then ``final``.

    ``final + (initial - final) * (1 + cos(pi * t / steps)) / 2``.

    Example::

        >>> CosineDecay(1.0, 0.5, steps=100)(50)
        0.75
    """

    def _shape(self, fraction: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * fraction))


def learned_temperature(
    name: str = "temperature",
    init: float = 1.0,
    minimum: float | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A temperature learned as a Pyro parameter, positive by construction.

    Call it inside a guide (or model): it returns
    ``pyro.param(name, init, constraint=...)`` with the constraint
    :data:`pyro_concrete.constraints.positive_finite` (optimised as ``exp(u)``), or
    ``greater_than(minimum)`` when a floor is given (``minimum + exp(u)``). The parameter is
    created on the first call, as a 0-dim tensor of ``dtype`` on ``device`` (those of the
    logits it goes with, e.g. ``dtype=logits.dtype, device=logits.device``); later calls
    return the stored one.

    Args:
        name (str): parameter name in Pyro's param store.
        init (float): initial temperature (above ``minimum`` if given).
        minimum (float, optional): a floor the temperature never goes below.
        dtype (torch.dtype, optional): its dtype (default: torch's default dtype).
        device (torch.device or str, optional): its device (default: torch's default device).

    Returns:
        Tensor: the constrained scalar parameter (requires grad).

    Example::

        >>> def guide(data):
        ...     logits = pyro.param("q", torch.zeros(3, device=data.device))
        ...     tau = learned_temperature("tau", init=1.0, minimum=0.1, device=logits.device)
        ...     pyro.sample("z", ConcreteStraightThrough(tau, logits=logits))
    """
    init = check_positive_float("init", init)
    constraint: torch_constraints.Constraint
    if minimum is None:
        constraint = constraints.positive_finite
    else:
        minimum = check_positive_float("minimum", minimum)
        if init <= minimum:
            raise ValueError(f"init must exceed minimum, got init={init} and minimum={minimum}")
        constraint = torch_constraints.greater_than(minimum)
    return pyro.param(name, lambda: torch.tensor(init, dtype=dtype, device=device), constraint=constraint)
