"""Shared plumbing of the examples: small (digits, CPU), Fashion-MNIST (CPU, a narrow ResNet-18) and full
(CIFAR-100, GPU) presets, seeds, tidy results."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

import repsim  # noqa: F401  (the torchvision guard, before zoo touches torchvision)
from zoo.config import TrainConfig
from zoo.train import Trainer

SMALL = dict(
    data="digits",
    epochs=30,
    batch_size=256,
    eval_every=10,
    checkpoint_every=1000,
    reference_samples=450,
    final_probes=False,
    progress=False,
    control=False,
)
# Fashion-MNIST on the CPU (``--data fashion-mnist``): the width-8 CIFAR-stem ResNet-18 of
# examples/10_fashion_resnet.py on 28x28 images, a 2000-image reference set, a stratified training subset.
FASHION = dict(
    SMALL,
    data="fashion-mnist",
    backbone="resnet18",
    width=8,
    proj_hidden=512,
    proj_out=128,
    image_size=28,
    train_samples=10_000,
    reference_samples=2000,
    warmup_epochs=1,
)
# The authors' setup (arXiv 2510.08852, on SimCLR's CIFAR recipe), for a GPU: ResNet-50 with the CIFAR
# stem, 2048-2048-128 projector, LARS, lr 0.3 * B/256, wd 1e-6, 10 warm-up epochs then cosine, B = 1024,
# tau = 0.1 on CIFAR-100.
FULL = dict(
    epochs=300,
    batch_size=1024,
    backbone="resnet50",
    optimizer="lars",
    lr=0.3,
    lr_scaling="linear",
    weight_decay=1e-6,
    warmup_epochs=10,
    tau=0.1,
    amp=True,
    channels_last=True,
    num_workers=8,
    eval_every=25,
    checkpoint_every=25,
    reference_samples=10_000,
    final_probes=False,
    progress=True,
    control=False,
)


def parser(description: str, default_seeds: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", type=int, default=default_seeds, help="number of seeds (0, 1, ...)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument(
        "--full",
        metavar="ROOT",
        default=None,
        help="full scale on a GPU: CIFAR-100 under ROOT with ResNet-50, B=1024, LARS",
    )
    p.add_argument(
        "--data",
        default=None,
        help="fashion-mnist or fashion-mnist:ROOT: the Fashion-MNIST preset (narrow ResNet-18, CPU); default digits",
    )
    p.add_argument("--train-samples", type=int, default=None, help="a stratified training subset of this size")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="only the first and last value of each sweep (for tests)")
    return p


def sweep(values: tuple, args) -> tuple:
    """The values of one swept setting; with --smoke only its two ends."""
    return (values[0], values[-1]) if args.smoke else values


def base_config(args, name: str, **overrides) -> tuple[TrainConfig, Path]:
    data = getattr(args, "data", None)
    if data and data.partition(":")[0] != "fashion-mnist":
        raise SystemExit(f"--data takes fashion-mnist[:ROOT] (default digits; --full ROOT for CIFAR-100), got {data}")
    if args.full:
        values = dict(FULL, data=f"cifar100:{args.full}")
    elif data:
        values = dict(FASHION, data=data)
    else:
        values = dict(SMALL)
    values.update(overrides)
    if args.epochs:
        values["epochs"] = args.epochs
    if getattr(args, "train_samples", None):
        values["train_samples"] = args.train_samples
    suffix = "_full" if args.full else "_fashion" if data else ""
    out = Path(args.out or f"results/examples/{name}{suffix}")
    return TrainConfig(**values), out


def run(config: TrainConfig, out: Path, tag: str, seed: int) -> pd.DataFrame:
    """Train one configuration for one seed (resuming from its last checkpoint, so a killed or repeated
    study redoes nothing that is done); returns its tidy log with the seed."""
    cfg = dataclasses.replace(config, seed=seed, out=str(out / "runs" / f"{tag}_seed{seed}"))
    trainer = Trainer(cfg)
    trainer.run(resume=True)
    log = pd.DataFrame(trainer.log)
    log["seed"] = seed
    return log


def final(log: pd.DataFrame, measure: str = "linear_cka", layer: str = "encoder", objective: str = "nscl"):
    rows = log[(log["measure"] == measure) & (log["layer"] == layer) & (log["objective"] == objective)]
    return rows[rows["epoch"] == rows["epoch"].max()]


def final_rows(
    config: TrainConfig, out: Path, tag: str, seeds: int, layers=("encoder", "projector"), **labels
) -> list[dict]:
    """Train each seed once and return the final CL-NSCL CKA at every layer, tagged with ``labels``."""
    rows = []
    for seed in range(seeds):
        log = run(config, out, tag, seed)
        for layer in layers:
            value = float(final(log, layer=layer)["value"].iloc[0])
            rows.append({**labels, "seed": seed, "layer": layer, "value": value})
    return rows


def summarise(table: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Mean, seed-to-seed standard deviation and count per group."""
    return table.groupby(by)[value].agg(["mean", "std", "count"]).reset_index()


def save(table: pd.DataFrame, fig, out: Path, name: str) -> None:
    from repsim.core.io import atomic_save_figure, atomic_write_text

    paths = [
        atomic_write_text(out / f"{name}.csv", table.to_csv(index=False)),
        atomic_save_figure(fig, out / f"{name}.png", dpi=110, bbox_inches="tight"),
    ]
    print("wrote:\n" + "\n".join(f"  {p}" for p in paths))
