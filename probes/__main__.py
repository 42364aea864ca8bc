"""``python -m probes CHECKPOINT --arch ARCH --layer LAYER --data digits --out DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from repsim.cli import ChannelAdapter, input_channels
from repsim.core.io import atomic_write_text
from repsim.networks.checkpoints import load_model
from repsim.networks.data import DatasetNotFoundError, reference_loader

from .evaluate import evaluate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probes", description="Linear probe, kNN and NCCC on frozen features.")
    p.add_argument("checkpoint")
    p.add_argument("--arch", required=True, help="torchvision/timm name or package.module:function")
    p.add_argument("--layer", required=True, help="module name (see `repsim layers ARCH`)")
    p.add_argument(
        "--data", default="digits", help="digits | fashion-mnist[:ROOT] | cifar10:ROOT | cifar100:ROOT | folder:ROOT"
    )
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load_model(args.checkpoint, args.arch)
        loaders = [
            ChannelAdapter(
                reference_loader(args.data, train=train, batch_size=args.batch_size, image_size=args.image_size),
                input_channels(model),
            )
            for train in (True, False)
        ]
        table = evaluate(
            model, *loaders, layer=args.layer, device=device, shots=args.shots, episodes=args.episodes, seed=args.seed
        )
    except (ValueError, DatasetNotFoundError, FileNotFoundError) as err:
        print(f"probes: error: {err}", file=sys.stderr)
        return 2
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    path = atomic_write_text(Path(args.out) / "probes.csv", table.to_csv(index=False))
    print(f"\nwrote:\n  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
