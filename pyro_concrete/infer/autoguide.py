"""AutoConcrete: an automatic straight-through guide for the discrete sites of a Pyro model."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from operator import attrgetter
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer.autoguide import AutoGuide, AutoGuideList, AutoNormal
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam
from pyro.ops.tensor_utils import periodic_repeat
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical
from torch.distributions import constraints as torch_constraints

from .. import constraints, ops
from ..distributions import BinaryConcreteStraightThrough, ConcreteStraightThrough
from .schedules import TemperatureSchedule, _positive

__all__ = ["AutoConcrete", "auto_concrete_guide", "is_concrete_site"]


class _Site(NamedTuple):
    binary: bool  # Bernoulli-type (True) or one-hot categorical (False)
    extra_event_dims: int  # event dims added by to_event around the base distribution


def _base_distribution(fn) -> tuple[object, int]:
    """Unwraps ``Independent``/``MaskedDistribution``/``ExpandedDistribution``."""
    extra = 0
    while True:
        if isinstance(fn, Independent):
            extra += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif isinstance(fn, (MaskedDistribution, ExpandedDistribution)):
            fn = fn.base_dist
        else:
            return fn, extra


def _is_latent_sample(msg) -> bool:
    return msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg)


def is_concrete_site(msg) -> bool:
    """Whether :class:`AutoConcrete` guides this sample site of a model.

    True for latent (not observed) sample sites with a discrete support, unless marked for
    enumeration (``infer={"enumerate": ...}``). Use it with ``poutine.block`` to give
    :class:`AutoConcrete` exactly these sites, as :func:`auto_concrete_guide` does::

        guide = AutoGuideList(model)
        guide.append(AutoConcrete(poutine.block(model, expose_fn=is_concrete_site)))
        guide.append(AutoNormal(poutine.block(model, hide=["z", "c"])))  # discrete sites
    """
    return _is_latent_sample(msg) and msg["fn"].support.is_discrete and not msg["infer"].get("enumerate")


def _is_discrete_sample(msg) -> bool:
    return msg["type"] == "sample" and not site_is_subsample(msg) and msg["fn"].support.is_discrete


def _classify(site) -> _Site:
    """The guide to build for a model site, or a TypeError telling the user what to do."""
    name = site["name"]
    base, extra = _base_distribution(site["fn"])
    if isinstance(base, (Bernoulli, BinaryConcreteStraightThrough)):
        return _Site(True, extra)
    if isinstance(base, (OneHotCategorical, ConcreteStraightThrough)):
        return _Site(False, extra)
    if isinstance(base, Categorical):
        raise TypeError(
            f"AutoConcrete: site '{name}' is a Categorical (integer-valued) site; no gradient can "
            "reach the model through an integer index, so it has no straight-through guide. "
            f"Either write it as pyro.sample('{name}', dist.OneHotCategorical(...)) and use the "
            "one-hot value (e.g. `(z * locs).sum(-1)` or `z @ locs` instead of `locs[z]`), or "
            f"enumerate it (infer={{'enumerate': 'parallel'}} on the site, TraceEnum_ELBO), which "
            "AutoConcrete leaves alone."
        )
    kind = "discrete" if site["fn"].support.is_discrete else "continuous"
    raise TypeError(
        f"AutoConcrete: site '{name}' is a {kind} {type(base).__name__} site; AutoConcrete guides "
        "Bernoulli, OneHotCategorical and Categorical sites only. Guide the others with another "
        "autoguide, e.g. pyro_concrete.infer.auto_concrete_guide(model) (an AutoGuideList of "
        "AutoConcrete and AutoNormal), or "
        f"AutoConcrete(poutine.block(model, hide=['{name}', ...])) inside an AutoGuideList."
    )


def _initial_logits(site, binary: bool, init: str) -> Tensor:
    value = site["value"].detach()
    dtype = value.dtype if value.is_floating_point() else torch.get_default_dtype()
    if init == "uniform":
        return torch.zeros(value.shape, dtype=dtype, device=value.device)
    base, _ = _base_distribution(site["fn"])
    logits = base.logits.detach()
    if not binary:  # normalise (torch's OneHotCategorical already does; the ST class does not)
        logits = logits - logits.logsumexp(-1, keepdim=True)
    return torch.broadcast_to(logits, value.shape).to(dtype).clone()


class AutoConcrete(AutoGuide):
    r"""A mean-field straight-through guide for the discrete latent sites of a model.

    For every latent ``Bernoulli`` or ``OneHotCategorical`` site (also when wrapped by
    ``.expand``, ``.to_event`` or ``.mask``, and for the package's own
    :class:`~pyro_concrete.BinaryConcreteStraightThrough` /
    :class:`~pyro_concrete.ConcreteStraightThrough` used as model sites) the guide samples
    a :class:`~pyro_concrete.BinaryConcreteStraightThrough` or
    :class:`~pyro_concrete.ConcreteStraightThrough` of the same shape from learnable
    logits (one ``PyroParam`` per site, named ``AutoConcrete.logits.<site>``): the guide's
    sample is exactly discrete and its ``log_prob`` the exact discrete log-probability, so
    ``Trace_ELBO`` is an honest estimate of the ELBO of the discrete model, and
    ``TraceMeanField_ELBO`` uses the exact KL between the guide and a ``Bernoulli`` /
    ``OneHotCategorical`` prior (registered by :mod:`pyro_concrete.kl`). Gradients reach
    the logits through the model by the chosen straight-through estimator.

    Which objective: ``TraceMeanField_ELBO`` (exact KL for these sites; the straight-through
    estimator only differentiates the likelihood), or ``Trace_ELBO`` with the *model* given
    to ``SVI`` wrapped in :func:`~pyro_concrete.infer.differentiable_one_hot` when it has
    ``OneHotCategorical`` sites: torch's ``OneHotCategorical.log_prob`` takes an argmax of the
    value, so without it the prior term gets no gradient and the guide ignores the prior.

    Plates are respected as in Pyro's ``AutoDelta``/``AutoNormal``: parameters have the
    full plate size, and under a subsampled plate the guide uses the rows of the
    subsample (``create_plates`` as in Pyro).

    Sites that are left alone or refused:

    - sites marked ``infer={"enumerate": ...}`` are left to enumeration
      (``TraceEnum_ELBO``): the guide has no site for them;
    - a ``Categorical`` (integer) site raises a ``TypeError`` on the first call, telling
      you to write it as ``OneHotCategorical`` or to enumerate it: no gradient reaches a
      model through an integer index, so a straight-through guide could not learn;
    - continuous (and other discrete) sites raise a ``TypeError``: combine with a
      continuous autoguide, e.g. :func:`auto_concrete_guide` or an ``AutoGuideList`` with
      ``poutine.block(model, expose_fn=is_concrete_site)``.

    Args:
        model (callable): a Pyro model.
        estimator (str): ``"st"``, ``"gumbel_rao"`` or ``"reinmax"`` (see
            :class:`~pyro_concrete.ConcreteStraightThrough`).
        temperature (float or TemperatureSchedule): the relaxation's temperature; a
            :class:`~pyro_concrete.infer.TemperatureSchedule` is read on every call
            (advance it with ``schedule.step()`` in the training loop). With
            ``learn_temperature=True``, the initial value of a learned temperature.
        rao_samples (int): conditional noise draws of ``"gumbel_rao"``.
        learn_temperature (bool): learn one temperature for all sites as a ``PyroParam``
            ``AutoConcrete.temperature`` constrained to
            :data:`~pyro_concrete.constraints.positive_finite` (see
            :mod:`pyro_concrete.infer.schedules` on when this is informative).
        init (str): initial logits: ``"prior"`` (the model's logits at the site, as traced
            once; repeated periodically over a subsampled plate) or ``"uniform"`` (zeros).
        init_scale (float): standard deviation of Gaussian noise added to the initial
            logits (``0`` for none), e.g. to break symmetries between mixture components.
        create_plates (callable): as in Pyro's autoguides.

    Example::

        >>> def model(data):
        ...     with pyro.plate("data", len(data)):
        ...         z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        ...         pyro.sample("x", dist.Normal(z @ torch.tensor([-2.0, 0.0, 2.0]), 1.0), obs=data)
        >>> guide = AutoConcrete(model, estimator="gumbel_rao", temperature=0.3)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
        >>> # or: SVI(differentiable_one_hot(model), guide, optim, Trace_ELBO())
    """

    def __init__(
        self,
        model: Callable,
        *,
        estimator: str = "st",
        temperature: float | TemperatureSchedule = 0.5,
        rao_samples: int = 10,
        learn_temperature: bool = False,
        init: str = "prior",
        init_scale: float = 0.0,
        create_plates: Callable | None = None,
    ) -> None:
        ops.check_estimator(estimator, rao_samples)
        if isinstance(temperature, TemperatureSchedule):
            if learn_temperature:
                raise ValueError("temperature must be a float when learn_temperature=True, got a schedule")
        else:
            _positive("temperature", temperature)  # a float, or a TemperatureSchedule above
        if init not in ("prior", "uniform"):
            raise ValueError(f"init must be 'prior' or 'uniform', got {init!r}")
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale >= 0:
            raise ValueError(f"init_scale must be a float >= 0, got {init_scale!r}")
        super().__init__(model, create_plates=create_plates)
        self.estimator = estimator
        self.rao_samples = int(rao_samples)
        self._init = init
        self._init_scale = float(init_scale)
        self._learn_temperature = bool(learn_temperature)
        if self._learn_temperature:
            self.temperature = PyroParam(
                torch.tensor(float(temperature)), constraint=constraints.positive_finite
            )
        else:
            self.temperature = temperature

    # -- setup ---------------------------------------------------------------------

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self._sites: dict[str, _Site] = {}
        self.logits = PyroModule()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if site["infer"].get("enumerate"):
                continue  # left to enumeration
            info = _classify(site)
            self._sites[name] = info
            logits = _initial_logits(site, info.binary, self._init)
            if self._init_scale > 0:
                logits = logits + self._init_scale * torch.randn_like(logits)
            event_dim = site["fn"].event_dim
            for frame in site["cond_indep_stack"]:
                full_size = frame.full_size or frame.size
                if full_size != frame.size:
                    logits = periodic_repeat(logits, full_size, frame.dim - event_dim).contiguous()
            deep_setattr(self.logits, name, PyroParam(logits, torch_constraints.real, event_dim))

    def _current_temperature(self) -> float | Tensor:
        temperature = self.temperature
        if isinstance(temperature, TemperatureSchedule):
            return temperature.temperature
        return temperature

    def _site_distribution(self, name: str, logits: Tensor, temperature):
        info = self._sites[name]
        cls = BinaryConcreteStraightThrough if info.binary else ConcreteStraightThrough
        d = cls(temperature, logits=logits, estimator=self.estimator, rao_samples=self.rao_samples)
        return d.to_event(info.extra_event_dims) if info.extra_event_dims else d

    # -- the guide -----------------------------------------------------------------

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        """Samples every guided site; returns a dict from site name to its (hard) value."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        temperature = self._current_temperature()
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if name not in self._sites:
                continue
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                logits = attrgetter(name)(self.logits)
                result[name] = pyro.sample(name, self._site_distribution(name, logits, temperature))
        return result

    def _check_setup(self) -> None:
        if self.prototype_trace is None:
            raise RuntimeError("AutoConcrete has not been set up yet: call the guide (or svi.step) first")

    @torch.no_grad()
    def probs(self) -> dict[str, Tensor]:
        """The guide's probabilities per site, full size (not subsampled).

        For a Bernoulli site, the probability of ``1``, of the site's shape; for a one-hot
        site, the probability vectors, of the site's shape.
        """
        self._check_setup()
        result = {}
        for name, info in self._sites.items():
            logits = attrgetter(name)(self.logits).detach()
            result[name] = torch.sigmoid(logits) if info.binary else torch.softmax(logits, -1)
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        """The most probable value of each guided site, at full plate size (as Pyro's
        ``AutoNormal.median``: subsampling does not apply outside the guide's call)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        result = {}
        for name, _ in self.prototype_trace.iter_stochastic_nodes():
            if name not in self._sites:
                continue
            logits = attrgetter(name)(self.logits)
            result[name] = self._site_distribution(name, logits, 1.0).mode.detach()
        return result


def auto_concrete_guide(
    model: Callable,
    continuous: Callable[..., AutoGuide] = AutoNormal,
    continuous_kwargs: dict | None = None,
    **concrete_kwargs,
) -> AutoGuideList:
    """An ``AutoGuideList`` of :class:`AutoConcrete` and a continuous autoguide.

    :class:`AutoConcrete` guides the sites for which :func:`is_concrete_site` holds (latent,
    discrete, not enumerated); the continuous autoguide (``AutoNormal`` by default) guides
    every latent site with a continuous support. Sites marked for enumeration are hidden
    from both.

    Args:
        model (callable): a Pyro model.
        continuous (callable): an ``AutoGuide`` class (or factory) for the continuous sites.
        continuous_kwargs (dict, optional): its keyword arguments.
        **concrete_kwargs: keyword arguments of :class:`AutoConcrete`.

    Example::

        >>> guide = auto_concrete_guide(model, estimator="reinmax", temperature=1.0,
        ...                             continuous_kwargs={"init_scale": 0.05})
    """
    guide = AutoGuideList(model)
    guide.append(AutoConcrete(poutine.block(model, expose_fn=is_concrete_site), **concrete_kwargs))
    guide.append(continuous(poutine.block(model, hide_fn=_is_discrete_sample), **(continuous_kwargs or {})))
    return guide
