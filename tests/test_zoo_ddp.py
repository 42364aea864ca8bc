"""Two gloo processes on the CPU reproduce single-process losses and gradients."""

import gc
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zoo import distributed as D
from zoo.config import TrainConfig
from zoo.train import loss_for

OBJECTIVES = ["cl", "nscl", "supcon", "balanced", "ce"]
CFG = TrainConfig(tau=0.5).resolved()


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(6, 5)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x):
        h = self.body(x)
        return {"projection": h, "logits": self.head(h)}


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _grads(model):
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _step(model, v1, v2, y, objective):
    out = model(torch.cat([v1, v2]))
    loss = loss_for(objective, out, y, CFG)
    loss.backward()
    return loss.item()


def _worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    v1, v2, y = _data()
    idx = D.shard(list(range(8)))
    results = {}
    for objective in OBJECTIVES:
        model = torch.nn.parallel.DistributedDataParallel(Net(), find_unused_parameters=True)
        loss = _step(model, v1[idx], v2[idx], y[idx], objective)
        results[objective] = (loss, _grads(model.module))
    if rank == 0:
        torch.save(results, result_file)
    # Both ranks leave the last collective together, and no DDP reducer outlives the process group:
    # a rank tearing gloo down while the other still works, or a reducer destroyed after it, aborts
    # the process ("terminate called without an active exception").
    del model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def test_gather_and_ddp_match_single_process():
    v1, v2, y = _data()
    expected = {}
    for objective in OBJECTIVES:
        model = Net()
        loss = _step(model, v1, v2, y, objective)
        expected[objective] = (loss, _grads(model))
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, init_file, result_file), nprocs=2, join=True)
        got = torch.load(result_file, weights_only=True)
    for objective in OBJECTIVES:
        if objective != "ce":  # CE is per-sample: each rank's local mean, averaged by DDP; the loss value is local
            assert got[objective][0] == pytest.approx(expected[objective][0], rel=1e-5), objective
        for name, grad in expected[objective][1].items():
            assert torch.allclose(got[objective][1][name], grad, atol=1e-6, rtol=1e-5), (objective, name)


def test_plain_all_gather_would_lose_gradients():
    """The trap the autograd-aware gather avoids: a detached gather gives a different gradient."""
    v1, v2, _ = _data()
    model = Net()
    z = model(torch.cat([v1, v2]))["projection"]
    from zoo.losses import nt_xent

    full = torch.autograd.grad(nt_xent(z[:8], z[8:], tau=0.5), model.body.weight)[0]
    z = model(torch.cat([v1, v2]))["projection"]
    half = torch.cat([z[:4], z[4:8].detach()]), torch.cat([z[8:12], z[12:].detach()])
    partial = torch.autograd.grad(nt_xent(*half, tau=0.5), model.body.weight)[0]
    assert not torch.allclose(full, 2 * partial, atol=1e-4)
