"""The contracts torch's and Pyro's relaxed distributions keep, checked once over every class.

Each check here failed on the first version of the library (issue 8), several silently:
derivatives of every order (gradcheck and gradgradcheck in float64, batched gradients,
Hessians against the plain formula), ``torch.func`` transforms, ``torch.jit.trace`` and
Pyro's three JIT ELBOs, ``torch.compile``, the ``meta`` device and CPU scalar temperatures,
one instance at several sites, masks (``-inf`` and ``finfo.min``), huge logits and every
floating dtype, torch's argument order and the kernels' one temperature convention.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field

import pyro
import pyro.distributions as pyro_dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO, Trace_ELBO
from torch.autograd import gradcheck, gradgradcheck

import pyro_concrete as pc
from pyro_concrete import ops

DEVICE = torch.get_default_device()  # the run's device: tests/devices.py
F64 = torch.float64
K = 4
INF = math.inf


@dataclass(frozen=True)
class Case:
    name: str
    cls: type
    event_dim: int
    kwargs: dict = field(default_factory=dict)

    @property
    def straight_through(self) -> bool:
        return self.cls in (
            pc.ConcreteStraightThrough,
            pc.BinaryConcreteStraightThrough,
            pc.SubsetStraightThrough,
        )

    @property
    def scored(self) -> bool:
        """Whether the class has a log_prob (RelaxedSubset has none: tests/test_subset.py)."""
        return self.cls is not pc.RelaxedSubset

    @property
    def event_shape(self) -> tuple:
        return (K,) if self.event_dim else ()

    def make(self, temperature, logits, **kwargs):
        return self.cls(temperature, logits=logits, **{**self.kwargs, **kwargs})

    def logits(self, batch=(3,), dtype=F64, requires_grad=False):
        return torch.randn(tuple(batch) + self.event_shape, dtype=dtype).requires_grad_(requires_grad)

    def value(self, d):
        """A fixed value in the support that is not the distribution's own sample."""
        return d.sample().clone()


CASES = [
    Case("Concrete", pc.Concrete, 1),
    Case("ExpConcrete", pc.ExpConcrete, 1),
    Case("BinaryConcrete", pc.BinaryConcrete, 0),
    Case("LogitBinaryConcrete", pc.LogitBinaryConcrete, 0),
    *[Case(f"ConcreteST-{e}", pc.ConcreteStraightThrough, 1, {"estimator": e}) for e in ops.ESTIMATORS],
    *[Case(f"BinaryST-{e}", pc.BinaryConcreteStraightThrough, 0, {"estimator": e}) for e in ops.ESTIMATORS],
    Case("RelaxedSubset", pc.RelaxedSubset, 1, {"k": 2}),
    Case("SubsetST", pc.SubsetStraightThrough, 1, {"k": 2}),
]
RELAXED = [c for c in CASES if not c.straight_through]
ST = [c for c in CASES if c.straight_through]


def needs_log_prob(case: Case) -> None:
    """Skips a check of ``log_prob`` for a class that has none (its own tests cover the rest)."""
    if not case.scored:
        pytest.skip(f"{case.name} has no log_prob: tests/test_subset.py checks its samples' contracts")


def _ids(cases):
    return [c.name for c in cases]


def test_every_class_is_covered():
    """The conformance suite checks that its cases cover every exported class; these too."""
    from test_conformance import CASES as CONFORMANCE_CASES

    assert {c.cls for c in CASES} == {c.cls for c in CONFORMANCE_CASES}
    assert {e for c in CASES if (e := c.kwargs.get("estimator"))} == set(ops.ESTIMATORS)


# -- derivatives of every order ---------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_log_prob_gradcheck_and_gradgradcheck_at_a_fixed_value(case):
    """In the parameters and the value, float64, with batched gradients (torch's own tests)."""
    needs_log_prob(case)
    logits = case.logits(requires_grad=True)
    temperature = torch.tensor([0.4, 0.7, 1.3], dtype=F64, requires_grad=True)
    value = case.value(case.make(temperature.detach(), logits.detach()))
    inputs = [logits, temperature]
    if not case.straight_through:  # a discrete value is not a point to perturb
        inputs.append(value.clone().requires_grad_())

    def f(lg, t, *v):
        return case.make(t, lg, validate_args=False).log_prob(v[0] if v else value)

    assert gradcheck(f, inputs, check_batched_grad=True)
    assert gradgradcheck(f, inputs, check_batched_grad=True)


@pytest.mark.parametrize("case", RELAXED, ids=_ids(RELAXED))
def test_gradcheck_along_the_sample_path(case):
    """``log_prob(rsample())`` and the sample itself, with the noise fixed by the seed."""
    needs_log_prob(case)
    logits = case.logits(requires_grad=True)
    temperature = torch.tensor([0.4, 0.7, 1.3], dtype=F64, requires_grad=True)

    def f(lg, t):
        torch.manual_seed(3)
        d = case.make(t, lg)
        x = d.rsample()
        return x, d.log_prob(x)

    assert gradcheck(f, (logits, temperature), check_batched_grad=True)
    assert gradgradcheck(f, (logits, temperature), check_batched_grad=True)


def _plain_exp_concrete(y, logits, tau):
    """The textbook ExpConcrete log-density, in plain torch (the reference for Hessians)."""
    k = logits.shape[-1]
    a = logits - tau * y
    return math.lgamma(k) + (k - 1) * torch.log(tau) + a.sum(-1) - k * torch.logsumexp(a, -1)


