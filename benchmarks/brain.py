"""Models against brains: rsatoolbox's values on the 92-image data, and crossnobis + model evaluation at scale.

    PYTHONPATH=$PWD /work/main/.benchvenv/bin/python benchmarks/brain.py --record        # values for the tests
    PYTHONPATH=$PWD /work/main/.benchvenv/bin/python benchmarks/brain.py --time \
        --out benchmarks/results_brain_cpu.md

``--record`` runs rsatoolbox (installed only in the bench venv) on tests/data/kriegeskorte92/rdms.npz
(human IT, 4 subjects, sessions averaged; the 8 model RDMs): ``boot_noise_ceiling`` and ``eval_fixed``
for every comparator both libraries have, and ``eval_bootstrap_rdm`` / ``eval_bootstrap_pattern`` /
``eval_dual_bootstrap`` (no crossvalidation) for one comparator, and writes
tests/data/kriegeskorte92/rsatoolbox_values.json with the rsatoolbox version. The tests compare
repsim with these values (1e-6 for deterministic ones, Monte-Carlo error for bootstraps).

``--time`` runs each side in its own process (peak memory = that process's max RSS) on a simulated
case: crossnobis RDMs of S subjects x K conditions x P channels x R runs given one noise
precision (values checked equal), then K_models model RDMs evaluated against the S subject RDMs
(eval_fixed, Spearman). The default size runs in a few minutes on a shared 2-core machine; pass
``--subjects 20 --conditions 1000 --channels 5000 --runs 8 --models 100`` for the issue's case.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "kriegeskorte92"
METHODS = ["corr", "spearman", "cosine", "rho-a", "tau-a", "corr_cov", "cosine_cov"]


def _k92():
    """Subject and model RDMs in float64 (the MATLAB files hold float32; rsatoolbox would compute in float32)."""
    z = np.load(DATA / "rdms.npz")
    return z["hit"].astype(np.float64).mean(1), list(z["model_names"]), z["models"].astype(np.float64)


def record(n_resamples: int, boot_method: str) -> None:
    import warnings

    from rsatoolbox.inference import (
        boot_noise_ceiling,
        eval_bootstrap_pattern,
        eval_bootstrap_rdm,
        eval_dual_bootstrap,
        eval_fixed,
    )
    from rsatoolbox.model import ModelFixed
    from rsatoolbox.rdm import RDMs

    warnings.simplefilter("ignore")
    subjects, names, models = _k92()
    data = RDMs(subjects)
    mods = [ModelFixed(nm, RDMs(m[None])) for nm, m in zip(names, models, strict=True)]
    from importlib.metadata import version

    out = {"rsatoolbox": version("rsatoolbox"), "methods": {}, "models": names}
    for method in METHODS:
        res = eval_fixed(mods, data, method=method)
        out["methods"][method] = {
            "noise_ceiling": [float(v) for v in boot_noise_ceiling(data, method=method)],
            "fixed_mean": res.get_means().tolist(),
            "fixed_sem": res.get_sem().tolist(),
            "fixed_p_zero": res.test_zero().tolist(),
            "fixed_p_ceiling": res.test_noise().tolist(),
        }
        print(method, out["methods"][method]["noise_ceiling"], flush=True)
    np.random.seed(0)  # noqa: NPY002  (rsatoolbox draws from numpy's global generator)
    boot = {"method": boot_method, "n_resamples": n_resamples, "modes": {}}
    for mode, fn in (("subjects", eval_bootstrap_rdm), ("stimuli", eval_bootstrap_pattern)):
        res = fn(mods, data, method=boot_method, N=n_resamples)
        boot["modes"][mode] = {"sem": res.get_sem().tolist(), "boot_mean": res.get_means().tolist()}
        print(mode, boot["modes"][mode]["sem"], flush=True)
    res = eval_dual_bootstrap(mods, data, method=boot_method, N=n_resamples, k_pattern=1, k_rdm=1)
    # get_means of a dual bootstrap averages the three kinds of sample: only the corrected SEM is compared
    boot["modes"]["both"] = {"sem": res.get_sem().tolist(), "boot_mean": None}
    out["bootstrap"] = boot
    path = DATA / "rsatoolbox_values.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote: {path}")


# -------------------------------------------------------------------------------- timing
def _simulate(s, k, p, r, seed=0):
    g = np.random.default_rng(seed)
    true = g.normal(size=(k, p)).astype(np.float64)
    x = np.stack([np.concatenate([true + g.normal(size=(k, p)) for _ in range(r)]) for _ in range(s)])
    a = g.normal(size=(p, p)) / np.sqrt(p)
    prec = a @ a.T + np.eye(p)
    return x, np.repeat(np.arange(r), k), np.tile(np.arange(k), r), prec


def worker(lib: str, s: int, k: int, p: int, r: int, n_models: int) -> dict:
    """One library's crossnobis RDMs and fixed-model evaluation; imports and a tiny warm-up run are not timed."""
    x, runs, conds, prec = _simulate(s, k, p, r)
    g = np.random.default_rng(1)
    models = g.random((n_models, k * (k - 1) // 2))
    run = _repsim_run if lib == "repsim" else _rsatoolbox_run
    wx, wr, wc, wp = _simulate(2, 5, 4, 2)
    run(wx, wr, wc, wp, g.random((2, 10)))  # warm-up: imports, lazy scipy modules
    return run(x, runs, conds, prec, models)


def _repsim_run(x, runs, conds, prec, models) -> dict:
    import torch

    import repsim

    t0 = time.perf_counter()
    rdms = repsim.rdm(torch.from_numpy(x), method="crossnobis", runs=runs, conditions=conds, noise=prec)
    vec = repsim.to_condensed(rdms).numpy()
    t1 = time.perf_counter()
    table = repsim.evaluate_rdm_models({f"m{i}": v for i, v in enumerate(models)}, vec, method="spearman").table
    return _report(t0, t1, vec, table["mean"].to_numpy())


def _rsatoolbox_run(x, runs, conds, prec, models) -> dict:
    import rsatoolbox
    from rsatoolbox.inference import eval_fixed
    from rsatoolbox.model import ModelFixed
    from rsatoolbox.rdm import RDMs

    t0 = time.perf_counter()
    vecs = []
    for i in range(x.shape[0]):
        ds = rsatoolbox.data.Dataset(x[i], obs_descriptors={"conds": conds, "runs": runs})
        rdm = rsatoolbox.rdm.calc_rdm(ds, method="crossnobis", descriptor="conds", cv_descriptor="runs", noise=prec)
        vecs.append(rdm.get_vectors()[0])
    vec = np.stack(vecs)
    t1 = time.perf_counter()
    mods = [ModelFixed(f"m{i}", RDMs(v[None])) for i, v in enumerate(models)]
    return _report(t0, t1, vec, eval_fixed(mods, RDMs(vec), method="spearman").get_means())


def _report(t0, t1, vec, means) -> dict:
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"crossnobis_s": t1 - t0, "evaluate_s": t2 - t1, "peak_bytes": peak, "rdm_head": vec[:, :5].tolist(),
            "means_head": list(map(float, means[:5]))}  # fmt: skip


def timing(args) -> None:
    size = ["--subjects", str(args.subjects), "--conditions", str(args.conditions), "--channels",
            str(args.channels), "--runs", str(args.runs), "--models", str(args.models)]  # fmt: skip
    res = {}
    for lib in ("repsim", "rsatoolbox"):
        proc = subprocess.run([sys.executable, __file__, "--worker", lib, *size], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        res[lib] = json.loads(proc.stdout.strip().splitlines()[-1])
    same_rdm = np.allclose(res["repsim"]["rdm_head"], res["rsatoolbox"]["rdm_head"], rtol=1e-8, atol=1e-10)
    same_eval = np.allclose(res["repsim"]["means_head"], res["rsatoolbox"]["means_head"], atol=1e-8)
    lines = [
        "## Crossnobis RDMs and model evaluation: repsim vs rsatoolbox (CPU)\n",
        f"{args.subjects} subjects x {args.conditions} conditions x {args.channels} channels x {args.runs} runs "
        f"(one given noise precision); {args.models} model RDMs, eval_fixed with Spearman. Each library in its own "
        "process; peak = max RSS of that process (data included). Shared 2-core machine: contended timings.\n",
        "| library | crossnobis (s) | evaluation (s) | peak memory (GB) |", "|---|---:|---:|---:|",
    ]
    for lib, r in res.items():
        lines.append(f"| {lib} | {r['crossnobis_s']:.2f} | {r['evaluate_s']:.2f} | {r['peak_bytes'] / 1e9:.2f} |")
    lines.append(f"\nRDMs equal (first entries, rtol 1e-8): {same_rdm}; model means equal (1e-8): {same_eval}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote: {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--worker", default=None, choices=["repsim", "rsatoolbox"])
    ap.add_argument("--n-resamples", type=int, default=1000)
    ap.add_argument("--boot-method", default="corr")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--conditions", type=int, default=300)
    ap.add_argument("--channels", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.subjects, args.conditions, args.channels, args.runs, args.models)))
    elif args.record:
        record(args.n_resamples, args.boot_method)
    elif args.time:
        timing(args)
    else:
        ap.error("pass --record and/or --time")


if __name__ == "__main__":
    main()
