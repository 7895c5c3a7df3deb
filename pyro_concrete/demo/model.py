"""The demo's model: a VAE with categorical latent variables (Jang et al. 2017, sec. 4.2).

It is the one model behind ``python -m pyro_concrete.demo`` and ``benchmarks/vae.py``, an
example of the package in use rather than part of its API.

Generative model, for an image ``x`` of ``P`` binary pixels::

    z_l ~ OneHotCategorical(uniform over K classes),   l = 1..L  (independent)
    x   ~ Bernoulli(logits = decoder(z_1, ..., z_L))   (P independent pixels)

Five ways to train it (``estimator``):

- ``"st"``, ``"gumbel_rao"``, ``"reinmax"``: the discrete model, its guide ``q(z_l | x)``
  (logits ``encoder(x)[l]``) sampled by :class:`~pyro_concrete.ConcreteStraightThrough`
  with that estimator: exact one-hot values scored with the exact discrete ``log_prob``,
  ``TraceMeanField_ELBO`` with the exact categorical KL. The training loss is an honest
  estimate of the negative ELBO of the discrete model.
- ``"gumbel_softmax"``: Jang et al. 2017's Gumbel-Softmax VAE. The discrete model, relaxed
  without rewriting it (:class:`~pyro_concrete.infer.RelaxReparam`): the decoder reads the
  relaxed sample of :class:`~pyro_concrete.Concrete` at the (annealed) temperature; the KL
  term is the categorical KL of the encoder's probabilities to the prior
  (:class:`~pyro_concrete.infer.GumbelSoftmax_ELBO`).
- ``"concrete"``: Maddison et al. 2017's relaxed model. Prior and guide are
  :class:`~pyro_concrete.ExpConcrete` (the log-space form) at their own temperatures
  (``prior_temperature``, and the annealed guide ``temperature``); the decoder reads the
  relaxed sample ``exp(y)``; the KL term is ``log q(y) - log p(y)`` at the sample, in log
  space (``Trace_ELBO``), or with ``relaxed_kl="exact"`` the exact KL of the two
  ExpConcretes (``TraceMeanField_ELBO``; it needs equal temperatures). The loss is the
  negative ELBO of the relaxed model.

Whatever the training, :meth:`CategoricalVAE.held_out_neg_elbo` scores the *discrete*
model with the discrete guide ``OneHotCategorical(logits=encoder(x))``, and
:meth:`CategoricalVAE.training_loss` gives each way's own Pyro loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from torch import Tensor, nn

from .._checks import check_int, check_positive_float
from ..distributions import Concrete, ConcreteStraightThrough, ExpConcrete
from ..infer.gumbel_softmax import GumbelSoftmax_ELBO
from ..infer.reparam import RelaxReparam

__all__ = [
    "ESTIMATORS",
    "MADDISON_TEMPERATURES",
    "RELAXED_KL",
    "CategoricalVAE",
    "check_training_choice",
    "maddison_temperatures",
]

ESTIMATORS = ("st", "gumbel_rao", "reinmax", "gumbel_softmax", "concrete")
RELAXED_KL = ("mc", "exact")

# Maddison et al. 2017, appendix D.5: the (posterior, prior) temperatures they found best for
# n-ary Concrete VAEs ("We found it valuable to have different values for the prior and
# posterior"), fixed during training ("No temperature annealing was used").
MADDISON_TEMPERATURES = {2: (2 / 3, 1 / 2), 4: (1.0, 2 / 3), 8: (2 / 3, 2 / 5)}


def check_training_choice(estimator: str, prior_temperature: float | None, relaxed_kl: str) -> None:
    """``ValueError`` for an unknown ``estimator`` or ``relaxed_kl``, or for the Concrete VAE's
    options (a prior temperature, the exact KL) given to another estimator."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if relaxed_kl not in RELAXED_KL:
        raise ValueError(f"relaxed_kl must be one of {RELAXED_KL}, got {relaxed_kl!r}")
    if estimator != "concrete" and prior_temperature is not None:
        raise ValueError(f"prior_temperature is for estimator 'concrete' only, not {estimator!r}")
    if estimator != "concrete" and relaxed_kl != "mc":
        raise ValueError(f"relaxed_kl='exact' is for estimator 'concrete' only, not {estimator!r}")