@pytest.mark.parametrize("cls", [pc.Concrete, pc.ExpConcrete])
def test_hessians_agree_with_the_plain_formula(cls):
    """The first version's Hessian in the logits at a fixed value was exactly 0."""
    torch.manual_seed(0)
    logits = torch.randn(K, dtype=F64)
    tau = torch.tensor(0.5, dtype=F64)
    y = pc.ExpConcrete(tau, logits=logits).sample()
    value = y if cls is pc.ExpConcrete else y.exp()

    def ours(lg, t, v):
        return cls(t, logits=lg).log_prob(v)

    def plain(lg, t, v):
        if cls is pc.ExpConcrete:
            return _plain_exp_concrete(v, lg, t)
        return _plain_exp_concrete(v.log(), lg, t) - v.log().sum(-1)

    args = (logits, tau, value)
    hessians = torch.autograd.functional.hessian(ours, args), torch.autograd.functional.hessian(plain, args)
    for a, b in zip(*hessians, strict=True):
        for x, z in zip(a, b, strict=True):
            torch.testing.assert_close(x, z)
    assert torch.autograd.functional.hessian(lambda lg: ours(lg, tau, value), logits).abs().max() > 0.01


def test_gradient_penalty_in_the_temperature_matches_the_plain_formula():
    """``d/dτ ||∂ log p / ∂y||²`` (gradient penalties, score matching): 5.37 instead of 6.06 before."""
    torch.manual_seed(1)
    logits = torch.randn(K, dtype=F64)
    y = pc.ExpConcrete(0.5, logits=logits).sample()

    def penalty(log_density, tau):
        v = y.clone().requires_grad_()
        (g,) = torch.autograd.grad(log_density(v, tau), v, create_graph=True)
        return g.square().sum()

    def ours(v, t):
        return pc.ExpConcrete(t, logits=logits).log_prob(v)

    def plain(v, t):
        return _plain_exp_concrete(v, logits, t)

    results = []
    for fn in (ours, plain):
        tau = torch.tensor(0.5, dtype=F64, requires_grad=True)
        results.append(torch.autograd.grad(penalty(fn, tau), tau)[0])
    torch.testing.assert_close(results[0], results[1])


KERNELS = {
    "exp_concrete_log_density": lambda v, lg, t: ops.exp_concrete_log_density(v, lg, t),
    "concrete_log_density": lambda v, lg, t: ops.concrete_log_density(v.exp(), lg, t),
    "concrete_log_density_at_log_value": lambda v, lg, t: ops.concrete_log_density_at_log_value(v, lg, t),
    "gumbel_softmax_log_sample": lambda v, lg, t: ops.gumbel_softmax_log_sample(lg, t, v),
}
BINARY_KERNELS = {
    "logit_binary_concrete_log_density": lambda v, lg, t: ops.logit_binary_concrete_log_density(v, lg, t),
    "binary_concrete_log_density_at_logit": lambda v, lg, t: ops.binary_concrete_log_density_at_logit(
        v, lg, t
    ),
    "binary_concrete_log_density": lambda v, lg, t: ops.binary_concrete_log_density(torch.sigmoid(v), lg, t),
    "binary_concrete_logit_sample": lambda v, lg, t: ops.binary_concrete_logit_sample(lg, t, v),
}


@pytest.mark.parametrize("name", [*KERNELS, *BINARY_KERNELS])
def test_every_public_kernel_passes_gradcheck_and_gradgradcheck(name):
    binary = name in BINARY_KERNELS
    kernel = (BINARY_KERNELS if binary else KERNELS)[name]
    shape = (3,) if binary else (3, K)
    logits = torch.randn(shape, dtype=F64, requires_grad=True)
    temperature = torch.tensor([0.3, 0.8, 1.7], dtype=F64, requires_grad=True)
    if name.endswith("sample"):
        value = (ops.draw_logistic if binary else ops.draw_gumbel)(torch.Size(shape), F64, DEVICE)
    elif binary:
        value = torch.randn(shape, dtype=F64) * 3
    else:
        value = torch.log_softmax(torch.randn(shape, dtype=F64) * 3, -1)
    inputs = (value.requires_grad_(not name.endswith("sample")), logits, temperature)
    assert gradcheck(kernel, inputs, check_batched_grad=True)
    assert gradgradcheck(kernel, inputs, check_batched_grad=True)


@pytest.mark.parametrize("estimator", ops.ESTIMATORS)
@pytest.mark.parametrize("binary", [False, True])
def test_straight_through_second_derivatives_are_the_surrogates(estimator, binary):
    """``create_graph=True`` through an ST sample: the surrogate's Hessian, finite, never an error."""
    logits = torch.randn((3,) if binary else (3, K), dtype=F64, requires_grad=True)
    tau = torch.tensor(0.7, dtype=F64, requires_grad=True)
    sampler = ops.binary_straight_through_sample if binary else ops.straight_through_sample
    z = sampler(logits, tau, estimator=estimator)
    weights = torch.randn(z.shape, dtype=F64)
    (g,) = torch.autograd.grad((z * weights).sum() ** 2, logits, create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), logits)
    assert torch.isfinite(h).all() and h.abs().max() > 0


def test_st_estimator_differentiates_the_concrete_sample_of_the_same_noise():
    logits = torch.randn(3, K, dtype=F64, requires_grad=True)

    def jacobian(cls):
        def sample(lg):
            torch.manual_seed(5)
            return cls(0.6, logits=lg).rsample()

        return torch.func.jacrev(sample)(logits)

    torch.testing.assert_close(jacobian(pc.ConcreteStraightThrough), jacobian(pc.Concrete))


