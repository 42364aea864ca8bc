"""Encoding models at scale: repsim.encoding_score against scikit-learn RidgeCV and himalaya
RidgeCV / KernelRidgeCV, each in its own subprocess (clean peak RSS), on memory-mapped float32
features; then the memory plan for Brain-Score's shapes (printed, nothing run).

    # reduced size (minutes on 2 shared cores):
    .venv/bin/python benchmarks/encoding.py --n 1000 --d 8000 --t 2000 > benchmarks/results_encoding_cpu.md
    # the issue's size (a) n = 4000, d = 50 000 (memory-mapped), t = 20 000:
    .venv/bin/python benchmarks/encoding.py --n 4000 --d 50000 --t 20000 --timeout 7200

The protocol for every method: the same 5 contiguous outer folds, the same α grid, α per target;
score = Pearson r over all held-out predictions. scikit-learn and repsim choose α by efficient
leave-one-out on the training fold (so their α and scores must agree to rounding); himalaya's
estimators choose it by an inner 5-fold split of the training fold (its own protocol: scores
differ by that). Peers run in the Python given by --peer-python (default: .benchvenv's, where
himalaya is installed; repsim itself is never imported there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = [float(10.0**k) for k in range(-3, 9)]


def make_data(folder: Path, n: int, d: int, t: int, seed: int = 0) -> None:
    """ReLU features of a 64-dimensional latent (memory-mapped, written in row chunks) and targets that
    read a random mix of the latent through noise of sd 0.5 .. 8 (reliable to noisy units)."""
    if (folder / "done.json").exists() and json.loads((folder / "done.json").read_text()) == [n, d, t, seed]:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 64)).astype(np.float32)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(n, d))
    for lo in range(0, d, 4096):
        hi = min(d, lo + 4096)
        w = rng.normal(size=(64, hi - lo)).astype(np.float32) / 8
        x[:, lo:hi] = np.maximum(z @ w + 0.5 * rng.normal(size=(n, hi - lo)).astype(np.float32), 0)
    x.flush()
    del x
    y = z @ rng.normal(size=(64, t)).astype(np.float32) / 8
    y += rng.normal(size=(n, t)).astype(np.float32) * np.linspace(0.5, 8, t, dtype=np.float32)
    np.save(folder / "y.npy", y)
    (folder / "done.json").write_text(json.dumps([n, d, t, seed]))


def folds(n: int, k: int = 5):
    from sklearn.model_selection import KFold

    return list(KFold(k).split(np.zeros((n, 1))))


def pooled_r(preds, y, splits) -> np.ndarray:
    held = np.concatenate([y[te] for _, te in splits]).astype(np.float64)
    p = np.concatenate(preds).astype(np.float64)
    p, held = p - p.mean(0), held - held.mean(0)
    return (p * held).sum(0) / np.sqrt((p * p).sum(0) * (held * held).sum(0))


def run_repsim(x, y, splits):
    import repsim

    res = repsim.encoding_score(x, y, alphas=ALPHAS, cv=splits, progress=False)
    return res.table["score"].to_numpy(), {"plan_peak_bytes": res.plans["features"].peak_bytes,
                                           "route": res.plans["features"].route}  # fmt: skip


def run_sklearn(x, y, splits):
    from sklearn.linear_model import RidgeCV

    xs = np.asarray(x)  # scikit-learn needs the features in RAM (and converts them to float64)
    preds = [RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(xs[tr], y[tr]).predict(xs[te]) for tr, te in splits]
    return pooled_r(preds, y, splits), {}


def run_himalaya(x, y, splits, kernel: bool):
    from himalaya.backend import set_backend
    from himalaya.kernel_ridge import KernelRidgeCV
    from himalaya.ridge import RidgeCV as HRidgeCV

    backend = set_backend("torch")
    xs = np.asarray(x)
    preds = []
    for tr, te in splits:
        model = KernelRidgeCV(alphas=ALPHAS, kernel="linear") if kernel else HRidgeCV(alphas=ALPHAS)
        model.fit(xs[tr], y[tr])
        preds.append(backend.to_numpy(model.predict(xs[te])))
    return pooled_r(preds, y, splits), {}


METHODS = {
    "repsim": ("ours", run_repsim),
    "sklearn RidgeCV": ("peer", run_sklearn),
    "himalaya KernelRidgeCV": ("peer", lambda x, y, s: run_himalaya(x, y, s, True)),
    "himalaya RidgeCV": ("peer", lambda x, y, s: run_himalaya(x, y, s, False)),
}


IMPORTS = {"repsim": "repsim", "sklearn RidgeCV": "sklearn.linear_model", "himalaya KernelRidgeCV": "himalaya.ridge",
           "himalaya RidgeCV": "himalaya.ridge"}  # fmt: skip


def rss_now() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def worker(method: str, folder: Path, out: Path) -> None:
    __import__(IMPORTS[method])  # before the baseline: the libraries' own memory is not the method's
    x = np.load(folder / "x.npy", mmap_mode="r")
    y = np.load(folder / "y.npy")
    splits = folds(x.shape[0])
    # warm-up on a corner of the data: the libraries' code pages (MKL's LAPACK, ...) load on first
    # use and would otherwise count as the method's memory
    METHODS[method][1](np.asarray(x[:60, :200]), y[:60, :20], folds(60))
    base = rss_now()
    start = time.perf_counter()
    scores, extra = METHODS[method][1](x, y, splits)
    seconds = time.perf_counter() - start
    np.save(out, scores)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "base_rss": base, **extra}))


def run_one(method: str, folder: Path, args) -> dict:
    python = sys.executable if METHODS[method][0] == "ours" else args.peer_python
    env = dict(os.environ, PYTHONPATH=str(ROOT) if METHODS[method][0] == "ours" else "",
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))  # fmt: skip
    out = folder / f"scores_{method.replace(' ', '_')}.npy"
    cmd = [python, __file__, "--worker", method, "--data", str(folder), "--out", str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"> {args.timeout} s (timed out)"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["scores"] = np.load(out)
    return info


def gb(b: float) -> str:
    return f"{b / 1e9:.2f} GB"


def compare(args) -> None:
    folder = Path(args.data_dir) / f"enc_{args.n}_{args.d}_{args.t}"
    make_data(folder, args.n, args.d, args.t)
    print(f"## (a) n = {args.n} stimuli, d = {args.d} features (float32 memmap), t = {args.t} targets\n")
    print(f"5 contiguous outer folds, {len(ALPHAS)} alphas (1e-3 .. 1e8), alpha per target, {args.threads} threads. "
          f"Machine: {os.cpu_count()} cores (shared with other jobs: timings are contended).\n")  # fmt: skip
    rows = {m: run_one(m, folder, args) for m in args.methods}
    ref = rows.get("repsim", {}).get("scores")
    print("| method | seconds | peak RSS (above the imports) | max abs r diff vs repsim | median r | note |")
    print("|---|---:|---:|---:|---:|---|")
    for m, info in rows.items():
        if "error" in info:
            print(f"| {m} | - | - | - | - | {info['error']} |")
            continue
        s = info["scores"]
        diff = "-" if ref is None or m == "repsim" else f"{np.nanmax(np.abs(s - ref)):.1e}"
        note = ""
        grown = info["peak_rss"] - info["base_rss"]
        if "plan_peak_bytes" in info:
            ratio = grown / info["plan_peak_bytes"]
            note = f"{info['route']} route; plan {gb(info['plan_peak_bytes'])} (RSS / plan {ratio:.2f})"
        print(f"| {m} | {info['seconds']:.1f} | {gb(info['peak_rss'])} ({gb(grown)}) | {diff} | {np.median(s):.4f} "
              f"| {note} |")
    print()


def brainscore_plans(budget: str) -> None:
    sys.path.insert(0, str(ROOT))  # this checkout's repsim, as the workers use
    import torch

    import repsim

    print(f"## (b) Memory plans for Brain-Score's shapes (budget {budget}; printed, not run)\n")
    cases = [
        ("ViT-L layer vs Allen2022 (22k stimuli x 148k features x 52k targets)", 22000, 148_000, 52_000),
        ("VGG16 conv1_1 (64 x 224 x 224 = 3.2M features) vs 52k targets", 22000, 3_211_264, 52_000),
        ("VGG16 fc7 (4096 features) vs 52k targets", 22000, 4096, 52_000),
    ]
    print("| case | route | targets per block | peak (plan) | fits | naive d x t float64 coefficients |")
    print("|---|---|---:|---:|---|---:|")
    for name, n, d, t in cases:
        p = repsim.plan_encoding(n, d, t, cv=5, dtype=torch.float32, memory=budget)
        print(f"| {name} | {p.route} | {p.block_size} | {gb(p.peak_bytes)} | {p.fits} | {gb(8.0 * d * t)} |")
    p = repsim.plan_encoding(22000, 148_000, 52_000, cv=5, dtype=torch.float32, memory=budget, layers=37)
    print(f"\n37 VGG16 layers run one after another: peak {gb(p.peak_bytes)} (the per-target results of all "
          "37 layers are the only part that grows with the number of layers).\n")  # fmt: skip
    print(p.describe() + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=8000)
    ap.add_argument("--t", type=int, default=2000)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--data-dir", default="/tmp/repsim_encoding_bench")
    ap.add_argument("--peer-python", default=str(ROOT / ".benchvenv/bin/python"))
    ap.add_argument("--budget", default="24GiB")
    ap.add_argument("--plans-only", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, Path(args.data), Path(args.out))
        return
    if not args.plans_only:
        compare(args)
    brainscore_plans(args.budget)


if __name__ == "__main__":
    main()
