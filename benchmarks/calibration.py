"""Calibrated similarity: speed of a calibrated grid, null rates, and agreement with ``calibrated-similarity``.

    PYTHONPATH=$PWD /work/main/.benchvenv/bin/python benchmarks/calibration.py \
        --out benchmarks/results_calibration_cpu.md

Three parts (``--parts speed rates peer``; all by default):

* speed: ``calibrate_grid`` of an 8 x 8 linear CKA grid at n = 5000, d = 512 (float32 features)
  with 200 permutations against one ``cka_grid`` call (best of ``--repeat``), also debiased CKA,
  RSA and restricted (block) permutations;
* rates: P(calibrated > 0) under the null at alpha = 0.05 with B = 99 (exact level 0.05), for one
  cell, for the maximum of a 4 x 4 grid (calibrated against its own null, and uncalibrated: some
  cell beating its own threshold), and for sentence-structured tokens permuted token-wise vs by
  sentence blocks; ``--runs`` simulations each;
* peer: the PyPI package ``calibrated-similarity`` 0.1.1 (Groeger, Wen & Brbic), installed only
  in the bench venv, on shared cases, given the very permutations repsim drew (its ``perm_fn``
  hands them out in order); the table gives the largest absolute differences.

The machine is shared: timings are repeated and the best is kept; ratios are within one run.
"""

from __future__ import annotations

import argparse
import io
import math
import platform
import time
from contextlib import redirect_stdout

import numpy as np
import torch

import repsim
from repsim.core.io import atomic_write_text


