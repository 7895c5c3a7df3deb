"""Shapes, parameters, pickling and bad input of Concrete / ExpConcrete (issue 2, criteria 5 and 6)."""

import io
import math
import pickle

import pytest
import torch
from torch.distributions import constraints as torch_constraints

import pyro_concrete
from pyro_concrete import Concrete, ExpConcrete, GumbelSoftmax

CLASSES = [Concrete, ExpConcrete]


def test_gumbel_softmax_alias():
    assert GumbelSoftmax is Concrete


@pytest.mark.parametrize("cls", CLASSES)
def test_temperature_is_a_parameter(cls):
    assert isinstance(cls.arg_constraints["temperature"], type(pyro_concrete.constraints.positive_finite))
    assert cls.arg_constraints["temperature"].check(torch.tensor([1e-30, 1.0, 1e30])).all()
    t = torch.tensor([0.1, 0.5, 2.0])
    d = cls(t, logits=torch.randn(4))
    assert d.batch_shape == (3,) and d.event_shape == (4,)
    assert d.temperature.shape == (3,)
    e = d.expand((5, 3))
    assert type(e) is cls
    assert e.batch_shape == (5, 3) and e.temperature.shape == (5, 3)
    torch.testing.assert_close(e.temperature[2], t)
    assert e.rsample().shape == (5, 3, 4)
    assert e.log_prob(e.rsample((2,))).shape == (2, 5, 3)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("temperature", [0.5, 2, torch.tensor(0.5)])
def test_float_temperature(cls, temperature):
    d = cls(temperature, logits=torch.randn(2, 3))
    assert d.batch_shape == (2,)
    assert d.temperature.dtype == torch.float32
    x = d.rsample((7,))
    assert x.shape == (7, 2, 3)
    assert d.log_prob(x).shape == (7, 2)
    assert d.expand((4, 2)).log_prob(x[:, None]).shape == (7, 4, 2)


@pytest.mark.parametrize("cls", CLASSES)
def test_torch_style_column_temperature(cls):
    """A temperature of shape (n, 1) with logits (n, K) gives batch shape (n,) (torch: (n, n))."""
    n, k = 5, 4
    temperature = torch.linspace(0.2, 2.0, n).unsqueeze(-1)
    d = cls(temperature, logits=torch.randn(n, k))
    assert d.batch_shape == (n,)
    assert d.log_prob(d.rsample()).shape == (n,)
    torch.testing.assert_close(d.temperature, temperature.squeeze(-1))
    assert cls.infer_shapes(temperature=(n, 1), logits=(n, k)) == ((n,), (k,))
    # a temperature with fewer dimensions broadcasts with the batch shape as usual
    assert cls(torch.ones(n), logits=torch.randn(n, k)).batch_shape == (n,)
    assert cls(torch.ones(3, 1, 1), logits=torch.randn(n, k)).batch_shape == (3, n)
    with pytest.raises(ValueError, match="temperature"):
        cls(torch.ones(3, 1), logits=torch.randn(n, k))  # (3,) against batch shape (5,)
    assert cls(torch.ones(1), logits=torch.randn(k)).batch_shape == ()


@pytest.mark.parametrize("cls", CLASSES)
def test_batched_temperature_gradients_are_per_element(cls):
    temperature = torch.tensor([0.3, 1.0], requires_grad=True)
    logits = torch.randn(2, 3, requires_grad=True)
    d = cls(temperature, logits=logits)
    x = d.rsample((4,))
    (d.log_prob(x)[:, 0].sum() + x[..., 0, 0].sum()).backward()
    assert temperature.grad[0] != 0 and temperature.grad[1] == 0
    assert (logits.grad[1] == 0).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_sample_shapes_to_event_and_sample(cls):
    d = cls(0.5, logits=torch.randn(3, 4))
    assert d.sample((2, 5)).shape == (2, 5, 3, 4)
    assert not d.sample().requires_grad
    ind = d.to_event(1)
    assert ind.batch_shape == () and ind.event_shape == (3, 4)
    x = ind.rsample((6,))
    assert ind.log_prob(x).shape == (6,)
    torch.testing.assert_close(ind.log_prob(x), d.log_prob(x).sum(-1))
    assert cls.infer_shapes(temperature=(), logits=(3, 4)) == ((3,), (4,))


@pytest.mark.parametrize("cls", CLASSES)
def test_pickle_round_trip(cls):
    d = cls(torch.tensor([0.5, 1.5]), logits=torch.randn(2, 6))
    x = d.rsample()  # the remembered sample is not part of the pickled state
    d2 = pickle.loads(pickle.dumps(d))
    assert type(d2) is cls and d2.batch_shape == d.batch_shape
    torch.testing.assert_close(d2.logits, d.logits)
    torch.testing.assert_close(d2.temperature, d.temperature)
    torch.testing.assert_close(d2.log_prob(x.detach()), d.log_prob(x.detach()))
    buffer = io.BytesIO()
    torch.save(d, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False).batch_shape == d.batch_shape


