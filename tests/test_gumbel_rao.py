"""The Gumbel-Rao kernel (``pyro_concrete.ops.gumbel_rao``): its noise, its closed-form
conditional draws, and its hand-written backward pass against the plain composition.

Thresholds decided before running: goodness-of-fit tests pass at p > 1e-3; Monte-Carlo
means agree within 4 standard errors (with a Bonferroni correction where several are
compared at once).
"""

import math
import warnings

import pytest
import torch
from scipy import stats

import pyro_concrete.ops.gumbel_rao as gr
from pyro_concrete import ConcreteStraightThrough, ops
from pyro_concrete.ops.concrete import shifted_logits

F64 = torch.float64
P_THRESHOLD = 1e-3
DEVICE = torch.get_default_device()  # the run's device: tests/devices.py


# -- the noise --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_numbers_lie_on_the_midpoint_grid_and_their_logs_are_exponential(dtype):
    bits = {torch.float32: 23, torch.float64: 52}[dtype]
    u = gr.draw_uniform_midpoints(torch.Size([3, 100_001]), dtype, DEVICE)  # an odd count of numbers
    assert u.shape == (3, 100_001) and u.dtype == dtype
    m = u.double() * 2.0**bits - 0.5 if dtype == torch.float32 else u * 2.0**bits - 0.5
    assert torch.equal(m, m.round()) and m.min() >= 0 and m.max() <= 2**bits - 1
    log_u = gr.draw_log_uniform(torch.Size([200_000]), dtype, DEVICE)
    assert torch.isfinite(log_u).all() and (log_u < 0).all()
    assert stats.kstest(-log_u.double().cpu().numpy(), "expon").pvalue > P_THRESHOLD


def test_uniform_numbers_use_every_low_bit_of_both_halves_of_a_word():
    """Each 32-bit half of a 64-bit draw gives one float32 number: the lowest 8 bits of the
    mantissas at even positions (low halves) and odd positions (high halves) are uniform."""
    u = gr.draw_uniform_midpoints(torch.Size([400_000]), torch.float32, DEVICE)
    low_bits = ((u.double() * 2**23 - 0.5).long() % 256).view(-1, 2)
    for half in (low_bits[:, 0], low_bits[:, 1]):
        counts = torch.bincount(half, minlength=256).cpu().numpy()
        assert stats.chisquare(counts).pvalue > P_THRESHOLD


