"""Every registered measure's value on fixed inputs: one-shot, layer grid, streaming, and two gloo ranks.

A refactor of the measures must not move a value. Run this before the change (``--write``) and after
(``--check``): every value must agree to ``--tol`` (default 1e-12, relative to max(1, |value|)).

    python scripts/registry_values.py --write /tmp/before.csv
    python scripts/registry_values.py --check /tmp/before.csv

Routes per measure (a route the measure does not have is left out):

* ``one_shot``: ``repsim.measure(x, y, name)``;
* ``grid[i,j]``: ``repsim.measure_grid(xs, ys, name)`` over 2 x 3 layers;
* ``streaming``: ``StreamingMoments`` (or the entry's accumulator) over uneven batches with a large offset;
* ``gloo2``: the same stream split over two gloo processes and merged with ``sync()``.

Measures whose optional package is missing here, and the topology measures' random subsets, are
recorded as far as they run; the check compares the rows both files have and lists the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import repsim
from repsim.measures.moments import StreamingMoments
from repsim.measures.registry import get_measure, registered_names

N, P, Q = 90, 6, 5
OPTIONS = {"geometry_score": {"n_landmarks": 16, "n_repeats": 10}}


def names() -> list[str]:
    return [n for n in registered_names() if get_measure(n).available()]  # the entry names its optional package


def inputs(name: str):
    """x, y (and the extra keyword options) for ``name``; fixed by the seed."""
    info = get_measure(name)
    g = torch.Generator().manual_seed(20261203)
    q = P if info.needs_equal_widths else Q
    x = torch.randn(N, P, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(P, q, generator=g, dtype=torch.float64)) + 0.7 * torch.randn(
        N, q, generator=g, dtype=torch.float64
    )
    if info.needs_outputs:
        x, y = 3 * x[:, :4], 3 * (x[:, :4] + 0.8 * torch.randn(N, 4, generator=g, dtype=torch.float64))
    opts = {"labels": torch.arange(N) % x.shape[1]} if info.needs_labels else {}
    opts.update({k: v for k, v in OPTIONS.get(name, {}).items() if k in info.options()})
    return x, y, opts, g


def stream(name: str, x, y, rank: int = 0, world: int = 1):
    info = get_measure(name)
    x, y = x + 300.0, y - 200.0  # the moments must not cancel
    acc = StreamingMoments() if info.from_moments is not None else info.accumulator(**info.defaults)
    if world > 1 and hasattr(acc, "set_shift"):  # shards merge only with a shared shift (as compare agrees on one)
        acc.set_shift([x[:23].mean(0)], [y[:23].mean(0)])
    starts = list(range(0, N, 23))
    for i in starts[rank::world]:
        acc.update(x[i : i + 23], y[i : i + 23])
    if world > 1:
        acc = acc.sync()
    return acc.compute(name) if info.from_moments is not None else acc.compute()


def values(with_gloo: bool = True) -> pd.DataFrame:
    rows = []
    for name in names():
        info = get_measure(name)
        x, y, opts, g = inputs(name)
        rows.append((name, "one_shot", float(repsim.measure(x, y, name, **opts))))
        x2 = x + 0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)
        y2 = 2 * y + torch.randn(y.shape, generator=g, dtype=y.dtype)
        xs, ys = ([x, x2], [y, y2, y + x2[:, : y.shape[1]]])
        grid = repsim.measure_grid(xs, ys, name, **opts)
        rows += [(name, f"grid[{i},{j}]", float(grid[i, j])) for i in range(2) for j in range(3)]
        if info.streaming:
            rows.append((name, "streaming", float(stream(name, x, y))))
    df = pd.DataFrame(rows, columns=["measure", "route", "value"])
    if with_gloo:
        df = pd.concat([df, gloo_values()], ignore_index=True)
    return df


def _gloo_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        rows = []
        for name in names():
            if get_measure(name).streaming:
                x, y, _, _ = inputs(name)
                rows.append((name, "gloo2", float(stream(name, x, y, rank, world))))
        if rank == 0:
            pd.DataFrame(rows, columns=["measure", "route", "value"]).to_csv(out, index=False)
    finally:
        dist.destroy_process_group()


def gloo_values() -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "gloo.csv")
        mp.spawn(_gloo_worker, args=(2, os.path.join(tmp, "init"), out), nprocs=2)
        return pd.read_csv(out)


def check(before: pd.DataFrame, after: pd.DataFrame, tol: float) -> int:
    if not (after["route"] == "gloo2").any():  # --no-gloo
        before = before[before["route"] != "gloo2"]
    merged = before.merge(after, on=["measure", "route"], how="outer", suffixes=("_before", "_after"), indicator=True)
    both = merged[merged["_merge"] == "both"].copy()
    scale = both[["value_before", "value_after"]].abs().max(axis=1).clip(lower=1.0)
    both["rel_diff"] = (both["value_before"] - both["value_after"]).abs() / scale
    moved = both[~(both["rel_diff"] <= tol)]
    only = merged[merged["_merge"] != "both"]
    print(f"{len(both)} values compared over {both['measure'].nunique()} measures; largest relative difference "
          f"{both['rel_diff'].max():.2e} (tolerance {tol:g})")  # fmt: skip
    if len(only):
        print("in one file only:\n" + only[["measure", "route", "_merge"]].to_string(index=False))
    if len(moved):
        print(
            "moved:\n" + moved[["measure", "route", "value_before", "value_after", "rel_diff"]].to_string(index=False)
        )
    return 1 if len(moved) else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="CSV")
    group.add_argument("--check", metavar="CSV")
    p.add_argument("--tol", type=float, default=1e-12)
    p.add_argument("--no-gloo", action="store_true", help="skip the two-process route")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    df = values(with_gloo=not args.no_gloo)
    if args.write:
        df.to_csv(args.write, index=False, float_format="%.17g")
        print(f"wrote {len(df)} values of {df['measure'].nunique()} measures to {args.write}")
        return 0
    return check(pd.read_csv(args.check), df, args.tol)


if __name__ == "__main__":
    sys.exit(main())
