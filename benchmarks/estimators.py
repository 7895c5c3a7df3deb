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

The second table is the cost of a full training step (construction, ``rsample``, backward
of a linear loss; float32, ``--threads`` threads) at the shapes of ``--cost-shapes``: the
median over ``--cost-repeats`` interleaved rounds of ST, Gumbel-Rao with ``k =
--rao-samples`` and Pyro's ST class, as a ratio to our ST step. Its last column is the floor
of Gumbel-Rao measured in the same run: an ST step plus the work no implementation of the
other ``k - 1`` conditional draws avoids, a uniform number per element and draw and two
logarithms and an exponential of each, kept for the backward pass (timed on their own, in
place, in the kernel's blocks; the backward pass's products are not counted).

Run from the repository root::

    python benchmarks/estimators.py                       # defaults: about a minute or less
    python benchmarks/estimators.py --categories 4 --temperatures 0.5 1 --samples 4000
    python benchmarks/estimators.py --cost-only --cost-shapes 4096x64 1024x1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro.distributions as pdist
import torch
from _common import (
    RESULTS_DIR,
    add_device_argument,
    add_shapes_argument,
    device_name,
    display_path,
    environment_lines,
    format_table,
    resolve_device,
    resolve_shapes,
    synchronizer,
    write_csv,
)
from tqdm import tqdm

import pyro_concrete
from pyro_concrete.ops.gumbel_rao import _blocks as row_blocks
from pyro_concrete.ops.gumbel_rao import draw_log_uniform

TEMPERATURES = (0.1, 0.5, 1.0, 2.0)
COST_SHAPES = ((4096, 64), (1024, 1000))


def make_problem(
    num_categories: int, dtype: torch.dtype, seed: int, device: torch.device = torch.device("cpu")
):
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same problem on every device
    theta = torch.randn(num_categories, generator=gen, dtype=dtype).to(device)
    target = torch.rand(num_categories, generator=gen, dtype=dtype).to(device)
    weight = torch.rand(num_categories, generator=gen, dtype=dtype).to(device) + 0.5

    def loss(z: torch.Tensor) -> torch.Tensor:
        return ((z - target) ** 2 * weight).sum(-1)

    pi = torch.softmax(theta, -1)
    values = loss(torch.eye(num_categories, dtype=dtype, device=device))
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
        torch.tensor(temperature, dtype=logits.dtype, device=logits.device), logits=logits
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


def gradients(
    fn: Estimator, theta, temperature, loss, samples: int, sync: Callable[[], None] = lambda: None
) -> tuple[torch.Tensor, float]:
    """``samples`` per-sample gradients of one estimator and the wall time that took."""
    logits = theta.expand(samples, -1).clone().requires_grad_()
    sync()
    start = time.perf_counter()
    fn(logits, temperature, loss).backward()
    sync()
    return logits.grad, time.perf_counter() - start


# -- the cost of a step -----------------------------------------------------------------


def _ours_step(estimator: str, rao_samples: int, temperature: float) -> Callable:
    def step(logits: torch.Tensor, weights: torch.Tensor) -> None:
        d = pyro_concrete.ConcreteStraightThrough(
            temperature, logits=logits, estimator=estimator, rao_samples=rao_samples
        )
        (d.rsample() * weights).sum().backward()

    return step


def _pyro_st_step(temperature: float) -> Callable:
    def step(logits: torch.Tensor, weights: torch.Tensor) -> None:
        tau = torch.tensor(temperature, device=logits.device)
        d = pdist.RelaxedOneHotCategoricalStraightThrough(tau, logits=logits)
        (d.rsample() * weights).sum().backward()

    return step


def _floor_work(draws: int) -> Callable:
    """The work of the ``k - 1`` draws beyond the one an ST step makes itself, which no
    implementation avoids: a uniform number per element and draw, two logarithms and one
    exponential of each, kept (as the backward pass needs them). In place, in blocks of rows
    of about ``BLOCK_ELEMENTS`` numbers as the kernel draws them: the cheapest way to do it. The
    backward pass's products over the kept draws are not counted."""
    draws = draws - 1

    def work(logits: torch.Tensor, weights: torch.Tensor) -> None:
        rows, categories = logits.shape
        kept = []
        for start, stop in row_blocks(rows, draws, categories):  # the kernel's own blocks
            shape = torch.Size([stop - start, draws, categories])
            kept.append(draw_log_uniform(shape, logits.dtype, logits.device).neg_().log_().exp_())

    return work


