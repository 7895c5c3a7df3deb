"""AutoConcrete: an automatic straight-through guide for the discrete sites of a Pyro model."""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from operator import attrgetter
from types import FrameType
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide, AutoGuideList, AutoNormal
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam
from pyro.ops.tensor_utils import periodic_repeat
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, OneHotCategorical
from torch.distributions import constraints as torch_constraints
from torch.distributions.constraints import Constraint

from .. import _sites, constraints, ops
from .._checks import check_nonnegative_float, check_positive_float
from ..distributions import BinaryConcreteStraightThrough, ConcreteStraightThrough
from .schedules import TemperatureSchedule

__all__ = ["AutoConcrete", "auto_concrete_guide", "is_concrete_site"]


class _Site(NamedTuple):
    binary: bool  # Bernoulli-type (True) or one-hot categorical (False)
    extra_event_dims: int  # event dims added by to_event around the base distribution
    # whether the model's prior term may miss the straight-through gradient under
    # Trace_ELBO (a non-uniform torch OneHotCategorical prior; see _check_prior_term)
    watch_prior: bool


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
    base, wrappers = _sites.unwrap(site["fn"])
    extra = _sites.extra_event_dims(wrappers)
    if isinstance(base, (Bernoulli, BinaryConcreteStraightThrough)):
        return _Site(True, extra, False)  # Bernoulli.log_prob is linear in the value
    if isinstance(base, (OneHotCategorical, ConcreteStraightThrough)):
        argmax_scored = isinstance(base, OneHotCategorical) or _sites.is_rescored(base)
        return _Site(False, extra, argmax_scored and not _uniform_and_fixed(base))
    if isinstance(base, Categorical):
        raise TypeError(
            f"AutoConcrete: site '{name}' is a Categorical (integer-valued) site, which has no "
            f"straight-through guide: {_sites.one_hot_for_integer_site(name)}; AutoConcrete leaves "
            "enumerated sites alone."
        )
    kind = "discrete" if site["fn"].support.is_discrete else "continuous"
    raise TypeError(
        f"AutoConcrete: site '{name}' is a {kind} {type(base).__name__} site; AutoConcrete guides "
        "Bernoulli, OneHotCategorical and Categorical sites only. Guide the others with another "
        "autoguide, e.g. pyro_concrete.infer.auto_concrete_guide(model) (an AutoGuideList of "
        "AutoConcrete and AutoNormal), or "
        f"AutoConcrete(poutine.block(model, hide=['{name}', ...])) inside an AutoGuideList."
    )


def _uniform_and_fixed(base) -> bool:
    """A prior whose term has no gradient to miss: uniform over its unmasked categories in
    every row (the straight-through surrogates sum to one), and not a function of a
    parameter (as traced once)."""
    log_probs, zeros = _sites.categorical_log_probs(base)
    if log_probs.requires_grad or log_probs.device.type == "meta":
        return False
    first = log_probs.gather(-1, (~zeros).to(torch.long).argmax(-1, keepdim=True))
    return bool(((log_probs == first) | zeros).all())


class _InitialLogits(NamedTuple):
    logits: Tensor  # finite; the initial value of the unconstrained parameter
    pinned: Tensor | None  # where the prior rules an outcome out (None: nowhere)
    values: Tensor | None  # the logits there (±inf)


def _initial_logits(site, binary: bool, init: str) -> _InitialLogits:
    """The guide's initial logits for a site, on the device and dtype of the model's value,
    and the outcomes its prior rules out (read from the prior whatever ``init`` is)."""
    value = site["value"].detach()
    dtype = value.dtype if value.is_floating_point() else torch.get_default_dtype()
    base, _ = _sites.unwrap(site["fn"])
    if binary:
        log_p1, log_p0, zero1, zero0 = _sites.bernoulli_log_probs(base)
        pinned = zero1 | zero0
        if _sites.given_probs(base) is None:  # the logits themselves, exactly
            base_logits = _sites.logits_of(base)
            logits = torch.where(pinned, torch.zeros_like(base_logits), base_logits)
        else:
            logits = log_p1 - log_p0  # 0 - 0 where pinned
        values = torch.where(zero0, torch.full_like(logits, torch.inf), torch.full_like(logits, -torch.inf))
    else:  # normalised (torch's OneHotCategorical already is; the ST class is not)
        logits, pinned = _sites.categorical_log_probs(base)
        values = torch.full_like(logits, -torch.inf)
    shape, device = value.shape, value.device

    def full(t: Tensor) -> Tensor:
        return torch.broadcast_to(t.detach().to(device), shape).clone()

    logits = full(logits).to(dtype)
    if init == "uniform":
        logits = torch.zeros_like(logits)
    if pinned.device.type == "meta" or not bool(pinned.any()):
        return _InitialLogits(logits, None, None)
    return _InitialLogits(logits, full(pinned), full(values).to(dtype))


