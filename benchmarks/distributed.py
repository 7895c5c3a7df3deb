"""The demo trained by one process and data-parallel by two (``--distributed``), same total batch.

Each run is the command a user types, started as a subprocess, with the demo's settings
(8 latents x 8 classes, batch 100, 200 epochs unless ``--epochs``):

- ``single``: ``python -m pyro_concrete.demo`` (one torch thread, the demo's default);
- ``torchrun1``: ``torchrun --standalone --nproc_per_node 1 -m pyro_concrete.demo --distributed``
  (DDP and the reductions with nothing to share: their cost alone);
- ``torchrun2``: ``--nproc_per_node 2``, 50 images per process and step, Gloo;
- ``threads`` (only when asked for, ``--configs``): ``single`` with ``--threads 2``, the other
  way to use two cores. This model is limited by per-operation overhead, and on a busy
  2-core machine the second thread made it several times slower.

For every seed the runs follow one another, so that a change in the machine's load falls
on all of them. The table gives medians over the seeds of the command's wall time
(start-up included), of the training and evaluation time and the time per epoch the demo
prints (the first process's), and the held-out negative ELBO per seed. The runs of a seed
differ only in their noise (same initialisation, same batches).

Run from the repository root::

    python benchmarks/distributed.py                  # 3 seeds, 200 epochs (~4 min on 2 cores)
    python benchmarks/distributed.py --configs single threads torchrun1 torchrun2
    python benchmarks/distributed.py --seeds 1 --epochs 20
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, display_path, environment_lines, format_table, write_csv

DEMO = [sys.executable, "-m", "pyro_concrete.demo"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
DEMO_MODULE = ["-m", "pyro_concrete.demo"]
# name: (label, command)
CONFIGS = {
    "single": ("1 process", DEMO),
    "threads": ("1 process, 2 threads", [*DEMO, "--threads", "2"]),
    "torchrun1": ("torchrun, 1 process", [*TORCHRUN, "--nproc_per_node", "1", *DEMO_MODULE, "--distributed"]),
    "torchrun2": (
        "torchrun, 2 processes",
        [*TORCHRUN, "--nproc_per_node", "2", *DEMO_MODULE, "--distributed"],
    ),
}
DEFAULT_CONFIGS = ["single", "torchrun1", "torchrun2"]
NEG_ELBO = re.compile(r"held-out negative ELBO of the discrete model .*: (\S+) nats per image")
TIMES = re.compile(r"training and evaluation took (\S+) s \((\S+) s per epoch\)")


def run_demo(command: list[str], seed: int, epochs: int, out: Path) -> dict[str, float]:
    """Runs one demo command; its wall time, what it prints, and the load it started under."""
    load = os.getloadavg()[0]
    argv = [*command, "--seed", str(seed), "--epochs", str(epochs), "--quiet", "--out", str(out)]
    start = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{run.stderr[-3000:]}")
    neg_elbo, times = NEG_ELBO.search(run.stdout), TIMES.search(run.stdout)
    if neg_elbo is None or times is None or run.stdout.count("nats per image") != 1:
        raise RuntimeError(f"unexpected output of {' '.join(argv)}:\n{run.stdout}")
    return {
        "load_1min_before": load,
        "wall_s": wall,
        "train_eval_s": float(times[1]),
        "s_per_epoch": float(times[2]),
        "neg_elbo": float(neg_elbo[1]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. seeds-1")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=DEFAULT_CONFIGS)
    parser.add_argument("--csv", default=str(RESULTS_DIR / "distributed.csv"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for line in environment_lines():
        print(line)
    print(f"demo settings, {args.epochs} epochs, seeds 0-{args.seeds - 1}; every run a fresh command\n")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as figures:
        for seed in range(args.seeds):
            for name in args.configs:
                label, command = CONFIGS[name]
                result = run_demo(command, seed, args.epochs, Path(figures) / "vae_demo.png")
                rows.append({"config": name, "seed": seed, "epochs": args.epochs, **result})
                print(
                    f"seed {seed}, {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()),
                    flush=True,
                )

    table = []
    for name in args.configs:
        runs = [row for row in rows if row["config"] == name]

        def median(key: str, runs: list[dict[str, object]] = runs) -> float:
            return statistics.median(float(str(row[key])) for row in runs)

        per_seed = " ".join(f"{float(str(row['neg_elbo'])):.2f}" for row in runs)
        table.append(
            [
                CONFIGS[name][0],
                f"{median('wall_s'):.1f}",
                f"{median('train_eval_s'):.1f}",
                f"{median('s_per_epoch') * 1000:.0f}",
                per_seed,
            ]
        )
    headers = ["run", "command wall s", "train+eval s", "ms per epoch", "held-out -ELBO per seed"]
    print("\nmedians over the seeds; batch 100 in every run\n" + format_table(headers, table))
    path = write_csv(Path(args.csv), rows)
    print(f"\nwrote {display_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
