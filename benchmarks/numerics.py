"""Non-finite rates of pyro_concrete and of torch's relaxed categoricals, side by side.

For every cell of the grid temperature x K x dtype, with logits drawn from N(0, 3^2) (one
independent logits vector per row), each distribution draws its own reparameterised sample
``x = d.rsample()`` and the script records, per row:

- ``lp``    ``d.log_prob(x)`` is NaN or infinite (computed with validation off if the default
            validation raised, so that the value itself can be inspected);
- ``dlgt``  the gradient of ``log_prob(x).sum()`` with respect to that row's logits has a
            non-finite entry (the gradient flows through the sample and the density);
- ``dtmp``  the same for that row's temperature (every row has its own temperature leaf,
            all equal to the cell's temperature);
- ``zero``  the sample has a component that is exactly 0.0 (simplex classes) or not finite
            (log-space classes: ``-inf``, the log of such a zero);

and per cell ``valid``: whether ``d.log_prob(x)`` raises ``ValueError`` under torch's default
validation (which this script leaves on).

torch's relaxed distributions broadcast a ``(n, 1)`` temperature against ``log_prob``'s
``(n,)`` result and return ``(n, n)``; the script takes the diagonal, which is each row's own
density. Rows are processed in chunks to keep that square small.

The logits are drawn on the CPU from the seed; ``--device cuda`` (or another torch device)
moves them there and computes everything there (the rates can then differ slightly from the
CPU's: other noise, other rounding in the kernels); the device is named in the header and in
every CSV row, and one this machine does not have exits with status 69 before anything runs.

Run from the repository root::

    python benchmarks/numerics.py              # the full grid, 10,000 samples per cell
    python benchmarks/numerics.py --samples 500 --temperatures 0.1 --ks 10 100
    python benchmarks/numerics.py --device cuda  # writes results/numerics_cuda.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import (
    RESULTS_DIR,
    add_device_argument,
    device_name,
    display_path,
    environment_lines,
    format_table,
    resolve_device,
    write_csv,
)
from torch.distributions import RelaxedOneHotCategorical
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical
from tqdm import tqdm

import pyro_concrete

TEMPERATURES = (1.0, 0.5, 0.1, 0.05, 0.01)
KS = (2, 10, 100, 1000)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOGITS_SCALE = 3.0
CHUNK_ROWS = 1000  # torch's log_prob is (chunk, chunk) with a per-row temperature

Factory = Callable[[torch.Tensor, torch.Tensor, "bool | None"], torch.distributions.Distribution]


@dataclass(frozen=True)
class Contender:
    name: str  # column group label
    key: str  # CSV name
    make: Factory
    log_space: bool  # samples are log-probability vectors


# Pairs side by side: each of ours next to the torch class it replaces.
CONTENDERS = (
    Contender(
        "Concrete (ours)",
        "pyro_concrete.Concrete",
        lambda t, lg, v: pyro_concrete.Concrete(t, logits=lg, validate_args=v),
        log_space=False,
    ),
    Contender(
        "torch RelaxedOneHotCat.",
        "torch.RelaxedOneHotCategorical",
        lambda t, lg, v: RelaxedOneHotCategorical(t, logits=lg, validate_args=v),
        log_space=False,
    ),
    Contender(
        "ExpConcrete (ours)",
        "pyro_concrete.ExpConcrete",
        lambda t, lg, v: pyro_concrete.ExpConcrete(t, logits=lg, validate_args=v),
        log_space=True,
    ),
    Contender(
        "torch ExpRelaxedCat.",
        "torch.ExpRelaxedCategorical",
        lambda t, lg, v: ExpRelaxedCategorical(t, logits=lg, validate_args=v),
        log_space=True,
    ),
)
METRICS = ("lp", "dlgt", "dtmp", "zero")


@dataclass
class CellResult:
    rows: int = 0
    lp: int = 0
    dlgt: int = 0
    dtmp: int = 0
    zero: int = 0
    raises: bool = False

    def rate(self, metric: str) -> float:
        return getattr(self, metric) / self.rows


def measure_chunk(contender: Contender, logits: torch.Tensor, temperature: float, out: CellResult) -> None:
    """Samples one row per logits vector and adds the chunk's counts to ``out``."""
    n = logits.shape[0]
    temp = torch.full((n, 1), temperature, dtype=logits.dtype, device=logits.device, requires_grad=True)
    logits = logits.detach().clone().requires_grad_()
    d = contender.make(temp, logits, None)  # None: torch's default validation
    x = d.rsample()
    try:
        lp = d.log_prob(x)
    except ValueError:
        out.raises = True
        lp = contender.make(temp, logits, False).log_prob(x)
    if lp.shape == (n, n):  # torch: (n, 1) temperature broadcast against (n,) scores
        lp = lp.diagonal()
    assert lp.shape == (n,), f"{contender.key}: log_prob shape {tuple(lp.shape)}"
    grad_logits, grad_temp = torch.autograd.grad(lp.sum(), [logits, temp], allow_unused=True)
    if grad_temp is None:
        grad_temp = torch.zeros_like(temp)
    with torch.no_grad():
        out.rows += n
        out.lp += int((~torch.isfinite(lp)).sum())
        out.dlgt += int((~torch.isfinite(grad_logits)).any(-1).sum())
        out.dtmp += int((~torch.isfinite(grad_temp)).reshape(n).sum())
        degenerate = ~torch.isfinite(x) if contender.log_space else x == 0
        out.zero += int(degenerate.any(-1).sum())


