"""Conformance of every distribution class with torch/Pyro's distribution contract (issue 4, criterion 4).

Written once, in the spirit of Pyro's tests/distributions/test_distributions.py, and
parametrised over ``CASES``: one entry per distribution class (and per estimator of the
straight-through classes). Shapes, ``expand``/``expand_by``, ``to_event``, ``mask``,
``poutine.scale``, ``log_prob`` broadcasting, validation, pickling, support of samples,
``pyro.plate`` with subsampling, and ``pyro.sample`` in a model and guide under SVI.
"""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import TorchDistribution
from pyro.infer import SVI, Trace_ELBO

import pyro_concrete as pc
from pyro_concrete.ops import ESTIMATORS

K = 4  # categories of the categorical families


@dataclass(frozen=True)
class Case:
    name: str
    cls: type
    event_dim: int  # 1: categorical (event shape (K,)), 0: binary
    kwargs: dict = field(default_factory=dict)
    discrete: bool = False
    scored: bool = True  # has a log_prob (RelaxedSubset has none: tests/test_subset.py)

    def logits(self, batch_shape=(), dtype=torch.float32) -> torch.Tensor:
        return torch.randn(tuple(batch_shape) + self.event_shape, dtype=dtype)

    @property
    def event_shape(self) -> tuple:
        return (K,) if self.event_dim else ()

    def make(self, batch_shape=(), temperature=0.5, dtype=torch.float32, **kwargs):
        """An instance with batch shape ``batch_shape`` (logits drawn from the test's seed)."""
        kwargs = {**self.kwargs, **kwargs}
        if "probs" not in kwargs and "logits" not in kwargs:
            kwargs["logits"] = self.logits(batch_shape, dtype)
        if isinstance(temperature, float):
            temperature = torch.tensor(temperature, dtype=dtype)
        return self.cls(temperature, **kwargs)

    def invalid_value(self, d) -> torch.Tensor:
        """A value of the right shape outside the support."""
        shape = d.batch_shape + d.event_shape
        if self.cls is pc.LogitBinaryConcrete:
            return torch.full(shape, float("nan"))
        if self.cls is pc.BinaryConcrete:
            return torch.full(shape, 1.5)
        return torch.full(shape, 0.5)  # not a simplex point, log-simplex point, one-hot or 0/1


CASES = [
    Case("Concrete", pc.Concrete, 1),
    Case("ExpConcrete", pc.ExpConcrete, 1),
    Case("LogitBinaryConcrete", pc.LogitBinaryConcrete, 0),
    Case("BinaryConcrete", pc.BinaryConcrete, 0),
    *[
        Case(f"ConcreteStraightThrough-{e}", pc.ConcreteStraightThrough, 1, {"estimator": e}, True)
        for e in ESTIMATORS
    ],
    *[
        Case(
            f"BinaryConcreteStraightThrough-{e}", pc.BinaryConcreteStraightThrough, 0, {"estimator": e}, True
        )
        for e in ESTIMATORS
    ],
    Case("RelaxedSubset", pc.RelaxedSubset, 1, {"k": 2}, scored=False),
    Case("SubsetStraightThrough", pc.SubsetStraightThrough, 1, {"k": 2}, True),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request) -> Case:
    return request.param


def test_every_class_of_the_package_is_covered():
    """A new distribution class must be added to CASES."""
    from torch.distributions import Distribution

    exported = {
        obj
        for name in pc.__all__
        if isinstance(obj := getattr(pc, name), type) and issubclass(obj, Distribution)
    }
    assert exported == {c.cls for c in CASES} | set(PERMUTATION_CLASSES)


def needs_log_prob(case: Case) -> None:
    """Skips a test of ``log_prob`` for a class that has none (its own tests cover the rest)."""
    if not case.scored:
        pytest.skip(f"{case.name} has no log_prob (it raises NotImplementedError; tests/test_subset.py)")


