"""Mutual kNN at scale: time, peak memory and recall of the neighbourhood measures against the peers.

    PYTHONPATH=$PWD python benchmarks/knn_scale.py --n 10000 100000 --d 64 768 \\
        --out benchmarks/results_knn_scale_cpu.md --figure docs/guide/figures/knn_scale.png

Methods, side by side (each case in its own subprocess, so peak RSS is the case's own):

* ``platonic (reimpl.)``: platonic-rep's ``metrics.py::mutual_knn`` (as ``compute_score`` calls it)
  reimplemented from its published formula, not its code: unit rows, a full ``argsort`` of the dense
  n x n inner products per side (the lists are its first k columns), two dense n x n float masks,
  mean over rows of (mask_a * mask_b).sum(1) / k. Peak about 28 n^2 bytes (two n x n int64 sorts
  kept alive by the lists, two masks and their product). It has no calibration.
* ``calibrated-similarity``: the PyPI package ``calibrated-similarity`` 0.1.1 (Groeger, Wen & Brbic;
  bench venv only), ``calibrate`` / ``calibrate_layers`` wrapping the function above: one pair of
  searches per permutation.
* ``repsim exact`` / ``repsim approx``: ``repsim.mutual_knn``, ``repsim.calibrate`` and
  ``repsim.calibrate_grid`` (``knn="exact"`` / ``knn="approx", recall=0.95``); the null relabels
  the lists (no search per permutation).

Tasks: ``pair`` (one uncalibrated value), ``calibrated`` (B permutations), ``grid`` (a 4 x 4 layer grid,
max aggregate, calibrated with B permutations; the platonic column gives the uncalibrated maximum).
A case whose predicted peak (platonic: 28 n^2 bytes) exceeds the memory left is reported as OOM
and not run; a case whose predicted time (from a measured matmul rate) exceeds ``--max-seconds`` is
reported as skipped. Data: a shared 16-dim latent mapped to d dims per layer plus noise (float32).

The exact lists at n = 10^6, computed once, resumably (blocks saved atomically), then compared with
the approximate route (recall@k over all n, and the mutual-kNN values):

    PYTHONPATH=$PWD python benchmarks/knn_scale.py --exact-lists /tmp/knn1e6 --n 1000000 --d 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("platonic", "calibrated-similarity", "repsim exact", "repsim approx")
TASKS = ("pair", "calibrated", "grid")
LATENT = 16


# -------------------------------------------------------------------------------- data
def layer(n: int, d: int, seed: int, noise: float) -> torch.Tensor:
    """One layer of the shared-latent data: latent (n, 16) @ W (16, d) + noise, float32, by blocks."""
    latent_rng, rng = np.random.default_rng(0), np.random.default_rng(seed)
    w = rng.standard_normal((LATENT, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        z = np.random.default_rng([0, s]).standard_normal((e - s, LATENT), dtype=np.float32)
        out[s:e] = z @ w + noise * rng.standard_normal((e - s, d), dtype=np.float32)
    del latent_rng
    return torch.from_numpy(out)


def layers(n: int, d: int, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs = [layer(n, d, 1 + i, 0.5 + 0.5 * i) for i in range(count)]
    ys = [layer(n, d, 101 + i, 1.0 + 0.5 * i) for i in range(count)]
    return xs, ys


# -------------------------------------------------------------------------------- the peer's formula
def platonic_mutual_knn(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Reimplementation (from the published formula, not its code) of platonic-rep's mutual kNN as its
    ``measure_alignment.compute_score`` runs it: unit rows; each side's lists are the first k of a full
    descending ``argsort`` of the dense n x n inner products (diagonal set to -1e8), kept as views of
    that n x n int64 tensor; two dense n x n float masks; mean over rows of (mask_a * mask_b).sum / k."""

    def lists(f):
        f = torch.nn.functional.normalize(f, p=2, dim=-1)
        return (f @ f.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :k]

    knn_a, knn_b = lists(a), lists(b)
    n = knn_a.shape[0]
    rows = torch.arange(n).unsqueeze(1)
    mask_a, mask_b = torch.zeros(n, n), torch.zeros(n, n)
    mask_a[rows, knn_a] = 1.0
    mask_b[rows, knn_b] = 1.0
    return float(((mask_a * mask_b).sum(dim=1) / k).mean())


