"""Time the pieces of one epoch of examples/10_fashion_resnet.py (all five objectives) at candidate widths.

Times ``--steps`` training steps (one per batch of 256, every objective stepping on the same two views) on a
stratified subset, one evaluation (2000 reference images, a 10 000-image kNN bank, CKA/RSA/bounds of every
rival) and one final linear probe + kNN on 10 000 encoder features, and extrapolates an epoch over 60 000 or
``--train-samples`` images. Prints one tidy table. Threads: set OMP_NUM_THREADS (it reports torch's count).

OMP_NUM_THREADS=1 python benchmarks/fashion_epoch_timing.py --widths 8 16
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time
from pathlib import Path

import pandas as pd
import torch

import repsim  # noqa: F401  (the torchvision guard)
from zoo.train import Trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "10_fashion_resnet.py"


def study():
    spec = importlib.util.spec_from_file_location("fashion_study", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--train-samples", type=int, nargs="+", default=[20_000, 60_000])
    p.add_argument("--out", default="/tmp/fashion_epoch_timing")
    args = p.parse_args()
    module = study()
    rows = []
    for width in args.widths:
        base = module.study_config(module.parse_args(["--width", str(width), "--out", args.out]))
        cfg = dataclasses.replace(base, train_samples=args.steps * base.batch_size, progress=False)
        trainer = Trainer(cfg)
        start = time.perf_counter()
        trainer.train_epoch()
        step = (time.perf_counter() - start) / trainer.steps_per_epoch
        evaluator = Trainer(dataclasses.replace(base, train_samples=10_000, progress=False))
        start = time.perf_counter()
        evaluator.evaluate()
        evaluation = time.perf_counter() - start
        start = time.perf_counter()
        _, bank, queries = evaluator._reference_features()
        from zoo.tracking import final_probe_rows

        final_probe_rows({"cl": bank["cl"]}, {"cl": queries["cl"]}, 0)
        probe = time.perf_counter() - start
        for n in args.train_samples:
            epoch = step * (n // base.batch_size)
            rows.append({"width": width, "threads": torch.get_num_threads(), "train_samples": n,
                         "step_s (5 models)": round(step, 3), "train_epoch_s": round(epoch),
                         "eval_s": round(evaluation), "final_probe_s (1 model)": round(probe)})  # fmt: skip
        print(pd.DataFrame(rows).tail(len(args.train_samples)).to_string(index=False), flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
