r"""Reparameterisers for ``poutine.reparam``: relax a discrete model without rewriting it.

Pyro's :func:`~pyro.poutine.reparam` separates modelling from inference: the model is written
as believed, and a reparameteriser changes how a site is represented for inference. This
module brings the relaxations of this package into it (the request of Pyro issue 2689):

- :class:`StraightThroughReparam`: a ``OneHotCategorical`` or ``Bernoulli`` site becomes a
  :class:`~pyro_concrete.ConcreteStraightThrough` or
  :class:`~pyro_concrete.BinaryConcreteStraightThrough` site of the same probabilities: the
  same law, exact discrete values, the exact discrete ``log_prob`` (linear in a one-hot value,
  so a straight-through guide's gradient reaches the prior term), the estimator and
  temperature of its own ``rsample`` chosen here. ``Trace_ELBO`` and ``TraceMeanField_ELBO``
  are then right with any straight-through guide, with no other wrapper.
- :class:`RelaxReparam`: such a site becomes the relaxed distribution
  (:class:`~pyro_concrete.Concrete`, :class:`~pyro_concrete.BinaryConcrete`) at a
  temperature: the model becomes the relaxed model of Maddison et al. 2017, and the code after
  the site reads points of the simplex (or of ``[0, 1]``).
- :class:`ConcreteGumbelReparam`: a site of this package's relaxed classes becomes a
  deterministic function of parameter-free noise (standard Gumbel for ``Concrete`` and
  ``ExpConcrete``, standard Logistic for ``BinaryConcrete`` and ``LogitBinaryConcrete``), so
  that ``AutoNormal``, ``AutoLaplaceApproximation``, NUTS and ``Predictive`` work on relaxed
  models; Pyro's ``GumbelSoftmaxReparam`` does this for torch's ``RelaxedOneHotCategorical``
  only.
- :class:`AutoRelaxReparam`: a strategy (like Pyro's ``AutoReparam``) that applies one of the
  first two to every latent discrete site of a model.

Observed sites are left alone, and so are sites marked for enumeration
(``infer={"enumerate": ...}``) by the strategy: those belong to ``TraceEnum_ELBO``. Handlers
that observe or mark sites must therefore see the site first: apply ``poutine.condition``,
``config_enumerate`` and the like to the model *inside* the reparameteriser,
``AutoRelaxReparam()(poutine.condition(model, data))``; wrapped the other way round, the
reparameteriser runs first and relaxes a site that is about to be observed or enumerated.

Integer ``Categorical`` sites: a gradient cannot pass through an integer index, so neither
relaxation can keep the value an integer. With ``one_hot_categorical=True`` the site is relaxed
through its one-hot form, and the model code after it receives one-hot vectors (straight-through)
or points of the simplex (relaxed) of shape ``(..., K)`` instead of indices: use it for model
code that reads the value linearly (``z @ table``, not ``table[z]``). Without it, such a site
raises a ``TypeError`` that says what to do.
"""

from __future__ import annotations

from typing import Any, cast

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.infer.reparam.reparam import Reparam, ReparamMessage, ReparamResult
from pyro.infer.reparam.strategies import Strategy
from pyro.poutine.util import site_is_subsample
from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from .. import _sites, ops
from .._checks import check_int
from ..distributions import (
    BinaryConcrete,
    BinaryConcreteStraightThrough,
    Concrete,
    ConcreteStraightThrough,
    ExpConcrete,
    LogitBinaryConcrete,
)
from ..ops.binary import logit_of_unit_point
from ..ops.concrete import log_of_simplex_point
from ..ops.straight_through import ESTIMATORS
from .schedules import TemperatureSchedule

__all__ = [
    "AutoRelaxReparam",
    "ConcreteGumbelReparam",
    "RelaxReparam",
    "StraightThroughReparam",
]

RELAXATIONS = ("straight_through", "relaxed")


def _unchanged(msg: ReparamMessage) -> ReparamResult:
    return {"fn": msg["fn"], "value": msg["value"], "is_observed": bool(msg["is_observed"])}


