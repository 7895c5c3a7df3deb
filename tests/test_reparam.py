"""Reparameterisers (pyro_concrete.infer.reparam) against theory and against the direct models.

- The straight-through relaxation of a discrete model, found by the strategy and trained with
  plain ``Trace_ELBO`` and with ``TraceMeanField_ELBO``, recovers the exact posterior (by
  enumeration) and the log evidence: a mixture and a spike-and-slab regression whose posteriors
  factorise, so that a mean-field guide can reach them (thresholds chosen in advance: mean
  absolute error < 0.05, exact ELBO of the learned guide within 1 nat of log p(x)).
- The relaxed and Gumbel-reparameterised sites agree in law with the direct distributions
  (two-sample Kolmogorov-Smirnov tests, fixed seeds, p > 0.001), and their moments and the
  moments' gradients agree (Pyro's own test of GumbelSoftmaxReparam, ported).
- Initialisation, Predictive, AutoNormal, AutoLaplaceApproximation and NUTS run on a
  reparameterised relaxed model; errors say what to do.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoLaplaceApproximation, AutoNormal
from pyro.infer.autoguide.initialization import InitMessenger, init_to_value
from scipy import stats

from pyro_concrete import (
    BinaryConcrete,
    BinaryConcreteStraightThrough,
    Concrete,
    ConcreteStraightThrough,
    ExpConcrete,
    LogitBinaryConcrete,
)
from pyro_concrete.infer import (
    AutoConcrete,
    AutoRelaxReparam,
    ConcreteGumbelReparam,
    ExponentialDecay,
    RelaxReparam,
    StraightThroughReparam,
)

DEVICE = torch.get_default_device()  # the run's device: tests/devices.py
LOSSES = [Trace_ELBO, TraceMeanField_ELBO]


def site(model, name, *args):
    return poutine.trace(model).get_trace(*args).nodes[name]


# -- the straight-through relaxation ---------------------------------------------------------------


def test_straight_through_site_keeps_the_law_and_scores_linearly():
    probs = torch.tensor([0.5, 0.0, 0.5])  # an exact zero must stay one

    def model():
        with pyro.plate("rows", 4):
            return pyro.sample("z", dist.OneHotCategorical(probs=probs))

    relaxed = poutine.reparam(model, config={"z": StraightThroughReparam(0.3, estimator="gumbel_rao")})
    node = site(relaxed, "z")
    fn = node["fn"]
    assert isinstance(fn, ConcreteStraightThrough) and fn.estimator == "gumbel_rao"
    assert torch.equal(fn.probs, probs.expand(4, 3)) and fn.batch_shape == (4,)
    value = node["value"]
    assert set(value.unique().tolist()) <= {0.0, 1.0} and torch.equal(value.sum(-1), torch.ones(4))
    assert torch.all(value[:, 1] == 0)
    # log_prob: the categorical one, linear in the value (derivative log p, 0 where masked)
    v = torch.eye(3)[[0, 2, 0, 2]].requires_grad_()
    log_p = fn.log_prob(v)
    assert torch.allclose(log_p, torch.full((4,), math.log(0.5)))
    (grad,) = torch.autograd.grad(log_p.sum(), v)
    assert torch.allclose(grad, torch.tensor([math.log(0.5), 0.0, math.log(0.5)]).expand(4, 3))


def test_wrappers_observed_sites_schedules_and_bernoulli():
    schedule = ExponentialDecay(initial=1.0, rate=1.0, minimum=0.1, every=1)

    def model(x):
        with pyro.plate("data", 2):
            b = pyro.sample(
                "b",
                dist.Bernoulli(logits=torch.zeros(2, 3))
                .mask(torch.tensor([True, False])[:, None])
                .to_event(1),
            )
            pyro.sample("x", dist.Bernoulli(probs=0.5 * torch.ones(2)), obs=x)
        return b

    reparam = StraightThroughReparam(schedule)
    relaxed = poutine.reparam(model, config={"b": reparam, "x": reparam})
    trace = poutine.trace(relaxed).get_trace(torch.ones(2))
    b = trace.nodes["b"]["fn"]
    assert type(b).__name__ == "Independent" and b.event_shape == (3,)
    assert isinstance(b.base_dist.base_dist, BinaryConcreteStraightThrough)  # inside the mask
    assert torch.all(b.base_dist.base_dist.temperature == 1.0)
    assert isinstance(trace.nodes["x"]["fn"], dist.Bernoulli)  # observed: left alone
    schedule.step()
    fn = poutine.trace(relaxed).get_trace(torch.ones(2)).nodes["b"]["fn"]
    assert torch.allclose(fn.base_dist.base_dist.temperature, torch.tensor(math.exp(-1.0)))
    # applied twice: the same
    twice = poutine.reparam(relaxed, config={"b": reparam})
    assert isinstance(
        site(twice, "b", torch.ones(2))["fn"].base_dist.base_dist, BinaryConcreteStraightThrough
    )


def mixture_problem(num_data=10):
    locs, prior = torch.tensor([-2.5, 0.0, 2.5]), torch.tensor([0.2, 0.3, 0.5])
    generator = torch.Generator().manual_seed(0)  # on the CPU: the same data on every device
    component = torch.randint(0, 3, (num_data,), generator=generator, device="cpu")
    data = locs[component.to(DEVICE)] + torch.randn(num_data, generator=generator, device="cpu").to(DEVICE)

    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.OneHotCategorical(probs=prior))
            pyro.sample("x", dist.Normal(z @ locs, 1.0), obs=data)

    log_joint = dist.Normal(locs, 1.0).log_prob(data[:, None]) + prior.log()

    def exact_elbo(q):
        return (q * (log_joint - q.clamp_min(1e-30).log())).sum().item()

    return model, data, log_joint.softmax(-1), log_joint.logsumexp(-1).sum().item(), exact_elbo


def spike_and_slab_problem():
    """Orthogonal design: the likelihood, hence the posterior, factorises over the features."""
    generator = torch.Generator().manual_seed(0)  # on the CPU: the same data on every device
    num_data, num_features, sigma, pi = 12, 4, 1.0, 0.3
    design, _ = torch.linalg.qr(torch.randn(num_data, num_features, generator=generator, device="cpu"))
    design = 2.0 * design.to(DEVICE)
    effects = torch.tensor([1.5, -1.0, 0.6, 0.3])
    noise = torch.randn(num_data, generator=generator, device="cpu").to(DEVICE)
    y = design @ (torch.tensor([1.0, 0.0, 1.0, 0.0]) * effects) + sigma * noise

    def model(y):
        with pyro.plate("features", num_features):
            z = pyro.sample("z", dist.Bernoulli(probs=torch.tensor(pi)))
        pyro.sample("y", dist.Normal(design @ (z * effects), sigma).to_event(1), obs=y)

    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=num_features)))
    log_joint = dist.Bernoulli(probs=torch.tensor(pi)).log_prob(configs).sum(-1)
    log_joint = log_joint + dist.Normal(configs * effects @ design.T, sigma).log_prob(y).sum(-1)
    marginals = (log_joint.softmax(0)[:, None] * configs).sum(0)

    def exact_elbo(q):
        q = q.clamp(1e-7, 1 - 1e-7)
        log_q = (configs * q.log() + (1 - configs) * (1 - q).log()).sum(-1)
        return (log_q.exp() * (log_joint - log_q)).sum().item()

    return model, y, marginals, log_joint.logsumexp(0).item(), exact_elbo


@pytest.mark.parametrize("problem", [mixture_problem, spike_and_slab_problem])
@pytest.mark.parametrize("loss", LOSSES)
def test_strategy_recovers_the_exact_posterior(problem, loss):
    model, data, exact, log_evidence, exact_elbo = problem()
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    relaxed = AutoRelaxReparam()(model)  # the model itself is unchanged
    guide = AutoConcrete(relaxed, estimator="reinmax", temperature=1.0)
    svi = SVI(relaxed, guide, pyro.optim.Adam({"lr": 0.05}), loss())
    for _ in range(600):
        svi.step(data)
    q = guide.probs()["z"].detach()
    assert (q - exact).abs().mean().item() < 0.05
    assert 0 <= log_evidence - exact_elbo(q) < 1.0


def test_strategy_configuration():
    def model(data):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        c = pyro.sample("c", dist.OneHotCategorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"})
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(a + z + c[..., 0], 1.0), obs=data)

    strategy = AutoRelaxReparam(relaxation="relaxed", temperature=0.4)
    trace = poutine.trace(strategy(model)).get_trace(torch.zeros(3))
    assert {name: type(r).__name__ for name, r in strategy.config.items()} == {
        "a": "NoneType",
        "c": "NoneType",  # enumerated: TraceEnum_ELBO's
        "z": "RelaxReparam",
        "x": "NoneType",  # observed
    }
    assert isinstance(trace.nodes["z"]["fn"], BinaryConcrete)
    assert 0 < trace.nodes["z"]["value"].min() and trace.nodes["z"]["value"].max() < 1
    # the enumerated site is still TraceEnum_ELBO's to sum out, beside the relaxed one
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(strategy(model), _guide_for_z_and_a(), torch.zeros(3))
    assert math.isfinite(loss)


def _guide_for_z_and_a():
    def guide(data):
        pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("z", BinaryConcrete(0.4, logits=torch.zeros(len(data))))

    return guide


def test_errors_say_what_to_do():
    def categorical_model():
        return pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))

    with pytest.raises(TypeError, match=r"integer-valued Categorical.*one_hot_categorical=True"):
        AutoRelaxReparam()(categorical_model)()
    with pytest.raises(TypeError, match="it cannot relax"):
        poutine.reparam(lambda: pyro.sample("n", dist.Normal(0.0, 1.0)), {"n": RelaxReparam()})()
    with pytest.raises(TypeError, match="it cannot relax"):  # relaxed already, another way
        poutine.reparam(
            lambda: pyro.sample("c", Concrete(0.5, logits=torch.zeros(3))), {"c": StraightThroughReparam()}
        )()
    with pytest.raises(ValueError, match="relaxation must be one of"):
        AutoRelaxReparam(relaxation="soft")
    with pytest.raises(ValueError, match="estimator must be one of"):
        AutoRelaxReparam(estimator="rebar")
    with pytest.raises(TypeError, match="temperature must be"):
        StraightThroughReparam("hot")
    with pytest.raises(ValueError, match="rao_samples"):
        StraightThroughReparam(rao_samples=0)
    with pytest.raises(ValueError, match="temperature"):  # checked by the distribution
        AutoRelaxReparam(temperature=-1.0)(categorical_model_one_hot)()
    with pytest.raises(TypeError, match="ConcreteGumbelReparam: site 'n' has a Normal"):
        poutine.reparam(lambda: pyro.sample("n", dist.Normal(0.0, 1.0)), {"n": ConcreteGumbelReparam()})()


def categorical_model_one_hot():
    return pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))


def test_categorical_sites_through_their_one_hot_form():
    table = torch.tensor([-1.0, 0.0, 1.0])

    def model():
        z = pyro.sample("z", dist.Categorical(probs=torch.tensor([0.2, 0.3, 0.5])))
        return z @ table  # code that reads the value linearly works with either form

    pyro.set_rng_seed(0)
    node = site(AutoRelaxReparam(one_hot_categorical=True)(model), "z")
    assert isinstance(node["fn"], ConcreteStraightThrough)
    assert node["value"].shape == (3,) and node["value"].sum() == 1
    relaxed = site(AutoRelaxReparam("relaxed", 0.5, one_hot_categorical=True)(model), "z")
    assert isinstance(relaxed["fn"], Concrete)
    # an integer initial value cannot take the one-hot form
    reparam_model = poutine.reparam(model, {"z": StraightThroughReparam(one_hot_categorical=True)})
    initialised = InitMessenger(init_to_value(values={"z": torch.tensor(1)}))(reparam_model)
    with pytest.raises(ValueError, match="already has an integer value"):
        initialised()


# -- the relaxed relaxation and the Gumbel reparameterisation, in law ---------------------------------


@pytest.mark.parametrize("relaxed_class", [Concrete, BinaryConcrete])
def test_relaxed_sites_agree_in_law_with_the_direct_distribution(relaxed_class):
    binary = relaxed_class is BinaryConcrete
    logits = torch.tensor([0.4, -0.3, 1.1])
    discrete = dist.Bernoulli(logits=logits).to_event(1) if binary else dist.OneHotCategorical(logits=logits)
    direct = relaxed_class(0.6, logits=logits)
    direct = direct.to_event(1) if binary else direct

    def model():
        with pyro.plate("draws", 20_000):
            return pyro.sample("z", discrete)

    pyro.set_rng_seed(3)
    relaxed_draws = poutine.reparam(model, {"z": RelaxReparam(0.6)})()
    direct_draws = direct.sample((20_000,))
    relaxed_draws, direct_draws = relaxed_draws.cpu().numpy(), direct_draws.cpu().numpy()
    for k in range(3):
        assert stats.ks_2samp(relaxed_draws[:, k], direct_draws[:, k]).pvalue > 1e-3


RELAXED_CLASSES = [Concrete, ExpConcrete, BinaryConcrete, LogitBinaryConcrete]


def relaxed_site(cls, logits, temperature=0.7):
    d = cls(temperature, logits=logits)
    return d.to_event(1) if cls in (BinaryConcrete, LogitBinaryConcrete) else d


@pytest.mark.parametrize("cls", RELAXED_CLASSES)
def test_gumbel_reparam_moments_gradients_and_law(cls):
    """Pyro's test of GumbelSoftmaxReparam, ported: moments and their gradients agree."""
    logits = torch.tensor([0.3, -0.5, 1.0], requires_grad=True)
    num = 20_000

    def model():
        with pyro.plate("particles", num):
            return pyro.sample("x", relaxed_site(cls, logits))

    pyro.set_rng_seed(0)
    expected = model()
    reparam_model = poutine.reparam(model, {"x": ConcreteGumbelReparam()})
    trace = poutine.trace(reparam_model).get_trace()
    actual = trace.nodes["x"]["value"]
    noise = "x_gumbel" if cls in (Concrete, ExpConcrete) else "x_logistic"
    assert [n for n in trace.stochastic_nodes if n != "particles"] == [noise]
    assert trace.nodes[noise]["fn"].event_shape == (3,)
    for e, a in [(expected.mean(0), actual.mean(0)), (expected.std(0), actual.std(0))]:
        se = expected.std(0) / math.sqrt(num)
        assert torch.all((e - a).abs() < 6 * se + 1e-6)
        (grad_e,) = torch.autograd.grad(e.sum(), logits, retain_graph=True)
        (grad_a,) = torch.autograd.grad(a.sum(), logits, retain_graph=True)
        assert torch.allclose(grad_e, grad_a, atol=0.05)
    expected, actual = expected.detach().cpu().numpy(), actual.detach().cpu().numpy()
    for k in range(3):
        assert stats.ks_2samp(expected[:, k], actual[:, k]).pvalue > 1e-3