# -- torch.func -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_torch_func_transforms_of_log_prob(case):
    needs_log_prob(case)
    logits = case.logits()
    tau = torch.tensor(0.6, dtype=F64)
    value = case.value(case.make(tau, logits))

    def f(lg, t):
        return case.make(t, lg, validate_args=False).log_prob(value).sum()

    grad = torch.func.grad(f, argnums=(0, 1))(logits, tau)
    inputs = (logits.requires_grad_(), tau.requires_grad_())
    expected = torch.autograd.grad(f(*inputs), inputs, allow_unused=True)  # ST: no temperature
    for a, b, x in zip(grad, expected, inputs, strict=True):
        torch.testing.assert_close(a, torch.zeros_like(x) if b is None else b)
    logits, tau = logits.detach(), tau.detach()
    jac = torch.func.jacrev(lambda lg: case.make(tau, lg, validate_args=False).log_prob(value))(logits)
    assert jac.shape == (3, *logits.shape)
    hess = torch.func.hessian(f)(logits, tau)
    assert hess.shape == logits.shape * 2 and torch.isfinite(hess).all()
    batched = torch.func.vmap(lambda lg: case.make(tau, lg, validate_args=False).log_prob(value))(
        logits.expand(5, *logits.shape)
    )
    torch.testing.assert_close(batched, case.make(tau, logits).log_prob(value).expand(5, 3))


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_vmap_of_rsample_with_different_randomness(case):
    needs_log_prob(case)
    logits = case.logits()

    def draw(lg):
        d = case.make(0.6, lg, validate_args=False)
        x = d.rsample()
        return x, d.log_prob(x)

    x, lp = torch.func.vmap(draw, randomness="different")(logits.expand(6, *logits.shape))
    assert x.shape == (6, *logits.shape) and torch.isfinite(lp).all()
    assert not torch.equal(x[0], x[1])  # independent draws per batch entry
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(draw)(logits.expand(2, *logits.shape))  # torch's default refuses to guess


@pytest.mark.parametrize("case", RELAXED, ids=_ids(RELAXED))
def test_jacrev_of_rsample_matches_autograd(case):
    logits = case.logits()

    def sample(lg):
        torch.manual_seed(11)
        return case.make(0.6, lg).rsample()

    jac = torch.func.jacrev(sample)(logits)
    expected = torch.autograd.functional.jacobian(sample, logits)
    torch.testing.assert_close(jac, expected)


# -- JIT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_jit_trace_of_sample_and_log_prob(case):
    needs_log_prob(case)
    logits = case.logits(dtype=torch.float32)

    def f(lg):
        d = case.make(0.5, lg, validate_args=False)
        x = d.rsample()
        return x, d.log_prob(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(f, (logits.requires_grad_(),), check_trace=False)
    x, lp = traced(logits)
    (x.sum() + lp.sum()).backward()
    assert torch.isfinite(logits.grad).all()


def _model_and_guide(case):
    prior = torch.zeros((2,) + case.event_shape)

    def model(data):
        with pyro.plate("rows", 2):
            z = pyro.sample("z", case.make(0.5, prior))
        scale = z.sum(-1) if case.event_dim else z
        with pyro.plate("data", data.shape[0]):
            pyro.sample("obs", pyro_dist.Normal(scale.sum(), 1.0), obs=data)

    def guide(data):
        logits = pyro.param("logits", torch.zeros((2,) + case.event_shape) + 0.1)
        with pyro.plate("rows", 2):
            pyro.sample("z", case.make(0.5, logits))

    return model, guide


@pytest.mark.parametrize("elbo", [JitTrace_ELBO, JitTraceMeanField_ELBO, JitTraceGraph_ELBO])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_pyro_jit_elbos_train(case, elbo):
    needs_log_prob(case)
    pyro.clear_param_store()
    model, guide = _model_and_guide(case)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo(ignore_jit_warnings=True))
    data = torch.tensor([1.0, 1.5, 0.5])
    losses = [svi.step(data) for _ in range(4)]
    assert all(math.isfinite(loss) for loss in losses)
    assert not torch.equal(pyro.param("logits").detach(), torch.zeros_like(pyro.param("logits")) + 0.1)


# -- torch.compile ----------------------------------------------------------------------------

# The classes whose samples are exact values (no pre-image kept) compile as one graph;
# Concrete and BinaryConcrete keep their sample's exact pre-image in Python (a dict lookup
# by identity), which is a graph break: they compile, but not with fullgraph=True.
FULLGRAPH = [c for c in CASES if c.cls not in (pc.Concrete, pc.BinaryConcrete)]


