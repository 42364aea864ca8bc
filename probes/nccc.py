"""Nearest class-centre classifier with m-shot episodes (few-shot error as the NSCL papers report it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor

from repsim.core.deprecation import deprecated_arguments

from ._checks import train_test


@deprecated_arguments(positional=("shots", "episodes", "normalize", "seed", "device"))
@torch.no_grad()
def nccc(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    shots: int | Sequence[int] = (1, 5, 10),
    episodes: int = 100,
    normalize: bool = False,
    seed: int = 0,
    device=None,
) -> pd.DataFrame:
    """Nearest class-centre accuracy with ``m`` training samples per class, averaged over episodes.

    Each episode draws ``m`` random training samples per class, takes their mean as the class
    centre and assigns every test sample to the nearest centre (Euclidean; on L2-normalised
    features when ``normalize``). Returns a DataFrame with one row per m: shots, accuracy (mean
    over episodes), std, ci_low, ci_high (normal 95% interval of the mean), episodes.
    """
    train_x, train_y, test_x, test_y, classes = train_test(train_x, train_y, test_x, test_y)
    shots = [shots] if isinstance(shots, int) else list(shots)
    counts = torch.stack([(train_y == c).sum() for c in classes])
    smallest = int(counts.min())
    if any(m < 1 for m in shots) or max(shots) > smallest:
        raise ValueError(f"shots must be between 1 and the smallest class size ({smallest}); got {shots}")
    if episodes < 2:
        raise ValueError(f"episodes must be >= 2 for a confidence interval, got {episodes}")
    device = torch.device(device) if device is not None else train_x.device
    xtr, xte = train_x.to(device, torch.float32), test_x.to(device, torch.float32)
    if normalize:
        xtr, xte = torch.nn.functional.normalize(xtr, dim=1), torch.nn.functional.normalize(xte, dim=1)
    members = [(train_y == c).nonzero().flatten() for c in classes]
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    target = torch.tensor([lookup[c] for c in test_y.tolist()], device=device)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for m in shots:
        accs = []
        for _ in range(episodes):
            picks = torch.stack([idx[torch.randperm(len(idx), generator=g)[:m]] for idx in members])  # (C, m)
            centres = xtr[picks.to(device)].mean(dim=1)
            pred = torch.cdist(xte, centres).argmin(dim=1)
            accs.append((pred == target).double().mean().item())
        acc = torch.tensor(accs, dtype=torch.float64)
        mean, std = acc.mean().item(), acc.std().item()
        half = 1.96 * std / math.sqrt(episodes)
        rows.append(
            {
                "shots": m,
                "accuracy": mean,
                "std": std,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "episodes": episodes,
            }
        )
    return pd.DataFrame(rows)
