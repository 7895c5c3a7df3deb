"""A pre-flight check of a guide against its model, for pairings that give a wrong ELBO silently."""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution

from .. import _sites

__all__ = ["check_guide"]


def _describe(fn: Distribution) -> str:
    return type(fn).__name__


def _is_discrete(fn: Distribution) -> bool:
    """Whether ``fn``'s support is discrete (torch types a support as optional)."""
    support = fn.support
    if support is None:
        raise TypeError(f"{_describe(fn)} declares no support: cannot tell whether it is discrete")
    return support.is_discrete


def _check_masks(name: str, q: Distribution, p: Distribution) -> None:
    """Raises ``ValueError`` where the guide and the model disagree on structural zeros."""
    q_base, p_base = _sites.unwrap(q)[0], _sites.unwrap(p)[0]
    zero_q, zero_p = _sites.zero_mask(q_base), _sites.zero_mask(p_base)
    if zero_q is None or zero_p is None or zero_q.shape[-1:] != zero_p.shape[-1:]:
        return
    if "meta" in (zero_q.device.type, zero_p.device.type):
        return  # shapes only, no values to compare
    try:
        zero_q, zero_p = torch.broadcast_tensors(zero_q, zero_p.to(zero_q.device))
    except RuntimeError:
        return  # a shape mismatch is Pyro's to report, with the site's shapes
    if _is_discrete(q):
        if bool((~zero_q & zero_p).any()):
            raise ValueError(
                f"site '{name}': the guide's {_describe(q)} gives positive probability to outcomes "
                f"that the model's {_describe(p)} rules out (zero probs, -inf logits): the ELBO is "
                "-inf whenever the guide draws one (the KL is +inf). Mask the same categories in the "
                "guide (-inf logits); AutoConcrete reads the masks from the prior."
            )
    elif bool((zero_q != zero_p).any()):
        raise ValueError(
            f"site '{name}': the guide's {_describe(q)} and the model's {_describe(p)} mask different "
            "categories (or outcomes): relaxed distributions on different faces of the simplex have no "
            "common density (the KL is +inf). Mask the same categories in both."
        )


def check_guide(model: Callable, guide: Callable, *args, **kwargs) -> None:
    """Raises where a guide site cannot score against its model site.

    Runs the guide and the model once each (the model from its prior, not replayed, so
    that a mismatched value cannot crash it first) and compares every latent site they
    share:

    - ``TypeError``: a continuous (relaxed) guide for a discrete model site, e.g.
      ``Concrete`` or Pyro's ``RelaxedOneHotCategoricalStraightThrough`` against
      ``OneHotCategorical``: the ELBO would mix a density with a probability mass (with
      validation off, a silent wrong answer: Pyro issue 2628). Use
      :class:`~pyro_concrete.ConcreteStraightThrough`;
    - ``TypeError``: a discrete guide for a continuous (relaxed) model site;
    - ``TypeError``: discrete sites of different event dimensions, e.g. a one-hot guide for
      an integer-valued ``Categorical`` model site;
    - ``ValueError``: masks (``-inf`` logits, zero probs) that do not fit: a discrete guide
      with positive probability on a category the model masks (an ELBO of ``-inf`` whenever
      it is drawn), or relaxed distributions masking different categories.

    Call it once before training; it costs one run of each.

    Args:
        model (callable): the Pyro model.
        guide (callable): the guide to check against it.
        *args: positional arguments of both.
        **kwargs: keyword arguments of both.

    Raises:
        TypeError: a pairing whose ELBO mixes kinds of distribution (see above).
        ValueError: masks that do not fit (see above).

    Example::

        >>> def model():
        ...     pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        >>> def guide():
        ...     pyro.sample("z", pc.Concrete(0.5, logits=torch.zeros(3)))  # relaxed: wrong here
        >>> try:
        ...     check_guide(model, guide)
        ... except TypeError as error:
        ...     print("ConcreteStraightThrough" in str(error))
        True
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
        q, p = _sites.site_distribution(guide_site), _sites.site_distribution(model_site)
        q_discrete, p_discrete = _is_discrete(q), _is_discrete(p)
        if p_discrete and not q_discrete:
            raise TypeError(
                f"site '{name}': the guide's {_describe(q)} is continuous but the model's "
                f"{_describe(p)} is discrete; "
                + _sites.relaxed_guide_for_discrete_site(binary=len(_sites.unwrap(q)[0].event_shape) == 0)
                + "."
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
                f"Categorical?): {_sites.one_hot_for_integer_site(name)}."
            )
        _check_masks(name, q, p)
