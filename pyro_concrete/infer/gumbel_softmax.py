r"""Jang et al. 2017's Gumbel-Softmax objective as a Pyro ELBO.

Jang, Gu and Poole train a categorical VAE with

.. math::
    \mathcal{L}_{GS} = \mathbb{E}_{G}\big[\log p_\theta(x \mid \tilde z)\big]
        - \mathrm{KL}\big(\mathrm{Cat}(q_\phi(\cdot \mid x)) \,\|\, \mathrm{Cat}(\pi)\big),
    \qquad \tilde z = \mathrm{softmax}\big((\log q_\phi(\cdot \mid x) + G) / \tau\big),

the likelihood read at the *relaxed* sample and the KL term of the *discrete* variables.
It is neither the ELBO of the discrete model (whose likelihood term reads one-hot values)
nor that of the relaxed model (whose KL term is the KL of two Concrete distributions, which
grows without bound as the posterior sharpens, where the categorical one stays below
``log K``); it approaches the discrete ELBO as ``τ → 0``.

In Pyro it is the relaxed model and guide (``Concrete`` / ``BinaryConcrete`` sites, or their
log-space twins, or torch's relaxed classes) trained with :class:`GumbelSoftmax_ELBO`:
``TraceMeanField_ELBO`` with every relaxed latent site's KL term replaced by the KL of the
discrete distributions the two sites relax (same logits; the temperatures play no part).
The model's relaxed prior still defines the model (what ``Predictive`` samples); only its
KL term changes.
"""

from __future__ import annotations

from typing import Any

from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.trace_struct import Trace
from torch.distributions import (
    Bernoulli,
    Distribution,
    OneHotCategorical,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
)
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from .. import _sites
from ..distributions import (
    BinaryConcrete,
    BinaryConcreteStraightThrough,
    Concrete,
    ConcreteStraightThrough,
    ExpConcrete,
    LogitBinaryConcrete,
)

__all__ = ["GumbelSoftmax_ELBO"]

_CATEGORICAL = (Concrete, ExpConcrete, RelaxedOneHotCategorical, ExpRelaxedCategorical)
_BINARY = (BinaryConcrete, LogitBinaryConcrete, RelaxedBernoulli, LogitRelaxedBernoulli)


def _discrete_twin(base: Distribution) -> Distribution:
    """The discrete distribution a relaxed one relaxes, as a straight-through class of the same
    logits (it has ``rsample``, as ``TraceMeanField_ELBO`` asks of a guide, and its KLs are the
    exact discrete ones); any other distribution unchanged."""
    if isinstance(base, _CATEGORICAL):
        return ConcreteStraightThrough(base.temperature, logits=base.logits, validate_args=False)
    if isinstance(base, _BINARY):
        return BinaryConcreteStraightThrough(base.temperature, logits=base.logits, validate_args=False)
    return base


class GumbelSoftmax_ELBO(TraceMeanField_ELBO):
    r"""``TraceMeanField_ELBO`` with the discrete KL term at relaxed latent sites: Jang et al.'s
    Gumbel-Softmax objective (see the module's description).

    At every latent site whose guide distribution is a relaxed one (:class:`~pyro_concrete.
    Concrete`, :class:`~pyro_concrete.ExpConcrete`, :class:`~pyro_concrete.BinaryConcrete`,
    :class:`~pyro_concrete.LogitBinaryConcrete` or torch's ``RelaxedOneHotCategorical``,
    ``ExpRelaxedCategorical``, ``RelaxedBernoulli``, ``LogitRelaxedBernoulli``, inside any
    ``to_event`` / ``mask`` / ``expand``), the KL term is ``KL(Cat(q) || Cat(p))``
    (``Bernoulli`` for the binary classes) of the guide's and the model's logits, exactly,
    masks included. The model's site must be relaxed too, in the same space (a model written
    with discrete sites is relaxed, unchanged, by
    :class:`~pyro_concrete.infer.AutoRelaxReparam` ``("relaxed")``). A discrete model site
    (``OneHotCategorical``, ``Bernoulli``) works only with validation off: with it on, Pyro
    rejects the relaxed value at the discrete site before this loss sees it. The likelihood
    reads the relaxed sample unchanged. Every other site is scored as ``TraceMeanField_ELBO``
    scores it.

    Raises:
        TypeError: at a relaxed guide site whose model site is neither relaxed nor discrete
            of the same kind (no discrete KL exists).

    Example::

        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_concrete import Concrete
        >>> def model(x):
        ...     z = pyro.sample("z", Concrete(0.5, logits=torch.zeros(3)))
        ...     pyro.sample("x", dist.Normal(z @ torch.tensor([-1.0, 0.0, 1.0]), 0.5), obs=x)
        >>> def guide(x):
        ...     logits = pyro.param("q", torch.zeros(3))
        ...     pyro.sample("z", Concrete(0.5, logits=logits))
        >>> loss = GumbelSoftmax_ELBO().differentiable_loss(model, guide, torch.tensor(1.0))
        >>> bool(torch.isfinite(loss))
        True
    """

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> tuple[Trace, Trace]:
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample" or model_site["is_observed"] or name not in guide_trace.nodes:
                continue
            guide_site = guide_trace.nodes[name]
            q = _sites.site_distribution(guide_site)
            q_discrete = _sites.map_base(q, _discrete_twin)
            if q_discrete is q:
                continue  # not a relaxed site: TraceMeanField_ELBO's own term
            p = _sites.site_distribution(model_site)
            p_discrete = _sites.map_base(p, _discrete_twin)
            q_space, p_space = _value_space(_sites.unwrap(q)[0]), _value_space(_sites.unwrap(p)[0])
            if q_space != p_space:
                raise TypeError(
                    f"GumbelSoftmax_ELBO: at site {name!r} the guide is a relaxed "
                    f"{type(_sites.unwrap(q)[0]).__name__} (values {q_space}) but the model's "
                    f"distribution is {type(_sites.unwrap(p)[0]).__name__} "
                    f"(values {p_space or 'of another kind'}): the discrete KL term needs a model site "
                    "of the same kind and space: Concrete or OneHotCategorical for a Concrete guide, "
                    "ExpConcrete for ExpConcrete, BinaryConcrete or Bernoulli for BinaryConcrete, "
                    "LogitBinaryConcrete for LogitBinaryConcrete"
                )
            guide_site["fn"] = q_discrete
            model_site["fn"] = p_discrete
        return model_trace, guide_trace


_SPACES = (
    ((Concrete, RelaxedOneHotCategorical, ConcreteStraightThrough, OneHotCategorical), "on the simplex"),
    ((ExpConcrete, ExpRelaxedCategorical), "logarithms of points of the simplex"),
    ((BinaryConcrete, RelaxedBernoulli, BinaryConcreteStraightThrough, Bernoulli), "in [0, 1]"),
    ((LogitBinaryConcrete, LogitRelaxedBernoulli), "logits of points of [0, 1]"),
)


def _value_space(d: Distribution) -> str | None:
    """Where a relaxed or discrete distribution's values live (``None`` for other classes)."""
    for classes, space in _SPACES:
        if isinstance(d, classes):
            return space
    return None
