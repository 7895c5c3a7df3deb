"""A pre-flight check of a guide against its model, for pairings that give a wrong ELBO silently."""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["check_guide"]


def _describe(fn) -> str:
    return type(fn).__name__


def check_guide(model: Callable, guide: Callable, *args, **kwargs) -> None:
    """Raises ``TypeError`` where a guide site cannot score against its model site.

    Runs the guide and the model once each (the model from its prior, not replayed, so
    that a mismatched value cannot crash it first) and compares every latent site they
    share:

    - a continuous (relaxed) guide for a discrete model site, e.g. ``Concrete`` or Pyro's
      ``RelaxedOneHotCategoricalStraightThrough`` against ``OneHotCategorical``: the ELBO
      would mix a density with a probability mass (with validation off, a silent wrong
      answer: Pyro issue 2628). Use :class:`~pyro_concrete.ConcreteStraightThrough`;
    - a discrete guide for a continuous (relaxed) model site;
    - discrete sites of different event dimensions, e.g. a one-hot guide for an
      integer-valued ``Categorical`` model site.

    Call it once before training; it costs one run of each.

    Example::

        >>> check_guide(model, guide, data)   # raises TypeError naming the site and the fix
    """
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(model).get_trace(*args, **kwargs)
    for name, guide_site in guide_trace.iter_stochastic_nodes():
        model_site = model_trace.nodes.get(name)
        if (
            site_is_subsample(guide_site)
            or model_site is None
            or model_site["type"] != "sample"
            or model_site["is_observed"]
        ):
            continue
        q, p = guide_site["fn"], model_site["fn"]
        q_discrete, p_discrete = q.support.is_discrete, p.support.is_discrete
        if p_discrete and not q_discrete:
            raise TypeError(
                f"site '{name}': the guide's {_describe(q)} is continuous but the model's "
                f"{_describe(p)} is discrete; an ELBO would mix a density with a probability mass "
                "(not a bound; Pyro issue 2628). Use pyro_concrete.ConcreteStraightThrough or "
                "BinaryConcreteStraightThrough in the guide (exact discrete values, relaxed gradients), "
                "or make the model site relaxed too (Concrete/ExpConcrete, Maddison et al. 2017)."
            )
        if q_discrete and not p_discrete:
            raise TypeError(
                f"site '{name}': the guide's {_describe(q)} is discrete but the model's {_describe(p)} "
                "is continuous, whose density at discrete points is meaningless. Use a relaxed guide "
                "(Concrete/ExpConcrete, or ExpConcrete in both for a stable KL) for a relaxed model site."
            )
        if q_discrete and q.event_dim != p.event_dim:
            raise TypeError(
                f"site '{name}': the guide's {_describe(q)} has event_dim {q.event_dim} but the model's "
                f"{_describe(p)} has event_dim {p.event_dim} (a one-hot value against an integer "
                "Categorical?). Write the model site as OneHotCategorical and use the one-hot value, or "
                "enumerate it (infer={'enumerate': 'parallel'} with TraceEnum_ELBO)."
            )
