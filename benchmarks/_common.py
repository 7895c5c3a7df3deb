"""Reporting helpers shared by the benchmark scripts: machine description, tables, CSV.

The scripts import this module as ``_common`` (they are run as ``python benchmarks/<name>.py``,
which puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import csv
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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


def environment_lines() -> list[str]:
    """One line each for the software and hardware the numbers were measured on."""
    import pyro

    import pyro_concrete

    validation = torch.distributions.Distribution._validate_args
    return [
        f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, pyro_concrete {pyro_concrete.__version__}, "
        f"python {platform.python_version()}",
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