def _close(a, b, **kwargs):
    torch.testing.assert_close(a, b, rtol=kwargs.pop("rtol", 1e-5), atol=kwargs.pop("atol", 1e-5), **kwargs)


# -- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits_batch, temperature_shape, expected_batch",
    [
        ((), (), ()),
        ((3,), (), (3,)),
        ((3,), (2, 3), (2, 3)),
        ((2, 3), (3,), (2, 3)),
        ((1, 3), (2, 1), (2, 3)),
    ],
)
@pytest.mark.parametrize("use_probs", [False, True])
def test_infer_shapes(case, logits_batch, temperature_shape, expected_batch, use_probs):
    logits = case.logits(logits_batch)
    params = (
        {"probs": torch.sigmoid(logits) if case.event_dim == 0 else logits.softmax(-1)} if use_probs else {}
    )
    temperature = torch.full(temperature_shape, 0.7)
    d = case.make(temperature=temperature, **(params or {"logits": logits}))
    assert d.batch_shape == expected_batch
    assert d.event_shape == case.event_shape
    arg_shapes = {"temperature": temperature_shape, ("probs" if use_probs else "logits"): logits.shape}
    assert case.cls.infer_shapes(**arg_shapes) == (d.batch_shape, d.event_shape)


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 1)])
def test_sample_shapes_and_support(case, batch_shape, sample_shape):
    d = case.make(batch_shape)
    assert d.support.event_dim == d.event_dim == case.event_dim
    assert d.support.is_discrete == case.discrete
    assert d.has_rsample
    for x in (d.sample(sample_shape), d.rsample(sample_shape)):
        assert x.shape == sample_shape + batch_shape + case.event_shape
        ok = d.support.check(x)
        assert ok.shape == sample_shape + batch_shape
        assert ok.all()
    assert not d.sample(sample_shape).requires_grad


def test_rsample_carries_a_finite_gradient(case):
    logits = case.logits((3,)).requires_grad_()
    d = case.make(logits=logits)
    x = d.rsample((50,))
    weights = torch.randn(x.shape[-1] if case.event_dim else 1)
    (grad,) = torch.autograd.grad((x * weights).sum(), logits)
    assert grad.isfinite().all() and (grad != 0).any()


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_batch_log_prob_shapes(case, batch_shape):
    needs_log_prob(case)
    d = case.make(batch_shape)
    x = d.sample((5,))
    assert d.log_prob(x).shape == (5,) + batch_shape
    # values broadcast against the batch shape, as torch's do
    if batch_shape:
        x1 = d.sample()[(slice(0, 1),) * len(batch_shape)]  # batch dims of size 1
        assert d.log_prob(x1).shape == batch_shape
    x2 = d.sample((2, 1)).expand((2, 3) + batch_shape + case.event_shape)
    assert d.log_prob(x2).shape == (2, 3) + batch_shape
    lp = d.log_prob(x)
    assert lp.isfinite().all()


def test_copies_of_a_sample_score_like_the_sample(case):
    """No state on the tensor: clones, detached copies and views give the same log_prob."""
    needs_log_prob(case)
    d = case.make((3,), dtype=torch.float64)
    x = d.rsample((4,))
    lp = d.log_prob(x)
    for y in (x.clone(), x.detach(), x[:, :], x.view(x.shape)):
        _close(d.log_prob(y), lp, rtol=1e-9, atol=1e-9)


def test_log_prob_rejects_wrong_shapes(case):
    d = case.make((2, 3))
    x = d.sample()
    with pytest.raises((ValueError, RuntimeError)):
        d.log_prob(torch.cat([x, x[:1]], dim=0))  # batch (3, 3) against (2, 3)
    if case.event_dim:
        with pytest.raises((ValueError, RuntimeError)):
            d.log_prob(torch.cat([x, x[..., :1]], dim=-1))  # event size K + 1


# -- expand / expand_by ----------------------------------------------------------------------


