"""Bias, variance and cost of straight-through gradient estimators against the exact gradient.

The problem: ``z ~ OneHotCategorical(softmax θ)`` with ``K`` categories and the loss
``f(z) = sum_k w_k (z_k - t_k)^2`` (``θ``, ``w``, ``t`` drawn once from the seed). The
exact gradient of ``E[f(z)]`` with respect to ``θ`` is a sum over the ``K`` categories,
``π ⊙ (f - π·f)`` with ``f_i = f(e_i)``. Each estimator draws ``--samples`` independent
gradients in one batch (every row has its own copy of ``θ``, and the loss is a sum over
rows, so row ``i`` of the gradient is the ``i``-th draw), and the script reports:

- ``bias``   ``|mean - exact|`` (Euclidean norm over the ``K`` logits);
- ``se``     the Monte-Carlo standard error of that mean, ``sqrt(variance / samples)``:
             a bias well below ``2 se`` is not distinguishable from zero;
- ``var``    the total variance of one gradient draw, ``sum_k Var(g_k)``;
- ``rel``    ``bias`` and ``sqrt(var)`` relative to ``|exact|``;
- ``us/grad`` wall time per gradient draw: the fastest of ``--repeats`` timed runs of
             sample + loss + backward for the whole batch (rounds interleave the
             contenders; the minimum is the least disturbed by other processes),
             divided by ``--samples``.

Estimators: pyro_concrete's ``ConcreteStraightThrough`` with ``"st"``,
``"gumbel_rao"`` (k = 1, 10, 100) and ``"reinmax"``; the score-function estimator
(REINFORCE, ``f(z) ∇ log π_z``, no baseline; it does not depend on the temperature and
is unbiased); and Pyro's ``RelaxedOneHotCategoricalStraightThrough`` with the same loss
(the same ST estimator, implemented with torch's relaxed sampler). The ReinMax bias is
zero at temperature 1 for this quadratic loss (second-order accuracy).

Run from the repository root::

    python benchmarks/estimators.py                       # defaults: about a minute or less
    python benchmarks/estimators.py --categories 4 --temperatures 0.5 1 --samples 4000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro.distributions as pdist
import torch
from _common import RESULTS_DIR, display_path, environment_lines, format_table, write_csv

import pyro_concrete

TEMPERATURES = (0.1, 0.5, 1.0, 2.0)


def make_problem(num_categories: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(num_categories, generator=gen, dtype=dtype)
    target = torch.rand(num_categories, generator=gen, dtype=dtype)
    weight = torch.rand(num_categories, generator=gen, dtype=dtype) + 0.5

    def loss(z: torch.Tensor) -> torch.Tensor:
        return ((z - target) ** 2 * weight).sum(-1)

    pi = torch.softmax(theta, -1)
    values = loss(torch.eye(num_categories, dtype=dtype))
    exact = pi * (values - (pi * values).sum())
    return theta, loss, exact


Estimator = Callable[[torch.Tensor, float, Callable], torch.Tensor]


def ours(estimator: str, rao_samples: int = 10) -> Estimator:
    def run(logits, temperature, loss):
        d = pyro_concrete.ConcreteStraightThrough(
            temperature, logits=logits, estimator=estimator, rao_samples=rao_samples
        )
        return loss(d.rsample()).sum()

    return run


def pyro_st(logits, temperature, loss):
    d = pdist.RelaxedOneHotCategoricalStraightThrough(
        torch.tensor(temperature, dtype=logits.dtype), logits=logits
    )
    return loss(d.rsample()).sum()


def reinforce(logits, temperature, loss):
    d = torch.distributions.OneHotCategorical(logits=logits)
    z = d.sample()
    return (loss(z).detach() * d.log_prob(z)).sum()


CONTENDERS: dict[str, Estimator] = {
    "ST": ours("st"),
    "Gumbel-Rao k=1": ours("gumbel_rao", 1),
    "Gumbel-Rao k=10": ours("gumbel_rao", 10),
    "Gumbel-Rao k=100": ours("gumbel_rao", 100),
    "ReinMax": ours("reinmax"),
    "REINFORCE": reinforce,
    "Pyro ST (RelaxedOneHotCategoricalStraightThrough)": pyro_st,
}


def gradients(fn: Estimator, theta, temperature, loss, samples: int) -> tuple[torch.Tensor, float]:
    """``samples`` per-sample gradients of one estimator and the wall time that took."""
    logits = theta.expand(samples, -1).clone().requires_grad_()
    start = time.perf_counter()
    fn(logits, temperature, loss).backward()
    return logits.grad, time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--categories", type=int, default=8, help="number of categories K")
    parser.add_argument(
        "--temperatures", type=float, nargs="+", default=list(TEMPERATURES), help="temperatures"
    )
    parser.add_argument("--samples", type=int, default=10_000, help="gradient draws per estimator")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (fastest reported)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="dtype of the computation (statistics are always accumulated in float64)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem and of the noise")
    parser.add_argument(
        "--csv", default=str(RESULTS_DIR / "estimators.csv"), help="where to write the results"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    theta, loss, exact = make_problem(args.categories, dtype, args.seed)
    exact_norm = exact.norm().item()
    torch.manual_seed(args.seed)
    rows, csv_rows = [], []
    for temperature in args.temperatures:
        draws = {
            name: gradients(fn, theta, temperature, loss, args.samples)[0] for name, fn in CONTENDERS.items()
        }
        # Timed rounds interleave the contenders, so that a burst of load from other
        # processes does not fall on one of them only.
        times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for _ in range(args.repeats):
            for name, fn in CONTENDERS.items():
                times[name].append(gradients(fn, theta, temperature, loss, args.samples)[1])
        for name in CONTENDERS:
            grads = draws[name].double()
            bias = (grads.mean(0) - exact.double()).norm().item()
            var = grads.var(0).sum().item()
            se = (var / args.samples) ** 0.5
            us = min(times[name]) / args.samples * 1e6
            rows.append(
                [
                    name,
                    f"{temperature:g}",
                    f"{bias:.4f}",
                    f"{se:.4f}",
                    f"{var:.4f}",
                    f"{bias / exact_norm:.3f}",
                    f"{var**0.5 / exact_norm:.2f}",
                    f"{us:.2f}",
                ]
            )
            csv_rows.append(
                {
                    "estimator": name,
                    "temperature": temperature,
                    "categories": args.categories,
                    "dtype": args.dtype,
                    "samples": args.samples,
                    "bias": bias,
                    "bias_se": se,
                    "variance": var,
                    "relative_bias": bias / exact_norm,
                    "relative_std": var**0.5 / exact_norm,
                    "us_per_gradient": us,
                }
            )
    print("\n".join(environment_lines()))
    print(
        f"K = {args.categories}, {args.dtype}, {args.samples} gradient draws per row, "
        f"|exact gradient| = {exact_norm:.4f}\n"
    )
    headers = ["estimator", "tau", "bias", "se", "var", "bias/|g|", "std/|g|", "us/grad"]
    print(format_table(headers, rows))
    path = write_csv(Path(args.csv), csv_rows)
    print(f"\nwritten: {display_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
