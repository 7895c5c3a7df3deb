"""The straight-through classes' ``log_prob`` fast path against their general expression.

Where no category is masked (no binary outcome is certain) and every ``|log p|`` is at most
``sqrt(finfo.max)``, ``log_prob`` is the plain product ``value · log p`` summed (binary:
``value · log p1 + (1 - value) · log p0``); elsewhere, and wherever Python may not read values
(``_may_branch_on_values``: trace, compile, ``torch.func``, accelerators), the general
expression of ``_weighted_log_probs``. The two must give the same bits: the value, and the
first and second derivatives with respect to the value, the logits and the temperature.
The general path is forced as ``tests/test_contracts.py`` forces it, by patching
``_may_branch_on_values`` to False.
"""

import pytest
import torch

import pyro_concrete.distributions.straight_through as st_module
import pyro_concrete.ops.concrete as kernels
from pyro_concrete import BinaryConcreteStraightThrough, ConcreteStraightThrough

F32_MAX = torch.finfo(torch.float32).max
ON_CPU = torch.get_default_device().type == "cpu"  # elsewhere the general path always runs


def assert_same_bits(a, b):
    """Equal values, NaN where NaN, and the same sign of every zero."""
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.isnan(), b.isnan())
    assert torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))
    assert torch.equal(torch.signbit(a), torch.signbit(b))


def derivatives(cls, logits, tau, value_of, dtype):
    """``log_prob`` of ``value_of(rsample)`` (+ a leaf ``u`` of zeros, so that the value has a
    derivative of its own) and its first and second derivatives in ``(u, logits, τ)``, a model
    term ``value · w`` included."""
    logits = logits.detach().to(dtype).requires_grad_()
    tau = torch.tensor(tau, dtype=dtype, requires_grad=True)
    torch.manual_seed(11)
    d = cls(tau, logits=logits, validate_args=False)
    value = value_of(d.rsample((3,)))
    u = torch.zeros_like(value, requires_grad=True)
    value = value + u
    lp = d.log_prob(value)
    w = torch.linspace(-1, 1, value.numel(), dtype=value.dtype).view(value.shape)
    wrt = (u, logits, tau)
    first = torch.autograd.grad(lp.sum() + (value * w).sum(), wrt, create_graph=True)
    projection = sum(
        (g * torch.linspace(0.5, 2, g.numel(), dtype=g.dtype).view(g.shape)).sum() for g in first
    )
    second = torch.autograd.grad(projection, wrt, allow_unused=True)
    return [lp, *first, *second]


def compare(monkeypatch, cls, logits, tau, value_of, dtype, *, fast_expected):
    calls = []
    general = st_module._weighted_log_probs

    def spy(*args):
        calls.append(1)
        return general(*args)

    with monkeypatch.context() as patch:
        patch.setattr(st_module, "_weighted_log_probs", spy)
        fast = derivatives(cls, logits, tau, value_of, dtype)
        took_fast = not calls
        patch.setattr(kernels, "_may_branch_on_values", lambda t: False)
        calls.clear()
        slow = derivatives(cls, logits, tau, value_of, dtype)
    assert calls, "the general path must run where Python may not read values"
    assert took_fast == (fast_expected and ON_CPU)
    for a, b in zip(fast, slow, strict=True):
        assert_same_bits(a, b)
    return fast


def one_hot(x):
    return x


def off_vertices(x):
    """Interior points of the simplex (or of [0, 1]), still on the sample's path."""
    return 0.7 * x + 0.3 / (x.shape[-1] if x.dim() > 1 and x.shape[-1] > 1 else 2)


def categorical_logits(kind):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4, 6, generator=g)
    return {
        "plain": base,
        "common-offset": base + 1e8,  # |log p| small, logits large
        "spread-1e15": base * 1e15,  # |log p| up to ~1e15 < sqrt(finfo.max)
        "beyond-sqrt-max": base * 1e20,  # |log p| > sqrt(finfo.max): the general path
        "masked-inf": base.index_fill(-1, torch.tensor([1]), -torch.inf),
        "masked-finfo-min": base.index_fill(-1, torch.tensor([2]), torch.finfo(torch.float32).min),
    }[kind]