def _best_time(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# -------------------------------------------------------------------------------- speed
def speed(repeat: int, n: int = 5000, d: int = 512, layers: int = 8, b: int = 200) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, d, generator=g)
    xs = [(base + torch.randn(n, d, generator=g)).relu() for _ in range(layers)]
    ys = [(base[:, : d // 2].repeat(1, 2) + 2 * torch.randn(n, d, generator=g)).relu() for _ in range(layers)]
    one = _best_time(lambda: repsim.cka_grid(xs, ys), repeat)
    one_deb = _best_time(lambda: repsim.cka_grid(xs, ys, debiased=True), repeat)
    print(f"## Speed: {layers}x{layers} grid, n = {n}, d = {d}, float32 features, {b} permutations\n")
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"(shared machine: best of {repeat} runs each)\n")
    print("| procedure | seconds | ratio to one grid call |\n|---|---:|---:|")
    print(f"| one `cka_grid` call (linear CKA) | {one:.2f} | 1.0 |")
    for measure, ref in (("linear_cka", one), ("debiased_cka", one_deb)):
        t = _best_time(
            lambda m=measure: repsim.calibrate_grid(xs, ys, m, aggregate="max", n_permutations=b, seed=0), repeat
        )
        print(f"| `calibrate_grid({measure!r})`, {b} shifts (FFT) | {t:.2f} | **{t / ref:.1f}** |")
    blocks = np.repeat(np.arange(n // 5), 5)
    t = _best_time(
        lambda: repsim.calibrate_grid(xs, ys, "linear_cka", aggregate="max", n_permutations=b, blocks=blocks, seed=0), 1
    )
    print(f"| `calibrate_grid('linear_cka', blocks=...)`, 1000 blocks of 5, {b} block shifts (FFT) | {t:.2f} | "
          f"{t / one:.1f} |")  # fmt: skip
    groups = np.arange(n) % 10
    few = 4  # explicit draws gather n^2 Gram entries per layer and draw: timed on a few, extrapolated
    t = _best_time(
        lambda: repsim.calibrate_grid(xs, ys, "linear_cka", aggregate="max", n_permutations=few, groups=groups, seed=0),
        1,
    )
    per_draw = (t - one) / few
    print(
        f"| `calibrate_grid('linear_cka', groups=...)` (10 groups), explicit draws: {per_draw:.1f} s per draw, "
        f"{b} extrapolated | {one + b * per_draw:.0f} | {(one + b * per_draw) / one:.0f} |"
    )
    small = [x[:1000] for x in xs[:4]], [y[:1000] for y in ys[:4]]
    one_rsa = _best_time(lambda: repsim.measure_grid(*small, "rsa"), repeat)
    t = _best_time(lambda: repsim.calibrate_grid(*small, "rsa", "max", aggregate=b, seed=0), repeat)
    print(f"| RSA 4x4 grid at n = 1000: one `measure_grid` call | {one_rsa:.2f} | 1.0 |")
    print(f"| RSA 4x4 grid at n = 1000: `calibrate_grid('rsa')`, {b} shifts | {t:.2f} | {t / one_rsa:.1f} |")
    print()


# -------------------------------------------------------------------------------- rates
def _layers(gen, n: int, widths) -> list[torch.Tensor]:
    shared = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    return [
        shared[:, : min(6, w)] @ torch.randn(min(6, w), w, generator=gen, dtype=torch.float64)
        + torch.randn(n, w, generator=gen, dtype=torch.float64)
        for w in widths
    ]


def _sentences(gen, n_sentences: int, tokens: int, width: int) -> torch.Tensor:
    sentence = torch.randn(n_sentences, width, generator=gen, dtype=torch.float64).repeat_interleave(tokens, 0)
    return sentence + 0.7 * torch.randn(n_sentences * tokens, width, generator=gen, dtype=torch.float64)


def rates(runs: int, b: int = 99, alpha: float = 0.05) -> None:
    def ci(p: float) -> str:
        half = 1.96 * math.sqrt(p * (1 - p) / runs)
        return f"{p:.3f} ({max(p - half, 0):.3f}-{p + half:.3f})"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny problems: threads only add contention
    gen = torch.Generator().manual_seed(10)
    single = []
    for run in range(runs):
        x, y = torch.randn(100, 6, generator=gen, dtype=torch.float64), torch.randn(100, 4, generator=gen)
        single.append(repsim.calibrate(x, y.double(), "linear_cka", n_permutations=b, alpha=alpha, seed=run).score > 0)
    grid_cal, grid_naive, raw_max, raw_cell, tau_max, tau_cell = [], [], [], [], [], []
    for run in range(runs):
        xs, ys = _layers(gen, 100, (3, 5, 8, 4)), _layers(gen, 100, (4, 6, 3, 7))
        res = repsim.calibrate_grid(xs, ys, "linear_cka", aggregate="max", n_permutations=b, alpha=alpha, seed=run)
        grid_cal.append(res.score > 0)
        grid_naive.append(bool((res.cells["calibrated"] > 0).any()))
        raw_max.append(res.observed)
        raw_cell.append(float(res.cells["observed"].mean()))
        tau_max.append(res.threshold)
        tau_cell.append(float(res.cells["threshold"].mean()))
    blocks = np.repeat(np.arange(25), 4)
    by_token, by_block = [], []
    for run in range(runs):
        x, y = _sentences(gen, 25, 4, 5), _sentences(gen, 25, 4, 5)
        by_token.append(repsim.calibrate(x, y, "linear_cka", n_permutations=b, alpha=alpha, seed=run).score > 0)
        by_block.append(
            repsim.calibrate(x, y, "linear_cka", n_permutations=b, alpha=alpha, blocks=blocks, seed=run).score > 0
        )
    torch.set_num_threads(threads)
    print(f"## Rates under the null: P(calibrated > 0), alpha = {alpha}, B = {b}, {runs} simulations each\n")
    exact = math.floor(alpha * (b + 1)) / (b + 1)
    print(f"Exact level for an exchangeable design: floor(alpha (B + 1)) / (B + 1) = {exact:.3f}.")
    print("Brackets: 95 % binomial intervals. Linear CKA, n = 100 (the FFT shift scheme unless blocks are given).\n")
    print("| case | rate |\n|---|---:|")
    print(f"| single cell (independent x: 6 features, y: 4) | {ci(float(np.mean(single)))} |")
    print(f"| 4x4 grid maximum, calibrated against the maximum's own null | {ci(float(np.mean(grid_cal)))} |")
    print(f"| 4x4 grid maximum, uncalibrated: some cell above its own threshold | {ci(float(np.mean(grid_naive)))} |")
    print(f"| tokens of 25 sentences x 4, token-level permutations | {ci(float(np.mean(by_token)))} |")
    print(f"| tokens of 25 sentences x 4, `blocks=` sentence ids | {ci(float(np.mean(by_block)))} |")
    print(
        f"\nUnder the null the raw grid maximum averages {np.mean(raw_max):.3f} against a mean cell of "
        f"{np.mean(raw_cell):.3f}; the maximum's threshold averages {np.mean(tau_max):.3f}, a cell's "
        f"{np.mean(tau_cell):.3f}.\n"
    )


# -------------------------------------------------------------------------------- peer
def peer() -> None:
    import calibrated_similarity as cs

    from repsim.inference.calibration import calibrate as ours
    from repsim.inference.calibration import calibrate_grid as ours_grid

    def feed(perms: torch.Tensor):
        it = iter(perms)
        return lambda n, device: next(it).to(device)

    gen = torch.Generator().manual_seed(3)
    n = 300
    x = torch.randn(n, 20, generator=gen, dtype=torch.float64)
    y = x[:, :12] @ torch.randn(12, 15, generator=gen, dtype=torch.float64) + 3 * torch.randn(
        n, 15, generator=gen, dtype=torch.float64
    )
    z = torch.randn(n, 15, generator=gen, dtype=torch.float64)
    blocks = np.repeat(np.arange(n // 3), 3)
    cases = [
        ("linear_cka, related", "linear_cka", x, y, {}, {}),
        ("linear_cka, independent", "linear_cka", x, z, {}, {}),
        ("debiased_cka, related", "debiased_cka", x, y, {}, {}),
        ("rsa (cosine RDM, Pearson)", "rsa", x, y, {}, {}),
        ("mutual_knn k=10", "mutual_knn", x, y, {"k": 10}, {}),
        ("cknna k=10", "cknna", x, y, {"k": 10}, {}),
        ("linear_cka, blocks of 3", "linear_cka", x, y, {}, {"blocks": blocks}),
        ("procrustes (distance), smax=inf both", "procrustes", x, y, {}, {"smax": math.inf}),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small problems, called thousands of times by their loop
    rows = []
    for label, measure, a, bb, opts, extra in cases:
        mine = ours(a, bb, measure, 200, 0.05, seed=1, keep_permutations=True, **extra, **opts)
        info = repsim.get_measure(measure)
        sign = 1.0 if info.larger_is_more_similar else -1.0

        def sim(p, q, measure=measure, opts=opts, sign=sign):
            return sign * float(repsim.measure(p, q, measure, **opts))

        smax = None if mine.smax is None else mine.smax
        s, p, tau = cs.calibrate(a, bb, sim, K=200, alpha=0.05, smax=smax, perm_fn=feed(mine.permutations))
        rows.append(
            (label, mine.scheme, mine.score, float(s), sign * mine.threshold, float(tau), mine.p_value, float(p))
        )
    xs = [x, x[:, :10], torch.randn(n, 8, generator=gen, dtype=torch.float64)]
    ys = [y, z, y[:, :6]]
    for agg in ("max", "mean"):
        mine = ours_grid(xs, ys, "linear_cka", agg, 200, 0.05, seed=2, keep_permutations=True)

        def sim(p, q):
            return float(repsim.linear_cka(p, q))

        s, p, tau = cs.calibrate_layers(xs, ys, sim, agg=agg, K=200, alpha=0.05, perm_fn=feed(mine.permutations))
        rows.append((f"3x3 grid linear_cka, aggregate {agg}", mine.scheme, mine.score, float(s), mine.threshold,
                     float(tau), mine.p_value, float(p)))  # fmt: skip
    torch.set_num_threads(threads)
    print("## Agreement with `calibrated-similarity` 0.1.1, same permutations (B = 200, alpha = 0.05, n = 300)\n")
    print("Their package computes in float32 (the null, tau and the score are float32 tensors); repsim in float64.")
    print("A distance enters theirs as the similarity -d (their test is upper-tail only) with smax=None;")
    print("its tau is then -tau_repsim and the excess is the same number.\n")
    print("| case | repsim scheme | score repsim | score theirs | tau repsim | tau theirs | p repsim | p theirs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | " + " | ".join(f"{v:.6f}" for v in row[2:]) + " |")
    diffs = [max(abs(r[2] - r[3]), abs(r[4] - r[5]), abs(r[6] - r[7])) for r in rows]
    print(f"\nLargest absolute difference over every score, tau and p-value: **{max(diffs):.2e}**.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["speed", "rates", "peer"], choices=["speed", "rates", "peer"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--out", default=None, help="write the Markdown here as well")
    args = ap.parse_args()
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print("# Calibrated similarity (benchmarks/calibration.py)\n")
        for part in args.parts:
            {"speed": lambda: speed(args.repeat), "rates": lambda: rates(args.runs), "peer": peer}[part]()
    text = buffer.getvalue()
    print(text)
    if args.out:
        print(f"wrote: {atomic_write_text(args.out, text)}")


if __name__ == "__main__":
    main()
