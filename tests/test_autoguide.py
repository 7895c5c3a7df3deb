"""AutoConcrete: site shapes, plates and subsampling, composition, enumeration, errors (issue 4)."""

from __future__ import annotations

import math
import pickle

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO, config_enumerate
from pyro.infer.autoguide import AutoGuideList, AutoNormal

import pyro_concrete as pc
from pyro_concrete.infer import (
    AutoConcrete,
    ExponentialDecay,
    auto_concrete_guide,
    differentiable_one_hot,
    is_concrete_site,
)


@pytest.fixture(autouse=True)
def _clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


PRIOR_Z = torch.tensor([0.5, -0.2, 1.0])


def shapes_model(data):
    """Sites of every supported form: plated, nested plates, to_event, masked, global."""
    g = pyro.sample("g", dist.Bernoulli(probs=0.3))
    with pyro.plate("data", len(data), dim=-1):
        z = pyro.sample("z", dist.OneHotCategorical(logits=PRIOR_Z))
        b = pyro.sample("b", dist.Bernoulli(logits=torch.tensor([0.2, -0.4])).to_event(1))
        with pyro.plate("inner", 2, dim=-2):
            w = pyro.sample("w", dist.Bernoulli(probs=0.6).mask(torch.tensor([True, False]).unsqueeze(-1)))
        loc = (z * torch.tensor([-1.0, 0.0, 1.0])).sum(-1) + b.sum(-1) + w.sum(-2) + g
        pyro.sample("x", dist.Normal(loc, 1.0), obs=data)


def test_sites_shapes_and_parameters():
    data = torch.randn(5)
    guide = AutoConcrete(shapes_model, estimator="reinmax", temperature=0.7)
    guide_trace = poutine.trace(guide).get_trace(data)
    model_trace = poutine.trace(poutine.replay(shapes_model, trace=guide_trace)).get_trace(data)
    for name in ("g", "z", "b", "w"):
        q, p = guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]
        assert q.batch_shape == p.batch_shape and q.event_shape == p.event_shape, name
        assert guide_trace.nodes[name]["value"].shape == model_trace.nodes[name]["value"].shape
        assert q.support.check(guide_trace.nodes[name]["value"]).all()
    assert type(guide_trace.nodes["z"]["fn"]) is pc.ConcreteStraightThrough
    assert type(guide_trace.nodes["z"]["fn"]).__name__ == "ConcreteStraightThrough"
    b_fn = guide_trace.nodes["b"]["fn"]
    assert type(b_fn.base_dist) is pc.BinaryConcreteStraightThrough and b_fn.reinterpreted_batch_ndims == 1
    assert guide_trace.nodes["z"]["fn"].estimator == "reinmax"
    assert guide_trace.nodes["z"]["fn"].temperature.unique().item() == pytest.approx(0.7)
    params = dict(pyro.get_param_store().named_parameters())
    assert set(params) == {f"AutoConcrete.logits.{n}" for n in ("g", "z", "b", "w")}
    assert guide.logits.z.shape == (5, 3) and guide.logits.b.shape == (5, 2)
    assert guide.logits.w.shape == (2, 5) and guide.logits.g.shape == ()
    # init="prior": the model's logits (normalised for the categorical)
    torch.testing.assert_close(guide.probs()["z"], PRIOR_Z.softmax(-1).expand(5, 3))
    torch.testing.assert_close(guide.probs()["g"], torch.tensor(0.3))
    # SVI runs with both ELBOs and validation on
    for model, elbo in (
        (differentiable_one_hot(shapes_model), Trace_ELBO()),
        (shapes_model, TraceMeanField_ELBO()),
    ):
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        assert torch.isfinite(torch.tensor(svi.step(data)))


def test_init_options():
    data = torch.randn(4)
    uniform = AutoConcrete(shapes_model, init="uniform")
    uniform(data)
    assert all((p == 0).all() for p in (uniform.logits.z, uniform.logits.b, uniform.logits.g))
    pyro.clear_param_store()
    jittered = AutoConcrete(shapes_model, init="uniform", init_scale=0.5)
    jittered(data)
    z = jittered.logits.z.detach()
    assert 0.2 < z.std().item() < 1.0 and not (z == 0).any()


def test_median_and_probs():
    data = torch.randn(4)
    guide = AutoConcrete(shapes_model)
    with pytest.raises(RuntimeError, match="call the guide"):
        guide.probs()
    median = guide.median(data)
    torch.testing.assert_close(median["z"], torch.eye(3)[PRIOR_Z.argmax()].expand(4, 3))
    assert median["g"].item() == 0.0  # P(g = 1) = 0.3
    assert set(median) == {"g", "z", "b", "w"}


# -- plates with subsampling -----------------------------------------------------------------------

FULL_SIZE = 10


