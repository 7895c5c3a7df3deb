"""Peak memory of one training step: pyro_concrete against torch's and Pyro's relaxed categoricals.

One step, float32, logits ``θ`` of shape ``(N, K)`` (a leaf that requires grad), a temperature
that requires grad (a scalar tensor, τ = 0.5 unless ``--temperature``) and a fixed random weight
per category ``w`` of shape ``(K,)``:

- distributions: construction + ``x = d.rsample()`` + ``d.log_prob(x)`` + the gradients of
  ``d.log_prob(x).sum() + (x * w).sum()`` with respect to ``θ`` and ``τ``
  (``torch.autograd.grad``), held until the step ends;
- ``F.gumbel_softmax`` (soft and hard) has no density: its step is the call + the gradients of
  ``(x * w).sum()`` alone, which favours it.

The peak is the largest amount of memory allocated during the step above what was allocated
before it (the inputs), in bytes and in *full-size temporaries*: the peak divided by the size
of one ``(N, K)`` float32 tensor (``4 N K`` bytes). A step that returns the gradient of ``θ``
holds at least one (the gradient itself); the sample is another.

How it is measured:

- CPU: ``torch.profiler.profile(profile_memory=True)`` records one event per allocation and
  per free of the CPU allocator (with its size, negative for frees); the events are walked in
  time order and the running total's maximum is the peak. The accounting is checked on two toy
  steps whose peaks are known (``--check-only`` runs just that; every run checks it first).
  Memory that libraries allocate behind torch's allocator (BLAS workspaces) is not seen; none of
  the contenders calls BLAS.
- CUDA (``--device cuda``): ``torch.cuda.reset_peak_memory_stats`` before the step,
  ``torch.cuda.max_memory_allocated()`` minus the memory allocated before it after. A machine
  without CUDA prints why and exits with status 69 before anything runs.

Each contender is warmed up (one step at a small shape, which also decides validation), then
measured once: the accounting does not depend on timing. torch's default validation is left on;
a class that rejects its own samples under it (Pyro's straight-through class does, with
``ValueError``) is measured with ``validate_args=False`` and marked ``*``.

Large shapes (``4 N K`` of at least ``--fresh-mib`` MiB, default 256) run each contender in a
fresh Python process, one at a time, so no contender sees another's memory. Before that, each
contender's peak is measured at a few rows of the same ``K``; if that peak, scaled to ``N`` rows,
plus the inputs would pass ``--max-gib`` (default 12) or the memory available now, the contender
is measured at the most rows that fit (same ``K``) and its row says so: per element the peaks of
these row-wise steps do not depend on ``N``.

Run from the repository root::

    python benchmarks/memory.py                       # (4096, 64) and (8192, 32768)
    python benchmarks/memory.py --shapes 4096x64 --explain
    python benchmarks/memory.py --device cuda         # writes results/memory_cuda.csv
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro.distributions as pyro_dist
import torch
import torch.nn.functional as F
from _common import (
    RESULTS_DIR,
    add_shapes_argument,
    display_path,
    environment_lines,
    format_table,
    parse_shape,
    resolve_shapes,
    write_csv,
)
from torch.distributions import RelaxedOneHotCategorical
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from tqdm import tqdm

import pyro_concrete

SHAPES = ((4096, 64), (8192, 32768))
DTYPE = torch.float32
ANCHOR = "torch RelaxedOneHotCategorical"  # the ratio column divides by its peak
TARGET = 0.5  # the target: Concrete's peak at most half of the anchor's
DEVICE_UNAVAILABLE = 69  # sysexits' EX_UNAVAILABLE, as the other benchmark scripts exit
PROBE_ELEMENTS = 1 << 22  # rows of the small probe: about this many elements (16 MiB)

Step = Callable[[], None]


# -- contenders -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    name: str
    make: Callable[..., object] | None  # (temperature, logits, validate_args) -> distribution
    ours: bool = False
    hard: bool | None = None  # F.gumbel_softmax only

    @property
    def step_text(self) -> str:
        return "sample + backward (no log_prob)" if self.make is None else "sample + log_prob + backward"

    def step(self, logits: torch.Tensor, tau: torch.Tensor, w: torch.Tensor, validate: bool | None) -> Step:
        """One step, returning nothing: everything it allocates is freed by the time it returns."""
        if self.make is None:
            hard = bool(self.hard)

            def gumbel_softmax_step() -> None:
                x = F.gumbel_softmax(logits, tau=tau, hard=hard)
                grads = torch.autograd.grad((x * w).sum(), (logits, tau))
                del x, grads

            return gumbel_softmax_step
        make = self.make

        def distribution_step() -> None:
            d = make(tau, logits, validate)
            x = d.rsample()
            loss = d.log_prob(x).sum() + (x * w).sum()
            grads = torch.autograd.grad(loss, (logits, tau))
            del d, x, loss, grads

        return distribution_step


CONTENDERS: tuple[Contender, ...] = (
    Contender("Concrete", lambda t, lg, v: pyro_concrete.Concrete(t, logits=lg, validate_args=v), ours=True),
    Contender(
        "ExpConcrete", lambda t, lg, v: pyro_concrete.ExpConcrete(t, logits=lg, validate_args=v), ours=True
    ),
    Contender(
        "ConcreteStraightThrough(st)",
        lambda t, lg, v: pyro_concrete.ConcreteStraightThrough(t, logits=lg, estimator="st", validate_args=v),
        ours=True,
    ),
    Contender(ANCHOR, lambda t, lg, v: RelaxedOneHotCategorical(t, logits=lg, validate_args=v)),
    Contender(
        "torch ExpRelaxedCategorical", lambda t, lg, v: ExpRelaxedCategorical(t, logits=lg, validate_args=v)
    ),
    Contender("F.gumbel_softmax(soft)", None, hard=False),
    Contender("F.gumbel_softmax(hard)", None, hard=True),
    Contender(
        "pyro RelaxedOneHotCatStraightThrough",
        lambda t, lg, v: pyro_dist.RelaxedOneHotCategoricalStraightThrough(t, logits=lg, validate_args=v),
    ),
)
BY_NAME = {c.name: c for c in CONTENDERS}


# -- the accounting ---------------------------------------------------------------------------


def profiled_peak(step: Step) -> tuple[int, int]:
    """``(peak, net)``: the CPU allocator's largest running total during ``step`` above its total
    before it, and the total left allocated at the end (0 for a step that frees everything),
    in bytes, from the profiler's allocation and free events walked in time order."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        step()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda event: event[0])  # stable: events at the same instant keep their order
    total = peak = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    return peak, total


