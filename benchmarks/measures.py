"""CKA/RSA speed, memory and agreement: repsim against the float64 reference, the matrix-product
bound and the peer packages, each method in its own subprocess (clean peak-memory numbers).

    bash benchmarks/setup_env.sh && .benchvenv/bin/python benchmarks/measures.py [--device cuda] [--quick]

Prints a markdown table; ratios are against the bare matrix products of the same case (float32
and float64) and against repsim's float32 path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {
    "pair": {"n": 10_000, "dims": [2048], "layers": 1},
    "grid": {"n": 5_000, "dims": [512], "layers": 8},
    "rsa": {"n": 2_000, "dims": [512], "layers": 1},
}
QUICK = {
    "pair": {"n": 2_000, "dims": [256], "layers": 1},
    "grid": {"n": 1_000, "dims": [128], "layers": 8},
    "rsa": {"n": 500, "dims": [64], "layers": 1},
}


def make_data(case: dict, device: str):
    """Post-ReLU-like features with a shared signal and a large mean (the float32 trap)."""
    import torch

    g = torch.Generator().manual_seed(0)
    n, d, layers = case["n"], case["dims"][0], case["layers"]
    shared = torch.randn(n, 64, generator=g)

    def layer():
        w = torch.randn(64, d, generator=g) / 8
        return (torch.relu(shared @ w + torch.randn(n, d, generator=g)) + 3.0).to(device)

    return [layer() for _ in range(layers)], [layer() for _ in range(layers)]


RESI_TREE = Path(__file__).resolve().parents[1] / ".benchvenv" / "peers" / "resi"


def methods():
    """name -> (function of (xs, ys), estimator). Imports are lazy: ReSi's package is also named
    ``repsim``, so its rows run in a process that never imports ours (see run_one)."""
    import numpy as np
    import peers
    import torch

    def ours(dtype, debiased=False):
        def run(xs, ys):
            import repsim

            return repsim.cka_grid(xs, ys, debiased=debiased, dtype=dtype).cpu().numpy()

        return run

    def bound(dtype):
        """The products no exact method avoids: X^T Y for every pair and X^T X, Y^T Y per layer."""

        def run(xs, ys):
            xc = torch.cat(xs, 1).to(dtype)
            yc = torch.cat(ys, 1).to(dtype)
            cross = xc.T @ yc
            selfs = [x.to(dtype).T @ x.to(dtype) for x in xs] + [y.to(dtype).T @ y.to(dtype) for y in ys]
            del cross, selfs
            return np.full((len(xs), len(ys)), np.nan)

        return run

    def reference(xs, ys):
        """Textbook per-pair loop in float64 numpy: Kornblith et al.'s feature-space formula."""
        out = np.zeros((len(xs), len(ys)))
        for i, x in enumerate(xs):
            for j, y in enumerate(ys):
                a, b = x.double().cpu().numpy(), y.double().cpu().numpy()
                a, b = a - a.mean(0), b - b.mean(0)
                out[i, j] = np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
        return out

    return {
        "repsim default (dtype=None)": (ours(None), "biased"),
        "repsim debiased default": (ours(None, True), "debiased"),
        "repsim float64": (ours(torch.float64), "biased"),
        "repsim float32 products": (ours(torch.float32), "biased"),
        "repsim debiased float64": (ours(torch.float64, True), "debiased"),
        "repsim debiased float32": (ours(torch.float32, True), "debiased"),
        "Kornblith numpy float64 (loop)": (reference, "biased"),
        "bound: bare products float32": (bound(torch.float32), None),
        "bound: bare products float64": (bound(torch.float64), None),
        "ReSi CKA (loop)": (peers.resi_cka_grid, "biased"),
        "anatome linear_cka_distance (loop)": (peers.anatome_cka_grid, "biased"),
        "anatome debiased (loop)": (lambda xs, ys: peers.anatome_cka_grid(xs, ys, True), "debiased"),
        "netrep LinearCKA (Gram space, loop)": (peers.netrep_cka_grid, "biased"),
        "ckatorch (float64, Gram)": (lambda xs, ys: peers.ckatorch_grid(xs, ys), "biased"),
        "ckatorch debiased": (lambda xs, ys: peers.ckatorch_grid(xs, ys, True), "debiased"),
        "pytorch-cka (unbiased HSIC, clamped)": (peers.pytorch_cka_grid, "debiased"),
        "torch-cka (_HSIC, O(n^3))": (peers.torch_cka_grid, "debiased"),
        "repsim PyPI (C++/Eigen) gretton": (lambda xs, ys: peers.peer_repsim_grid(xs, ys), "biased"),
        "repsim PyPI (C++/Eigen) song": (lambda xs, ys: peers.peer_repsim_grid(xs, ys, True), "debiased"),
    }


