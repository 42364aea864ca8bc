"""Linear probe: multinomial logistic regression on frozen, standardised features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import topk_accuracy, train_test

DEFAULT_L2 = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearProbeResult:
    top1: float
    top5: float | None
    l2: float
    """The chosen L2 strength (lambda in mean CE + lambda/2 |W|^2)."""
    validation: dict[float, float]
    """Validation top-1 for every strength of the grid."""


def _fit(x: Tensor, y: Tensor, n_classes: int, l2: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Full-batch L-BFGS (strong Wolfe) on mean cross-entropy + l2/2 |W|_F^2 (bias not penalised)."""
    w = torch.zeros(x.shape[1], n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    l2_grid: Sequence[float] = DEFAULT_L2,
    val_fraction: float = 0.2,
    max_iter: int = 500,
    seed: int = 0,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> LinearProbeResult:
    """Multinomial logistic regression trained full batch with L-BFGS on the features' device.

    Features are standardised with the training mean and std. The L2 strength is chosen from
    ``l2_grid`` by top-1 on a held-out ``val_fraction`` of train (stratified, seeded), then the
    probe is refit on all of train. ``lambda`` corresponds to scikit-learn's ``C = 1/(lambda n)``.
    Returns top-1, top-5 (when there are more than 5 classes) and the chosen strength.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not l2_grid or any(v < 0 for v in l2_grid):
        raise ValueError("l2_grid must be a non-empty list of non-negative strengths")
    train_x, train_y, test_x, test_y, classes = train_test(train_x, train_y, test_x, test_y)
    device = torch.device(device) if device is not None else train_x.device
    # labels -> 0..C-1 in the order of the sorted training classes
    index = {c: i for i, c in enumerate(classes.tolist())}
    to_index = lambda y: torch.tensor([index[c] for c in y.tolist()], device=device)  # noqa: E731
    ytr, yte = to_index(train_y), to_index(test_y)
    xtr, xte = train_x.to(device, dtype), test_x.to(device, dtype)
    mean, std = xtr.mean(0), xtr.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay at zero
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    n_classes = len(classes)

    g = torch.Generator().manual_seed(seed)
    val_mask = torch.zeros(len(ytr), dtype=torch.bool)
    for c in range(n_classes):  # stratified hold-out
        members = (ytr == c).nonzero().flatten().cpu()
        members = members[torch.randperm(len(members), generator=g)]
        val_mask[members[: round(val_fraction * len(members))]] = True
    val_mask = val_mask.to(device)
    validation = {}
    for l2 in l2_grid:
        w, b = _fit(xtr[~val_mask], ytr[~val_mask], n_classes, l2, max_iter)
        validation[float(l2)] = topk_accuracy(xtr[val_mask] @ w + b, ytr[val_mask], 1)
    best = max(validation, key=lambda v: (validation[v], v))  # ties: the stronger penalty
    w, b = _fit(xtr, ytr, n_classes, best, max_iter)
    scores = xte @ w + b
    return LinearProbeResult(
        top1=topk_accuracy(scores, yte, 1),
        top5=topk_accuracy(scores, yte, 5) if n_classes > 5 else None,
        l2=best,
        validation=validation,
    )
