"""The straight-through family and its gradient estimators (issue 3, criteria 2-5).

Thresholds decided before running: goodness-of-fit tests pass at p > 1e-3; Monte-Carlo
means agree when they differ by less than 4 standard errors (a correct implementation
fails one such comparison in about 16,000).
"""

import math

import numpy as np
import pyro
import pyro.distributions as pdist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from scipy import integrate, special, stats

from pyro_concrete import BinaryConcreteStraightThrough, ConcreteStraightThrough, ops

P_THRESHOLD = 1e-3
DEVICE = torch.get_default_device()  # the run's device: tests/devices.py
Z = 4.0
ESTIMATORS = ("st", "gumbel_rao", "reinmax")
FAMILIES = ("categorical", "binary")


def make(family, temperature, *, probs=None, logits=None, **kwargs):
    cls = ConcreteStraightThrough if family == "categorical" else BinaryConcreteStraightThrough
    return cls(temperature, probs=probs, logits=logits, **kwargs)


def assert_bitwise_hard(x, family):
    """Every entry has the bit pattern of +0.0 or 1.0; categorical rows hold one 1.0."""
    int_dtype = {torch.float32: torch.int32, torch.float64: torch.int64}[x.dtype]
    bits = x.detach().view(int_dtype)
    one = torch.ones(1, dtype=x.dtype).view(int_dtype)
    assert torch.all((bits == 0) | (bits == one))
    if family == "categorical":
        assert torch.all((bits == one).sum(-1) == 1)


# -- criterion 2: hard values and their distribution ---------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_are_bitwise_hard(family, estimator, temperature, dtype):
    shape = (3, 5) if family == "categorical" else (3,)
    logits = (3 * torch.randn(shape, dtype=dtype)).requires_grad_()
    tau = torch.tensor(temperature, dtype=dtype, requires_grad=True)
    d = make(family, tau, logits=logits, estimator=estimator, rao_samples=4)
    expanded = d.expand((2, 3))
    assert type(expanded) is type(d) and expanded.estimator == estimator and expanded.rao_samples == 4
    for dist in (d, expanded, d.to_event(1), expanded.to_event(2)):
        x = dist.rsample((200,))
        assert x.dtype == dtype and x.requires_grad
        assert_bitwise_hard(x, family)
        assert_bitwise_hard(dist.sample((10,)), family)
        (x * torch.randn(x.shape[-1], dtype=dtype)).sum().backward()
        assert torch.isfinite(logits.grad).all()
        if estimator != "reinmax":  # ReinMax has no temperature gradient
            assert torch.isfinite(tau.grad)
        logits.grad = tau.grad = None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_extreme_logits_float32(family, estimator, temperature):
    """Logits of +-50 in float32: hard samples, finite log_prob and gradients, no NaN."""
    logits = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, 49.0]], requires_grad=True)
    tau = torch.tensor(temperature, requires_grad=True)
    d = make(family, tau, logits=logits if family == "categorical" else logits[0], estimator=estimator)
    x = d.rsample((100,))
    assert_bitwise_hard(x, family)
    (d.log_prob(x).sum() + (x * x.detach().sum(0)).sum()).backward()
    assert torch.isfinite(logits.grad).all()
    assert tau.grad is None or torch.isfinite(tau.grad)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("with_grad", [True, False])
def test_categorical_frequencies(estimator, with_grad):
    """The hard sample is Categorical(softmax(logits)) on both sampling paths."""
    logits = torch.tensor([0.3, -1.2, 1.5, 0.0, -0.4], dtype=torch.float64)
    n = 20_000
    d = ConcreteStraightThrough(0.5, logits=logits.clone().requires_grad_(), estimator=estimator)
    x = d.rsample((n,)) if with_grad else d.sample((n,))
    assert x.requires_grad == with_grad
    counts = np.bincount(x.argmax(-1).cpu().numpy(), minlength=5)
    expected = n * special.softmax(logits.cpu().numpy())
    assert stats.chisquare(counts, expected).pvalue > P_THRESHOLD


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("with_grad", [True, False])
def test_binary_frequencies(estimator, with_grad):
    logits = torch.tensor([-2.0, 0.0, 0.7, 3.0], dtype=torch.float64)
    n = 20_000
    d = BinaryConcreteStraightThrough(0.5, logits=logits.clone().requires_grad_(), estimator=estimator)
    b = d.rsample((n,)) if with_grad else d.sample((n,))
    ones = b.sum(0).detach().cpu().numpy()
    p = special.expit(logits.cpu().numpy())
    for k, p_k in zip(ones, p, strict=True):
        assert stats.chisquare([n - k, k], [n * (1 - p_k), n * p_k]).pvalue > P_THRESHOLD