PLATONIC_BYTES = 28
"""Peak bytes per n^2 of the formula above: the two argsorts' n x n int64 results stay alive (the lists
are views of them), plus two float masks and their product (2 x 8 + 3 x 4); the argsort itself
briefly holds the n x n similarities and sorted values beside its indices."""


# -------------------------------------------------------------------------------- one case (child process)
def _repsim_case(task: str, route: str, xs, ys, k: int, b: int) -> dict:
    import repsim

    opts = {"k": k, "knn": route} | ({"recall": 0.95} if route == "approx" else {})
    with repsim.knn_cache() as cache:
        if task == "pair":
            value = float(repsim.mutual_knn(xs[0], ys[0], **opts))
        elif task == "calibrated":
            value = repsim.calibrate(xs[0], ys[0], "mutual_knn", n_permutations=b, seed=0, **opts).score
        else:
            value = repsim.calibrate_grid(xs, ys, "mutual_knn", aggregate="max", n_permutations=b, seed=0, **opts).score
    lists = cache.computed
    out = {"value": value, "route": cache.routes()}
    if route == "approx":
        out["recall"] = min(item.recall for item in lists)
    spent = {}
    for item in lists:
        for key, seconds in item.timings.items():
            spent[key] = spent.get(key, 0.0) + seconds
    out["timings"] = spent
    return out


def _peer_case(method: str, task: str, xs, ys, k: int, b: int) -> dict:
    if method == "platonic":
        if task == "pair":
            return {"value": platonic_mutual_knn(xs[0], ys[0], k)}
        if task == "grid":
            return {"value": max(platonic_mutual_knn(x, y, k) for x in xs for y in ys)}
        return {"skipped": "no calibration in platonic-rep"}
    try:
        import calibrated_similarity as cs
    except ImportError:
        return {"skipped": "calibrated-similarity not installed (bench venv)"}
    if task == "pair":
        return {"skipped": "calibration only"}

    def sim(p, q):
        return platonic_mutual_knn(torch.as_tensor(p), torch.as_tensor(q), k)

    if task == "calibrated":
        score, _, _ = cs.calibrate(xs[0], ys[0], sim, K=b, alpha=0.05)
    else:
        score, _, _ = cs.calibrate_layers(xs, ys, sim, agg="max", K=b, alpha=0.05)
    return {"value": float(score)}


def child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    count = spec["layers"] if spec["task"] == "grid" else 1
    xs, ys = layers(spec["n"], spec["d"], count)
    import repsim  # noqa: F401  (imported before the clock starts: every method pays it equally otherwise)

    if spec["method"] == "calibrated-similarity":
        with contextlib.suppress(ImportError):
            import calibrated_similarity  # noqa: F401
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    method = spec["method"]
    if method.startswith("repsim"):
        out = _repsim_case(spec["task"], method.split()[1], xs, ys, spec["k"], spec["b"])
    else:
        out = _peer_case(method, spec["task"], xs, ys, spec["k"], spec["b"])
    out["seconds"] = time.perf_counter() - start
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["data_rss"] = base_rss
    return out


