"""GumbelSoftmax_ELBO: Jang et al. 2017's objective, checked against its definition.

The loss is ``-E[log p(x | z̃)] + KL(Cat(q) || Cat(p))`` at relaxed sites: the tests compute
the right-hand side by hand (the sample from the guide's trace, the categorical or Bernoulli
KL in float64 from the logits) and compare, including masked categories, wrappers, plates and
gradients; other sites keep ``TraceMeanField_ELBO``'s term, and pairings with no discrete KL
raise.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_concrete import BinaryConcrete, Concrete, ExpConcrete, LogitBinaryConcrete
from pyro_concrete.infer import GumbelSoftmax_ELBO

DEVICE = torch.get_default_device()  # the run's device: tests/devices.py
WEIGHTS = torch.tensor([-1.0, 0.5, 2.0, 0.0], dtype=torch.float64)


def categorical_kl(q_logits, p_logits):
    """KL of two categoricals from logits, float64, 0 log 0 = 0, by the definition."""
    q = torch.softmax(q_logits.double(), -1)
    log_q = torch.log_softmax(q_logits.double(), -1)
    log_p = torch.log_softmax(p_logits.double(), -1)
    terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    return terms.sum(-1)


def bernoulli_kl(q_logits, p_logits):
    q, p = torch.sigmoid(q_logits.double()), torch.sigmoid(p_logits.double())
    return q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())


def run(elbo, model, guide, *args):
    """The loss and the guide's sample of site "z" from one shared random draw."""
    pyro.set_rng_seed(7)
    loss = elbo.differentiable_loss(model, guide, *args)
    pyro.set_rng_seed(7)
    trace = poutine.trace(guide).get_trace(*args)
    return loss, trace.nodes["z"]["value"]


@pytest.mark.parametrize(
    "guide_class, prior_class", [(Concrete, Concrete), (Concrete, "one_hot"), (ExpConcrete, ExpConcrete)]
)
def test_categorical_loss_is_relaxed_likelihood_plus_discrete_kl(guide_class, prior_class):
    prior_logits = torch.tensor([0.0, -1.0, 0.5, -torch.inf], dtype=torch.float64)
    q_logits = torch.tensor([[1.0, -2.0, 0.3, -torch.inf], [0.0, 3.0, -1.0, -torch.inf]], dtype=torch.float64)
    x = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def point(z):
        return z.exp() if guide_class is ExpConcrete else z

    def model(x):
        with pyro.plate("data", 2):
            if prior_class == "one_hot":
                prior = dist.OneHotCategorical(logits=prior_logits)
            else:
                prior = prior_class(0.4, logits=prior_logits)  # another temperature: no part
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(point(z) @ WEIGHTS, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", 2):
            pyro.sample("z", guide_class(0.7, logits=q_logits))

    with pyro.validation_enabled(prior_class != "one_hot"):  # a soft value is off a one-hot support
        loss, z = run(GumbelSoftmax_ELBO(), model, guide, x)
    log_lik = dist.Normal(point(z) @ WEIGHTS, 0.5).log_prob(x).sum()
    expected = -log_lik + categorical_kl(q_logits, prior_logits).sum()
    assert torch.allclose(loss, expected, rtol=1e-12, atol=1e-12)


def test_binary_sites_and_wrappers():
    q_logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 4.0, -3.0]], dtype=torch.float64)
    p_logits = torch.tensor([0.2, -0.3, 1.0], dtype=torch.float64)
    x = torch.tensor([1.0, -1.0], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", 2):
            z = pyro.sample("z", LogitBinaryConcrete(0.5, logits=p_logits).to_event(1))
            pyro.sample("x", dist.Normal(torch.sigmoid(z).sum(-1), 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", 2):
            pyro.sample("z", LogitBinaryConcrete(0.5, logits=q_logits).to_event(1))

    loss, z = run(GumbelSoftmax_ELBO(), model, guide, x)
    expected = (
        -dist.Normal(torch.sigmoid(z).sum(-1), 1.0).log_prob(x).sum() + bernoulli_kl(q_logits, p_logits).sum()
    )
    assert torch.allclose(loss, expected, rtol=1e-12)

    # BinaryConcrete guide against a Bernoulli model site, expanded and masked
    def model2(x):
        with pyro.plate("data", 2):
            prior = (
                dist.Bernoulli(logits=p_logits).expand([2, 3]).mask(torch.tensor([True, False]).unsqueeze(-1))
            )
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    def guide2(x):
        with pyro.plate("data", 2):
            q = BinaryConcrete(0.5, logits=q_logits).mask(torch.tensor([True, False]).unsqueeze(-1))
            pyro.sample("z", q.to_event(1))

    with pyro.validation_enabled(False):
        loss, z = run(GumbelSoftmax_ELBO(), model2, guide2, x)
    expected = -dist.Normal(z.sum(-1), 1.0).log_prob(x).sum() + bernoulli_kl(q_logits, p_logits)[0].sum()
    assert torch.allclose(loss, expected, rtol=1e-12)


def test_gradient_of_the_kl_term():
    """With a likelihood that ignores z, the gradient is that of the categorical KL alone."""
    p_logits = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    q_logits = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64, requires_grad=True)

    def model():
        pyro.sample("z", Concrete(0.5, logits=p_logits))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0, dtype=torch.float64))

    def guide():
        pyro.sample("z", Concrete(0.5, logits=q_logits))

    loss = GumbelSoftmax_ELBO().differentiable_loss(model, guide)
    (grad,) = torch.autograd.grad(loss, q_logits)
    (expected,) = torch.autograd.grad(categorical_kl(q_logits, p_logits), q_logits)
    assert torch.allclose(grad, expected, rtol=1e-12)
    assert math.isclose(loss.item(), categorical_kl(q_logits, p_logits).item() + 0.5 * math.log(2 * math.pi))


