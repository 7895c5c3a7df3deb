"""The demo's categorical VAE trained with each gradient estimator, and with Pyro's ST class.

Every method trains the same model (:class:`pyro_concrete.demo.model.CategoricalVAE`, the one of
``python -m pyro_concrete.demo``: 8 latents x 8 classes on binarised 8x8 digits, same
network, optimiser, minibatches, temperature schedule and loss object, ``TraceMeanField_ELBO``,
except where said) with a different latent distribution in the guide:

- ``relaxed``: the relaxed model of Maddison et al. 2017 (``ExpConcrete`` prior and guide at
  the same temperature; the decoder reads the relaxed sample);
- ``ST``, ``Gumbel-Rao``, ``ReinMax``: this library's ``ConcreteStraightThrough`` with
  ``estimator="st"``, ``"gumbel_rao"`` (10 conditional draws) or ``"reinmax"`` (temperature
  floor 1, its authors' recommendation; 0.5 for the others);
- ``ST, Monte Carlo KL``: ``ConcreteStraightThrough`` with ``Trace_ELBO``, which estimates the
  KL term by ``log q(z) - log p(z)`` at the sample instead of using the exact KL (the
  straight-through gradient then also flows through ``log q``): this row isolates what the
  exact KL contributes;
- ``Pyro ST``: ``pyro.distributions.RelaxedOneHotCategoricalStraightThrough`` in the guide, as a
  Pyro user would write it. No KL divergence is registered for it, so ``TraceMeanField_ELBO``
  falls back to ``log q(z) - log p(z)`` at the sample, and Pyro's ``log q`` is the *relaxed*
  density of the soft sample (read from an attribute stashed on the hard sample tensor) while
  ``log p`` is the discrete prior's mass at the hard sample: the training loss is not an ELBO.

Every trained model is then scored the same honest way: the held-out negative ELBO of the
*discrete* model (uniform ``OneHotCategorical`` prior, one-hot latents into the decoder) with
the discrete guide ``OneHotCategorical(logits=encoder(x))``, estimated with 20 samples per
image, in nats per image. For the straight-through classes of this library this is the
quantity they were trained on; for ``relaxed`` and ``Pyro ST`` it is what their encoder and
decoder achieve once the latents are discrete.

The script also times one SVI step of the demo with this library's ST guide and with Pyro's
ST guide (same model, batch and loss object), interleaved in the same run, with validation
on (the default) and off.

Run from the repository root::

    python benchmarks/vae.py                       # defaults: 3 seeds, 200 epochs (~8 min)
    python benchmarks/vae.py --seeds 2 --epochs 50 --methods st pyro_st
    python benchmarks/vae.py --methods             # only the SVI step timing
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from _common import RESULTS_DIR, display_path, environment_lines, write_csv
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim import Adam

from pyro_concrete.demo.data import load_binarized_digits
from pyro_concrete.demo.model import CategoricalVAE
from pyro_concrete.demo.training import TrainConfig, independent_pixels_neg_log_lik, train_vae


class PyroStraightThroughVAE(CategoricalVAE):
    """The demo's VAE with Pyro's ``RelaxedOneHotCategoricalStraightThrough`` in the guide.

    With ``validate_args=False``: with validation on (torch's and Pyro's default), its
    ``log_prob`` rejects its own clamped float32 soft samples as off the simplex
    (``|sum - 1| > 1e-6``) once the temperature nears 0.5, and training stops with a
    ``ValueError``; switching validation off is what a user has to do.
    """

    def latent_distribution(self, logits):
        temperature = torch.tensor(self.temperature, dtype=logits.dtype)
        return dist.RelaxedOneHotCategoricalStraightThrough(temperature, logits=logits, validate_args=False)


class Method(NamedTuple):
    label: str
    estimator: str  # given to CategoricalVAE
    model_class: type[CategoricalVAE]
    loss: type[ELBO]


METHODS = {
    "relaxed": Method(
        "relaxed (ExpConcrete model and guide)", "relaxed", CategoricalVAE, TraceMeanField_ELBO
    ),
    "st": Method("ST (ConcreteStraightThrough)", "st", CategoricalVAE, TraceMeanField_ELBO),
    "gumbel_rao": Method(
        "Gumbel-Rao, 10 draws (ConcreteStraightThrough)", "gumbel_rao", CategoricalVAE, TraceMeanField_ELBO
    ),
    "reinmax": Method("ReinMax (ConcreteStraightThrough)", "reinmax", CategoricalVAE, TraceMeanField_ELBO),
    "st_mc": Method(
        "ST (ConcreteStraightThrough), Monte Carlo KL (Trace_ELBO)", "st", CategoricalVAE, Trace_ELBO
    ),
    "pyro_st": Method(
        "Pyro ST (RelaxedOneHotCategoricalStraightThrough)", "st", PyroStraightThroughVAE, TraceMeanField_ELBO
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=list(METHODS),
        default=list(METHODS),
        help="none: only the SVI step timing",
    )
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..n-1 per method")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="epochs per run")
    parser.add_argument("--step-repeats", type=int, default=7, help="timed rounds of the SVI step comparison")
    parser.add_argument("--step-count", type=int, default=50, help="SVI steps per timed round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo's default)")
    parser.add_argument("--csv", default=str(RESULTS_DIR / "vae.csv"), help="per-run results")
    return parser.parse_args(argv)


class StepVariant(NamedTuple):
    method: str  # "st" or "pyro_st"
    validate: bool
    loss: type[ELBO]


# Pairs (this library, Pyro) at equal validation and loss: TraceMeanField_ELBO (the demo's
# loss: it uses the exact KL for this library's guide, which Pyro's cannot have, and falls
# back to log q - log p for Pyro's) and Trace_ELBO (log q - log p for both: the same work).
STEP_PAIRS = [
    (StepVariant("st", validate, loss), StepVariant("pyro_st", validate, loss))
    for loss in (TraceMeanField_ELBO, Trace_ELBO)
    for validate in (True, False)
]


def time_svi_steps(train_x: torch.Tensor, repeats: int, count: int) -> dict[StepVariant, float]:
    """Median seconds per SVI step of the demo's model with this library's and Pyro's ST guide.

    The same model, optimiser and minibatch, at temperature 0.5; every variant starts from
    the same weights. The variants are timed alternately, ``count`` steps per round,
    ``repeats`` rounds after a warm-up round, so that changes in the machine's load hit them
    alike. Validation (torch's and Pyro's checks of arguments and samples, for every
    distribution of the model and the guide) is on or off as the variant says, except for
    Pyro's ST guide distribution, which only runs with it off (see
    :class:`PyroStraightThroughVAE`).
    """
    batch = train_x[: TrainConfig.batch_size]
    steppers = {}
    for variant in (v for pair in STEP_PAIRS for v in pair):
        m = METHODS[variant.method]
        torch.manual_seed(0)
        vae = m.model_class(num_pixels=train_x.shape[-1], estimator=m.estimator, temperature=0.5)
        steppers[variant] = (vae, Adam({"lr": 1e-3}))
    times: dict[StepVariant, list[float]] = {variant: [] for variant in steppers}
    for round_ in range(repeats + 1):
        for variant, (vae, optim) in steppers.items():
            # The models name their modules alike: each round starts from an empty store,
            # into which pyro.module puts this model's own parameter tensors (the optimiser
            # state is keyed by those tensors and carries over).
            pyro.clear_param_store()
            svi = SVI(vae.model, vae.guide, optim, variant.loss())
            with pyro.validation_enabled(variant.validate):
                svi.step(batch)  # registers the parameters (untimed)
                start = time.perf_counter()
                for _ in range(count):
                    svi.step(batch)
                elapsed = time.perf_counter() - start
            if round_ > 0:  # round 0 is the warm-up
                times[variant].append(elapsed / count)
    return {variant: statistics.median(values) for variant, values in times.items()}


def _markdown(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A markdown table, the first ``left`` columns left-aligned and the others right-aligned."""
    align = ["---"] * left + ["---:"] * (len(headers) - left)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train_x, test_x = load_binarized_digits()
    start_all = time.perf_counter()

    runs = []
    steps_per_epoch = math.ceil(train_x.shape[0] / TrainConfig.batch_size)
    for name in args.methods:
        method = METHODS[name]
        for seed in range(args.seeds):
            config = TrainConfig(estimator=method.estimator, epochs=args.epochs, seed=seed)
            result = train_vae(config, train_x, test_x, vae_class=method.model_class, loss=method.loss())
            runs.append(
                {
                    "method": name,
                    "seed": seed,
                    "epochs": args.epochs,
                    "steps": len(result.losses),
                    "final_temperature": result.temperatures[-1],
                    "heldout_neg_elbo": result.neg_elbo,
                    "untrained_neg_elbo": result.initial_neg_elbo,
                    "train_loss_last_epoch": statistics.fmean(result.losses[-steps_per_epoch:]),
                    "seconds_per_epoch": statistics.median(result.epoch_seconds),
                }
            )
            print(
                f"  {name:10s} seed {seed}: held-out -ELBO {result.neg_elbo:7.3f}, "
                f"{statistics.median(result.epoch_seconds):.3f} s/epoch (median)",
                file=sys.stderr,
                flush=True,
            )
    step = time_svi_steps(train_x, args.step_repeats, args.step_count)
    total = time.perf_counter() - start_all

    print("\n".join(environment_lines()))
    if runs:
        _print_training_table(args, runs, train_x, test_x, total)
    step_rows = []
    for pair in STEP_PAIRS:
        for variant in pair:
            validation = "on (default)" if variant.validate else "off"
            step_rows.append(
                [
                    METHODS[variant.method].label.split(" (")[0]
                    + (" *" if variant.method == "pyro_st" else ""),
                    variant.loss.__name__,
                    validation,
                    f"{step[variant] * 1e3:.2f}",
                    f"{step[variant] / step[pair[1]]:.2f}",
                ]
            )
    headers = ["guide", "loss", "validation", "ms / step", "time / Pyro ST"]
    print(
        f"\nOne SVI step of the demo (batch 100, temperature 0.5, median of {args.step_repeats} "
        f"interleaved rounds of {args.step_count} steps), this library's ST guide against Pyro's at "
        "the same loss and validation:\n"
        + _markdown(headers, step_rows, left=3)
        + "\nTraceMeanField_ELBO computes the exact KL for this library's guide on top of the log-densities; "
        "Pyro's gets the Monte Carlo estimate (no KL is registered for it). Trace_ELBO does the same work "
        "for both.\n* Pyro's ST guide distribution itself always runs with validate_args=False: with "
        "validation on, its log_prob rejects its own float32 samples (|sum - 1| > 1e-6) and training stops."
    )
    if runs:
        for r in runs:
            for variant, seconds in step.items():
                validation = "validation" if variant.validate else "no_validation"
                r[f"svi_step_ms_{variant.method}_{variant.loss.__name__}_{validation}"] = seconds * 1e3
        path = write_csv(Path(args.csv), runs)
        print(f"\nwritten: {display_path(path)}")
    return 0


