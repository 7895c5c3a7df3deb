"""Data-parallel training of the demo (pyro_concrete.demo.distributed, docs/distributed.md).

The pieces are tested in this process; a one-process group in this process repeats the
single-process run bit for bit; and two Gloo processes that ``torch.distributed.run`` starts
train the demo's model together. For those two, this file is also the script each process
runs: ``python -m torch.distributed.run ... tests/test_distributed.py OUT_DIR [demo options]``
trains through the demo's ``main`` and saves the process's parameters and scores in OUT_DIR.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_concrete.demo import main
from pyro_concrete.demo.cli import parse_args
from pyro_concrete.demo.distributed import (
    SINGLE_PROCESS,
    TORCHRUN_VARIABLES,
    DataParallel,
    backend_for,
    check_shards,
)
from pyro_concrete.demo.model import ESTIMATORS, CategoricalVAE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The small run of the two-process test: the demo's model, 10 epochs (about 1 s of training).
SMALL_RUN = ["--epochs", "10", "--seed", "0", "--quiet"]
# Its held-out negative ELBO over seeds 0-11 in one process (measured before any two-process
# run was compared): mean 23.22, standard deviation 0.24 nats per image. A two-process run
# differs from the one-process run of the same seed only in its noise, so the difference of
# the two has a standard deviation of at most 0.24 * sqrt(2) = 0.34: the tolerance is four of
# those (the seeds also change the initialisation and the shuffle, so this bound is generous).
NEG_ELBO_TOLERANCE = 4 * 0.24 * math.sqrt(2)


def needs_digits():
    return pytest.importorskip("sklearn.datasets", reason="the demo's digits need scikit-learn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_split_every_batch():
    for world_size in (1, 2, 3, 7):
        for size in (7, 10, 38, 100):
            parts = [
                DataParallel(r, world_size, distributed=True).shard(torch.arange(size))
                for r in range(world_size)
            ]
            assert torch.equal(torch.cat(parts), torch.arange(size))  # disjoint, in order, complete
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    batch = torch.arange(5)
    assert SINGLE_PROCESS.shard(batch) is batch


def test_check_shards_names_the_batch_size():
    check_shards(1438, 100, 38)  # the last batch holds 1438 % 100 = 38 images: one each
    with pytest.raises(ValueError, match=r"--batch-size\) 100 over 39 processes: the epoch's last batch"):
        check_shards(1438, 100, 39)
    with pytest.raises(ValueError, match=r"--batch-size\) 4 over 5 processes: a batch holds 4 of the 1400"):
        check_shards(1400, 4, 5)
    check_shards(1400, 100, 100)  # no last, smaller batch


def test_data_parallel_rejects_bad_groups():
    with pytest.raises(ValueError, match="rank must be less than world_size"):
        DataParallel(2, 2, distributed=True)
    with pytest.raises(ValueError, match="distributed=True"):
        DataParallel(0, 2)
    with pytest.raises(ValueError, match="world_size"):
        DataParallel(0, 0)


def test_noise_seeds():
    """The first process keeps the seed's stream; the others get distinct derived seeds."""
    seeds = [DataParallel(r, 8, distributed=True).noise_seed(0) for r in range(8)]
    assert seeds[0] is None and len(set(seeds[1:])) == 7
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds[1:])
    assert DataParallel(1, 2, distributed=True).noise_seed(1) != seeds[1]  # depends on the seed
    assert DataParallel(1, 2, distributed=True).noise_seed(0) == seeds[1]  # not on the group's size
    assert SINGLE_PROCESS.noise_seed(5) is None


def test_backend_follows_the_device():
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda")) == backend_for(torch.device("cuda", 3)) == "nccl"


def test_single_process_reductions_are_identities():
    values = torch.tensor([1.5, 2.0], dtype=torch.float64)
    assert SINGLE_PROCESS.all_sum(values) is values
    assert SINGLE_PROCESS.mean(0.1, 3) == 0.1


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_scaled_loss_is_the_world_size_times_the_loss(estimator):
    """What the processes' scaled losses rest on: each estimator's loss, scale included, is
    linear in poutine.scale (so DDP's mean of world_size * shard losses is the batch's)."""
    pyro.clear_param_store()
    vae = CategoricalVAE(num_pixels=6, num_latents=2, num_classes=3, estimator=estimator, hidden=(5,))
    x = torch.bernoulli(torch.full((4, 6), 0.4))
    loss = vae.training_loss()

    def loss_at(scale: float) -> float:
        pyro.set_rng_seed(1)
        model = pyro.poutine.scale(vae.model, scale=scale)
        guide = pyro.poutine.scale(vae.guide, scale=scale)
        return loss.differentiable_loss(model, guide, x).item()

    assert loss_at(3.0) == pytest.approx(3 * loss_at(1.0), rel=1e-6)


