"""A model handler that lets straight-through gradients reach a model's one-hot prior terms.

torch's ``OneHotCategorical.log_prob(value)`` scores ``value.argmax(-1)``: a piecewise
constant function of the value, whose gradient with respect to the value is zero. With a
straight-through guide and ``Trace_ELBO``, the ELBO's prior term ``E_q[log p(z)]`` then
gets no pathwise gradient, and the guide learns as if the prior were uniform (measured on
a 3-component mixture with prior weights ``(0.5, 0.3, 0.2)`` and a ReinMax guide at
temperature 1: a mean absolute error of about 0.055 in the posterior probabilities however
long it trains, against about 0.01 with this handler).
``Bernoulli.log_prob`` is linear in the value and has no such problem, and neither has
``TraceMeanField_ELBO``, which uses the exact KL for these sites instead.

:func:`differentiable_one_hot` rescores the model's ``OneHotCategorical`` sites with
:class:`~pyro_concrete.ConcreteStraightThrough`'s ``log_prob``, ``sum_k z_k log p_k``: the
same values on one-hot vectors, linear in between, so the straight-through estimators
differentiate the prior term as they do the likelihood. The distribution of the site is
unchanged (same probabilities and masks, same samples, ``enumerate_support``), and the KL
registered for the pair keeps ``TraceMeanField_ELBO`` exact.

:class:`~pyro_concrete.infer.AutoConcrete` cannot rescore the model itself (a guide does not
change how its model scores a sample), so it watches instead: when ``Trace_ELBO`` backs
through a guided sample that the model scored with torch's argmax ``log_prob`` (neither
rescored here nor replaced by a registered KL), it warns once, naming this handler and
``TraceMeanField_ELBO``. The handler tells it, through the site's ``infer`` dict (which
Pyro's ``replay`` shares between a guide site and its model site), that a site was rescored.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution, OneHotCategorical

from .. import _sites
from ..distributions import ConcreteStraightThrough

__all__ = ["DifferentiableOneHotMessenger", "differentiable_one_hot"]


def _linear_one_hot(base: Distribution) -> Distribution:
    """A torch ``OneHotCategorical`` as a :class:`~pyro_concrete.ConcreteStraightThrough` of the
    same probabilities; any other distribution unchanged."""
    if not isinstance(base, OneHotCategorical):
        return base
    validate = base.__dict__.get("_validate_args")
    # Given probs are read exactly: torch clamps them on the way to logits, which would give
    # a category of zero probability a tiny positive one (sampled, enumerated, scored).
    probs = _sites.given_probs(base)
    logits = base.logits if probs is None else None
    # The temperature only matters to rsample's gradient, which a model site never
    # uses in SVI (its value comes from the guide); 1 is the neutral choice.
    return _sites.mark_rescored(
        ConcreteStraightThrough(1.0, probs=probs, logits=logits, validate_args=validate)
    )


def _rescored(fn: Distribution) -> Distribution:
    """``fn`` with every torch ``OneHotCategorical`` inside it replaced; ``fn`` itself if none."""
    return _sites.map_base(fn, _linear_one_hot)


class DifferentiableOneHotMessenger(Messenger):
    """Rescores ``OneHotCategorical`` sample sites linearly in the value (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._rescored_messages: set[int] = set()  # ids of messages between process and post

    def __enter__(self) -> DifferentiableOneHotMessenger:
        self._rescored_messages.clear()  # none is left unless a model run raised
        return super().__enter__()

    def _pyro_sample(self, msg) -> None:
        if site_is_subsample(msg):
            return
        fn = _rescored(msg["fn"])
        if fn is not msg["fn"]:
            msg["fn"] = fn
            self._rescored_messages.add(id(msg))

    def _pyro_post_sample(self, msg) -> None:
        # After replay the site's infer dict is the guide's: tell AutoConcrete that this prior
        # term passes the straight-through gradient (see _sites.PriorScoring). Checked by the
        # message, not its fn, which outer plates may have replaced by an expanded copy.
        if id(msg) in self._rescored_messages:
            self._rescored_messages.discard(id(msg))
            _sites.note_rescored(msg)


def differentiable_one_hot(fn: Callable | None = None) -> Callable | DifferentiableOneHotMessenger:
    """Handler: score a model's ``OneHotCategorical`` sites as ``sum_k z_k log p_k``.

    Use it on the *model* given to ``SVI`` with ``Trace_ELBO`` and a straight-through guide
    (e.g. :class:`~pyro_concrete.infer.AutoConcrete`), so that the prior term of the ELBO
    is differentiated by the estimator (torch's ``log_prob`` takes an argmax of the value
    and has no gradient in it). Not needed with ``TraceMeanField_ELBO``.

    Masked categories (``-inf`` logits, zero probs) stay masked: never sampled, ``log_prob``
    ``-inf`` for a value on one, and a finite derivative in the value (see
    :meth:`~pyro_concrete.ConcreteStraightThrough.log_prob`). Given probs are used exactly;
    torch clamps probabilities below its float epsilon when it turns them into logits, so
    its ``log_prob`` differs from the rescored one for such categories.

    Args:
        fn (callable, optional): the model; without it, returns the messenger (usable as a
            context manager).

    Returns:
        callable or DifferentiableOneHotMessenger: the wrapped model, or the messenger.

    Example::

        >>> from pyro.infer import SVI, Trace_ELBO
        >>> from pyro_concrete.infer import AutoConcrete
        >>> def model(data):
        ...     with pyro.plate("data", len(data)):
        ...         z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        ...         pyro.sample("x", dist.Normal(z @ torch.tensor([-2.0, 0.0, 2.0]), 1.0), obs=data)
        >>> optim = pyro.optim.Adam({"lr": 0.05})
        >>> svi = SVI(differentiable_one_hot(model), AutoConcrete(model), optim, Trace_ELBO())
        >>> loss = svi.step(torch.tensor([-2.1, 0.2, 1.9]))
    """
    messenger = DifferentiableOneHotMessenger()
    return messenger if fn is None else messenger(fn)