def _print_training_table(args, runs, train_x, test_x, total: float) -> None:
    rows = []
    for name in args.methods:
        mine = [r for r in runs if r["method"] == name]
        values = [r["heldout_neg_elbo"] for r in mine]
        mean = statistics.fmean(values)
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        loss = statistics.fmean(r["train_loss_last_epoch"] for r in mine)
        epoch = statistics.median(r["seconds_per_epoch"] for r in mine)
        rows.append([METHODS[name].label, f"{mean:.2f} ± {se:.2f}", f"{loss:.2f}", f"{epoch:.3f}"])
    print(
        f"Categorical VAE, 8 latents x 8 classes, binarised 8x8 digits ({train_x.shape[0]} train / "
        f"{test_x.shape[0]} test), {args.epochs} epochs of batch 100, seeds 0..{args.seeds - 1}, "
        f"{args.threads} torch thread(s); total {total / 60:.1f} min\n"
    )
    headers = [
        "guide",
        "held-out -ELBO, nats (mean ± s.e.)",
        "training loss, last epoch",
        "s / epoch (median)",
    ]
    print(_markdown(headers, rows))
    print(
        "\nheld-out -ELBO: the discrete model scored with the discrete guide OneHotCategorical(encoder "
        "logits), 20 samples per image, the same for every row (lower is better). Reference: untrained "
        f"model {statistics.fmean(r['untrained_neg_elbo'] for r in runs):.2f}; independent pixels "
        f"(no latents) {independent_pixels_neg_log_lik(train_x, test_x):.2f}.\n"
        "training loss: what each method optimises, per image: for this library's ST classes the -ELBO of "
        "the discrete model (with TraceMeanField_ELBO, the exact KL to the prior); for 'relaxed' the "
        "-ELBO of the relaxed model; for Pyro ST a loss that scores the hard sample with the relaxed "
        "density (no KL is registered for it, so TraceMeanField_ELBO falls back to Monte Carlo): not a "
        "bound."
    )


if __name__ == "__main__":
    sys.exit(main())
