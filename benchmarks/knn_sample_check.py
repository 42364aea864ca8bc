"""How far the approximate mutual-kNN value is from the exact one at sizes where exact lists of all n
samples take hours: exact lists for a seeded sample of m points, paired with the approximate lists
of the same points.

mutual kNN = mean_i |N_k(i) ∩ N'_k(i)| / k, a mean over points, so the mean over a uniform sample
of points estimates it without bias; pairing the exact and approximate per-point overlaps on the
same points gives the difference with a small standard error. Also printed: the bound
|approx - exact| <= mean_i (|N_k(i) \\ A_k(i)| + |N'_k(i) \\ A'_k(i)|) / k, i.e. (1 - recall_x) + (1 - recall_y),
since replacing one list element changes an intersection count by at most one.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/knn_sample_check.py --n 1000000 --d 64 --sample 2000

Data: the shared-latent layers of benchmarks/knn_scale.py (its ``layers``), so the numbers pair with
its table.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from benchmarks.knn_scale import layers


def exact_rows(x: torch.Tensor, rows: torch.Tensor, k: int, block: int = 256) -> torch.Tensor:
    """The exact k most cosine-similar other samples of each of ``rows`` (ties by the smaller index)."""
    z = torch.nn.functional.normalize(x, dim=1)
    out = []
    for s in range(0, len(rows), block):
        r = rows[s : s + block]
        sims = z[r] @ z.T
        sims[torch.arange(len(r)), r] = -math.inf  # not its own neighbour
        # ties by index: a stable descending sort of the top candidates
        top = sims.topk(k + 8, dim=1)
        order = torch.sort(top.indices, dim=1).indices  # by index first...
        vals = top.values.gather(1, order)
        idx = top.indices.gather(1, order)
        keep = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :k]  # ...then by value, stably
        out.append(idx.gather(1, keep))
    return torch.cat(out)


def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i ∩ b_i| per row of two (m, k) index lists."""
    return (a[:, :, None] == b[:, None, :]).any(dim=2).sum(dim=1).to(torch.float64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--recall", type=float, default=0.99)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import repsim

    (x,), (y,) = layers(args.n, args.d, 1)
    start = time.perf_counter()
    lx = repsim.knn_lists(x, k=args.k, knn="approx", recall=args.recall)
    ly = repsim.knn_lists(y, k=args.k, knn="approx", recall=args.recall)
    approx_seconds = time.perf_counter() - start
    approx_value = float(overlap(lx.indices, ly.indices).mean()) / args.k
    rows = torch.randperm(args.n, generator=torch.Generator().manual_seed(args.seed))[: args.sample]
    start = time.perf_counter()
    ex, ey = exact_rows(x, rows, args.k), exact_rows(y, rows, args.k)
    exact_seconds = time.perf_counter() - start
    exact_i = overlap(ex, ey) / args.k
    approx_i = overlap(lx.indices[rows], ly.indices[rows]) / args.k
    diff = approx_i - exact_i
    recall_x = float(overlap(lx.indices[rows], ex).mean()) / args.k
    recall_y = float(overlap(ly.indices[rows], ey).mean()) / args.k
    m = len(rows)
    print(f"n = {args.n}, d = {args.d}, k = {args.k}; approximate lists of both layers: {approx_seconds:.0f} s "
          f"({lx.describe()}; {ly.describe()})")
    print(f"mutual kNN, approximate lists of all n: {approx_value:.4f}")
    print(f"on {m} seeded points: exact {float(exact_i.mean()):.4f} ± {float(exact_i.std()) / math.sqrt(m):.4f} (SE), "
          f"approximate {float(approx_i.mean()):.4f}; paired difference {float(diff.mean()):+.4f} ± "
          f"{float(diff.std()) / math.sqrt(m):.4f}; exact lists of the sample: {exact_seconds:.0f} s")
    print(f"recall@{args.k} on the sample: x {recall_x:.4f}, y {recall_y:.4f}; bound on |difference|: "
          f"{(1 - recall_x) + (1 - recall_y):.4f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
