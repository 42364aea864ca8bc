"""Multi-process helpers: rank info (:mod:`repsim.core.distributed`'s), batch sharding and an autograd-aware gather.

Contrastive losses need every sample's embedding as a negative. ``torch.distributed.all_gather``
returns tensors with no gradient path back to the other ranks (the classic trap);
``torch.distributed.nn.functional.all_gather`` does carry gradients (its backward sums the
incoming gradients across ranks). Each rank computes the loss on the gathered global batch;
DDP's gradient averaging then yields exactly the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from repsim.core.distributed import close, init_from_env, is_distributed, rank_and_world

__all__ = ["close", "gather_labels", "gather_with_grad", "init_from_env", "is_distributed", "rank", "shard"]


def rank() -> int:
    return rank_and_world()[0]


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0, differentiable with respect to every part."""
    if not is_distributed():
        return t
    import warnings

    from torch.distributed.nn.functional import all_gather

    # torch 2.13 marks this public function deprecated in favour of private, still-changing
    # functional collectives; it stays correct (tests/test_zoo_ddp.py checks the gradients).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(t.contiguous()))


def gather_labels(y: Tensor) -> Tensor:
    if not is_distributed():
        return y
    parts = [torch.empty_like(y) for _ in range(rank_and_world()[1])]
    dist.all_gather(parts, y.contiguous())
    return torch.cat(parts)


def shard(batch: list[int]) -> list[int]:
    """This rank's share of a global batch of indices (the sampler is seeded alike on every rank)."""
    r, world = rank_and_world()
    return batch[r::world]
