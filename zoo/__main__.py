"""``python -m zoo train ...``: coupled CL/NSCL/SupCon/CE/balanced training with alignment tracking."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import OBJECTIVES, TrainConfig


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m zoo")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train objectives in lockstep and track their alignment with CL")
    p.add_argument("--config", help="JSON or TOML file with TrainConfig fields; flags given here override it")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.name == "objectives":
            p.add_argument(flag, nargs="+", choices=OBJECTIVES, default=None)
        elif f.name == "probe_l2_grid":
            p.add_argument(flag, nargs="+", type=float, default=None, help="L2 strengths of the final linear probe")
        elif f.name == "classes":
            p.add_argument(flag, nargs="+", type=int, default=None, help="C (first C classes) or a list of labels")
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = (
                type(default)
                if default is not None
                else (
                    float
                    if f.name in ("supcon_tau", "balanced_alpha")
                    else int
                    if f.name in ("image_size", "proj_hidden", "proj_out", "width", "train_samples")
                    else str
                )
            )
            p.add_argument(flag, type=kind, default=None)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        base = TrainConfig.load(args.config) if args.config else TrainConfig()
        overrides = {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(TrainConfig)
            if getattr(args, f.name, None) is not None
        }
        if "classes" in overrides and len(overrides["classes"]) == 1:
            overrides["classes"] = overrides["classes"][0]
        config = dataclasses.replace(base, **overrides)
        from .train import train

        train(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as err:
        print(f"zoo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