# -------------------------------------------------------------------------------- predictions (parent)
def rates(threads: int) -> tuple[float, float]:
    """Multiply-adds per second of a float32 block product like the exact search's, and elements per
    second of a full row argsort like the platonic formula's (best of 3 each)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(512, 64), torch.randn(64, 20000)
    products, sorts = math.inf, math.inf
    for _ in range(3):
        t = time.perf_counter()
        sims = a @ b
        products = min(products, time.perf_counter() - t)
        t = time.perf_counter()
        sims.argsort(dim=1, descending=True)
        sorts = min(sorts, time.perf_counter() - t)
    return 512 * 64 * 20000 / products, 512 * 20000 / sorts


def predicted(spec: dict, rate: tuple[float, float], available: int) -> str | None:
    """Why a case is not run (predicted OOM or too slow), or None."""
    n, d, b, count = spec["n"], spec["d"], spec["b"], spec["layers"]
    method, task = spec["method"], spec["task"]
    data = (2 * count if task == "grid" else 2) * n * d * 4
    search = float(n) * n * d / rate[0]  # seconds of one exact search
    sort = float(n) * n * max(1.0, math.log2(n) / math.log2(20000)) / rate[1]  # one full n x n argsort
    if method == "platonic" and task == "calibrated":
        return "no calibration in platonic-rep"
    if method in ("platonic", "calibrated-similarity"):
        if PLATONIC_BYTES * n * n + data > available:
            return f"OOM (predicted {PLATONIC_BYTES * n * n / 1e9:.0f} GB for the n x n sorts and masks)"
        calls = {"pair": 1, "calibrated": b + 1, "grid": (b + 1 if method != "platonic" else 1) * count * count}
        seconds = 2 * (search + sort) * calls[task]
    elif method == "repsim exact":
        seconds = search * (2 * count if task == "grid" else 2)
    else:
        seconds = 0.0
    if seconds > spec["max_seconds"]:
        return f"skipped (predicted {seconds:.0f} s > --max-seconds)"
    return None


def run_case(spec: dict, rate: tuple[float, float], available: int) -> dict:
    why = predicted(spec, rate, available)
    if why is not None:
        return {**spec, "skipped": why, "oom": why.startswith("OOM")}
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=spec["max_seconds"] * 3 + 600)
    if proc.returncode != 0:
        killed = proc.returncode in (-9, 137)
        return {**spec, "skipped": "OOM (killed)" if killed else proc.stderr[-400:], "oom": killed}
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1]), "oom": False}


# -------------------------------------------------------------------------------- exact lists at 10^6, resumable
def _save_npy(path: Path, array: np.ndarray) -> None:
    from repsim.core.io import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def _mutual(a: np.ndarray, b: np.ndarray) -> float:
    k = a.shape[1]
    common = sum(int((a[s : s + 65536, :, None] == b[s : s + 65536, None, :]).sum()) for s in range(0, len(a), 65536))
    return common / (a.shape[0] * k)


def exact_lists(directory: Path, n: int, d: int, k: int, block: int, threads: int) -> dict:
    """Exact lists of the pair's two layers, block by block (each saved atomically; a rerun resumes),
    then the approximate route's lists against them: recall@k over all n and both mutual-kNN values."""
    from tqdm.auto import tqdm

    import repsim
    from repsim.core.io import atomic_write_text
    from repsim.measures.knn import exact_indices, unit_rows_in

    torch.set_num_threads(threads)
    directory.mkdir(parents=True, exist_ok=True)
    xs, ys = layers(n, d, 1)
    exact, spent = {}, 0.0
    for side, features in (("x", xs[0]), ("y", ys[0])):
        z = unit_rows_in(features, None)
        starts = range(0, n, block)
        for start in tqdm(starts, desc=f"exact lists of {side}"):
            path = directory / f"{side}_{start:09d}.npy"
            if path.exists():
                continue
            t = time.perf_counter()
            rows = torch.arange(start, min(n, start + block))
            _save_npy(path, exact_indices(z, k, rows=rows).numpy())
            spent += time.perf_counter() - t
        exact[side] = np.concatenate([np.load(directory / f"{side}_{s:09d}.npy") for s in starts])
    approx, recall, t = {}, {}, time.perf_counter()
    for side, features in (("x", xs[0]), ("y", ys[0])):
        lists = repsim.knn_lists(features, k=k, knn="approx", recall=0.95)
        approx[side] = lists.indices.numpy()
        hits = sum(
            int((approx[side][s : s + 65536, :, None] == exact[side][s : s + 65536, None, :]).any(-1).sum())
            for s in range(0, n, 65536)
        )
        recall[side] = {"all_n": hits / (n * k), "sampled": lists.recall, "route": lists.describe()}
    summary = {
        "n": n, "d": d, "k": k, "exact_seconds_this_run": spent, "approx_seconds": time.perf_counter() - t,
        "mutual_knn_exact": _mutual(exact["x"], exact["y"]), "mutual_knn_approx": _mutual(approx["x"], approx["y"]),
        "recall": recall,
    }  # fmt: skip
    atomic_write_text(directory / "summary.json", json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {directory / 'summary.json'}")
    return summary


# -------------------------------------------------------------------------------- report
def _cell(r: dict) -> str:
    if "skipped" in r:
        return r["skipped"].split(" (")[0] if r.get("oom") else r["skipped"]
    text = f"{r['seconds']:.1f} s, {r['peak_rss'] / 2**30:.2f} GB, {r['value']:.3f}"
    return text + (f", recall {r['recall']:.3f}" if "recall" in r else "")


def markdown(results: list[dict], exact_summary: dict | None, header: str) -> str:
    lines = [header, "", "Each cell: wall time, peak RSS of the case's process (data included), value (the mutual-kNN",
             "value, or the calibrated score), and for the approximate route the recall@10 measured on a seeded query",
             "sample. OOM: predicted from the peer's n x n sorts and masks (28 n^2 bytes) and not run.", "",
             "| n | d | task | " + " | ".join(METHODS) + " |", "|---:|---:|---|" + "---|" * len(METHODS)]  # fmt: skip
    keyed = {(r["method"], r["task"], r["n"], r["d"]): r for r in results}
    for n, d, task in sorted(
        {(r["n"], r["d"], r["task"]) for r in results}, key=lambda c: (c[0], c[1], TASKS.index(c[2]))
    ):
        cells = [_cell(keyed[(m, task, n, d)]) if (m, task, n, d) in keyed else "-" for m in METHODS]
        lines.append(f"| {n} | {d} | {task} | " + " | ".join(cells) + " |")
    lines += ["", "Where repsim's time goes (seconds summed over the case's searches; *rest* = the wall time minus",
              "the searches: for a calibrated case the B relabelled-list nulls, the observed values and the checks,",
              "all in the same process, so *(searches + rest) / searches* is the calibration's cost factor):", "",
              "| n | d | task | route | products | selection | index build | recall check | index search "
              "| rescoring | rest | (searches + rest) / searches |",
              "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        if r["method"].startswith("repsim") and "timings" in r:
            t = r["timings"]
            searches = sum(t.values())
            rest = r["seconds"] - searches
            lines.append(f"| {r['n']} | {r['d']} | {r['task']} | {r['method'].split()[1]} | {t.get('products', 0):.1f} "
                         f"| {t.get('selection', 0):.1f} | {t.get('build', 0):.1f} "
                         f"| {t.get('truth', 0) + t.get('tune', 0):.1f} | {t.get('search', 0):.1f} "
                         f"| {t.get('rescoring', 0):.1f} | {rest:.1f} | {r['seconds'] / searches:.2f} |")  # fmt: skip
    if exact_summary:
        lines += ["", "## n = 10^6 against the exact lists", "", "```", json.dumps(exact_summary, indent=1), "```"]
    return "\n".join(lines) + "\n"


def figure(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repsim.core.io import atomic_save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ran = [r for r in results if r["d"] == 64 and "seconds" in r and "skipped" not in r]
    for method, marker in zip(METHODS, "osD^", strict=True):
        for task, style in (("pair", "-"), ("calibrated", "--")):
            rows = sorted((r for r in ran if r["method"] == method and r["task"] == task), key=lambda r: r["n"])
            if rows:
                n, label = [r["n"] for r in rows], f"{method}, {task}"
                axes[0].loglog(n, [r["seconds"] for r in rows], style, marker=marker, label=label)
                axes[1].loglog(n, [r["peak_rss"] / 2**30 for r in rows], style, marker=marker, label=label)
    sizes = sorted({r["n"] for r in results} | {10**6})
    grid = np.logspace(math.log10(min(sizes)), math.log10(max(sizes)), 30)
    axes[1].loglog(grid, PLATONIC_BYTES * grid**2 / 2**30, ":", color="C0", label="platonic, predicted 28 n^2 bytes")
    axes[1].axhline(24, color="grey", lw=0.8)
    axes[1].text(grid[0], 26, "this machine: 24 GB", fontsize=7, color="grey")
    ooms = sorted({r["n"] for r in results if r.get("oom") and r["d"] == 64 and r["method"] == "platonic"})
    if ooms:
        axes[1].plot(ooms, [24] * len(ooms), "x", color="C0", ms=9, label="platonic: OOM (not run)")
    axes[0].set(xlabel="n (samples)", ylabel="seconds", title="mutual kNN, k = 10, d = 64: time (contended CPU)")
    axes[1].set(xlabel="n (samples)", ylabel="peak RSS (GB)", title="peak memory (data included)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--d", type=int, nargs="+", default=[64, 768])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--layers", type=int, default=4, help="layers per model in the grid task")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=1200.0, help="skip cases predicted to take longer")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results_knn_scale_cpu.json"),
                   help="raw results; new cases replace old ones of the same key, the rest are kept")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("benchmarks/results_knn_scale_cpu.md"))
    p.add_argument("--figure", type=Path, default=Path("docs/guide/figures/knn_scale.png"))
    p.add_argument("--exact-lists", type=Path, help="compute the exact lists resumably into this folder, then stop")
    p.add_argument("--block", type=int, default=8192, help="rows per saved block of --exact-lists")
    p.add_argument("--render-only", action="store_true", help="rewrite the table and figure from --json, run nothing")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.exact_lists:
        exact_lists(args.exact_lists, args.n[0], args.d[0], args.k, args.block, args.threads)
        return
    from repsim.core.budget import available_memory
    from repsim.core.io import atomic_write_text

    rate = rates(args.threads)
    old = json.loads(args.json.read_text()) if args.json.exists() else []
    results = {(r["method"], r["task"], r["n"], r["d"]): r for r in old}
    for n in [] if args.render_only else args.n:
        for d in args.d:
            for task in args.tasks:
                for method in args.methods:
                    spec = dict(method=method, task=task, n=n, d=d, k=args.k, b=args.permutations,
                                layers=args.layers, threads=args.threads, max_seconds=args.max_seconds)  # fmt: skip
                    r = run_case(spec, rate, available_memory())
                    results[(method, task, n, d)] = r
                    print(f"n={n} d={d} {task:<10} {method:<22} {_cell(r)}", flush=True)
                    atomic_write_text(args.json, json.dumps(list(results.values()), indent=1))
    rows = list(results.values())
    summary_path = Path(os.environ.get("KNN_EXACT_SUMMARY", "/nonexistent"))
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if args.render_only:
        command = "Rendered from the raw results of several runs (their commands: benchmarks/README.md)."
    else:
        command = f"`{' '.join(sys.argv)}` (float32 matmul rate {rate[0] / 1e9:.1f} G multiply-adds/s at the start)"
    header = (f"# Mutual kNN at scale (CPU)\n\n{command}\n\n{args.threads} thread(s) per case, torch "
              f"{torch.__version__}, {platform.processor() or platform.machine()}; a shared 2-core machine (timings "
              "contended: compare within a row). GPU column: blocked (no GPU lent to this task).")  # fmt: skip
    atomic_write_text(args.out, markdown(rows, summary, header))
    figure(rows, args.figure)
    print(f"wrote {args.out}, {args.json}, {args.figure}")


if __name__ == "__main__":
    main()