def cuda_peak(step: Step, device: torch.device) -> tuple[int, int]:
    """``(peak, net)`` as :func:`profiled_peak`, from the CUDA caching allocator's statistics."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before, torch.cuda.memory_allocated(device) - before


def measure(step: Step, device: torch.device) -> tuple[int, int]:
    gc.collect()
    return cuda_peak(step, device) if device.type == "cuda" else profiled_peak(step)


def check_accounting(device: torch.device, n: int = 1 << 20) -> list[float]:
    """Peaks of two steps whose answer is known, in tensors of ``n`` float32 (raises if off).

    - ``x = empty(n); y = x + 1; z = y * 2``: three tensors live at once (then ``x`` is freed
      and ``w = z + y`` makes three again): 3.
    - ``b = a.exp()`` (saved for backward) ``; (b * 3).sum()`` and its gradient with respect to
      the existing leaf ``a``: ``b``, the incoming gradient ``3`` and ``ExpBackward``'s output
      ``3 b`` are live together: 3.
    """
    a = torch.randn(n, device=device, requires_grad=True)

    def plain() -> None:
        x = torch.empty(n, device=device)
        y = x + 1
        z = y * 2
        del x
        w = z + y
        del y, z, w

    def autograd() -> None:
        b = a.exp()
        (grad,) = torch.autograd.grad((b * 3).sum(), a)
        del b, grad

    found = []
    for step in (plain, autograd):
        step()  # warm-up
        peak, net = measure(step, device)
        full = 4 * n
        found.append(peak / full)
        # A few scalars (the wrapped 1, 2 and 3, a 0-dim sum) may add bytes, never a tensor's worth.
        if not (3 * full <= peak <= 3 * full + 4096) or abs(net) > 4096:
            raise RuntimeError(
                f"the memory accounting is off on a known case ({step.__name__}): "
                f"peak {peak} bytes, expected {3 * full}; net {net}"
            )
    return found


# -- one measurement --------------------------------------------------------------------------


def make_inputs(n: int, k: int, temperature: float, seed: int, device: torch.device):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator, dtype=DTYPE).to(device).requires_grad_()
    tau = torch.tensor(temperature, dtype=DTYPE, device=device, requires_grad=True)
    w = torch.randn(k, generator=generator, dtype=DTYPE).to(device)
    return logits, tau, w


def decide_validation(contender: Contender, k: int, temperature: float, device: torch.device) -> bool | None:
    """None (torch's default, on) unless the contender raises ``ValueError`` on its own samples
    under it at a small shape; then False (:func:`measure_one` also switches when the measured
    step raises). Also the warm-up (first calls allocate lazily)."""
    logits, tau, w = make_inputs(max(1, min(64, PROBE_ELEMENTS // k)), k, temperature, 1, device)
    try:
        contender.step(logits, tau, w, None)()
        return None
    except ValueError:
        contender.step(logits, tau, w, False)()
        return False


def measure_one(
    contender: Contender, n: int, k: int, temperature: float, seed: int, device: torch.device, explain: bool
) -> dict:
    """The peak of one step of ``contender`` at ``(n, k)``, as a JSON-able dict."""
    validate = decide_validation(contender, k, temperature, device)
    logits, tau, w = make_inputs(n, k, temperature, seed, device)
    try:
        step = contender.step(logits, tau, w, validate)
        peak, net = measure(step, device)
    except ValueError:
        if validate is not None:
            raise
        validate = False  # it rejected this sample (not the probe's): measured without validation
        step = contender.step(logits, tau, w, validate)
        peak, net = measure(step, device)
    result = {
        "contender": contender.name,
        "N": n,
        "K": k,
        "peak_bytes": peak,
        "net_bytes": net,
        "validation": "default (on)" if validate is None else "validate_args=False (rejects its own samples)",
    }
    if explain and device.type == "cpu":
        result["explain"] = explain_peak(step)
    return result


def explain_peak(step: Step, smallest: float = 0.125) -> list[str]:
    """The tensors live at the peak (at least ``smallest`` of the largest one) and the operation
    that allocated each, from the profiler's private memory timeline (best effort)."""
    try:
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        ) as prof:
            step()
        timeline = prof._memory_profile().timeline
        operations = [
            (e.start_ns(), e.end_ns(), e.name())
            for e in prof.profiler.kineto_results.events()
            if e.name() != "[memory]"
        ]
    except Exception as error:  # a private API: say so rather than fail the run
        return [f"(no explanation: {type(error).__name__}: {error})"]
    live: dict[str, tuple[int, int]] = {}
    total = peak = 0
    at_peak: dict[str, tuple[int, int]] = {}
    peak_time = 0
    for time_ns, action, (key, _), size in timeline:
        name = getattr(action, "name", str(action))
        if name == "CREATE":
            live[str(key)] = (time_ns, size)
            total += size
        elif name == "DESTROY" and str(key) in live:
            total -= live.pop(str(key))[1]
        if total > peak:
            peak, at_peak, peak_time = total, dict(live), time_ns

    def innermost(time_ns: int) -> str:
        enclosing = sorted((end - start, name) for start, end, name in operations if start <= time_ns <= end)
        names = [name for _, name in enclosing[:3]]
        return " < ".join(names) if names else "?"

    largest = max((size for _, size in at_peak.values()), default=0)
    lines = [f"at the peak ({peak} bytes), inside: {innermost(peak_time)}"]
    for time_ns, size in sorted(at_peak.values()):
        if largest and size >= smallest * largest:
            lines.append(f"{size / largest:5.2f} x  allocated by {innermost(time_ns)}")
    return lines


