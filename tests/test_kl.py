"""Registered KL divergences against closed forms, and their use by TraceMeanField_ELBO (issue 4, #3).

References are written here in numpy/scipy from the formulas, independently of the
library: the discrete KLs from their definition, the equal-temperature relaxed KLs from
the Logistic density (binary) and from the hypoexponential distribution (categorical,
a divided-difference formula valid for distinct weights), and by quadrature.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from reference import exp_concrete_log_density
from scipy import integrate
from scipy.special import digamma, log_expit, log_softmax, logsumexp
from torch.distributions import kl_divergence

import pyro_concrete as pc
from pyro_concrete.kl import binary_relaxed_kl, categorical_relaxed_kl

DEVICE = torch.get_default_device()  # the run's device: tests/devices.py
F64 = torch.float64


def _np(t):
    return t.detach().cpu().numpy().astype(np.float64)


def reference_categorical_kl(logits_q, logits_p):
    log_q, log_p = log_softmax(logits_q, -1), log_softmax(logits_p, -1)
    return np.sum(np.exp(log_q) * (log_q - log_p), -1)


def reference_bernoulli_kl(logits_q, logits_p):
    q1, q0 = log_expit(logits_q), log_expit(-logits_q)
    p1, p0 = log_expit(logits_p), log_expit(-logits_p)
    return np.exp(q1) * (q1 - p1) + np.exp(q0) * (q0 - p0)


# -- exact discrete KLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "other", [torch.distributions.OneHotCategorical, dist.OneHotCategorical, pc.ConcreteStraightThrough]
)
@pytest.mark.parametrize("estimator", ["st", "reinmax"])
def test_categorical_straight_through_kl(other, estimator):
    logits_q = torch.randn(2, 3, 5, dtype=F64) * 2
    logits_p = torch.randn(3, 5, dtype=F64) * 2
    q = pc.ConcreteStraightThrough(0.3, logits=logits_q, estimator=estimator)
    p = other(0.9, logits=logits_p) if other is pc.ConcreteStraightThrough else other(logits=logits_p)
    kl = kl_divergence(q, p)
    assert kl.shape == (2, 3)
    np.testing.assert_allclose(_np(kl), reference_categorical_kl(_np(logits_q), _np(logits_p)), rtol=1e-12)
    back = kl_divergence(p, q)
    np.testing.assert_allclose(_np(back), reference_categorical_kl(_np(logits_p), _np(logits_q)), rtol=1e-12)


def test_categorical_kl_with_exact_zero_probabilities():
    q = pc.ConcreteStraightThrough(0.5, logits=torch.zeros(3, dtype=F64))
    p = torch.distributions.OneHotCategorical(probs=torch.tensor([0.5, 0.5, 0.0], dtype=F64))
    assert kl_divergence(q, p) == math.inf  # q puts mass where p has none
    expected = 0.5 * math.log(0.5 / (1 / 3)) * 2  # 0 log 0 = 0 for the third category
    assert kl_divergence(p, q).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "other", [torch.distributions.Bernoulli, dist.Bernoulli, pc.BinaryConcreteStraightThrough]
)
def test_binary_straight_through_kl(other):
    logits_q = torch.tensor([-50.0, -3.0, 0.0, 0.7, 30.0], dtype=F64)
    logits_p = torch.tensor([1.0, -3.0, 2.0, -40.0, 20.0], dtype=F64)
    q = pc.BinaryConcreteStraightThrough(0.3, logits=logits_q, estimator="gumbel_rao")
    p = other(0.9, logits=logits_p) if other is pc.BinaryConcreteStraightThrough else other(logits=logits_p)
    kl = kl_divergence(q, p)
    np.testing.assert_allclose(_np(kl), reference_bernoulli_kl(_np(logits_q), _np(logits_p)), rtol=1e-10)
    back = kl_divergence(p, q)
    np.testing.assert_allclose(_np(back), reference_bernoulli_kl(_np(logits_p), _np(logits_q)), rtol=1e-10)
    # float32 with logits of +-50: finite and exact to float32 precision (no clamped probs)
    kl32 = kl_divergence(
        pc.BinaryConcreteStraightThrough(0.3, logits=logits_q.float()), other_float32(other, logits_p)
    )
    np.testing.assert_allclose(_np(kl32), reference_bernoulli_kl(_np(logits_q), _np(logits_p)), rtol=1e-5)


def other_float32(other, logits):
    if other is pc.BinaryConcreteStraightThrough:
        return other(0.5, logits=logits.float())
    return other(logits=logits.float())


def test_bernoulli_with_probs_zero_and_one():
    q = pc.BinaryConcreteStraightThrough(0.5, logits=torch.tensor([0.0, 0.0], dtype=F64))
    p = torch.distributions.Bernoulli(probs=torch.tensor([0.0, 1.0], dtype=F64))
    assert (kl_divergence(q, p) == math.inf).all()
    np.testing.assert_allclose(_np(kl_divergence(p, q)), [math.log(2), math.log(2)], rtol=1e-12)


def test_kl_through_pyro_wrappers_without_ambiguity():
    """Independent, masked and expanded pairs dispatch to the registered KL, unambiguously."""
    q = pc.ConcreteStraightThrough(0.5, logits=torch.randn(4, 3, dtype=F64))
    p = dist.OneHotCategorical(logits=torch.randn(4, 3, dtype=F64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl = kl_divergence(q.to_event(1), p.to_event(1))
        torch.testing.assert_close(kl, kl_divergence(q, p).sum())
        mask = torch.tensor([True, False, True, True])
        masked = kl_divergence(q.mask(mask), p.mask(mask))
        torch.testing.assert_close(masked, torch.where(mask, kl_divergence(q, p), 0.0))
        b = pc.BinaryConcreteStraightThrough(0.5, logits=torch.randn(4, dtype=F64))
        kl_divergence(b.expand((2, 4)), dist.Bernoulli(logits=torch.zeros(2, 4, dtype=F64)))


# -- relaxed pairs of equal temperature -----------------------------------------------------------


def reference_logistic_kl(d):
    """KL between Logistic(d, 1) and Logistic(0, 1) by quadrature of the densities."""

    def log_density(x):
        return -x - 2 * np.logaddexp(0, -x)

    def integrand(x):
        return math.exp(log_density(x - d)) * (log_density(x - d) - log_density(x))

    return integrate.quad(integrand, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


@pytest.mark.parametrize("d", [0.0, 1e-6, 0.01, 0.3, 0.49, 0.5, 0.51, 1.0, 4.0, -7.0, 30.0])
def test_binary_relaxed_kl_closed_form(d):
    got = binary_relaxed_kl(torch.tensor(d, dtype=F64), torch.tensor(0.0, dtype=F64)).item()
    if abs(d) < 40:
        assert got == pytest.approx(reference_logistic_kl(d), rel=1e-9, abs=1e-15)
    assert got == pytest.approx(d / math.tanh(d / 2) - 2 if d else 0.0, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("family", [pc.BinaryConcrete, pc.LogitBinaryConcrete])
@pytest.mark.parametrize("temperature", [0.1, 0.7, 3.0])
def test_binary_relaxed_kl_registered(family, temperature):
    logits_q = torch.tensor([0.3, -2.0, 5.0], dtype=F64)
    logits_p = torch.tensor([0.3, 1.0, -4.0], dtype=F64)
    kl = kl_divergence(family(temperature, logits=logits_q), family(temperature, logits=logits_p))
    expected = [reference_logistic_kl(d) for d in _np(logits_q - logits_p)]
    np.testing.assert_allclose(_np(kl), expected, rtol=1e-9, atol=1e-15)
    # the density of the relaxed variable itself, at one temperature, integrated directly
    q, p = logits_q[1].item(), logits_p[1].item()

    def log_p_logit(y, logits):  # LogitBinaryConcrete density, written from the formula
        return (
            math.log(temperature) + logits - temperature * y - 2 * np.logaddexp(0, logits - temperature * y)
        )

    direct = integrate.quad(
        lambda y: math.exp(log_p_logit(y, q)) * (log_p_logit(y, q) - log_p_logit(y, p)),
        -np.inf,
        np.inf,
        limit=200,
    )[0]
    assert kl[1].item() == pytest.approx(direct, rel=1e-7)


def reference_categorical_relaxed_kl(logits_q, logits_p):
    """-Σδ + K (Σ_k c_k δ_k - H_{K-1}), c_k = Π_{j≠k} w_k / (w_k - w_j), w = e^δ, δ = θ_p - θ_q.

    E[log Σ_k w_k E_k] for independent Exponential(1) E_k, from the hypoexponential
    density (a signed mixture of exponentials), minus E[log Σ_k E_k] = ψ(K).
    """
    delta = np.asarray(logits_p, np.float64) - np.asarray(logits_q, np.float64)
    k = len(delta)
    w = np.exp(delta)
    c = np.array([np.prod([w[i] / (w[i] - w[j]) for j in range(k) if j != i]) for i in range(k)])
    harmonic = sum(1.0 / n for n in range(1, k))
    return -delta.sum() + k * (np.dot(c, delta) - harmonic)


@pytest.mark.parametrize(
    "logits_q, logits_p",
    [
        ([0.5, -1.0, 2.0], [0.0, 1.0, 0.3]),
        ([0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.5, 3.0]),
        ([3.0, -3.0, 0.0, 1.0, -1.5], [-2.0, 2.5, 0.1, -0.7, 1.2]),
        ([10.0, -10.0, 0.0], [-5.0, 7.0, 1.0]),
    ],
)
def test_categorical_relaxed_kl_closed_form(logits_q, logits_p):
    got = categorical_relaxed_kl(torch.tensor(logits_q, dtype=F64), torch.tensor(logits_p, dtype=F64))
    assert got.item() == pytest.approx(reference_categorical_relaxed_kl(logits_q, logits_p), rel=1e-9)


def test_categorical_relaxed_kl_by_quadrature_k3():
    """KL as the integral of q log(q/p) over the log-ratio plane, with the reference density."""
    logits_q, logits_p, temperature = np.array([0.5, -1.0, 2.0]), np.array([0.0, 1.0, 0.3]), 1.0
    h = 0.1
    grid = np.arange(-40.0, 40.0 + h / 2, h)
    u1, u2 = np.meshgrid(grid, grid, indexing="ij")
    padded = np.stack([u1, u2, np.zeros_like(u1)], -1)
    y = padded - logsumexp(padded, -1, keepdims=True)
    log_q, log_p = (
        exp_concrete_log_density_batched(y, logits, temperature) for logits in (logits_q, logits_p)
    )
    quadrature = np.sum(np.exp(log_q) * (log_q - log_p)) * h * h
    # the batched reference is the reference of tests/reference.py
    assert log_q[123, 456] == pytest.approx(exp_concrete_log_density(y[123, 456], logits_q, temperature))
    d_q = pc.ExpConcrete(temperature, logits=torch.tensor(logits_q))
    d_p = pc.ExpConcrete(temperature, logits=torch.tensor(logits_p))
    assert kl_divergence(d_q, d_p).item() == pytest.approx(quadrature, rel=1e-8)


def exp_concrete_log_density_batched(y, logits, tau):
    """Maddison et al. 2017, appendix C, over the last axis of ``y``."""
    k = y.shape[-1]
    a = logits - tau * y
    return math.lgamma(k) + (k - 1) * math.log(tau) + a.sum(-1) - k * logsumexp(a, -1)


def test_categorical_relaxed_kl_properties():
    logits = torch.randn(6, 4, dtype=F64) * 3
    other = torch.randn(6, 4, dtype=F64) * 3
    kl = categorical_relaxed_kl(logits, other)
    assert (kl > 0).all()
    torch.testing.assert_close(
        categorical_relaxed_kl(logits, logits), torch.zeros(6, dtype=F64), atol=1e-13, rtol=0
    )
    # invariant to a constant added to either set of logits
    torch.testing.assert_close(categorical_relaxed_kl(logits + 2.5, other - 1.0), kl)
    # two categories: the binary closed form
    two_q, two_p = torch.randn(5, 2, dtype=F64), torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(
        categorical_relaxed_kl(two_q, two_p),
        binary_relaxed_kl(two_q[:, 0] - two_q[:, 1], two_p[:, 0] - two_p[:, 1]),
    )
    # batched and broadcast
    assert categorical_relaxed_kl(logits, other[0]).shape == (6,)


def test_categorical_relaxed_kl_gradcheck():
    q = (torch.randn(2, 3, dtype=F64) * 2).requires_grad_()
    p = (torch.randn(2, 3, dtype=F64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(categorical_relaxed_kl, (q, p))
    assert torch.autograd.gradcheck(binary_relaxed_kl, (q[:, 0], p[:, 0]))


@pytest.mark.parametrize("family", [pc.Concrete, pc.ExpConcrete])
def test_categorical_relaxed_kl_registered_for_both_spaces(family):
    q = family(0.4, logits=torch.tensor([0.5, -1.0, 2.0], dtype=F64))
    p = family(0.4, logits=torch.tensor([0.0, 1.0, 0.3], dtype=F64))
    expected = reference_categorical_relaxed_kl([0.5, -1.0, 2.0], [0.0, 1.0, 0.3])
    assert kl_divergence(q, p).item() == pytest.approx(expected, rel=1e-9)
    # agrees with the Monte Carlo estimate of E_q[log q - log p] (at a standard error bound)
    y = q.sample((200_000,))
    mc = q.log_prob(y) - p.log_prob(y)
    assert abs(mc.mean().item() - expected) < 4 * mc.std().item() / math.sqrt(len(mc))


@pytest.mark.parametrize("family", [pc.Concrete, pc.ExpConcrete, pc.BinaryConcrete, pc.LogitBinaryConcrete])
def test_relaxed_kl_not_implemented_for_other_temperatures(family):
    shape = (3,) if family in (pc.Concrete, pc.ExpConcrete) else ()
    logits = torch.randn(shape)
    with pytest.raises(NotImplementedError):
        kl_divergence(family(0.5, logits=logits), family(0.6, logits=logits))
    learned = torch.tensor(0.5, requires_grad=True)
    with pytest.raises(NotImplementedError):  # equal now, but its derivative is not zero
        kl_divergence(family(learned, logits=logits), family(0.5, logits=torch.zeros(shape)))
    kl = kl_divergence(family(0.5, logits=logits), family(0.5, logits=torch.zeros(shape)))
    assert kl.isfinite().all() and (kl > 0).all()


# -- mismatched pairs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "q, p, hint",
    [
        (pc.Concrete(0.5, logits=torch.zeros(3)), dist.OneHotCategorical(logits=torch.zeros(3)), "Straight"),
        (
            pc.ExpConcrete(0.5, logits=torch.zeros(3)),
            dist.OneHotCategorical(logits=torch.zeros(3)),
            "Straight",
        ),
        (
            pc.Concrete(0.5, logits=torch.zeros(3)),
            pc.ConcreteStraightThrough(0.5, logits=torch.zeros(3)),
            "2628",
        ),
        (pc.BinaryConcrete(0.5, logits=torch.zeros(2)), dist.Bernoulli(logits=torch.zeros(2)), "Binary"),
        (pc.LogitBinaryConcrete(0.5, logits=torch.zeros(2)), dist.Bernoulli(logits=torch.zeros(2)), "Binary"),
        (
            pc.ConcreteStraightThrough(0.5, logits=torch.zeros(3)),
            dist.Categorical(logits=torch.zeros(3)),
            "OneHot",
        ),
    ],
)
def test_mismatched_pairs_raise_a_clear_error(q, p, hint):
    with pytest.raises(TypeError, match=hint):
        kl_divergence(q, p)


# -- TraceMeanField_ELBO uses the registered KLs ---------------------------------------------------


def _discrete_model_and_guide(temperature=0.5):
    prior_z = torch.tensor([[0.2, -1.0, 0.5], [1.0, 0.0, -2.0]])
    prior_b = torch.tensor([0.3, -1.2, 2.0, 0.0])
    q_z = torch.tensor([[-0.5, 0.3, 0.1], [0.0, 2.0, 0.0]])
    q_b = torch.tensor([1.0, 1.0, -1.0, 0.5])

    def model():
        with pyro.plate("rows", 2):
            pyro.sample("z", dist.OneHotCategorical(logits=prior_z))
        pyro.sample("b", dist.Bernoulli(logits=prior_b).to_event(1))

    def guide():
        with pyro.plate("rows", 2):
            pyro.sample("z", pc.ConcreteStraightThrough(temperature, logits=q_z))
        pyro.sample("b", pc.BinaryConcreteStraightThrough(temperature, logits=q_b).to_event(1))

    exact_kl = (
        reference_categorical_kl(_np(q_z), _np(prior_z)).sum()
        + reference_bernoulli_kl(_np(q_b), _np(prior_b)).sum()
    )
    return model, guide, exact_kl


def test_trace_mean_field_elbo_uses_the_exact_kl(monkeypatch):
    import pyro.infer.trace_mean_field_elbo as tmf

    calls = []

    def spy(p, q):
        try:
            result = kl_divergence(p, q)
        except NotImplementedError:
            calls.append((type(p).__name__, type(q).__name__, "fallback"))
            raise
        calls.append((type(p).__name__, type(q).__name__, "exact"))
        return result

    monkeypatch.setattr(tmf, "kl_divergence", spy)
    model, guide, exact_kl = _discrete_model_and_guide()
    losses = []
    for seed in range(5):
        pyro.set_rng_seed(seed)
        losses.append(TraceMeanField_ELBO().loss(model, guide))
    assert calls and all(status == "exact" for *_, status in calls)
    # no Monte Carlo term left: the loss is the exact KL whatever the seed
    np.testing.assert_allclose(losses, exact_kl, rtol=1e-6)
    # control: Trace_ELBO's Monte Carlo estimate of the same quantity varies with the seed
    mc = []
    for seed in range(5):
        pyro.set_rng_seed(seed)
        mc.append(Trace_ELBO().loss(model, guide))
    assert np.std(mc) > 0.05


def test_trace_mean_field_elbo_falls_back_for_other_temperatures():
    """Relaxed pairs of different temperatures: Monte Carlo (the loss varies with the seed)."""
    logits = torch.tensor([0.3, -0.2, 1.0])

    def model(temperature):
        pyro.sample("y", pc.ExpConcrete(0.5, logits=logits))

    def guide(temperature):
        pyro.sample("y", pc.ExpConcrete(temperature, logits=torch.zeros(3)))

    same = [TraceMeanField_ELBO().loss(model, guide, 0.5) for _ in range(3)]
    expected = reference_categorical_relaxed_kl([0.0, 0.0, 0.0], _np(logits))
    np.testing.assert_allclose(same, expected, rtol=1e-5)
    other = [TraceMeanField_ELBO().loss(model, guide, 0.7) for _ in range(5)]
    assert np.std(other) > 0.01


# -- bounded cost for any finite logits (issue 8, item 7) ----------------------------------------------


def exponential_representation_kl(logits_q, logits_p, num_samples=1_000_000, seed=0):
    """``KL = -Σδ + K (E[log Σ_k e^{δ_k} E_k] - ψ(K))`` (E_k iid Exponential(1)) by float64 Monte
    Carlo, with ``δ = logits_p - logits_q`` shifted to a maximum of 0 (the KL does not change).

    Returns ``(δ, m, se)``: the shifted ``δ``, the estimate ``m`` of ``KL + Σδ`` (the part the
    quadrature computes; ``-Σδ`` is exact) and its standard error.
    """
    delta = np.asarray(logits_p, np.float64) - np.asarray(logits_q, np.float64)
    delta = delta - delta.max()
    k = len(delta)
    e = np.random.default_rng(seed).exponential(size=(num_samples, k))
    log_sum = np.log(e @ np.exp(delta))
    return delta, k * (log_sum.mean() - digamma(k)), k * log_sum.std() / math.sqrt(num_samples)


def test_quadrature_grid_depends_on_the_number_of_categories_only():
    from pyro_concrete.kl import _quadrature_nodes

    for k in (2, 16, 1000):
        nodes = _quadrature_nodes(k, F64, DEVICE)
        assert len(nodes) < 420
        # the truncation bound of categorical_relaxed_kl: K e^{-U} and K² e^{L} below e^{-40}
        assert k * math.exp(-nodes[-1].item()) <= math.exp(-40) * (1 + 1e-9)
        assert k * k * math.exp(nodes[0].item()) <= math.exp(-40) * (1 + 1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("far", [-1e5, -1e9])
def test_categorical_relaxed_kl_one_far_logit_in_a_large_batch(far, dtype):
    """(256, 16) with one logit at -1e5 / -1e9: was 91 s / out of memory, now a fixed grid."""
    generator = torch.Generator().manual_seed(0)  # on the CPU: the same logits on every device
    logits_q = torch.randn(256, 16, generator=generator, dtype=F64, device="cpu").to(DEVICE)
    logits_p = torch.randn(256, 16, generator=generator, dtype=F64, device="cpu").to(DEVICE)
    plain = categorical_relaxed_kl(logits_q, logits_p)
    logits_p[7, 3] = far
    kl = categorical_relaxed_kl(logits_q.to(dtype), logits_p.to(dtype))
    assert kl.dtype == dtype and kl.isfinite().all()
    # the other rows do not depend on the far logit (nor on the grid it used to force)
    others = torch.arange(256) != 7
    torch.testing.assert_close(
        kl[others].double(), plain[others], rtol=1e-5 if dtype != F64 else 1e-12, atol=0
    )
    # the far row against a float64 Monte Carlo of the exponential representation
    if dtype == F64:
        delta, expected, se = exponential_representation_kl(_np(logits_q[7]), _np(logits_p[7]))
        assert abs(kl[7].item() + delta.sum() - expected) < 4 * se
    # gradients: finite, and -1 (from -Σδ) for the far logit of p
    q = logits_q.to(dtype).requires_grad_()
    p = logits_p.to(dtype).requires_grad_()
    categorical_relaxed_kl(q, p).sum().backward()
    assert q.grad.isfinite().all() and p.grad.isfinite().all()
    assert p.grad[7, 3].item() == pytest.approx(-1.0, rel=1e-6)


@pytest.mark.parametrize("far", [-1e5, -1e9, -1e300])
def test_categorical_relaxed_kl_far_logit_two_categories_closed_form(far):
    generator = torch.Generator().manual_seed(1)  # on the CPU: the same logits on every device
    logits_q = torch.randn(64, 2, generator=generator, dtype=F64, device="cpu").to(DEVICE)
    logits_p = torch.randn(64, 2, generator=generator, dtype=F64, device="cpu").to(DEVICE)
    logits_p[::3, 1] = far
    kl = categorical_relaxed_kl(logits_q, logits_p)
    closed = binary_relaxed_kl(logits_q[:, 0] - logits_q[:, 1], logits_p[:, 0] - logits_p[:, 1])
    torch.testing.assert_close(kl, closed, rtol=1e-12, atol=1e-12)


# -- masks: -inf logits, zero probs, finfo.min (issue 8, item 6) ---------------------------------------

NEG_INF = -math.inf


def reference_masked_categorical_kl(p, q):
    """Σ_{p_k > 0} p_k log(p_k / q_k) in float64 from probabilities; +inf if some q_k = 0 < p_k."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))