@pytest.fixture
def restore_validation():
    """torch.compile turns torch's default validation off for the process; put it back."""
    previous = torch.distributions.Distribution._validate_args
    yield
    torch.distributions.Distribution.set_default_validate_args(previous)
    torch._dynamo.reset()


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_torch_compile_matches_eager(case, restore_validation, monkeypatch):
    """rsample + log_prob compiled (AOT autograd also compiles the backward), against eager."""
    needs_log_prob(case)
    # Compiled, Gumbel-Rao draws its noise by torch.randint (vmap-safe); eager, as random bits
    # unless told otherwise: the same stream on both sides for the comparison.
    monkeypatch.setattr(ops.gumbel_rao, "_draws_random_bits", lambda: False)

    def loss(lg, t):
        d = case.make(t, lg, validate_args=False)
        x = d.rsample()
        return d.log_prob(x).sum() + (x * torch.arange(x.numel()).reshape(x.shape)).sum()

    logits = case.logits(dtype=torch.float32, requires_grad=True)
    tau = torch.tensor(0.6, requires_grad=True)

    def run(fn):
        torch.manual_seed(2)
        value = fn(logits, tau)
        return value, torch.autograd.grad(value, (logits, tau), allow_unused=True)

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=case in FULLGRAPH)
    eager, got = run(loss), run(compiled)
    torch.testing.assert_close(got[0], eager[0])
    for a, b in zip(got[1], eager[1], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


# -- devices ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
@pytest.mark.parametrize("how", ["float", "cpu-scalar", "same-device", "torch-shape"])
def test_meta_device(case, how):
    """Nothing assumes the CPU: construction, sampling, scoring and backward on ``meta``."""
    needs_log_prob(case)
    logits = torch.randn((3,) + case.event_shape, device="meta", requires_grad=True)
    temperature = {
        "float": 0.5,
        "cpu-scalar": torch.tensor(0.5, device="cpu"),  # a CPU leaf cannot receive a meta gradient
        "same-device": torch.full((3,), 0.5, device="meta", requires_grad=True),
        "torch-shape": torch.full((3, 1), 0.5, device="meta", requires_grad=True),
    }[how]
    if how == "torch-shape" and case.event_dim == 0:
        temperature = temperature.reshape(3)
    d = case.make(temperature, logits)
    assert d.temperature.device.type == "meta" and d.batch_shape == (3,)
    x = d.rsample((2,))
    lp = d.log_prob(x)
    assert x.device.type == lp.device.type == "meta" and lp.shape == (2, 3)
    (lp.sum() + x.sum()).backward()
    assert logits.grad is not None and logits.grad.device.type == "meta"
    assert d.log_prob(d.sample()).device.type == "meta"


@pytest.mark.parametrize("case", RELAXED, ids=_ids(RELAXED))
def test_cpu_scalar_temperature_with_logits_elsewhere_in_log_prob(case):
    needs_log_prob(case)
    d = case.make(torch.tensor(0.5, dtype=F64, device="cpu"), case.logits().to("meta"))
    assert d.log_prob(d.rsample()).device.type == "meta"


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_cpu_scalar_temperature_with_logits_on_the_run_device(case):
    """torch lets a 0-dim CPU tensor mix with tensors anywhere: so must the temperature. Under
    ``--device cuda`` the logits are on the GPU; in the default run this is the CPU case."""
    tau = torch.tensor(0.5, dtype=F64, device="cpu", requires_grad=True)
    logits = case.logits(requires_grad=True)
    d = case.make(tau, logits)
    x = d.rsample((2,))
    assert x.device == logits.device == DEVICE
    loss = x.sum() + (d.log_prob(x).sum() if case.scored else 0)
    grads = torch.autograd.grad(loss, (logits, tau), allow_unused=True)
    assert grads[0].device == DEVICE
    assert grads[1] is None or grads[1].device.type == "cpu"  # a CPU leaf's gradient stays there


M = torch.device("meta")


def _meta(*shape, dtype=F64, grad=False):
    return torch.randn(shape, dtype=dtype, device=M).requires_grad_(grad)


def _meta_logits(*shape):
    return _meta(*shape, grad=True)


def _meta_tau(*shape):
    return torch.full(shape, 0.5, dtype=F64, device=M, requires_grad=True)


def _meta_draws():
    """Every function of the package that takes or makes tensors, called with every tensor
    argument on ``meta`` (``KEY: thunk``). Each returns tensors, all on ``meta``."""
    from pyro_concrete.ops import gumbel_rao, sinkhorn, subset

    shape, binary, perm = torch.Size([3, K]), torch.Size([3]), torch.Size([3, K, K])
    unit = torch.sigmoid(_meta(3))
    draws = {
        "ops.binary_concrete_log_density": lambda: ops.binary_concrete_log_density(
            unit, _meta_logits(3), _meta_tau(3)
        ),
        "ops.binary_concrete_log_density_at_logit": lambda: ops.binary_concrete_log_density_at_logit(
            _meta(3, grad=True), _meta_logits(3), _meta_tau(3)
        ),
        "ops.binary_concrete_logit_sample": lambda: ops.binary_concrete_logit_sample(
            _meta_logits(3), _meta_tau(3), ops.draw_logistic(binary, F64, M)
        ),
        "ops.certain_outcomes": lambda: ops.certain_outcomes(_meta(3)),
        "ops.concrete_log_density": lambda: ops.concrete_log_density(
            torch.softmax(_meta(*shape), -1), _meta_logits(*shape), _meta_tau(3)
        ),
        "ops.concrete_log_density_at_log_value": lambda: ops.concrete_log_density_at_log_value(
            torch.log_softmax(_meta(*shape, grad=True), -1), _meta_logits(*shape), _meta_tau(3)
        ),
        "ops.conditional_gumbel": lambda: ops.conditional_gumbel(
            _meta(*shape), torch.zeros(3, 1, dtype=torch.long, device=M), ops.draw_gumbel(shape, F64, M)
        ),
        "ops.conditional_logistic": lambda: ops.conditional_logistic(
            _meta(3), torch.ones(3, dtype=torch.bool, device=M), ops.draw_logistic(binary, F64, M)
        ),
        "ops.draw_gumbel": lambda: ops.draw_gumbel(shape, torch.float16, M),
        "ops.draw_logistic": lambda: ops.draw_logistic(binary, torch.float16, M),
        "ops.draw_softmax_noise": lambda: (
            ops.draw_softmax_noise(shape, F64, M),
            ops.draw_softmax_noise(torch.Size([3, 2]), F64, M),
        ),
        "ops.exp_concrete_log_density": lambda: ops.exp_concrete_log_density(
            torch.log_softmax(_meta(*shape, grad=True), -1), _meta_logits(*shape), _meta_tau(3)
        ),
        "ops.gumbel_softmax_log_sample": lambda: ops.gumbel_softmax_log_sample(
            _meta_logits(*shape), _meta_tau(3), ops.draw_gumbel(shape, F64, M)
        ),
        "ops.logit_binary_concrete_log_density": lambda: ops.logit_binary_concrete_log_density(
            _meta(3, grad=True), _meta_logits(3), _meta_tau(3)
        ),
        "ops.neg_logistic_log_density": lambda: ops.neg_logistic_log_density(_meta(3, grad=True)),
        "ops.safe_log": lambda: ops.safe_log(unit.detach().requires_grad_()),
        "ops.safe_logit": lambda: ops.safe_logit(unit.detach().requires_grad_()),
        "ops.binary_straight_through_sample": lambda: tuple(
            ops.binary_straight_through_sample(_meta_logits(3), _meta_tau(3), estimator=e, rao_samples=3)
            for e in ops.ESTIMATORS
        ),
        "ops.sample_binary": lambda: tuple(
            ops.sample_binary(_meta_logits(3), _meta_tau(3), torch.Size([2, 3]), e, 3) for e in ops.ESTIMATORS
        ),
        "ops.sample_one_hot": lambda: tuple(
            ops.sample_one_hot(_meta_logits(*shape), _meta_tau(3), torch.Size([2, *shape]), e, 3)
            for e in ops.ESTIMATORS
        ),
        "ops.straight_through_sample": lambda: tuple(
            ops.straight_through_sample(_meta_logits(*shape), _meta_tau(3), estimator=e, rao_samples=3)
            for e in ops.ESTIMATORS
        ),
        "ops.structural_zeros": lambda: ops.structural_zeros(_meta(*shape)),
        "ops.subset.relaxed_top_k": lambda: subset.relaxed_top_k(
            _meta_logits(*shape), _meta_tau(3), ops.draw_gumbel(shape, F64, M), 2
        ),
        "ops.subset.subset_log_prob": lambda: subset.subset_log_prob(
            _meta_logits(*shape), subset.top_k_hot(_meta(*shape), 2), 2
        ),
        "ops.subset.top_k_hot": lambda: subset.top_k_hot(_meta(*shape), 2),
        "ops.sinkhorn.gumbel_sinkhorn_log_sample": lambda: sinkhorn.gumbel_sinkhorn_log_sample(
            _meta_logits(*perm), _meta_tau(3), ops.draw_gumbel(perm, F64, M), 3
        ),
        "ops.sinkhorn.hard_assignment": lambda: sinkhorn.hard_assignment(_meta(*perm)),
        "ops.sinkhorn.log_sinkhorn": lambda: sinkhorn.log_sinkhorn(_meta(*perm, grad=True), 3),
        "ops.concrete.floored_exp": lambda: (
            ops.concrete.floored_exp(_meta(*shape, grad=True)),
            ops.concrete.floored_exp(_meta(*shape, grad=True), ops.structural_zeros(_meta(*shape))),
        ),
        "ops.gumbel_rao.draw_log_uniform": lambda: gumbel_rao.draw_log_uniform(shape, F64, M),
        "ops.gumbel_rao.draw_uniform_midpoints": lambda: gumbel_rao.draw_uniform_midpoints(
            shape, torch.float32, M
        ),
        "ops.gumbel_rao.gumbel_rao_soft_mean": lambda: gumbel_rao.gumbel_rao_soft_mean(
            _meta_logits(*shape), _meta_tau(3, 1), 3
        ),
        "kl.binary_relaxed_kl": lambda: pc.kl.binary_relaxed_kl(_meta_logits(3), _meta_logits(3)),
        "kl.categorical_relaxed_kl": lambda: pc.kl.categorical_relaxed_kl(
            _meta_logits(*shape), _meta_logits(*shape)
        ),
    }
    return draws


def _public_tensor_functions() -> set[str]:
    """``ops.NAME`` for the functions ``ops`` exports, ``ops.MODULE.NAME`` for those only its
    submodules export, ``kl.NAME``: every public function that takes or returns tensors."""
    import importlib
    import pkgutil

    no_tensors = {"check_estimator", "log_floor"}  # of strings and numbers, of a dtype

    def functions(module):
        return {n for n in module.__all__ if callable(getattr(module, n)) and n not in no_tensors}

    names = {f"ops.{n}" for n in functions(ops)} | {f"kl.{n}" for n in functions(pc.kl)}
    for info in pkgutil.iter_modules(ops.__path__):
        submodule = importlib.import_module(f"{ops.__name__}.{info.name}")
        names |= {f"ops.{info.name}.{n}" for n in functions(submodule) - set(ops.__all__)}
    return names


def test_the_meta_checks_cover_every_public_function():
    """A function added to ``ops`` or ``kl`` needs a meta-device check below."""
    assert set(_meta_draws()) == _public_tensor_functions()


def _tensors(result):
    return [result] if isinstance(result, torch.Tensor) else [t for r in result for t in _tensors(r)]


@pytest.mark.parametrize("name", sorted(_public_tensor_functions()))
def test_every_public_function_on_the_meta_device(name):
    """Every input on ``meta``: every output and gradient is there too. A constant the code
    made on the CPU (more than one element) would make the call raise."""
    torch.manual_seed(0)
    outputs = _tensors(_meta_draws()[name]())
    assert outputs and all(t.device == M for t in outputs)
    differentiable = [t for t in outputs if t.requires_grad]
    if differentiable:
        leaves = [t for t in _leaves(differentiable) if t.requires_grad]
        grads = torch.autograd.grad(sum(t.sum() for t in differentiable), leaves, allow_unused=True)
        assert all(g is None or g.device == M for g in grads)
        assert any(g is not None for g in grads)


def _leaves(outputs):
    """The leaf tensors that require grad behind ``outputs`` (found through their graphs)."""
    seen, stack, leaves = set(), [t.grad_fn for t in outputs if t.grad_fn is not None], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _meta_distributions():
    """One instance of every exported distribution class, parameters on ``meta`` that require grad."""
    categorical, binary, scores = _meta_logits(3, K), _meta_logits(3), _meta_logits(3, K, K)
    build = {
        pc.Concrete: lambda t: pc.Concrete(t, logits=categorical),
        pc.ExpConcrete: lambda t: pc.ExpConcrete(t, logits=categorical),
        pc.GumbelSoftmax: lambda t: pc.GumbelSoftmax(t, logits=categorical),
        pc.BinaryConcrete: lambda t: pc.BinaryConcrete(t, logits=binary),
        pc.LogitBinaryConcrete: lambda t: pc.LogitBinaryConcrete(t, logits=binary),
        pc.ConcreteStraightThrough: lambda t: pc.ConcreteStraightThrough(t, logits=categorical),
        pc.BinaryConcreteStraightThrough: lambda t: pc.BinaryConcreteStraightThrough(t, logits=binary),
        pc.RelaxedSubset: lambda t: pc.RelaxedSubset(t, logits=categorical, k=2),
        pc.SubsetStraightThrough: lambda t: pc.SubsetStraightThrough(t, logits=categorical, k=2),
        pc.GumbelSinkhorn: lambda t: pc.GumbelSinkhorn(t, scores, num_iters=3),
        pc.GumbelSinkhornStraightThrough: lambda t: pc.GumbelSinkhornStraightThrough(t, scores, num_iters=3),
    }
    exported = {getattr(pc, n) for n in pc.__all__ if isinstance(getattr(pc, n), type)}
    assert set(build) == exported, "a new distribution class needs a meta-device check"
    return build


@pytest.mark.parametrize(
    "cls", sorted(_meta_distributions(), key=lambda c: c.__name__), ids=lambda c: c.__name__
)
def test_every_distribution_method_on_the_meta_device(cls):
    """Construction, sample, rsample (with backward), log_prob, the moments, entropy,
    enumerate_support, expand, the support's check and its transform, and repr, on ``meta``."""
    d = _meta_distributions()[cls](_meta_tau(3))
    x = d.rsample((2,))
    results = {"rsample": x, "sample": d.sample(), "support.check": d.support.check(x)}
    for method in ("log_prob", "entropy", "enumerate_support", "mean", "mode", "variance"):
        try:
            attribute = getattr(d, method)
            results[method] = (
                attribute(x) if method == "log_prob" else (attribute() if callable(attribute) else attribute)
            )
        except NotImplementedError:
            pass
    try:
        transform = torch.distributions.biject_to(d.support)  # what HMC and Laplace use
    except NotImplementedError:  # discrete supports, subsets and permutations have none
        pass
    else:
        u = transform.inv(x.detach())
        results["biject_to"] = (u, transform(u), transform.log_abs_det_jacobian(u, transform(u)))
    results["expand"] = d.expand((2, 3)).rsample()
    for name, value in results.items():
        assert all(t.device == M for t in _tensors(value)), name
    loss = x.sum() + (results["log_prob"].sum() if "log_prob" in results else 0)
    params = [p for p in (getattr(d, "logits", None), getattr(d, "scores", None)) if p is not None]
    (grad,) = torch.autograd.grad(loss, [_leaves(params)[0]])
    assert grad.device == M
    assert "Tensor(3,)" in repr(d)  # a meta temperature has no value to print


# -- one instance, several uses ---------------------------------------------------------------


def _shared_instance_gradient(shared: bool, log_sample: bool):
    """Mean Trace_ELBO gradient of a guide with two sites of one ST distribution (issue 8.5)."""
    locs = torch.tensor([-2.0, 0.0, 2.0])
    data = torch.tensor([1.8, -0.3])

    def model():
        for i in range(2):
            z = pyro.sample(f"z{i}", pyro_dist.OneHotCategorical(logits=torch.zeros(3)))
            pyro.sample(f"x{i}", pyro_dist.Normal((z * locs).sum(-1), 1.0), obs=data[i])

    def guide():
        logits = pyro.param("q", torch.tensor([0.3, -0.2, 0.1]))
        d = pc.ConcreteStraightThrough(0.5, logits=logits)
        for i in range(2):
            site = d if shared else pc.ConcreteStraightThrough(0.5, logits=logits)
            pyro.sample(f"z{i}", site)
            if log_sample:
                d.sample()  # for logging

    pyro.clear_param_store()
    elbo = Trace_ELBO(num_particles=20, vectorize_particles=False)
    torch.manual_seed(4)
    loss = elbo.differentiable_loss(pc.infer.differentiable_one_hot(model), guide)
    return loss, torch.autograd.grad(loss, pyro.param("q").unconstrained())[0]


def test_one_instance_at_several_sites_gives_the_same_gradient():
    """Two sites of one instance, or a sample drawn again for logging, change nothing (the
    first version gave the earlier site score-function parts: same loss, another gradient)."""
    for log_sample in (False, True):  # the logging draw consumes random numbers in both runs
        loss, expected = _shared_instance_gradient(shared=False, log_sample=log_sample)
        shared_loss, shared = _shared_instance_gradient(shared=True, log_sample=log_sample)
        torch.testing.assert_close(shared, expected)
        torch.testing.assert_close(shared_loss, loss)


@pytest.mark.parametrize("case", RELAXED, ids=_ids(RELAXED))
def test_results_do_not_depend_on_earlier_samples(case):
    """The very tensor a distribution sampled, scored while it is the remembered sample and
    again after another rsample (no longer remembered), and a copy: the same value and the
    same gradients (at τ = 0.7 nothing underflows, so the exact pre-image gains nothing)."""
    needs_log_prob(case)
    logits = case.logits(requires_grad=True)
    d = case.make(0.7, logits)
    first = d.rsample()
    results = []
    for score in (lambda: d.log_prob(first), lambda: (d.rsample(), d.log_prob(first))[1]):
        lp = score()
        results.append((lp, torch.autograd.grad(lp.sum() + first.sum(), logits, retain_graph=True)[0]))
    copy = first.detach().clone()
    results.append((d.log_prob(copy), None))
    for (lp, grad), (lp_other, grad_other) in itertools.pairwise(results):
        torch.testing.assert_close(lp, lp_other)
        if grad is not None and grad_other is not None:
            torch.testing.assert_close(grad, grad_other)


# -- masks ------------------------------------------------------------------------------------


def _masked_logits(case, mask_value, dtype=F64, requires_grad=True):
    if case.event_dim:
        logits = torch.tensor(
            [[0.3, mask_value, -0.4, 1.0], [mask_value, 0.5, mask_value, -1.0]], dtype=dtype
        )
    else:
        logits = torch.tensor([0.3, INF if mask_value == -INF else -mask_value, mask_value], dtype=dtype)
    return logits.requires_grad_(requires_grad)


MASKS = {"-inf": -INF, "finfo.min": torch.finfo(F64).min}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_masked_categories_are_never_drawn_and_everything_stays_finite(case, mask):
    needs_log_prob(case)
    logits = _masked_logits(case, MASKS[mask])
    tau = torch.tensor(0.3, dtype=F64, requires_grad=True)
    d = case.make(tau, logits)
    x = d.rsample((500,))
    assert d.support.check(x).all()
    masked = ops.structural_zeros(logits) if case.event_dim else torch.zeros_like(logits, dtype=torch.bool)
    if case.event_dim:
        zero = -INF if case.cls is pc.ExpConcrete else 0.0
        assert (x[:, masked] == zero).all()
    else:  # the certain outcomes
        hard = x if case.cls is not pc.LogitBinaryConcrete else (x > 0).to(F64)
        assert (hard[:, 1] == 1).all() and (hard[:, 2] == 0).all()
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all()
    (lp.sum() + (x * torch.randn(x.shape[1:], dtype=F64)).sum()).backward()
    assert torch.isfinite(logits.grad).all()
    assert tau.grad is None or torch.isfinite(tau.grad).all()  # ReinMax gives the temperature none
    if case.event_dim:
        assert (logits.grad[masked] == 0).all()


@pytest.mark.parametrize("cls", [pc.Concrete, pc.ExpConcrete])
def test_masked_concrete_is_the_concrete_of_the_other_categories(cls):
    logits = torch.tensor([0.3, -INF, -0.4, 1.0], dtype=F64)
    kept = torch.tensor([0, 2, 3])
    d, face = cls(0.6, logits=logits), cls(0.6, logits=logits[kept])
    x = d.sample((50,))
    torch.testing.assert_close(d.log_prob(x), face.log_prob(x[:, kept]))
    torch.testing.assert_close(d.log_prob(x.clone()), face.log_prob(x[:, kept].clone()))
    off_face = x.clone()
    if cls is pc.ExpConcrete:
        off_face[:, 1] = -30.0  # finite where the category is masked
    else:
        off_face[:, 1] = 1e-6
    assert (d.log_prob(off_face) == -INF).all()
    probs_form = cls(0.6, probs=torch.softmax(logits, -1))
    torch.testing.assert_close(probs_form.log_prob(x), d.log_prob(x))


@pytest.mark.parametrize("estimator", ops.ESTIMATORS)
def test_masked_straight_through_log_prob_is_one_hot_categoricals(estimator):
    logits = torch.tensor([[0.3, -INF, -0.4, 1.0], [-INF, 0.5, -INF, -1.0]], dtype=F64, requires_grad=True)
    d = pc.ConcreteStraightThrough(0.5, logits=logits, estimator=estimator)
    reference = torch.distributions.OneHotCategorical(logits=logits)
    support = d.enumerate_support()
    torch.testing.assert_close(d.log_prob(support), reference.log_prob(support))
    torch.testing.assert_close(d.entropy(), reference.entropy())
    z = d.rsample((200,))
    torch.testing.assert_close(d.log_prob(z), reference.log_prob(z))
    d.log_prob(z).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_masked_temperature_gradient_is_finite_with_finfo_min():
    """``masked_fill(mask, finfo.min)`` gave a -inf temperature gradient and NaN log_prob."""
    logits = torch.tensor([0.0, 1.0, torch.finfo(torch.float32).min, 0.5]).requires_grad_()
    tau = torch.tensor(0.5, requires_grad=True)
    for cls in (pc.Concrete, pc.ExpConcrete):
        d = cls(tau, logits=logits)
        y = d.rsample((100,))
        assert d.support.check(y).all()
        lp = d.log_prob(y)
        assert torch.isfinite(lp).all()
        torch.autograd.grad(lp.sum(), (logits, tau))


# -- huge logits, every dtype -------------------------------------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def test_float16_straight_through_picks_the_right_category_at_tiny_temperature():
    """float16 logits [0, 70, -70] at τ = 1e-3 made "st" pick category 0 in every draw."""
    logits = torch.tensor([0.0, 70.0, -70.0], dtype=torch.float16, requires_grad=True)
    z = pc.ConcreteStraightThrough(1e-3, logits=logits).rsample((2000,))
    assert (z.argmax(-1) == 1).all()
    (z * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)).sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [1e-4, 1e-2, 1.0])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_every_dtype_gives_samples_in_the_support_and_finite_results(case, dtype, temperature):
    needs_log_prob(case)
    logits = (torch.randn((64,) + case.event_shape) * 30).to(dtype).requires_grad_()
    d = case.make(temperature, logits)
    x = d.rsample()
    assert x.dtype == dtype and d.support.check(x).all()
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all()
    assert torch.isfinite(d.log_prob(x.detach().clone())).all()
    (lp.sum() + x.float().sum()).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_huge_finite_logits(case):
    """Logits a quarter of float32's range apart at τ = 1e-3: ``(θ + G) / τ`` overflows float32.

    Samples saturate in the support and gradients stay finite. The Concrete and BinaryConcrete
    log-densities at such points exceed float32's range in truth (about ``+1e41``): they are
    ``+inf``, the correctly rounded value, never NaN; the log-space classes stay finite.
    """
    needs_log_prob(case)
    big = torch.finfo(torch.float32).max / 4
    logits = torch.tensor([[big, -big, 0.0, 1.0]] if case.event_dim else [big, -big, 0.0]).requires_grad_()
    d = case.make(1e-3, logits)
    x = d.rsample((10,))
    assert d.support.check(x).all()
    lp = d.log_prob(x)
    if case.cls in (pc.Concrete, pc.BinaryConcrete):
        assert not torch.isnan(lp).any() and (lp > 0).all()
    else:
        assert torch.isfinite(lp).all()
    (lp.sum() + x.sum()).backward()
    assert torch.isfinite(logits.grad).all()


