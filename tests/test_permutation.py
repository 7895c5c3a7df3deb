"""The permutation family: Sinkhorn kernels, GumbelSinkhorn and its straight-through class
(issue 12, item 2).

Thresholds decided before running: goodness-of-fit tests pass at p > 1e-3; a converged
Sinkhorn iteration (float64) is doubly stochastic within 1e-5; at τ = 0.01 the relaxation is
within 1e-3 of the hard assignment of the same perturbed scores, for matrices whose best
assignment beats the second best by at least 0.2 (no near-ties: the entropic limit differs
from the assignment by about ``exp(-gap / τ)``).
"""

import itertools
import pickle

import pyro
import pytest
import torch
from pyro import poutine
from scipy import stats

from pyro_concrete.constraints import column_stochastic, doubly_stochastic, permutation_matrix
from pyro_concrete.distributions.permutation import GumbelSinkhorn, GumbelSinkhornStraightThrough
from pyro_concrete.ops import draw_gumbel
from pyro_concrete.ops.sinkhorn import gumbel_sinkhorn_log_sample, hard_assignment, log_sinkhorn

DEVICE = torch.get_default_device()  # the run's device: tests/devices.py
P_THRESHOLD = 1e-3
CLASSES = (GumbelSinkhorn, GumbelSinkhornStraightThrough)


def all_permutations(n):
    """``(n!, n)``: row ``k`` lists the column assigned to each row by permutation ``k``."""
    return torch.tensor(list(itertools.permutations(range(n))))


def brute_force_values(matrices):
    """``(..., n!)``: ``Σ_i matrices[..., i, perm[i]]`` for every permutation, by enumeration."""
    n = matrices.shape[-1]
    return matrices[..., torch.arange(n), all_permutations(n)].sum(-1)


def permutation_index(p):
    """The index in :func:`all_permutations` of each permutation matrix of ``p`` (..., n, n)."""
    n = p.shape[-1]
    columns = p.argmax(-1)  # the column of the 1 in each row
    lookup = {tuple(perm.tolist()): k for k, perm in enumerate(all_permutations(n))}
    return torch.tensor([lookup[tuple(row)] for row in columns.reshape(-1, n).tolist()])


def assert_permutation_matrices(x):
    """Entries bitwise +0.0 or 1.0, one 1.0 in each row and column."""
    int_dtype = {torch.float32: torch.int32, torch.float64: torch.int64}[x.dtype]
    bits, one = x.detach().view(int_dtype), torch.ones(1, dtype=x.dtype).view(int_dtype)
    assert torch.all((bits == 0) | (bits == one))
    assert torch.all((bits == one).sum(-1) == 1) and torch.all((bits == one).sum(-2) == 1)


# -- the kernels ----------------------------------------------------------------------


def test_log_sinkhorn_is_doubly_stochastic():
    log_alpha = 2 * torch.randn(20, 5, 5, dtype=torch.float64)
    p = log_sinkhorn(log_alpha, num_iters=1000).exp()
    assert torch.all((p >= 0) & (p <= 1))
    assert (p.sum(-1) - 1).abs().max() < 1e-5
    assert (p.sum(-2) - 1).abs().max() < 1e-5
    # The last step normalises the columns: exact to rounding after any number of iterations.
    few = log_sinkhorn(log_alpha, num_iters=2).exp()
    assert (few.sum(-2) - 1).abs().max() < 1e-12
    # Row and column scaling leave the limit unchanged (Sinkhorn's theorem).
    shifted = (
        log_alpha + torch.randn(20, 5, 1, dtype=torch.float64) + torch.randn(20, 1, 5, dtype=torch.float64)
    )
    torch.testing.assert_close(log_sinkhorn(shifted, num_iters=1000).exp(), p, rtol=0, atol=1e-8)


