"""Helpers shared by the benchmark scripts: the ``--device`` option, machine description, tables, CSV.

The scripts import this module as ``_common`` (they are run as ``python benchmarks/<name>.py``,
which puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The exit status of a script asked for a device that this machine does not have (sysexits'
# EX_UNAVAILABLE); a malformed --device is a usage error (argparse's status 2).
DEVICE_UNAVAILABLE = 69


# -- the device ----------------------------------------------------------------------------


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device to run every contender on (cpu, cuda, cuda:1, mps, ...); one this machine "
        f"does not have exits with status {DEVICE_UNAVAILABLE}",
    )


def unavailable_reason(device: torch.device) -> str | None:
    """Why ``device`` cannot be used here (None if it can)."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch.cuda.is_available() is False"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"torch.cuda.device_count() is {torch.cuda.device_count()}"
        return None
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "torch.backends.mps.is_available() is False"
    is_available = getattr(getattr(torch, device.type, None), "is_available", None)
    if callable(is_available) and not is_available():
        return f"torch.{device.type}.is_available() is False"
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:  # an unbuilt backend raises either
        return f"no tensor can be made there ({error})"
    return None


def resolve_device(parser: argparse.ArgumentParser, spec: str) -> torch.device:
    """The device ``--device spec`` names. A malformed name (or ``meta``) is a usage error; a
    device this machine lacks ends the script with a message and status ``DEVICE_UNAVAILABLE``."""
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        parser.error(f"--device {spec}: not a torch device ({error})")
    if device.type == "meta":
        parser.error("--device meta: meta tensors have no values, so nothing can be timed on them")
    reason = unavailable_reason(device)
    if reason is not None:
        print(f"{parser.prog}: --device {spec} is not available: {reason}. Nothing was run.", file=sys.stderr)
        sys.exit(DEVICE_UNAVAILABLE)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # the name says which GPU
    return device


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits until ``device`` has finished the work queued on it: call it before
    reading the clock, or an accelerator's asynchronous kernels are not timed. A no-op on the CPU."""
    if device.type == "cuda":
        return functools.partial(torch.cuda.synchronize, device)
    synchronize = getattr(getattr(torch, device.type, None), "synchronize", None)
    return synchronize if device.type != "cpu" and callable(synchronize) else _nothing


def _nothing() -> None:
    pass


def device_name(device: torch.device) -> str:
    """The device and its hardware in a few words, as recorded in the CSV files."""
    if device.type == "cpu":
        return f"cpu: {cpu_model()}"
    if device.type == "cuda":
        return f"{device}: {torch.cuda.get_device_name(device)}"
    return str(device)


def device_line(device: torch.device) -> str:
    """One line naming the device the contenders ran on, for a script's header."""
    if device.type == "cpu":
        return "device: cpu (the CPU below)"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        toolkit = f"HIP {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
        return (
            f"device: {device}: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"compute capability {props.major}.{props.minor}, {toolkit}"
        )
    return f"device: {device}"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or the platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_lines(device: torch.device | None = None) -> list[str]:
    """One line each for the software and hardware the numbers were measured on (with a line
    for ``device`` when one is given)."""
    import pyro

    import pyro_concrete

    validation = torch.distributions.Distribution._validate_args
    return [
        f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, pyro_concrete {pyro_concrete.__version__}, "
        f"python {platform.python_version()}",
        *([] if device is None else [device_line(device)]),
        f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), torch threads: {torch.get_num_threads()}",
        f"torch default argument/sample validation: {'on' if validation else 'OFF'} "
        "(left as is, for every distribution)",
    ]


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    groups: Sequence[tuple[str, int]] | None = None,
    left: int = 1,
) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned.

    ``groups`` is an optional header line above ``headers``: ``(label, span)`` pairs that
    cover the columns from left to right, each label centred over its ``span`` columns.
    """
    body = [[str(c) for c in row] for row in rows]
    widths = [max(len(line[i]) for line in [list(headers), *body]) for i in range(len(headers))]
    sep = "  "
    group_line = ""
    if groups is not None:
        cells, start = [], 0
        for label, span in groups:
            cols = range(start, start + span)
            room = sum(widths[i] for i in cols) + len(sep) * (span - 1)
            if len(label) > room:  # widen the group's last column to fit its label
                widths[cols[-1]] += len(label) - room
                room = len(label)
            cells.append(label.center(room) if label else " " * room)
            start += span
        group_line = sep.join(cells).rstrip()

    def render(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return sep.join(padded).rstrip()

    out = [group_line] if group_line else []
    out.append(render(headers))
    out.append(sep.join("-" * w for w in widths))
    out.extend(render(line) for line in body)
    return "\n".join(out)


def write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    """Writes ``rows`` (dicts with the same keys, in order) to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_shape(text: str) -> tuple[int, int]:
    """``"4096x64"`` to ``(4096, 64)``: an argparse ``type`` for the scripts' ``--shapes``."""
    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 4096x64, got {text!r}") from None
    if n < 1 or k < 2:
        raise argparse.ArgumentTypeError(f"need N >= 1 and K >= 2, got {text!r}")
    return n, k


def add_shapes_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    default: Sequence[tuple[int, int]],
    flag: str = "--shapes",
    help: str = "sample shapes (N rows of K categories)",
) -> None:
    """A ``--shapes NxK [NxK ...]`` option; read it back with :func:`resolve_shapes` (argparse
    converts a list default with ``type`` only where it is given as strings, as here, so
    that the help shows ``4096x64``)."""
    parser.add_argument(
        flag, type=parse_shape, nargs="+", default=[f"{n}x{k}" for n, k in default], metavar="NxK", help=help
    )


def resolve_shapes(values: Sequence[str | tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(N, K)`` pairs of a :func:`add_shapes_argument` option (its default is strings)."""
    return [parse_shape(v) if isinstance(v, str) else v for v in values]
