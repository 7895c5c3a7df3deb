"""The binary Concrete pair: BinaryConcrete (values in (0, 1)) and LogitBinaryConcrete.

Checked against theory: the exact CDF ``P(X <= x) = sigmoid(τ logit(x) - θ)`` (KS tests),
numerical integration of the densities, an independent float64 reference of the density
written below from DESIGN.md's formula, float64 gradcheck, and float64 autograd for the
float32 gradients at extreme logits.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from scipy import integrate, special, stats
from torch.autograd import gradcheck, gradgradcheck

import pyro_concrete
from pyro_concrete import BinaryConcrete, LogitBinaryConcrete, ops

DEVICE = torch.get_default_device()  # the run's device: tests/devices.py
P_MIN = 1e-3  # KS p-value threshold, fixed in advance
F64 = torch.float64


# -- independent float64 reference (DESIGN.md), numpy only ------------------------------


def ref_log_density_x(log_x, log_1mx, theta, tau):
    """log p(x) = log τ + θ - (τ+1)(log x + log(1-x)) - 2 log(exp(θ - τ log x) + (1-x)^(-τ)).

    Takes ``log x`` and ``log(1 - x)`` so that it can be evaluated where x rounds to 1;
    the last term is ``logaddexp`` of the two exponents.
    """
    log_x, log_1mx = np.asarray(log_x, np.float64), np.asarray(log_1mx, np.float64)
    return (
        np.log(tau)
        + theta
        - (tau + 1) * (log_x + log_1mx)
        - 2 * np.logaddexp(theta - tau * log_x, -tau * log_1mx)
    )


def ref_log_density_y(y, theta, tau):
    """Density of y = logit(x): p_Y(y) = p_X(sigmoid y) · x(1 - x)."""
    y = np.asarray(y, np.float64)
    log_x, log_1mx = -np.logaddexp(0.0, -y), -np.logaddexp(0.0, y)
    return ref_log_density_x(log_x, log_1mx, theta, tau) + log_x + log_1mx


def exact_cdf_x(x, theta, tau):
    return special.expit(tau * special.logit(np.asarray(x, np.float64)) - theta)


def ks_pvalue(sample: torch.Tensor, cdf_of_logit) -> float:
    """Kolmogorov-Smirnov p-value of a sample in [0, 1] against a continuous CDF, with rounding.

    At low temperature a sample rounds to exactly 1.0 (float32: for ``y > 16.6``), so it
    has ties, which ``scipy.stats.kstest`` would compare with the CDF at the tie itself.
    Here each distinct float ``u`` stands for the reals that round to it: the empirical CDF
    at ``u`` and just below it is compared with the CDF at the midpoints to the
    neighbouring floats. ``cdf_of_logit`` is the CDF as a function of ``logit(x)``, which
    the midpoints' logits give accurately even next to 1. The p-value is the continuous
    one (conservative with ties).
    """
    x = sample.cpu().numpy()
    u, counts = np.unique(x, return_counts=True)
    up = np.clip(np.nextafter(u, np.array(2, u.dtype)), 0, 1)
    down = np.clip(np.nextafter(u, np.array(-1, u.dtype)), 0, 1)

    def logit_of_midpoint(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(divide="ignore"):  # logit(0) = -inf and logit(1) = inf are exact
            return np.log((a + b) / 2) - np.log(((1 - a) + (1 - b)) / 2)

    ecdf = np.cumsum(counts) / x.size
    d_upper = np.abs(ecdf - cdf_of_logit(logit_of_midpoint(u, up))).max()
    d_lower = np.abs(ecdf - counts / x.size - cdf_of_logit(logit_of_midpoint(u, down))).max()
    return stats.kstwo.sf(max(d_upper, d_lower), x.size)


def t64(*values):
    return [torch.tensor(v, dtype=F64) for v in values]


# -- noise ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draw_logistic_is_standard_logistic(dtype):
    torch.manual_seed(1)
    noise = ops.draw_logistic(torch.Size([200_000]), dtype, DEVICE)
    assert noise.dtype == dtype and noise.shape == (200_000,)
    assert torch.isfinite(noise).all()
    assert stats.kstest(noise.double().cpu().numpy(), stats.logistic.cdf).pvalue > P_MIN


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_draw_logistic_never_infinite(dtype, monkeypatch):
    # The uniform draw's extreme values 0 and (where a backend rounds up) 1 stay finite.
    for u in (0.0, 1.0, torch.finfo(dtype).tiny):
        monkeypatch.setattr(torch.Tensor, "uniform_", lambda self, *a, u=u, **k: self.fill_(u))
        noise = ops.draw_logistic(torch.Size([3]), dtype, DEVICE)
        assert noise.dtype == dtype and torch.isfinite(noise).all(), u
    monkeypatch.undo()
    a = ops.draw_logistic(torch.Size([4]), dtype, DEVICE)
    b = ops.draw_logistic(torch.Size([4]), dtype, DEVICE)
    assert a.data_ptr() != b.data_ptr()  # a fresh buffer every call


# -- goodness of fit ----------------------------------------------------------------------


BINARY_KS_CASES = [
    (0.0, 1.0, torch.float32),
    (1.3, 1.0, torch.float64),
    (-0.8, 0.5, torch.float32),
    (0.4, 0.5, torch.float64),
    (0.0, 0.1, torch.float32),  # 16% of the float32 samples are exactly 1.0
    (-1.5, 0.1, torch.float64),
    (2.0, 3.0, torch.float32),
    (0.3, 0.02, torch.float64),
]


@pytest.mark.parametrize("case", range(len(BINARY_KS_CASES)))
def test_binary_concrete_ks(case):
    # float32 cases stop at τ = 0.1: torch's float32 sigmoid returns 0.0 rather than a
    # subnormal below y = -88.7, which the rounding model of ks_pvalue does not include
    # (probability 1.4e-4 at τ = 0.1, θ = 0; a 0.03 shift of the CDF at τ = 0.02).
    theta, tau, dtype = BINARY_KS_CASES[case]
    torch.manual_seed(100 + case)
    d = BinaryConcrete(torch.tensor(tau, dtype=dtype), logits=torch.tensor(theta, dtype=dtype))
    x = d.sample((20_000,))
    assert x.dtype == dtype and ((x >= 0) & (x <= 1)).all()
    assert ks_pvalue(x, lambda logit: special.expit(tau * logit - theta)) > P_MIN


@pytest.mark.parametrize("theta, tau", [(0.0, 1.0), (-0.8, 0.5), (1.5, 0.1), (50.0, 0.05)])
def test_logit_binary_concrete_ks(theta, tau):
    torch.manual_seed(3)
    y = LogitBinaryConcrete(tau, logits=torch.tensor(theta)).rsample((20_000,))
    cdf = lambda v: special.expit(tau * v - theta)  # noqa: E731
    assert stats.kstest(y.double().cpu().numpy(), cdf).pvalue > P_MIN


def test_logit_binary_concrete_moments():
    torch.manual_seed(4)
    n = 100_000
    d = LogitBinaryConcrete(torch.tensor([0.5, 2.0]), logits=torch.tensor([1.0, -3.0]))
    y = d.sample((n,))
    sd = d.variance.sqrt()
    assert ((y.mean(0) - d.mean).abs() < 5 * sd / math.sqrt(n)).all()
    # Logistic excess kurtosis is 6/5: Var(s^2) = (2 + 6/5) σ^4 / n.
    assert ((y.var(0) - d.variance).abs() < 5 * d.variance * math.sqrt(3.2 / n)).all()


# -- densities ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("error::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("theta, tau", [(0.0, 1.0), (1.5, 0.5), (-2.0, 2.0), (0.5, 0.25), (-1.0, 0.3)])
def test_binary_concrete_density_integrates_to_one(theta, tau):
    # Directly over (0, 1), split at the median sigmoid(θ/τ). Below τ ≈ 0.25 quad no
    # longer converges: a visible part of the mass sits within 1e-16 of an endpoint,
    # beyond what float64 x resolves (which is why the library scores in logit space);
    # the logit-space test below covers low temperatures.
    d = BinaryConcrete(*t64(tau), logits=torch.tensor(theta, dtype=F64))
    density = lambda v: math.exp(d.log_prob(torch.tensor(v, dtype=F64)).item())  # noqa: E731
    median = special.expit(theta / tau)
    total = sum(integrate.quad(density, a, b, limit=200)[0] for a, b in [(0, median), (median, 1)])
    assert abs(total - 1) < 1e-6


@pytest.mark.filterwarnings("error::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize(
    "theta, tau", [(0.0, 1.0), (1.5, 0.5), (-2.0, 2.0), (-0.7, 0.1), (3.0, 0.1), (0.3, 0.05), (50.0, 0.1)]
)
def test_logit_binary_concrete_density_integrates_to_one(theta, tau):
    d = LogitBinaryConcrete(*t64(tau), logits=torch.tensor(theta, dtype=F64))
    density = lambda v: math.exp(d.log_prob(torch.tensor(v, dtype=F64)).item())  # noqa: E731
    mode = theta / tau
    total = integrate.quad(density, -math.inf, mode)[0] + integrate.quad(density, mode, math.inf)[0]
    assert abs(total - 1) < 1e-8


THETAS = [-50.0, -3.0, 0.0, 0.7, 4.0, 50.0]
TAUS = [0.01, 0.1, 0.5, 1.0, 2.0]


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("theta", THETAS)
def test_log_prob_matches_reference_float64(theta, tau):
    # Points around the bulk of the distribution and far into both tails.
    y = theta / tau + np.linspace(-40, 40, 33) / tau
    expected = ref_log_density_y(y, theta, tau)
    d = LogitBinaryConcrete(*t64(tau), logits=torch.tensor(theta, dtype=F64))
    np.testing.assert_allclose(d.log_prob(torch.tensor(y)).cpu().numpy(), expected, rtol=1e-9, atol=1e-9)

    # BinaryConcrete at the points x that float64 resolves: 1 - x must be representable.
    x = special.expit(y[np.abs(y) < 30])
    expected = ref_log_density_x(np.log(x), np.log1p(-x), theta, tau)
    d = BinaryConcrete(*t64(tau), logits=torch.tensor(theta, dtype=F64))
    np.testing.assert_allclose(d.log_prob(torch.tensor(x)).cpu().numpy(), expected, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("theta", [-50.0, 0.3, 50.0])
def test_log_prob_float32_matches_reference(theta, tau):
    y32 = (theta + torch.linspace(-12, 12, 25)) / tau
    d = LogitBinaryConcrete(tau, logits=torch.tensor(theta))
    got = d.log_prob(y32)
    assert got.dtype == torch.float32
    expected = ref_log_density_y(y32.double().cpu().numpy(), theta, tau)
    np.testing.assert_allclose(got.double().cpu().numpy(), expected, rtol=1e-5, atol=1e-4)


def test_binary_concrete_endpoints_are_finite():
    # 0.0 and 1.0 (rounded float32 samples) are read as the nearest interior floats.
    for dtype in (torch.float32, torch.float64):
        d = BinaryConcrete(torch.tensor(0.3, dtype=dtype), logits=torch.tensor(0.5, dtype=dtype))
        value = torch.tensor([0.0, 1.0], dtype=dtype, requires_grad=True)
        lp = d.log_prob(value)
        (grad,) = torch.autograd.grad(lp.sum(), value)
        assert torch.isfinite(lp).all() and torch.isfinite(grad).all()
        eps, smallest = torch.finfo(dtype).eps, torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
        expected = ref_log_density_x([math.log(smallest), math.log1p(-eps / 2)],
                                     [math.log1p(-smallest), math.log(eps / 2)], 0.5, 0.3)  # fmt: skip
        np.testing.assert_allclose(lp.detach().double().cpu().numpy(), expected, rtol=1e-5)


# -- extreme logits and probs (float32) ---------------------------------------------------


@pytest.mark.parametrize("theta", [-50.0, 50.0])
@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_extreme_logits_float32_finite_and_gradient_not_killed(theta, tau):
    logits = torch.tensor(theta, requires_grad=True)
    temperature = torch.tensor(tau, requires_grad=True)
    for cls in (BinaryConcrete, LogitBinaryConcrete):
        d = cls(temperature, logits=logits)
        v = d.rsample((1000,))
        lp = d.log_prob(v)
        g_logits, g_temp = torch.autograd.grad(lp.sum() + v.sum(), (logits, temperature))
        assert torch.isfinite(v).all() and torch.isfinite(lp).all()
        assert torch.isfinite(g_logits) and torch.isfinite(g_temp)

    # log_prob's partial derivatives at fixed points, against float64 autograd of the
    # reference: d/dθ log p_Y(y) = -tanh((θ - τy)/2) is far from zero in the bulk, where
    # torch's LogitRelaxedBernoulli (probs clamped) returns 0.
    y32 = (theta + torch.linspace(-6, 3, 10)) / tau
    for cls, value in ((LogitBinaryConcrete, y32), (BinaryConcrete, None)):
        logits = torch.tensor(theta, requires_grad=True)
        temperature = torch.tensor(tau, requires_grad=True)
        d = cls(temperature, logits=logits)
        if value is None:  # x in (0, 1) where float32 resolves it
            value = torch.sigmoid(torch.linspace(-6, 3, 10) / tau).clamp(1e-30, 1 - 1e-7)
        got = torch.autograd.grad(d.log_prob(value).sum(), (logits, temperature))
        logits64, temperature64 = (
            torch.tensor(theta, dtype=F64, requires_grad=True),
            torch.tensor(tau, dtype=F64, requires_grad=True),
        )
        v64 = value.double()
        if cls is LogitBinaryConcrete:
            a = logits64 - temperature64 * v64
            ref = torch.log(temperature64) + a - 2 * torch.logaddexp(torch.zeros_like(a), a)
        else:
            lx, l1x = torch.log(v64), torch.log1p(-v64)
            ref = (
                torch.log(temperature64)
                + logits64
                - (temperature64 + 1) * (lx + l1x)
                - 2 * torch.logaddexp(logits64 - temperature64 * lx, -temperature64 * l1x)
            )
        expected = torch.autograd.grad(ref.sum(), (logits64, temperature64))
        assert abs(expected[0].item()) > 0.5  # the test point is informative
        for g, e in zip(got, expected, strict=True):
            assert torch.isfinite(g)
            assert abs(g.item() - e.item()) <= 1e-4 * max(1.0, abs(e.item())), (cls, g, e)


def test_sample_gradient_float32_matches_float64_at_extreme_logits():
    # Same noise in both precisions: the sample and log_prob(sample) and their gradients.
    noise64 = ops.draw_logistic(torch.Size([2000]), F64, DEVICE)
    results = {}
    for dtype in (torch.float32, F64):
        logits = torch.tensor([-50.0, 50.0], dtype=dtype, requires_grad=True)
        temperature = torch.tensor(0.2, dtype=dtype, requires_grad=True)
        y = ops.binary_concrete_logit_sample(logits, temperature, noise64.to(dtype).reshape(1000, 2))
        lp = ops.binary_concrete_log_density_at_logit(y, logits, temperature)
        loss = (lp + torch.sigmoid(y)).sum()
        results[dtype] = [loss, *torch.autograd.grad(loss, (logits, temperature))]
    for a, b in zip(results[torch.float32], results[F64], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-3)


def test_probs_constructed_float32():
    probs = torch.tensor([1e-30, 1e-7, 0.3, 1 - 2**-24], requires_grad=True)
    temperature = torch.tensor(0.1, requires_grad=True)
    for cls in (BinaryConcrete, LogitBinaryConcrete):
        d = cls(temperature, probs=probs)
        p = probs.detach().double().cpu().numpy()
        expected = np.log(p) - np.log1p(-p)
        np.testing.assert_allclose(d.logits.detach().cpu().numpy(), expected, rtol=1e-6)
        assert torch.equal(d.probs, probs)
        v = d.rsample((500,))
        lp = d.log_prob(v)
        grads = torch.autograd.grad(lp.sum() + v.sum(), (probs, temperature))
        assert torch.isfinite(v).all() and torch.isfinite(lp).all()
        assert all(torch.isfinite(g).all() for g in grads)


def test_probs_is_sigmoid_of_logits():
    logits = torch.tensor([-50.0, -1.0, 0.0, 2.0, 50.0])
    d = BinaryConcrete(0.5, logits=logits)
    torch.testing.assert_close(d.probs, torch.tensor(special.expit(logits.cpu().numpy())))


# -- gradients ----------------------------------------------------------------------------


def test_sampler_gradcheck():
    noise = ops.draw_logistic(torch.Size([5, 3]), F64, DEVICE)
    logits = torch.tensor([-2.0, 0.3, 4.0], dtype=F64, requires_grad=True)
    temperature = torch.tensor([[0.2], [0.5], [1.0], [2.0], [0.05]], dtype=F64, requires_grad=True)
    f = lambda lg, t: ops.binary_concrete_logit_sample(lg, t, noise)  # noqa: E731
    assert gradcheck(f, (logits, temperature))
    assert gradgradcheck(f, (logits, temperature))
    before = noise.clone()
    y = f(logits, temperature)
    assert torch.equal(noise, before)  # the noise is left alone
    torch.testing.assert_close(y, (before + logits) / temperature)


@pytest.mark.parametrize("cls", [BinaryConcrete, LogitBinaryConcrete])
def test_log_prob_gradcheck(cls):
    torch.manual_seed(5)
    logits = torch.tensor([-3.0, 0.4, 2.5], dtype=F64, requires_grad=True)
    temperature = torch.tensor([[0.3], [1.7]], dtype=F64, requires_grad=True)
    value = cls(temperature, logits=logits).sample().requires_grad_()

    def f(lg, t, v):
        return cls(t, logits=lg).log_prob(v)

    assert gradcheck(f, (logits, temperature, value))
    assert gradgradcheck(f, (logits, temperature, value))


def test_own_sample_path_agrees_with_general_formula():
    # The own sample is scored from its logit; a copy of it through x. In float64 at
    # moderate temperature x loses nothing, so values and gradients must agree.
    logits = torch.tensor([-2.0, 0.0, 1.5], dtype=F64, requires_grad=True)
    temperature = torch.tensor(0.7, dtype=F64, requires_grad=True)
    d = BinaryConcrete(temperature, logits=logits)
    x = d.rsample((200,))
    own, general = d.log_prob(x), d.log_prob(x.clone())
    assert d._recall(x) is not None and d._recall(x.clone()) is None
    torch.testing.assert_close(own, general, rtol=1e-9, atol=1e-9)
    for lp in (own, general):
        assert lp.requires_grad
    g_own = torch.autograd.grad(own.sum(), (logits, temperature), retain_graph=True)
    g_general = torch.autograd.grad(general.sum(), (logits, temperature))
    for a, b in zip(g_own, g_general, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)

    # The same for a sample drawn without gradient: the score d/dθ log p(x) at fixed x.
    x = d.sample((200,))
    own, general = d.log_prob(x), d.log_prob(x.clone())
    g_own = torch.autograd.grad(own.sum(), (logits, temperature))
    g_general = torch.autograd.grad(general.sum(), (logits, temperature))
    assert g_own[0].abs().min() > 0
    for a, b in zip(g_own, g_general, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)

    # Kernel level: the density from the logit equals the density of sigmoid(logit).
    # (|y| <= 15: 1 - x >= 3e-7 keeps ~10 digits, so logit(x) is recovered to ~1e-9.)
    y = torch.linspace(-15, 15, 61, dtype=F64, requires_grad=True)
    from_logit = ops.binary_concrete_log_density_at_logit(y, logits[2], temperature)
    from_x = ops.binary_concrete_log_density(torch.sigmoid(y), logits[2], temperature)
    torch.testing.assert_close(from_logit, from_x, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(*(torch.autograd.grad(lp.sum(), y)[0] for lp in (from_logit, from_x)))


def test_modified_own_sample_is_scored_from_its_value():
    d = BinaryConcrete(0.5, logits=torch.zeros(3, dtype=F64))
    x = d.rsample()
    x.mul_(0.5)  # an in-place change makes the remembered logit stale
    expected = ref_log_density_x(np.log(x.cpu().numpy()), np.log1p(-x.cpu().numpy()), 0.0, 0.5)
    np.testing.assert_allclose(d.log_prob(x).cpu().numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("tau", [0.1, 0.05, 0.01])
def test_low_temperature_own_samples_finite_float32(tau):
    n = 10_000
    logits = (torch.randn(n) * 3).requires_grad_()
    temperature = torch.full((n,), tau, requires_grad=True)
    d = BinaryConcrete(temperature, logits=logits)
    x = d.rsample()
    saturated = ((x == 0) | (x == 1)).float().mean().item()
    assert saturated > 0.1  # the regime where the textbook density fails
    lp = d.log_prob(x)
    g_logits, g_temp = torch.autograd.grad(lp.sum(), (logits, temperature))
    assert torch.isfinite(lp).all() and torch.isfinite(g_logits).all() and torch.isfinite(g_temp).all()
    # Exact: the float64 reference at the sample's logit, y = (θ + L)/τ.
    y = d._recall(x).detach().double().cpu().numpy()
    expected = ref_log_density_y(y, logits.detach().double().cpu().numpy(), tau)
    expected += np.logaddexp(0, -y) + np.logaddexp(0, y)
    np.testing.assert_allclose(lp.detach().double().cpu().numpy(), expected, rtol=1e-5, atol=1e-3)

    d = LogitBinaryConcrete(temperature, logits=logits)
    y = d.rsample()
    lp = d.log_prob(y)
    grads = torch.autograd.grad(lp.sum(), (logits, temperature))
    assert torch.isfinite(lp).all() and all(torch.isfinite(g).all() for g in grads)


# -- shapes, expand, pickling, Pyro ------------------------------------------------------


@pytest.mark.parametrize("cls", [BinaryConcrete, LogitBinaryConcrete])
def test_shapes(cls):
    d = cls(torch.tensor([[0.5], [1.0], [2.0]]), logits=torch.randn(4))
    assert d.batch_shape == (3, 4) and d.event_shape == ()
    assert d.rsample().shape == (3, 4)
    assert d.sample((5, 2)).shape == (5, 2, 3, 4)
    assert d.log_prob(d.sample((5, 2))).shape == (5, 2, 3, 4)
    assert d.log_prob(torch.full((4,), 0.5)).shape == (3, 4)  # value broadcasts
    d = cls(0.5, logits=torch.randn(2, 3))
    assert d.temperature.shape == (2, 3) and d.batch_shape == (2, 3)
    d = cls(0.5, probs=0.3)
    assert d.batch_shape == () and d.rsample((7,)).shape == (7,)
    assert cls.infer_shapes(temperature=(3, 1), logits=(4,)) == ((3, 4), ())

    e = cls(torch.tensor(0.5), logits=torch.randn(3)).expand((2, 3))
    assert type(e) is cls and e.batch_shape == (2, 3)
    assert e.rsample((4,)).shape == (4, 2, 3)
    assert e.log_prob(e.rsample()).shape == (2, 3)

    ind = cls(0.5, logits=torch.randn(2, 3)).to_event(1)
    assert ind.batch_shape == (2,) and ind.event_shape == (3,)
    assert ind.log_prob(ind.rsample((5,))).shape == (5, 2)


def test_to_event_and_mask_keep_exact_own_sample_scoring():
    base = BinaryConcrete(0.01, logits=torch.zeros(50))
    ind = base.to_event(1)
    x = ind.rsample((20,))
    assert ((x == 0) | (x == 1)).any()
    lp = ind.log_prob(x)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, base.log_prob(x).sum(-1))
    masked = base.mask(torch.arange(50) < 10)
    x = masked.rsample()
    assert torch.isfinite(masked.log_prob(x)).all() and (masked.log_prob(x)[10:] == 0).all()


def test_pyro_trace_at_low_temperature():
    logits = torch.zeros(100, requires_grad=True)

    def model():
        with poutine.scale(scale=0.5):
            pyro.sample("z", BinaryConcrete(0.01, logits=logits).to_event(1))

    trace = poutine.trace(model).get_trace()
    trace.compute_log_prob()
    lp = trace.nodes["z"]["log_prob_sum"]
    assert torch.isfinite(lp)
    (grad,) = torch.autograd.grad(lp, logits)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("cls", [BinaryConcrete, LogitBinaryConcrete])
def test_pickle_round_trip(cls):
    d = cls(torch.tensor([0.5, 2.0]), probs=torch.tensor([0.2, 0.9]), validate_args=False)
    x = d.rsample()
    back = pickle.loads(pickle.dumps(d))
    assert type(back) is cls and back._validate_args is False
    for name in ("temperature", "logits", "probs"):
        torch.testing.assert_close(getattr(back, name), getattr(d, name))
    assert back.batch_shape == d.batch_shape
    assert getattr(back, "_own_sample", None) is None  # a sample is not part of the distribution
    torch.testing.assert_close(back.log_prob(x), d.log_prob(x.clone()))


def test_repr_and_exports():
    assert repr(BinaryConcrete(0.5, logits=torch.zeros(3))) == (
        "BinaryConcrete(temperature: 0.5, logits: Tensor(3,), batch_shape: (3,))"
    )
    assert "Tensor(2,)" in repr(LogitBinaryConcrete(torch.tensor([0.5, 1.0]), logits=torch.zeros(2)))
    assert pyro_concrete.BinaryConcrete is BinaryConcrete
    assert pyro_concrete.distributions.LogitBinaryConcrete is LogitBinaryConcrete
    assert BinaryConcrete.has_rsample and LogitBinaryConcrete.has_rsample


def test_validate_args_follows_global_default():
    torch.distributions.Distribution.set_default_validate_args(False)
    d = BinaryConcrete(0.5, logits=torch.zeros(2))
    assert not d._validate_args
    assert not d.expand((3, 2))._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    assert d._validate_args  # follows the global default, as torch's distributions do
    assert (
        BinaryConcrete(0.5, logits=torch.zeros(2), validate_args=False).expand((2,))._validate_args is False
    )


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BinaryConcrete, LogitBinaryConcrete])
@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf, torch.tensor([0.5, 0.0])])
def test_bad_temperature(cls, temperature):
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature, logits=torch.zeros(2))


@pytest.mark.parametrize("cls", [BinaryConcrete, LogitBinaryConcrete])
def test_bad_logits_and_probs(cls):
    with pytest.raises(ValueError, match="logits"):
        cls(0.5, logits=torch.tensor([0.0, math.nan]))
    for probs in ([1.5, 0.5], [-0.1, 0.5], [math.nan, 0.5]):  # 0 and 1 are certain outcomes
        with pytest.raises(ValueError, match="probs"):
            cls(0.5, probs=torch.tensor(probs))
    with pytest.raises(ValueError, match="both"):
        cls(0.5, logits=torch.zeros(2), probs=torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="neither"):
        cls(0.5)
    with pytest.raises(ValueError, match="temperature"):
        cls(torch.ones(3), logits=torch.zeros(2))  # shapes that do not broadcast
    with pytest.raises(TypeError, match="logits"):
        cls(0.5, logits="0.3")


def test_value_outside_support_raises_under_validation():
    d = BinaryConcrete(0.5, logits=torch.zeros(3), validate_args=True)
    for bad in ([0.5, 1.5, 0.5], [-0.1, 0.5, 0.5], [math.nan, 0.5, 0.5]):
        with pytest.raises(ValueError, match="value"):
            d.log_prob(torch.tensor(bad))
    d = LogitBinaryConcrete(0.5, logits=torch.zeros(3), validate_args=True)
    with pytest.raises(ValueError, match="value"):
        d.log_prob(torch.tensor([0.0, math.nan, 1.0]))
    # Own samples are never rejected, even where they round to the endpoints.
    d = BinaryConcrete(0.01, logits=torch.zeros(1000), validate_args=True)
    x = d.rsample()
    assert ((x == 0) | (x == 1)).any() and torch.isfinite(d.log_prob(x)).all()
    # Without validation nothing is checked (torch's convention).
    BinaryConcrete(0.5, logits=torch.zeros(3), validate_args=False).log_prob(torch.tensor([0.5, 0.2, 0.1]))


@pytest.mark.parametrize("how", ["requires_grad_", "detach_", "on_path"])
def test_own_sample_routes_match_a_copy(how):
    """BinaryConcrete's remembered logit must give the same value, score and derivative with
    respect to the value as scoring a copy, whichever way the sample was obtained."""
    logits = torch.randn(6, dtype=torch.float64, requires_grad=True)
    temperature = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    d = BinaryConcrete(temperature, logits=logits)
    if how == "requires_grad_":
        value = d.sample().requires_grad_()
    else:
        value = d.rsample()
        if how == "detach_":
            value.detach_()
    lp = d.log_prob(value)
    copy = value.detach().clone().requires_grad_(value.requires_grad)
    expected = d.log_prob(copy)
    torch.testing.assert_close(lp, expected, rtol=1e-10, atol=1e-10)
    if how == "on_path":  # total derivative along the sample path: compare with the chain rule
        return
    wrt_a = [logits, temperature, value] if value.requires_grad else [logits, temperature]
    wrt_b = [logits, temperature, copy] if value.requires_grad else [logits, temperature]
    for a, b in zip(
        torch.autograd.grad(lp.sum(), wrt_a), torch.autograd.grad(expected.sum(), wrt_b), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
