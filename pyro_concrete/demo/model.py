"""The demo's model: a VAE with categorical latent variables (Jang et al. 2017, sec. 4.2).

It is the one model behind ``python -m pyro_concrete.demo`` and ``benchmarks/vae.py``, an
example of the package in use rather than part of its API.

Generative model, for an image ``x`` of ``P`` binary pixels::

    z_l ~ OneHotCategorical(uniform over K classes),   l = 1..L  (independent)
    x   ~ Bernoulli(logits = decoder(z_1, ..., z_L))   (P independent pixels)

Guide: ``q(z_l | x)`` has logits ``encoder(x)[l]``; the sample is drawn by
:class:`~pyro_concrete.ConcreteStraightThrough` (``estimator`` ``"st"``, ``"gumbel_rao"`` or
``"reinmax"``): exact one-hot values, scored with the exact discrete ``log_prob``, so the
training loss is an honest estimate of the negative ELBO of the discrete model.

``estimator="relaxed"`` trains the relaxed model of Maddison et al. 2017 instead: prior and
guide are :class:`~pyro_concrete.ExpConcrete` at the current temperature (the log-space
form, whose KL term stays finite at low temperature), the decoder reads the relaxed sample
``exp(y)``, and the loss is the negative ELBO of that relaxed model, not of the discrete one.
Whatever the training, :meth:`CategoricalVAE.held_out_neg_elbo` scores the discrete model
with the discrete guide ``OneHotCategorical(logits=encoder(x))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import Tensor, nn

from .._checks import check_int, check_positive_float
from ..distributions import ConcreteStraightThrough, ExpConcrete

__all__ = ["ESTIMATORS", "CategoricalVAE"]

ESTIMATORS = ("st", "gumbel_rao", "reinmax", "relaxed")


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
    ``(batch, num_pixels)`` with values in ``{0, 1}`` and are used with Pyro's ``SVI``; the
    latent site ``"z"`` has shape ``(batch, num_latents, num_classes)`` (one-hot rows, or
    log-probability rows for ``"relaxed"``). ``temperature`` is a plain attribute: set it
    between steps to anneal.

    Args:
        num_pixels (int): size of an observation ``P``.
        num_latents (int): number of categorical latents ``L``.
        num_classes (int): classes per latent ``K``.
        estimator (str): ``"st"``, ``"gumbel_rao"``, ``"reinmax"`` or ``"relaxed"``.
        temperature (float): initial temperature of the relaxation.
        hidden (sequence of int): hidden layer sizes of the encoder (the decoder mirrors them).
        rao_samples (int): conditional noise draws of ``"gumbel_rao"``.

    Example::

        >>> vae = CategoricalVAE(num_pixels=64, num_latents=8, num_classes=8, estimator="st")
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
        ...                      pyro.infer.Trace_ELBO())
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
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.num_pixels = check_int("num_pixels", num_pixels, minimum=1)
        self.num_latents = check_int("num_latents", num_latents, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        hidden = tuple(check_int(f"hidden[{i}]", size, minimum=1) for i, size in enumerate(hidden))
        self.estimator = estimator
        self.temperature = check_positive_float("temperature", temperature)
        self.rao_samples = check_int("rao_samples", rao_samples, minimum=1)
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

    # -- Pyro model and guides -------------------------------------------------------

    @property
    def relaxed(self) -> bool:
        return self.estimator == "relaxed"

    def model(self, x: Tensor) -> None:
        """The generative model: discrete, or relaxed (``ExpConcrete``) for ``"relaxed"``."""
        self._model(x, relaxed=self.relaxed)

    def discrete_model(self, x: Tensor) -> None:
        """The discrete generative model, whatever the estimator."""
        self._model(x, relaxed=False)

    def _model(self, x: Tensor, relaxed: bool) -> None:
        pyro.module("decoder", self.decoder)
        logits = self._prior_logits(x)
        with pyro.plate("data", x.shape[0]):
            if relaxed:
                y = pyro.sample("z", ExpConcrete(self.temperature, logits=logits).to_event(1))
                z = y.exp()
            else:
                z = pyro.sample("z", dist.OneHotCategorical(logits=logits).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)

    def latent_distribution(self, logits: Tensor) -> dist.TorchDistribution:
        """The guide's distribution of each latent given its logits ``(batch, L, K)``.

        Override it to try another sampler in the same model (the VAE benchmark does, for
        Pyro's ``RelaxedOneHotCategoricalStraightThrough``).
        """
        if self.relaxed:
            return ExpConcrete(self.temperature, logits=logits)
        return ConcreteStraightThrough(
            self.temperature, logits=logits, estimator=self.estimator, rao_samples=self.rao_samples
        )

    def guide(self, x: Tensor) -> None:
        """The amortised guide used for training."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
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
        probs = torch.full((num_samples, self.num_latents, self.num_classes), 1.0 / self.num_classes)
        return torch.sigmoid(self.decode(dist.OneHotCategorical(probs=probs).sample()))

    @property
    def prior_entropy(self) -> float:
        """``num_latents * log(num_classes)``: the KL of a deterministic guide to the prior."""
        return self.num_latents * math.log(self.num_classes)
