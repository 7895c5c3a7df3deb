"""Temperature schedules and learned temperatures (issue 4, temperature annealing)."""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import constraints as torch_constraints

import pyro_concrete as pc
from pyro_concrete.infer import (
    ConstantTemperature,
    CosineDecay,
    ExponentialDecay,
    LinearDecay,
    TemperatureSchedule,
    learned_temperature,
)


def test_exponential_decay_is_jang_et_al():
    s = ExponentialDecay(initial=1.0, rate=1e-4, minimum=0.5, every=1000)
    for t in [0, 1, 999, 1000, 1500, 2000, 5999, 6000, 7000, 10**6]:
        held = 1000 * (t // 1000)
        assert s(t) == max(0.5, math.exp(-1e-4 * held))
    assert s(999) == 1.0 and s(1000) == pytest.approx(math.exp(-0.1))
    assert s(6931) == pytest.approx(math.exp(-0.6))  # still above the floor
    assert s(7000) == 0.5  # exp(-0.7) < 0.5: the floor
    values = [s(t) for t in range(0, 20000, 250)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # non-increasing
    assert len(set(values[:8])) == 2  # piecewise constant, changes only at multiples of 1000


@pytest.mark.parametrize("cls", [LinearDecay, CosineDecay])
def test_interpolated_schedules(cls):
    s = cls(2.0, 0.5, steps=100)
    assert s(0) == 2.0 and s(100) == 0.5 and s(10**6) == 0.5
    assert s(50) == pytest.approx(1.25)
    values = [s(t) for t in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    held = cls(2.0, 0.5, steps=100, every=10)
    assert held(19) == held(10) == s(10)
    rising = cls(0.5, 1.0, steps=10)  # annealing upwards works too
    assert rising(10) == 1.0 and rising(5) == pytest.approx(0.75)
    if cls is CosineDecay:
        assert s(25) == pytest.approx(0.5 + 1.5 * (1 + math.cos(math.pi / 4)) / 2)


def test_constant():
    s = ConstantTemperature(0.3)
    assert s(0) == s(12345) == s.temperature == 0.3


def test_stateful_use_and_checkpoints():
    s = ExponentialDecay(initial=1.0, rate=1e-2, minimum=0.1, every=10)
    assert isinstance(s, TemperatureSchedule)
    seen = []
    for _ in range(25):
        seen.append(s.temperature)
        s.step()
    assert seen == [s(t) for t in range(25)]
    assert s.step_count == 25
    state = s.state_dict()
    fresh = ExponentialDecay(initial=1.0, rate=1e-2, minimum=0.1, every=10)
    fresh.load_state_dict(state)
    assert fresh.temperature == s.temperature and fresh.step_count == 25
    assert s.step(5) == s(30)
    assert "ExponentialDecay(" in repr(s)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: ExponentialDecay(initial=0.0), "initial"),
        (lambda: ExponentialDecay(initial=float("nan")), "initial"),
        (lambda: ExponentialDecay(minimum=-1.0), "minimum"),
        (lambda: ExponentialDecay(rate=-1e-3), "rate"),
        (lambda: ExponentialDecay(every=0), "every"),
        (lambda: LinearDecay(1.0, 0.0, steps=10), "final"),
        (lambda: CosineDecay(1.0, 0.5, steps=0), "steps"),
        (lambda: ConstantTemperature(float("inf")), "temperature"),
        (lambda: ExponentialDecay()(-1), "step"),
        (lambda: learned_temperature("t", init=0.5, minimum=1.0), "init"),
        (lambda: learned_temperature("t", init=-1.0), "init"),
    ],
)
def test_bad_input(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: ExponentialDecay(initial="1"), "initial"),
        (lambda: ExponentialDecay(every=2.5), "every"),
        (lambda: ExponentialDecay(rate=None), "rate"),
        (lambda: LinearDecay(1.0, 0.5, steps=True), "steps"),
        (lambda: ConstantTemperature(torch.tensor(0.5)), "temperature"),
        (lambda: ExponentialDecay()(1.0), "step"),
        (lambda: ExponentialDecay().step(2.0), "steps"),
        (lambda: learned_temperature("t", init=1.0, minimum="0.1"), "minimum"),
    ],
)
def test_bad_types(make, name):
    with pytest.raises(TypeError, match=name):
        make()


# -- learned temperatures --------------------------------------------------------------------------


def test_learned_temperature_is_a_positive_pyro_param():
    pyro.clear_param_store()
    tau = learned_temperature("tau", init=0.7)
    assert tau.requires_grad and tau.item() == pytest.approx(0.7)
    assert pyro.get_param_store()._constraints["tau"] is pc.constraints.positive_finite
    # optimised on the log scale: a huge step cannot make it non-positive
    unconstrained = pyro.param("tau").unconstrained()
    with torch.no_grad():
        unconstrained -= 50.0
    assert 0 < pyro.param("tau").item() < 1e-20
    learned_temperature("floored", init=0.7, minimum=0.1)
    assert isinstance(
        pyro.get_param_store()._constraints["floored"], type(torch_constraints.greater_than(0.1))
    )
    with torch.no_grad():
        pyro.param("floored").unconstrained().sub_(100.0)
    assert pyro.param("floored").item() == pytest.approx(0.1)
    pyro.clear_param_store()


def test_learned_guide_temperature_finds_the_prior_temperature():
    """Relaxed model, no data: the ELBO is -KL(q || p), maximal at q = p.

    With the guide's logits equal to the prior's, learning only the guide's temperature by
    SVI (Monte Carlo KL: the temperatures differ) must move it from 1.0 to the prior's 0.4.
    """
    logits = torch.tensor([0.5, -0.3, 0.0, 1.2])

    def model():
        with pyro.plate("items", 8):
            pyro.sample("y", pc.ExpConcrete(0.4, logits=logits))

    def guide():
        tau = learned_temperature("tau", init=1.0)
        with pyro.plate("items", 8):
            pyro.sample("y", pc.ExpConcrete(tau, logits=logits))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.99}), elbo)
    for _ in range(300):
        svi.step()
    assert pyro.param("tau").item() == pytest.approx(0.4, abs=0.04)
    pyro.clear_param_store()