def test_relaxation_converges_to_the_hard_assignment():
    scores = torch.randn(32, 4, 4, dtype=torch.float64)
    gumbel = draw_gumbel(scores.shape, torch.float64, DEVICE)
    top = brute_force_values(scores + gumbel).topk(2, -1).values
    keep = top[:, 0] - top[:, 1] >= 0.2  # no near-ties (see the module docstring)
    assert keep.sum() >= 20
    scores, gumbel = scores[keep], gumbel[keep]
    hard = hard_assignment(scores + gumbel)
    errors = [
        (gumbel_sinkhorn_log_sample(scores, tau, gumbel, num_iters).exp() - hard).abs().max()
        for tau, num_iters in [(1.0, 100), (0.1, 1000), (0.01, 5000)]
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_hard_assignment_is_the_best_permutation():
    scores = torch.randn(2, 25, 5, 5)
    p = hard_assignment(scores)
    assert p.shape == scores.shape and p.dtype == scores.dtype and not p.requires_grad
    assert_permutation_matrices(p)
    best = brute_force_values(scores.double()).argmax(-1)
    assert torch.equal(permutation_index(p), best.reshape(-1))
    assert torch.equal(
        hard_assignment(torch.tensor([[1.0, 3.0], [0.0, 1.0]])), torch.tensor([[0.0, 1], [1, 0]])
    )
    assert hard_assignment(torch.zeros(0, 3, 3)).shape == (0, 3, 3)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: hard_assignment(torch.randn(3, 4)), ValueError, "scores"),
        (lambda: hard_assignment(torch.tensor([[0.0, float("nan")], [0.0, 0.0]])), ValueError, "scores"),
        (lambda: log_sinkhorn(torch.randn(3), 5), ValueError, "log_alpha"),
        (lambda: log_sinkhorn(torch.randn(3, 3), 0), ValueError, "num_iters"),
        (lambda: log_sinkhorn(torch.randn(3, 3), 2.0), TypeError, "num_iters"),
        (
            lambda: gumbel_sinkhorn_log_sample(torch.randn(3, 3), 1.0, torch.randn(3, 2), 5),
            ValueError,
            "gumbel",
        ),
    ],
)
def test_kernel_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_kernel_gradients_against_finite_differences():
    log_alpha = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: log_sinkhorn(a, 5), (log_alpha,))
    assert torch.autograd.gradgradcheck(lambda a: log_sinkhorn(a, 5), (log_alpha,))
    scores = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    gumbel = draw_gumbel(torch.Size([2, 3, 3]), torch.float64, DEVICE)

    def sample(s, t):
        return gumbel_sinkhorn_log_sample(s, t, gumbel, 5)

    assert torch.autograd.gradcheck(sample, (scores, tau))
    assert torch.autograd.gradgradcheck(sample, (scores, tau))


def test_kernels_under_torch_func_and_jit():
    scores = torch.randn(3, 3, dtype=torch.float64)
    gumbel = draw_gumbel(torch.Size([4, 3, 3]), torch.float64, DEVICE)
    batched = gumbel_sinkhorn_log_sample(scores, 0.5, gumbel, 10)
    mapped = torch.func.vmap(lambda g: gumbel_sinkhorn_log_sample(scores, 0.5, g, 10))(gumbel)
    torch.testing.assert_close(mapped, batched)
    jac = torch.func.jacrev(lambda s: gumbel_sinkhorn_log_sample(s, 0.5, gumbel[0], 10))(scores)
    ref = torch.autograd.functional.jacobian(
        lambda s: gumbel_sinkhorn_log_sample(s, 0.5, gumbel[0], 10), scores
    )
    torch.testing.assert_close(jac, ref)
    traced = torch.jit.trace(lambda a: log_sinkhorn(a, 3), (scores,))
    torch.testing.assert_close(traced(2 * scores), log_sinkhorn(2 * scores, 3))


def test_float32_and_large_scores_stay_accurate():
    scores = 1e4 + torch.randn(3, 3)  # a common offset the row shift removes
    gumbel = draw_gumbel(torch.Size([3, 3]), torch.float32, DEVICE)
    y32 = gumbel_sinkhorn_log_sample(scores, 0.5, gumbel, 20)
    y64 = gumbel_sinkhorn_log_sample(scores.double(), 0.5, gumbel.double(), 20)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double().exp(), y64.exp(), rtol=0, atol=1e-5)


# -- the law of the hard permutations ------------------------------------------------


@pytest.mark.parametrize("n", [3, 4])
def test_hard_permutations_follow_the_perturbed_assignment(n):
    """Frequencies of the n! permutations: the class against an independent simulation
    (Gumbel noise by inversion, the best of all permutations by enumeration)."""
    num_draws = 20_000
    scores = torch.randn(n, n, dtype=torch.float64)
    p = GumbelSinkhornStraightThrough(1.0, scores).sample((num_draws,))
    ours = torch.bincount(permutation_index(p), minlength=len(all_permutations(n)))
    u = torch.rand(num_draws, n, n, dtype=torch.float64)
    reference = brute_force_values(scores - torch.log(-torch.log(u))).argmax(-1)
    theirs = torch.bincount(reference, minlength=len(all_permutations(n)))
    observed = torch.stack([ours, theirs]).cpu().numpy()
    observed = observed[:, observed.sum(0) > 0]
    _, p_value, _, expected = stats.chi2_contingency(observed)
    assert expected.min() >= 5  # every permutation frequent enough for the chi-square approximation
    assert p_value > P_THRESHOLD


# -- the straight-through sample ------------------------------------------------------