@pytest.mark.parametrize("cls", CLASSES)
def test_probs_and_repr_and_support(cls):
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    d = cls(0.7, probs=probs)
    torch.testing.assert_close(d.probs, probs)
    torch.testing.assert_close(torch.softmax(d.logits, -1), probs)
    text = repr(d)
    assert cls.__name__ in text and "temperature: 0.7" in text and "batch_shape: (2,)" in text
    assert d.has_rsample
    assert isinstance(d.support, torch_constraints.Constraint) and d.support.event_dim == 1
    assert cls(0.7, logits=torch.zeros(3)).probs.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("cls", CLASSES)
def test_dtypes_follow_the_parameters(cls):
    d = cls(torch.tensor(0.5, dtype=torch.float64), logits=torch.randn(3))
    assert d.logits.dtype == d.temperature.dtype == torch.float64
    assert d.rsample().dtype == torch.float64
    assert cls(0.5, logits=torch.tensor([1, 2, 3])).logits.is_floating_point()


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf, torch.tensor([0.5, -0.1])])
def test_bad_temperature(cls, temperature):
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature, logits=torch.randn(2, 3))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_bad_logits(cls, bad):
    logits = torch.randn(2, 3)
    logits[1, 2] = bad
    with pytest.raises(ValueError, match="logits"):
        cls(0.5, logits=logits)


@pytest.mark.parametrize("cls", CLASSES)
def test_every_category_masked_is_an_error(cls):
    logits = torch.randn(2, 3)
    logits[1] = -math.inf  # -inf masks a category; a row with none left has no distribution
    with pytest.raises(ValueError, match="every category is masked"):
        cls(0.5, logits=logits)
    with pytest.raises(ValueError, match="probs"):
        cls(0.5, probs=torch.zeros(3))


def test_huge_but_finite_logits_are_accepted():
    logits = torch.tensor([3e38, -3e38, 3e38])  # the sum overflows; every entry is finite
    assert Concrete(1.0, logits=logits).batch_shape == ()


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "probs",
    [torch.tensor([0.5, 0.6, -0.1]), torch.tensor([0.2, 0.2, 0.2]), torch.tensor([1.0, 0.0, 0.1])],
)
def test_bad_probs(cls, probs):
    with pytest.raises(ValueError, match="probs"):
        cls(0.5, probs=probs)


@pytest.mark.parametrize("cls", CLASSES)
def test_both_or_neither_logits_and_probs(cls):
    with pytest.raises(ValueError, match=r"logits.*probs"):
        cls(0.5)
    with pytest.raises(ValueError, match=r"logits.*probs"):
        cls(0.5, logits=torch.zeros(3), probs=torch.ones(3) / 3)


@pytest.mark.parametrize("cls", CLASSES)
def test_wrong_types(cls):
    with pytest.raises(TypeError, match="logits"):
        cls(0.5, logits=[0.0, 1.0])
    with pytest.raises(TypeError, match="temperature"):
        cls("hot", logits=torch.zeros(3))
    with pytest.raises(ValueError, match="logits"):
        cls(0.5, logits=torch.tensor(1.0))  # no event dimension


def test_temperature_that_does_not_broadcast():
    with pytest.raises(ValueError, match="temperature"):
        Concrete(torch.ones(4), logits=torch.randn(3, 5))


@pytest.mark.parametrize(
    "cls, value",
    [
        (Concrete, torch.tensor([0.5, 0.6, -0.1])),
        (Concrete, torch.tensor([0.2, 0.2, 0.2])),
        (Concrete, torch.tensor([0.2, math.nan, 0.8])),
        (ExpConcrete, torch.tensor([0.5, -1.0, -2.0])),
        (ExpConcrete, torch.tensor([-1.0, -1.0, -1.0])),
        (ExpConcrete, torch.tensor([-math.inf, -math.inf, -math.inf])),
    ],
)
def test_value_outside_support(cls, value):
    d = cls(0.5, logits=torch.zeros(3), validate_args=True)
    with pytest.raises(ValueError, match="value"):
        d.log_prob(value)
    # without validation, a value of the wrong shape still fails clearly
    with pytest.raises((ValueError, RuntimeError)):
        d.log_prob(torch.ones(4) / 4)


def test_validation_off_skips_checks():
    d = Concrete(0.5, logits=torch.zeros(3), validate_args=False)
    assert not d._validate_args
    d.log_prob(torch.tensor([0.2, 0.2, 0.2]))  # no error: validation is off


def test_validation_follows_torch_default():
    torch.distributions.Distribution.set_default_validate_args(False)
    d = Concrete(0.5, logits=torch.zeros(3))
    assert not d._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    assert d._validate_args  # like torch: follows the global default when not given


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "temperature, dtype",
    [(1e-50, torch.float32), (1e39, torch.float32), (1e-20, torch.float32), (1e-160, torch.float64)],
)
def test_python_temperature_that_does_not_fit_the_dtype(cls, temperature, dtype):
    """A float that rounds to 0 or inf in the logits' dtype, or is below ``sqrt(tiny)`` (where
    the temperature's derivative ``1 / τ²`` overflows), is not a temperature."""
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature, logits=torch.randn(3).to(dtype))


@pytest.mark.parametrize("cls", CLASSES)
def test_no_categories(cls):
    with pytest.raises(ValueError, match="logits"):
        cls(0.5, logits=torch.zeros(3, 0))