def _probs64(logits):
    logits = np.asarray(logits, np.float64)
    finite = logits > -1e300
    e = np.where(finite, np.exp(np.where(finite, logits, 0) - logits[finite].max()), 0.0)
    return e / e.sum()


MASKED_ROWS = [  # (first argument, second argument), logits; -inf, finfo.min and zero probs
    ([0.3, NEG_INF, -1.0, 2.0], [1.0, NEG_INF, 0.5, -0.5]),  # same mask: finite
    ([0.3, NEG_INF, -1.0, 2.0], [1.0, 0.2, 0.5, -0.5]),  # the first masks more: finite
    ([0.3, 0.1, -1.0, 2.0], [1.0, NEG_INF, 0.5, -0.5]),  # mass where the second masks: +inf
    ([NEG_INF, NEG_INF, 4.0, NEG_INF], [1.0, 0.0, 0.5, NEG_INF]),  # a point mass
]


@pytest.mark.parametrize("how", ["logits", "finfo.min", "probs"])
@pytest.mark.parametrize(
    "first, second",
    [
        (pc.ConcreteStraightThrough, torch.distributions.OneHotCategorical),
        (torch.distributions.OneHotCategorical, pc.ConcreteStraightThrough),
        (pc.ConcreteStraightThrough, pc.ConcreteStraightThrough),
        (pc.ConcreteStraightThrough, dist.OneHotCategorical),
    ],
)
def test_one_hot_kl_with_masks_is_exact_with_finite_gradients(first, second, how):
    rows_p = torch.tensor([r[0] for r in MASKED_ROWS], dtype=F64)
    rows_q = torch.tensor([r[1] for r in MASKED_ROWS], dtype=F64)
    expected = [reference_masked_categorical_kl(_probs64(a), _probs64(b)) for a, b in MASKED_ROWS]

    def build(cls, logits):
        if how == "probs":
            param = logits.softmax(-1).detach().requires_grad_()
            kwargs = {"probs": param}
        else:
            fill = torch.finfo(F64).min if how == "finfo.min" else NEG_INF
            param = logits.masked_fill(logits == NEG_INF, fill).requires_grad_()
            kwargs = {"logits": param}
        d = cls(0.5, **kwargs) if cls is pc.ConcreteStraightThrough else cls(**kwargs)
        return d, param

    p, p_param = build(first, rows_p)
    q, q_param = build(second, rows_q)
    kl = kl_divergence(p, q)
    np.testing.assert_allclose(_np(kl), expected, rtol=1e-12)
    kl.masked_fill(kl.isinf(), 0).sum().backward()
    for param, rows in ((p_param, rows_p), (q_param, rows_q)):
        assert param.grad.isfinite().all()
        if how != "probs":
            assert (param.grad[rows == NEG_INF] == 0).all()
    # the gradient of a finite row against plain float64 autograd on the unmasked categories
    if how == "logits" and first is pc.ConcreteStraightThrough:
        keep_p = rows_p[1] != NEG_INF
        lp = rows_p[1, keep_p].clone().requires_grad_()
        lq = rows_q[1].clone().requires_grad_()
        log_p, log_q = lp.log_softmax(-1), lq.log_softmax(-1)[keep_p]
        (log_p.exp() * (log_p - log_q)).sum().backward()
        torch.testing.assert_close(p_param.grad[1, keep_p], lp.grad)
        torch.testing.assert_close(q_param.grad[1], lq.grad)