def test_straight_through_value_is_the_assignment_and_gradient_the_relaxation():
    scores = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 4, dtype=torch.float64)

    torch.manual_seed(1)
    hard = GumbelSinkhornStraightThrough(tau, scores, num_iters=10).rsample((7,))
    assert hard.requires_grad and hard.shape == (7, 2, 4, 4)
    assert_permutation_matrices(hard)
    (hard * weights).sum().backward()
    hard_grads = scores.grad.clone(), tau.grad.clone()
    scores.grad = tau.grad = None

    torch.manual_seed(1)
    soft = GumbelSinkhorn(tau, scores, num_iters=10).rsample((7,))
    (soft * weights).sum().backward()
    assert torch.equal(hard_grads[0], scores.grad) and torch.equal(hard_grads[1], tau.grad)

    torch.manual_seed(1)
    noise = draw_gumbel(torch.Size([7, 2, 4, 4]), torch.float64, DEVICE)
    assert torch.equal(hard.detach(), hard_assignment(scores.detach() + noise))

    torch.manual_seed(1)
    sampled = GumbelSinkhornStraightThrough(tau, scores, num_iters=10).sample((7,))
    assert not sampled.requires_grad and torch.equal(sampled, hard.detach())


# -- shapes, expand, validation, pickling, support, Pyro -------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_shapes_and_expand(cls):
    d = cls(torch.full((2, 1), 0.5), torch.randn(3, 4, 4), num_iters=7)
    assert d.batch_shape == (2, 3) and d.event_shape == (4, 4)
    assert d.scores.shape == (2, 3, 4, 4) and d.temperature.shape == (2, 3)
    assert d.rsample().shape == (2, 3, 4, 4)
    assert d.rsample((5,)).shape == (5, 2, 3, 4, 4)
    assert d.sample((5, 1)).shape == (5, 1, 2, 3, 4, 4)
    e = d.expand((6, 2, 3))
    assert type(e) is cls and e.num_iters == 7
    assert e.batch_shape == (6, 2, 3) and e.event_shape == (4, 4)
    assert e.rsample((2,)).shape == (2, 6, 2, 3, 4, 4)
    assert cls.infer_shapes(temperature=(2, 1), scores=(3, 4, 4)) == ((2, 3), (4, 4))
    scalar = cls(1.0, torch.randn(3, 3))
    assert scalar.batch_shape == () and scalar.sample().shape == (3, 3)
    assert repr(d) == (
        f"{cls.__name__}(temperature: 0.5, scores: Tensor(2, 3, 4, 4), num_iters: 7, "
        "batch_shape: (2, 3), event_shape: (4, 4))"
    )


BAD_ARGUMENTS = [
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=torch.tensor([0.5, -0.1])), ValueError, "temperature"),
    (dict(temperature=torch.ones(4)), ValueError, "temperature"),  # does not broadcast with (2,)
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(scores=torch.randn(3)), ValueError, "scores"),
    (dict(scores=torch.randn(3, 4)), ValueError, "scores"),
    (dict(scores=torch.randn(1, 1)), ValueError, "scores.*n >= 2"),
    (dict(scores=torch.tensor([[0.0, float("nan")], [0.0, 0.0]])), ValueError, "scores"),
    (dict(scores=torch.tensor([[0.0, float("inf")], [0.0, 0.0]])), ValueError, "scores"),
    (dict(scores=torch.tensor([[0.0, -float("inf")], [0.0, 0.0]])), ValueError, "scores"),
    (dict(scores=[[0.0, 1.0], [1.0, 0.0]]), TypeError, "scores"),
    (dict(num_iters=0), ValueError, "num_iters"),
    (dict(num_iters=2.5), TypeError, "num_iters"),
    (dict(num_iters=True), TypeError, "num_iters"),
]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kwargs, error, match", BAD_ARGUMENTS)
def test_validation_errors(cls, kwargs, error, match):
    arguments = dict(temperature=0.5, scores=torch.randn(2, 3, 3), num_iters=5) | kwargs
    with pytest.raises(error, match=match):
        cls(**arguments)


@pytest.mark.parametrize("cls", CLASSES)
def test_value_checks_follow_validate_args(cls):
    nan_scores = torch.tensor([[0.0, float("nan")], [0.0, 0.0]])
    cls(0.5, nan_scores, validate_args=False)  # values unchecked, as in torch
    cls(-1.0, torch.randn(2, 2), validate_args=False)
    with pytest.raises(ValueError, match="scores"):
        cls(0.5, torch.randn(2, 3), validate_args=False)  # shapes are always checked


