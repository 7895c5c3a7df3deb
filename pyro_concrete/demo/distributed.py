"""Data-parallel training of the demo over the processes ``torchrun`` starts.

``torchrun --nproc_per_node N -m pyro_concrete.demo --distributed`` runs the demo in ``N``
processes that train one model together (``docs/distributed.md``):

- the encoder and decoder are wrapped in ``DistributedDataParallel`` for the training loop
  (:meth:`DataParallel.replicated`); the loop stays Pyro's ``SVI`` with the estimator's own
  loss and Pyro's per-parameter Adam, and DDP averages each step's gradients over the
  processes during the backward pass, so that the parameters stay identical;
- every step's batch is the single-process run's (one shuffle, from the seed, on every
  process), split into ``N`` contiguous parts (:meth:`DataParallel.shard`), and each process
  scales its loss by ``N``: DDP's average of the gradients is then the gradient of the whole
  batch's loss, the objective of one process with the same batch;
- every process initialises the model from the seed (DDP also broadcasts the first process's
  parameters when it wraps them); afterwards the first process keeps the seed's random
  stream and the others draw from streams derived from ``(seed, rank)``
  (:meth:`DataParallel.noise_seed`);
- losses and held-out scores are sums over the processes' shares (:meth:`DataParallel.all_sum`,
  :meth:`DataParallel.mean`); only the first process prints, shows the progress bar and
  writes the figure.

One process without ``--distributed`` is :data:`SINGLE_PROCESS`: no process group, every
method here the identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .._checks import check_int
from .model import CategoricalVAE

__all__ = [
    "SINGLE_PROCESS",
    "TORCHRUN_VARIABLES",
    "DataParallel",
    "backend_for",
    "check_shards",
    "launched_by_torchrun",
    "process_group",
]

# What torchrun sets for each process it starts (the env:// rendezvous of torch.distributed).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether every variable of :data:`TORCHRUN_VARIABLES` is set in the environment."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def backend_for(device: torch.device) -> str:
    """The ``torch.distributed`` backend for tensors on ``device``: NCCL for CUDA, Gloo otherwise.

    Example::

        >>> backend_for(torch.device("cpu")), backend_for(torch.device("cuda", 1))
        ('gloo', 'nccl')
    """
    return "nccl" if device.type == "cuda" else "gloo"


def check_shards(num_items: int, batch_size: int, world_size: int) -> None:
    """``ValueError`` unless every process gets at least one item of every batch.

    An epoch's ``num_items`` items form batches of ``batch_size`` and a last, smaller one of
    ``num_items % batch_size``; each batch is split among ``world_size`` processes in parts
    whose sizes differ by at most one (:meth:`DataParallel.shard`), so each must hold at
    least ``world_size`` items. Pyro's plate has no empty batch.
    """
    num_items = check_int("num_items", num_items, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    world_size = check_int("world_size", world_size, minimum=1)
    last = num_items % batch_size
    smallest = min(batch_size, num_items, last or batch_size)
    if smallest < world_size:
        which = "a batch" if smallest == min(batch_size, num_items) else "the epoch's last batch"
        raise ValueError(
            f"batch_size (--batch-size) {batch_size} over {world_size} processes: {which} holds "
            f"{smallest} of the {num_items} training images, which leaves a process without data; "
            f"use fewer processes or a batch size such that every batch holds at least {world_size}"
        )


class _SameNames(DistributedDataParallel):
    """DDP whose parameters keep the wrapped module's names.

    ``pyro.module`` names a module's parameters by ``named_parameters``: with this wrapper in
    place of a network, Pyro's parameter store holds the same names (and tensors) as in a
    single-process run, not DDP's ``module.``-prefixed ones. DDP itself reads the wrapped
    module's parameters (``self.module``), never this method.
    """

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        return self.module.named_parameters(prefix, recurse, remove_duplicate)


@dataclass(frozen=True)
class DataParallel:
    """The processes a training run is split over, and what the run needs of them.

    ``distributed=False`` (:data:`SINGLE_PROCESS`) is one process without a process group:
    every method is then the identity. Otherwise :func:`process_group` makes one, for the
    process of rank ``rank`` among ``world_size``, collectives on ``device``.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False

    def __post_init__(self) -> None:
        check_int("world_size", self.world_size, minimum=1)
        check_int("rank", self.rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be less than world_size {self.world_size}, got {self.rank}")
        if self.world_size > 1 and not self.distributed:
            raise ValueError("more than one process needs distributed=True (a process group)")

    @property
    def is_main(self) -> bool:
        """Whether this is the first process (rank 0): the one that prints and writes."""
        return self.rank == 0

    def shard(self, batch: Tensor) -> Tensor:
        """This process's part of ``batch``: the ``rank``-th of ``world_size`` contiguous parts
        whose sizes differ by at most one (the first ``len(batch) % world_size`` one larger).

        Example::

            >>> batch = torch.arange(7)
            >>> [DataParallel(rank, 3, distributed=True).shard(batch).tolist() for rank in range(3)]
            [[0, 1, 2], [3, 4], [5, 6]]
        """
        if self.world_size == 1:
            return batch
        return batch.tensor_split(self.world_size)[self.rank]

    def noise_seed(self, seed: int) -> int | None:
        """The seed of this process's random stream after the model is initialised.

        ``None`` for the first process, which keeps drawing from ``seed``'s stream (one
        process with ``--distributed`` repeats the single-process run); for the others a
        32-bit seed derived from ``(seed, rank)`` by NumPy's ``SeedSequence``, whose
        spawned children are made to give independent streams.

        Example::

            >>> [DataParallel(rank, 3, distributed=True).noise_seed(0) is None for rank in range(3)]
            [True, False, False]
        """
        seed = check_int("seed", seed, minimum=0)
        if self.rank == 0:
            return None
        sequence = np.random.SeedSequence(seed, spawn_key=(self.rank,))
        return int(sequence.generate_state(1, dtype=np.uint32)[0])

    def all_sum(self, values: Tensor) -> Tensor:
        """``values`` summed over the processes, on the CPU (one ``all_reduce``); pass float64
        for sums of many numbers."""
        if not self.distributed:
            return values
        total = values.to(self.device, copy=True)  # values stay as given
        dist.all_reduce(total)
        return total.cpu()

    def mean(self, local_mean: float, count: int) -> float:
        """The mean over every process's items, from this process's mean over its ``count``."""
        if not self.distributed:
            return local_mean
        total, items = self.all_sum(torch.tensor([local_mean * count, count], dtype=torch.float64)).tolist()
        return total / items

    @contextmanager
    def replicated(self, vae: CategoricalVAE) -> Iterator[None]:
        """Within the block, ``vae``'s encoder and decoder are wrapped in DDP (with their own
        parameter names, see ``_SameNames``): a backward pass averages their gradients over
        the processes. Each network must run forward once per backward pass, as the
        estimators' losses do with one particle. Unwrapped again on leaving, error or not.
        """
        if not self.distributed:
            yield
            return
        networks = {"encoder": vae.encoder, "decoder": vae.decoder}
        device_ids = [self.device] if self.device.type == "cuda" else None
        try:
            for name, network in networks.items():
                setattr(vae, name, _SameNames(network, device_ids=device_ids))
            yield
        finally:
            for name, network in networks.items():
                setattr(vae, name, network)


SINGLE_PROCESS = DataParallel()


@contextmanager
def process_group(device: torch.device) -> Iterator[DataParallel]:
    """Joins the process group ``torchrun`` describes in the environment, for tensors on
    ``device`` (Gloo, or NCCL for CUDA: :func:`backend_for`), and leaves it on exit, also
    after an error.

    Raises:
        RuntimeError: when a variable of :data:`TORCHRUN_VARIABLES` is missing.
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"a distributed run needs the environment torchrun sets ({', '.join(missing)} missing): "
            "torchrun --nproc_per_node N -m pyro_concrete.demo --distributed"
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) if device.index is None else device.index)
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))
    try:
        yield DataParallel(dist.get_rank(), dist.get_world_size(), device, distributed=True)
    finally:
        dist.destroy_process_group()