def test_kernels_without_distributions():
    """The estimators work as plain functions, with sample_shape and batched temperatures."""
    logits = torch.randn(4, 6, requires_grad=True)
    temperature = torch.tensor([0.2, 0.5, 1.0, 2.0], requires_grad=True)
    for estimator in ESTIMATORS:
        z = ops.straight_through_sample(logits, temperature, estimator=estimator, sample_shape=(7,))
        assert z.shape == (7, 4, 6)
        assert_bitwise_hard(z, "categorical")
        b = ops.binary_straight_through_sample(logits, 0.3, estimator=estimator, sample_shape=(2,))
        assert b.shape == (2, 4, 6)
        assert_bitwise_hard(b, "binary")
        # torch's convention, a (n, 1) temperature for (n, K) logits, means one per row.
        assert ops.straight_through_sample(logits, temperature.unsqueeze(-1), estimator=estimator).shape == (
            4,
            6,
        )
        (z.sum(0) * logits).sum().backward()
        (b * b).sum().backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_backward_can_be_differentiated(family, estimator):
    """create_graph=True works (e.g. for a gradient penalty) and gives finite values."""
    shape = (5, 4) if family == "categorical" else (5,)
    logits = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    d = make(family, tau, logits=logits, estimator=estimator, rao_samples=3)
    z = d.rsample((2,))
    (g,) = torch.autograd.grad(((z - 0.2) ** 3).sum(), logits, create_graph=True)
    (g**2).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert_bitwise_hard(z, family)


# -- Gumbel-Rao: the conditional noise -------------------------------------------------


def test_conditional_gumbel_keeps_the_argmax():
    logits = torch.tensor([4.0, -3.0, 0.5, -8.0, 1.0, 0.0], dtype=torch.float64)
    n = 5000
    index = torch.randint(0, 6, (n, 1))  # every category, the improbable ones included
    gumbel = ops.draw_gumbel(torch.Size([n, 6]), torch.float64, DEVICE)
    z = logits + ops.conditional_gumbel(logits, index, gumbel)
    assert torch.equal(z.argmax(-1, keepdim=True), index)


def test_conditional_gumbel_distribution():
    """D ~ Categorical(π) and G' ~ G | D together give G' standard Gumbel in every coordinate;
    given D, the maximum minus logsumexp(θ) is standard Gumbel (independent of the argmax)."""
    logits = torch.tensor([1.0, -0.5, 0.2, -2.0], dtype=torch.float64)
    n = 20_000
    index = torch.multinomial(torch.softmax(logits, -1), n, replacement=True).unsqueeze(-1)
    gumbel = ops.draw_gumbel(torch.Size([n, 4]), torch.float64, DEVICE)
    noise = ops.conditional_gumbel(logits, index, gumbel)
    for k in range(4):
        assert stats.kstest(noise[:, k].cpu().numpy(), stats.gumbel_r.cdf).pvalue > P_THRESHOLD
    rare = torch.full((n, 1), 3)
    top = (logits + ops.conditional_gumbel(logits, rare, gumbel)).max(-1).values - logits.logsumexp(-1)
    assert stats.kstest(top.cpu().numpy(), stats.gumbel_r.cdf).pvalue > P_THRESHOLD


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_conditional_soft_sample_mean(temperature):
    """Averaging softmax((θ + G') / τ) over G' | D and over D gives the unconditional mean."""
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0, -0.3], dtype=torch.float64)
    n = 40_000
    gumbel = ops.draw_gumbel(torch.Size([n, 5]), torch.float64, DEVICE)
    unconditional = torch.softmax((logits + gumbel) / temperature, -1)
    index = torch.multinomial(torch.softmax(logits, -1), n, replacement=True).unsqueeze(-1)
    fresh = ops.draw_gumbel(torch.Size([n, 5]), torch.float64, DEVICE)
    conditional = torch.softmax((logits + ops.conditional_gumbel(logits, index, fresh)) / temperature, -1)
    diff = unconditional.mean(0) - conditional.mean(0)
    se = (unconditional.var(0) / n + conditional.var(0) / n).sqrt()
    assert torch.all(diff.abs() < Z * se)