# -- argument order and kernel conventions --------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_second_positional_argument_is_probs_as_in_torch(case):
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4] if case.event_dim else [0.1, 0.9])
    d = case.cls(0.5, probs, **case.kwargs)
    torch.testing.assert_close(d.probs, probs)
    logits = probs.log() if case.event_dim else probs.log() - torch.log1p(-probs)
    torch.testing.assert_close(case.cls(0.5, None, logits, **case.kwargs).probs, d.probs)


@pytest.mark.parametrize("form", ["float", "rows", "torch-rows", "scalar"])
def test_every_kernel_reads_the_temperature_one_way(form):
    logits = torch.randn(5, K, dtype=F64)
    rows = torch.full((5,), 0.7, dtype=F64)
    temperature = {
        "float": 0.7,
        "rows": rows,
        "torch-rows": rows[:, None],
        "scalar": torch.tensor(0.7, dtype=F64),
    }
    noise = ops.draw_gumbel(torch.Size([5, K]), F64, DEVICE)
    t = temperature[form]
    y, x = ops.gumbel_softmax_log_sample(logits, t, noise)
    y_ref, _ = ops.gumbel_softmax_log_sample(logits, rows, noise)
    torch.testing.assert_close(y, y_ref)
    for kernel in (ops.exp_concrete_log_density, ops.concrete_log_density_at_log_value):
        lp = kernel(y, logits, t)
        assert lp.shape == (5,)
        torch.testing.assert_close(lp, kernel(y, logits, rows))
    assert ops.concrete_log_density(x, logits, t).shape == (5,)
    binary_logits = torch.randn(5, dtype=F64)
    v = ops.binary_concrete_logit_sample(binary_logits, t if form != "torch-rows" else rows, noise[:, 0])
    assert ops.logit_binary_concrete_log_density(
        v, binary_logits, t if form != "torch-rows" else rows
    ).shape == (5,)


