"""Densities of Concrete / ExpConcrete (issue 2, criterion 2)."""

import math

import numpy as np
import pytest
import reference
import torch
from scipy import integrate

from pyro_concrete import Concrete, ExpConcrete

LOGITS_3 = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_concrete_density_integrates_to_one_k2(temperature):
    d = Concrete(temperature, logits=LOGITS_3[:2])

    def density(x1):
        return d.log_prob(torch.tensor([x1, 1.0 - x1], dtype=torch.float64)).exp().item()

    total, err = integrate.quad(density, 0, 1, limit=400, epsabs=1e-10, epsrel=1e-10)
    assert abs(total - 1) < 1e-6, (total, err)


# -- K = 3: one batched tensor-product rule in log-ratio coordinates --------------------------
#
# In the log-ratio coordinates u = (log x1/x3, log x2/x3) (x = softmax(u1, u2, 0), and
# dx1 dx2 = x1 x2 x3 du1 du2) both densities are smooth on all of R^2 with exponential tails,
# where on the simplex the Concrete density has power singularities x^(2τ-1) at the edges
# (on which Gauss-Legendre converges only algebraically). The trapezoid rule on a square grid
# converges geometrically in 1/step for such integrands, so one batched ``log_prob`` call on
# the grid gives the integral to ~1e-10, and the tolerance is the rule's own error bound:
#
# - truncation: under Concrete(τ, θ), u_i = (θ_i - θ_3 + G_i - G_3) / τ is
#   Logistic((θ_i - θ_3) / τ, 1 / τ), so P(|u_i| > w) <= 2 exp(-(τ w - |θ_i - θ_3|)), and the
#   mass outside the box [-w, w]^2 is at most the sum over i of that;
# - discretisation: the rule with step h against the rule with step 2h on the same nodes (every
#   other one); the rule's error falls geometrically, so this difference bounds the error of
#   the finer rule;
# - rounding: float64 densities of log-size O(100), summed pairwise over ~10^5 nodes, are
#   good to ~1e-14 relative; ROUNDING allows 100x that.
#
# The bound is checked to be below the 1e-5 the former per-point dblquad version asserted.

TAIL_DECAY = 30.0  # the box is chosen so that each tail bound is 2 exp(-30) ~ 2e-13
STEP = 0.25
ROUNDING = 1e-12


def _integrate_over_log_ratios(log_density_of_z, temperature, logits):
    """Integral of exp(log_density_of_z(z)) over u in R^2, z = (u1, u2, 0), and its error bound.

    ``log_density_of_z`` maps a (N, 3) batch of points z to the log-density of u at those
    points (one call for the whole grid).
    """
    shifts = (logits[:2] - logits[2]).abs().tolist()
    pairs = math.ceil((TAIL_DECAY + max(shifts)) / temperature / (2 * STEP))
    half_width = 2 * STEP * pairs  # a whole number of coarse steps
    u = torch.linspace(-half_width, half_width, 4 * pairs + 1, dtype=torch.float64)
    u1, u2 = torch.meshgrid(u, u, indexing="ij")
    z = torch.stack([u1, u2, torch.zeros_like(u1)], -1).reshape(-1, 3)
    values = log_density_of_z(z).exp().reshape(u1.shape)
    assert torch.isfinite(values).all()
    fine = values.sum().item() * STEP**2
    coarse = values[::2, ::2].sum().item() * (2 * STEP) ** 2
    tail = sum(2 * math.exp(-(temperature * half_width - shift)) for shift in shifts)
    bound = abs(fine - coarse) + tail + ROUNDING
    assert bound < 1e-5, bound  # never looser than the former dblquad check
    return fine, bound


def _concrete_in_log_ratios(d):
    """The Concrete density of u: p(x(u)) x1 x2 x3."""

    def log_density(z):
        log_x = torch.log_softmax(z, -1)
        return d.log_prob(log_x.exp()) + log_x.sum(-1)

    return log_density


@pytest.mark.parametrize("temperature", [1.5, 0.4])
def test_concrete_density_integrates_to_one_k3(temperature):
    """τ = 1.5: a bounded density on the simplex; τ = 0.4 (2τ < 1): unbounded at the edges."""
    d = Concrete(temperature, logits=LOGITS_3)
    total, bound = _integrate_over_log_ratios(_concrete_in_log_ratios(d), temperature, LOGITS_3)
    assert abs(total - 1) <= bound, (total, bound)


def _log_simplex_point(u):
    """The log-simplex point with log-ratio coordinates u: y = log_softmax([u, 0])."""
    return torch.log_softmax(torch.tensor([*u, 0.0], dtype=torch.float64), -1)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_exp_concrete_density_integrates_to_one_k2(temperature):
    """The ExpConcrete density is a density of the log-ratio coordinate u = y_1 - y_2 on R."""
    d = ExpConcrete(temperature, logits=LOGITS_3[:2])

    def density(u):
        return d.log_prob(_log_simplex_point([u])).exp().item()

    total, err = integrate.quad(density, -np.inf, np.inf, limit=400, epsabs=1e-10, epsrel=1e-10)
    assert abs(total - 1) < 1e-6, (total, err)


@pytest.mark.parametrize("temperature", [1.3, 0.4])
def test_exp_concrete_density_integrates_to_one_k3(temperature):
    """The ExpConcrete density is a density of u = (y1 - y3, y2 - y3) on R^2."""
    d = ExpConcrete(temperature, logits=LOGITS_3)

    def log_density(z):
        return d.log_prob(torch.log_softmax(z, -1))

    total, bound = _integrate_over_log_ratios(log_density, temperature, LOGITS_3)
    assert abs(total - 1) <= bound, (total, bound)