def test_conditional_logistic():
    theta = 0.8
    logits = torch.tensor(theta, dtype=torch.float64)
    n = 20_000
    draw = lambda: ops.draw_logistic(torch.Size([n]), torch.float64, DEVICE)  # noqa: E731
    # The sign is kept for any outcome, likely or not.
    positive = torch.rand(n) < 0.5
    assert torch.equal(logits + ops.conditional_logistic(logits, positive, draw()) > 0, positive)
    # Mixed over the outcome ~ Bernoulli(sigmoid θ), the noise is standard Logistic.
    outcome = torch.rand(n, dtype=torch.float64) < torch.sigmoid(logits)
    noise = ops.conditional_logistic(logits, outcome, draw())
    assert stats.kstest(noise.cpu().numpy(), stats.logistic.cdf).pvalue > P_THRESHOLD
    # Given a positive outcome, θ + L has CDF (σ(v - θ) - σ(-θ)) / σ(θ) for v > 0.
    v = (logits + ops.conditional_logistic(logits, torch.ones(n, dtype=torch.bool), draw())).cpu().numpy()
    cdf = lambda v: (special.expit(v - theta) - special.expit(-theta)) / special.expit(theta)  # noqa: E731
    assert stats.kstest(v, cdf).pvalue > P_THRESHOLD


# -- criterion 3: estimators against exact gradients ------------------------------------


def per_sample_gradients(family, theta, temperature, estimator, n, loss, rao_samples=10, samples=None):
    """``n`` independent gradients of ``loss(sample)`` wrt ``(logits..., temperature)``.

    Every row has its own copy of the logits and of the temperature, and the loss is a
    sum over rows, so each row's gradient is one draw of the estimator. The hard samples
    are appended to ``samples`` when it is a list.
    """
    logits = theta.expand((n, *theta.shape)).clone().requires_grad_()
    tau = torch.full((n,), temperature, dtype=theta.dtype, requires_grad=True)
    d = make(family, tau, logits=logits, estimator=estimator, rao_samples=rao_samples)
    z = d.rsample()
    loss(z).sum().backward()
    if samples is not None:
        samples.append(z.detach())
    grad_tau = tau.grad if tau.grad is not None else torch.zeros_like(tau)
    return torch.cat([logits.grad.reshape(n, -1), grad_tau.unsqueeze(-1)], -1)


def quadratic_problem(num_categories, dtype=torch.float64):
    """f(z) = sum_k w_k (z_k - t_k)^2 and the exact gradient of E_{z ~ Cat(softmax θ)} f(z)."""
    gen = torch.Generator().manual_seed(num_categories)  # the same problem on every device
    theta = torch.randn(num_categories, generator=gen, dtype=dtype, device="cpu").to(DEVICE)
    target = torch.rand(num_categories, generator=gen, dtype=dtype, device="cpu").to(DEVICE)
    weight = torch.rand(num_categories, generator=gen, dtype=dtype, device="cpu").to(DEVICE) + 0.5

    def loss(z):
        return ((z - target) ** 2 * weight).sum(-1)

    pi = torch.softmax(theta, -1)
    values = loss(torch.eye(num_categories, dtype=dtype))  # f at each category
    exact = pi * (values - (pi * values).sum())  # d/dθ sum_i π_i f(e_i)
    return theta, loss, exact


def assert_same_mean(a, b):
    diff = a.mean(0) - b.mean(0)
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    assert torch.all(diff.abs() <= Z * se), (diff, se)


def assert_lower_total_variance(low, high):
    """sum Var(low) < sum Var(high), by more than 4 standard errors of the difference."""

    def total_and_se(g):
        sq = ((g - g.mean(0)) ** 2).sum(-1)
        return sq.mean(), sq.std() / math.sqrt(len(g))

    v_low, se_low = total_and_se(low)
    v_high, se_high = total_and_se(high)
    assert v_high - v_low > Z * math.hypot(se_low, se_high), (v_low, v_high)


