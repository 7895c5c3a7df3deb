"""What :mod:`pyro_concrete.kl` and :mod:`pyro_concrete.infer` share about Pyro sites (private).

One place for each of:

- unwrapping a site's distribution from Pyro's ``Independent`` / ``MaskedDistribution`` /
  ``ExpandedDistribution`` wrappers, and rebuilding the wrappers around a new base;
- structural zeros (masked categories, impossible binary outcomes) of a distribution, read
  exactly from ``probs`` where they were given (torch clamps them on the way to logits);
- the advice given for a guide/model pairing that cannot score, raised by the KL
  registrations, :func:`~pyro_concrete.infer.check_guide` and
  :class:`~pyro_concrete.infer.AutoConcrete` alike;
- the record of how a model scored a straight-through guide's sample, by which
  :class:`~pyro_concrete.infer.AutoConcrete` warns when ``Trace_ELBO`` is about to ignore a
  ``OneHotCategorical`` prior (issue 8, item 12).

This module imports nothing else from the package but :mod:`pyro_concrete.ops`, so that
:mod:`pyro_concrete.kl` and every module of :mod:`pyro_concrete.infer` may import it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias, cast

import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import (
    ExpandedDistribution,
    MaskedDistribution,
    TorchDistributionMixin,
)
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical
from torch.distributions.utils import probs_to_logits

from . import ops

if TYPE_CHECKING:
    from pyro.poutine.runtime import Message

# -- wrappers -------------------------------------------------------------------------------------

# A shape wrapper of Pyro's around a site's distribution (see `unwrap`).
Wrapper: TypeAlias = Independent | MaskedDistribution | ExpandedDistribution


def site_distribution(site: Message) -> TorchDistributionMixin:
    """The distribution of a sample site.

    Pyro types a message's ``fn`` as any callable (messages also carry params and custom
    effects); at a sample site it is what ``pyro.sample`` was given, which Pyro types as a
    ``TorchDistributionMixin``.
    """
    return cast(TorchDistributionMixin, site["fn"])


def unwrap(fn: Distribution) -> tuple[Distribution, list[Wrapper]]:
    """``(base, wrappers)``: the distribution inside Pyro's shape wrappers, and the wrappers,
    outermost first (``Independent`` from ``.to_event``, ``MaskedDistribution`` from
    ``.mask``, ``ExpandedDistribution`` from ``.expand`` of a class without its own)."""
    wrappers: list[Wrapper] = []
    while isinstance(fn, (Independent, MaskedDistribution, ExpandedDistribution)):
        wrappers.append(fn)
        fn = fn.base_dist
    return fn, wrappers


def extra_event_dims(wrappers: Sequence[Wrapper]) -> int:
    """The event dimensions that ``to_event`` wrappers add around the base."""
    return sum(w.reinterpreted_batch_ndims for w in wrappers if isinstance(w, Independent))


def map_base(fn: Distribution, change: Callable[[Distribution], Distribution]) -> Distribution:
    """``fn`` with its base replaced by ``change(base)`` inside the same wrappers; ``fn`` itself
    (the same object) when ``change`` returns the base unchanged.

    Raises:
        TypeError: if ``fn`` has wrappers and ``change`` returns a distribution that is not a
            Pyro one (no ``to_event`` / ``mask`` to rebuild them with).
    """
    base, wrappers = unwrap(fn)
    new = change(base)
    if new is base:
        return fn
    for wrapper in reversed(wrappers):
        if not isinstance(new, TorchDistributionMixin):
            raise TypeError(
                f"cannot rebuild Pyro's {type(wrapper).__name__} around a {type(new).__name__}: "
                "the new base must be a Pyro distribution (TorchDistributionMixin)"
            )
        if isinstance(wrapper, Independent):
            new = new.to_event(wrapper.reinterpreted_batch_ndims)
        elif isinstance(wrapper, MaskedDistribution):
            new = new.mask(wrapper._mask)
        else:
            new = new.expand(wrapper.batch_shape)
    return new


# -- structural zeros -------------------------------------------------------------------------------


def logits_of(d: Distribution) -> Tensor:
    """The ``logits`` of a categorical- or Bernoulli-type distribution.

    Raises:
        TypeError: if ``d`` has no logits (torch's ``Distribution`` does not declare them).
    """
    logits = getattr(d, "logits", None)
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"{type(d).__name__} has no logits: a categorical or Bernoulli distribution was expected"
        )
    return logits


def given_probs(d: Distribution) -> Tensor | None:
    """The ``probs`` a torch ``Categorical``/``OneHotCategorical``/``Bernoulli`` was built from
    (with their exact zeros and ones), else ``None``.

    torch turns given probs into logits with clamping (a zero probability becomes a logit of
    ``log(eps)``, about ``-16`` in float32), so their structure must be read from the probs.
    After ``expand`` (a plate around the site) torch keeps both and no longer records which
    was given; the logits are then torch's clamped log of the probs exactly when the probs
    were given (and where both readings agree, either is exact). The package's classes keep
    exact logits (``-inf`` for a zero probability): ``None`` for them.
    """
    if isinstance(d, OneHotCategorical):
        d = d._categorical
    if not isinstance(d, (Categorical, Bernoulli)):
        return None
    probs, logits = d.__dict__.get("probs"), d.__dict__.get("logits")
    if probs is None:
        return None
    if logits is None or d._param is probs or probs.device.type == "meta":
        return probs
    clamped = probs_to_logits(probs.detach(), is_binary=isinstance(d, Bernoulli))
    return probs if torch.equal(logits.detach(), clamped) else None


def categorical_log_probs(d: Distribution) -> tuple[Tensor, Tensor]:
    """``(log_probs, zeros)`` of a categorical-type distribution.

    ``zeros`` marks its structural zeros; ``log_probs`` are the normalised log-probabilities
    with ``0`` (a finite placeholder) there, so that no ``-inf`` reaches arithmetic or a
    gradient. Derivatives with respect to logits or probs are finite (zero at the zeros).
    """
    probs = given_probs(d)
    if probs is not None:
        zeros = probs == 0  # (torch normalises given probs)
        return torch.log(torch.where(zeros, torch.ones_like(probs), probs)), zeros
    logits = logits_of(d)
    zeros = ops.structural_zeros(logits)
    # normalise over the unmasked categories only (a finfo.min logit must not meet exp);
    # log_softmax keeps full precision under a large common offset, logits - logsumexp does not
    log_probs = torch.log_softmax(logits.masked_fill(zeros, -torch.inf), -1)
    return log_probs.masked_fill(zeros, 0.0), zeros


def bernoulli_log_probs(d: Distribution) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(log P(1), log P(0), P(1) == 0, P(0) == 0)`` of a binary distribution.

    Impossible outcomes (probs 0 or 1, logits ``∓inf``) get the finite placeholder ``0`` in
    the log-probabilities and are marked in the two masks; derivatives are finite.
    """
    probs = given_probs(d)
    if probs is not None:
        zero1, zero0 = probs == 0, probs == 1
        one = torch.ones_like(probs)
        log_p1 = torch.log(torch.where(zero1, one, probs))
        log_p0 = torch.log1p(-torch.where(zero0, torch.zeros_like(probs), probs))
        return log_p1, log_p0, zero1, zero0
    logits = logits_of(d)
    certain = ops.certain_outcomes(logits)  # log-probabilities 0 (exact) and -inf (placeholder 0)
    zero1, zero0 = certain & (logits < 0), certain & (logits > 0)
    safe = torch.where(certain, torch.zeros_like(logits), logits)
    log_p1 = torch.where(certain, torch.zeros_like(logits), F.logsigmoid(safe))
    log_p0 = torch.where(certain, torch.zeros_like(logits), F.logsigmoid(-safe))
    return log_p1, log_p0, zero1, zero0


def zero_mask(d: Distribution) -> Tensor | None:
    """Where ``d`` has a structural zero, in the shape of its values: per category for a
    categorical-type distribution (``event_dim`` 1), ``(P(1) == 0, P(0) == 0)`` stacked in a
    last dimension of 2 for a binary one; ``None`` for other distributions."""
    if not hasattr(d, "logits"):
        return None
    if len(d.event_shape) == 1 or isinstance(d, Categorical):  # Pyro's event_dim == 1
        return categorical_log_probs(d)[1]
    *_, zero1, zero0 = bernoulli_log_probs(d)
    return torch.stack([zero1, zero0], -1)


# -- advice for pairings that cannot score -----------------------------------------------------------

ISSUE_2628 = (
    "a Monte Carlo ELBO with this pairing mixes a density with a probability mass and is not a "
    "bound on the evidence (Pyro issue 2628)"
)


def relaxed_guide_for_discrete_site(binary: bool) -> str:
    """What to do about a relaxed (continuous) guide for a discrete model site."""
    straight_through = "BinaryConcreteStraightThrough" if binary else "ConcreteStraightThrough"
    return (
        f"{ISSUE_2628}. Use pyro_concrete.{straight_through} in the guide (exact discrete values "
        "and log_prob, relaxed gradients), or make the model site relaxed too (the relaxed model "
        "of Maddison et al. 2017: Concrete/ExpConcrete, BinaryConcrete/LogitBinaryConcrete)"
    )


def one_hot_for_integer_site(name: str = "z") -> str:
    """What to do about an integer-valued ``Categorical`` site with a one-hot guide."""
    return (
        "no gradient can reach the model through an integer index. Write the model site as "
        f"pyro.sample('{name}', dist.OneHotCategorical(...)) and use the one-hot value (e.g. "
        "`(z * locs).sum(-1)` or `z @ locs` instead of `locs[z]`), or enumerate it "
        "(infer={'enumerate': 'parallel'} on the site, with TraceEnum_ELBO)"
    )


IGNORED_PRIOR = (
    "torch's OneHotCategorical.log_prob scores value.argmax(-1), which has no gradient with "
    "respect to the value, so the straight-through gradient of the prior term E_q[log p(z)] is "
    "zero and the guide learns as if the prior were uniform (a biased posterior, with no error "
    "raised). Either wrap the model given to SVI: "
    "SVI(pyro_concrete.infer.differentiable_one_hot(model), guide, optim, Trace_ELBO()), which "
    "scores these sites as sum_k z_k log p_k (the same values, a gradient in z), or train with "
    "TraceMeanField_ELBO(), which uses the exact KL for these sites"
)


# -- how a model scored a guide's straight-through sample --------------------------------------------

PRIOR_SCORING_KEY = "_pyro_concrete_prior_scoring"


class PriorScoring:
    """A note the guide attaches to one sample site for one call: set to ``handled`` when the
    model's prior term for the site will pass a straight-through gradient to the guide
    (rescored by :func:`~pyro_concrete.infer.differentiable_one_hot`, or replaced by an exact
    KL registered in :mod:`pyro_concrete.kl`).

    It reaches the model's site in the site's ``infer`` dict (Pyro's ``replay`` gives the model
    site the guide site's ``infer`` dict itself) and the KL through :func:`watch_exact_kl`.
    """

    __slots__ = ("handled", "site")

    def __init__(self, site: str) -> None:
        self.site = site
        self.handled = False


class _ByLogits:
    """A weak map from a distribution's logits to a value, that also finds the value from an
    ``expand``-ed copy of the distribution: Pyro's plates may replace a site's distribution by
    one (vectorised particles, a plate around an unbatched site), whose logits are a view of
    the original's, so both are keyed by the storage root of their logits. Tensors cannot be
    weak keys (their ``==`` is elementwise), hence ids checked against a weak reference."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, object]] = {}

    @staticmethod
    def _root(d: Distribution) -> Tensor:
        logits = logits_of(d)
        return logits if logits._base is None else logits._base

    def __setitem__(self, d: Distribution, value: object) -> None:
        if len(self._entries) > 256:  # entries live for one ELBO evaluation: drop dead ones
            for key, (ref, _) in list(self._entries.items()):
                if ref() is None:
                    del self._entries[key]
        root = self._root(d)
        self._entries[id(root)] = (weakref.ref(root), value)

    def get(self, d: Distribution) -> object | None:
        root = self._root(d)
        entry = self._entries.get(id(root))
        return entry[1] if entry is not None and entry[0]() is root else None


_NOTES = _ByLogits()


def watch_exact_kl(guide_distribution: Distribution, note: PriorScoring) -> None:
    """Let :func:`note_exact_kl` find ``note`` from the guide's (base) distribution or an
    expanded copy of it."""
    _NOTES[guide_distribution] = note


def note_exact_kl(guide_distribution: Distribution) -> None:
    """Called by the KL registrations: the ELBO uses the exact KL for this guide distribution."""
    note = _NOTES.get(guide_distribution)
    if isinstance(note, PriorScoring):
        note.handled = True


_RESCORED = _ByLogits()


def mark_rescored(d: Distribution) -> Distribution:
    """Record that ``d`` replaces a ``OneHotCategorical`` to score it linearly in the value."""
    _RESCORED[d] = True
    return d


def is_rescored(d: Distribution) -> bool:
    """Whether ``d`` (or the distribution it was expanded from) came from :func:`mark_rescored`
    rather than being a model's own distribution."""
    return hasattr(d, "logits") and _RESCORED.get(d) is True


def note_rescored(msg: dict) -> None:
    """Called for a model site scored linearly in its value (see ``PriorScoring``)."""
    note = msg["infer"].get(PRIOR_SCORING_KEY) if msg.get("infer") else None
    if isinstance(note, PriorScoring):
        note.handled = True