@pytest.mark.parametrize("how", ["logits", "probs"])
@pytest.mark.parametrize(
    "first, second",
    [
        (pc.BinaryConcreteStraightThrough, torch.distributions.Bernoulli),
        (torch.distributions.Bernoulli, pc.BinaryConcreteStraightThrough),
        (pc.BinaryConcreteStraightThrough, pc.BinaryConcreteStraightThrough),
    ],
)
def test_binary_kl_with_certain_outcomes_is_exact_with_finite_gradients(first, second, how):
    inf = math.inf
    logits_p = torch.tensor([inf, -inf, inf, -inf, 0.5, inf, 0.3, -2.0], dtype=F64)
    logits_q = torch.tensor([inf, -inf, -inf, inf, inf, 0.5, -1.0, -inf], dtype=F64)

    def probs64(logits):
        return np.where(np.isinf(logits), (logits > 0).astype(np.float64), 1 / (1 + np.exp(-logits)))

    pp, pq = probs64(_np(logits_p)), probs64(_np(logits_q))
    expected = [reference_masked_categorical_kl([a, 1 - a], [b, 1 - b]) for a, b in zip(pp, pq, strict=True)]

    def build(cls, logits):
        param = (torch.sigmoid(logits) if how == "probs" else logits).clone().requires_grad_()
        kwargs = {how: param}
        d = cls(0.5, **kwargs) if cls is pc.BinaryConcreteStraightThrough else cls(**kwargs)
        return d, param

    p, p_param = build(first, logits_p)
    q, q_param = build(second, logits_q)
    kl = kl_divergence(p, q)
    np.testing.assert_allclose(_np(kl), expected, rtol=1e-12, atol=1e-15)
    kl.masked_fill(kl.isinf(), 0).sum().backward()
    assert p_param.grad.isfinite().all() and q_param.grad.isfinite().all()


