"""Command line of the demo: ``python -m pyro_concrete.demo [options]``."""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .._checks import check_int, check_positive_float
from ..infer.schedules import ExponentialDecay
from .data import load_binarized_digits
from .distributed import (
    SINGLE_PROCESS,
    DataParallel,
    backend_for,
    check_shards,
    launched_by_torchrun,
    process_group,
)
from .model import ESTIMATORS, RELAXED_KL
from .training import TrainConfig, TrainResult, independent_pixels_neg_log_lik, train_vae

__all__ = ["DemoResult", "console_main", "main", "parse_args"]

_GUIDES = {
    "st": "ConcreteStraightThrough(estimator='st'); loss: TraceMeanField_ELBO",
    "gumbel_rao": "ConcreteStraightThrough(estimator='gumbel_rao', rao_samples=10); "
    "loss: TraceMeanField_ELBO",
    "reinmax": "ConcreteStraightThrough(estimator='reinmax'); loss: TraceMeanField_ELBO",
    "gumbel_softmax": "Concrete, decoder reads the relaxed sample (Jang et al. 2017); "
    "loss: GumbelSoftmax_ELBO (categorical KL)",
    "concrete": "ExpConcrete prior and guide, decoder reads exp(y) (Maddison et al. 2017)",
}


def _positive_float(name: str) -> Callable[[str], float]:
    """An argparse ``type``: the package's positive-float check, its message as argparse's error."""

    def parse(text: str) -> float:
        try:
            return check_positive_float(name, float(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


@dataclass
class DemoResult:
    """What :func:`main` returns: the training run, the figure's path and reference numbers."""

    train: TrainResult
    figure: Path | None  # None on the processes of a distributed run but the first
    baseline_neg_log_lik: float  # held-out, independent pixels fitted on the training set
    seconds: float  # wall time of training and evaluation


def _int_at_least(minimum: int, name: str) -> Callable[[str], int]:
    """An argparse ``type``: the package's int check, its message as argparse's error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an int >= {minimum}, got {text!r}") from None
        try:
            return check_int(name, value, minimum=minimum)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m pyro_concrete.demo",
        description=(
            "Train a categorical VAE (Jang et al. 2017) by SVI in Pyro on scikit-learn's 8x8 "
            "handwritten digits, binarised, with a straight-through Concrete guide or as a relaxed "
            "model. Prints the held-out negative ELBO of the discrete model and writes a figure."
        ),
    )
    parser.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default=defaults.estimator,
        help="how to train: a straight-through estimator of the discrete model (st, gumbel_rao, "
        "reinmax), Jang et al. 2017's Gumbel-Softmax VAE (gumbel_softmax) or Maddison et al. 2017's "
        "relaxed model (concrete) (default: %(default)s)",
    )
    parser.add_argument(
        "--temperature",
        type=_positive_float("temperature"),
        help="initial temperature of the guide (default: 1; for concrete Maddison et al.'s, 2/3 "
        "for 8 classes)",
    )
    parser.add_argument(
        "--min-temperature",
        type=_positive_float("min-temperature"),
        help="floor of the annealed temperature (default: 0.5; 1 for reinmax; concrete: no annealing)",
    )
    parser.add_argument(
        "--anneal-rate",
        type=float,
        default=defaults.anneal_rate,
        help="rate of the exponential decay of the temperature, per step (default: %(default)s)",
    )
    parser.add_argument(
        "--prior-temperature",
        type=_positive_float("prior-temperature"),
        help="concrete only: temperature of the relaxed prior (default: Maddison et al.'s, 2/5 for 8 "
        "classes; with --relaxed-kl exact, the guide's)",
    )
    parser.add_argument(
        "--relaxed-kl",
        choices=RELAXED_KL,
        default=defaults.relaxed_kl,
        help="concrete only: KL term by one Monte Carlo sample in log space (mc) or exactly (exact, "
        "one fixed temperature for prior and guide, several times slower) (default: %(default)s)",
    )
    parser.add_argument(
        "--kl-warmup-epochs",
        type=_int_at_least(0, "kl-warmup-epochs"),
        default=defaults.kl_warmup_epochs,
        help="weight the KL term from ~0 up to 1 over this many epochs (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=_int_at_least(1, "epochs"), default=defaults.epochs, help="default: %(default)s"
    )
    parser.add_argument(
        "--latents",
        type=_int_at_least(1, "latents"),
        default=defaults.num_latents,
        help="categorical latents (default: %(default)s)",
    )
    parser.add_argument(
        "--classes",
        type=_int_at_least(2, "classes"),
        default=defaults.num_classes,
        help="classes per latent (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=_int_at_least(0, "seed"), default=defaults.seed, help="default: %(default)s"
    )
    parser.add_argument(
        "--batch-size",
        type=_int_at_least(1, "batch-size"),
        default=defaults.batch_size,
        help="images per SVI step, over all processes of a distributed run (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("vae_demo.png"), help="the figure's PNG file (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=_int_at_least(1, "threads"),
        default=1,
        help="torch CPU threads; this small model is limited by per-operation overhead, which "
        "more threads do not reduce (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training in the processes torchrun starts: torchrun --nproc_per_node N "
        "-m pyro_concrete.demo --distributed (each process trains on its part of every batch)",
    )
    args = parser.parse_args(argv)
    if args.distributed and not launched_by_torchrun():
        parser.error(
            "--distributed needs the processes and environment torchrun makes: "
            "torchrun --nproc_per_node N -m pyro_concrete.demo --distributed [options]"
        )
    try:
        _config(args)  # the combinations TrainConfig refuses, as argparse errors
    except ValueError as error:
        parser.error(str(error))
    return args


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        estimator=args.estimator,
        epochs=args.epochs,
        num_latents=args.latents,
        num_classes=args.classes,
        seed=args.seed,
        batch_size=args.batch_size,
        initial_temperature=args.temperature,
        min_temperature=args.min_temperature,
        anneal_rate=args.anneal_rate,
        prior_temperature=args.prior_temperature,
        relaxed_kl=args.relaxed_kl,
        kl_warmup_epochs=args.kl_warmup_epochs,
    )


def main(argv: Sequence[str] | None = None) -> DemoResult:
    """Runs the demo with command-line arguments ``argv`` (default: ``sys.argv[1:]``).

    Example::

        >>> import tempfile
        >>> out = tempfile.mkdtemp() + "/demo.png"
        >>> result = main(["--epochs", "2", "--latents", "4", "--classes", "4", "--out", out, "--quiet"])
        Categorical VAE, 4 latents x 4 classes, on binarised 8x8 digits (1438 training / 359 test images)
        ...
        >>> result.train.neg_elbo < result.train.initial_neg_elbo
        True
    """
    args = parse_args(argv)
    config = _config(args)
    if not args.distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        warnings.warn(
            "started as one of several processes without --distributed: each trains its own model",
            stacklevel=2,
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(config, args.out, progress=not args.quiet, distributed=args.distributed)
    finally:
        torch.set_num_threads(threads)


def console_main() -> None:
    """Entry point of the ``pyro-concrete-demo`` console script: :func:`main`, exit status 0."""
    main()


def _describe(config: TrainConfig) -> str:
    """The guide and loss of a run, in words."""
    warmup = f", KL warm-up {config.kl_warmup_epochs} epochs" if config.kl_warmup_epochs else ""
    if config.estimator != "concrete":
        return f"guide: {_GUIDES[config.estimator]}{warmup}"
    loss = "Trace_ELBO (KL by one sample, in log space)"
    if config.relaxed_kl == "exact":
        loss = "TraceMeanField_ELBO (exact KL of the ExpConcretes)"
    prior = config.model_prior_temperature()
    return f"model and guide: {_GUIDES['concrete']}, prior temperature {prior:g}; loss: {loss}{warmup}"


def _objective_line(config: TrainConfig, objective: float) -> str:
    """The held-out training objective, where it is not the discrete model's negative ELBO."""
    if config.estimator == "gumbel_softmax":
        return f"  held-out Gumbel-Softmax objective (relaxed sample, categorical KL): {objective:.2f}\n"
    if config.estimator == "concrete":
        return f"  held-out negative ELBO of the relaxed model (its training objective): {objective:.2f}\n"
    return ""


def _describe_schedule(schedule: ExponentialDecay) -> str:
    if schedule.minimum >= schedule.initial or schedule.rate == 0:
        return f"{schedule.initial:g} (fixed)"
    return (
        f"{schedule.initial:g} -> {schedule.minimum:g} (exponential decay, rate {schedule.rate:g} per step, "
        f"every {schedule.every} steps)"
    )


def _describe_batch(batch_size: int, parallel: DataParallel) -> str:
    """The batch, and how it is split over the processes of a distributed run."""
    if not parallel.distributed:
        return f"batch {batch_size}"
    sizes = sorted({len(part) for part in torch.arange(batch_size).tensor_split(parallel.world_size)})
    each = " or ".join(map(str, reversed(sizes)))
    processes = f"{parallel.world_size} process{'es' if parallel.world_size > 1 else ''}"
    return f"batch {batch_size} over {processes} ({each} each, {backend_for(parallel.device)})"


def _run(config: TrainConfig, out: Path, progress: bool, distributed: bool = False) -> DemoResult:
    """Loads the data, joins the process group of a distributed run, trains and reports."""
    train_x, test_x = load_binarized_digits()
    group: AbstractContextManager[DataParallel] = nullcontext(SINGLE_PROCESS)
    if distributed:
        try:  # before the processes wait for each other
            check_shards(train_x.shape[0], config.batch_size, int(os.environ["WORLD_SIZE"]))
        except ValueError as error:
            raise SystemExit(f"python -m pyro_concrete.demo: error: {error}") from None
        group = process_group(train_x.device)  # the backend for where the data lives
    with group as parallel:
        return _train_and_report(config, train_x, test_x, out, progress, parallel)


def _train_and_report(
    config: TrainConfig, train_x: Tensor, test_x: Tensor, out: Path, progress: bool, parallel: DataParallel
) -> DemoResult:
    """Trains; the first process prints, shows the progress bar and writes the figure."""
    from .figure import write_figure

    schedule = config.schedule()
    if parallel.is_main:
        print(
            f"Categorical VAE, {config.num_latents} latents x {config.num_classes} classes, on binarised "
            f"8x8 digits ({train_x.shape[0]} training / {test_x.shape[0]} test images)\n"
            f"{_describe(config)}; Adam, lr {config.learning_rate}, "
            f"{_describe_batch(config.batch_size, parallel)}; temperature {_describe_schedule(schedule)}",
            flush=True,
        )
    start = time.perf_counter()
    result = train_vae(config, train_x, test_x, progress=progress and parallel.is_main, parallel=parallel)
    seconds = time.perf_counter() - start
    baseline = independent_pixels_neg_log_lik(train_x, test_x)
    if not parallel.is_main:
        return DemoResult(result, None, baseline, seconds)
    path = write_figure(result, test_x, out, baseline=baseline)
    print(
        f"held-out negative ELBO of the discrete model ({config.eval_particles} samples per image): "
        f"{result.neg_elbo:.2f} nats per image\n"
        f"  untrained model: {result.initial_neg_elbo:.2f}; a model of independent pixels (no latents, "
        f"fitted on the training set): {baseline:.2f} negative log-likelihood\n"
        f"{_objective_line(config, result.objective)}"
        f"training and evaluation took {seconds:.1f} s ({result.seconds_per_epoch:.3f} s per epoch)\n"
        f"figure: {path.resolve()}"
    )
    return DemoResult(result, path, baseline, seconds)
