"""Sampling and reparameterisation of Concrete / ExpConcrete (issue 2, criteria 1 and 4)."""

import math

import numpy as np
import pytest
import torch
from reference import softmax
from scipy import stats

from pyro_concrete import Concrete, ExpConcrete, ops

P_THRESHOLD = 1e-3  # decided before running: a correct sampler fails one test in 1000


@pytest.mark.parametrize("num_categories", [2, 5, 50])
@pytest.mark.parametrize("temperature", [0.01, 0.3, 1.0, 5.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_argmax_is_categorical(num_categories, temperature, dtype):
    """Gumbel-max: argmax of a Concrete sample ~ Categorical(softmax(logits)) at any temperature."""
    logits = torch.randn(num_categories, dtype=torch.float64)
    num_samples = 20_000
    x = Concrete(temperature, logits=logits.to(dtype)).rsample((num_samples,))
    y = ExpConcrete(temperature, logits=logits.to(dtype)).rsample((num_samples,))
    probs = softmax(logits.cpu().numpy())
    for sample in (x, y):
        counts = np.bincount(sample.argmax(-1).cpu().numpy(), minlength=num_categories)
        assert stats.chisquare(counts, num_samples * probs).pvalue > P_THRESHOLD


def test_concrete_is_exp_of_exp_concrete():
    """Same seed, same noise: the Concrete sample is the exponential of the ExpConcrete one."""
    logits = torch.randn(3, 7, dtype=torch.float64)
    torch.manual_seed(1)
    x = Concrete(0.4, logits=logits).rsample((5,))
    torch.manual_seed(1)
    y = ExpConcrete(0.4, logits=logits).rsample((5,))
    torch.testing.assert_close(x, y.exp(), rtol=1e-15, atol=0)


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete])
def test_gradcheck_rsample_fixed_noise(cls):
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64, requires_grad=True)

    def rsample(logits, temperature):
        torch.manual_seed(7)  # the same noise on every call
        return cls(temperature, logits=logits).rsample((2,))

    assert torch.autograd.gradcheck(rsample, (logits, temperature))
    assert torch.autograd.gradgradcheck(rsample, (logits, temperature))


@pytest.mark.parametrize("cls", [Concrete, ExpConcrete])
def test_gradcheck_log_prob(cls):
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64, requires_grad=True)
    value = cls(0.7, logits=torch.randn(4, dtype=torch.float64)).sample((3,))

    def log_prob_of_fixed_value(logits, temperature):
        return cls(temperature, logits=logits).log_prob(value)

    def log_prob_of_own_sample(logits, temperature):
        torch.manual_seed(7)
        d = cls(temperature, logits=logits)
        return d.log_prob(d.rsample())

    for fn in (log_prob_of_fixed_value, log_prob_of_own_sample):
        assert torch.autograd.gradcheck(fn, (logits, temperature))


def test_fused_kernel_gradcheck():
    gumbel = -torch.empty(5, 20, dtype=torch.float64).exponential_().log()
    logits = torch.randn(5, 20, dtype=torch.float64, requires_grad=True)
    temperature = (torch.rand(5, 1, dtype=torch.float64) + 0.2).requires_grad_()
    for k in (3, 20):  # both log-softmax routes (short and long last dimension)

        def sample(lg, t, k=k):
            return ops.gumbel_softmax_log_sample(lg[:, :k], t, gumbel[:, :k])

        assert torch.autograd.gradcheck(sample, (logits, temperature))
        assert torch.autograd.gradgradcheck(sample, (logits, temperature))


def _per_sample_pathwise_gradients(logits, temperature, num_samples, f, seed):
    """Per-sample gradients of f(x) wrt logits and temperature, from one batched rsample."""
    k = logits.shape[-1]
    batch_logits = logits.detach().expand(num_samples, k).clone().requires_grad_()
    batch_temperature = torch.full((num_samples,), temperature, dtype=logits.dtype, requires_grad=True)
    torch.manual_seed(seed)
    x = Concrete(batch_temperature, logits=batch_logits).rsample()
    f(x).sum().backward()
    return batch_logits.grad, batch_temperature.grad