def rsa_methods():
    import peers

    import repsim

    return {
        "repsim rsa (correlation RDM, Pearson)": (
            lambda x, y: repsim.rsa(x, y, rdm="correlation", compare="pearson").item(),
            "rsa",
        ),
        "rsatoolbox (correlation RDM, corr)": (peers.rsatoolbox_rsa, "rsa"),
    }


def run_one(case_name: str, method: str, device: str, quick: bool) -> dict:
    import torch

    if method.startswith("ReSi"):
        sys.path.insert(0, str(RESI_TREE))  # ReSi's "repsim" shadows ours in this process only
    torch.set_num_threads(os.cpu_count() or 1)
    case = (QUICK if quick else CASES)[case_name]
    xs, ys = make_data(case, device)
    table = rsa_methods() if case_name == "rsa" else methods()
    fn, _ = table[method]
    args = (xs[0], ys[0]) if case_name == "rsa" else (xs, ys)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    def timed():
        start = time.perf_counter()
        out = fn(*args)
        if device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    value, first = timed()
    # the first call pays one-off costs (lazy imports, allocator and thread-pool warm-up): drop it
    # when repeating is cheap, keep it as one of three runs when a call takes long
    times = [] if first < 2 else [first]
    while len(times) < (5 if first < 2 else 3) and sum(times) < 30:
        value, seconds = timed()
        times.append(seconds)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    )
    import numpy as np

    arr = np.atleast_2d(np.asarray(value, dtype=float))
    return {
        "seconds": statistics.median(times),
        "peak_mb": peak,
        "value": float(arr[0, 0]),
        "corner": float(arr[-1, -1]),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--timeout", type=int, default=300)
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--methods", nargs="+", default=None, help="only the methods whose name contains one of these")
    p.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        print(json.dumps(run_one(*args.run, args.device, args.quick)))
        return
    import torch

    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"device: {device_name}\n")
    for case_name in args.cases:
        case = (QUICK if args.quick else CASES)[case_name]
        names = list(rsa_methods() if case_name == "rsa" else methods())
        if args.methods:
            names = [n for n in names if any(m in n for m in args.methods)]
        if args.device == "cuda":
            names = [
                n
                for n in names
                if n.startswith(("repsim ", "bound", "reference", "pytorch-cka", "ckatorch"))
                and "PyPI" not in n
                and "rsatoolbox" not in n
            ]
        results = {}
        for name in names:
            cmd = [sys.executable, __file__, "--run", case_name, name, "--device", args.device]
            cmd += ["--quick"] if args.quick else []
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                results[name] = (
                    json.loads(proc.stdout.strip().splitlines()[-1])
                    if proc.returncode == 0
                    else {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:80]}
                )
            except subprocess.TimeoutExpired:
                results[name] = {"error": f"> {args.timeout} s"}
            print(f"  {case_name}: {name}: {results[name]}", file=sys.stderr)
        bound = results.get("bound: bare products float32", {}).get("seconds")
        bound64 = results.get("bound: bare products float64", {}).get("seconds")
        ours = results.get("repsim default (dtype=None)", results.get("repsim rsa (correlation RDM, Pearson)", {}))
        n, d, layers = case["n"], case["dims"][0], case["layers"]
        print(f"### {case_name}: n = {n}, d = {d}, {layers}x{layers} layer pair(s)\n")
        print("| method | seconds | x bound f32 | x bound f64 | x repsim default | peak MB | value [0,0] |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            if "error" in r:
                print(f"| {name} | {r['error']} | | | | | |")
                continue
            rb = f"{r['seconds'] / bound:.2f}" if bound else ""
            rb64 = f"{r['seconds'] / bound64:.2f}" if bound64 else ""
            ro = f"{r['seconds'] / ours['seconds']:.2f}" if ours.get("seconds") else ""
            value = "" if r["value"] != r["value"] else f"{r['value']:.10f}"
            print(f"| {name} | {r['seconds']:.3f} | {rb} | {rb64} | {ro} | {r['peak_mb']:.0f} | {value} |")
        print()


if __name__ == "__main__":
    main()