def maddison_temperatures(num_classes: int) -> tuple[float, float]:
    """``(posterior, prior)`` temperatures Maddison et al. 2017 recommend for ``num_classes``
    classes: their table for 2, 4 and 8 classes, the nearest entry (in ``log n``) otherwise.

    Example::

        >>> maddison_temperatures(8)
        (0.6666666666666666, 0.4)
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    nearest = min(MADDISON_TEMPERATURES, key=lambda n: abs(math.log(n / num_classes)))
    return MADDISON_TEMPERATURES[nearest]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CategoricalVAE(nn.Module):
    r"""A VAE with ``num_latents`` categorical latents of ``num_classes`` classes each.

    The encoder and decoder are MLPs with ReLU hidden layers (``hidden`` sizes, mirrored in
    the decoder). :meth:`model` and :meth:`guide` take a batch ``x`` of shape
    ``(batch, num_pixels)`` with values in ``{0, 1}`` and are used with Pyro's ``SVI`` and
    the loss :meth:`training_loss` gives; the latent site ``"z"`` has shape
    ``(batch, num_latents, num_classes)`` (one-hot rows, points of the simplex for
    ``"gumbel_softmax"``, their logarithms for ``"concrete"``). ``temperature`` (the guide's)
    and ``kl_scale`` (1 by default: the weight of the latent site's terms, that is of the KL
    term, for a warm-up) are plain attributes: set them between steps.

    Args:
        num_pixels (int): size of an observation ``P``.
        num_latents (int): number of categorical latents ``L``.
        num_classes (int): classes per latent ``K``.
        estimator (str): one of :data:`ESTIMATORS` (see the module's description).
        temperature (float): initial temperature of the guide's relaxation.
        hidden (sequence of int): hidden layer sizes of the encoder (the decoder mirrors them).
        rao_samples (int): conditional noise draws of ``"gumbel_rao"``.
        prior_temperature (float, optional): temperature of the relaxed prior of
            ``"concrete"`` (default: Maddison et al.'s for ``num_classes``,
            :func:`maddison_temperatures`, or with ``relaxed_kl="exact"`` the guide's
            ``temperature``); ``None`` for the other estimators.
        relaxed_kl (str): the KL term of ``"concrete"``: ``"mc"`` (one sample, in log space)
            or ``"exact"`` (needs ``prior_temperature`` equal to the guide's temperature,
            which then is not annealed below it).

    Example::

        >>> vae = CategoricalVAE(num_pixels=64, num_latents=8, num_classes=8, estimator="st")
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
        ...                      vae.training_loss())
        >>> loss = svi.step(torch.bernoulli(torch.full((100, 64), 0.3)))
        >>> neg_elbo = vae.held_out_neg_elbo(torch.zeros(10, 64))   # nats per image
        >>> isinstance(neg_elbo, float) and neg_elbo > 0
        True
    """

    def __init__(
        self,
        num_pixels: int = 64,
        num_latents: int = 8,
        num_classes: int = 8,
        estimator: str = "st",
        temperature: float = 1.0,
        hidden: Sequence[int] = (256,),
        rao_samples: int = 10,
        prior_temperature: float | None = None,
        relaxed_kl: str = "mc",
    ) -> None:
        super().__init__()
        check_training_choice(estimator, prior_temperature, relaxed_kl)
        self.num_pixels = check_int("num_pixels", num_pixels, minimum=1)
        self.num_latents = check_int("num_latents", num_latents, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        hidden = tuple(check_int(f"hidden[{i}]", size, minimum=1) for i, size in enumerate(hidden))
        self.estimator = estimator
        self.temperature = check_positive_float("temperature", temperature)
        self.kl_scale = 1.0  # weight of the latent site's terms (KL warm-up), set between steps
        self.rao_samples = check_int("rao_samples", rao_samples, minimum=1)
        if estimator == "concrete":
            if prior_temperature is None:  # the exact KL needs the guide's
                exact = relaxed_kl == "exact"
                prior_temperature = self.temperature if exact else maddison_temperatures(num_classes)[1]
            prior_temperature = check_positive_float("prior_temperature", prior_temperature)
        self.prior_temperature = prior_temperature
        self.relaxed_kl = relaxed_kl
        width = num_latents * num_classes
        self.encoder = _mlp([num_pixels, *hidden, width])
        self.decoder = _mlp([width, *reversed(hidden), num_pixels])

    # -- networks --------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Logits of ``q(z | x)``: ``(..., num_latents, num_classes)``."""
        return self.encoder(x).unflatten(-1, (self.num_latents, self.num_classes))

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits ``(..., num_pixels)`` from latents ``(..., num_latents, num_classes)``."""
        return self.decoder(z.flatten(-2))

    def _prior_logits(self, x: Tensor) -> Tensor:
        return x.new_zeros(self.num_latents, self.num_classes)

    # -- Pyro model, guides and loss -------------------------------------------------

    def training_loss(self, num_particles: int = 1) -> ELBO:
        """The Pyro loss this estimator trains with (see the module's description)."""
        if self.estimator == "gumbel_softmax":
            return GumbelSoftmax_ELBO(num_particles=num_particles)
        if self.estimator == "concrete" and self.relaxed_kl == "mc":
            return Trace_ELBO(num_particles=num_particles)
        if self.estimator == "concrete" and self.temperature != self.prior_temperature:
            raise ValueError(
                "relaxed_kl='exact' needs equal prior and guide temperatures (the exact KL of two "
                f"ExpConcretes is known only then), got {self.prior_temperature} and {self.temperature}"
            )
        return TraceMeanField_ELBO(num_particles=num_particles)

    def model(self, x: Tensor) -> None:
        """The generative model: discrete for the straight-through estimators, relaxed
        (``Concrete`` for ``"gumbel_softmax"``, ``ExpConcrete`` for ``"concrete"``) otherwise.

        The Gumbel-Softmax VAE's model is the discrete one, relaxed without rewriting it:
        :class:`~pyro_concrete.infer.RelaxReparam` makes its ``OneHotCategorical`` site a
        ``Concrete`` one at the guide's temperature.
        """
        if self.estimator == "gumbel_softmax":
            relax = RelaxReparam(self.temperature)
            poutine.reparam(self._model, config={"z": relax})(x, False, self.kl_scale)
        else:
            self._model(x, self.estimator == "concrete", self.kl_scale)

    def discrete_model(self, x: Tensor) -> None:
        """The discrete generative model, whatever the estimator."""
        self._model(x, False, 1.0)

    def _model(self, x: Tensor, log_space: bool, kl_scale: float) -> None:
        pyro.module("decoder", self.decoder)
        logits = self._prior_logits(x)
        with pyro.plate("data", x.shape[0]):
            if log_space:
                assert self.prior_temperature is not None
                prior = ExpConcrete(self.prior_temperature, logits=logits).to_event(1)
            else:
                prior = dist.OneHotCategorical(logits=logits).to_event(1)
            with poutine.scale(scale=kl_scale):
                z = pyro.sample("z", prior)
            if log_space:
                z = z.exp()
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)

    def latent_distribution(self, logits: Tensor) -> dist.TorchDistribution:
        """The guide's distribution of each latent given its logits ``(batch, L, K)``.

        Override it to try another sampler in the same model (the VAE benchmark does, for
        Pyro's ``RelaxedOneHotCategoricalStraightThrough``).
        """
        if self.estimator == "concrete":
            return ExpConcrete(self.temperature, logits=logits)
        if self.estimator == "gumbel_softmax":
            return Concrete(self.temperature, logits=logits)
        return ConcreteStraightThrough(
            self.temperature, logits=logits, estimator=self.estimator, rao_samples=self.rao_samples
        )

    def guide(self, x: Tensor) -> None:
        """The amortised guide used for training."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.kl_scale):
            pyro.sample("z", self.latent_distribution(self.encode(x)).to_event(1))

    def discrete_guide(self, x: Tensor) -> None:
        """``OneHotCategorical(logits=encoder(x))``: the guide of the discrete model."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=self.encode(x)).to_event(1))

    # -- evaluation ------------------------------------------------------------------

    @torch.no_grad()
    def held_out_neg_elbo(self, x: Tensor, num_particles: int = 10, batch_size: int = 1000) -> float:
        """Negative ELBO of the discrete model, in nats per image, averaged over ``x``.

        The ELBO of the discrete model with the discrete guide (``OneHotCategorical`` at the
        encoder's logits), estimated with ``num_particles`` samples per image by Pyro's
        ``Trace_ELBO``: the same honest number for every training method.
        """
        num_particles = check_int("num_particles", num_particles, minimum=1)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            total += elbo.loss(self.discrete_model, self.discrete_guide, chunk)
        return total / x.shape[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Pixel probabilities decoded from the most probable class of each latent."""
        logits = self.encode(x)
        z = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def sample_prior(self, num_samples: int) -> Tensor:
        """Pixel probabilities decoded from ``num_samples`` draws of the uniform prior."""
        num_samples = check_int("num_samples", num_samples, minimum=0)
        device = next(self.parameters()).device
        shape = (num_samples, self.num_latents, self.num_classes)
        probs = torch.full(shape, 1.0 / self.num_classes, device=device)
        return torch.sigmoid(self.decode(dist.OneHotCategorical(probs=probs).sample()))

    @property
    def prior_entropy(self) -> float:
        """``num_latents * log(num_classes)``: the KL of a deterministic guide to the prior."""
        return self.num_latents * math.log(self.num_classes)