def _check_same_distribution(small, large):
    """``large`` is ``small`` broadcast: equal log_prob on samples of either (for a class
    without a density, equal parameters and samples in the support).

    Scored as copies, so that both go through the general formula (a float32 sample near
    a boundary is scored more accurately by its own distribution, from its pre-image).
    """
    if not hasattr(small, "log_prob") or type(small).log_prob is pc.RelaxedSubset.log_prob:
        base = getattr(large, "base_dist", large)  # Pyro's ExpandedDistribution wraps the class
        _close(small.logits.expand(base.batch_shape + small.event_shape), base.logits)
        x = large.rsample()
        assert x.shape == large.batch_shape + large.event_shape and large.support.check(x).all()
        return
    x = small.sample().clone()
    _close(small.log_prob(x).expand(large.batch_shape), large.log_prob(x))
    x = large.sample().clone()
    _close(small.log_prob(x), large.log_prob(x))


def _check_keeps_attributes(small, large):
    assert type(large) is type(small)
    for name in ("estimator", "rao_samples"):
        if hasattr(small, name):
            assert getattr(large, name) == getattr(small, name)
    assert large.temperature.shape == large.batch_shape
    _close(large.temperature, small.temperature.expand(large.batch_shape))
    assert large._validate_args == small._validate_args


@pytest.mark.parametrize("sample_shape", [(), (2,), (2, 3)])
@pytest.mark.parametrize("shape_type", [torch.Size, tuple, list])
def test_expand_by(case, sample_shape, shape_type):
    for batch_shape in [(), (3,)]:
        small = case.make(batch_shape)
        large = small.expand_by(shape_type(sample_shape))
        assert large.batch_shape == sample_shape + batch_shape
        assert large.event_shape == small.event_shape
        _check_keeps_attributes(small, large)
        _check_same_distribution(small, large)


@pytest.mark.parametrize("sample_shape", [(), (2,), (2, 3)])
@pytest.mark.parametrize("default", [False, True])
def test_expand_new_dim(case, sample_shape, default):
    small = case.make((3,))
    new_shape = torch.Size(sample_shape) + small.batch_shape
    large = TorchDistribution.expand(small, new_shape) if default else small.expand(new_shape)
    assert large.batch_shape == new_shape
    if not default:
        _check_keeps_attributes(small, large)
    _check_same_distribution(small, large)


@pytest.mark.parametrize("default", [False, True])
def test_expand_existing_dim(case, default):
    small = case.make((2, 1, 1))
    for dim in range(3):
        if small.batch_shape[dim] != 1:
            continue
        batch_shape = list(small.batch_shape)
        batch_shape[dim] = 5
        large = TorchDistribution.expand(small, batch_shape) if default else small.expand(batch_shape)
        assert large.batch_shape == tuple(batch_shape)
        if not default:
            _check_keeps_attributes(small, large)
        _check_same_distribution(small, large)


@pytest.mark.parametrize("shapes", [[(2, 1), (2, 3)], [(2, 1, 1), (2, 1, 3), (2, 5, 3)]])
def test_repeated_expands(case, shapes):
    d = case.make((3,))
    original = d
    for shape in shapes:
        proposed = torch.Size(shape) + original.batch_shape
        n = d.expand(proposed)
        assert n.batch_shape == proposed
        _check_keeps_attributes(d, n)
        _check_same_distribution(d, n)
        d = n
    # the expanded distribution still samples and scores exactly
    x = d.rsample()
    assert d.support.check(x).all()


@pytest.mark.parametrize(
    "initial_shape, proposed_shape", [[(2, 1), (4, 3)], [(2, 4), (2, 2, 1)], [(1, 2, 1), (2, 1)]]
)
@pytest.mark.parametrize("default", [False, True])
def test_expand_errors(case, initial_shape, proposed_shape, default):
    small = case.make((3,))
    shape = torch.Size(initial_shape) + small.batch_shape
    large = TorchDistribution.expand(small, shape) if default else small.expand(shape)
    with pytest.raises((RuntimeError, ValueError)):
        large.expand(torch.Size(proposed_shape) + small.batch_shape)


