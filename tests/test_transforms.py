"""Transforms of the package's constraints and their registration (issue 4, registration).

The log-simplex bijection is checked against theory: its Jacobian relative to the
log-ratio coordinates (computed by autograd, float64) and the integral of the
ExpConcrete density pulled back through it (quadrature), which must be 1 exactly when the
transform's ``log_abs_det_jacobian`` of 0 is right.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.infer.mcmc.util import initialize_model
from scipy import integrate
from torch.distributions import biject_to, transform_to
from torch.distributions import constraints as torch_constraints
from torch.distributions.transforms import (
    ExpTransform,
    SoftmaxTransform,
    StickBreakingTransform,
)

import pyro_concrete
from pyro_concrete import constraints
from pyro_concrete.constraints import Pinned
from pyro_concrete.transforms import LogSimplexTransform, LogSoftmaxTransform, register_transforms

OUR_CONSTRAINTS = [constraints.positive_finite, constraints.simplex, constraints.log_simplex]


# -- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "constraint, bijection, transform",
    [
        (constraints.positive_finite, ExpTransform, ExpTransform),
        (constraints.simplex, StickBreakingTransform, SoftmaxTransform),
        (constraints.log_simplex, LogSimplexTransform, LogSoftmaxTransform),
    ],
)
def test_registered_transforms(constraint, bijection, transform):
    assert type(biject_to(constraint)) is bijection
    assert type(transform_to(constraint)) is transform
    assert biject_to(constraint).bijective
    for t in (biject_to(constraint), transform_to(constraint)):
        x = torch.randn((5, 3) if constraint.event_dim else (5,), dtype=torch.float64)
        y = t(x)
        assert constraint.check(y).all()
        assert t.domain.event_dim == constraint.event_dim
        torch.testing.assert_close(t(t.inv(y)), y)


def test_registration_is_idempotent_and_touches_only_our_constraints():
    before = {registry: dict(registry._registry) for registry in (biject_to, transform_to)}
    register_transforms()
    register_transforms()
    for registry, entries in before.items():
        assert registry._registry == entries  # same keys, same factories
        ours = {key for key, factory in entries.items() if factory.__module__ == "pyro_concrete.transforms"}
        pinned = {Pinned} if registry is transform_to else set()  # AutoConcrete's masked logits
        assert ours == {type(c) for c in OUR_CONSTRAINTS} | pinned
        # every other constraint keeps the factory torch or Pyro gave it
        assert all(not entries[key].__module__.startswith("pyro_concrete") for key in set(entries) - ours)
    assert type(biject_to(torch_constraints.simplex)) is StickBreakingTransform
    assert type(transform_to(torch_constraints.simplex)) is SoftmaxTransform
    with pytest.raises(NotImplementedError):
        biject_to(torch_constraints.one_hot)


def test_the_package_registers_on_import():
    """``import pyro_concrete`` imports the registering modules (no other import needed)."""
    import sys

    assert {"pyro_concrete.transforms", "pyro_concrete.kl"} <= set(sys.modules)
    assert {"transforms", "kl", "infer"} <= set(pyro_concrete.__all__)


# -- the log-simplex bijection -------------------------------------------------------------------


def test_log_simplex_transform_shapes_and_round_trip():
    t = LogSimplexTransform()
    u = torch.randn(4, 2, 3, dtype=torch.float64) * 5
    y = t(u)
    assert y.shape == (4, 2, 4)
    assert t.forward_shape(u.shape) == y.shape and t.inverse_shape(y.shape) == u.shape
    assert constraints.log_simplex.check(y).all()
    torch.testing.assert_close(t.inv(y), u)
    torch.testing.assert_close(y.exp()[..., :-1] / y.exp()[..., -1:], u.exp())  # log-ratios
    assert t.log_abs_det_jacobian(u, y).shape == (4, 2)
    assert (t.log_abs_det_jacobian(u, y) == 0).all()
    assert t == LogSimplexTransform() and t != LogSoftmaxTransform()
    # extreme coordinates stay finite (no exp of the input)
    far = t(torch.tensor([-500.0, 300.0]))
    assert far.isfinite().all() and constraints.log_simplex.check(far)


def test_log_simplex_transform_gradcheck():
    t = LogSimplexTransform()
    u = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(t, (u,))
    y = t(u).detach().requires_grad_()
    assert torch.autograd.gradcheck(t.inv, (y,))


@pytest.mark.parametrize("num_categories", [2, 3, 5])
def test_log_ratio_measure_is_the_exp_concrete_measure(num_categories):
    """|det d x[:K-1] / du| = prod_k x_k: Lebesgue measure on u is dx / prod x on the simplex.

    The ExpConcrete density is Concrete's (w.r.t. dx on the first K-1 coordinates) times
    prod x_k, so relative to Lebesgue measure on u its transform has log-Jacobian 0.
    """
    t = LogSimplexTransform()
    u = torch.randn(num_categories - 1, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: t(v).exp()[:-1], u)
    y = t(u)
    torch.testing.assert_close(torch.linalg.slogdet(jac).logabsdet, y.sum())
    # and Concrete(x) * prod x = ExpConcrete(log x) at that point
    logits = torch.randn(num_categories, dtype=torch.float64)
    concrete = pyro_concrete.Concrete(0.7, logits=logits).log_prob(y.exp().clone())
    exp_concrete = pyro_concrete.ExpConcrete(0.7, logits=logits).log_prob(y.clone())
    torch.testing.assert_close(concrete + y.sum(), exp_concrete)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_exp_concrete_pulled_back_integrates_to_one_k2(temperature):
    d = pyro_concrete.ExpConcrete(temperature, logits=torch.tensor([0.7, -0.4], dtype=torch.float64))
    t = biject_to(d.support)

    def density(u):
        return math.exp(d.log_prob(t(torch.tensor([u], dtype=torch.float64))).item())

    total, error = integrate.quad(density, -np.inf, np.inf, limit=200)
    assert abs(total - 1) < 1e-8 and error < 1e-8


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_exp_concrete_pulled_back_integrates_to_one_k3(temperature):
    """2-D trapezoid rule on a grid (analytic integrand with exponential tails)."""
    d = pyro_concrete.ExpConcrete(temperature, logits=torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64))
    t = biject_to(d.support)
    h, half_width = 0.08, 40.0 / temperature
    grid = torch.arange(-half_width, half_width + h / 2, h, dtype=torch.float64)
    u = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
    total = d.log_prob(t(u)).exp().sum() * h * h
    assert abs(total.item() - 1) < 1e-8


def test_concrete_through_stick_breaking_integrates_to_one():
    """biject_to(simplex) with its Jacobian is consistent with Concrete's density convention."""
    d = pyro_concrete.Concrete(1.5, logits=torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64))
    t = biject_to(d.support)
    h, half_width = 0.08, 40.0
    grid = torch.arange(-half_width, half_width + h / 2, h, dtype=torch.float64)
    u = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
    x = t(u)
    total = (d.log_prob(x) + t.log_abs_det_jacobian(u, x)).exp().sum() * h * h
    assert abs(total.item() - 1) < 1e-6