def subsampled_model(data, subsample=None):
    with pyro.plate("data", FULL_SIZE, subsample_size=4, subsample=subsample) as idx:
        z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal((z * torch.tensor([-2.0, 0.0, 2.0])).sum(-1), 1.0), obs=data[idx])


def test_subsampling_uses_the_rows_of_the_subsample():
    data = torch.randn(FULL_SIZE)
    guide = AutoConcrete(subsampled_model, init="uniform", init_scale=1.0)
    guide_trace = poutine.trace(guide).get_trace(data)
    idx = guide_trace.nodes["data"]["value"]
    assert idx.shape == (4,)
    full = guide.logits.z.detach()
    assert full.shape == (FULL_SIZE, 3)  # parameters have the full plate size
    torch.testing.assert_close(guide_trace.nodes["z"]["fn"].logits, full[idx])
    # the model replays the guide's subsample; the scale is full_size / subsample_size
    model_trace = poutine.trace(poutine.replay(subsampled_model, trace=guide_trace)).get_trace(data)
    assert (model_trace.nodes["data"]["value"] == idx).all()
    assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == FULL_SIZE / 4


def test_subsampling_svi_updates_only_the_subsample():
    data = torch.randn(FULL_SIZE)
    fixed = torch.tensor([1, 4, 7, 8])

    def create_plates(data, subsample=None):
        return pyro.plate("data", FULL_SIZE, subsample=fixed)

    guide = AutoConcrete(subsampled_model, create_plates=create_plates)
    svi = SVI(subsampled_model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(data, fixed)
    before = guide.logits.z.detach().clone()
    svi.step(data, fixed)
    after = guide.logits.z.detach()
    changed = (after != before).any(-1)
    assert changed[fixed].all()
    assert not changed[[i for i in range(FULL_SIZE) if i not in fixed.tolist()]].any()


# -- enumeration, composition --------------------------------------------------------------------------


def mixed_model(data):
    """A continuous global, an enumerated Categorical, and a OneHotCategorical local."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
    with pyro.plate("data", len(data)):
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        loc = (z * torch.tensor([-2.0, 0.0, 2.0])).sum(-1) + torch.tensor([-0.5, 0.5])[c]
        pyro.sample("x", dist.Normal(loc, scale), obs=data)


def test_enumerated_sites_are_left_alone():
    data = torch.randn(6)
    model = poutine.block(mixed_model, hide=["scale"])
    guide = AutoConcrete(model)
    trace = poutine.trace(guide).get_trace(data)
    assert "c" not in trace.nodes and "z" in trace.nodes
    combined = AutoGuideList(mixed_model)
    combined.append(AutoConcrete(poutine.block(mixed_model, hide=["scale"])))
    combined.append(AutoNormal(poutine.block(mixed_model, expose=["scale"])))
    svi = SVI(mixed_model, combined, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = [svi.step(data) for _ in range(5)]
    assert torch.isfinite(torch.tensor(losses)).all()


def test_auto_concrete_guide_composes_with_a_continuous_autoguide():
    data = torch.randn(6)
    guide = auto_concrete_guide(mixed_model, estimator="gumbel_rao", temperature=0.3, rao_samples=4)
    assert isinstance(guide, AutoGuideList) and isinstance(guide[0], AutoConcrete)
    svi = SVI(mixed_model, guide, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = [svi.step(data) for _ in range(5)]
    assert torch.isfinite(torch.tensor(losses)).all()
    trace = poutine.trace(guide).get_trace(data)
    assert type(trace.nodes["z"]["fn"]) is pc.ConcreteStraightThrough
    assert trace.nodes["z"]["fn"].rao_samples == 4
    assert "scale" in trace.nodes and "c" not in trace.nodes
    assert set(guide[0].probs()) == {"z"}


def test_is_concrete_site():
    data = torch.randn(3)
    trace = poutine.trace(mixed_model).get_trace(data)
    chosen = {
        name for name, site in trace.nodes.items() if site["type"] == "sample" and is_concrete_site(site)
    }
    assert chosen == {"z"}


def test_explicit_autoguidelist_with_block():
    data = torch.randn(6)
    guide = AutoGuideList(mixed_model)
    guide.append(AutoConcrete(poutine.block(mixed_model, expose=["z"])))
    guide.append(AutoNormal(poutine.block(mixed_model, expose=["scale"])))
    svi = SVI(mixed_model, guide, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    assert torch.isfinite(torch.tensor(svi.step(data)))


# -- temperature ------------------------------------------------------------------------------------------


def test_temperature_schedule_is_read_on_every_call():
    data = torch.randn(3)
    schedule = ExponentialDecay(initial=1.0, rate=0.5, minimum=0.2, every=2)
    guide = AutoConcrete(shapes_model, temperature=schedule)
    seen = []
    for _ in range(8):
        seen.append(poutine.trace(guide).get_trace(data).nodes["z"]["fn"].temperature.unique().item())
        schedule.step()
    assert seen == pytest.approx([schedule(t) for t in range(8)])
    assert seen[0] == 1.0 and seen[-1] == pytest.approx(0.2)


def test_learned_temperature():
    data = torch.randn(5)
    guide = AutoConcrete(shapes_model, estimator="st", temperature=0.8, learn_temperature=True)
    svi = SVI(differentiable_one_hot(shapes_model), guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(data)
    store = pyro.get_param_store()
    assert store._constraints["AutoConcrete.temperature"] is pc.constraints.positive_finite
    first = guide.temperature.item()
    for _ in range(5):
        svi.step(data)
    assert guide.temperature.item() != first and guide.temperature.item() > 0
    assert poutine.trace(guide).get_trace(data).nodes["z"]["fn"].temperature.requires_grad


# -- rescoring handler -----------------------------------------------------------------------------------


def test_differentiable_one_hot_rescoring():
    logits = torch.randn(4, 3)

    def model():
        with pyro.plate("n", 4):
            a = pyro.sample("a", dist.OneHotCategorical(logits=logits))
            b = pyro.sample(
                "b", dist.OneHotCategorical(logits=logits).mask(torch.tensor([1, 0, 1, 1]).bool())
            )
        c = pyro.sample("c", dist.OneHotCategorical(logits=logits).to_event(1))
        d = pyro.sample("d", dist.Bernoulli(logits=logits))  # untouched
        return a, b, c, d

    plain = poutine.trace(model).get_trace()
    rescored = poutine.trace(poutine.replay(differentiable_one_hot(model), trace=plain)).get_trace()
    plain.compute_log_prob()
    rescored.compute_log_prob()
    for name in "abcd":
        torch.testing.assert_close(rescored.nodes[name]["log_prob"], plain.nodes[name]["log_prob"])
    assert type(rescored.nodes["a"]["fn"]) is pc.ConcreteStraightThrough
    assert type(rescored.nodes["c"]["fn"].base_dist) is pc.ConcreteStraightThrough
    assert type(rescored.nodes["d"]["fn"]) is type(plain.nodes["d"]["fn"])
    # the point: a gradient in the value, which torch's argmax-based log_prob lacks
    value = plain.nodes["a"]["value"].clone().requires_grad_()
    assert not dist.OneHotCategorical(logits=logits).log_prob(value).requires_grad
    (grad,) = torch.autograd.grad(rescored.nodes["a"]["fn"].log_prob(value).sum(), value)
    torch.testing.assert_close(grad, logits.log_softmax(-1))
    # enumeration is unchanged
    data = torch.randn(5)

    def enum_model(data):
        with pyro.plate("data", 5):
            z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal((z * torch.tensor([-2.0, 0.0, 2.0])).sum(-1), 1.0), obs=data)

    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    exact = elbo.loss(config_enumerate(enum_model), lambda data: None, data)
    assert elbo.loss(
        config_enumerate(differentiable_one_hot(enum_model)), lambda data: None, data
    ) == pytest.approx(exact)


# -- errors and pickling -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"estimator": "gumbel"}, ValueError, "estimator"),
        ({"rao_samples": 0}, ValueError, "rao_samples"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "0.5"}, TypeError, "temperature"),
        ({"temperature": ExponentialDecay(), "learn_temperature": True}, ValueError, "learn_temperature"),
        ({"init": "random"}, ValueError, "init"),
        ({"init_scale": -1.0}, ValueError, "init_scale"),
        ({"init_scale": "0.1"}, TypeError, "init_scale"),
        ({"rao_samples": 2.5}, TypeError, "rao_samples"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AutoConcrete(shapes_model, **kwargs)


def test_continuous_sites_are_refused_with_advice():
    guide = AutoConcrete(mixed_model)
    with pytest.raises(TypeError, match=r"'scale' is a continuous LogNormal.*auto_concrete_guide"):
        guide(torch.randn(3))


def test_pickle_round_trip():
    data = torch.randn(4)
    guide = AutoConcrete(shapes_model, temperature=ExponentialDecay(every=3))
    svi = SVI(differentiable_one_hot(shapes_model), guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(data)
    probs = guide.probs()
    copy = pickle.loads(pickle.dumps(guide))
    for name, value in copy.probs().items():
        torch.testing.assert_close(value, probs[name])
    assert copy.estimator == guide.estimator and isinstance(copy.temperature, ExponentialDecay)


@pytest.mark.parametrize(
    "temperature, error", [(0.0, ValueError), (-1.0, ValueError), (math.inf, ValueError), ("hot", TypeError)]
)
def test_bad_temperature(temperature, error):
    with pytest.raises(error, match="temperature"):
        AutoConcrete(shapes_model, temperature=temperature)
