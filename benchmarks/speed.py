"""Speed of pyro_concrete against torch's and Pyro's relaxed categoricals, in one interleaved run.

For each shape (N, K), float32, three operations are timed:

- ``rsample``   ``d.rsample()`` on a distribution built beforehand (logits a leaf tensor that
                requires grad, so the autograd graph is recorded as in training);
- ``log_prob``  ``d.log_prob(x)`` of a sample ``x`` drawn beforehand from the same ``d``;
- ``full``      construction + ``rsample`` + ``log_prob`` + the gradient of
                ``log_prob(x).sum() + (W * x).sum()`` (``W`` a fixed random matrix) with
                respect to the logits and a temperature tensor that requires grad.

``F.gumbel_softmax`` (soft and hard) has no density: its ``rsample`` is one call, its ``full``
is the call + the gradient of ``(W * x).sum()`` alone, so that ratio favours it.

Every round runs every (contender, operation) pair once, in a fresh random order, so machine
noise hits all sides alike; medians are over rounds, after warm-up rounds. torch's default
validation is left as it is (on) for everyone. Where a torch or Pyro class raises
``ValueError`` on its own samples under that validation, the pair is marked ``*`` and the
calls that raised are not timed; if most of its calls raise, it is timed with
``validate_args=False`` from then on (which favours the anchor). The notes under the table
say which.

``--device cuda`` (or any torch device) builds every contender's inputs there (the same numbers
as on the CPU: drawn on the CPU from the seed, then moved) and waits for the device to finish
its queued work before each reading of the clock (``torch.cuda.synchronize``), so that a call's
time is that of its kernels, not of their launch. A device this machine does not have ends
the script before anything runs, with a message and exit status 69; the device is named in the
header and in every CSV row.

Run from the repository root::

    python benchmarks/speed.py
    python benchmarks/speed.py --shapes 4096x64 --repeats 30
    python benchmarks/speed.py --device cuda        # writes results/speed_cuda.csv
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro.distributions as pyro_dist
import torch
import torch.nn.functional as F
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
from torch.distributions import RelaxedOneHotCategorical
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from tqdm import tqdm

import pyro_concrete

SHAPES = ((4096, 10), (4096, 64), (1024, 1000), (65536, 2))
OPERATIONS = ("rsample", "log_prob", "full")
DTYPE = torch.float32

Thunk = Callable[[], object]


@dataclass(frozen=True)
class Inputs:
    logits: torch.Tensor  # (N, K) leaf, requires grad
    temperature: torch.Tensor  # scalar, no grad (rsample, log_prob)
    temperature_grad: torch.Tensor  # scalar leaf, requires grad (full)
    weights: torch.Tensor  # (N, K), the fixed linear function of the sample


# -- contenders -------------------------------------------------------------------------


class Contender:
    """Builds, for one operation, a no-argument function that runs it once."""

    name: str
    ours: bool = False
    baseline: str = "Concrete"  # the contender of ours it is compared with
    operations: tuple[str, ...] = OPERATIONS

    def build(self, operation: str, inputs: Inputs, validate: bool | None) -> Thunk:
        raise NotImplementedError


class DistributionContender(Contender):
    def __init__(self, name: str, make, *, ours: bool = False, baseline: str = "Concrete") -> None:
        self.name, self.make, self.ours, self.baseline = name, make, ours, baseline

    def build(self, operation: str, inputs: Inputs, validate: bool | None) -> Thunk:
        make, logits, weights = self.make, inputs.logits, inputs.weights
        if operation == "rsample":
            d = make(inputs.temperature, logits, validate)
            return d.rsample
        if operation == "log_prob":
            d = make(inputs.temperature, logits, validate)
            x = d.rsample()
            return lambda: d.log_prob(x)
        temperature = inputs.temperature_grad

        def full():
            d = make(temperature, logits, validate)
            x = d.rsample()
            loss = d.log_prob(x).sum() + (weights * x).sum()
            return torch.autograd.grad(loss, (logits, temperature))

        return full


class GumbelSoftmaxContender(Contender):
    operations = ("rsample", "full")

    def __init__(self, hard: bool) -> None:
        self.hard = hard
        self.name = f"F.gumbel_softmax({'hard' if hard else 'soft'})"

    def build(self, operation: str, inputs: Inputs, validate: bool | None) -> Thunk:
        logits, hard, weights = inputs.logits, self.hard, inputs.weights
        if operation == "rsample":
            tau = float(inputs.temperature)
            return lambda: F.gumbel_softmax(logits, tau=tau, hard=hard)
        temperature = inputs.temperature_grad

        def full():
            x = F.gumbel_softmax(logits, tau=temperature, hard=hard)
            return torch.autograd.grad((weights * x).sum(), (logits, temperature))

        return full


CONTENDERS: tuple[Contender, ...] = (
    DistributionContender(
        "Concrete",
        lambda t, lg, v: pyro_concrete.Concrete(t, logits=lg, validate_args=v),
        ours=True,
    ),
    DistributionContender(
        "ExpConcrete",
        lambda t, lg, v: pyro_concrete.ExpConcrete(t, logits=lg, validate_args=v),
        ours=True,
    ),
    DistributionContender(
        "torch RelaxedOneHotCategorical",
        lambda t, lg, v: RelaxedOneHotCategorical(t, logits=lg, validate_args=v),
    ),
    DistributionContender(
        "torch ExpRelaxedCategorical",
        lambda t, lg, v: ExpRelaxedCategorical(t, logits=lg, validate_args=v),
        baseline="ExpConcrete",
    ),
    GumbelSoftmaxContender(hard=False),
    GumbelSoftmaxContender(hard=True),
    DistributionContender(
        "pyro RelaxedOneHotCatStraightThrough",
        lambda t, lg, v: pyro_dist.RelaxedOneHotCategoricalStraightThrough(t, logits=lg, validate_args=v),
    ),
)


# -- interleaved timing -----------------------------------------------------------------


@dataclass
class Task:
    """One (contender, operation) pair at one shape, with its timings in seconds."""

    contender: Contender
    operation: str
    inputs: Inputs
    sync: Callable[[], None]  # waits for the device's queued work (a no-op on the CPU)
    run: Thunk = field(init=False)
    times: list[float] = field(default_factory=list)
    calls: int = 0  # under validation
    raises: int = 0  # calls that raised ValueError under validation
    error: str | None = None  # first line of the first such error
    validation_off: bool = False  # switched to validate_args=False because most calls raised

    def __post_init__(self) -> None:
        self.run = self.contender.build(self.operation, self.inputs, None)

    @property
    def raised(self) -> bool:
        return self.raises > 0

    def step(self) -> None:
        """Runs once and records the time; a call that raises a validation error is not timed."""
        try:
            self.sync()  # nothing queued before the clock starts
            start = time.perf_counter()
            self.run()
            self.sync()  # the call's kernels done before it stops
            elapsed = time.perf_counter() - start
        except ValueError as error:
            if self.validation_off or self.contender.ours:
                raise  # ours must never raise on its own samples, nor anyone without validation
            self.calls += 1
            self.raises += 1
            self.error = self.error or str(error).splitlines()[0]
            if self.raises >= MIN_RAISES and 2 * self.raises > self.calls:
                self.validation_off = True
                self.run = self.contender.build(self.operation, self.inputs, False)
                self.times.clear()
            return
        if not self.validation_off:
            self.calls += 1
        self.times.append(elapsed)

    def validation_note(self) -> str:
        if not self.raised:
            return "default (on)"
        note = f"raised ValueError in {self.raises} of {self.calls} validated calls; "
        if self.validation_off:
            return note + "then timed with validate_args=False"
        return note + "timed the calls that passed"


def make_inputs(
    n: int, k: int, temperature: float, generator: torch.Generator, device: torch.device
) -> Inputs:
    """The inputs of one shape on ``device``, drawn on the CPU from ``generator`` (the same
    numbers on every device)."""

    def draw() -> torch.Tensor:
        return torch.randn(n, k, generator=generator, dtype=DTYPE, device="cpu").to(device)

    return Inputs(
        logits=draw().requires_grad_(),
        temperature=torch.tensor(temperature, dtype=DTYPE, device=device),
        temperature_grad=torch.tensor(temperature, dtype=DTYPE, device=device, requires_grad=True),
        weights=draw(),
    )


MIN_RAISES = 3  # a pair whose calls mostly raise is timed without validation after this many
NOISY = 0.25  # median relative spread of the per-call times above which the run is flagged
MIN_ROUNDS = 20  # the time limit never stops a shape with fewer timings than this per task


def time_shape(
    tasks: list[Task], repeats: int, warmup: int, max_seconds: float, rng: random.Random, progress
) -> int:
    """Rounds over all tasks in a fresh random order until each has ``repeats`` timings.

    Stops early once ``max_seconds`` have passed (and every task has ``MIN_ROUNDS``
    timings), so a busy machine cannot stretch the run without bound. Returns the number
    of timed rounds.
    """
    for _ in range(warmup):
        for task in rng.sample(tasks, len(tasks)):
            task.step()
    for task in tasks:
        task.times.clear()  # warm-up timings are not kept
    gc.collect()
    gc.disable()
    rounds, deadline = 0, time.perf_counter() + max_seconds
    try:
        while rounds < 2 * repeats + warmup:  # bound: a task restarts at most once
            fewest = min(len(t.times) for t in tasks)
            if fewest >= repeats or (fewest >= MIN_ROUNDS and time.perf_counter() > deadline):
                break
            for task in rng.sample(tasks, len(tasks)):
                task.step()
            rounds += 1
            progress.update(1)
    finally:
        gc.enable()
    progress.update(max(0, repeats - rounds))  # the bar counts `repeats` rounds per shape
    return rounds


# -- report -----------------------------------------------------------------------------


def median_ms(task: Task) -> float:
    return 1e3 * statistics.median(task.times)


def relative_iqr(task: Task) -> float:
    q1, _, q3 = statistics.quantiles(task.times, n=4)
    return (q3 - q1) / statistics.median(task.times)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_shapes_argument(parser, SHAPES)
    parser.add_argument("--repeats", type=int, default=200, help="timed rounds per shape (median over these)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds per shape")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=40.0,
        help=f"time limit of the timed rounds of one shape (at least {MIN_ROUNDS} rounds are run)",
    )
    parser.add_argument("--temperature", type=float, default=0.5, help="temperature of every contender")
    parser.add_argument("--threads", type=int, help="torch threads (torch's own choice when not given)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs, the noise and the order")
    add_device_argument(parser)
    parser.add_argument(
        "--csv",
        help=f"where to write the timings (default: {display_path(RESULTS_DIR / 'speed.csv')} on the CPU, "
        "speed_<device type>.csv elsewhere)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    if args.csv is None:
        suffix = "" if args.device.type == "cpu" else f"_{args.device.type}"
        args.csv = str(RESULTS_DIR / f"speed{suffix}.csv")
    args.shapes = resolve_shapes(args.shapes)
    if args.repeats < 3 or args.warmup < 1 or args.temperature <= 0:
        parser.error("need --repeats >= 3, --warmup >= 1 and --temperature > 0")
    return args


def ratio_text(anchor: Task, ours: Task | None) -> str:
    if ours is None or anchor is ours:
        return "-"
    return f"{median_ms(anchor) / median_ms(ours):.2f}" + ("*" if anchor.raised else "")


def summarize_raised(raised: list[tuple[str, Task]]) -> list[str]:
    """One line per (shape, contender, operation) that raised, then each distinct error once."""
    lines = [f"{shape} {t.contender.name} {t.operation}: {t.validation_note()}" for shape, t in raised]
    # Messages name the shape; show each kind once, without it.
    messages = {re.sub(r"\(Tensor of shape \([^)]*\)\)", "(Tensor)", t.error) for _, t in raised}
    return lines + [f"error: {m}" for m in sorted(messages)]


def check_targets(results: dict[tuple[int, int], dict[tuple[str, str], Task]]) -> list[list[str]]:
    """Rows (target, shape, measured ratio, verdict) for the issue's speed targets."""

    def ratio(shape, anchor: str, operation: str) -> tuple[str, bool | None]:
        tasks = results.get(shape)
        if tasks is None:
            return "not run", None
        value = median_ms(tasks[anchor, operation]) / median_ms(tasks["Concrete", operation])
        return f"{value:.3f}" + ("*" if tasks[anchor, operation].raised else ""), value

    rows = []
    # The targets kept since the kernels became composite torch operations (every derivative
    # order, torch.func, JIT, compile): the contracts come first, these are the floor.
    targets = [
        (
            "full: RelaxedOneHotCategorical / Concrete >= 2.5",
            [(4096, 64)],
            "torch RelaxedOneHotCategorical",
            2.5,
        ),
        (
            "full: RelaxedOneHotCategorical / Concrete >= 1.5",
            SHAPES,
            "torch RelaxedOneHotCategorical",
            1.5,
        ),
    ]
    for label, shapes, anchor, threshold in targets:
        operation = label.split(":")[0]
        for shape in shapes:
            text, value = ratio(shape, anchor, operation)
            verdict = "?" if value is None else ("met" if value >= threshold else "MISSED")
            rows.append([label, f"{shape[0]}x{shape[1]}", text, verdict])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device: torch.device = args.device
    sync = synchronizer(device)
    generator = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)  # the noise, on every device
    results: dict[tuple[int, int], dict[tuple[str, str], Task]] = {}
    rounds: dict[tuple[int, int], int] = {}
    started = time.perf_counter()
    with tqdm(
        total=len(args.shapes) * args.repeats,
        desc="rounds",
        leave=False,
        disable=args.no_progress,
        file=sys.stderr,
    ) as progress:
        for n, k in args.shapes:
            inputs = make_inputs(n, k, args.temperature, generator, device)
            tasks = [Task(c, op, inputs, sync) for c in CONTENDERS for op in c.operations]
            rounds[n, k] = time_shape(tasks, args.repeats, args.warmup, args.max_seconds, rng, progress)
            results[n, k] = {(t.contender.name, t.operation): t for t in tasks}
            del tasks, inputs
            gc.collect()
    elapsed = time.perf_counter() - started

    print(
        f"Median time (ms) per call on {device_name(device)}, float32; "
        "ratio = anchor time / time of ours (> 1: ours faster)"
    )
    if device.type != "cpu":
        print("each call timed from a synchronised device to a synchronised device (its kernels included)")
    per_shape = ", ".join(f"{n}x{k}: {r}" for (n, k), r in rounds.items())
    print(f"temperature {args.temperature:g}, seed {args.seed}, run time {elapsed:.0f} s")
    print(
        f"per shape: {args.warmup} warm-up rounds, then timed rounds (at most {args.repeats} or "
        f"{args.max_seconds:g} s): {per_shape}"
    )
    for line in environment_lines(device):
        print(line)
    print()

    headers = ["shape", "contender"]
    for op in OPERATIONS:
        headers += [f"{op} ms", "ratio"]
    table, csv_rows, raised = [], [], []
    for (n, k), tasks in results.items():
        for contender in CONTENDERS:
            row = [f"{n}x{k}", contender.name + (" (ours)" if contender.ours else "")]
            for op in OPERATIONS:
                task = tasks.get((contender.name, op))
                if task is None:
                    row += ["n/a", ""]
                    continue
                ours = tasks[contender.baseline, op]
                row += [f"{median_ms(task):.3f}" + ("*" if task.raised else ""), ratio_text(task, ours)]
                if task.raised:
                    raised.append((f"{n}x{k}", task))
                csv_rows.append(
                    {
                        "N": n,
                        "K": k,
                        "operation": op,
                        "contender": contender.name,
                        "ours": contender.ours,
                        "median_ms": median_ms(task),
                        "relative_iqr": relative_iqr(task),
                        "rounds": len(task.times),
                        "ratio_vs_ours": median_ms(task) / median_ms(ours),
                        "compared_with": contender.baseline,
                        "validation": task.validation_note(),
                        "temperature": args.temperature,
                        "dtype": "float32",
                        "device": device_name(device),
                        "torch": torch.__version__,
                        "threads": torch.get_num_threads(),
                    }
                )
            table.append(row)
    print(format_table(headers, table, left=2))
    print()
    print("ratio: against Concrete (ours), except torch ExpRelaxedCategorical: against ExpConcrete (ours).")
    print("F.gumbel_softmax has no log_prob: its 'full' is the sample + backward of (W * x).sum() only.")
    print("Concrete scores its own latest sample along its path from the remembered log-space sample")
    print("(see the Concrete docstring); ExpConcrete keeps no state and differentiates its density.")
    if raised:
        print("* raised ValueError on its own samples under torch's default validation (calls that raised")
        print("  are not timed; validate_args=False favours the anchor):")
        for line in summarize_raised(raised):
            print(f"  {line}")
    iqrs = sorted(relative_iqr(t) for tasks in results.values() for t in tasks.values())
    print(
        f"noise: (p75 - p25) / median of the per-call times: median {100 * statistics.median(iqrs):.0f}%, "
        f"max {100 * iqrs[-1]:.0f}% over the {len(iqrs)} timed pairs"
    )
    if statistics.median(iqrs) > NOISY:
        print(
            f"WARNING: the median spread is above {100 * NOISY:.0f}%: the machine was busy and these times "
            "are unreliable; rerun on an idle machine (or with --threads 1 if the cores are shared)."
        )
    print()
    print("Targets of the issue (* as above)" + (":" if device.type == "cpu" else ", set for the CPU:"))
    print(format_table(["target", "shape", "measured", "verdict"], check_targets(results), left=2))
    path = write_csv(Path(args.csv), csv_rows)
    print(f"\nwrote {display_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
