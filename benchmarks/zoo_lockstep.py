"""Steps per second of K = 4 objectives in lockstep against 4 separate runs, on digits.

    .venv/bin/python benchmarks/zoo_lockstep.py [--epochs 3]

Lockstep draws each batch and its augmented views once for all four models; separate runs each
pay the data pipeline themselves. Separate runs are timed as four single-objective runs (CL, the
same cost per step as the other contrastive objectives; the trainer needs CL as its reference).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import repsim  # noqa: F401
from zoo.config import TrainConfig
from zoo.train import Trainer


def steps_per_second(objectives: list[str], epochs: int, out: str) -> tuple[float, int]:
    cfg = TrainConfig(
        data="digits",
        objectives=objectives,
        control=False,
        epochs=epochs,
        eval_every=10**6,
        checkpoint_every=10**6,
        progress=False,
        final_probes=False,
        out=out,
    )
    trainer = Trainer(cfg)
    trainer.train_epoch()  # warm-up epoch, not timed
    start = time.perf_counter()
    for _ in range(epochs):
        trainer.train_epoch()
    elapsed = time.perf_counter() - start
    return epochs * trainer.steps_per_epoch / elapsed, trainer.steps_per_epoch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lock, steps = steps_per_second(["cl", "nscl", "supcon", "ce"], args.epochs, f"{tmp}/lock")
        single = [steps_per_second(["cl"], args.epochs, f"{tmp}/s{i}")[0] for i in range(4)]
    separate = 1 / sum(1 / s for s in single)  # four runs one after another: their step times add up
    print(f"digits, batch 256, {steps} steps/epoch, CPU with {torch.get_num_threads()} threads\n")
    print("| setup | steps/s (all 4 models advanced one step) |")
    print("|---|---:|")
    print(f"| lockstep, K = 4 | {lock:.2f} |")
    print(f"| 4 separate runs | {separate:.2f} |")
    print(f"\nlockstep / separate = {lock / separate:.2f}")


if __name__ == "__main__":
    main()
