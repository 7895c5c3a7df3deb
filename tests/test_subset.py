"""Subsets of k items (RelaxedSubset, SubsetStraightThrough) against theory.

- The exact set probability against an independent float64 reference, the sum over the k!
  orders of drawing without replacement; it sums to one over all C(K, k) subsets.
- k-hot samples follow the law of sampling without replacement (chi-square over every
  subset, K <= 6, fixed seed, p > 1e-3).
- The relaxed sample is a point of the k-hypersimplex, tends to the top-k of the same noise
  as the temperature falls, and its derivatives (first and second) match finite differences.
- The straight-through sample is exactly k-hot with the relaxed sample's gradient; the
  relaxed class refuses log_prob; shapes, validation, pickling and Pyro sites.
"""

import itertools
import math
import pickle

import pyro
import pytest
import torch
from pyro import poutine
from scipy import stats
from torch.autograd import gradcheck, gradgradcheck

from pyro_concrete import RelaxedSubset, SubsetStraightThrough
from pyro_concrete.constraints import KHypersimplex
from pyro_concrete.ops import draw_gumbel
from pyro_concrete.ops.subset import relaxed_top_k, subset_log_prob, top_k_hot

DEVICE = torch.get_default_device()  # the run's device: tests/devices.py


def reference_set_probability(logits, subset):
    """P(S) as the sum over the orders of drawing S's items without replacement."""
    w = torch.softmax(logits.double(), -1).tolist()
    total = 0.0
    for order in itertools.permutations(subset):
        p, remaining = 1.0, 1.0
        for i in order:
            p *= w[i] / remaining
            remaining -= w[i]
        total += p
    return total


def k_hot(subset, num_items, dtype=torch.float64):
    v = torch.zeros(num_items, dtype=dtype)
    v[list(subset)] = 1.0
    return v


@pytest.mark.parametrize("num_items, k", [(5, 1), (5, 2), (6, 3), (6, 5), (4, 4)])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_set_probability_against_the_sum_over_orders(num_items, k, scale):
    logits = scale * torch.randn(num_items, dtype=torch.float64)
    subsets = list(itertools.combinations(range(num_items), k))
    values = torch.stack([k_hot(s, num_items) for s in subsets])
    log_p = subset_log_prob(logits, values, k)
    reference = torch.tensor([reference_set_probability(logits, s) for s in subsets], dtype=torch.float64)
    torch.testing.assert_close(log_p.exp(), reference, rtol=1e-10, atol=0.0)
    assert math.isclose(log_p.exp().sum().item(), 1.0, rel_tol=1e-12)
    # the distribution's log_prob over its enumerated support: the same
    d = SubsetStraightThrough(0.5, logits=logits, k=k)
    assert math.isclose(d.log_prob(d.enumerate_support()).logsumexp(0).item(), 0.0, abs_tol=1e-12)


def test_set_probability_at_extreme_logits_and_masks():
    logits = torch.tensor([50.0, 0.0, -50.0, 1.0, 2.0], dtype=torch.float64)
    value = k_hot([2, 3], 5)
    expected = math.log(reference_set_probability(logits, [2, 3]))
    assert math.isclose(subset_log_prob(logits, value, 2).item(), expected, rel_tol=1e-12)
    assert math.isclose(subset_log_prob(logits.float(), value.float(), 2).item(), expected, rel_tol=1e-6)
    masked = torch.tensor([0.0, -torch.inf, 1.0, 0.5], dtype=torch.float64)
    assert subset_log_prob(masked, k_hot([0, 1], 4), 2).item() == -math.inf  # a masked item in S
    assert subset_log_prob(masked, k_hot([0, 2, 3], 4), 3).item() == 0.0  # every unmasked item
    reference = reference_set_probability(masked[[0, 2, 3]], [0, 1])  # the masked item is absent
    assert math.isclose(subset_log_prob(masked, k_hot([0, 2], 4), 2).exp().item(), reference, rel_tol=1e-12)
    # derivatives: finite, and against finite differences
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: subset_log_prob(t, value, 2), (theta,))
    assert gradgradcheck(lambda t: subset_log_prob(t, value, 2), (theta,))


