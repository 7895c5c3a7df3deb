"""Speed of pyro_concrete's subset and permutation samplers against the plain-torch code of papers.

Each contender is timed for one full training step, float32, at temperature 0.5 (``--temperature``):
construction (where there is one) + a reparameterised sample ``x`` + ``(x * w).sum().backward()``
with a fixed random ``w``, the gradient flowing to the logits or scores (a leaf that requires grad).

Subsets of ``k`` of ``K`` items, logits ``θ`` of shape ``(N, K)``:

- ``RelaxedSubset(τ, logits=θ, k=k).rsample()`` (ours) against Xie & Ermon (2019)'s
  ``continuous_topk`` as written in research code: Gumbel keys ``w = θ + g``, then ``k`` times
  ``w += log(clamp(1 - a, 1e-20))``, ``a = softmax(w / τ)``, and the sum of the ``a``;
- ``SubsetStraightThrough(τ, logits=θ, k=k).rsample()`` (ours) against the straight-through
  top-k of L2X and Concrete autoencoders: the k-hot mask of the top ``k`` of ``θ + g``
  (``scatter``) as ``hard``, ``continuous_topk`` of the same keys as ``soft``,
  ``hard - soft.detach() + soft``.

The two relaxations differ: ours is the entropy-regularised top-k of Paulus et al. (2020), a
point of the k-hypersimplex (entries in [0, 1] summing to ``k``); the entries of Xie & Ermon's
can exceed 1 (an item chosen twice). The pairs are samplers for the same purpose, not the same
outputs.

Permutations of ``n`` items, scores of shape ``(B, n, n)``, 20 Sinkhorn iterations:

- ``GumbelSinkhorn(τ, scores, num_iters=20).rsample()`` (ours) against the code of Mena et al.
  (2018): ``log_alpha = (scores + g) / τ``, then 20 times a row and a column ``logsumexp``
  normalisation, and ``exp``;
- ``GumbelSinkhornStraightThrough(...).rsample()`` (ours) against the same plus
  ``scipy.optimize.linear_sum_assignment`` per matrix in a Python loop as ``hard``, and
  ``hard - soft.detach() + soft``.

Every round runs every contender of a shape once, in a fresh random order, so machine noise
hits all sides alike; the times are medians over rounds, after warm-up rounds. The ratio is the
other side's median time over ours: above 1, ours is faster. torch's default argument validation
is left as it is (on) for our classes; the plain-torch code validates nothing.

``--device cuda`` (or another torch device) puts the parameters there (drawn on the CPU from the
seed, then moved) and synchronises the device before each reading of the clock; the SciPy
assignment of the straight-through permutation samplers still runs on the CPU, on both sides.
A device this machine does not have exits with status 69 before anything runs.

Run from the repository root::

    python benchmarks/structured.py                  # 2 to 2.5 minutes on 2 cores
    python benchmarks/structured.py --device cuda    # writes results/structured_cuda.csv
    python benchmarks/structured.py --quick          # small shapes, a smoke run of seconds
    python benchmarks/structured.py --repeats 100 --threads 2
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from _common import (
    RESULTS_DIR,
    add_device_argument,
    device_name,
    display_path,
    environment_lines,
    format_table,
    resolve_device,
    synchronizer,
    write_csv,
)
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

import pyro_concrete

SUBSET_SHAPES = ((4096, 64, 8), (1024, 1000, 50), (256, 784, 50))  # (N, K, k)
PERMUTATION_SHAPES = ((256, 10), (64, 50), (16, 100))  # (B, n)
QUICK_SUBSET_SHAPES = ((64, 16, 4), (32, 100, 10))
QUICK_PERMUTATION_SHAPES = ((16, 5), (4, 20))
REPEATS = 60  # the default run takes about 2 to 2.5 minutes on 2 cores
QUICK_REPEATS = 5
NUM_ITERS = 20
DTYPE = torch.float32
EPSILON = 1e-20  # the clamp of Xie & Ermon's code (and of the uniform draw)
PAIRS = ("relaxed", "straight-through")
NOISY = 0.25  # median relative spread of the per-call times above which the run is flagged

Thunk = Callable[[], torch.Tensor]


# -- the plain-torch formulations, as research code writes them ----------------------------


def gumbel_like(x: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(x).clamp(min=EPSILON)
    return -torch.log(-torch.log(u))


def continuous_topk(w: torch.Tensor, k: int, t: float) -> torch.Tensor:
    """Xie & Ermon (2019): ``k`` successive softmaxes of the Gumbel keys ``w``, each
    discounting the items chosen so far; the sum of the ``k`` relaxed one-hot vectors."""
    khot = torch.zeros_like(w)
    onehot_approx = torch.zeros_like(w)
    for _ in range(k):
        khot_mask = torch.clamp(1.0 - onehot_approx, min=EPSILON)
        w = w + torch.log(khot_mask)
        onehot_approx = torch.softmax(w / t, dim=-1)
        khot = khot + onehot_approx
    return khot


def xie_ermon_subset(logits: torch.Tensor, k: int, t: float) -> torch.Tensor:
    return continuous_topk(logits + gumbel_like(logits), k, t)


def straight_through_topk(logits: torch.Tensor, k: int, t: float) -> torch.Tensor:
    """L2X / Concrete-autoencoder style: the exact top-k mask forward, Xie & Ermon backward."""
    keys = logits + gumbel_like(logits)
    index = keys.topk(k, dim=-1).indices
    hard = torch.zeros_like(logits).scatter_(-1, index, 1.0)
    soft = continuous_topk(keys, k, t)
    return hard - soft.detach() + soft


def mena_sinkhorn(scores: torch.Tensor, t: float, num_iters: int) -> torch.Tensor:
    """Mena et al. (2018): log-space Sinkhorn of the Gumbel-perturbed scores over τ."""
    log_alpha = (scores + gumbel_like(scores)) / t
    for _ in range(num_iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, -1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, -2, keepdim=True)
    return log_alpha


def mena_sinkhorn_straight_through(scores: torch.Tensor, t: float, num_iters: int) -> torch.Tensor:
    """The Sinkhorn sample backward, the optimal assignment (SciPy, per matrix) forward."""
    log_alpha = mena_sinkhorn(scores, t, num_iters)
    soft = torch.exp(log_alpha)
    perms = []
    for matrix in log_alpha.detach().cpu().numpy():
        rows, cols = linear_sum_assignment(-matrix)
        perm = np.zeros_like(matrix)
        perm[rows, cols] = 1.0
        perms.append(perm)
    hard = torch.from_numpy(np.stack(perms)).to(soft)
    return hard - soft.detach() + soft


# -- contenders ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    name: str
    sample: Callable[[torch.Tensor], torch.Tensor]  # parameters -> reparameterised sample
    ours: bool
    pair: str  # "relaxed" or "straight-through": the column the ratio goes to
    short: str  # the table's column header


def subset_contenders(k: int, t: float) -> list[Contender]:
    return [
        Contender(
            "RelaxedSubset",
            lambda lg: pyro_concrete.RelaxedSubset(t, logits=lg, k=k).rsample(),
            True,
            "relaxed",
            "RelaxedSubset",
        ),
        Contender(
            "Xie & Ermon continuous_topk",
            lambda lg: xie_ermon_subset(lg, k, t),
            False,
            "relaxed",
            "Xie-Ermon",
        ),
        Contender(
            "SubsetStraightThrough",
            lambda lg: pyro_concrete.SubsetStraightThrough(t, logits=lg, k=k).rsample(),
            True,
            "straight-through",
            "SubsetST",
        ),
        Contender(
            "ST top-k (L2X)", lambda lg: straight_through_topk(lg, k, t), False, "straight-through", "L2X ST"
        ),
    ]


def permutation_contenders(t: float) -> list[Contender]:
    return [
        Contender(
            "GumbelSinkhorn",
            lambda s: pyro_concrete.GumbelSinkhorn(t, s, num_iters=NUM_ITERS).rsample(),
            True,
            "relaxed",
            "GumbelSinkhorn",
        ),
        Contender(
            "Mena et al. Sinkhorn", lambda s: mena_sinkhorn(s, t, NUM_ITERS).exp(), False, "relaxed", "Mena"
        ),
        Contender(
            "GumbelSinkhornStraightThrough",
            lambda s: pyro_concrete.GumbelSinkhornStraightThrough(t, s, num_iters=NUM_ITERS).rsample(),
            True,
            "straight-through",
            "GumbelSinkhornST",
        ),
        Contender(
            "Mena et al. + SciPy assignment",
            lambda s: mena_sinkhorn_straight_through(s, t, NUM_ITERS),
            False,
            "straight-through",
            "Mena + SciPy",
        ),
    ]


# -- interleaved timing -------------------------------------------------------------------


@dataclass
class Task:
    """One contender at one shape, with its timings in seconds."""

    contender: Contender
    params: torch.Tensor  # leaf, requires grad
    weights: torch.Tensor  # the fixed linear function of the sample
    sync: Callable[[], None]  # waits for the device's queued work (a no-op on the CPU)
    times: list[float] = field(default_factory=list)

    def run(self) -> torch.Tensor:
        self.params.grad = None
        x = self.contender.sample(self.params)
        (x * self.weights).sum().backward()
        return x

    def step(self) -> None:
        self.sync()  # nothing queued before the clock starts
        start = time.perf_counter()
        self.run()
        self.sync()  # the step's kernels done before it stops
        self.times.append(time.perf_counter() - start)


def time_tasks(tasks: list[Task], repeats: int, warmup: int, rng: random.Random, progress) -> None:
    """``warmup`` untimed rounds, then ``repeats`` timed rounds, each over every task in a
    fresh random order (the garbage collector off while timing)."""
    for _ in range(warmup):
        for task in rng.sample(tasks, len(tasks)):
            task.run()
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for task in rng.sample(tasks, len(tasks)):
                task.step()
            progress.update(1)
    finally:
        gc.enable()


def pair_tasks(tasks: list[Task], pair: str) -> tuple[Task, Task]:
    """Ours and theirs of one pair."""
    ours = next(t for t in tasks if t.contender.pair == pair and t.contender.ours)
    theirs = next(t for t in tasks if t.contender.pair == pair and not t.contender.ours)
    return ours, theirs


def median_ms(task: Task) -> float:
    return 1e3 * statistics.median(task.times)


def relative_iqr(task: Task) -> float:
    q1, _, q3 = statistics.quantiles(task.times, n=4)
    return (q3 - q1) / statistics.median(task.times)


@dataclass
class ShapeResult:
    family: str  # "subset" or "permutation"
    label: str  # the shape as printed
    size: dict[str, int]  # the shape's dimensions, for the CSV
    tasks: list[Task]
    checks: list[str]  # what one relaxed sample of each side looked like


def relaxed_samples(tasks: list[Task]) -> list[tuple[str, torch.Tensor]]:
    """One sample, without gradient, of each relaxed contender."""
    with torch.no_grad():
        return [
            (t.contender.name, t.contender.sample(t.params)) for t in tasks if t.contender.pair == "relaxed"
        ]


def subset_checks(tasks: list[Task]) -> list[str]:
    """Row sums, the largest entry and the share of entries above 1 of one relaxed sample each."""
    lines = []
    for name, x in relaxed_samples(tasks):
        sums = x.sum(-1)
        lines.append(
            f"{name}: row sums {sums.min():.4f} to {sums.max():.4f}, max entry {x.max():.3f}, "
            f"{100 * (x > 1).float().mean():.2f}% of entries > 1"
        )
    return lines


def permutation_checks(tasks: list[Task]) -> list[str]:
    """How far one relaxed sample each is from doubly stochastic (20 iterations leave a gap)."""
    return [
        f"{name}: max |row sum - 1| {(x.sum(-1) - 1).abs().max():.1e}, "
        f"max |column sum - 1| {(x.sum(-2) - 1).abs().max():.1e}"
        for name, x in relaxed_samples(tasks)
    ]


# -- report -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=argparse.SUPPRESS,
        help=f"timed rounds per shape, median over these (default: {REPEATS}; {QUICK_REPEATS} with --quick)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per shape")
    parser.add_argument("--temperature", type=float, default=0.5, help="temperature of every contender")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs, the noise and the order")
    add_device_argument(parser)
    parser.add_argument(
        "--csv",
        help=f"where to write the timings (default: {display_path(RESULTS_DIR / 'structured.csv')} on the "
        "CPU, structured_<device type>.csv elsewhere)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small shapes and few rounds: a smoke run of seconds",
    )
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    if args.csv is None:
        suffix = "" if args.device.type == "cpu" else f"_{args.device.type}"
        args.csv = str(RESULTS_DIR / f"structured{suffix}.csv")
    if not hasattr(args, "repeats"):
        args.repeats = QUICK_REPEATS if args.quick else REPEATS
    if args.repeats < 3 or args.warmup < 1 or args.temperature <= 0 or args.threads < 1:
        parser.error("need --repeats >= 3, --warmup >= 1, --temperature > 0 and --threads >= 1")
    return args


def pair_table(results: list[ShapeResult]) -> str:
    """One row per shape: for each pair, our time, theirs and the ratio (the names head the
    columns: every shape of a family has the same contenders)."""
    first = results[0].tasks
    headers, groups = ["shape"], [("", 1)]
    for pair in PAIRS:
        ours, theirs = pair_tasks(first, pair)
        headers += [ours.contender.short, theirs.contender.short, "ratio"]
        groups.append((f"{pair}: median ms", 3))
    rows = []
    for result in results:
        row = [result.label]
        for pair in PAIRS:
            ours, theirs = pair_tasks(result.tasks, pair)
            row += [
                f"{median_ms(ours):.2f}",
                f"{median_ms(theirs):.2f}",
                f"{median_ms(theirs) / median_ms(ours):.2f}",
            ]
        rows.append(row)
    legend = "; ".join(
        t.contender.short
        + ("" if t.contender.short == t.contender.name else f" = {t.contender.name}")
        + (" (ours)" if t.contender.ours else "")
        for t in first
    )
    return format_table(headers, rows, groups=groups, left=1) + f"\ncolumns: {legend}"


def csv_rows(results: list[ShapeResult], args: argparse.Namespace) -> list[dict[str, object]]:
    rows = []
    for result in results:
        for task in result.tasks:
            ours, _ = pair_tasks(result.tasks, task.contender.pair)
            rows.append(
                {
                    "family": result.family,
                    "shape": result.label,
                    "N_or_B": result.size.get("N", result.size.get("B")),
                    "K_or_n": result.size.get("K", result.size.get("n")),
                    "k": result.size.get("k", ""),
                    "num_iters": NUM_ITERS if result.family == "permutation" else "",
                    "pair": task.contender.pair,
                    "contender": task.contender.name,
                    "ours": task.contender.ours,
                    "median_ms": median_ms(task),
                    "relative_iqr": relative_iqr(task),
                    "rounds": len(task.times),
                    "ratio_vs_ours": median_ms(task) / median_ms(ours),
                    "temperature": args.temperature,
                    "dtype": "float32",
                    "device": device_name(args.device),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device: torch.device = args.device
    sync = synchronizer(device)
    generator = torch.Generator().manual_seed(args.seed)  # on the CPU: the same inputs on every device
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    subset_shapes = QUICK_SUBSET_SHAPES if args.quick else SUBSET_SHAPES
    permutation_shapes = QUICK_PERMUTATION_SHAPES if args.quick else PERMUTATION_SHAPES
    t = args.temperature

    def fixed(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=DTYPE, device="cpu").to(device)

    def leaf(*shape: int) -> torch.Tensor:
        return fixed(*shape).requires_grad_()

    results: list[ShapeResult] = []
    started = time.perf_counter()
    with tqdm(
        total=(len(subset_shapes) + len(permutation_shapes)) * args.repeats,
        desc="rounds",
        leave=False,
        disable=args.no_progress,
        file=sys.stderr,
    ) as progress:
        for n, num_items, k in subset_shapes:
            logits, weights = leaf(n, num_items), fixed(n, num_items)
            tasks = [Task(c, logits, weights, sync) for c in subset_contenders(k, t)]
            time_tasks(tasks, args.repeats, args.warmup, rng, progress)
            results.append(
                ShapeResult(
                    "subset",
                    f"{n}x{num_items}, k={k}",
                    {"N": n, "K": num_items, "k": k},
                    tasks,
                    subset_checks(tasks),
                )
            )
        for b, size in permutation_shapes:
            scores, weights = leaf(b, size, size), fixed(b, size, size)
            tasks = [Task(c, scores, weights, sync) for c in permutation_contenders(t)]
            time_tasks(tasks, args.repeats, args.warmup, rng, progress)
            results.append(
                ShapeResult(
                    "permutation", f"{b}x{size}x{size}", {"B": b, "n": size}, tasks, permutation_checks(tasks)
                )
            )
    elapsed = time.perf_counter() - started

    print(
        f"Median time (ms) of one step on {device_name(device)}: construction + rsample + backward of "
        "(x * w).sum(), float32"
    )
    print("ratio = their time / our time (> 1: ours faster)")
    print(
        f"temperature {t:g}, seed {args.seed}, {args.warmup} warm-up + {args.repeats} timed interleaved "
        f"rounds per shape, run time {elapsed:.0f} s"
    )
    for line in environment_lines(device):
        print(line)
    print()
    subsets = [r for r in results if r.family == "subset"]
    permutations = [r for r in results if r.family == "permutation"]
    print("Subsets of k of K items (N rows):")
    print(pair_table(subsets))
    print()
    print("  The relaxations differ: RelaxedSubset is the entropy-regularised top-k of Paulus et al.")
    print("  (2020), a point of the k-hypersimplex (entries in [0, 1], summing to k; bisection and")
    print("  Newton steps for its threshold); Xie & Ermon's k successive softmaxes can give entries")
    print("  above 1. The comparison is of samplers for the same purpose, not of identical outputs.")
    print("  One sample of each relaxed contender (no gradient):")
    for result in subsets:
        for line in result.checks:
            print(f"    {result.label}, {line}")
    print()
    print(f"Permutations of n items (B matrices, {NUM_ITERS} Sinkhorn iterations):")
    print(pair_table(permutations))
    print()
    print("  Both sides compute the same relaxation (ours also shifts by detached maxima for accuracy);")
    print("  both straight-through contenders solve one SciPy assignment per matrix in a Python loop.")
    print("  One sample of each relaxed contender (no gradient):")
    for result in permutations:
        for line in result.checks:
            print(f"    {result.label}, {line}")
    print()
    iqrs = sorted(relative_iqr(task) for result in results for task in result.tasks)
    print(
        f"noise: (p75 - p25) / median of the per-call times: median {100 * statistics.median(iqrs):.0f}%, "
        f"max {100 * iqrs[-1]:.0f}% over the {len(iqrs)} timed contenders"
    )
    if statistics.median(iqrs) > NOISY:
        print(
            f"WARNING: the median spread is above {100 * NOISY:.0f}%: the machine was busy and these times "
            "are unreliable; rerun on an idle machine."
        )
    path = write_csv(Path(args.csv), csv_rows(results, args))
    print(f"\nwrote {display_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
