"""Running ``compare`` under ``torchrun``: which samples a rank owns, and how rank states are combined.

The engine is ``torch.distributed`` (NCCL on GPUs, gloo on CPUs). When a process group is
initialised, each rank reads its own shard of the data:

* a ``DataLoader`` whose sampler is a :class:`torch.utils.data.DistributedSampler` (shuffled or
  not). The sampler pads the index list to ``total_size`` by repeating its first indices; global
  position ``p = rank + k * world`` of the k-th sample of a rank is a padding repeat when
  ``p >= len(dataset)``, and such samples are dropped so that none counts twice. The global order
  of the samples is the sampler's order (the dataset order when ``shuffle=False``).
* an iterable of batches wrapped by :func:`shard` (rank ``r`` takes batches ``r, r + world, ...``);
  the global order is (batch number, position in the batch), the order one process would see.

Any other loader is refused under a process group (each rank would read every sample).

Reductions are deterministic: each rank's float64 state is gathered (``all_gather_object``) and
merged in rank order, so the result equals a single-process run to rounding (1e-10 and better).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = ["ShardedBatches", "close", "init_from_env", "is_distributed", "rank_and_world", "shard"]

_BATCH_STRIDE = 1 << 32  # order key of sample j of global batch b: b * 2^32 + j


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def init_from_env(device_type: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE > 1``): NCCL for ``device_type``
    "cuda" (default: "cuda" when a GPU is available), gloo otherwise; True when this call started it.

    On CUDA each rank takes the GPU ``LOCAL_RANK`` names, before the group starts (NCCL binds to it).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def close() -> None:
    """Leave together, then tear down: a rank that destroys gloo while another still works aborts it."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


class ShardedBatches:
    """An iterable of batches of which this rank reads every ``world``-th one (see :func:`shard`)."""

    def __init__(self, batches: Iterable, rank: int | None = None, world: int | None = None) -> None:
        r, w = rank_and_world()
        self.batches = batches
        self.rank = r if rank is None else rank
        self.world = w if world is None else world
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world), got rank={self.rank}, world={self.world}")

    def __iter__(self) -> Iterator:
        for b, batch in enumerate(self.batches):
            if b % self.world == self.rank:
                yield batch

    def batch_numbers(self) -> Iterator[int]:
        """Global batch numbers of the batches this rank yields, in the same order."""
        b = self.rank
        while True:
            yield b
            b += self.world


def shard(batches: Iterable, rank: int | None = None, world: int | None = None) -> ShardedBatches:
    """Shard an iterable of batches (e.g. a DataLoader over an IterableDataset) across ranks.

    Every rank must iterate the same batches in the same order; rank ``r`` keeps batches
    ``r, r + world, ...``. Rank and world default to the initialised process group's.
    """
    return ShardedBatches(batches, rank, world)


@dataclass
class Shard:
    """How this rank's samples map to the global order: keys of its samples, and which to keep."""

    rank: int
    world: int
    sampler: DistributedSampler | None = None
    sharded: ShardedBatches | None = None

    def keys(self, start: int, local_batch: int, size: int) -> tuple[torch.Tensor, int]:
        """Global order keys of local samples ``start .. start + size`` (local batch number
        ``local_batch``) and how many of them are real.

        Padding repeats are always at the end of a rank's stream, so the real ones are a prefix.
        """
        local = torch.arange(start, start + size, dtype=torch.int64)
        if self.sampler is not None:
            pos = self.rank + local * self.world
            n_real = len(self.sampler.dataset)  # type: ignore[arg-type]
            keep = int(min(size, max(0, -(-(n_real - self.rank) // self.world) - start)))
            return pos, keep
        if self.sharded is not None:
            return (self.rank + local_batch * self.world) * _BATCH_STRIDE + (local - start), size
        return local, size


def shard_of(loader: Iterable, enabled: bool | None) -> Shard:
    """The :class:`Shard` for ``loader``; refuses loaders that are not sharded under a process group."""
    if enabled is False or not is_distributed():
        return Shard(0, 1)
    rank, world = rank_and_world()
    if isinstance(loader, ShardedBatches):
        if loader.world != world or loader.rank != rank:
            raise ValueError(f"the loader is sharded for rank {loader.rank} of {loader.world}, not {rank} of {world}")
        return Shard(rank, world, sharded=loader)
    sampler = getattr(loader, "sampler", None)  # a DataLoader's, or a wrapper's that forwards it
    if isinstance(sampler, DistributedSampler):
        if sampler.num_replicas != world or sampler.rank != rank:
            raise ValueError(
                f"the DistributedSampler is set for rank {sampler.rank} of {sampler.num_replicas}, "
                f"not {rank} of {world}"
            )
        if sampler.drop_last and sampler.total_size < len(sampler.dataset):  # type: ignore[arg-type]
            raise ValueError(
                "DistributedSampler(drop_last=True) leaves samples out, so the result would not be over the "
                "whole dataset; use drop_last=False (the samples it repeats are dropped by repsim)"
            )
        return Shard(rank, world, sampler=sampler)
    raise ValueError(
        "a process group is initialised but the loader is not sharded, so every rank would read every sample: "
        "use DataLoader(..., sampler=DistributedSampler(dataset)), wrap an iterable with "
        "repsim.core.distributed.shard(...), "
        "or pass distributed=False to compute on each rank independently"
    )


def to_cpu(obj):
    """A copy of an accumulator (or nested lists/dicts/tensors) with every tensor on the CPU, for gathering."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, list):
        return [to_cpu(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(o) for o in obj)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        clone = object.__new__(type(obj))
        clone.__dict__.update({k: to_cpu(v) for k, v in vars(obj).items()})
        return clone
    return obj


def gather(obj) -> list:
    """``obj`` of every rank, in rank order (CPU objects; gloo and NCCL)."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def in_global_order(
    keys: torch.Tensor | None, columns: Sequence[torch.Tensor | None], limit: int | None = None
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """Every rank's kept samples, gathered and put in the global order of one process's run.

    ``keys``: this rank's global order keys (None: it kept no sample); ``columns``: tensors with
    one row per key (features of a layer, labels). Returns the sorted keys and each column's rows
    of every rank in that order (CPU tensors; a stable sort, so a sentence's tokens, which share
    their sentence's key, keep their order), the first ``limit`` of them when given. A column
    that some rank with samples lacks (None) is None. Keys and columns are both None when no rank
    kept a sample.
    """
    parts = [p for p in gather(to_cpu((keys, list(columns)))) if p[0] is not None]
    if not parts:
        return None, [None] * len(columns)
    all_keys = torch.cat([p[0] for p in parts])
    order = torch.argsort(all_keys, stable=True)[:limit]

    def pick(j: int) -> torch.Tensor | None:
        got = [p[1][j] for p in parts]
        return None if any(g is None for g in got) else torch.cat(got)[order]

    return all_keys[order], [pick(j) for j in range(len(columns))]