def test_uniform_numbers_are_the_same_under_trace_and_under_a_transform_they_differ_per_entry():
    def draw(x):
        return x + gr.draw_uniform_midpoints(torch.Size([7]), torch.float32, DEVICE)

    torch.manual_seed(3)
    eager = draw(torch.zeros(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.manual_seed(3)
        traced = torch.jit.trace(draw, (torch.zeros(7),), check_trace=False)
    torch.manual_seed(3)
    assert torch.equal(traced(torch.zeros(7)), eager)
    rows = torch.func.vmap(draw, randomness="different")(torch.zeros(2, 7))
    assert not torch.equal(rows[0], rows[1])


def test_log_uniform_is_reproducible_and_different_per_vmap_entry():
    torch.manual_seed(3)
    a = gr.draw_log_uniform(torch.Size([5]), torch.float32, DEVICE)
    torch.manual_seed(3)
    assert torch.equal(a, gr.draw_log_uniform(torch.Size([5]), torch.float32, DEVICE))
    rows = torch.func.vmap(
        lambda x: x + gr.draw_log_uniform(torch.Size([5]), torch.float32, DEVICE), randomness="different"
    )(torch.zeros(2, 5))
    assert not torch.equal(rows[0], rows[1])


# -- the draws given D ------------------------------------------------------------------


def _logits():
    return torch.tensor(
        [
            [0.3, -math.inf, -0.4, 1.0, 2.0],
            [0.2, 0.5, torch.finfo(F64).min, -1.0, 0.0],
            [1e8, 1e8, 1e8 - 1, 0, -3],
        ],
        dtype=F64,
    )


def test_closed_form_is_the_truncated_gumbel_construction(monkeypatch):
    """q = x_D - x for the first draw's θ + G and for conditional_gumbel's draws from the same
    Exponential variables (E = -log u, G = -log E)."""
    theta, masked = shifted_logits(_logits())
    draws = 6
    log_u = gr.draw_log_uniform(torch.Size([3, draws, 5]), F64, DEVICE)
    given = iter([log_u[:, :1].clone(), log_u[:, 1:].clone()])  # the first draw's, the others'
    monkeypatch.setattr(gr, "draw_log_uniform", lambda *args: next(given))
    first, rest, index = gr._negated_log_ratios(theta, draws)
    q = torch.cat([first, rest], 1)
    gumbel = -torch.log(-log_u)
    expected_index = (theta + gumbel[:, 0]).argmax(-1, keepdim=True)
    assert torch.equal(index, expected_index)
    conditional = ops.conditional_gumbel(theta.unsqueeze(1), index.unsqueeze(1), gumbel[:, 1:])
    x = torch.cat([(theta + gumbel[:, 0]).unsqueeze(1), theta.unsqueeze(1) + conditional], 1)
    at_d = index.unsqueeze(1).expand(3, draws, 1)
    expected = x.gather(-1, at_d) - x
    unmasked = ~masked.unsqueeze(1).expand_as(q)
    torch.testing.assert_close(q[unmasked], expected[unmasked], rtol=1e-12, atol=1e-12)
    assert (q[~unmasked] > 1e300).all()  # a masked category's soft value is exactly 0
    assert (q.gather(-1, at_d) == 0).all()
    # The eager kernel's soft samples, e / n, from the same draws: softmax(-q / τ).
    given = iter([log_u[:, :1].clone(), log_u[:, 1:].clone()])
    tau = torch.tensor([0.3, 1.0, 2.5], dtype=F64).view(3, 1, 1)
    (e_first, n_first, e_rest, n_rest), eager_index = gr._unnormalised_soft_samples(theta, tau, draws, None)
    assert torch.equal(eager_index, index)
    soft = torch.cat([e_first / n_first, e_rest / n_rest], 1)
    torch.testing.assert_close(soft, torch.softmax(-q / tau, -1), rtol=1e-12, atol=1e-15)


def test_per_category_mean_gradients_are_the_st_conditional_means():
    """Given D, the Gumbel-Rao gradient is E[ST gradient | D]: grouped by the sampled
    category, the two estimators' mean gradients agree (ST's rows are draws of the
    unconditional noise, the groups its argmax), and the categories' frequencies are the
    categorical probabilities."""
    num_categories, n, tau = 4, 20_000, 0.6
    theta = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=F64)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)

    def per_row(estimator):
        logits = theta.expand(n, num_categories).clone().requires_grad_()
        z = ConcreteStraightThrough(tau, logits=logits, estimator=estimator, rao_samples=10).rsample()
        (grad,) = torch.autograd.grad((z * weights).sum(), logits)
        return z.argmax(-1), grad

    (d_st, g_st), (d_gr, g_gr) = per_row("st"), per_row("gumbel_rao")
    counts = torch.bincount(d_gr, minlength=num_categories).cpu().numpy()
    expected = torch.softmax(theta, -1).cpu().numpy() * n
    assert stats.chisquare(counts, expected).pvalue > P_THRESHOLD
    z_limit = stats.norm.isf(P_THRESHOLD / (2 * num_categories**2))
    for d in range(num_categories):
        a, b = g_st[d_st == d], g_gr[d_gr == d]
        se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
        assert ((a.mean(0) - b.mean(0)).abs() < z_limit * se).all(), d


# -- the backward pass ------------------------------------------------------------------


def _surrogate(theta, tau, draws, seed):
    torch.manual_seed(seed)
    return gr.gumbel_rao_soft_mean(theta, tau, draws)


@pytest.mark.parametrize("blocks", ["one", "several"])
def test_hand_written_backward_is_the_compositions_to_second_order(monkeypatch, blocks):
    if blocks == "several":
        monkeypatch.setattr(gr, "BLOCK_ELEMENTS", 40)  # 2 rows of 4 draws x 5 categories
    base, _ = shifted_logits(_logits())
    weights = torch.randn(3, 5, dtype=F64)

    def derivatives(eager):
        monkeypatch.setattr(gr, "_eager", lambda *tensors: eager)
        theta = base.clone().requires_grad_()
        tau = torch.tensor([[0.4], [1.3], [0.7]], dtype=F64, requires_grad=True)
        index, mean = _surrogate(theta, tau, 4, seed=11)
        g_theta, g_tau = torch.autograd.grad((mean * weights).sum(), (theta, tau), create_graph=True)
        h_theta, h_tau = torch.autograd.grad(g_theta.square().sum() + g_tau.sin().sum(), (theta, tau))
        return index, mean, g_theta, g_tau, h_theta, h_tau

    fused, composed = derivatives(True), derivatives(False)
    assert type(fused[1].grad_fn).__name__ == "_SoftMeanBackward"
    assert type(composed[1].grad_fn).__name__ != "_SoftMeanBackward"
    for a, b in zip(fused, composed, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
    masked = torch.isinf(_logits()) | (_logits() < -1e300)
    assert (fused[1][masked] == 0).all() and (fused[2][masked] == 0).all()


def test_first_derivatives_skip_what_is_not_asked_for():
    theta = torch.randn(6, 7, dtype=F64, requires_grad=True)
    tau = torch.full((6, 1), 0.5, dtype=F64)
    _, mean = gr.gumbel_rao_soft_mean(theta, tau, 3)
    (g,) = torch.autograd.grad(mean[:, 0].sum(), theta)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.sum(-1), torch.zeros(6, dtype=F64))  # a softmax's rows