def _check_prior_term(guide_ref: weakref.ref, note: _sites.PriorScoring, grad: Tensor) -> None:
    """Backward hook on a guided sample: warns once if the model's prior term for the site
    did not pass the straight-through gradient (item 12 of issue 8)."""
    guide = guide_ref()
    if guide is None or note.handled or guide._warned_prior:
        return
    guide._warned_prior = True
    warnings.warn(
        f"AutoConcrete: the model's OneHotCategorical site '{note.site}' was scored by its own "
        f"log_prob under a Monte Carlo ELBO: {_sites.IGNORED_PRIOR}.",
        UserWarning,
        stacklevel=_caller_stacklevel(),
    )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning raised here at the first caller outside
    torch, Pyro and this package (the line that called ``svi.step`` or ``backward``)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in _INTERNAL:
        frame, level = frame.f_back, level + 1
    return level


_INTERNAL = frozenset({"torch", "pyro", "pyro_concrete"})


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
    A guide cannot change how the model scores its sample, so the plain call
    ``SVI(model, AutoConcrete(model), optim, Trace_ELBO())`` cannot be made right from here;
    it is made loud instead: the first backward pass through a guided sample whose model
    site was scored by torch's argmax ``log_prob`` (neither rescored nor replaced by a
    registered KL) emits a ``UserWarning`` naming both fixes, once per guide. Sites whose
    prior is uniform over its categories and not a parameter have no prior gradient to
    miss and are not watched; JIT-traced ELBOs are not watched.

    Masks: outcomes the prior rules out (``-inf`` logits or zero probs of a
    ``OneHotCategorical``, Bernoulli probs 0 or 1), as traced once at setup, are ruled out
    in the guide too, whatever ``init``: their logits are pinned to ``∓inf`` by the
    parameter's constraint (the unconstrained parameter is finite there and gets zero
    gradient), so the guide never samples them. A prior whose mask changes between calls
    is not followed (:func:`~pyro_concrete.infer.check_guide` reports a guide that gives
    mass to a masked category).

    Parameters (logits and a learned temperature) are created on the device and in the
    dtype of the model's values at the guided sites.

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
            once; repeated periodically over a subsampled plate) or ``"uniform"`` (zeros:
            uniform over the categories the prior does not mask).
        init_scale (float): standard deviation of Gaussian noise added to the initial
            logits (``0`` for none), e.g. to break symmetries between mixture components.
        create_plates (callable): as in Pyro's autoguides.

    Example::

        >>> def model(data):
        ...     with pyro.plate("data", len(data)):
        ...         z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        ...         pyro.sample("x", dist.Normal(z @ torch.tensor([-2.0, 0.0, 2.0]), 1.0), obs=data)
        >>> from pyro.infer import SVI, TraceMeanField_ELBO
        >>> guide = AutoConcrete(model, estimator="gumbel_rao", temperature=0.3)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
        >>> loss = svi.step(torch.tensor([-2.1, 0.2, 1.9]))
        >>> guide.probs()["z"].shape
        torch.Size([3, 3])
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
        rao_samples = ops.check_estimator(estimator, rao_samples)
        if isinstance(temperature, TemperatureSchedule):
            if learn_temperature:
                raise ValueError("temperature must be a float when learn_temperature=True, got a schedule")
        else:
            check_positive_float("temperature", temperature)  # a float, or a TemperatureSchedule above
        if init not in ("prior", "uniform"):
            raise ValueError(f"init must be 'prior' or 'uniform', got {init!r}")
        init_scale = check_nonnegative_float("init_scale", init_scale)
        super().__init__(model, create_plates=create_plates)
        self.estimator = estimator
        self.rao_samples = rao_samples
        self._init = init
        self._init_scale = init_scale
        self._learn_temperature = bool(learn_temperature)
        self._warned_prior = False
        # With learn_temperature=True, the initial value until the first call creates the
        # parameter on the model's device and dtype (see _setup_prototype), read back as a
        # Tensor from then on.
        self.temperature: float | Tensor | TemperatureSchedule = temperature

    # -- setup ---------------------------------------------------------------------

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self._sites: dict[str, _Site] = {}
        self.logits = PyroModule()
        like = None  # the first site's logits: the device and dtype of the model's values
        for name, site in self._prototype_trace().iter_stochastic_nodes():
            if (site["infer"] or {}).get("enumerate"):  # (pyro.sample always sets a dict)
                continue  # left to enumeration
            info = _classify(site)
            self._sites[name] = info
            logits, pinned, values = _initial_logits(site, info.binary, self._init)
            if self._init_scale > 0:
                logits = logits + self._init_scale * torch.randn_like(logits)
            event_dim = _sites.site_distribution(site).event_dim
            for frame in site["cond_indep_stack"]:
                full_size = frame.full_size or frame.size
                if full_size != frame.size:
                    if frame.dim is None:  # Pyro gives every subsampled (vectorized) plate a dim
                        raise TypeError(
                            f"AutoConcrete: site '{name}' is in the subsampled plate '{frame.name}', "
                            "which has no tensor dimension to repeat the initial logits along"
                        )
                    dim = frame.dim - event_dim
                    logits = periodic_repeat(logits, full_size, dim).contiguous()
                    if pinned is not None:
                        pinned = periodic_repeat(pinned, full_size, dim).contiguous()
                        values = periodic_repeat(values, full_size, dim).contiguous()
            constraint: Constraint
            if pinned is None or values is None:  # (both or neither: see _initial_logits)
                constraint = torch_constraints.real
            else:
                constraint = constraints.Pinned(pinned, values, event_dim)
                logits = torch.where(pinned, values, logits)  # the constrained initial value
            deep_setattr(self.logits, name, PyroParam(logits, constraint, event_dim))
            like = like if like is not None else logits
        if self._learn_temperature:
            like = like if like is not None else torch.empty(())
            temperature = self.temperature
            if isinstance(temperature, TemperatureSchedule):  # refused by __init__
                raise RuntimeError("AutoConcrete: a learned temperature cannot start from a schedule")
            initial = torch.tensor(float(temperature), dtype=like.dtype, device=like.device)
            # PyroModule.__setattr__ registers a PyroParam as a constrained parameter, read back as
            # a Tensor; the declared attribute type cannot say that.
            self.temperature = PyroParam(initial, constraint=constraints.positive_finite)  # type: ignore[assignment]

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
        for name, site in self._prototype_trace().iter_stochastic_nodes():
            if name not in self._sites:
                continue
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                logits = attrgetter(name)(self.logits)
                fn = self._site_distribution(name, logits, temperature)
                note = self._prior_note(name, fn)
                infer = {} if note is None else {_sites.PRIOR_SCORING_KEY: note}
                # Pyro's InferDict lists only Pyro's own keys; infer dicts carry others at runtime
                result[name] = value = pyro.sample(name, fn, infer=infer)  # type: ignore[arg-type]
                if note is not None and value.requires_grad:
                    try:
                        value.register_hook(partial(_check_prior_term, weakref.ref(self), note))
                    except RuntimeError:  # a tensor that takes no hooks (torch.func, ...)
                        pass
        return result

    def _prior_note(self, name: str, fn) -> _sites.PriorScoring | None:
        """A note to learn how the model scores this site's sample, if it needs watching."""
        if (
            self._warned_prior
            or not self._sites[name].watch_prior
            or not torch.is_grad_enabled()
            or torch.jit.is_tracing()
            or torch.compiler.is_compiling()
        ):
            return None
        note = _sites.PriorScoring(name)
        _sites.watch_exact_kl(_sites.unwrap(fn)[0], note)
        return note

    def _prototype_trace(self) -> Trace:
        """The model's trace recorded at setup; raises if the guide has not been set up."""
        trace = self.prototype_trace
        if trace is None:
            raise RuntimeError("AutoConcrete has not been set up yet: call the guide (or svi.step) first")
        return trace

    def _check_setup(self) -> None:
        self._prototype_trace()

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
        for name, _ in self._prototype_trace().iter_stochastic_nodes():
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

        >>> def model(data):
        ...     scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        ...     with pyro.plate("data", len(data)):
        ...         z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        ...         pyro.sample("x", dist.Normal(z @ torch.tensor([-2.0, 0.0, 2.0]), scale), obs=data)
        >>> guide = auto_concrete_guide(model, estimator="reinmax", temperature=1.0,
        ...                             continuous_kwargs={"init_scale": 0.05})
        >>> sorted(guide(torch.tensor([-2.1, 0.2, 1.9])))
        ['scale', 'z']
    """
    guide = AutoGuideList(model)
    guide.append(AutoConcrete(poutine.block(model, expose_fn=is_concrete_site), **concrete_kwargs))
    guide.append(continuous(poutine.block(model, hide_fn=_is_discrete_sample), **(continuous_kwargs or {})))
    return guide