@pytest.mark.parametrize("cls", CLASSES)
def test_pickle_round_trip(cls):
    d = cls(torch.tensor([0.5, 2.0]), torch.randn(2, 3, 3), num_iters=7).expand((4, 2))
    copy = pickle.loads(pickle.dumps(d))
    assert type(copy) is cls and copy.num_iters == 7
    assert copy.batch_shape == d.batch_shape and copy.event_shape == d.event_shape
    assert torch.equal(copy.scores, d.scores) and torch.equal(copy.temperature, d.temperature)
    torch.manual_seed(3)
    expected = d.sample((2,))
    torch.manual_seed(3)
    assert torch.equal(copy.sample((2,)), expected)


def test_supports():
    scores = torch.randn(5, 4, 4)
    converged = GumbelSinkhorn(1.0, scores.double(), num_iters=1000).rsample((50,))
    assert GumbelSinkhorn.support is column_stochastic and doubly_stochastic.check(converged).all()
    assert GumbelSinkhorn.support.event_dim == 2 and not GumbelSinkhorn.support.is_discrete
    default = GumbelSinkhorn(0.1, scores).rsample((50,))  # 20 iterations: columns exact only
    assert ((default.sum(-2) - 1).abs() < 1e-5).all() and ((default >= 0) & (default <= 1)).all()
    assert column_stochastic.check(default).all()  # every sample is in the support
    assert not column_stochastic.check(torch.tensor([[0.5, 0.5], [0.4, 0.5]]))  # a column sums to 0.9
    hard = GumbelSinkhornStraightThrough(0.1, scores).rsample((50,))
    assert GumbelSinkhornStraightThrough.support.check(hard).all()
    assert permutation_matrix.is_discrete and permutation_matrix.event_dim == 2
    half = torch.full((3, 3), 1 / 3)
    twice = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    nan = torch.eye(3).masked_fill(torch.eye(3, dtype=torch.bool), float("nan"))
    negative = torch.tensor([[1.5, -0.5], [-0.5, 1.5]])
    assert doubly_stochastic.check(torch.stack([half, torch.eye(3), twice, nan])).tolist() == [
        True,
        True,
        False,
        False,
    ]
    assert not doubly_stochastic.check(negative)
    assert permutation_matrix.check(torch.stack([half, torch.eye(3), twice, nan])).tolist() == [
        False,
        True,
        False,
        False,
    ]


@pytest.mark.parametrize("cls", CLASSES)
def test_log_prob_raises_with_a_clear_message(cls):
    d = cls(0.5, torch.randn(3, 3))
    match = "no tractable density" if cls is GumbelSinkhorn else "no known closed form"
    with pytest.raises(NotImplementedError, match=match):
        d.log_prob(d.sample())


@pytest.mark.parametrize("cls", CLASSES)
def test_pyro_sample_site_in_a_plate(cls):
    scores = torch.randn(4, 4, requires_grad=True)

    def model():
        with pyro.plate("items", 3):
            return pyro.sample("perm", cls(0.5, scores))

    trace = poutine.trace(model).get_trace()
    site = trace.nodes["perm"]
    assert site["value"].shape == (3, 4, 4) and site["fn"].batch_shape == (3,)
    assert site["value"].requires_grad  # a reparameterised sample
    if cls is GumbelSinkhornStraightThrough:
        assert cls.support.check(site["value"]).all()
    else:
        assert ((site["value"].sum(-2) - 1).abs() < 1e-5).all()
    site["value"].sum().backward()
    assert torch.isfinite(scores.grad).all()
    with pytest.raises(NotImplementedError):
        trace.compute_log_prob()


@pytest.mark.parametrize("cls", CLASSES)
def test_contracts_of_the_samples(cls):
    """torch.compile, the meta device and every floating dtype (the classes have no log_prob, so
    tests/test_contracts.py, which checks log_prob, does not run over them)."""
    gumbel = draw_gumbel(torch.Size([4, 4]), torch.float32, DEVICE)

    def kernel(scores, temperature):
        return gumbel_sinkhorn_log_sample(scores, temperature, gumbel, 10)

    compiled = torch.compile(kernel, backend="aot_eager", fullgraph=True)
    scores = torch.randn(4, 4)
    torch.testing.assert_close(compiled(scores, torch.tensor(0.5)), kernel(scores, torch.tensor(0.5)))
    meta = cls(torch.tensor(0.5, device="meta"), torch.empty(2, 4, 4, device="meta"))
    assert meta.rsample((3,)).shape == (3, 2, 4, 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        scores = (3 * torch.randn(8, 4, 4)).to(dtype).requires_grad_()
        x = cls(0.3, scores).rsample()
        assert x.dtype == dtype and cls.support.check(x).all()
        (x.float() * torch.randn(4, 4)).sum().backward()
        assert torch.isfinite(scores.grad).all()