@pytest.mark.parametrize("num_categories", [2, 5, 8])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_gumbel_rao_same_mean_lower_variance_categorical(num_categories, temperature):
    theta, loss, _ = quadratic_problem(num_categories)
    n = 20_000
    st = per_sample_gradients("categorical", theta, temperature, "st", n, loss)
    gr = per_sample_gradients("categorical", theta, temperature, "gumbel_rao", n, loss, rao_samples=10)
    assert_same_mean(st, gr)  # logits and temperature alike
    assert_lower_total_variance(gr, st)
    assert torch.all(gr[:, :-1].var(0) < st[:, :-1].var(0))  # and per logit


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_gumbel_rao_same_mean_lower_variance_binary(temperature):
    theta = torch.tensor(0.4, dtype=torch.float64)

    def loss(b):
        return 1.3 * (b - 0.2) ** 2 + 0.5 * b

    n = 20_000
    st = per_sample_gradients("binary", theta, temperature, "st", n, loss)
    gr = per_sample_gradients("binary", theta, temperature, "gumbel_rao", n, loss, rao_samples=10)
    assert_same_mean(st, gr)
    assert_lower_total_variance(gr, st)
    assert torch.all(gr.var(0) < st.var(0))


def relaxed_mean_derivatives(delta, tau):
    """d/dΔ and d/dτ of m(Δ, τ) = E[sigmoid((Δ + L) / τ)], L standard Logistic, by quadrature.

    With u = (Δ + l) / τ: dm/dΔ = ∫ σ'(u) p(τu - Δ) du, dm/dτ = -∫ σ'(u) u p(τu - Δ) du,
    p the Logistic density.
    """

    def dsig(u):
        s = special.expit(u)
        return s * (1 - s)

    d_delta = integrate.quad(lambda u: dsig(u) * dsig(tau * u - delta), -np.inf, np.inf)[0]
    d_tau = -integrate.quad(lambda u: dsig(u) * u * dsig(tau * u - delta), -np.inf, np.inf)[0]
    return d_delta, d_tau


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("estimator", ["st", "gumbel_rao"])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.1])
def test_st_is_the_gradient_of_the_relaxed_objective(family, estimator, temperature):
    """For a linear loss c·z, ST (and Gumbel-Rao) are unbiased for the gradient of
    E[c · soft sample] in logits and temperature; with K = 2 that is a 1-d integral."""
    c0, c1 = 1.5, -0.5
    if family == "categorical":
        theta = torch.tensor([0.7, -0.2], dtype=torch.float64)
        delta = 0.9

        def loss(z):
            return c0 * z[..., 0] + c1 * z[..., 1]
    else:
        theta = torch.tensor(0.9, dtype=torch.float64)
        delta = 0.9

        def loss(b):
            return c0 * b + c1 * (1 - b)

    d_delta, d_tau = relaxed_mean_derivatives(delta, temperature)
    scale = c0 - c1
    if family == "categorical":
        exact = torch.tensor([scale * d_delta, -scale * d_delta, scale * d_tau], dtype=torch.float64)
    else:
        exact = torch.tensor([scale * d_delta, scale * d_tau], dtype=torch.float64)
    n = 40_000
    g = per_sample_gradients(family, theta, temperature, estimator, n, loss, rao_samples=4)
    se = g.std(0) / math.sqrt(n)
    assert torch.all((g.mean(0) - exact).abs() <= Z * se), (g.mean(0), exact, se)