@pytest.mark.parametrize("num_items, k", [(5, 2), (6, 3)])
def test_k_hot_samples_follow_sampling_without_replacement(num_items, k):
    torch.manual_seed(0)
    logits = torch.randn(num_items)
    d = SubsetStraightThrough(0.5, logits=logits, k=k)
    draws = d.sample((20_000,))
    assert d.support.check(draws).all()
    subsets = list(itertools.combinations(range(num_items), k))
    index = {s: i for i, s in enumerate(subsets)}
    counts = torch.zeros(len(subsets))
    for row in draws.nonzero()[:, 1].reshape(-1, k).tolist():
        counts[index[tuple(row)]] += 1
    expected = torch.tensor([reference_set_probability(logits, s) for s in subsets]) * len(draws)
    assert stats.chisquare(counts.cpu().numpy(), expected.cpu().numpy()).pvalue > 1e-3


def test_relaxed_sample_is_a_point_of_the_hypersimplex_and_tends_to_top_k():
    torch.manual_seed(1)
    theta = torch.randn(6, dtype=torch.float64)
    noise = draw_gumbel(torch.Size([500, 6]), torch.float64, DEVICE)
    hard = top_k_hot(theta + noise, 3)
    for tau in (1.0, 0.1, 0.01, 1e-4):
        y = relaxed_top_k(theta, torch.tensor(tau, dtype=torch.float64), noise, 3)
        assert ((y >= 0) & (y <= 1)).all()
        torch.testing.assert_close(y.sum(-1), torch.full((500,), 3.0, dtype=torch.float64))
    y = relaxed_top_k(theta, torch.tensor(1e-6, dtype=torch.float64), noise, 3)
    assert (y - hard).abs().max() < 1e-3
    # masked items are exact zeros; a row with only k unmasked items is exactly k-hot
    masked = torch.tensor([0.0, -torch.inf, 1.0, 2.0, -torch.inf, 0.5])
    y = relaxed_top_k(masked, torch.tensor(0.3), noise[:5].float(), 3)
    assert (y[:, [1, 4]] == 0).all() and torch.allclose(y.sum(-1), torch.full((5,), 3.0))
    y = relaxed_top_k(masked, torch.tensor(0.3), noise[:5].float(), 4)
    assert torch.equal(y, (masked > -torch.inf).float().expand(5, 6))


def test_relaxed_sample_derivatives_match_finite_differences():
    noise = draw_gumbel(torch.Size([3, 5]), torch.float64, DEVICE)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def sample(t, s):
        return relaxed_top_k(t, s, noise, 2)

    assert gradcheck(sample, (theta, tau))
    assert gradgradcheck(sample, (theta, tau))


def test_straight_through_sample_is_exact_with_the_relaxed_gradient():
    logits = torch.randn(4, 6, requires_grad=True)
    d = SubsetStraightThrough(0.5, logits=logits, k=2)
    torch.manual_seed(3)
    z = d.rsample()
    assert d.support.check(z).all() and set(z.unique().tolist()) == {0.0, 1.0}
    weights = torch.randn(6)
    (grad,) = torch.autograd.grad((z * weights).sum(), logits)
    torch.manual_seed(3)
    soft = RelaxedSubset(0.5, logits=logits, k=2).rsample()
    (expected,) = torch.autograd.grad((soft * weights).sum(), logits)
    torch.testing.assert_close(grad, expected)
    with torch.no_grad():
        torch.manual_seed(3)
        assert torch.equal(d.rsample(), z.detach())