# -- running the contenders -------------------------------------------------------------------


def available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rows_that_fit(per_element_peak: float, n: int, k: int, max_bytes: float) -> int:
    """The most rows (at most ``n``) whose step fits in ``max_bytes``: the peak, the logits
    and a margin of 10% and 256 MiB."""
    row_bytes = 4 * k * (per_element_peak + 1) * 1.1
    return max(1, min(n, int((max_bytes - 256 * 2**20) // row_bytes)))


def run_fresh(name: str, n: int, k: int, args: argparse.Namespace) -> dict:
    """:func:`measure_one` in a fresh Python process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, f"{n}x{k}"]
    command += ["--temperature", str(args.temperature), "--seed", str(args.seed), "--device", args.device]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    if args.explain:
        command.append("--explain")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"the measurement of {name} at {n}x{k} failed (status {done.returncode}):\n{tail}")
    return json.loads(lines[-1])


def run_shape(n: int, k: int, args: argparse.Namespace, device: torch.device, progress) -> list[dict]:
    fresh = 4 * n * k >= args.fresh_mib * 2**20 and device.type == "cpu"
    results = []
    for contender in CONTENDERS:
        progress.set_postfix_str(f"{n}x{k} {contender.name}")
        if not fresh:
            try:
                result = measure_one(contender, n, k, args.temperature, args.seed, device, args.explain)
            except torch.OutOfMemoryError:  # an accelerator too small for this shape
                print(f"{n}x{k} {contender.name}: out of memory on {device}, not measured", file=sys.stderr)
                gc.collect()
                torch.cuda.empty_cache()
                progress.update(1)
                continue
        else:
            probe_rows = max(1, min(n, PROBE_ELEMENTS // k))
            probe = measure_one(contender, probe_rows, k, args.temperature, args.seed, device, False)
            per_element = probe["peak_bytes"] / (4 * probe_rows * k)
            budget = args.max_gib * 2**30
            free = available_bytes()
            if free is not None:
                budget = min(budget, free - 2 * 2**30)  # leave room for everyone else
            rows = rows_that_fit(per_element, n, k, budget)
            result = run_fresh(contender.name, rows, k, args)
            result["probe_rows"] = probe_rows
            result["probe_temporaries"] = per_element
        result["shape_N"] = n
        results.append(result)
        progress.update(1)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_shapes_argument(parser, SHAPES)
    parser.add_argument(
        "--device", default="cpu", help="cpu (profiler accounting) or cuda (allocator statistics)"
    )
    parser.add_argument("--temperature", type=float, default=0.5, help="temperature of every contender")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and the noise")
    parser.add_argument("--threads", type=int, help="torch threads (torch's own choice when not given)")
    parser.add_argument(
        "--max-gib", type=float, default=12.0, help="most memory one fresh-process measurement may use"
    )
    parser.add_argument(
        "--fresh-mib",
        type=float,
        default=256.0,
        help="shapes whose (N, K) float32 tensor has this many MiB or more run each contender in a "
        "fresh process",
    )
    parser.add_argument("--explain", action="store_true", help="list the tensors live at each peak (CPU)")
    parser.add_argument(
        "--check-only", action="store_true", help="only check the accounting on the toy steps"
    )
    parser.add_argument("--csv", help="where to write the results (default: results/memory[_<device>].csv)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "NxK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.shapes = resolve_shapes(args.shapes)
    if args.temperature <= 0 or args.max_gib <= 0:
        parser.error("need --temperature > 0 and --max-gib > 0")
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        parser.error(
            f"--device {args.device}: only cpu (profiler) and cuda (allocator statistics) are measured"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"{parser.prog}: --device {args.device} is not available (torch.cuda.is_available() is False). "
            "Nothing was measured.",
            file=sys.stderr,
        )
        sys.exit(DEVICE_UNAVAILABLE)
    if args.csv is None:
        suffix = "" if device.type == "cpu" else f"_{device.type}"
        args.csv = str(RESULTS_DIR / f"memory{suffix}.csv")
    return args


def _mib(nbytes: float) -> str:
    mib = nbytes / 2**20
    return f"{mib:,.1f}" if mib >= 10 else f"{mib:.3f}"


def report(results: list[dict], args: argparse.Namespace, device: torch.device, checks: list[float]) -> None:
    print(
        "Peak memory of one step above the memory held before it (the inputs), float32, "
        f"temperature {args.temperature:g} (requires grad), on {device}"
    )
    print(
        "temporaries = peak / bytes of one (N, K) float32 tensor; ratio = peak / the peak of "
        f"{ANCHOR} (per element)"
    )
    how = (
        "torch.profiler memory events walked in time order"
        if device.type == "cpu"
        else "torch.cuda.max_memory_allocated"
    )
    print(
        f"accounting: {how}; toy steps with known peaks of 3 tensors measured "
        + ", ".join(f"{c:.3f}" for c in checks)
    )
    for line in environment_lines():
        print(line)
    print()
    anchors = {
        (r["shape_N"], r["K"]): r["peak_bytes"] / (4 * r["N"] * r["K"])
        for r in results
        if r["contender"] == ANCHOR
    }
    table, csv_rows, notes = [], [], []
    for r in results:
        contender = BY_NAME[r["contender"]]
        n, k = r["shape_N"], r["K"]
        temporaries = r["peak_bytes"] / (4 * r["N"] * k)
        anchor = anchors.get((n, k))
        ratio = temporaries / anchor if anchor else math.nan
        star = "*" if r["validation"] != "default (on)" else ""
        measured_at = "" if r["N"] == n else f" (at {r['N']} rows)"
        full_bytes = 4 * n * k
        table.append(
            [
                f"{n}x{k}",
                contender.name + (" (ours)" if contender.ours else "") + star,
                contender.step_text,
                f"{_mib(temporaries * full_bytes)}{measured_at}",
                f"{temporaries:.2f}",
                f"{ratio:.2f}",
            ]
        )
        csv_rows.append(
            {
                "N": n,
                "K": k,
                "contender": contender.name,
                "ours": contender.ours,
                "step": contender.step_text,
                "measured_N": r["N"],
                "peak_bytes": r["peak_bytes"],
                "peak_bytes_at_N": round(temporaries * full_bytes),
                "temporaries": round(temporaries, 4),
                "ratio_vs_torch": round(ratio, 4),
                "net_bytes": r["net_bytes"],
                "validation": r["validation"],
                "device": str(device),
                "method": how,
                "temperature": args.temperature,
                "dtype": "float32",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
        if r["net_bytes"]:
            notes.append(f"{n}x{k} {contender.name}: {r['net_bytes']} bytes still allocated after the step")
        if "explain" in r:
            notes.append(f"{n}x{k} {contender.name}:")
            notes.extend(f"    {line}" for line in r["explain"])
    headers = ["shape", "contender", "step", "peak MiB", "temporaries", "ratio"]
    print(format_table(headers, table, left=3))
    print()
    print("* measured with validate_args=False: it raises ValueError on its own samples under validation.")
    print("F.gumbel_softmax has no log_prob: its step is the sample + the backward of (x * w).sum() only.")
    if any(r["N"] != r["shape_N"] for r in results):
        print("(at M rows): measured at M rows of the same K to stay within --max-gib; MiB scaled to N rows.")
    for note in notes:
        print(note)
    print()
    print(f"Target of the issue: Concrete's peak <= {TARGET:g} x {ANCHOR}'s")
    verdicts = []
    for r in results:
        if r["contender"] == "Concrete":
            key = (r["shape_N"], r["K"])
            ratio = r["peak_bytes"] / (4 * r["N"] * r["K"]) / anchors[key] if key in anchors else math.nan
            verdict = "?" if math.isnan(ratio) else ("met" if ratio <= TARGET else "MISSED")
            verdicts.append([f"{key[0]}x{key[1]}", f"{ratio:.3f}", verdict])
    print(format_table(["shape", "Concrete / torch", "verdict"], verdicts))
    path = write_csv(Path(args.csv), csv_rows)
    print(f"\nwrote {display_path(path)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.worker is not None:
        name, shape = args.worker
        n, k = parse_shape(shape)
        print(json.dumps(measure_one(BY_NAME[name], n, k, args.temperature, args.seed, device, args.explain)))
        return 0
    checks = check_accounting(device)
    if args.check_only:
        print("toy steps with known peaks of 3 tensors measured " + ", ".join(f"{c:.3f}" for c in checks))
        return 0
    results: list[dict] = []
    with tqdm(
        total=len(args.shapes) * len(CONTENDERS),
        desc="contenders",
        leave=False,
        disable=args.no_progress,
        file=sys.stderr,
    ) as progress:
        for n, k in args.shapes:
            results += run_shape(n, k, args, device, progress)
    report(results, args, device, checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