def reinmax_reference(logits, temperature, one_hot):
    """Liu et al. 2023, Algorithm 2, written with stop-gradients, for a given sample D."""
    pi0 = torch.softmax(logits, -1)
    pi1 = (one_hot + torch.softmax(logits / temperature, -1)) / 2
    pi1 = torch.softmax((torch.log(pi1) - logits).detach() + logits, -1)
    pi2 = 2 * pi1 - pi0 / 2
    return one_hot + pi2 - pi2.detach()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_reinmax_matches_published_formula(temperature):
    theta = torch.randn(64, 6, dtype=torch.float64)
    weight = torch.randn(6, dtype=torch.float64)

    def loss(z):
        return ((z - 0.3) ** 2 * weight).sum() + (z[..., 0] * z[..., 1:].sum(-1)).sum()

    logits = theta.clone().requires_grad_()
    tau = torch.tensor(temperature, dtype=torch.float64, requires_grad=True)
    z = ConcreteStraightThrough(tau, logits=logits, estimator="reinmax").rsample((3,))
    loss(z).backward()
    assert tau.grad is None  # the stop-gradients leave the temperature out

    ref_logits = theta.clone().requires_grad_()
    loss(reinmax_reference(ref_logits, temperature, z.detach())).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=0, atol=1e-12)

    # Second order (a gradient penalty, create_graph=True) agrees with the reference too.
    def penalty(sample, lg):
        (g,) = torch.autograd.grad(loss(sample(lg)), lg, create_graph=True)
        return (g**2).sum()

    def ours(lg):
        torch.manual_seed(5)  # the same D on every call
        return ConcreteStraightThrough(temperature, logits=lg, estimator="reinmax").rsample((3,))

    d = ours(theta).detach()
    first, second = theta.clone().requires_grad_(), theta.clone().requires_grad_()
    penalty(ours, first).backward()
    penalty(lambda lg: reinmax_reference(lg, temperature, d), second).backward()
    torch.testing.assert_close(first.grad, second.grad, rtol=0, atol=1e-11)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_binary_reinmax_is_two_class_reinmax(temperature):
    theta = torch.randn(200, dtype=torch.float64) * 2

    def loss(b):
        return (1.7 * (b - 0.3) ** 2 - b).sum()

    logits = theta.clone().requires_grad_()
    b = BinaryConcreteStraightThrough(temperature, logits=logits, estimator="reinmax").rsample()
    loss(b).backward()

    def reference(lg, b):
        two_class = torch.stack([lg, torch.zeros_like(lg)], -1)
        one_hot = torch.stack([b, 1 - b], -1)
        return reinmax_reference(two_class, temperature, one_hot)[..., 0]

    ref = theta.clone().requires_grad_()
    loss(reference(ref, b.detach())).backward()
    torch.testing.assert_close(logits.grad, ref.grad, rtol=0, atol=1e-12)

    # Second order (a gradient penalty, create_graph=True) agrees with the reference too.
    def penalty(sample, lg):
        (g,) = torch.autograd.grad(loss(sample(lg)), lg, create_graph=True)
        return (g**2).sum()

    def ours(lg):
        torch.manual_seed(5)  # the same outcome on every call
        return BinaryConcreteStraightThrough(temperature, logits=lg, estimator="reinmax").rsample()

    b = ours(theta).detach()
    first, second = theta.clone().requires_grad_(), theta.clone().requires_grad_()
    penalty(ours, first).backward()
    penalty(lambda lg: reference(lg, b), second).backward()
    torch.testing.assert_close(first.grad, second.grad, rtol=0, atol=1e-11)


@pytest.mark.parametrize(
    ("family", "num_categories"), [("categorical", 2), ("categorical", 4), ("categorical", 8), ("binary", 2)]
)
def test_reinmax_is_exact_for_quadratic_losses_at_unit_temperature(family, num_categories):
    """Second-order accuracy (Liu et al. 2023): at τ = 1 the expectation of ReinMax is the
    exact gradient for any loss quadratic in z. Given D the estimator is deterministic,
    so the expectation is a finite sum over D, checked to rounding error."""
    theta, loss, exact = quadratic_problem(num_categories)
    n = 200 * num_categories
    samples = []
    if family == "categorical":
        grads = per_sample_gradients("categorical", theta, 1.0, "reinmax", n, loss, samples=samples)[:, :-1]
        categories = samples[0].argmax(-1)
    else:
        # Two classes: Δ = θ1 - θ0 is the binary logit, b = z_1 and z = (1 - b, b).
        def binary_loss(b):
            return loss(torch.stack([1 - b, b], -1))

        delta = theta[1] - theta[0]
        g = per_sample_gradients("binary", delta, 1.0, "reinmax", n, binary_loss, samples=samples)[:, 0]
        grads = torch.stack([-g, g], -1)  # d/dθ0 = -d/dΔ, d/dθ1 = d/dΔ
        categories = samples[0].long()
    pi = torch.softmax(theta, -1)
    per_category = []
    for k in range(num_categories):
        rows = grads[categories == k]
        assert len(rows) > 0
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), rtol=0, atol=0)  # a function of D
        per_category.append(rows[0])
    expectation = (pi.unsqueeze(-1) * torch.stack(per_category)).sum(0)
    torch.testing.assert_close(expectation, exact, rtol=0, atol=1e-12)