# -- found in review ---------------------------------------------------------------------


@pytest.mark.parametrize("eager", [True, False])
def test_a_masked_half_precision_category_stays_exactly_zero_at_a_large_temperature(monkeypatch, eager):
    """float16's mask fill (-49120), read in float32, would not underflow at τ = 1e4."""
    monkeypatch.setattr(gr, "_eager", lambda *tensors: eager)
    logits = torch.tensor([[0.0, -math.inf, 1.0, -2.0]] * 50, dtype=torch.float16, requires_grad=True)
    z = ops.straight_through_sample(logits, 1e4, estimator="gumbel_rao", rao_samples=4)
    assert (z[:, 1] == 0).all()
    (grad,) = torch.autograd.grad((z * torch.arange(4.0, dtype=torch.float16)).sum(), logits)
    assert torch.isfinite(grad).all() and (grad[:, 1] == 0).all()
    theta, masked = shifted_logits(logits.detach().float())
    torch.manual_seed(0)
    _, mean = gr.gumbel_rao_soft_mean(theta, torch.full((50, 1), 1e4), 4, masked)
    assert (mean[:, 1] == 0).all()
    torch.testing.assert_close(mean.sum(-1), torch.ones(50))


@pytest.mark.parametrize("estimator", ops.ESTIMATORS)
@pytest.mark.parametrize("binary", [False, True])
def test_forward_mode_derivatives_are_the_reverse_mode_ones(estimator, binary):
    """torch.autograd.forward_ad: a tangent on the logits alone builds the surrogate, and
    Gumbel-Rao's hand-written backward (no forward mode) gives way to the composition."""
    logits = torch.randn(5, 6, dtype=F64)
    tangent = torch.randn(5, 6, dtype=F64)
    weights = torch.randn(5, 6, dtype=F64)
    sampler = ops.binary_straight_through_sample if binary else ops.straight_through_sample

    def sample(lg):
        torch.manual_seed(4)
        return sampler(lg, 0.7, estimator=estimator, rao_samples=3)

    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(logits, tangent)
        forward = torch.autograd.forward_ad.unpack_dual((sample(dual) * weights).sum()).tangent
    leaf = logits.clone().requires_grad_()
    (reverse,) = torch.autograd.grad((sample(leaf) * weights).sum(), leaf)
    torch.testing.assert_close(forward, (reverse * tangent).sum())


def test_gradients_inside_vmap_are_the_per_entry_gradients():
    """grad of a vmapped rsample: each entry's gradient is the estimator's, not 0."""
    logits = torch.randn(3, 6, dtype=F64)
    weights = torch.randn(6, dtype=F64)

    def loss(lg):
        return (ops.straight_through_sample(lg, 0.7, estimator="gumbel_rao", rao_samples=3) * weights).sum()

    grads = torch.func.grad(lambda lg: torch.func.vmap(loss, randomness="different")(lg).sum())(logits)
    assert torch.isfinite(grads).all() and (grads.abs().sum(-1) > 0).all()
    torch.testing.assert_close(grads.sum(-1), torch.zeros(3, dtype=F64))  # a softmax's rows


def test_uniform_numbers_differ_per_vmap_entry_under_torch_compile():
    torch._dynamo.reset()
    draw = torch.compile(
        torch.func.vmap(
            lambda x: x + gr.draw_log_uniform(torch.Size([5]), torch.float32, DEVICE), randomness="different"
        ),
        backend="aot_eager",
    )
    rows = draw(torch.zeros(4, 5))
    torch._dynamo.reset()
    assert len({tuple(r.tolist()) for r in rows}) == 4
