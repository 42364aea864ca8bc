"""Weighted k-nearest-neighbour classifier on cosine similarity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from repsim.core.deprecation import deprecated_arguments

from ._checks import topk_accuracy, train_test


@dataclass
class KNNResult:
    top1: float
    top5: float | None
    k: int
    temperature: float


@deprecated_arguments(renamed={"chunk_size": "block_size"}, positional=("k", "temperature", "block_size", "device"))
@torch.no_grad()
def knn(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    block_size: int = 1024,
    device=None,
) -> KNNResult:
    """Cosine-similarity weighted kNN (Wu et al. 2018): class score = sum over the k nearest
    training samples of that class of exp(cos / temperature).

    Defaults k = 20, temperature = 0.07 follow DINO's evaluation protocol (Caron et al. 2021),
    which solo-learn and most self-supervised papers report; the weighting makes the result
    insensitive to k compared with majority voting. The test x train similarity matrix is never
    materialised whole: test samples go ``block_size`` at a time.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    train_x, train_y, test_x, test_y, classes = train_test(train_x, train_y, test_x, test_y)
    device = torch.device(device) if device is not None else train_x.device
    k = min(k, len(train_x))
    lookup = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    lookup[classes] = torch.arange(len(classes))
    ytr, yte = lookup[train_y].to(device), lookup[test_y].to(device)
    bank = torch.nn.functional.normalize(train_x.to(device, torch.float32), dim=1)
    one_hot = torch.nn.functional.one_hot(ytr, len(classes)).float()
    correct1 = correct5 = 0.0
    for start in range(0, len(test_x), block_size):
        q = torch.nn.functional.normalize(test_x[start : start + block_size].to(device, torch.float32), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        scores = torch.einsum("nk,nkc->nc", weights, one_hot[idx])
        target = yte[start : start + block_size]
        correct1 += topk_accuracy(scores, target, 1) * len(target)
        correct5 += topk_accuracy(scores, target, 5) * len(target)
    n = len(test_x)
    return KNNResult(correct1 / n, correct5 / n if len(classes) > 5 else None, k, temperature)