def test_relaxed_subset_has_no_log_prob_but_works_as_a_pyro_site():
    logits = torch.randn(3, 5)
    d = RelaxedSubset(0.5, logits=logits, k=2)
    with pytest.raises(NotImplementedError, match=r"no tractable density.*SubsetStraightThrough"):
        d.log_prob(d.rsample())

    def model():
        with pyro.plate("rows", 3):
            return pyro.sample("y", RelaxedSubset(0.5, logits=logits, k=2))

    y = poutine.trace(model).get_trace().nodes["y"]["value"]
    assert y.shape == (3, 5) and d.support.check(y).all()
    expanded = d.expand((2, 3))
    assert expanded.k == 2 and expanded.rsample().shape == (2, 3, 5)
    assert pickle.loads(pickle.dumps(d)).k == 2
    assert repr(d).startswith("RelaxedSubset(") and "k: 2" in repr(d)
    # a batch-less instance inside a plate is expanded by it
    trace = poutine.trace(
        lambda: pyro.plate("p", 4)(lambda: pyro.sample("s", RelaxedSubset(0.5, logits=torch.zeros(5), k=3)))()
    ).get_trace()
    assert trace.nodes["s"]["value"].shape == (4, 5)


def test_validation():
    with pytest.raises(ValueError, match="k must be at most the number of items 3"):
        RelaxedSubset(0.5, logits=torch.zeros(3), k=4)
    with pytest.raises(ValueError, match="k"):
        SubsetStraightThrough(0.5, logits=torch.zeros(3), k=0)
    with pytest.raises(TypeError, match="k"):
        SubsetStraightThrough(0.5, logits=torch.zeros(3), k=1.5)
    with pytest.raises(ValueError, match="exceeds the number of items not masked"):
        SubsetStraightThrough(0.5, logits=torch.tensor([0.0, -torch.inf, 1.0]), k=3)
    with pytest.raises(ValueError, match="temperature"):
        SubsetStraightThrough(-1.0, logits=torch.zeros(3), k=1)
    d = SubsetStraightThrough(0.5, logits=torch.zeros(4), k=2)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor([1.0, 1.0, 1.0, 0.0]))  # three items, not two
    with pytest.raises(TypeError):
        RelaxedSubset(0.5, torch.zeros(3), None, 2)  # k is keyword-only


# -- the contracts of the relaxed sample (RelaxedSubset has no log_prob for test_contracts.py) ----


