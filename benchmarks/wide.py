"""Wide layers: pytorch-cka's headline case (two ResNet-18s, 18 flattened layers, 32x32 inputs) against repsim.

Each method runs in its own process, so its peak RSS is its own; all of them in one run of this
script, one after another (two torch processes at once slow each other several-fold on 2 cores).

    .venv/bin/python benchmarks/wide.py                      # n = 1000, 5000, 10000 -> results_wide_cpu.md
    .venv/bin/python benchmarks/wide.py --sizes 1000 --smoke  # a quick check (the suite runs a smaller one)
    .venv/bin/python benchmarks/wide.py --device cuda         # on a GPU machine
    .venv/bin/python benchmarks/wide.py --ratios --repeats 5  # same-process ratios, phases: results_wide_ratios_cpu.md

``--ratios`` runs every method in one process, interleaved, ``--repeats`` times, and reports the
minimum wall and CPU (process) time of each and its ratio to the minibatch baseline: pytorch-cka
when it is importable (run the script with .benchvenv's python and PYTHONPATH=. for that),
otherwise ``reference minibatch``, the same arithmetic written here from Nguyen et al. (2021) and
Song et al. (2012): hooks that flatten, float32 Gram matrices of each batch, the unbiased HSIC.
On a shared machine CPU time is the steadier measure. A per-phase profile of each repsim method
follows (cProfile, CPU time, grouped by operation).

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


def _reference_minibatch(a, b, loader, layers):
    """Minibatch CKA as pytorch-cka computes it (its arithmetic, our code): flatten in hooks, float32 Gram
    matrices per batch, unbiased HSIC (Song et al. 2012) summed over batches."""
    import torch

    mods = {"a": dict(a.named_modules()), "b": dict(b.named_modules())}
    feats: dict = {}
    hooks = [mods[s][name].register_forward_hook(lambda m, i, o, key=(s, name): feats.__setitem__(key, o.flatten(1)))
             for s in ("a", "b") for name in layers]  # fmt: skip

    def hsic_terms(k, l):  # (L, b, b), (M, b, b) with zero diagonals
        n = k.shape[-1]
        ks, ls, kr, lr = k.sum((1, 2)), l.sum((1, 2)), k.sum(1), l.sum(1)
        tr = torch.einsum("aij,bij->ab", k, l)
        return (tr + torch.outer(ks, ls) / ((n - 1) * (n - 2)) - 2 * kr @ lr.T / (n - 2)) / (n * (n - 3))

    total = None
    with torch.no_grad():
        for x, _ in loader:
            a(x), b(x)
            grams = [torch.stack([(f := feats[(s, name)]) @ f.T for name in layers]) for s in ("a", "b")]
            k, l = (g - torch.diag_embed(g.diagonal(dim1=-2, dim2=-1)) for g in grams)
            terms = (hsic_terms(k, l), hsic_terms(k, k).diagonal(), hsic_terms(l, l).diagonal())
            total = terms if total is None else tuple(t + u for t, u in zip(total, terms, strict=True))
    for h in hooks:
        h.remove()
    return total[0] / (total[1][:, None] * total[2][None, :]).sqrt()


_PHASES = {  # cProfile function names -> phase (tottime summed); the rest is "other"
    "conv2d": "forward", "batch_norm": "forward", "max_pool2d": "forward", "linear": "forward", "relu_": "forward",
    "adaptive_avg_pool2d": "forward", "matmul": "products", "mm": "products", "bmm": "reductions",
    "aminmax": "validation", "amin": "validation", "amax": "validation", "isfinite": "validation",
    "center_columns": "centring", "column_mean": "centring", "_centred_grams": "centring + products",
    "mean": "centring", "to": "centring", "sub": "centring", "sub_": "centring", "cat": "hooks/flatten/concat",
    "flatten": "hooks/flatten/concat", "pool_features": "hooks/flatten/concat", "stack": "reductions",
    "sum": "reductions", "_add_block": "reductions", "gram_hsic_grid": "reductions", "rows": "RDM rows",
    "linalg_vector_norm": "norms", "blocks": "products", "__init__": "RDM setup", "add_": "RDM rows",
    "div_": "RDM rows", "add": "RDM rows",
}  # fmt: skip


def _phases(fn) -> dict:
    import cProfile
    import pstats

    prof = cProfile.Profile(time.process_time)
    prof.runcall(fn)
    out: dict = {}
    for (_, _, name), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
        key = name.strip("<>").replace("method '", "").replace("' of 'torch._C.TensorBase' objects", "")
        key = key.replace("built-in method ", "").split(".")[-1]  # torch.conv2d, torch._C._nn.linear -> the op
        phase = _PHASES.get(key, "other")
        out[phase] = out.get(phase, 0.0) + tottime
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run_ratios(args) -> str:
    """Every method in one process, interleaved, min of ``args.repeats``; ratios to the minibatch baseline."""
    a, b, loader = _setup(args.sizes[0], args.size, args.batch, args.device)
    import torch

    import repsim

    kw = {"layers_a": args.layers, "layers_b": args.layers, "pool": "flatten", "progress": False,
          "device": args.device, "memory": "16GB"}  # fmt: skip
    methods = {"reference minibatch": lambda: _reference_minibatch(a, b, loader, args.layers)}
    if args.cka_path:  # pytorch-cka from another environment's site-packages (it is pure Python)
        sys.path.append(args.cka_path)
    try:
        from cka import compute_cka

        methods["pytorch-cka"] = lambda: compute_cka(a, b, loader, layers=args.layers, device=args.device,
                                                     progress=False)  # fmt: skip
    except ImportError:
        pass
    methods.update({
        "repsim minibatch": lambda: repsim.compare(a, b, loader, measures=["minibatch_cka"], **kw),
        "repsim minibatch float32": lambda: repsim.compare(a, b, loader, measures=["minibatch_cka"], dtype=None, **kw),
        "repsim default": lambda: repsim.compare(a, b, loader, **kw),
        "forward passes": lambda: [(a(x), b(x)) for x, _ in loader],
    })  # fmt: skip
    import warnings

    warnings.simplefilter("ignore")  # the chance warning of biased CKA at d >> n, once per run: timing only here
    wall: dict = {m: [] for m in methods}
    cpu: dict = {m: [] for m in methods}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in methods.items():
                t, c = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    base = "pytorch-cka" if "pytorch-cka" in methods else "reference minibatch"
    lines = [f"# Wide layers, same-process ratios: n = {args.sizes[0]}, batch {args.batch}, {len(args.layers)} "
             f"flattened ResNet-18 layers, {args.size}x{args.size}", "",
             f"Device {args.device}, torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats "
             f"(min). Baseline: {base}.", "", "| method | wall (s) | CPU (s) | wall / baseline | CPU / baseline |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name in methods:
        w, c = min(wall[name]), min(cpu[name])
        lines.append(f"| {name} | {w:.3f} | {c:.3f} | {w / min(wall[base]):.2f} | {c / min(cpu[base]):.2f} |")
    lines += ["", "Phases (cProfile, CPU s, one run each):", ""]
    with torch.inference_mode():
        for name in ("repsim minibatch float32", "repsim minibatch", "repsim default"):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in _phases(methods[name]).items() if v >= 0.01)
            lines.append(f"- {name}: {phases}")
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
    p.add_argument("--ratios", action="store_true", help="same-process ratios and phases (first of --sizes)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats for --ratios (min reported)")
    p.add_argument("--cka-path", default=None, help="--ratios: a site-packages folder to import pytorch-cka from")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.size, args.batch, args.device, args.layers)))
        return
    if args.ratios:
        out = Path(args.out).with_name("results_wide_ratios_cpu.md") if args.out == p.get_default("out") else args.out
        text = run_ratios(argparse.Namespace(**{**vars(args), "sizes": args.sizes if args.sizes != [1000, 5000, 10000]
                                                 else [1000]}))  # fmt: skip
        Path(out).write_text(text)
        print(text)
        print(f"wrote {out}")
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
