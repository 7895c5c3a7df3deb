"""Training and evaluation of the categorical VAE by SVI, shared by the demo and the benchmark."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim
from torch import Tensor

from .._checks import check_int, check_nonnegative_float, check_positive_float
from ..infer.schedules import ExponentialDecay
from .distributed import SINGLE_PROCESS, DataParallel, check_shards
from .model import CategoricalVAE, check_training_choice, maddison_temperatures

__all__ = ["TrainConfig", "TrainResult", "independent_pixels_neg_log_lik", "train_vae"]


@dataclass
class TrainConfig:
    """Settings of one training run (defaults: the demo's).

    The guide's temperature follows Jang et al. 2017's schedule
    ``max(min_temperature, initial_temperature * exp(-anneal_rate * t))``, recomputed every
    ``anneal_every`` steps (:class:`~pyro_concrete.infer.ExponentialDecay`). With the
    defaults it falls from 1 to its floor 0.5 in about 1400 steps (Jang et al.'s floor;
    their rates, 1e-5 and 1e-4 per step, are for runs a hundred times longer). ``None``
    means the estimator's own default:

    - ``initial_temperature``: 1, except ``"concrete"``: Maddison et al.'s fixed posterior
      temperature for ``num_classes`` (2/3 for 8 classes, :func:`~pyro_concrete.demo.model.
      maddison_temperatures`);
    - ``min_temperature``: 0.5; 1 for ReinMax, whose authors recommend temperatures of at
      least 1; for ``"concrete"`` the initial temperature (no annealing, as Maddison et al.);
    - ``prior_temperature`` (``"concrete"`` only): Maddison et al.'s (2/5 for 8 classes).

    ``kl_warmup_epochs`` scales the latent site's terms (the KL term) by a weight rising
    linearly from ``1/steps`` to 1 over that many epochs (0: no warm-up).
    """

    estimator: str = "st"
    epochs: int = 200
    num_latents: int = 8
    num_classes: int = 8
    seed: int = 0
    batch_size: int = 100
    learning_rate: float = 3e-3
    hidden: tuple[int, ...] = (256,)
    rao_samples: int = 10
    initial_temperature: float | None = None
    min_temperature: float | None = None
    anneal_rate: float = 5e-4
    anneal_every: int = 100
    eval_particles: int = 20
    prior_temperature: float | None = None
    relaxed_kl: str = "mc"
    kl_warmup_epochs: int = 0

    def __post_init__(self) -> None:
        """Checks every number (``TypeError`` or ``ValueError`` naming the field)."""
        check_training_choice(self.estimator, self.prior_temperature, self.relaxed_kl)
        self.epochs = check_int("epochs", self.epochs, minimum=1)
        self.num_latents = check_int("num_latents", self.num_latents, minimum=1)
        self.num_classes = check_int("num_classes", self.num_classes, minimum=2)
        self.seed = check_int("seed", self.seed, minimum=0)
        self.batch_size = check_int("batch_size", self.batch_size, minimum=1)
        self.learning_rate = check_positive_float("learning_rate", self.learning_rate)
        self.hidden = tuple(check_int(f"hidden[{i}]", size, minimum=1) for i, size in enumerate(self.hidden))
        self.rao_samples = check_int("rao_samples", self.rao_samples, minimum=1)
        if self.initial_temperature is not None:
            self.initial_temperature = check_positive_float("initial_temperature", self.initial_temperature)
        if self.prior_temperature is not None:
            self.prior_temperature = check_positive_float("prior_temperature", self.prior_temperature)
        if self.min_temperature is not None:
            self.min_temperature = check_positive_float("min_temperature", self.min_temperature)
        self.anneal_rate = check_nonnegative_float("anneal_rate", self.anneal_rate)
        self.anneal_every = check_int("anneal_every", self.anneal_every, minimum=1)
        self.eval_particles = check_int("eval_particles", self.eval_particles, minimum=1)
        self.kl_warmup_epochs = check_int("kl_warmup_epochs", self.kl_warmup_epochs, minimum=0)
        self.model_prior_temperature()  # an exact KL's temperatures, checked now

    def schedule(self) -> ExponentialDecay:
        """The temperature schedule of this run."""
        initial = self.initial_temperature
        if initial is None:
            initial = maddison_temperatures(self.num_classes)[0] if self.estimator == "concrete" else 1.0
        minimum = self.min_temperature
        if minimum is None:
            minimum = {"reinmax": 1.0, "concrete": initial}.get(self.estimator, 0.5)
        return ExponentialDecay(
            initial=initial, rate=self.anneal_rate, minimum=minimum, every=self.anneal_every
        )

    def build_model(
        self, num_pixels: int, vae_class: Callable[..., CategoricalVAE] = CategoricalVAE
    ) -> CategoricalVAE:
        """A fresh model of this run's settings, at the schedule's first temperature."""
        return vae_class(
            num_pixels=num_pixels,
            num_latents=self.num_latents,
            num_classes=self.num_classes,
            estimator=self.estimator,
            temperature=self.schedule().temperature,
            hidden=self.hidden,
            rao_samples=self.rao_samples,
            prior_temperature=self.model_prior_temperature(),
            relaxed_kl=self.relaxed_kl,
        )

    def model_prior_temperature(self) -> float | None:
        """The relaxed prior's temperature of ``"concrete"`` (``None`` for the others): the one
        given, else the guide's with ``relaxed_kl="exact"`` (the exact KL needs them equal),
        else Maddison et al.'s.

        Raises:
            ValueError: for ``relaxed_kl="exact"`` with an annealed guide temperature or a
                prior temperature different from it.
        """
        if self.estimator != "concrete":
            return self.prior_temperature
        schedule = self.schedule()
        if self.relaxed_kl == "mc":
            return self.prior_temperature or maddison_temperatures(self.num_classes)[1]
        prior = self.prior_temperature or schedule.initial
        if (schedule.minimum < schedule.initial and schedule.rate > 0) or prior != schedule.initial:
            raise ValueError(
                "relaxed_kl='exact' needs one fixed temperature for prior and guide (the exact KL of "
                f"two ExpConcretes is known only then): got prior {prior}, guide {schedule.initial} "
                f"annealed to {schedule.minimum}"
            )
        return prior


@dataclass
class TrainResult:
    """What a training run gives back: the model and its history (losses in nats per image)."""

    config: TrainConfig
    vae: CategoricalVAE
    initial_neg_elbo: float  # held-out, discrete model, before training
    neg_elbo: float = math.nan  # held-out, discrete model, after training
    objective: float = math.nan  # held-out, the training loss (each method's own objective)
    losses: list[float] = field(default_factory=list)  # training loss of each step
    temperatures: list[float] = field(default_factory=list)  # temperature of each step
    kl_scales: list[float] = field(default_factory=list)  # weight of the KL term at each step
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch

    @property
    def seconds_per_epoch(self) -> float:
        return sum(self.epoch_seconds) / max(len(self.epoch_seconds), 1)


def train_vae(
    config: TrainConfig,
    train_x: Tensor,
    test_x: Tensor,
    progress: bool = False,
    vae_class: Callable[..., CategoricalVAE] = CategoricalVAE,
    loss: ELBO | None = None,
    parallel: DataParallel = SINGLE_PROCESS,
) -> TrainResult:
    """Trains a fresh :class:`~pyro_concrete.demo.model.CategoricalVAE` by SVI and scores it.

    Clears Pyro's parameter store, seeds every random number generator with
    ``config.seed``, and runs ``config.epochs`` passes over shuffled minibatches of
    ``train_x`` with Adam, annealing the temperature. The loss is the estimator's own
    (:meth:`~pyro_concrete.demo.model.CategoricalVAE.training_loss`). For the
    straight-through estimators it is ``TraceMeanField_ELBO``: against the discrete prior it
    uses the exact KL term (registered by :mod:`pyro_concrete.kl`). With the
    single-sample Monte Carlo KL term of ``Trace_ELBO`` instead, the straight-through
    gradient of ``log q(z)`` adds noise and bias: the demo's defaults then end about 1.4
    nats worse (``benchmarks/vae.py``), and in shorter runs or at a lower learning rate the
    model stayed at the posterior-collapse baseline of a model without latents. The
    held-out negative ELBO of the discrete model is measured before and after training.

    Split over processes (``parallel``, :mod:`~pyro_concrete.demo.distributed`), every step
    trains on the batch one process would, each process on its part of it with its own
    noise, and the losses and held-out scores are those of the whole batches and test set.

    Args:
        config (TrainConfig): the settings.
        train_x, test_x (Tensor): ``(n, num_pixels)`` binary images.
        progress (bool): show a tqdm progress bar with the current loss and temperature.
        vae_class: the model's class (:class:`CategoricalVAE` or a subclass), called with
            the model's keyword arguments.
        loss (ELBO, optional): another Pyro ELBO to train with.
        parallel (DataParallel): the processes the run is split over (default: this one
            alone); every one of them must call this function with the same arguments.

    Returns:
        TrainResult: the trained model and its history (the wall times: this process's).

    Raises:
        ValueError: when a batch has fewer images than there are processes
            (:func:`~pyro_concrete.demo.distributed.check_shards`).

    Example::

        >>> from pyro_concrete.demo.data import load_binarized_digits
        >>> train, test = load_binarized_digits()
        >>> result = train_vae(TrainConfig(epochs=2, num_latents=4, num_classes=4), train, test)
        >>> result.initial_neg_elbo > result.neg_elbo
        True
    """
    num_train = train_x.shape[0]
    check_shards(num_train, config.batch_size, parallel.world_size)
    if test_x.shape[0] < parallel.world_size:  # each process scores a part of the test set
        raise ValueError(
            f"the test set holds {test_x.shape[0]} images, fewer than the {parallel.world_size} "
            "processes: a process would score none; use fewer processes"
        )
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    schedule = config.schedule()
    vae = config.build_model(train_x.shape[-1], vae_class)
    noise_seed = parallel.noise_seed(config.seed)  # the same model everywhere, then each its own noise
    if noise_seed is not None:
        pyro.set_rng_seed(noise_seed)
    test_part = parallel.shard(test_x)
    initial = vae.held_out_neg_elbo(test_part, config.eval_particles)
    result = TrainResult(config, vae, parallel.mean(initial, test_part.shape[0]))
    optim = PyroOptim(torch.optim.Adam, {"lr": config.learning_rate})  # pyro.optim.Adam, typed
    loss = loss or vae.training_loss()
    # Each process's share of the batch's loss, times the number of processes: DDP's average
    # of the gradients is the gradient of the whole batch's loss.
    model, guide = _scaled(vae.model, parallel.world_size), _scaled(vae.guide, parallel.world_size)
    svi = SVI(model, guide, optim, loss)
    shuffle = torch.Generator().manual_seed(config.seed)  # the same order on every process
    warmup_steps = config.kl_warmup_epochs * math.ceil(num_train / config.batch_size)
    step_sums: list[float] = []  # this process's share of each step's loss, summed over its images
    batch_sizes: list[int] = []  # every process's images of each step

    epochs = range(config.epochs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(epochs, desc=f"SVI ({config.estimator})", unit="epoch")
        epochs = bar
    with parallel.replicated(vae):
        for _ in epochs:
            start = time.perf_counter()
            order = torch.randperm(num_train, generator=shuffle)
            epoch_sum = 0.0
            for begin in range(0, num_train, config.batch_size):
                batch = train_x[order[begin : begin + config.batch_size]]
                vae.temperature = schedule.temperature
                vae.kl_scale = min(1.0, (len(step_sums) + 1) / warmup_steps) if warmup_steps else 1.0
                step_sums.append(svi.step(parallel.shard(batch)) / parallel.world_size)
                batch_sizes.append(batch.shape[0])
                result.temperatures.append(vae.temperature)
                result.kl_scales.append(vae.kl_scale)
                epoch_sum += step_sums[-1]
                schedule.step()
            epoch_loss = parallel.all_sum(torch.tensor([epoch_sum], dtype=torch.float64)).item() / num_train
            result.epoch_seconds.append(time.perf_counter() - start)
            if bar is not None:
                bar.set_postfix(loss=f"{epoch_loss:.2f}", temperature=f"{vae.temperature:.3f}")
    step_totals = parallel.all_sum(torch.tensor(step_sums, dtype=torch.float64))
    result.losses = (step_totals / torch.tensor(batch_sizes)).tolist()  # per image of each batch
    vae.kl_scale = 1.0
    neg_elbo = vae.held_out_neg_elbo(test_part, config.eval_particles)
    result.neg_elbo = parallel.mean(neg_elbo, test_part.shape[0])
    objective = _held_out_objective(vae, type(loss), test_part, config.eval_particles)
    result.objective = parallel.mean(objective, test_part.shape[0])
    return result


def _scaled(fn: Callable[[Tensor], None], scale: int) -> Callable[[Tensor], None]:
    """``fn`` with every site's log-density multiplied by ``scale`` (``fn`` itself for 1)."""
    return fn if scale == 1 else poutine.scale(fn, scale=float(scale))


@torch.no_grad()
def _held_out_objective(vae: CategoricalVAE, loss_class: type[ELBO], x: Tensor, num_particles: int) -> float:
    """The training loss of ``vae`` on ``x`` (nats per image), ``num_particles`` samples per image."""
    # Pyro's ELBO base class declares no ``loss``; every ELBO the demo trains with has one.
    loss: Any = loss_class(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    return loss.loss(vae.model, vae.guide, x) / x.shape[0]


def independent_pixels_neg_log_lik(train_x: Tensor, test_x: Tensor) -> float:
    """Held-out negative log-likelihood (nats per image) of independent Bernoulli pixels.

    The reference a VAE must beat to show that it uses its latents: each pixel's
    probability is its frequency in ``train_x`` (clamped to ``[1/n, 1 - 1/n]``).
    """
    n = train_x.shape[0]
    p = train_x.mean(0).clamp(1.0 / n, 1.0 - 1.0 / n)
    return -(test_x * p.log() + (1 - test_x) * (-p).log1p()).sum(-1).mean().item()