def measure_cell(contender: Contender, logits: torch.Tensor, temperature: float, seed: int) -> CellResult:
    torch.manual_seed(seed)
    out = CellResult()
    for start in range(0, logits.shape[0], CHUNK_ROWS):
        measure_chunk(contender, logits[start : start + CHUNK_ROWS], temperature, out)
    return out


def format_rate(rate: float) -> str:
    if rate == 0:
        return "0"
    if rate == 1:
        return "100%"
    return f"{100 * rate:.2g}%" if rate < 1e-3 else f"{100 * rate:.1f}%"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=10_000, help="samples (rows) per cell")
    parser.add_argument(
        "--temperatures", type=float, nargs="+", default=list(TEMPERATURES), help="temperatures tau"
    )
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="numbers of categories K")
    parser.add_argument(
        "--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="floating-point types"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the logits and of the noise")
    add_device_argument(parser)
    parser.add_argument(
        "--csv",
        help=f"where to write the per-cell results (default: {display_path(RESULTS_DIR / 'numerics.csv')} "
        "on the CPU, numerics_<device type>.csv elsewhere)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    if args.csv is None:
        suffix = "" if args.device.type == "cpu" else f"_{args.device.type}"
        args.csv = str(RESULTS_DIR / f"numerics{suffix}.csv")
    if args.samples < 1 or min(args.ks) < 2 or min(args.temperatures) <= 0:
        parser.error("need --samples >= 1, every K >= 2 and every temperature > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cells = [(dt, t, k) for dt in args.dtypes for t in args.temperatures for k in args.ks]
    generator = torch.Generator().manual_seed(args.seed)
    csv_rows, table_rows = [], []
    started = time.perf_counter()
    for index, (dtype_name, temperature, k) in enumerate(
        tqdm(cells, desc="cells", leave=False, disable=args.no_progress, file=sys.stderr)
    ):
        # The same logits (drawn in float64, then cast) for every contender in the cell.
        logits64 = LOGITS_SCALE * torch.randn(args.samples, k, dtype=torch.float64, generator=generator)
        logits = logits64.to(device=args.device, dtype=DTYPES[dtype_name])
        row: list[object] = [dtype_name, f"{temperature:g}", k]
        for c_index, contender in enumerate(CONTENDERS):
            res = measure_cell(contender, logits, temperature, seed=args.seed + 1000 * index + c_index)
            row += [format_rate(res.rate(m)) for m in METRICS]
            row.append("raises" if res.raises else "ok")
            csv_rows.append(
                {
                    "dtype": dtype_name,
                    "temperature": temperature,
                    "K": k,
                    "distribution": contender.key,
                    "samples": res.rows,
                    "nonfinite_log_prob": res.rate("lp"),
                    "nonfinite_grad_logits": res.rate("dlgt"),
                    "nonfinite_grad_temperature": res.rate("dtmp"),
                    "degenerate_sample_rows": res.rate("zero"),
                    "validation": "raises" if res.raises else "ok",
                    "device": device_name(args.device),
                }
            )
        table_rows.append(row)
    elapsed = time.perf_counter() - started

    print("Non-finite rates on each distribution's own samples: log_prob(rsample()) and its gradients")
    print(
        f"logits ~ N(0, {LOGITS_SCALE:g}^2), {args.samples} samples per cell, seed {args.seed}; "
        f"run time {elapsed:.0f} s"
    )
    for line in environment_lines(args.device):
        print(line)
    print()
    headers = ["dtype", "tau", "K"] + [*METRICS, "valid"] * len(CONTENDERS)
    groups = [("", 3)] + [(c.name, len(METRICS) + 1) for c in CONTENDERS]
    print(format_table(headers, table_rows, groups))
    print()
    print("lp: rows where log_prob(x) is NaN/inf (validation off where it raised); dlgt/dtmp: rows")
    print("where the gradient of log_prob(x).sum() wrt that row's logits/temperature is non-finite;")
    print("zero: rows where x has an exact 0.0 (Concrete, RelaxedOneHot) or y = log x has a -inf")
    print("(ExpConcrete, ExpRelaxed); valid: 'raises' if log_prob(x) raised ValueError under torch's")
    print("default validation on any row of the cell.")
    print()
    for contender in CONTENDERS:
        bad = [
            r
            for r in csv_rows
            if r["distribution"] == contender.key
            and (r["nonfinite_log_prob"] or r["nonfinite_grad_logits"] or r["nonfinite_grad_temperature"])
        ]
        raised = [r for r in csv_rows if r["distribution"] == contender.key and r["validation"] == "raises"]
        print(
            f"{contender.key}: non-finite log_prob or gradient in {len(bad)} of {len(cells)} cells; "
            f"validation raises in {len(raised)} of {len(cells)}"
        )
    path = write_csv(Path(args.csv), csv_rows)
    print(f"\nwrote {display_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