def _face_kl(logits_q, logits_p):
    """The relaxed KL over the unmasked categories of a row, by the hypoexponential reference."""
    keep = np.isfinite(logits_q) & (logits_q > -1e300)
    if keep.sum() == 1:
        return 0.0
    return reference_categorical_relaxed_kl(logits_q[keep], logits_p[keep])


@pytest.mark.parametrize("fill", [NEG_INF, "finfo.min"])
def test_categorical_relaxed_kl_with_equal_masks_is_the_kl_on_the_face(fill):
    """The same masked categories in both: the KL of the Concretes over the K' others (K' per row)."""
    rows_q = np.array(
        [[0.5, NEG_INF, -1.0, 2.0, 0.3], [NEG_INF, 1.0, 0.2, NEG_INF, -0.7], [0.1, 0.2, 0.3, -0.4, 1.5]]
        + [[NEG_INF, NEG_INF, 3.0, NEG_INF, NEG_INF]]
    )
    rows_p = np.where(
        np.isinf(rows_q), NEG_INF, np.array([[0.0, 9.0, 1.0, 0.3, -2.0]] * 4) * [[1], [2], [-1], [1]]
    )
    expected = [_face_kl(a, b) for a, b in zip(rows_q, rows_p, strict=True)]
    for dtype in (F64, torch.float32):
        value = torch.finfo(dtype).min if fill == "finfo.min" else NEG_INF
        q = (
            torch.tensor(rows_q, dtype=dtype)
            .masked_fill(torch.tensor(np.isinf(rows_q)), value)
            .requires_grad_()
        )
        p = (
            torch.tensor(rows_p, dtype=dtype)
            .masked_fill(torch.tensor(np.isinf(rows_p)), value)
            .requires_grad_()
        )
        kl = categorical_relaxed_kl(q, p)
        np.testing.assert_allclose(_np(kl), expected, rtol=1e-9 if dtype == F64 else 1e-5, atol=1e-6)
        kl.sum().backward()
        masked = torch.tensor(np.isinf(rows_q))
        assert q.grad.isfinite().all() and p.grad.isfinite().all()
        assert (q.grad[masked] == 0).all() and (p.grad[masked] == 0).all()
    # the unmasked gradient is the gradient of the KL over the face
    q = torch.tensor(rows_q[:1], dtype=F64).requires_grad_()
    p = torch.tensor(rows_p[:1], dtype=F64).requires_grad_()
    categorical_relaxed_kl(q, p).sum().backward()
    keep = torch.tensor(np.isfinite(rows_q[0]))
    face_q = torch.tensor(rows_q[0][np.isfinite(rows_q[0])], dtype=F64).requires_grad_()
    face_p = torch.tensor(rows_p[0][np.isfinite(rows_q[0])], dtype=F64).requires_grad_()
    categorical_relaxed_kl(face_q, face_p).backward()
    torch.testing.assert_close(q.grad[0, keep], face_q.grad)
    torch.testing.assert_close(p.grad[0, keep], face_p.grad)


