"""The linear probe against scikit-learn's LogisticRegressionCV on digits pixels, over 10 random splits.

    .venv/bin/python benchmarks/probe_vs_sklearn.py > benchmarks/results_probe_vs_sklearn.md

Both standardise with train statistics and choose the L2 strength by stratified 5-fold CV on train.
"""

import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import probes


def split_scores(seed: int) -> tuple[float, float, float, float]:
    x, y = load_digits(return_X_y=True)
    a, b, c, d = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    start = time.perf_counter()
    ours = probes.linear_probe(torch.tensor(a), torch.tensor(c), torch.tensor(b), torch.tensor(d), seed=seed).top1
    t_ours = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(max_iter=3000)).fit(a, c)
        t_sk = time.perf_counter() - start
    return ours, model.score(b, d), t_ours, t_sk


if __name__ == "__main__":
    rows = [split_scores(s) for s in range(10)]
    print(
        "| split | repsim probes top-1 | LogisticRegressionCV top-1 | difference (points) | seconds (ours / sklearn) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for s, (o, k, to, tk) in enumerate(rows):
        print(f"| {s} | {o:.4f} | {k:.4f} | {100 * (o - k):+.2f} | {to:.1f} / {tk:.1f} |")
    diff = 100 * (np.array([r[0] for r in rows]) - np.array([r[1] for r in rows]))
    print(f"\nmean difference {diff.mean():+.2f} points, worst split {diff.min():+.2f} points")