def test_pathwise_gradient_matches_common_random_number_finite_differences():
    """E[f(x)] for a smooth f: mean pathwise gradient vs central differences with the same noise."""
    logits = torch.tensor([0.5, -1.0, 0.2, 1.3], dtype=torch.float64)
    temperature, n, h, seed = 0.7, 20_000, 1e-5, 11
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)

    def f(x):
        return (weights * x**2).sum(-1)

    def mean_f(lg, tau):
        torch.manual_seed(seed)
        return f(Concrete(tau, logits=lg.expand(n, 4)).rsample()).mean().item()

    g_logits, g_tau = _per_sample_pathwise_gradients(logits, temperature, n, f, seed)
    for j in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[j] = h
        fd = (mean_f(logits + step, temperature) - mean_f(logits - step, temperature)) / (2 * h)
        se = g_logits[:, j].std().item() / math.sqrt(n)
        assert abs(g_logits[:, j].mean().item() - fd) < 3 * se
    fd_tau = (mean_f(logits, temperature + h) - mean_f(logits, temperature - h)) / (2 * h)
    assert abs(g_tau.mean().item() - fd_tau) < 3 * g_tau.std().item() / math.sqrt(n)


def test_pathwise_gradient_matches_derivative_of_exact_expectation():
    """K = 2: d/dθ and d/dτ of E[x_1], computed by quadrature of the density, vs pathwise MC."""
    logits = torch.tensor([0.4, -0.3], dtype=torch.float64)
    temperature, n, h = 0.8, 40_000, 1e-4

    # E[x_1] = ∫ x_1 p(x) dx_1 in the log-ratio coordinate u = log(x_1 / x_2), where
    # dx_1 = x_1 x_2 du: a smooth integrand on R with tails exp(-τ|u|), on which the
    # trapezoid rule converges geometrically (at steps 0.2 and 0.05 it agrees with adaptive
    # quadrature to 3e-15; beyond |u| = 80 lies exp(-64) of the mass), so the difference
    # quotients below are good to ~1e-10, far inside the Monte Carlo error (~1e-3). One
    # batched log_prob call per value.
    step = 0.05
    u = torch.arange(-80, 80 + step / 2, step, dtype=torch.float64)
    log_x = torch.log_softmax(torch.stack([u, torch.zeros_like(u)], -1), -1)

    def expected_x1(theta0, tau):
        lg = torch.tensor([theta0, logits[1].item()], dtype=torch.float64)
        density_of_u = (Concrete(tau, logits=lg).log_prob(log_x.exp()) + log_x.sum(-1)).exp()
        return (log_x[:, 0].exp() * density_of_u).sum().item() * step

    exact_d_theta = (
        expected_x1(logits[0].item() + h, temperature) - expected_x1(logits[0].item() - h, temperature)
    ) / (2 * h)
    exact_d_tau = (
        expected_x1(logits[0].item(), temperature + h) - expected_x1(logits[0].item(), temperature - h)
    ) / (2 * h)
    g_logits, g_tau = _per_sample_pathwise_gradients(logits, temperature, n, lambda x: x[..., 0], seed=3)
    for g, exact in ((g_logits[:, 0], exact_d_theta), (g_tau, exact_d_tau)):
        assert abs(g.mean().item() - exact) < 3 * g.std().item() / math.sqrt(n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_argmax_is_categorical_in_half_precision(dtype):
    """Half-precision noise is drawn in float32: its tails decide rare categories."""
    logits = torch.tensor([0.0, -3.0, -6.0, 1.0])
    n = 200_000
    draws = Concrete(1.0, logits=logits.to(dtype)).sample((n,)).argmax(-1)
    counts = np.bincount(draws.cpu().numpy(), minlength=4)
    assert stats.chisquare(counts, n * softmax(logits.double().cpu().numpy())).pvalue > P_THRESHOLD