def test_relaxed_subset_sample_contracts():
    """Sample-path derivatives, torch.func, JIT, torch.compile, the meta device, masks, every
    dtype and huge logits, for the relaxed sample alone."""
    import torch.func

    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.4, 0.7, 1.3], dtype=torch.float64, requires_grad=True)

    def path(lg, t):
        torch.manual_seed(5)
        return RelaxedSubset(t, logits=lg, k=2, validate_args=False).rsample()

    assert gradcheck(path, (logits, tau), check_batched_grad=True)
    assert gradgradcheck(path, (logits, tau))
    # torch.func: jacrev of the sample path equals autograd's; vmap over logits
    jac = torch.func.jacrev(path)(logits.detach(), tau.detach())
    torch.manual_seed(5)
    y = path(logits, tau)
    (row,) = torch.autograd.grad(y[0, 0], logits)
    torch.testing.assert_close(jac[0, 0], row)
    batched = torch.func.vmap(
        lambda lg: relaxed_top_k(lg, torch.tensor(0.5, dtype=lg.dtype), torch.zeros_like(lg), 2)
    )(logits.detach())
    assert batched.shape == (3, 5)
    # JIT trace and torch.compile reproduce eager for the same noise
    noise = draw_gumbel(torch.Size([3, 5]), torch.float64, DEVICE)

    def kernel(lg, t):
        return relaxed_top_k(lg, t, noise, 2)

    traced = torch.jit.trace(kernel, (logits.detach(), tau.detach()), check_trace=False)
    torch.testing.assert_close(traced(logits.detach(), tau.detach()), kernel(logits.detach(), tau.detach()))
    compiled = torch.compile(kernel, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(logits.detach(), tau.detach()), kernel(logits.detach(), tau.detach()))
    # the meta device: shapes only
    meta = RelaxedSubset(torch.tensor(0.5, device="meta"), logits=torch.empty(4, 6, device="meta"), k=3)
    assert meta.rsample((2,)).shape == (2, 4, 6)
    # every dtype, masks (-inf and finfo.min) and huge logits: samples in the support, finite gradients
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for tau_value in (1.0, 1e-2, 1e-4):
            lg = (torch.randn(64, 5) * 30).to(dtype).requires_grad_()
            d = RelaxedSubset(tau_value, logits=lg, k=2)
            x = d.rsample()
            assert x.dtype == dtype and d.support.check(x).all()
            x.float().pow(2).sum().backward()
            assert torch.isfinite(lg.grad).all()
    for mask in (-torch.inf, torch.finfo(torch.float64).min):
        lg = torch.tensor(
            [[0.3, mask, -0.4, 1.0], [mask, 0.5, mask, -1.0]], dtype=torch.float64, requires_grad=True
        )
        t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        x = RelaxedSubset(t, logits=lg, k=2).rsample((100,))
        assert (x[:, 0, 1] == 0).all() and (x[:, 1, [0, 2]] == 0).all() and (x[:, 1, [1, 3]] == 1).all()
        (x * torch.randn(2, 4, dtype=torch.float64)).sum().backward()
        assert torch.isfinite(lg.grad).all() and torch.isfinite(t.grad).all()
        assert lg.grad[0, 1] == 0 and (lg.grad[1, [0, 2]] == 0).all()
    big = torch.finfo(torch.float32).max / 4
    lg = torch.tensor([[big, -big, 0.0, 1.0]], requires_grad=True)
    d = RelaxedSubset(1e-3, logits=lg, k=2)
    x = d.rsample((10,))
    assert d.support.check(x).all()
    x.sum().backward()
    assert torch.isfinite(lg.grad).all()


@pytest.mark.parametrize("num_items, k", [(64, 8), (64, 16), (64, 32), (64, 48), (200, 100)])
def test_set_probability_for_large_k_against_uniform_logits(num_items, k):
    """With equal logits every set has probability 1 / C(K, k): the quadrature's grid must
    follow the integrand's peak, which narrows as k grows."""
    logits = torch.full((num_items,), 0.7, dtype=torch.float64)
    value = k_hot(range(0, 2 * k, 2) if 2 * k <= num_items else range(k), num_items)
    expected = -math.log(math.comb(num_items, k))
    assert math.isclose(subset_log_prob(logits, value, k).item(), expected, rel_tol=1e-12)


def test_float32_log_prob_gradient_is_the_float64_one():
    torch.manual_seed(4)
    for scale in (1.0, 1e2, 1e3):
        logits = scale * torch.randn(8, dtype=torch.float64)
        value = k_hot([1, 4, 6], 8)
        grads = []
        for dtype in (torch.float32, torch.float64):
            lg = logits.to(dtype).requires_grad_()
            (grad,) = torch.autograd.grad(subset_log_prob(lg, value.to(dtype), 3), lg)
            grads.append(grad.double())
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_float32_relaxed_samples_are_in_the_support_over_many_seeds():
    """Sum k to rounding in float32, at every temperature, whatever the scale of the logits."""
    for seed in range(20):
        torch.manual_seed(seed)
        for k in (1, 3):
            for scale in (1.0, 1e4):
                for tau in (1e-2, 1e-4):
                    logits = scale * torch.randn(500, 10)
                    y = relaxed_top_k(
                        logits,
                        torch.tensor(tau),
                        draw_gumbel(torch.Size([500, 10]), torch.float32, DEVICE),
                        k,
                    )
                    assert KHypersimplex(k).check(y).all()