def test_laplace_approximation_sees_the_curvature_of_a_concrete_site():
    """Pyro's AutoLaplaceApproximation on a Concrete site got an all-zero Hessian before;
    it must equal the one for torch's RelaxedOneHotCategorical (same density, same bijection)."""
    from pyro.infer.autoguide import AutoLaplaceApproximation, init_to_value

    logits = torch.tensor([0.3, -0.5, 1.0], dtype=F64)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    point = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    data = torch.tensor([0.4, -0.1], dtype=F64)

    def hessian(make):
        def model():
            z = pyro.sample("z", make())
            with pyro.plate("data", 2):
                pyro.sample("obs", pyro_dist.Normal((z * weights).sum(-1), 1.0), obs=data)

        pyro.clear_param_store()
        guide = AutoLaplaceApproximation(model, init_loc_fn=init_to_value(values={"z": point}))
        guide()
        return guide.laplace_approximation().get_posterior().precision_matrix

    ours = hessian(lambda: pc.Concrete(torch.tensor(0.7, dtype=F64), logits=logits))
    torch_ = hessian(lambda: pyro_dist.RelaxedOneHotCategorical(torch.tensor(0.7, dtype=F64), logits=logits))
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, torch_)


@pytest.mark.parametrize("offset", [1e6, 1e10, 1e12])  # float64: base + offset exact
def test_a_large_common_offset_of_the_logits_changes_nothing(offset):
    """Shift invariance in floating point: θ + G must not be formed at θ's magnitude, nor
    log-probabilities as ``θ - logsumexp θ`` (the review found both)."""
    base = torch.tensor([0.0, 0.0, -1.0], dtype=F64)
    shifted = base + offset
    for cls in (pc.Concrete, pc.ConcreteStraightThrough):
        torch.manual_seed(8)
        x = cls(0.5, logits=base).sample((2000,))
        torch.manual_seed(8)
        y = cls(0.5, logits=shifted).sample((2000,))
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-9)  # same noise, same samples
    st, st_shifted = (
        pc.ConcreteStraightThrough(0.5, logits=base),
        pc.ConcreteStraightThrough(0.5, logits=shifted),
    )
    z = st.enumerate_support()
    torch.testing.assert_close(st_shifted.log_prob(z), st.log_prob(z))
    torch.testing.assert_close(st_shifted.entropy(), st.entropy())
    e, e_shifted = pc.ExpConcrete(0.5, logits=base), pc.ExpConcrete(0.5, logits=shifted)
    value = e.sample((10,))
    torch.testing.assert_close(e_shifted.log_prob(value), e.log_prob(value))