def cost_rows(shapes, rao_samples: int, temperature: float, repeats: int, seed: int, device: torch.device):
    """Median step times (ms) per shape and contender, with ratios to our ST step."""
    sync = synchronizer(device)
    contenders = {
        "ST": _ours_step("st", 1, temperature),
        f"Gumbel-Rao k={rao_samples}": _ours_step("gumbel_rao", rao_samples, temperature),
        "Pyro ST": _pyro_st_step(temperature),
        "floor work": _floor_work(rao_samples),
    }
    table, csv_rows = [], []
    for shape in shapes:
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(shape, generator=gen).to(device).requires_grad_()
        weights = torch.randn(shape, generator=gen).to(device)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for step in contenders.values():  # warm-up
            step(logits, weights)
        for _ in tqdm(range(repeats), desc=f"cost {shape[0]}x{shape[1]}", leave=False):
            for name, step in contenders.items():
                sync()
                start = time.perf_counter()
                step(logits, weights)
                sync()
                times[name].append(time.perf_counter() - start)
                logits.grad = None
        ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        st = ms["ST"]
        gumbel_rao = ms[f"Gumbel-Rao k={rao_samples}"]
        floor = (st + ms["floor work"]) / st
        table.append(
            [
                f"{shape[0]}x{shape[1]}",
                f"{st:.2f}",
                f"{gumbel_rao:.2f}",
                f"{ms['Pyro ST']:.2f}",
                f"{gumbel_rao / st:.2f}",
                f"{ms['Pyro ST'] / st:.2f}",
                f"{floor:.2f}",
            ]
        )
        csv_rows.append(
            {
                "shape": f"{shape[0]}x{shape[1]}",
                "device": device_name(device),
                "rao_samples": rao_samples,
                "threads": torch.get_num_threads(),
                "st_ms": st,
                "gumbel_rao_ms": gumbel_rao,
                "pyro_st_ms": ms["Pyro ST"],
                "floor_work_ms": ms["floor work"],
                "gumbel_rao_over_st": gumbel_rao / st,
                "floor_over_st": floor,
            }
        )
    return table, csv_rows


def print_costs(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    table, csv_rows = cost_rows(
        args.cost_shapes, args.rao_samples, args.cost_temperature, args.cost_repeats, args.seed, args.device
    )
    print(
        f"\nCost of a step (construction, rsample, backward of a linear loss) on "
        f"{device_name(args.device)}, float32, {args.threads} threads, median of "
        f"{args.cost_repeats} interleaved rounds, ms:\n"
    )
    k = args.rao_samples
    headers = ["shape", "ST", f"GR k={k}", "Pyro ST", "GR/ST", "Pyro/ST", "floor/ST"]
    print(format_table(headers, table))
    path = write_csv(Path(args.cost_csv), csv_rows)
    print(f"\nwritten: {display_path(path)}")


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
    cost = parser.add_argument_group("the cost of a step")
    cost.add_argument("--cost-only", action="store_true", help="only the cost table")
    cost.add_argument("--no-cost", action="store_true", help="no cost table")
    add_shapes_argument(cost, COST_SHAPES, "--cost-shapes", "shapes of the cost table (N rows, K categories)")
    cost.add_argument("--rao-samples", type=int, default=10, help="k of the Gumbel-Rao row")
    cost.add_argument("--cost-temperature", type=float, default=0.5, help="temperature of every step")
    cost.add_argument("--cost-repeats", type=int, default=31, help="timed rounds per shape (median)")
    cost.add_argument("--threads", type=int, default=2, help="torch threads for the cost table")
    cost.add_argument(
        "--cost-csv", default=str(RESULTS_DIR / "estimator_costs.csv"), help="where to write the costs"
    )
    add_device_argument(parser)
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    args.cost_shapes = resolve_shapes(args.cost_shapes)
    if args.device.type != "cpu":  # the CPU's results are not overwritten
        for name in ("csv", "cost_csv"):
            path = Path(getattr(args, name))
            if path.parent == RESULTS_DIR and path.stem in ("estimators", "estimator_costs"):
                setattr(args, name, str(path.with_stem(f"{path.stem}_{args.device.type}")))
    if args.cost_only and args.no_cost:
        parser.error("--cost-only and --no-cost exclude each other")
    if args.rao_samples < 2:
        parser.error("--rao-samples must be at least 2 (k = 1 is ST)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cost_only:
        print("\n".join(environment_lines(args.device)))
        print_costs(args)
        return 0
    dtype = getattr(torch, args.dtype)
    sync = synchronizer(args.device)
    theta, loss, exact = make_problem(args.categories, dtype, args.seed, args.device)
    exact_norm = exact.norm().item()
    torch.manual_seed(args.seed)
    rows, csv_rows = [], []
    for temperature in args.temperatures:
        draws = {
            name: gradients(fn, theta, temperature, loss, args.samples, sync)[0]
            for name, fn in CONTENDERS.items()
        }
        # Timed rounds interleave the contenders, so that a burst of load from other
        # processes does not fall on one of them only.
        times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for _ in range(args.repeats):
            for name, fn in CONTENDERS.items():
                times[name].append(gradients(fn, theta, temperature, loss, args.samples, sync)[1])
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
                    "device": device_name(args.device),
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
    print("\n".join(environment_lines(args.device)))
    print(
        f"K = {args.categories}, {args.dtype}, {args.samples} gradient draws per row, "
        f"|exact gradient| = {exact_norm:.4f}\n"
    )
    headers = ["estimator", "tau", "bias", "se", "var", "bias/|g|", "std/|g|", "us/grad"]
    print(format_table(headers, rows))
    path = write_csv(Path(args.csv), csv_rows)
    print(f"\nwritten: {display_path(path)}")
    if not args.no_cost:
        print_costs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