def _assert_matches(library, ref):
    for a, b in zip(library.reshape(-1).tolist(), ref, strict=True):
        assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), (a, b)


@pytest.mark.parametrize("num_categories", [2, 5, 20])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
def test_log_prob_matches_float64_reference(num_categories, temperature):
    logits = torch.randn(num_categories, dtype=torch.float64) * 2
    theta = logits.cpu().numpy()
    for cls, ref in (
        (Concrete, reference.concrete_log_density),
        (ExpConcrete, reference.exp_concrete_log_density),
    ):
        d = cls(temperature, logits=logits)
        own = d.rsample((50,))
        expected = [ref(v, theta, temperature) for v in own.cpu().numpy()]
        _assert_matches(d.log_prob(own), expected)  # the own-sample (closed-form) route
        _assert_matches(d.log_prob(own.clone()), expected)  # the general formula
        # a sample of another distribution of the family
        other = cls(2.0 * temperature, logits=torch.randn(num_categories, dtype=torch.float64)).sample((50,))
        _assert_matches(d.log_prob(other), [ref(v, theta, temperature) for v in other.cpu().numpy()])


def test_log_prob_depends_on_logits_only_up_to_a_constant():
    value = Concrete(0.5, logits=LOGITS_3).sample((10,))
    a = Concrete(0.5, logits=LOGITS_3).log_prob(value)
    b = Concrete(0.5, logits=LOGITS_3 + 17.0).log_prob(value)
    c = Concrete(0.5, probs=torch.softmax(LOGITS_3, -1)).log_prob(value)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete])
def test_own_sample_route_equals_general_formula_with_gradients(cls):
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    d = cls(temperature, logits=logits)
    torch.manual_seed(5)
    closed = d.log_prob(d.rsample())
    torch.manual_seed(5)
    general = d.log_prob(d.rsample() + 0.0)  # a new tensor: scored by the general formula
    torch.testing.assert_close(closed, general, rtol=1e-12, atol=1e-10)
    for a, b in zip(
        torch.autograd.grad(closed.sum(), (logits, temperature)),
        torch.autograd.grad(general.sum(), (logits, temperature)),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_modified_sample_is_not_scored_as_the_own_sample():
    d = Concrete(0.5, logits=LOGITS_3)
    x = d.sample()
    x.copy_(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))  # in place: version changes
    expected = reference.concrete_log_density(x.cpu().numpy(), LOGITS_3.cpu().numpy(), 0.5)
    assert abs(d.log_prob(x).item() - expected) < 1e-9


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete])
def test_score_of_a_sample_drawn_without_graph(cls):
    """log_prob(sample()) must give the score d log p(x) / d params at the fixed x (REINFORCE)."""
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    d = cls(temperature, logits=logits)
    with torch.no_grad():
        no_grad_sample = d.rsample()
    for value in (d.sample(), no_grad_sample):
        own = d.log_prob(value)
        copy = d.log_prob(value.clone())
        torch.testing.assert_close(own, copy, rtol=1e-12, atol=1e-10)
        for a, b in zip(
            torch.autograd.grad(own.sum(), (logits, temperature)),
            torch.autograd.grad(copy.sum(), (logits, temperature)),
            strict=True,
        ):
            assert b.abs().max() > 0
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _score_of_copy(cls, d, value, params):
    copy = value.detach().clone().requires_grad_(value.requires_grad)
    lp = d.log_prob(copy)
    wrt = [*params, copy] if value.requires_grad else list(params)
    return lp, torch.autograd.grad(lp.sum(), wrt)


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete])
@pytest.mark.parametrize("how", ["requires_grad_", "detach_"])
def test_own_sample_off_its_path_is_scored_as_a_fixed_value(cls, how):
    """A remembered sample that no longer carries rsample's graph (a new leaf after
    requires_grad_(), or detached in place) must be scored like any other value: score and
    derivative with respect to the value both right."""
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    d = cls(temperature, logits=logits)
    if how == "requires_grad_":
        value = d.sample().requires_grad_()
    else:
        value = d.rsample()
        value.detach_()
    params = (logits, temperature)
    lp = d.log_prob(value)
    expected_lp, expected = _score_of_copy(cls, d, value, params)
    torch.testing.assert_close(lp, expected_lp, rtol=1e-10, atol=1e-10)
    wrt = [*params, value] if value.requires_grad else list(params)
    for a, b in zip(torch.autograd.grad(lp.sum(), wrt), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete])
def test_in_place_change_under_inference_mode_is_seen(cls):
    d = cls(0.6, logits=torch.randn(5, 4, dtype=torch.float64))
    other = cls(1.3, logits=torch.randn(5, 4, dtype=torch.float64)).sample()
    with torch.inference_mode():
        value = d.rsample()
        value.copy_(other)
        lp = d.log_prob(value)
    torch.testing.assert_close(lp, d.log_prob(other))


def test_exp_concrete_log_prob_is_pure_in_the_sample():
    """ExpConcrete keeps no state: its own sample and a copy are scored by one formula, with
    the same derivative with respect to the value (never a silent 0)."""
    d = ExpConcrete(0.6, logits=torch.randn(4, requires_grad=True))
    y = d.rsample()
    grad_own = torch.autograd.grad(d.log_prob(y), y)[0]
    grad_copy = torch.autograd.grad(d.log_prob(y.clone()), y)[0]
    assert grad_copy.abs().max() > 0
    torch.testing.assert_close(grad_own, grad_copy)