def test_categorical_relaxed_kl_with_different_masks_is_infinite():
    """A Concrete on a face is not absolutely continuous w.r.t. one on another face: +inf both ways."""
    q = torch.tensor([[0.5, NEG_INF, -1.0], [0.5, 0.2, -1.0], [0.0, NEG_INF, NEG_INF]], dtype=F64)
    p = torch.tensor([[0.5, 0.3, -1.0], [0.5, NEG_INF, -1.0], [NEG_INF, 0.0, NEG_INF]], dtype=F64)
    q.requires_grad_()
    p.requires_grad_()
    kl = categorical_relaxed_kl(q, p)
    assert (kl == math.inf).all()
    kl.masked_fill(kl.isinf(), 0).sum().backward()
    assert (q.grad == 0).all() and (p.grad == 0).all()
    back = categorical_relaxed_kl(p.detach(), q.detach())
    assert (back == math.inf).all()
    with pytest.raises(ValueError, match="every category"):
        categorical_relaxed_kl(torch.full((2, 3), NEG_INF), torch.zeros(2, 3))


@pytest.mark.parametrize("family", [pc.Concrete, pc.ExpConcrete])
def test_relaxed_kl_registered_with_masks(family):
    logits_q = torch.tensor([[0.5, NEG_INF, -1.0, 2.0], [0.5, 0.1, -1.0, 2.0]], dtype=F64)
    logits_p = torch.tensor([[0.0, NEG_INF, 1.0, 0.3], [0.0, NEG_INF, 1.0, 0.3]], dtype=F64)
    kl = kl_divergence(family(0.4, logits=logits_q), family(0.4, logits=logits_p))
    assert kl[0].item() == pytest.approx(_face_kl(_np(logits_q[0]), _np(logits_p[0])), rel=1e-9)
    assert kl[1].item() == math.inf
    # zero probs are masks too
    probs_q = torch.tensor([0.2, 0.0, 0.3, 0.5], dtype=F64)
    probs_p = torch.tensor([0.6, 0.0, 0.1, 0.3], dtype=F64)
    got = kl_divergence(family(0.4, probs=probs_q), family(0.4, probs=probs_p))
    with np.errstate(divide="ignore"):
        expected = _face_kl(np.log(_np(probs_q)), np.log(_np(probs_p)))
    assert got.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("family", [pc.BinaryConcrete, pc.LogitBinaryConcrete])
