"""Inference helpers for Pyro: temperature schedules and an automatic discrete guide.

- :mod:`.schedules`: temperature annealing usable from any training loop (Jang et al.
  2017's exponential decay with a floor, constant, linear, cosine) and
  :func:`learned_temperature`, a positive temperature learned as a Pyro parameter;
- :mod:`.autoguide`: :class:`AutoConcrete`, a straight-through ``AutoGuide`` for the
  Bernoulli and OneHotCategorical sites of a model, and :func:`auto_concrete_guide`, which
  pairs it with a continuous autoguide;
- :mod:`.gumbel_softmax`: :class:`GumbelSoftmax_ELBO`, Jang et al. 2017's objective for
  relaxed models (the relaxed sample into the likelihood, the discrete KL term);
- :mod:`.reparam`: reparameterisers for ``poutine.reparam`` that relax a discrete model
  without rewriting it (:class:`StraightThroughReparam`, :class:`RelaxReparam`, the strategy
  :class:`AutoRelaxReparam`), and :class:`ConcreteGumbelReparam`, the Gumbel
  reparameterisation of this package's relaxed classes;
- :mod:`.checks`: :func:`check_guide`, a pre-flight check for guide/model pairings that
  would give a wrong ELBO silently (a relaxed guide for a discrete site, Pyro issue 2628);
- :mod:`.scoring`: :func:`differentiable_one_hot`, a model handler that lets
  straight-through gradients reach ``OneHotCategorical`` prior terms under ``Trace_ELBO``
  (without it, :class:`AutoConcrete` warns once at the first training step).

Every piece of advice these give (and :mod:`pyro_concrete.kl`'s errors) is written once, in
the private ``_sites`` module, with the unwrapping of Pyro's ``Independent`` /
``MaskedDistribution`` / ``ExpandedDistribution`` and the reading of masks.
"""

from .autoguide import AutoConcrete, auto_concrete_guide, is_concrete_site
from .checks import check_guide
from .gumbel_softmax import GumbelSoftmax_ELBO
from .reparam import AutoRelaxReparam, ConcreteGumbelReparam, RelaxReparam, StraightThroughReparam
from .schedules import (
    ConstantTemperature,
    CosineDecay,
    ExponentialDecay,
    LinearDecay,
    TemperatureSchedule,
    learned_temperature,
)
from .scoring import DifferentiableOneHotMessenger, differentiable_one_hot

__all__ = [
    "AutoConcrete",
    "AutoRelaxReparam",
    "ConcreteGumbelReparam",
    "ConstantTemperature",
    "CosineDecay",
    "DifferentiableOneHotMessenger",
    "ExponentialDecay",
    "GumbelSoftmax_ELBO",
    "LinearDecay",
    "RelaxReparam",
    "StraightThroughReparam",
    "TemperatureSchedule",
    "auto_concrete_guide",
    "check_guide",
    "differentiable_one_hot",
    "is_concrete_site",
    "learned_temperature",
]