class _DiscreteRelaxation(Reparam):
    """What the two relaxations of a discrete site share: the temperature and the reading of
    the site's distribution (exact probs, masks, wrappers)."""

    _results: tuple[type, type] = (type(None), type(None))  # what it makes: (categorical, binary)

    def __init__(self, temperature: float | torch.Tensor | TemperatureSchedule, one_hot_categorical: bool):
        if not isinstance(temperature, TemperatureSchedule):
            # the distributions check a tensor or float temperature when they are built
            if isinstance(temperature, bool) or not isinstance(temperature, (float, int, torch.Tensor)):
                raise TypeError(
                    "temperature must be a float, a tensor or a TemperatureSchedule, "
                    f"got {type(temperature).__name__}"
                )
        if not isinstance(one_hot_categorical, bool):
            raise TypeError(f"one_hot_categorical must be a bool, got {type(one_hot_categorical).__name__}")
        self.temperature = temperature
        self.one_hot_categorical = one_hot_categorical

    def current_temperature(self) -> float | torch.Tensor:
        """The temperature now: the schedule's current value, or the fixed one."""
        if isinstance(self.temperature, TemperatureSchedule):
            return self.temperature.temperature
        return self.temperature

    def _options(self) -> dict[str, Any]:
        """Keyword arguments of the classes this reparameteriser makes, besides the parameters."""
        return {}

    def _build(self, binary: bool, base: Distribution) -> Distribution:
        """The relaxed (``_results[1]`` if ``binary`` else ``_results[0]``) twin of ``base``: the
        same probabilities (given probs read exactly) and validation setting."""
        probs = _sites.given_probs(base)
        logits = None if probs is not None else _sites.logits_of(base)
        validate = base.__dict__.get("_validate_args")
        return self._results[int(binary)](
            self.current_temperature(), probs=probs, logits=logits, validate_args=validate, **self._options()
        )

    def _replace(self, name: str, base: Distribution) -> Distribution:
        if isinstance(base, self._results):  # relaxed this way already: rebuilt with these settings
            return self._build(isinstance(base, self._results[1]), base)
        one_hot = isinstance(base, OneHotCategorical)
        if one_hot or (isinstance(base, Categorical) and self.one_hot_categorical):
            return self._build(False, base)
        if isinstance(base, Bernoulli):
            return self._build(True, base)
        if isinstance(base, Categorical):
            raise TypeError(
                f"{type(self).__name__}: site {name!r} is an integer-valued Categorical: a "
                "gradient cannot pass through an integer index, so it cannot stay an integer. "
                "Either write it as OneHotCategorical and read the value linearly (z @ values "
                "instead of values[z]), or pass one_hot_categorical=True to relax it through its "
                "one-hot form (the model code then receives (..., K) vectors instead of indices), "
                "or leave it to TraceEnum_ELBO (infer={'enumerate': 'parallel'})"
            )
        raise TypeError(
            f"{type(self).__name__}: site {name!r} has a {type(base).__name__}, which it cannot "
            "relax: it relaxes OneHotCategorical, Bernoulli and (with one_hot_categorical=True) "
            "Categorical sites"
        )

    def apply(self, msg: ReparamMessage) -> ReparamResult:
        """The site with its discrete distribution replaced inside the same ``to_event`` /
        ``mask`` / ``expand`` wrappers; observed sites unchanged."""
        if msg["is_observed"]:
            return _unchanged(msg)
        name = msg["name"]
        fn = cast(TorchDistributionMixin, msg["fn"])
        base = _sites.unwrap(fn)[0]
        new_fn = _sites.map_base(fn, lambda b: self._replace(name, b))
        value = msg["value"]
        if value is not None and isinstance(base, Categorical) and value.shape == fn.shape():
            raise ValueError(
                f"{type(self).__name__}: site {name!r} already has an integer value (from an "
                "initialisation), which its one-hot form cannot take: initialise it with a one-hot "
                "vector, or not at all"
            )
        return {"fn": cast(TorchDistributionMixin, new_fn), "value": value, "is_observed": False}