@pytest.mark.parametrize("case", RELAXED[:2] + ST[:1], ids=_ids(RELAXED[:2] + ST[:1]))
def test_the_fast_paths_give_the_general_paths_results(case, monkeypatch):
    """Where Python may not read values (trace, compile, torch.func), the general path runs:
    it must give the same numbers as the fast paths, masked and huge logits included."""
    import pyro_concrete.ops.concrete as kernels

    logits = torch.tensor(
        [[0.3, -INF, -0.4, 1.0], [0.2, 0.5, torch.finfo(F64).min, -1.0], [1e8, 1e8, 1e8 - 1, 0]]
    )
    logits = logits.to(F64).requires_grad_()

    def run():
        torch.manual_seed(9)
        d = case.make(torch.tensor(0.4, dtype=F64), logits)
        x = d.rsample((50,))
        lp = d.log_prob(x) + d.log_prob(x.detach().clone())
        (grad,) = torch.autograd.grad(lp.sum() + x.sum(), logits)
        return x, lp, grad

    fast = run()
    monkeypatch.setattr(kernels, "_may_branch_on_values", lambda t: False)
    general = run()
    for a, b in zip(fast, general, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_vmap_with_validation_on(case):
    """torch's own distributions validate inside vmap; so must ours (no Python bool of a tensor)."""
    needs_log_prob(case)
    logits = case.logits()
    value = case.value(case.make(0.6, logits))
    batched = torch.func.vmap(lambda lg: case.make(0.6, lg, validate_args=True).log_prob(value))(
        logits.expand(4, *logits.shape)
    )
    torch.testing.assert_close(batched, case.make(0.6, logits).log_prob(value).expand(4, 3))
