"""Wide layers: pytorch-cka's headline case (two ResNet-18s, 18 flattened layers, 32x32 inputs) against repsim.

Each method runs in its own process, so its peak RSS is its own; all of them in one run of this
script, one after another (two torch processes at once slow each other several-fold on 2 cores).

    .venv/bin/python benchmarks/wide.py                      # n = 1000, 5000, 10000 -> results_wide_cpu.md
    .venv/bin/python benchmarks/wide.py --sizes 1000 --smoke  # a quick check (the suite runs a smaller one)
    .venv/bin/python benchmarks/wide.py --device cuda         # on a GPU machine

Methods (the peers from .benchvenv, see benchmarks/setup_env.sh):

* ``repsim default``: ``repsim.compare(..., pool="flatten")`` with the default measures (linear CKA,
  debiased CKA, RSA) under a 16 GB budget; ``repsim linear_cka`` with that measure only, in float64
  (the default) and with float32 products (``dtype=None``); ``repsim minibatch``: ``minibatch_cka``.
* ``pytorch-cka``: ``cka.compute_cka`` (1.1.3; minibatch CKA with the unbiased HSIC, float32).
* ``torch-cka``: ``torch_cka.CKA.compare`` (0.21; minibatch, unbiased HSIC), at n = 1000 only.
* ``bare products``: the products the exact plan must compute, on features extracted beforehand:
  X_l X_l^T for every layer of both models (n^2 sum d) and the L x M inner products of the Grams,
  in float64 and float32; plus the two models' forward passes alone.

Inputs are seeded Gaussian images (the timing does not depend on the pixels); the models are
randomly initialised torchvision ResNet-18s (seeds 0 and 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["conv1"] + [f"layer{i}.{j}.conv{k}" for i in range(1, 5) for j in range(2) for k in (1, 2)] + ["fc"]
BENCHVENV = ROOT / ".benchvenv" / "bin" / "python"
# past n = 5000 each exact run costs minutes: the default (one Gram pass) stands for the exact routes there
LARGE_N_SKIPPED = ("repsim linear_cka", "repsim linear_cka float32", "repsim minibatch")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _setup(n: int, size: int, batch: int, device: str):
    sys.path.insert(0, str(ROOT))
    import repsim  # noqa: F401  (first: makes torchvision importable with the CPU torch, see repsim/core/compat.py)

    # isort: split
    import torch
    import torchvision

    torch.manual_seed(0)
    a = torchvision.models.resnet18().to(device).eval()
    torch.manual_seed(1)
    b = torchvision.models.resnet18().to(device).eval()
    g = torch.Generator().manual_seed(2)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=batch)
    return a, b, loader


def run_one(method: str, n: int, size: int, batch: int, device: str, layers: list[str]) -> dict:
    a, b, loader = _setup(n, size, batch, device)
    import torch

    out: dict = {"method": method, "n": n, "size": size}
    base = _peak_rss()
    t0 = time.perf_counter()
    if method.startswith("repsim"):
        import repsim

        kw = {"layers_a": layers, "layers_b": layers, "pool": "flatten", "progress": False, "device": device,
              "memory": "16GB"}  # fmt: skip
        if method == "repsim default":
            res = repsim.compare(a, b, loader, **kw)
        elif method == "repsim linear_cka":
            res = repsim.compare(a, b, loader, measures=["linear_cka"], **kw)
        elif method == "repsim linear_cka float32":
            res = repsim.compare(a, b, loader, measures=["linear_cka"], dtype=None, **kw)
        elif method == "repsim minibatch":
            res = repsim.compare(a, b, loader, measures=["minibatch_cka"], **kw)
        elif method == "repsim minibatch float32":
            res = repsim.compare(a, b, loader, measures=["minibatch_cka"], dtype=None, **kw)
        else:
            raise ValueError(method)
        out["routes"] = sorted(set(res.table["route"]))
        first = res.table["measure"].iloc[0]
        out["values"] = res.matrix(first).to_numpy().tolist()
        if method == "repsim default":
            out["values_debiased"] = res.matrix("debiased_cka").to_numpy().tolist()
    elif method == "pytorch-cka":
        from cka import compute_cka

        out["values"] = compute_cka(a, b, loader, layers=layers, device=device, progress=False)[0].tolist()
    elif method == "torch-cka":
        from torch_cka import CKA

        cka = CKA(a, b, model1_layers=layers, model2_layers=layers, device=device)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cka.compare(loader)
        out["values"] = cka.export()["CKA"].tolist()
    elif method == "bare products":
        import repsim

        t_fwd = time.perf_counter()
        fa = repsim.extract_features(a, loader, layers=layers, pool="flatten", device=device, progress=False)[0]
        fb = repsim.extract_features(b, loader, layers=layers, pool="flatten", device=device, progress=False)[0]
        out["forward_s"] = time.perf_counter() - t_fwd
        for dtype in (torch.float64, torch.float32):
            feats = [f.to(dtype) for f in [*fa.values(), *fb.values()]]
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            sync()
            t = time.perf_counter()
            acc = torch.zeros(len(layers), len(layers), dtype=torch.float64, device=device)
            c = 1000  # rows per block, as the plan would
            for lo in range(0, n, c):
                blocks = torch.stack([(f[lo : lo + c] @ f.T).to(torch.float64).flatten() for f in feats])
                acc += blocks[: len(layers)] @ blocks[len(layers) :].T
            sync()
            out[f"products_{str(dtype).split('.')[-1]}_s"] = time.perf_counter() - t
        out["dims"] = [int(f.shape[1]) for f in fa.values()]
    else:
        raise ValueError(method)
    if device == "cuda":
        torch.cuda.synchronize()
        out["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    out["time_s"] = time.perf_counter() - t0
    out["peak_rss"] = _peak_rss()
    out["rss_before"] = base
    return out


def _launch(method: str, n: int, args) -> dict:
    python = str(BENCHVENV) if method in ("pytorch-cka", "torch-cka") else sys.executable
    if not Path(python).exists():
        return {"method": method, "n": n, "error": f"{python} missing: run benchmarks/setup_env.sh"}
    cmd = [python, __file__, "--one", method, "--n", str(n), "--size", str(args.size), "--batch", str(args.batch),
           "--device", args.device, "--layers", *args.layers]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "n": n, "error": f"timeout after {args.timeout} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        if proc.returncode < 0 or proc.returncode == 137:
            tail = [f"killed (signal {-proc.returncode})"]
        return {"method": method, "n": n, "error": tail[0][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(results: list[dict], args) -> str:
    import numpy as np

    lines = [
        f"# Wide layers: {len(args.layers)} flattened ResNet-18 layers, {args.size}x{args.size} inputs, "
        f"batch {args.batch}",
        "",
        f"Device: {args.device}. One run of `benchmarks/wide.py`; each method in its own process (peak RSS is its own, "
        "imports included). `exact - minibatch`: max |difference| over the layer grid between repsim's exact "
        "debiased CKA and the method's values (different estimators).",
        "",
        "| n | method | time (s) | peak RSS | route | max abs diff vs exact debiased CKA |",
        "|---:|---|---:|---:|---|---:|",
    ]
    exact = {
        r["n"]: np.array(r["values_debiased"])
        for r in results
        if r.get("method") == "repsim default" and "values_debiased" in r
    }
    for r in results:
        if "case" in r:
            continue
        if "error" in r:
            lines.append(f"| {r['n']} | {r['method']} | - | - | {r['error']} | - |")
            continue
        if r["method"] == "bare products":
            lines.append(
                f"| {r['n']} | bare products (float64 / float32), forward passes | "
                f"{r['products_float64_s']:.2f} / {r['products_float32_s']:.2f}, {r['forward_s']:.2f} | "
                f"{r['peak_rss'] / 1e9:.2f} GB | - | - |"
            )
            continue
        diff = "-"
        if r["n"] in exact and "values" in r and r["method"] != "repsim default":
            diff = f"{np.abs(np.array(r['values']) - exact[r['n']]).max():.3f}"
        route = ", ".join(r.get("routes", [])) or "minibatch (peer)"
        lines.append(
            f"| {r['n']} | {r['method']} | {r['time_s']:.2f} | {r['peak_rss'] / 1e9:.2f} GB | {route} | {diff} |"
        )
    single = [r for r in results if "case" in r and "error" not in r]
    if single:
        lines += ["", f"One layer: {single[0]['case']}, n = 256, linear CKA only.", "",
                  "| method | time (s) | peak RSS | route |", "|---|---:|---:|---|"]  # fmt: skip
        for r in single:
            route = ", ".join(r.get("routes", [])) or "minibatch (peer)"
            lines.append(f"| {r['method']} | {r['time_s']:.2f} | {r['peak_rss'] / 1e9:.2f} GB | {route} |")
    bare = {r["n"]: r for r in results if r.get("method") == "bare products" and "error" not in r}
    lines += ["", "Ratios (same run): exact route time minus forward passes, over the bare products it computes.", ""]
    exact_methods = ("repsim default", "repsim linear_cka", "repsim linear_cka float32")
    for r in results:
        if r.get("method") in exact_methods and r["n"] in bare and "error" not in r and "case" not in r:
            b = bare[r["n"]]
            key = "products_float32_s" if r["method"].endswith("float32") else "products_float64_s"
            lines.append(f"- n = {r['n']}, {r['method']}: ({r['time_s']:.2f} - {b['forward_s']:.2f}) / {b[key]:.2f} = "
                         f"{(r['time_s'] - b['forward_s']) / b[key]:.2f}")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--size", type=int, default=32, help="input resolution")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", nargs="+", default=LAYERS)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--smoke", action="store_true", help="repsim methods only, for a quick check")
    p.add_argument("--methods", nargs="+", default=None, help="a subset of the methods (default: all)")
    p.add_argument("--no-single", action="store_true", help="skip the one-layer d = 16384 case")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results_wide_cpu.md"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.size, args.batch, args.device, args.layers)))
        return
    methods = ["bare products", "repsim default", "repsim linear_cka", "repsim linear_cka float32",
               "repsim minibatch", "repsim minibatch float32", "pytorch-cka", "torch-cka"]  # fmt: skip
    if args.smoke:
        methods = ["repsim default", "repsim minibatch"]
    if args.methods:
        unknown = sorted(set(args.methods) - set(methods))
        if unknown:
            p.error(f"unknown methods {unknown}; choose from {methods}")
        methods = args.methods
    results = []
    for n in args.sizes:
        for method in methods:
            if method == "torch-cka" and n > 1000:
                continue
            if n > 5000 and not args.methods and method in LARGE_N_SKIPPED:
                continue
            r = _launch(method, n, args)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if not k.startswith("values")}), flush=True)
    if not (args.smoke or args.no_single):  # the one-layer case: layer1 of ResNet-18 at 64 x 64 (d = 16384), n = 256
        one = argparse.Namespace(**{**vars(args), "size": 64, "layers": ["layer1"]})
        for method in ("repsim linear_cka", "pytorch-cka"):
            r = _launch(method, 256, one)
            r["case"] = "layer1 at 64x64 (d = 16384)"
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if not k.startswith("values")}), flush=True)
    text = _table(results, args)
    Path(args.out).write_text(text)
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