# -- criterion 4: the discrete log-probability ---------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_categorical_log_prob_is_exact(estimator, dtype):
    logits = (3 * torch.randn(4, 6, dtype=dtype)).requires_grad_()
    d = ConcreteStraightThrough(0.2, logits=logits, estimator=estimator)
    z = d.rsample((50,))
    expected = torch.distributions.Categorical(logits=logits).log_prob(z.argmax(-1))
    copies = {
        "itself": z,
        "clone": z.clone(),
        "detach": z.detach(),
        "float64 and back": z.to(torch.float64).to(dtype),
        "view": z.view(50, 24).view(50, 4, 6),
        "slice": z[10:20],
    }
    own = d.log_prob(z)
    # log_softmax rounds differently from torch's logits - logsumexp (and is exact under a
    # large common offset, where the latter is not): equal to rounding, and every copy of the
    # sample scored bitwise alike.
    torch.testing.assert_close(own, expected)
    for name, value in copies.items():
        rows = slice(10, 20) if name == "slice" else slice(None)
        assert torch.equal(d.log_prob(value), own[rows]), name
    # The same through Pyro's wrappers.
    assert torch.equal(d.to_event(1).log_prob(z.clone()), own.sum(-1))
    assert torch.equal(d.mask(False).log_prob(z), torch.zeros_like(expected))
    d.log_prob(z).sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_log_prob_is_exact(estimator, dtype):
    logits = torch.tensor([-50.0, -3.0, 0.0, 0.4, 7.0, 50.0], dtype=dtype, requires_grad=True)
    d = BinaryConcreteStraightThrough(0.2, logits=logits, estimator=estimator)
    b = d.rsample((40,))
    b[0] = torch.tensor([1.0, 1, 1, 0, 0, 0])  # the improbable outcomes of the extreme logits
    b = b.detach().requires_grad_(b.requires_grad)
    # Float64 reference from the formula: log p = -log1p(exp(-θ)) for 1, -log1p(exp(θ)) for 0.
    theta = logits.detach().double().cpu().numpy()
    ref = np.where(b.detach().double().cpu().numpy() == 1, -np.logaddexp(0, -theta), -np.logaddexp(0, theta))
    result = d.log_prob(b)
    np.testing.assert_allclose(result.detach().double().cpu().numpy(), ref, rtol=2 * torch.finfo(dtype).eps)
    assert result[0, 0] == -50 and result[0, -1] == -50  # no clamping of probabilities
    torch.testing.assert_close(result, torch.distributions.Bernoulli(logits=logits).log_prob(b))
    for value in (b.clone(), b.detach(), b.to(torch.float64).to(dtype), b[5:9]):
        rows = slice(5, 9) if len(value) == 4 else slice(None)
        assert torch.equal(d.log_prob(value), result[rows])
    assert torch.equal(d.to_event(1).log_prob(b), result.sum(-1))
    result.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "value", [[0.5, 0.5, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, -0.0 + 1e-9], [2.0, -1.0, 0.0]]
)
def test_categorical_log_prob_rejects_non_one_hot(value):
    d = ConcreteStraightThrough(0.5, logits=torch.zeros(3))
    with pytest.raises(ValueError, match="value"):
        d.log_prob(torch.tensor(value))
    with pytest.raises(ValueError, match="value"):
        d.expand((2,)).log_prob(torch.tensor([value, [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("value", [0.5, -1.0, 2.0, 1e-9])
def test_binary_log_prob_rejects_non_binary(value):
    d = BinaryConcreteStraightThrough(0.5, logits=torch.zeros(2))
    with pytest.raises(ValueError, match="value"):
        d.log_prob(torch.tensor([1.0, value]))


@pytest.mark.parametrize("family", FAMILIES)
def test_enumerate_support(family):
    logits = torch.randn(2, 3, 4)
    d = make(family, 0.5, logits=logits if family == "categorical" else logits[..., 0])
    support = d.enumerate_support()
    k = 4 if family == "categorical" else 2
    assert support.shape == (k, *d.batch_shape, *d.event_shape)
    assert d.enumerate_support(expand=False).shape == (k,) + (1,) * len(d.batch_shape) + d.event_shape
    assert torch.all(d.support.check(support))
    # The log-probabilities of the support sum to one.
    torch.testing.assert_close(d.log_prob(support).logsumexp(0), torch.zeros(d.batch_shape))


@pytest.mark.parametrize("family", FAMILIES)
def test_pyro_enumeration_gives_the_exact_evidence(family):
    """z ~ this distribution (enumerated), x | z ~ Normal(mu_z, 1): TraceEnum_ELBO with an
    empty guide is exactly -log p(x)."""
    mu = torch.tensor([-2.0, 0.5, 3.0]) if family == "categorical" else torch.tensor([-1.0, 2.0])
    logits = torch.tensor([0.3, -1.0, 0.8]) if family == "categorical" else torch.tensor(0.6)
    x = torch.tensor(0.9)

    def model():
        z = pyro.sample("z", make(family, 0.5, logits=logits), infer={"enumerate": "parallel"})
        loc = (z * mu).sum(-1) if family == "categorical" else mu[0] + z * (mu[1] - mu[0])
        pyro.sample("x", pdist.Normal(loc, 1.0), obs=x)

    def guide():
        pass

    loss = TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide)
    log_prior = F.log_softmax(logits if family == "categorical" else torch.stack([0 * logits, logits]), -1)
    exact = -(log_prior + pdist.Normal(mu, 1.0).log_prob(x)).logsumexp(-1)
    assert loss == pytest.approx(exact.item(), abs=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_elbo_with_st_guide_is_an_honest_estimate(estimator):
    """With the discrete log_prob, Trace_ELBO's loss is an unbiased estimate of
    sum_z q(z) (log q(z) - log p(x, z)), computed exactly by enumeration (scoring the hard
    sample with a relaxed density instead, as Pyro's straight-through class does, is not)."""
    mu = torch.tensor([-2.0, 0.5, 3.0])
    prior_logits = torch.tensor([0.3, -1.0, 0.8])
    guide_logits = torch.tensor([1.0, 0.0, -0.5], requires_grad=True)
    x = torch.tensor(0.9)
    n = 4000

    def model():
        with pyro.plate("particles", n):
            z = pyro.sample("z", ConcreteStraightThrough(0.5, logits=prior_logits).expand([n]))
            pyro.sample("x", pdist.Normal((z * mu).sum(-1), 1.0), obs=x.expand(n))

    def guide():
        with pyro.plate("particles", n):
            pyro.sample(
                "z", ConcreteStraightThrough(0.5, logits=guide_logits, estimator=estimator).expand([n])
            )

    loss = Trace_ELBO().differentiable_loss(model, guide) / n
    loss.backward()
    assert torch.isfinite(guide_logits.grad).all()
    log_q = F.log_softmax(guide_logits.detach(), -1)
    per_z = log_q - F.log_softmax(prior_logits, -1) - pdist.Normal(mu, 1.0).log_prob(x)
    q = log_q.exp()
    mean = (q * per_z).sum()
    se = ((q * (per_z - mean) ** 2).sum() / n).sqrt()
    assert abs(loss.item() - mean.item()) < Z * se.item()


def test_moments_match_torch():
    logits = torch.randn(3, 5, dtype=torch.float64)
    d = ConcreteStraightThrough(0.5, logits=logits)
    ref = torch.distributions.OneHotCategorical(logits=logits)
    for name in ("mean", "variance", "mode"):
        torch.testing.assert_close(getattr(d, name), getattr(ref, name))
    torch.testing.assert_close(d.entropy(), ref.entropy())
    b = BinaryConcreteStraightThrough(0.5, logits=logits)
    ref = torch.distributions.Bernoulli(logits=logits)
    for name in ("mean", "variance", "mode"):
        torch.testing.assert_close(getattr(b, name), getattr(ref, name))
    torch.testing.assert_close(b.entropy(), ref.entropy())
    # probs give the same distribution as their logits.
    probs = torch.softmax(logits, -1)
    third = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(ConcreteStraightThrough(0.5, probs=probs).log_prob(third), probs[:, 2].log())
    torch.testing.assert_close(
        BinaryConcreteStraightThrough(0.5, probs=torch.sigmoid(logits)).log_prob(torch.ones(5)),
        F.logsigmoid(logits),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_has_no_grad_and_pickles(family):
    import pickle

    logits = torch.randn(2, 3, requires_grad=True)
    d = make(
        family,
        0.5,
        logits=logits if family == "categorical" else logits[:, 0],
        estimator="gumbel_rao",
        rao_samples=3,
    )
    assert not d.sample((4,)).requires_grad
    d2 = pickle.loads(pickle.dumps(d))
    assert type(d2) is type(d) and d2.estimator == "gumbel_rao" and d2.rao_samples == 3
    assert "gumbel_rao" in repr(d2)


# -- criterion 5: bad input --------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"estimator": "gumbel"}, "estimator"),
        ({"estimator": None}, "estimator"),
        ({"estimator": "ST"}, "estimator"),
        ({"rao_samples": 0}, "rao_samples"),
        ({"rao_samples": -3}, "rao_samples"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": torch.tensor([0.5, 0.0])}, "temperature"),
        ({"logits": "nan"}, "logits"),
        ({"probs": "bad"}, "probs"),
        ({"probs": "both"}, "logits.*probs"),
        ({"logits": None}, "logits.*probs"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(family, kwargs, name):
    shape = (2, 3) if family == "categorical" else (2,)
    args = {"temperature": 0.5, "logits": torch.zeros(shape)}
    args.update(kwargs)
    if args["logits"] == "nan":
        args["logits"] = torch.zeros(shape).index_fill_(-1, torch.tensor(0), math.nan)
    probs = args.pop("probs", None)
    if probs == "bad":
        args["logits"] = None
        args["probs"] = torch.full(shape, 0.6 if family == "categorical" else 1.2)
    elif probs == "both":
        args["probs"] = torch.full(shape, 0.5)
    with pytest.raises(ValueError, match=name):
        make(family, **args)


@pytest.mark.parametrize("estimator", ["", "rao", 1])
def test_kernels_reject_bad_input(estimator):
    logits = torch.zeros(2, 3)
    for kernel in (ops.straight_through_sample, ops.binary_straight_through_sample):
        with pytest.raises(ValueError, match="estimator"):
            kernel(logits, 0.5, estimator=estimator)
        with pytest.raises(ValueError, match="rao_samples"):
            kernel(logits, 0.5, estimator="gumbel_rao", rao_samples=0)
        with pytest.raises(ValueError, match="temperature"):
            kernel(logits, torch.tensor(-0.1))
        with pytest.raises(ValueError, match="logits"):
            kernel(torch.full((2, 3), float("nan")), 0.5)


@pytest.mark.parametrize("binary", [False, True])
def test_guide_side_enumeration_weights_values_like_the_discrete_distribution(binary):
    """Enumerated in a guide, an ST site has no sample path: TraceEnum_ELBO must weight its
    values by the guide probabilities exactly as for OneHotCategorical / Bernoulli."""
    from pyro.infer import TraceEnum_ELBO

    data = torch.tensor([-2.1, 0.3, 1.9, 2.2])
    locs = torch.tensor([-2.0, 0.0, 2.0])
    q = torch.randn(4, 3, requires_grad=True)

    def model():
        with pyro.plate("data", 4):
            if binary:
                b = pyro.sample("z", pdist.Bernoulli(logits=torch.zeros(())))
                mean = 2 * b - 1
            else:
                mean = pyro.sample("z", pdist.OneHotCategorical(logits=torch.zeros(3))) @ locs
            pyro.sample("obs", pdist.Normal(mean, 1.0), obs=data)

    def guide(make):
        def run():
            with pyro.plate("data", 4):
                logits = q[:, 0] if binary else q
                pyro.sample("z", make(logits), infer={"enumerate": "parallel"})

        return run

    if binary:
        ours = guide(lambda lg: BinaryConcreteStraightThrough(0.5, logits=lg))
        reference = guide(lambda lg: pdist.Bernoulli(logits=lg))
    else:
        ours = guide(lambda lg: ConcreteStraightThrough(0.5, logits=lg))
        reference = guide(lambda lg: pdist.OneHotCategorical(logits=lg))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss, expected = elbo.differentiable_loss(model, ours), elbo.differentiable_loss(model, reference)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, q)[0], torch.autograd.grad(expected, q)[0])


@pytest.mark.parametrize("rao_samples", [2.5, True, "3"])
def test_a_non_integer_rao_samples_is_a_type_error_naming_it(rao_samples):
    for make in (
        lambda: ConcreteStraightThrough(
            0.5, logits=torch.zeros(3), estimator="gumbel_rao", rao_samples=rao_samples
        ),
        lambda: ops.straight_through_sample(
            torch.zeros(3), 0.5, estimator="gumbel_rao", rao_samples=rao_samples
        ),
    ):
        with pytest.raises(TypeError, match="rao_samples"):
            make()