@pytest.mark.parametrize("cls", RELAXED_CLASSES)
def test_gumbel_reparam_initialisation_inverts_the_value(cls):
    logits = torch.tensor([0.0, 1.0, -1.0])
    init = relaxed_site(cls, logits).sample()

    def model():
        return pyro.sample("x", relaxed_site(cls, logits))

    reparam_model = poutine.reparam(model, {"x": ConcreteGumbelReparam()})
    trace = poutine.trace(InitMessenger(init_to_value(values={"x": init}))(reparam_model)).get_trace()
    # the noise site holds a pre-image of the initial value, which the site reproduces
    noise_site = next(iter(trace.stochastic_nodes))
    rerun = poutine.condition(reparam_model, {noise_site: trace.nodes[noise_site]["value"]})
    assert torch.allclose(rerun(), init, rtol=1e-5, atol=1e-6)


def test_gumbel_reparam_makes_a_relaxed_model_continuous():
    """Predictive, AutoNormal, AutoLaplaceApproximation and NUTS on a relaxed model."""
    means = torch.tensor([-1.0, 0.0, 1.0])

    def model():
        z = pyro.sample("z", Concrete(0.5, logits=torch.tensor([0.0, 1.0, -1.0])))
        pyro.sample("obs", dist.Normal(z @ means, 0.3), obs=torch.tensor(0.8))

    reparam_model = poutine.reparam(model, {"z": ConcreteGumbelReparam()})
    pyro.set_rng_seed(0)
    kernel = NUTS(reparam_model)
    mcmc = MCMC(kernel, num_samples=200, warmup_steps=100, disable_progbar=True)
    mcmc.run()
    nuts_z = Predictive(reparam_model, posterior_samples=mcmc.get_samples())()["z"]
    assert nuts_z.shape == (200, 3) and torch.allclose(nuts_z.sum(-1), torch.ones(200))
    for guide_class in (AutoNormal, AutoLaplaceApproximation):
        pyro.clear_param_store()
        guide = guide_class(reparam_model)
        svi = SVI(reparam_model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
        for _ in range(150):
            svi.step()
        z = Predictive(reparam_model, guide=guide, num_samples=300)()["z"]
        # the observation pulls towards the third mean, like NUTS's posterior
        assert z.mean(0)[2] > z.mean(0)[0] and abs(z.mean(0)[2] - nuts_z.mean(0)[2]) < 0.2


def test_prior_term_passes_the_straight_through_gradient_with_a_hand_written_guide():
    """Under Trace_ELBO, torch's OneHotCategorical prior term gives the guide no gradient
    (it scores the argmax); the straight-through site of StraightThroughReparam does."""
    prior = torch.tensor([0.7, 0.2, 0.1])

    def model():
        pyro.sample("z", dist.OneHotCategorical(probs=prior))

    def guide(logits):
        pyro.sample("z", ConcreteStraightThrough(0.5, logits=logits))

    def prior_term_gradient(m):
        logits = torch.zeros(3, requires_grad=True)
        pyro.set_rng_seed(0)
        model_trace = poutine.trace(poutine.replay(m, poutine.trace(guide).get_trace(logits))).get_trace()
        log_prior = model_trace.log_prob_sum()
        if not log_prior.requires_grad:  # torch's argmax log_prob: not even a graph
            return torch.zeros(3)
        (grad,) = torch.autograd.grad(log_prior, logits)
        return grad

    assert torch.count_nonzero(prior_term_gradient(model)) == 0
    relaxed = poutine.reparam(model, config={"z": StraightThroughReparam()})
    assert torch.count_nonzero(prior_term_gradient(relaxed)) == 3


def test_the_demo_relaxes_its_discrete_model_unchanged():
    from pyro_concrete.demo.model import CategoricalVAE

    vae = CategoricalVAE(num_pixels=4, num_latents=2, num_classes=3, estimator="gumbel_softmax", hidden=(3,))
    fn = site(vae.model, "z", torch.zeros(2, 4))["fn"]
    assert isinstance(fn.base_dist, Concrete) and fn.base_dist.temperature.flatten()[0].item() == 1.0


@pytest.mark.parametrize("cls", RELAXED_CLASSES)
@pytest.mark.parametrize("init", ["feasible", "uniform"])
def test_gumbel_reparam_initial_values_off_the_support_fall_back(cls, init):
    """init_to_feasible / init_to_uniform put mass on masked categories (or strictly inside
    (0, 1) at a certain outcome): no noise reaches such a value, so the site takes the value
    its noise reaches, on the support (Pyro warns only when the value was a custom one)."""
    from pyro.infer.autoguide.initialization import init_to_feasible, init_to_uniform

    binary = cls in (BinaryConcrete, LogitBinaryConcrete)
    logits = torch.tensor([0.3, torch.inf, 1.0]) if binary else torch.tensor([0.3, -torch.inf, 1.0])

    def model():
        return pyro.sample("x", relaxed_site(cls, logits))

    init_fn = init_to_feasible if init == "feasible" else init_to_uniform
    reparam_model = poutine.reparam(model, {"x": ConcreteGumbelReparam()})
    value = poutine.trace(InitMessenger(init_fn)(reparam_model)).get_trace().nodes["x"]["value"]
    direct = relaxed_site(cls, logits)
    if cls is Concrete:
        assert value[1] == 0 and torch.isclose(value.sum(), torch.tensor(1.0))
    elif cls is ExpConcrete:
        assert value[1] == -torch.inf
    elif cls is BinaryConcrete:
        assert value[1] == 1.0
    else:
        assert value[1] == torch.inf
    assert torch.isfinite(direct.log_prob(value))
    # a custom initial value off the support: the same, and Pyro says so
    off_support = torch.full((3,), 0.5 if binary else 1 / 3)
    off_support = torch.logit(off_support) if cls is LogitBinaryConcrete else off_support
    off_support = off_support.log() if cls is ExpConcrete else off_support
    custom = InitMessenger(init_to_value(values={"x": off_support}))(reparam_model)
    with pytest.warns(RuntimeWarning, match="does not commute with initialization"):
        assert torch.isfinite(direct.log_prob(poutine.trace(custom).get_trace().nodes["x"]["value"]))


def test_reparameterisers_rebuild_their_own_sites_with_their_settings():
    def model():
        return pyro.sample("z", ConcreteStraightThrough(0.5, logits=torch.tensor([0.0, 1.0]), estimator="st"))

    fn = site(poutine.reparam(model, {"z": StraightThroughReparam(2.0, estimator="reinmax")}), "z")["fn"]
    assert fn.estimator == "reinmax" and fn.temperature.item() == 2.0
    assert torch.allclose(fn.logits.log_softmax(-1), torch.tensor([0.0, 1.0]).log_softmax(-1))
    relaxed = poutine.reparam(
        lambda: pyro.sample("c", Concrete(1.0, logits=torch.zeros(3))), {"c": RelaxReparam(0.3)}
    )
    assert site(relaxed, "c")["fn"].temperature.item() == pytest.approx(0.3)
    # the strategy's default temperature is each reparameteriser's own
    strategy = AutoRelaxReparam("relaxed")
    assert site(strategy(categorical_model_one_hot), "z")["fn"].temperature.item() == 0.5


def test_enumerated_sites_keep_their_enumeration():
    def model():
        c = pyro.sample("c", dist.OneHotCategorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c[..., 0] + z, 1.0), obs=torch.tensor(0.0))

    def guide():
        pyro.sample("z", BinaryConcreteStraightThrough(1.0, probs=torch.tensor(0.5)))

    elbo = TraceEnum_ELBO(max_plate_nesting=0)
    model_trace, _ = next(elbo._get_traces(AutoRelaxReparam()(model), guide, (), {}))
    c = model_trace.nodes["c"]
    assert isinstance(c["fn"], dist.OneHotCategorical) and c["infer"]["enumerate"] == "parallel"
    assert c["value"].shape == (2, 2)  # both values, along an enumeration dimension
    assert isinstance(model_trace.nodes["z"]["fn"], BinaryConcreteStraightThrough)


def test_one_hot_initial_values_of_categorical_sites_are_accepted():
    def model():
        return pyro.sample("z", dist.Categorical(probs=torch.tensor([0.2, 0.3, 0.5])))

    reparam_model = poutine.reparam(model, {"z": StraightThroughReparam(one_hot_categorical=True)})
    one_hot = torch.tensor([0.0, 1.0, 0.0])
    with pyro.validation_enabled(False):  # Pyro checks the value against the original Categorical
        value = InitMessenger(init_to_value(values={"z": one_hot}))(reparam_model)()
    assert torch.equal(value, one_hot)
