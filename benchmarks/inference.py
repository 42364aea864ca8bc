"""Inference benchmarks: speed ratios against single measure calls, and the full-size calibration runs.

    .venv/bin/python benchmarks/inference.py speed        # 1000 permutations / resamples at n = 5000, d = 512
    .venv/bin/python benchmarks/inference.py calibration --quick     # a few minutes: the same tables, fewer sims
    flock /tmp/repsim-cpu.lock .venv/bin/python benchmarks/inference.py calibration \
        --out benchmarks/results_inference_calibration_cpu.md --figures docs/guide/figures

calibration: null uniformity of permutation p-values (n = 200, p = q = 50), coverage of nominal 95 %
bootstrap intervals of debiased and biased CKA against the closed-form population CKA for n = 50..1000,
and power for a weak shared signal vs n; Markdown to stdout (and --out), PNG figures to --figures.
Nothing here runs in the test suite (tests/test_inference*.py have small seeded versions).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from tqdm.auto import tqdm

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
        t = _timed(lambda name=name: repsim.permutation_test(x, y, name, n_permutations=b, seed=0))
        print(f"| permutation_test({name}), {b} shift permutations | {t:.3f} | {t / base:.1f} |")
        t = _timed(lambda name=name: repsim.bootstrap(x, y, name, n_resamples=b, seed=0))
        print(f"| bootstrap({name}), {b} half-samples (batched) | {t:.3f} | {t / base:.1f} |")
    loop_n = 20
    t = _timed(lambda: [repsim.linear_cka(x, y[torch.randperm(n, device=device)]) for _ in range(loop_n)])
    print(
        f"| {b} calls of linear_cka on permuted rows (extrapolated from {loop_n}) | {t * b / loop_n:.1f} | "
        f"{t * b / loop_n / one:.0f} |\n"
    )


# ----------------------------------------------------------------------------------- calibration
# Every simulation draws its data from its own seed, so any (measure, n, simulation) is reproducible alone.
MEASURES = ("linear_cka", "debiased_cka", "rsa")
LABELS = {"linear_cka": "linear CKA (biased)", "debiased_cka": "debiased CKA", "rsa": "RSA (cosine RDM, Pearson)"}


def _independent(seed, n=200, p=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g, dtype=torch.float64), torch.randn(n, p, generator=g, dtype=torch.float64)


def _cross_map(p: int, q: int) -> torch.Tensor:
    """The coupling A of y = x A + noise e: a fixed smooth p x q matrix (rank 2), scaled with p."""
    return torch.linspace(0.2, 1.0, p * q, dtype=torch.float64).reshape(p, q) / np.sqrt(p / 8)


def population_cka(p: int, q: int, noise: float) -> float:
    """||Sxy||_F^2 / (||Sxx||_F ||Syy||_F) for x ~ N(0, I_p), y = x A + noise e, e ~ N(0, I_q):
    Sxx = I, Sxy = A, Syy = A^T A + noise^2 I."""
    a = _cross_map(p, q)
    syy = a.T @ a + noise**2 * torch.eye(q, dtype=torch.float64)
    return float(a.pow(2).sum() / (np.sqrt(p) * syy.norm()))


def _joint(seed, n, p, q, noise):
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x @ _cross_map(p, q) + noise * torch.randn(n, q, generator=g, dtype=torch.float64)
    return x, y


def _shared_signal(seed, n, weight, p=20):
    """One latent s ~ N(0, 1) added with ``weight`` to the first of p unit-variance Gaussian features of
    both x and y; the other p - 1 features are independent noise."""
    g = torch.Generator().manual_seed(500_000 + seed)
    shared = torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.randn(n, p, generator=g, dtype=torch.float64)
    x[:, 0] += weight * shared
    y[:, 0] += weight * shared
    return x, y


def _mc_se(rate: float, sims: int) -> float:
    return float(np.sqrt(rate * (1 - rate) / sims))


def null_calibration(sims: int, n: int = 200, p: int = 50) -> dict:
    """p-values of the exact shift-group permutation test (all n - 1 shifts) for independent x, y."""
    out = {}
    for m in MEASURES:
        ps = np.array(
            [
                repsim.permutation_test(*_independent(s, n, p), m, n_permutations=n - 1, seed=s).p_value
                for s in tqdm(range(sims), desc=f"null {m}", leave=False)
            ]
        )
        out[m] = {
            "p_values": ps,
            "ks": float(scipy.stats.kstest(ps, "uniform").pvalue),
            "reject": float(np.mean(ps <= 0.05)),
        }
    return out


def coverage(ns, sims_at, resamples: int, p: int, noise: float) -> dict:
    """Share of nominal 95 % half-sample intervals that contain the population linear CKA, per n."""
    truth = population_cka(p, p, noise)
    out = {}
    for n in ns:
        sims = sims_at(n)
        hits = {"debiased_cka": 0, "linear_cka": 0}
        means = {"debiased_cka": 0.0, "linear_cka": 0.0}
        widths = {"debiased_cka": 0.0, "linear_cka": 0.0}
        for s in tqdm(range(sims), desc=f"coverage n={n}", leave=False):
            x, y = _joint(s, n, p, p, noise)
            for m in hits:
                r = repsim.bootstrap(x, y, m, n_resamples=resamples, seed=s)
                hits[m] += r.ci_low <= truth <= r.ci_high
                means[m] += r.estimate / sims
                widths[m] += (r.ci_high - r.ci_low) / sims
        out[n] = {"sims": sims, **{m: {"coverage": hits[m] / sims, "mean": means[m], "width": widths[m]} for m in hits}}
    return {"truth": truth, "p": p, "noise": noise, "rows": out}


def power(ns, sims: int, weight: float) -> dict:
    out = {m: {} for m in MEASURES}
    for n in ns:
        for m in MEASURES:
            hits = sum(
                repsim.permutation_test(*_shared_signal(s, n, weight), m, n_permutations=199, seed=s).p_value < 0.05
                for s in tqdm(range(sims), desc=f"power {m} n={n}", leave=False)
            )
            out[m][n] = hits / sims
    return out


def _check_population_cka(p: int, noise: float, n: int = 200_000) -> float:
    """The closed form against the sample CKA of a huge draw (its O(d/n) bias and noise are ~1e-3 here)."""
    x, y = _joint(-1, n, p, p, noise)
    sample = float(repsim.linear_cka(x, y))
    truth = population_cka(p, p, noise)
    assert abs(sample - truth) < 5e-3, f"closed form {truth:.4f} vs sample CKA {sample:.4f} at n = {n}"
    return sample


# ----------------------------------------------------------------------------------- report
def _figures(null: dict, cov: dict, pw: dict, figdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    for ax, m in zip(axes, MEASURES, strict=True):
        ps = null[m]["p_values"]
        ax.hist(ps, bins=20, range=(0, 1), density=True, color="#4c72b0", edgecolor="white")
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="uniform")
        ax.set_title(f"{LABELS[m]}\nKS p = {null[m]['ks']:.2f}, reject@0.05 = {null[m]['reject']:.3f}", fontsize=9)
        ax.set_xlabel("permutation p-value")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Null calibration: independent Gaussians, {len(ps)} simulations", fontsize=10)
    fig.tight_layout()
    paths.append(figdir / "inference_null_pvalues.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ns = sorted(cov["rows"])
    ax.axhspan(0.92, 0.98, color="#cccccc", alpha=0.5, label="0.92-0.98")
    ax.axhline(0.95, color="black", linewidth=1, linestyle="--", label="nominal 0.95")
    for m, color in (("debiased_cka", "#4c72b0"), ("linear_cka", "#dd8452")):
        rates = np.array([cov["rows"][n][m]["coverage"] for n in ns])
        se = np.array([_mc_se(r, cov["rows"][n]["sims"]) for r, n in zip(rates, ns, strict=True)])
        ax.errorbar(ns, rates, yerr=2 * se, marker="o", capsize=3, color=color, label=LABELS[m])
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("n (samples)")
    ax.set_ylabel("coverage of the population CKA")
    ax.set_title(f"Nominal 95 % half-sample intervals, p = q = {cov['p']} (error bars: 2 MC s.e.)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    paths.append(figdir / "inference_coverage.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for m in MEASURES:
        ns = sorted(pw[m])
        ax.plot(ns, [pw[m][n] for n in ns], marker="o", label=LABELS[m])
    ax.axhline(0.8, color="black", linewidth=1, linestyle="--", label="80 %")
    ax.set_xlabel("n (samples)")
    ax.set_ylabel("detection rate at p < 0.05")
    ax.set_title("Power for a weak shared signal", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(figdir / "inference_power.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _markdown(null, cov, pw, weight, null_sims, resamples, check, seconds) -> str:
    lines = [
        "# Inference calibration (`benchmarks/inference.py calibration`)",
        "",
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; {seconds / 60:.1f} min. Every simulation "
        "is seeded (its index), so the numbers are reproducible bit for bit.",
        "",
        f"## 1. Null calibration: independent Gaussians, n = 200, p = q = 50, {null_sims} simulations",
        "",
        "Exact permutation test with the full cyclic-shift group of a random ordering: all n - 1 = 199 shifts "
        "(the group has no more at n = 200), p = (1 + #{null >= observed}) / 200.",
        "",
        "| measure | KS p-value (uniform) | rejection rate at 0.05 (MC s.e.) |",
        "|---|---:|---:|",
    ]
    for m in MEASURES:
        r = null[m]["reject"]
        lines.append(f"| {m} | {null[m]['ks']:.3f} | {r:.3f} ({_mc_se(r, null_sims):.3f}) |")
    lines += [
        "",
        f"## 2. Coverage of nominal 95 % intervals ({resamples} half-samples, percentile of the centred values)",
        "",
        f"x ~ N(0, I_p), y = x A + {cov['noise']} e with a fixed p x q map A, p = q = {cov['p']}: Sxx = I, Sxy = A, "
        f"Syy = A^T A + {cov['noise']}^2 I, so the population linear CKA is ||Sxy||_F^2 / (||Sxx||_F ||Syy||_F) "
        f"= {cov['truth']:.4f} (checked: the sample linear CKA of one draw of n = 200 000 is {check:.4f}).",
        "",
        "| n | simulations | debiased CKA coverage | biased CKA coverage | mean debiased | mean biased "
        "| mean width debiased / biased | MC s.e. at 0.95 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in sorted(cov["rows"].items()):
        d, b = row["debiased_cka"], row["linear_cka"]
        lines.append(
            f"| {n} | {row['sims']} | {d['coverage']:.3f} | {b['coverage']:.3f} | {d['mean']:.4f} | {b['mean']:.4f} "
            f"| {d['width']:.4f} / {b['width']:.4f} | {_mc_se(0.95, row['sims']):.3f} |"
        )
    ns = sorted(next(iter(pw.values())))
    lines += [
        "",
        f"## 3. Power: a weak shared signal (weight {weight}), detection at p < 0.05, 199 shift permutations",
        "",
        f"One latent s ~ N(0, 1) added with weight {weight} to the first of 20 unit-variance Gaussian features of both "
        f"x and y (canonical correlation {weight**2 / (1 + weight**2):.2f} on one direction, 19 noise features each).",
        "",
        "| measure | " + " | ".join(f"n = {n}" for n in ns) + " | smallest n with >= 80 % |",
        "|---|" + "---:|" * (len(ns) + 1),
    ]
    for m in MEASURES:
        enough = [n for n in ns if pw[m][n] >= 0.8]
        lines.append(
            f"| {m} | "
            + " | ".join(f"{pw[m][n]:.2f}" for n in ns)
            + f" | {enough[0] if enough else '> ' + str(ns[-1])} |"
        )
    return "\n".join(lines) + "\n"


def calibration(args) -> None:
    quick = args.quick
    null_sims = 60 if quick else args.sims
    ns = (50, 100, 200, 500, 1000)
    power_ns = (50, 100, 200, 300, 400, 600) if not quick else (100, 400)
    power_sims = 40 if quick else args.power_sims

    def sims_at(n):
        if quick:
            return 20
        return args.sims if n < 1000 else args.sims_large

    start = time.perf_counter()
    check = _check_population_cka(args.p, args.noise)
    null = null_calibration(null_sims)
    cov = coverage(ns, sims_at, args.resamples, args.p, args.noise)
    pw = power(power_ns, power_sims, args.weight)
    report = _markdown(null, cov, pw, args.weight, null_sims, args.resamples, check, time.perf_counter() - start)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    if args.figures:
        for path in _figures(null, cov, pw, Path(args.figures)):
            print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "calibration"])
    parser.add_argument("--n", type=int, default=5000, help="speed: samples")
    parser.add_argument("--d", type=int, default=512, help="speed: features")
    parser.add_argument("--b", type=int, default=1000, help="speed: permutations / resamples")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="calibration: few simulations, to budget a full run")
    parser.add_argument("--sims", type=int, default=500, help="calibration: null and coverage simulations (n < 1000)")
    parser.add_argument("--sims-large", type=int, default=200, help="calibration: coverage simulations at n = 1000")
    parser.add_argument("--power-sims", type=int, default=200, help="calibration: simulations per power cell")
    parser.add_argument("--resamples", type=int, default=200, help="calibration: half-samples per interval")
    parser.add_argument("--p", type=int, default=50, help="calibration: features of x and y in the coverage study")
    parser.add_argument("--noise", type=float, default=1.5, help="calibration: noise scale of y = x A + noise e")
    parser.add_argument("--weight", type=float, default=0.7, help="calibration: weight of the shared signal (power)")
    parser.add_argument("--out", help="calibration: also write the Markdown report here")
    parser.add_argument("--figures", help="calibration: folder for the PNG figures")
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.n, args.d, args.b, args.device)
    else:
        calibration(args)
