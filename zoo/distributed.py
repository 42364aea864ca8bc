"""Multi-process helpers: rank info, batch sharding and an autograd-aware gather.

Contrastive losses need every sample's embedding as a negative. ``torch.distributed.all_gather``
returns tensors with no gradient path back to the other ranks (the classic trap);
``torch.distributed.nn.functional.all_gather`` does carry gradients (its backward sums the
incoming gradients across ranks). Each rank computes the loss on the gathered global batch;
DDP's gradient averaging then yields exactly the single-process gradient.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device_type: str) -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return is_distributed()
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


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
    parts = [torch.empty_like(y) for _ in range(world_size())]
    dist.all_gather(parts, y.contiguous())
    return torch.cat(parts)


def shard(batch: list[int]) -> list[int]:
    """This rank's share of a global batch of indices (the sampler is seeded alike on every rank)."""
    return batch[rank() :: world_size()] if is_distributed() else batch


def close() -> None:
    """Leave together, then tear down: a rank that destroys gloo while another still works aborts it."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