def test_other_sites_keep_trace_mean_field_terms():
    def model():
        pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("w", dist.Normal(0.3, 0.7))

    ours = GumbelSoftmax_ELBO().differentiable_loss(model, guide)
    theirs = TraceMeanField_ELBO().differentiable_loss(model, guide)
    assert torch.equal(ours, theirs)


def test_relaxed_guide_needs_a_relaxed_or_discrete_model_site():
    def model():
        pyro.sample("z", dist.Dirichlet(torch.ones(3)))

    def guide():
        pyro.sample("z", Concrete(0.5, logits=torch.zeros(3)))

    with pytest.raises(
        TypeError, match=r"at site 'z' the guide is a relaxed Concrete \(values on the simplex"
    ):
        GumbelSoftmax_ELBO().differentiable_loss(model, guide)

    def log_space_model():
        pyro.sample("z", ExpConcrete(0.5, logits=torch.zeros(3)))

    with pytest.raises(TypeError, match="ExpConcrete for ExpConcrete"), pyro.validation_enabled(False):
        GumbelSoftmax_ELBO().differentiable_loss(log_space_model, guide)

    def binary_model():
        pyro.sample("z", BinaryConcrete(0.5, logits=torch.zeros(3)).to_event(1))

    def categorical_guide():
        pyro.sample("z", Concrete(0.5, logits=torch.zeros(3)))

    with pytest.raises(TypeError, match="same kind and space"), pyro.validation_enabled(False):
        GumbelSoftmax_ELBO().differentiable_loss(binary_model, categorical_guide)


def test_torch_relaxed_classes_and_svi_step():
    """torch's RelaxedOneHotCategorical sites work too, and SVI learns the posterior's mode."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    means = torch.tensor([-2.0, 0.0, 2.0])

    def model(x):
        z = pyro.sample("z", dist.RelaxedOneHotCategorical(torch.tensor(0.3), logits=torch.zeros(3)))
        pyro.sample("x", dist.Normal(z @ means, 0.3).expand([x.shape[0]]).to_event(1), obs=x)

    def guide(x):
        logits = pyro.param("logits", torch.zeros(3))
        pyro.sample("z", dist.RelaxedOneHotCategorical(torch.tensor(0.3), logits=logits))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), GumbelSoftmax_ELBO())
    x = torch.full((10,), 2.0)
    for _ in range(300):
        svi.step(x)
    assert pyro.param("logits").argmax().item() == 2


@pytest.mark.parametrize("vectorize", [False, True])
def test_subsampling_masks_and_vectorized_particles(vectorize):
    """The KL term is scaled by the subsample and masked as TraceMeanField_ELBO's is."""
    generator = torch.Generator().manual_seed(0)  # on the CPU: the same logits on every device
    q_logits = torch.randn(6, 3, generator=generator, dtype=torch.float64, device="cpu").to(DEVICE)
    p_logits = torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64)
    keep = torch.tensor([True, False, True, True, False, True])
    index = torch.tensor([0, 1, 3])

    def model():
        with pyro.plate("data", 6, subsample=index) as i, poutine.mask(mask=keep[i]):
            pyro.sample("z", Concrete(0.5, logits=p_logits))
        zero = torch.tensor(0.0, dtype=torch.float64)
        pyro.sample("x", dist.Normal(zero, 1.0), obs=zero)

    def guide():
        with pyro.plate("data", 6, subsample=index) as i, poutine.mask(mask=keep[i]):
            pyro.sample("z", Concrete(0.5, logits=q_logits[i]))

    elbo = GumbelSoftmax_ELBO(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide)
    kl = categorical_kl(q_logits[index], p_logits) * keep[index]
    expected = 6 / 3 * kl.sum() + 0.5 * math.log(2 * math.pi)
    assert torch.allclose(loss, expected, rtol=1e-12)