CATEGORICAL = [
    ("plain", True),
    ("common-offset", True),
    ("spread-1e15", True),
    ("beyond-sqrt-max", False),
    ("masked-inf", False),
    ("masked-finfo-min", False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("value_of", [one_hot, off_vertices], ids=["one-hot", "off-vertices"])
@pytest.mark.parametrize("kind, fast", CATEGORICAL, ids=[k for k, _ in CATEGORICAL])
def test_categorical_fast_path_is_the_general_expression(kind, fast, value_of, dtype, monkeypatch):
    if dtype == torch.float64 and kind in ("beyond-sqrt-max", "masked-finfo-min"):
        fast = True  # 1e20 and float32's finfo.min are far within float64's bounds
    compare(
        monkeypatch,
        ConcreteStraightThrough,
        categorical_logits(kind),
        0.4,
        value_of,
        dtype,
        fast_expected=fast,
    )


def test_categorical_masked_value_scores_minus_inf_on_the_general_path(monkeypatch):
    """A value with weight on a masked category: -inf, whichever path decides."""
    logits = categorical_logits("masked-inf")
    d = ConcreteStraightThrough(0.5, logits=logits, validate_args=False)
    value = torch.zeros(4, 6).index_fill(-1, torch.tensor([1]), 1.0)
    assert torch.equal(d.log_prob(value), torch.full((4,), -torch.inf))


def test_float16_masking_is_decided_in_the_logits_dtype(monkeypatch):
    """float16 logits 40000 apart: masked in float16 (gap finfo.max / 2 = 32752), while the
    float32 log-probabilities (about -4e4) are far within sqrt(finfo.max): only the check on
    the logits sends this to the general path."""
    logits = torch.tensor([[0.0, -40000.0, 1.0], [0.5, 0.0, -1.0]], dtype=torch.float16)
    d = ConcreteStraightThrough(0.5, logits=logits, validate_args=False)
    value = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float16)
    assert d.log_prob(value)[0] == -torch.inf  # the masked category
    compare(monkeypatch, ConcreteStraightThrough, logits, 0.5, one_hot, torch.float16, fast_expected=False)
    compare(
        monkeypatch, ConcreteStraightThrough, logits[1:], 0.5, off_vertices, torch.float16, fast_expected=True
    )


BINARY = [
    ("plain", torch.randn(5), True),
    ("large", torch.tensor([1e15, -1e15, 3.0, -2.0, 0.0]), True),  # |log p| ~1e15
    ("beyond-sqrt-max", torch.tensor([1e20, -0.5, 3.0, -2.0, 0.0]), False),
    ("certain-inf", torch.tensor([torch.inf, -torch.inf, 3.0, -2.0, 0.0]), False),
    ("certain-finfo", torch.tensor([F32_MAX, -0.5, 3.0, -2.0, 0.0]), False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("value_of", [one_hot, off_vertices], ids=["zero-one", "off-vertices"])
@pytest.mark.parametrize("kind, logits, fast", BINARY, ids=[k for k, _, _ in BINARY])
def test_binary_fast_path_is_the_general_expression(kind, logits, fast, value_of, dtype, monkeypatch):
    if dtype == torch.float64 and kind in ("beyond-sqrt-max", "certain-finfo"):
        fast = True  # neither is beyond float64's bounds
    compare(monkeypatch, BinaryConcreteStraightThrough, logits, 0.4, value_of, dtype, fast_expected=fast)


def test_binary_float16_certainty_is_decided_in_the_logits_dtype(monkeypatch):
    logits = torch.tensor([40000.0, -0.5, 2.0], dtype=torch.float16)  # certain in float16
    compare(
        monkeypatch, BinaryConcreteStraightThrough, logits, 0.5, one_hot, torch.float16, fast_expected=False
    )
    compare(
        monkeypatch,
        BinaryConcreteStraightThrough,
        logits[1:],
        0.5,
        one_hot,
        torch.float16,
        fast_expected=True,
    )


@pytest.mark.parametrize(
    "cls, shape", [(ConcreteStraightThrough, (0, 4)), (BinaryConcreteStraightThrough, (0,))]
)
def test_empty_batch(cls, shape):
    d = cls(0.5, logits=torch.zeros(shape))
    assert d.log_prob(d.sample()).shape == (0,)
