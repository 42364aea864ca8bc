"""repsim.compare of two ResNet-18s (CIFAR stem) over CIFAR-sized inputs, all 5x5 block pairs, on the CPU.

    .venv/bin/python benchmarks/compare_resnet.py [--n 10000] [--batch 500]

Splits the time into forward passes (with hooks and pooling) and similarity (streaming
accumulator updates + compute), and compares peak memory with the store-all-features approach
(extract every layer's features, then one cka_grid). Each approach runs in its own subprocess.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

LAYERS = ["relu", "layer1", "layer2", "layer3", "layer4"]


def models():
    import torch

    import repsim  # noqa: F401
    from zoo.models import cifar_resnet

    torch.manual_seed(0)
    a = cifar_resnet(18)
    torch.manual_seed(1)
    b = cifar_resnet(18)
    return a.eval(), b.eval()


def batches(n: int, batch: int):
    import torch

    g = torch.Generator().manual_seed(0)
    for start in range(0, n, batch):
        yield torch.randn(min(batch, n - start), 3, 32, 32, generator=g)


def run(mode: str, n: int, batch: int) -> dict:
    import torch

    import repsim
    from repsim.networks.hooks import FeatureHooks, forward_features

    torch.set_num_threads(torch.get_num_threads())
    a, b = models()
    if mode in ("bare", "compare"):  # whole-call wall time: repsim.compare vs a bare inference loop
        data = list(batches(n, batch))
        start = time.perf_counter()
        if mode == "bare":
            with torch.inference_mode():
                for x in data:
                    a(x), b(x)
        else:
            repsim.compare(a, b, data, layers=LAYERS, measures=["linear_cka"], progress=False, device="cpu")
        return {"total_s": time.perf_counter() - start}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_forward = t_similarity = 0.0
    with torch.no_grad(), FeatureHooks(a, LAYERS) as ha, FeatureHooks(b, LAYERS) as hb:
        if mode == "streaming":
            acc = repsim.StreamingLinearCKA()
            for x in batches(n, batch):
                start = time.perf_counter()
                fa, fb = forward_features(a, ha, x), forward_features(b, hb, x)
                t_forward += time.perf_counter() - start
                start = time.perf_counter()
                acc.update(list(fa.values()), list(fb.values()))
                t_similarity += time.perf_counter() - start
            start = time.perf_counter()
            grid = acc.compute()
            t_similarity += time.perf_counter() - start
        else:
            store_a, store_b = [], []
            for x in batches(n, batch):
                start = time.perf_counter()
                store_a.append(forward_features(a, ha, x))
                store_b.append(forward_features(b, hb, x))
                t_forward += time.perf_counter() - start
            start = time.perf_counter()
            xs = [torch.cat([s[k] for s in store_a]) for k in LAYERS]
            ys = [torch.cat([s[k] for s in store_b]) for k in LAYERS]
            grid = repsim.cka_grid(xs, ys)
            t_similarity = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {
        "forward_s": t_forward,
        "similarity_s": t_similarity,
        "peak_extra_mb": peak,
        "cka_layer4": float(grid[-1, -1]),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ratio", action="store_true", help="only compare vs a bare inference loop over both models")
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args.n, args.batch)))
        return
    import torch

    def sub(mode: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--n", str(args.n), "--batch", str(args.batch)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    if args.ratio:
        bare, comp = sub("bare")["total_s"], sub("compare")["total_s"]
        print(
            f"n = {args.n}, batch {args.batch}: bare inference loop {bare:.2f} s, repsim.compare (5x5 linear CKA) "
            f"{comp:.2f} s, ratio {comp / bare:.2f}"
        )
        return

    print(
        f"n = {args.n} CIFAR-sized inputs, batch {args.batch}, 2 ResNet-18 (CIFAR stem), 5x5 block pairs, "
        f"CPU with {torch.get_num_threads()} threads\n"
    )
    print("| approach | forward s | similarity s | similarity / forward | peak extra MB | CKA layer4 |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in ("streaming", "store-all"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--n", str(args.n), "--batch", str(args.batch)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {mode} | {r['forward_s']:.1f} | {r['similarity_s']:.2f} | "
            f"{r['similarity_s'] / r['forward_s']:.3f} | {r['peak_extra_mb']:.0f} | {r['cka_layer4']:.10f} |"
        )


if __name__ == "__main__":
    main()
