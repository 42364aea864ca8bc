"""Inference benchmarks: speed ratios against single measure calls, and the full-size calibration runs.

    .venv/bin/python benchmarks/inference.py speed        # 1000 permutations / resamples at n = 5000, d = 512
    .venv/bin/python benchmarks/inference.py calibration  # null uniformity, coverage vs n, power (the issue's sizes)

Prints Markdown tables; nothing here runs in the test suite (tests/test_inference.py has small seeded versions).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.stats
import torch

import repsim


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def speed(n: int, d: int, b: int, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=g) + 3).to(device)
    y = (x[:, : d // 2].repeat(1, 2) + torch.randn(n, d, generator=g).to(device)).relu()
    one = _timed(lambda: repsim.linear_cka(x, y), 3)
    one_deb = _timed(lambda: repsim.linear_cka(x, y, debiased=True), 3)
    print(f"## n = {n}, d = {d}, {b} permutations / resamples, {device}, {torch.get_num_threads()} threads\n")
    print("| procedure | seconds | ratio to one call |\n|---|---:|---:|")
    print(f"| one linear_cka call | {one:.3f} | 1.0 |")
    for name, base in (("linear_cka", one), ("debiased_cka", one_deb)):
        t = _timed(lambda name=name: repsim.permutation_test(x, y, name, b, seed=0))
        print(f"| permutation_test({name}), {b} shift permutations | {t:.3f} | {t / base:.1f} |")
        t = _timed(lambda name=name: repsim.bootstrap(x, y, name, b, seed=0))
        print(f"| bootstrap({name}), {b} half-samples (batched) | {t:.3f} | {t / base:.1f} |")
    loop_n = 20
    t = _timed(lambda: [repsim.linear_cka(x, y[torch.randperm(n, device=device)]) for _ in range(loop_n)])
    print(
        f"| {b} calls of linear_cka on permuted rows (extrapolated from {loop_n}) | {t * b / loop_n:.1f} | "
        f"{t * b / loop_n / one:.0f} |\n"
    )


def _independent(seed, n=200, p=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g, dtype=torch.float64), torch.randn(n, p, generator=g, dtype=torch.float64)


def _joint(seed, n, p, q, noise=1.5):
    g = torch.Generator().manual_seed(10_000 + seed)
    a = torch.linspace(0.2, 1.0, p * q, dtype=torch.float64).reshape(p, q) / np.sqrt(p / 8)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x @ a + noise * torch.randn(n, q, generator=g, dtype=torch.float64)
    syy = a.T @ a + noise**2 * torch.eye(q, dtype=torch.float64)
    return x, y, float(a.pow(2).sum() / (np.sqrt(p) * syy.norm()))


def calibration(sims: int, resamples: int) -> None:
    print(f"## Null calibration: n = 200, p = q = 50, {sims} simulations, 199 shift permutations\n")
    print("| measure | KS p-value (uniform) | rejection rate at 0.05 |\n|---|---:|---:|")
    for m in ("linear_cka", "debiased_cka", "rsa"):
        ps = np.array([repsim.permutation_test(*_independent(s), m, 199, seed=s).p_value for s in range(sims)])
        print(f"| {m} | {scipy.stats.kstest(ps, 'uniform').pvalue:.3f} | {np.mean(ps <= 0.05):.3f} |")
    print(f"\n## Coverage of nominal 95 % intervals ({sims} simulations, {resamples} half-samples)\n")
    print("| n | p = q | population CKA | debiased CKA coverage | biased CKA coverage |\n|---:|---:|---:|---:|---:|")
    for n, p in ((500, 8), (500, 50), (200, 50), (100, 50)):
        hits = {"debiased_cka": 0, "linear_cka": 0}
        truth = _joint(0, n, p, p)[2]
        for s in range(sims):
            x, y, _ = _joint(s, n, p, p)
            for m in hits:
                r = repsim.bootstrap(x, y, m, resamples, seed=s)
                hits[m] += r.ci_low <= truth <= r.ci_high
        print(f"| {n} | {p} | {truth:.3f} | {hits['debiased_cka'] / sims:.3f} | {hits['linear_cka'] / sims:.3f} |")
    print("\n## Power: one shared direction (weight 0.8) among 20 features, detection at p < 0.05\n")
    print("| measure | n = 100 | n = 200 |\n|---|---:|---:|")
    for m in ("linear_cka", "debiased_cka", "rsa"):
        rates = []
        for n in (100, 200):
            hit = 0
            for s in range(100):
                g = torch.Generator().manual_seed(500 + s)
                shared = torch.randn(n, 1, generator=g, dtype=torch.float64)
                x = torch.randn(n, 20, generator=g, dtype=torch.float64) + 0.8 * shared
                y = torch.randn(n, 20, generator=g, dtype=torch.float64) + 0.8 * shared
                hit += repsim.permutation_test(x, y, m, 199, seed=s).p_value < 0.05
            rates.append(hit / 100)
        print(f"| {m} | {rates[0]:.2f} | {rates[1]:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "calibration"])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--b", type=int, default=1000)
    parser.add_argument("--sims", type=int, default=500)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.n, args.d, args.b, args.device)
    else:
        calibration(args.sims, args.resamples)