def test_binary_relaxed_kl_with_infinite_logits(family):
    inf = math.inf
    logits_q = torch.tensor([inf, -inf, inf, 0.3, -inf, 2.0], dtype=F64, requires_grad=True)
    logits_p = torch.tensor([inf, -inf, -inf, inf, 0.5, -1.0], dtype=F64, requires_grad=True)
    kl = binary_relaxed_kl(logits_q, logits_p)
    expected = [0.0, 0.0, inf, inf, inf, reference_logistic_kl(3.0)]
    np.testing.assert_allclose(_np(kl), expected, rtol=1e-9)
    kl.masked_fill(kl.isinf(), 0).sum().backward()
    assert logits_q.grad.isfinite().all() and logits_p.grad.isfinite().all()
    assert (logits_q.grad[:5] == 0).all()
    registered = kl_divergence(family(0.5, logits=logits_q.detach()), family(0.5, logits=logits_p.detach()))
    np.testing.assert_allclose(_np(registered), expected, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_relaxed_kls_in_half_precision(dtype):
    """Computed in float32 and rounded back: finite where the float64 value fits the dtype."""
    logits_q = torch.tensor([[0.5, -1.0, 2.0], [10.0, -10.0, 0.0]], dtype=F64)
    logits_p = torch.tensor([[0.0, 1.0, 0.3], [-5.0, 7.0, 1.0]], dtype=F64)
    kl = categorical_relaxed_kl(logits_q.to(dtype), logits_p.to(dtype))
    assert kl.dtype == dtype
    expected = categorical_relaxed_kl(logits_q.to(dtype).double(), logits_p.to(dtype).double())
    torch.testing.assert_close(kl.double(), expected, rtol=1e-2, atol=1e-3)
    binary = binary_relaxed_kl(logits_q[:, 0].to(dtype), logits_p[:, 0].to(dtype))
    assert binary.dtype == dtype and binary.isfinite().all()