class StraightThroughReparam(_DiscreteRelaxation):
    r"""Makes a discrete latent site a straight-through site of the same law.

    ``OneHotCategorical`` becomes :class:`~pyro_concrete.ConcreteStraightThrough`,
    ``Bernoulli`` :class:`~pyro_concrete.BinaryConcreteStraightThrough`, with the same
    probabilities (given probs are read exactly, zeros included) and validation setting,
    inside the same wrappers (a site that already is straight-through is rebuilt with this
    reparameteriser's temperature and estimator). Values are the same exact one-hot vectors or
    0/1 values, and ``log_prob`` is the exact discrete one, linear in the value: a
    straight-through guide's gradient reaches the model's prior term under ``Trace_ELBO``
    (where torch's ``OneHotCategorical.log_prob`` scores ``argmax`` and passes none), and the
    registered discrete KLs keep ``TraceMeanField_ELBO`` exact.

    Args:
        temperature (float, Tensor or TemperatureSchedule): the temperature of the site's own
            ``rsample`` (used when the model runs without a guide, e.g. ``Predictive``); a
            schedule is read at every model run.
        estimator (str): the gradient estimator of that ``rsample`` (``"st"``,
            ``"gumbel_rao"``, ``"reinmax"``).
        rao_samples (int): conditional draws of ``"gumbel_rao"``.
        one_hot_categorical (bool): relax integer ``Categorical`` sites through their one-hot
            form (the model code then receives one-hot vectors; see the module's description).

    Example::

        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro import poutine
        >>> def model():
        ...     z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        ...     pyro.sample("x", dist.Normal(z @ torch.tensor([-1.0, 0.0, 1.0]), 1.0), obs=torch.tensor(0.5))
        >>> relaxed = poutine.reparam(model, config={"z": StraightThroughReparam(0.5)})
        >>> type(poutine.trace(relaxed).get_trace().nodes["z"]["fn"]).__name__
        'ConcreteStraightThrough'
    """

    _results = (ConcreteStraightThrough, BinaryConcreteStraightThrough)

    def __init__(
        self,
        temperature: float | torch.Tensor | TemperatureSchedule = 1.0,
        estimator: str = "st",
        rao_samples: int = 10,
        one_hot_categorical: bool = False,
    ):
        super().__init__(temperature, one_hot_categorical)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.estimator = estimator
        self.rao_samples = check_int("rao_samples", rao_samples, minimum=1)

    def _options(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "rao_samples": self.rao_samples}


class RelaxReparam(_DiscreteRelaxation):
    r"""Makes a discrete latent site its Concrete relaxation: the relaxed model.

    ``OneHotCategorical`` becomes :class:`~pyro_concrete.Concrete`, ``Bernoulli``
    :class:`~pyro_concrete.BinaryConcrete`, at ``temperature``, with the same probabilities,
    inside the same wrappers. The model code after the site receives points of the simplex
    (of ``(0, 1)``) instead of one-hot vectors (0/1 values): the model is then the relaxed
    model of Maddison et al. 2017, to be guided by relaxed distributions (at the same
    temperature, ``TraceMeanField_ELBO`` uses the exact relaxed KL; with
    :class:`~pyro_concrete.infer.GumbelSoftmax_ELBO` the objective is Jang et al.'s).

    Args:
        temperature (float, Tensor or TemperatureSchedule): the relaxed prior's temperature; a
            schedule is read at every model run.
        one_hot_categorical (bool): relax integer ``Categorical`` sites through their one-hot
            form (see the module's description).

    Example::

        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro import poutine
        >>> def model():
        ...     return pyro.sample("b", dist.Bernoulli(probs=torch.tensor(0.3)))
        >>> relaxed = poutine.reparam(model, config={"b": RelaxReparam(0.5)})
        >>> b = relaxed()
        >>> bool(0 < b < 1)
        True
    """

    _results = (Concrete, BinaryConcrete)

    def __init__(
        self,
        temperature: float | torch.Tensor | TemperatureSchedule = 0.5,
        one_hot_categorical: bool = False,
    ):
        super().__init__(temperature, one_hot_categorical)