# -- to_event, mask, scale ----------------------------------------------------------------------


def test_to_event(case):
    needs_log_prob(case)
    d = case.make((2, 3))
    e = d.to_event(1)
    assert e.batch_shape == (2,) and e.event_shape == (3,) + case.event_shape
    assert type(e.base_dist) is type(d)
    x = e.rsample((5,))
    assert x.shape == (5, 2, 3) + case.event_shape
    assert e.support.check(x).shape == (5, 2) and e.support.check(x).all()
    _close(e.log_prob(x), d.log_prob(x).sum(-1))
    assert d.to_event(2).log_prob(x).shape == (5,)
    # expand an Independent of the class: keeps the class underneath
    big = e.expand((4, 2))
    assert big.batch_shape == (4, 2) and type(big.base_dist) is type(d)


def test_mask(case):
    needs_log_prob(case)
    d = case.make((2, 3))
    mask = torch.tensor([[True, False, True], [False, False, True]])
    m = d.mask(mask)
    x = m.rsample()
    assert m.support.check(x).all()
    lp = m.log_prob(x)
    _close(lp, torch.where(mask, d.log_prob(x), torch.zeros(())))
    assert (d.mask(False).log_prob(x) == 0).all()
    assert type(m.expand((4, 2, 3)).base_dist) is type(d)


def test_poutine_scale(case):
    needs_log_prob(case)
    d = case.make((3,))

    def model():
        return pyro.sample("x", d)

    trace = poutine.trace(poutine.scale(model, scale=0.25)).get_trace()
    x = trace.nodes["x"]["value"]
    _close(trace.log_prob_sum(), 0.25 * d.log_prob(x).sum())


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_validation_rejects_bad_temperature(case, temperature):
    with pytest.raises(ValueError, match="temperature"):
        case.make((3,), temperature=temperature, validate_args=True)
    case.make((3,), temperature=temperature, validate_args=False)  # no check, no error


def test_validation_rejects_bad_logits_and_probs(case):
    logits = case.logits((3,))
    logits[1] = float("nan")
    with pytest.raises(ValueError, match="logits"):
        case.make(logits=logits, validate_args=True)
    bad_probs = torch.full((3,) + case.event_shape, 0.7 if case.event_dim else 1.5)
    with pytest.raises(ValueError, match="probs"):
        case.make(probs=bad_probs, validate_args=True)
    with pytest.raises(ValueError):
        case.make(logits=case.logits(), probs=torch.tensor(0.5))  # both