def test_hmc_potential_of_an_exp_concrete_site_is_normalised():
    """Pyro's HMC setup (biject_to + log-Jacobian) gives the right unconstrained density."""
    logits = torch.tensor([0.3, -0.8], dtype=torch.float64)

    def model():
        pyro.sample("y", pyro_concrete.ExpConcrete(0.5, logits=logits))

    _, potential_fn, transforms, _ = initialize_model(model)
    assert type(transforms["y"].inv) is LogSimplexTransform  # constrained -> unconstrained

    def density(u):
        return math.exp(-potential_fn({"y": torch.tensor([u], dtype=torch.float64)}).item())

    total, _ = integrate.quad(density, -np.inf, np.inf, limit=200)
    assert abs(total - 1) < 1e-8


def test_log_softmax_transform():
    t = LogSoftmaxTransform()
    x = torch.randn(5, 4, dtype=torch.float64)
    y = t(x)
    assert constraints.log_simplex.check(y).all()
    torch.testing.assert_close(y, torch.log_softmax(x, -1))
    torch.testing.assert_close(t(t.inv(y)), y)
    torch.testing.assert_close(t(x + 3.0), y)  # not injective: constants are forgotten
    assert t.forward_shape(x.shape) == x.shape and not t.bijective


# -- Pyro: params and autoguides use the registered transforms ------------------------------------


def test_pyro_params_with_the_package_constraints():
    pyro.clear_param_store()
    tau = pyro.param("tau", torch.tensor(0.3), constraint=constraints.positive_finite)
    p = pyro.param("p", torch.tensor([0.2, 0.3, 0.5]), constraint=constraints.simplex)
    y = pyro.param("y", torch.tensor([0.2, 0.3, 0.5]).log(), constraint=constraints.log_simplex)
    torch.testing.assert_close(tau, torch.tensor(0.3))
    torch.testing.assert_close(p, torch.tensor([0.2, 0.3, 0.5]))
    torch.testing.assert_close(y.exp(), torch.tensor([0.2, 0.3, 0.5]))
    optimizer = torch.optim.SGD([pyro.param(n).unconstrained() for n in ("tau", "p", "y")], lr=1.0)
    (-(tau * 10) + (p * torch.arange(3.0)).sum() * 50 - y[0] * 30).backward()
    optimizer.step()
    assert constraints.positive_finite.check(pyro.param("tau"))
    assert constraints.simplex.check(pyro.param("p"))
    assert constraints.log_simplex.check(pyro.param("y"))
    pyro.clear_param_store()


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDelta])
@pytest.mark.parametrize("family", [pyro_concrete.Concrete, pyro_concrete.ExpConcrete])
def test_autoguides_on_relaxed_model_sites(autoguide, family):
    data = torch.tensor([1.2, -0.3, 0.8])

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", family(0.5, logits=torch.zeros(3)))
            x = z.exp() if family is pyro_concrete.ExpConcrete else z
            pyro.sample("obs", dist.Normal((x * torch.tensor([-1.0, 0.0, 1.0])).sum(-1), 0.5), obs=data)

    pyro.clear_param_store()
    guide = autoguide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step() for _ in range(20)]
    assert np.isfinite(losses).all()
    z = guide()["z"]
    assert z.shape == (3, 3) and family.support.check(z).all()
    pyro.clear_param_store()