class ConcreteGumbelReparam(Reparam):
    r"""Rewrites a relaxed latent site as a deterministic function of parameter-free noise.

    For a site of :class:`~pyro_concrete.Concrete` or :class:`~pyro_concrete.ExpConcrete`
    (inside any ``to_event`` / ``mask`` / ``expand``), it draws ``G`` at a new site
    ``"{name}_gumbel"`` of standard Gumbel noise of the site's full shape, and gives the
    original site the value ``y = log_softmax((logits + G) / τ)`` (``ExpConcrete``) or
    ``exp(y)`` (``Concrete``) as a deterministic site. For
    :class:`~pyro_concrete.BinaryConcrete` and :class:`~pyro_concrete.LogitBinaryConcrete` the
    noise site ``"{name}_logistic"`` is standard Logistic and ``y = (logits + L) / τ`` (and
    ``sigmoid(y)``). The law of the site is unchanged; the latent space is the noise's, which
    has no parameters and an unconstrained support, so that ``AutoNormal``,
    ``AutoLaplaceApproximation``, NUTS and ``Predictive`` treat the relaxed model as a
    continuous one. (The noise has one more dimension than the simplex per categorical
    event: the softmax forgets a common shift.)

    A value given to the site (an initialisation) is inverted to noise: ``G = τ y - logits``
    (any pre-image gives the same value), with ``0`` at masked categories. A value off the
    support (mass on a masked category, or strictly inside ``(0, 1)`` where an outcome is
    certain, as ``init_to_feasible`` gives) has no pre-image: the site then takes the value its
    noise reaches (Pyro warns that the initialisation fell back when the value was a custom
    one, from ``init_to_value``). Observed sites are left
    alone. The model must be written with the relaxed classes: a discrete site relaxed by
    :class:`RelaxReparam` cannot go on to ``AutoNormal`` or NUTS, whose initialisation Pyro
    runs on the original, discrete site (and refuses).

    Example::

        >>> import pyro, torch
        >>> from pyro import poutine
        >>> from pyro_concrete import Concrete
        >>> def model():
        ...     return pyro.sample("z", Concrete(0.5, logits=torch.zeros(3)))
        >>> trace = poutine.trace(poutine.reparam(model, {"z": ConcreteGumbelReparam()})).get_trace()
        >>> [name for name in trace.stochastic_nodes]
        ['z_gumbel']
    """

    def apply(self, msg: ReparamMessage) -> ReparamResult:
        if msg["is_observed"]:
            return _unchanged(msg)
        name, fn, value = msg["name"], cast(TorchDistributionMixin, msg["fn"]), msg["value"]
        base = _sites.unwrap(fn)[0]
        if isinstance(base, (Concrete, ExpConcrete)):
            suffix, noise_base = "gumbel", dist.Gumbel
        elif isinstance(base, (BinaryConcrete, LogitBinaryConcrete)):
            suffix, noise_base = "logistic", dist.Logistic
        else:
            raise TypeError(
                f"ConcreteGumbelReparam: site {name!r} has a {type(base).__name__}; it reparameterises "
                "Concrete, ExpConcrete, BinaryConcrete and LogitBinaryConcrete sites (Pyro's "
                "GumbelSoftmaxReparam takes torch's RelaxedOneHotCategorical)"
            )
        assert isinstance(base, (Concrete, ExpConcrete, BinaryConcrete, LogitBinaryConcrete))
        shape = base.batch_shape + base.event_shape
        logits = base.logits.expand(shape)
        zeros = torch.zeros(shape, dtype=logits.dtype, device=logits.device)

        def noise_distribution(_: Distribution) -> Distribution:
            noise = noise_base(zeros, torch.ones_like(zeros))
            return noise.to_event(len(base.event_shape)) if base.event_shape else noise

        noise_fn = cast(TorchDistributionMixin, _sites.map_base(fn, noise_distribution))
        noise_value = None if value is None else _noise_of_value(base, value.expand(fn.shape()))
        noise = pyro.sample(f"{name}_{suffix}", noise_fn, obs=noise_value, infer={"is_observed": False})
        reached = _value_of_noise(base, noise)
        # An initial value off the distribution's support (at masked categories, or strictly
        # inside (0, 1) where an outcome is certain, as init_to_feasible gives) has no pre-image:
        # the site takes the value its noise reaches (Pyro warns about a custom initial value
        # it replaces). A value on the support is kept as given.
        if value is None or not torch.allclose(reached, value.expand(fn.shape()), rtol=1e-4, atol=1e-6):
            value = reached
        # a pyro.deterministic site: the value, its log-density 0
        deterministic = dist.Delta(value, event_dim=fn.event_dim).mask(False)
        return {"fn": deterministic, "value": value, "is_observed": True}


def _value_of_noise(
    base: Concrete | ExpConcrete | BinaryConcrete | LogitBinaryConcrete, noise: torch.Tensor
) -> torch.Tensor:
    if isinstance(base, (Concrete, ExpConcrete)):
        y, x = ops.gumbel_softmax_log_sample(base.logits, base.temperature, noise)
        return x if isinstance(base, Concrete) else y
    assert isinstance(base, (BinaryConcrete, LogitBinaryConcrete))
    y = ops.binary_concrete_logit_sample(base.logits, base.temperature, noise)
    return torch.sigmoid(y) if isinstance(base, BinaryConcrete) else y