def test_validation_of_values(case):
    needs_log_prob(case)
    d = case.make((2, 3), validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(case.invalid_value(d))
    lax = case.make((2, 3), validate_args=False)
    lax.log_prob(case.invalid_value(lax))  # not checked


def test_validation_follows_torch_default(case):
    needs_log_prob(case)
    previous = torch.distributions.Distribution._validate_args
    try:
        torch.distributions.Distribution.set_default_validate_args(False)
        d = case.make((3,))
        assert not d._validate_args
        d.log_prob(case.invalid_value(d))
        torch.distributions.Distribution.set_default_validate_args(True)
        assert d.expand((2, 3))._validate_args  # follows the default, as torch's do
    finally:
        torch.distributions.Distribution.set_default_validate_args(previous)


# -- pickling, dtype, repr ---------------------------------------------------------------------


def test_pickle(case):
    needs_log_prob(case)
    d = case.make((2, 3), temperature=torch.tensor([0.3, 0.6, 0.9]))
    x = d.rsample()
    e = pickle.loads(pickle.dumps(d))
    assert type(e) is type(d)
    assert e.batch_shape == d.batch_shape and e.event_shape == d.event_shape
    _close(e.logits, d.logits, rtol=0, atol=0)
    _close(e.temperature, d.temperature, rtol=0, atol=0)
    for name in ("estimator", "rao_samples"):
        assert getattr(e, name, None) == getattr(d, name, None)
    _close(e.log_prob(x.detach()), d.log_prob(x.detach()))
    big = pickle.loads(pickle.dumps(d.expand((4, 2, 3)).to_event(1).mask(True)))
    assert big.batch_shape == (4, 2) and big.sample().shape == (4, 2, 3) + case.event_shape


def test_deepcopy_and_score_parts(case):
    needs_log_prob(case)
    d = case.make((2, 3))
    e = copy.deepcopy(d)
    x = e.rsample()
    _close(d.log_prob(x.clone()), e.log_prob(x.clone()))
    parts = e.score_parts(x)  # Pyro's ELBOs use these: reparameterised, no score function
    _close(parts.log_prob, e.log_prob(x))
    assert isinstance(parts.score_function, (int, float)) and parts.score_function == 0
    if d.has_enumerate_support:
        # a value that is not the distribution's own sample (e.g. enumerated in a guide) has
        # no sample path: weighted by log_prob, as a discrete distribution's
        support = d.enumerate_support()
        _close(d.score_parts(support).score_function, d.log_prob(support))


def test_inference_mode(case):
    needs_log_prob(case)
    d = case.make((3,))
    with torch.inference_mode():
        x = d.rsample((2,))
        assert d.log_prob(x).shape == (2, 3) and d.support.check(x).all()


def test_float64(case):
    needs_log_prob(case)
    d = case.make((3,), dtype=torch.float64)
    x = d.rsample((2,))
    assert x.dtype == torch.float64 and d.log_prob(x).dtype == torch.float64
    assert d.temperature.dtype == torch.float64


def test_repr(case):
    assert repr(case.make((2,))).startswith(case.cls.__name__)


def test_enumerate_support(case):
    d = case.make((2, 3))
    if not case.discrete:
        assert not d.has_enumerate_support
        return
    support = d.enumerate_support()
    n = support.shape[0]
    assert n == getattr(d, "num_subsets", K if case.event_dim else 2)
    assert support.shape == (n, 2, 3) + case.event_shape
    assert d.support.check(support).all()
    assert d.enumerate_support(expand=False).shape == (n, 1, 1) + case.event_shape
    total = d.log_prob(support).logsumexp(0)
    _close(total, torch.zeros(2, 3))


# -- Pyro: plates with subsampling, SVI -----------------------------------------------------------


def test_plate_with_subsampling(case):
    needs_log_prob(case)
    full_size, subsample_size = 10, 4
    logits = case.logits((full_size,))
    temperature = torch.tensor(0.5)

    def model():
        with pyro.plate("data", full_size, subsample_size=subsample_size) as idx:
            a = pyro.sample("a", case.make(logits=logits[idx], temperature=temperature))
            # a batch-less distribution is expanded by the plate
            b = pyro.sample("b", case.make(()))
        return idx, a, b

    trace = poutine.trace(model).get_trace()
    idx, a, b = trace.nodes["_RETURN"]["value"]
    assert a.shape == b.shape == (subsample_size,) + case.event_shape
    fn_b = trace.nodes["b"]["fn"]
    assert type(fn_b) is case.cls and fn_b.batch_shape == (subsample_size,)
    trace.compute_log_prob()
    expected = case.make(logits=logits[idx], temperature=temperature).log_prob(a.clone())
    scale = full_size / subsample_size  # Pyro scales the subsample's log_prob
    _close(trace.nodes["a"]["log_prob"], scale * expected)
    _close(trace.nodes["a"]["log_prob_sum"], scale * expected.sum())
    assert trace.nodes["a"]["scale"] == scale


def test_model_and_guide_under_trace_elbo(case):
    needs_log_prob(case)
    prior_logits = case.logits((3,))

    def model():
        with pyro.plate("items", 3):
            return pyro.sample("z", case.make(logits=prior_logits))

    def guide():
        q = pyro.param("q", torch.zeros((3,) + case.event_shape))
        with pyro.plate("items", 3):
            return pyro.sample("z", case.make(logits=q))

    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        losses = [svi.step() for _ in range(3)]
        assert all(torch.isfinite(torch.tensor(losses)))
        q = pyro.param("q")
        (grad,) = torch.autograd.grad(Trace_ELBO().differentiable_loss(model, guide), q.unconstrained())
    assert grad.isfinite().all() and (grad != 0).any()
    pyro.clear_param_store()


# -- the permutation family: parameterised by (temperature, scores), no log_prob ----------------

PERMUTATION_CLASSES = [pc.GumbelSinkhorn, pc.GumbelSinkhornStraightThrough]
N = 3  # items of the permutation matrices


@pytest.fixture(params=PERMUTATION_CLASSES, ids=[c.__name__ for c in PERMUTATION_CLASSES])
def permutation_class(request) -> type:
    return request.param


@pytest.mark.parametrize(
    "scores_batch, temperature_shape, expected_batch",
    [((), (), ()), ((3,), (2, 3), (2, 3)), ((1, 3), (2, 1), (2, 3))],
)
def test_permutation_shapes_and_support(permutation_class, scores_batch, temperature_shape, expected_batch):
    scores = torch.randn((*scores_batch, N, N))
    d = permutation_class(torch.full(temperature_shape, 0.7), scores)
    assert d.batch_shape == expected_batch and d.event_shape == (N, N)
    assert permutation_class.infer_shapes(temperature=temperature_shape, scores=scores.shape) == (
        d.batch_shape,
        d.event_shape,
    )
    assert d.support.event_dim == 2 and d.support.is_discrete == (
        permutation_class is pc.GumbelSinkhornStraightThrough
    )
    for sample_shape in [(), (5,), (2, 1)]:
        for x in (d.sample(sample_shape), d.rsample(sample_shape)):
            assert x.shape == sample_shape + expected_batch + (N, N)
            assert d.support.check(x).all()
    with pytest.raises(NotImplementedError, match="log_prob"):
        d.log_prob(d.sample())


def test_permutation_expand_to_event_mask_pickle(permutation_class):
    d = permutation_class(0.5, torch.randn(3, N, N), num_iters=7)
    for large in (d.expand((2, 3)), d.expand_by((2,)), TorchDistribution.expand(d, (2, 3))):
        assert large.batch_shape == (2, 3) and large.rsample().shape == (2, 3, N, N)
    own = d.expand((2, 3))
    assert type(own) is permutation_class and own.num_iters == 7
    torch.testing.assert_close(own.scores, d.scores.expand(2, 3, N, N))
    e = d.to_event(1)
    assert e.batch_shape == () and e.event_shape == (3, N, N) and e.rsample().shape == (3, N, N)
    assert d.mask(torch.tensor([True, False, True])).rsample().shape == (3, N, N)
    copy_ = pickle.loads(pickle.dumps(d))
    assert type(copy_) is permutation_class and torch.equal(copy_.scores, d.scores)
    assert copy.deepcopy(d).num_iters == 7 and repr(d).startswith(permutation_class.__name__)
    with pytest.raises(ValueError, match="temperature"):
        permutation_class(0.0, torch.randn(N, N), validate_args=True)
    with pytest.raises(ValueError, match="scores"):
        permutation_class(0.5, torch.full((N, N), float("nan")), validate_args=True)


def test_permutation_sites_in_plates_with_subsampling(permutation_class):
    scores = torch.randn(10, N, N)

    def model():
        with pyro.plate("data", 10, subsample_size=4) as idx:
            a = pyro.sample("a", permutation_class(0.5, scores[idx]))
            b = pyro.sample("b", permutation_class(0.5, torch.randn(N, N)))  # expanded by the plate
        return a, b

    trace = poutine.trace(model).get_trace()
    a, b = trace.nodes["_RETURN"]["value"]
    assert a.shape == b.shape == (4, N, N)
    assert trace.nodes["b"]["fn"].batch_shape == (4,) and trace.nodes["a"]["scale"] == 2.5
