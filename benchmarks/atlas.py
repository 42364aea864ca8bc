"""The model x layer atlas: ``repsim.compare_many`` over stored FeatureSets against what it must compute.

N models x L layers of stored (n, d) float32 features (seeded random layers that share a latent),
linear CKA and mutual kNN (k = 10), max over layer pairs. Each method runs in its own process, so
its peak RSS is its own; they run one after another.

    .venv/bin/python benchmarks/atlas.py                                   # the issue's size: 20 x 12, n 5000, d 256
    .venv/bin/python benchmarks/atlas.py --models 6 --layers 4 --n 1000 --d 64 --out /tmp/atlas.md   # reduced

Methods:

* ``repsim atlas``: ``compare_many(paths, measures=[...])`` (memory planner, default budget).
* ``(a) bare products``: what the atlas must compute, in plain torch (no orchestration): linear CKA
  from every layer's Gram once (float32, by row blocks) and the pair inner products <K_i, K_j>
  (float64: repsim's precision policy); mutual kNN from each layer's lists once and every pair's
  overlaps. ``(a')``: linear CKA from every pair's feature-space product ||Xc_i^T Xc_j||_F^2 instead.
* ``(b) loop of grids``: a loop over model pairs of ``repsim.measure_grid`` on that pair's layers
  (what a user writes today; each model's per-layer work redone for every pair).
* ``(b') loop of pairwise calls``: ``repsim.measure`` per layer pair, timed on ``--sample`` layer
  pairs and extrapolated to all of them.
* ``(c) platonic-rep's loop``: a re-implementation (not their code) of ``measure_alignment.py``'s
  loop: per model pair, per layer pair, outlier clamping (q = 0.95) and L2 normalisation, then their
  mutual kNN (n x n similarities, argsort, dense masks) and biased CKA (n x n kernels,
  trace(K H L H)); timed on ``--sample`` layer pairs and extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("repsim atlas", "(a) bare products", "(a') bare feature-space products", "(b) loop of grids",
           "(b') loop of pairwise calls", "(c) platonic-rep's loop")  # fmt: skip


def make_sets(folder: Path, models: int, layers: int, n: int, d: int) -> list[str]:
    import torch

    import repsim

    z = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    paths = []
    for m in range(models):
        g = torch.Generator().manual_seed(m + 1)
        feats = {f"block{i}": z @ torch.randn(16, d, generator=g) + (1 + i) * torch.randn(n, d, generator=g)
                 for i in range(layers)}  # fmt: skip
        paths.append(str(repsim.FeatureSet(feats, meta={"model": f"model{m:02d}"}).save(folder / f"model{m:02d}")))
    return paths


def _load_all(paths):
    import repsim

    sets = [repsim.load_features(p) for p in paths]
    return [[s[k].clone() for k in s.layers] for s in sets]


def run_atlas(paths, measures, args) -> dict:
    import repsim

    res = repsim.compare_many(paths, measures=measures, measure_options={"mutual_knn": {"k": 10}}, progress=False,
                              memory=args.memory)  # fmt: skip
    return {m: res.matrix(m, "max").to_numpy().tolist() for m in measures}


def run_bare(paths, measures, args, feature_space: bool = False) -> dict:
    """Linear CKA: every layer's Gram K = Xc Xc^T once (float32, by row blocks) and the pair inner
    products <K_i, K_j> in float64 (repsim's precision policy); or, ``feature_space``, every pair's
    ||Xc_i^T Xc_j||_F^2 (float32). Mutual kNN: each layer's lists once, then every pair's overlaps."""
    import torch

    from repsim.measures.neighbours import knn_indices

    layers = _load_all(paths)
    flat = [x for model in layers for x in model]
    count, per = len(layers), len(layers[0])
    out = {}
    if "linear_cka" in measures:
        centred = [x - x.mean(0) for x in flat]
        grid = (_feature_space if feature_space else _gram_space)(centred)
        out["linear_cka"] = _max_by_model(grid, count, per)
    if "mutual_knn" in measures:
        lists = torch.stack([knn_indices(x / x.norm(dim=1, keepdim=True), 10) for x in flat])
        grid = torch.empty(len(flat), len(flat), dtype=torch.float64)
        for i in range(len(flat)):
            eq = lists[i][None, :, :, None] == lists[i:, :, None, :]
            grid[i, i:] = eq.sum((-2, -1)).double().div(10).mean(-1)
        out["mutual_knn"] = _max_by_model(torch.triu(grid) + torch.triu(grid, 1).T, count, per)
    return out


def _gram_space(centred):
    import torch

    n, count = centred[0].shape[0], len(centred)
    acc = torch.zeros(count, count, dtype=torch.float64)
    rows = max(1, (256 * 2**20) // (8 * n * count))  # row blocks of every layer's Gram within 256 MB
    for lo in range(0, n, rows):
        block = torch.stack([(c[lo : lo + rows] @ c.T).reshape(-1) for c in centred]).double()
        acc += block @ block.T
    norms = acc.diagonal().sqrt()
    return acc / (norms[:, None] * norms[None, :])


def _feature_space(centred):
    import torch

    selfs = torch.stack([(c.T @ c).pow(2).sum().double().sqrt() for c in centred])
    z = torch.cat(centred, 1)
    d = centred[0].shape[1]
    grid = torch.empty(len(centred), len(centred), dtype=torch.float64)
    for i, c in enumerate(centred):  # the upper triangle of the layer x layer cross products
        cross = (c.T @ z[:, i * d :]).pow(2).reshape(d, -1, d).sum((0, 2)).double()
        grid[i, i:] = cross / (selfs[i] * selfs[i:])
    return torch.triu(grid) + torch.triu(grid, 1).T


def _max_by_model(grid, count: int, per: int) -> list:
    return grid.reshape(count, per, count, per).amax(dim=(1, 3)).tolist()


def run_loop_grids(paths, measures, args) -> dict:
    import torch

    import repsim

    sets = [repsim.load_features(p) for p in paths]
    out = {m: [[1.0] * len(sets) for _ in sets] for m in measures}
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            xs, ys = [a[k] for k in a.layers], [sets[j][k] for k in sets[j].layers]
            for m in measures:
                opts = {"k": 10} if m == "mutual_knn" else {}
                out[m][i][j] = out[m][j][i] = float(torch.as_tensor(repsim.measure_grid(xs, ys, m, **opts)).max())
    return out


def _sampled_pairs(count: int, per: int, sample: int):
    import random

    pairs = [(a, la, b, lb) for a in range(count) for b in range(a + 1, count)
             for la in range(per) for lb in range(per)]  # fmt: skip
    return random.Random(0).sample(pairs, min(sample, len(pairs))), len(pairs)


def run_loop_pairs(paths, measures, args) -> dict:
    import repsim

    layers = _load_all(paths)
    sample, total = _sampled_pairs(len(layers), len(layers[0]), args.sample)
    for a, la, b, lb in sample:
        for m in measures:
            repsim.measure(layers[a][la], layers[b][lb], m, **({"k": 10} if m == "mutual_knn" else {}))
    return {"sampled": len(sample), "total": total}


def run_platonic(paths, measures, args) -> dict:
    import torch
    import torch.nn.functional as F

    layers = _load_all(paths)
    sample, total = _sampled_pairs(len(layers), len(layers[0]), args.sample)

    def prepare(x):  # their prepare_features: clamp at the 0.95 quantile of |x|, then L2 rows in compute_score
        q = torch.quantile(x.abs().flatten(start_dim=1), 0.95, dim=1).mean()
        return F.normalize(x.clamp(-q, q), dim=-1)

    def knn(x):
        return (x @ x.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :10]

    for a, la, b, lb in sample:
        x, y = prepare(layers[a][la]), prepare(layers[b][lb])
        if "mutual_knn" in measures:
            n, rows = x.shape[0], torch.arange(x.shape[0])[:, None]
            ma, mb = torch.zeros(n, n), torch.zeros(n, n)
            ma[rows, knn(x)] = 1.0
            mb[rows, knn(y)] = 1.0
            (ma * mb).sum(1).div(10).mean().item()
        if "linear_cka" in measures:
            k, l_ = x @ x.T, y @ y.T
            h = torch.eye(k.shape[0]) - 1 / k.shape[0]

            def hsic(p, q, h=h):
                return torch.trace(p @ h @ q @ h)

            (hsic(k, l_) / (torch.sqrt(hsic(k, k) * hsic(l_, l_)) + 1e-6)).item()
    return {"sampled": len(sample), "total": total}


RUNNERS = {"repsim atlas": run_atlas, "(a) bare products": run_bare,
           "(a') bare feature-space products": lambda p, m, a: run_bare(p, m, a, feature_space=True),
           "(b) loop of grids": run_loop_grids,
           "(b') loop of pairwise calls": run_loop_pairs, "(c) platonic-rep's loop": run_platonic}  # fmt: skip


def worker(args) -> None:
    import torch

    import repsim  # noqa: F401  (imported before the clock starts)

    torch.set_num_threads(args.threads)
    paths = json.loads(Path(args.data, "paths.json").read_text())
    start = time.perf_counter()
    result = RUNNERS[args.worker](paths, args.measures, args)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "result": result}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, default=20)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--measures", nargs="+", default=["linear_cka", "mutual_knn"])
    p.add_argument("--sample", type=int, default=20, help="layer pairs timed for the extrapolated loops")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory", default=None, help="the atlas's memory budget, e.g. 24GB (default: 60%% of available)")
    p.add_argument("--repeats", type=int, default=1, help="runs per method (the minimum time is kept)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results_atlas_cpu.md"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_sets(Path(tmp), args.models, args.layers, args.n, args.d)
        Path(tmp, "paths.json").write_text(json.dumps(paths))
        rows = {m: _run_method(m, tmp, args) for m in args.methods}
    report(rows, args)


def _run_method(method: str, data: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--data", data, "--measures", *args.measures,
           "--sample", str(args.sample), "--threads", str(args.threads)]  # fmt: skip
    cmd += ["--memory", args.memory] if args.memory else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    runs = []
    for _ in range(args.repeats):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{method}: {runs[-1]['seconds']:.2f} s, peak RSS {runs[-1]['peak_rss_mb']:.0f} MB", flush=True)
    return min(runs, key=lambda r: r["seconds"])


def report(rows: dict, args) -> None:
    import numpy as np

    base = rows.get("(a) bare products")
    lines = [f"# The atlas: {args.models} models x {args.layers} layers, n = {args.n}, d = {args.d}",
             "", f"Measures {', '.join(args.measures)} (k = 10), max over layer pairs; {args.threads} threads, CPU; "
             "`python benchmarks/atlas.py " + " ".join(sys.argv[1:]) + "`.", "",
             "| method | seconds | vs (a) | peak RSS (MB) | note |", "|---|---:|---:|---:|---|"]  # fmt: skip
    for name, r in rows.items():
        res, sec, note = r["result"], r["seconds"], ""
        if isinstance(res, dict) and "sampled" in res:
            sec = sec * res["total"] / max(res["sampled"], 1)
            note = f"extrapolated from {res['sampled']} of {res['total']} layer pairs"
        ratio = f"{sec / base['seconds']:.2f}x" if base else ""
        lines.append(f"| {name} | {sec:.1f} | {ratio} | {r['peak_rss_mb']:.0f} | {note} |")
    atlas = rows.get("repsim atlas")
    if atlas and base:
        for m in args.measures:
            diff = np.abs(np.array(atlas["result"][m]) - np.array(base["result"][m])).max()
            lines.append(f"\nmax |atlas - bare| of the {m} max matrix: {diff:.2e}")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\n\nwrote:\n  {args.out}")


if __name__ == "__main__":
    main()
