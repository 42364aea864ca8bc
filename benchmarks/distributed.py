"""compare under 1 vs 2 gloo processes, the bytes each rank sends, and a scale estimate.

    flock /tmp/repsim-cpu.lock python benchmarks/distributed.py [--n 4000]

Prints: wall time of ``repsim.compare`` in one process and in two gloo processes (same data,
DistributedSampler), the size of the state a rank contributes to the reduction for two sample
counts (it is O(sum d^2 + P Q) per layer grid, independent of n), the measured per-image forward
cost of a resnet18 at 224 px on this machine, and the paper estimate for 8 GPUs x 50 checkpoints on
ImageNet-val (50 000 images) from a per-image cost given with ``--gpu-ms-per-image``.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import repsim
from repsim.core import distributed as D
from repsim.measures.moments import StreamingMoments


def _models():
    torch.manual_seed(0)
    mk = lambda w: torch.nn.Sequential(  # noqa: E731
        torch.nn.Linear(64, w), torch.nn.ReLU(), torch.nn.Linear(w, w), torch.nn.ReLU(), torch.nn.Linear(w, 10)
    )
    return mk(256), mk(128)


def _data(n):
    return TensorDataset(torch.randn(n, 64, generator=torch.Generator().manual_seed(0)), torch.zeros(n))


def _compare(loader):
    a, b = _models()
    return repsim.compare(
        a, b, loader, layers_a=["1", "3"], layers_b=["1", "3"], measures=["linear_cka", "debiased_cka"], progress=False
    )


def _worker(rank, world, init, n, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    data = _data(n)
    loader = DataLoader(data, batch_size=256, sampler=DistributedSampler(data, shuffle=False))
    dist.barrier()
    t = time.perf_counter()
    _compare(loader)
    dist.barrier()
    if rank == 0:
        with open(out, "w") as f:
            f.write(str(time.perf_counter() - t))
    dist.destroy_process_group()


def state_bytes(n: int) -> int:
    acc = StreamingMoments()
    g = torch.Generator().manual_seed(0)
    for _ in range(max(1, n // 256)):
        acc.update(
            [torch.randn(256, 256, generator=g), torch.randn(256, 10, generator=g)],
            [torch.randn(256, 128, generator=g), torch.randn(256, 10, generator=g)],
        )
    buf = io.BytesIO()
    pickle.dump(D.to_cpu(acc), buf)
    return buf.tell()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8000)
    p.add_argument(
        "--gpu-ms-per-image",
        type=float,
        default=None,
        help="measured forward cost per image and model on the target GPU (ms)",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    data = _data(args.n)
    t = time.perf_counter()
    _compare(DataLoader(data, batch_size=256))
    one = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "t")
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), args.n, out), nprocs=2, join=True)
        two = float(Path(out).read_text())
    print(f"compare, n={args.n}, 2 layers x 2 layers, linear+debiased CKA, 1 thread per process")
    print(f"  1 process : {one:.2f} s")
    print(f"  2 gloo    : {two:.2f} s  (speed-up {one / two:.2f}x on {os.cpu_count()} cores)")
    for n in (2560, 25600):
        print(f"  state a rank sends for the reduction at n={n}: {state_bytes(n) / 1e6:.2f} MB")
    import torchvision

    model = torchvision.models.resnet18().eval()
    x = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        model(x)
        cpu_ms = (time.perf_counter() - t) / 8 * 1e3
    print(f"resnet18 forward, 224 px, 1 CPU thread: {cpu_ms:.1f} ms/image")
    ms = args.gpu_ms_per_image
    if ms is not None:
        total_h = 50 * 50_000 * ms / 1e3 / 3600
        print(f"50 checkpoints x 50 000 images x {ms} ms/image: {total_h:.2f} GPU-hours; on 8 GPUs {total_h / 8:.2f} h")


if __name__ == "__main__":
    main()