def test_distributed_needs_torchrun(monkeypatch, capsys):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as info:
        parse_args(["--distributed"])
    assert info.value.code == 2 and "torchrun --nproc_per_node N" in capsys.readouterr().err


@pytest.mark.slow
def test_one_process_group_repeats_the_single_process_run(tmp_path, monkeypatch, capsys):
    """With one process, --distributed (DDP, the loss scale, the reductions) changes nothing:
    the same parameters bit for bit, the same losses and held-out scores."""
    needs_digits()
    pytest.importorskip("matplotlib", reason="the demo's figure needs matplotlib")
    argv = ["--epochs", "2", "--latents", "4", "--classes", "4", "--quiet"]
    alone = main([*argv, "--out", str(tmp_path / "alone.png")])
    alone_params = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    grouped = main([*argv, "--out", str(tmp_path / "grouped.png"), "--distributed"])
    assert not torch.distributed.is_initialized()  # left on exit
    assert "batch 100 over 1 process (100 each, gloo)" in capsys.readouterr().out
    params = dict(pyro.get_param_store().items())
    assert params.keys() == alone_params.keys()  # DDP's wrappers keep the networks' names
    for name, value in params.items():
        assert torch.equal(value, alone_params[name]), name
    assert grouped.train.losses == alone.train.losses
    assert grouped.train.neg_elbo == pytest.approx(alone.train.neg_elbo, rel=1e-12)
    assert grouped.train.initial_neg_elbo == pytest.approx(alone.train.initial_neg_elbo, rel=1e-12)
    assert grouped.figure is not None and grouped.figure.read_bytes()[:8] == PNG_MAGIC


def test_group_left_after_an_error(monkeypatch):
    """The process group is destroyed when training fails, and a batch that leaves a process
    without data is refused before the group is joined."""
    needs_digits()
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**env, "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)

    in_group = []

    def fail(*args, **kwargs):
        in_group.append(torch.distributed.is_initialized())
        raise RuntimeError("training failed")

    monkeypatch.setattr("pyro_concrete.demo.cli.train_vae", fail)
    with pytest.raises(RuntimeError, match="training failed"):
        main(["--distributed", "--quiet"])
    assert in_group == [True] and not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's processes, each training alone
    with pytest.warns(UserWarning, match="without --distributed"), pytest.raises(RuntimeError):
        main(["--quiet"])
    monkeypatch.setenv("WORLD_SIZE", "3")  # batch 4: the last batch holds 1438 % 4 = 2 images
    with pytest.raises(SystemExit, match=r"error: batch_size \(--batch-size\) 4 over 3 processes"):
        main(["--distributed", "--batch-size", "4"])
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_two_processes_train_one_model(tmp_path):
    """Two Gloo processes: identical parameters at the end, one report and one figure, and the
    held-out negative ELBO of one process with the same total batch, within noise."""
    needs_digits()
    pytest.importorskip("matplotlib", reason="the demo's figure needs matplotlib")
    out = tmp_path / "figure.png"
    # Gloo on the loopback interface whatever the machine's hostname resolves to.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    for _attempt in range(3):  # the free port may be taken between its choice and its use
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        command += [__file__, str(tmp_path), *SMALL_RUN, "--out", str(out), "--distributed"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
        if run.returncode == 0 or "address already in use" not in run.stderr.lower():
            break
    assert run.returncode == 0, run.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert ranks[0]["params"].keys() == ranks[1]["params"].keys()
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    assert ranks[0]["neg_elbo"] == ranks[1]["neg_elbo"]  # reduced: the same on every process
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 10 * 15
    assert ranks[0]["figure"] == str(out) and ranks[1]["figure"] is None
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert run.stdout.count("held-out negative ELBO") == 1 and run.stdout.count("Categorical VAE") == 1
    assert "batch 100 over 2 processes (50 each, gloo)" in run.stdout

    alone = main([*SMALL_RUN, "--out", str(tmp_path / "alone.png")]).train
    assert abs(ranks[0]["neg_elbo"] - alone.neg_elbo) < NEG_ELBO_TOLERANCE
    assert ranks[0]["initial_neg_elbo"] == pytest.approx(alone.initial_neg_elbo, abs=0.5)  # same model
    assert f"{ranks[0]['neg_elbo']:.2f} nats per image" in run.stdout


def _worker(out_dir: str, argv: list[str]) -> None:
    """One process of the two-process test: trains, then saves what the test compares."""
    result = main(argv)
    params = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    record = {
        "params": params,
        "losses": result.train.losses,
        "neg_elbo": result.train.neg_elbo,
        "initial_neg_elbo": result.train.initial_neg_elbo,
        "figure": None if result.figure is None else str(result.figure),
    }
    torch.save(record, Path(out_dir) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