def _noise_of_value(
    base: Concrete | ExpConcrete | BinaryConcrete | LogitBinaryConcrete, value: torch.Tensor
) -> torch.Tensor:
    """A pre-image of ``value`` under :func:`_value_of_noise` (0 at masked categories)."""
    logits = base.logits.expand(value.shape)
    if isinstance(base, (Concrete, ExpConcrete)):
        masked = ops.structural_zeros(logits)
        y = log_of_simplex_point(value, masked) if isinstance(base, Concrete) else value
        noise = base.temperature.unsqueeze(-1) * y - logits
    else:
        y = logit_of_unit_point(value, logits) if isinstance(base, BinaryConcrete) else value
        masked = ops.certain_outcomes(logits)
        noise = base.temperature * y - logits
    return torch.where(masked, torch.zeros_like(noise), noise).to(logits.dtype)


def _is_relaxable(msg: Any) -> bool:
    """A latent, non-enumerated sample site of a discrete distribution this module relaxes."""
    if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
        return False
    if msg["infer"].get("enumerate") or msg["infer"].get("is_auxiliary"):
        return False
    base = _sites.unwrap(msg["fn"])[0]
    return isinstance(base, (OneHotCategorical, Bernoulli, Categorical))


class AutoRelaxReparam(Strategy):
    r"""A reparameterisation strategy that relaxes every latent discrete site of a model.

    Every latent sample site whose distribution is a ``OneHotCategorical``, ``Bernoulli`` or
    ``Categorical`` (inside any wrappers), and that is not marked for enumeration, gets a
    :class:`StraightThroughReparam` (``relaxation="straight_through"``) or a
    :class:`RelaxReparam` (``relaxation="relaxed"``) with the given settings; other sites are
    left alone. Use it as a handler, ``AutoRelaxReparam()(model)``, or as
    ``poutine.reparam(model, config=AutoRelaxReparam())``; after the first run its ``config``
    holds the reparameteriser of each site.

    Args:
        relaxation (str): ``"straight_through"`` (the discrete model, scored differentiably)
            or ``"relaxed"`` (the relaxed model).
        temperature (float, Tensor or TemperatureSchedule, optional): the relaxation's
            temperature (default: that of :class:`StraightThroughReparam`, 1, or of
            :class:`RelaxReparam`, 0.5).
        estimator (str): the straight-through estimator of the sites' own ``rsample``.
        rao_samples (int): conditional draws of ``"gumbel_rao"``.
        one_hot_categorical (bool): relax integer ``Categorical`` sites through their one-hot
            form; without it a ``Categorical`` site raises a ``TypeError`` at the first run.

    Example::

        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro import poutine
        >>> def model():
        ...     z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        ...     b = pyro.sample("b", dist.Bernoulli(0.5))
        ...     pyro.sample("x", dist.Normal(z.sum() + b, 1.0), obs=torch.tensor(1.0))
        >>> strategy = AutoRelaxReparam()
        >>> trace = poutine.trace(strategy(model)).get_trace()
        >>> {name: type(r).__name__ for name, r in strategy.config.items()}
        {'z': 'StraightThroughReparam', 'b': 'StraightThroughReparam', 'x': 'NoneType'}
    """

    def __init__(
        self,
        relaxation: str = "straight_through",
        temperature: float | torch.Tensor | TemperatureSchedule | None = None,
        estimator: str = "st",
        rao_samples: int = 10,
        one_hot_categorical: bool = False,
    ):
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        self.relaxation = relaxation
        self.settings: dict[str, Any] = {"one_hot_categorical": one_hot_categorical}
        if temperature is not None:
            self.settings["temperature"] = temperature
        if relaxation == "straight_through":
            self.settings.update(estimator=estimator, rao_samples=rao_samples)
        self._reparam()  # checks the settings now rather than at the first site

    def _reparam(self) -> _DiscreteRelaxation:
        if self.relaxation == "straight_through":
            return StraightThroughReparam(**self.settings)
        return RelaxReparam(**self.settings)

    def configure(self, msg: Any) -> Reparam | None:
        """A reparameteriser for a relaxable site (see the class), else ``None``."""
        return self._reparam() if _is_relaxable(msg) else None
