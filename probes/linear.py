"""Linear probe: multinomial logistic regression on frozen, standardised features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from repsim.core.deprecation import deprecated_arguments

from ._checks import topk_accuracy, train_test

# half-decade steps from 1e-5 to 1e-1 (lambda = 1/(C n) in scikit-learn's terms)
DEFAULT_L2 = tuple(float(v) for v in 10.0 ** torch.arange(-5.0, -0.5, 0.5))


@dataclass
class LinearProbeResult:
    top1: float
    top5: float | None
    l2: float
    """The chosen L2 strength (lambda in mean CE + lambda/2 |W|^2)."""
    validation: dict[float, float]
    """Cross-validated top-1 (mean over the folds) for every strength of the grid."""


def _fit(
    x: Tensor, y: Tensor, n_classes: int, l2: float, max_iter: int, start=None, tolerance: float = 1e-9
) -> tuple[Tensor, Tensor]:
    """Full-batch L-BFGS (strong Wolfe) on mean cross-entropy + l2/2 |W|_F^2 (bias not penalised).

    ``start``: (W, b) to warm-start from (the neighbouring strength's solution: the grid is
    walked from strong to weak penalties, which converges in a fraction of the iterations)."""
    if start is None:
        w = torch.zeros(x.shape[1], n_classes, dtype=x.dtype, device=x.device)
        b = torch.zeros(n_classes, dtype=x.dtype, device=x.device)
    else:
        w, b = (t.clone() for t in start)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=tolerance,
        tolerance_change=tolerance * 1e-3,
    )
    onehot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype)

    def closure():
        # the gradient in closed form (d CE / d logits = (softmax - onehot) / n): on probe-sized
        # problems autograd's bookkeeping cost more than the two matrix products it replaces
        logits = x @ w + b
        log_z = torch.logsumexp(logits, dim=1, keepdim=True)
        loss = (log_z.squeeze(1) - (logits * onehot).sum(1)).mean() + 0.5 * l2 * w.pow(2).sum()
        g = (torch.exp(logits - log_z) - onehot) / len(x)
        w.grad = x.T @ g + l2 * w
        b.grad = g.sum(0)
        return loss

    opt.step(closure)
    return w, b


@deprecated_arguments(positional=("l2_grid", "folds", "max_iter", "seed", "device", "dtype"))
def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2,
    folds: int = 5,
    max_iter: int = 500,
    seed: int = 0,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> LinearProbeResult:
    """Multinomial logistic regression trained full batch with L-BFGS on the features' device.

    Features are standardised with the training mean and std. The L2 strength is chosen from
    ``l2_grid`` (half-decades from 1e-5 to 1e-1) by stratified ``folds``-fold cross-validation on
    train (seeded): the strength with the best mean validation top-1, ties broken toward the
    middle of the tied range (a plateau's centre is the most stable choice); then the probe is
    refit on all of train. ``lambda`` corresponds to scikit-learn's ``C = 1/(lambda n)``.
    Returns top-1, top-5 (when there are more than 5 classes) and the chosen strength.
    """
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
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
    fold_of = torch.empty(len(ytr), dtype=torch.long)
    for c in range(n_classes):  # stratified folds: each class dealt round-robin after a shuffle
        members = (ytr == c).nonzero().flatten().cpu()
        if len(members) < folds:
            raise ValueError(f"class {classes[c].item()} has {len(members)} training samples, fewer than folds={folds}")
        fold_of[members[torch.randperm(len(members), generator=g)]] = torch.arange(len(members)) % folds
    fold_of = fold_of.to(device)
    grid = sorted(float(v) for v in l2_grid)
    scores = {v: [] for v in grid}
    for k in range(folds):
        train_mask = fold_of != k
        start = None
        for l2 in reversed(grid):  # strong to weak: each fit warm-starts from the previous one
            # selection needs the ranking of strengths, not 1e-9 optima: a looser tolerance there
            start = _fit(xtr[train_mask], ytr[train_mask], n_classes, l2, min(max_iter, 100), start, 1e-5)
            w, b = start
            scores[l2].append(topk_accuracy(xtr[~train_mask] @ w + b, ytr[~train_mask], 1))
    validation = {v: sum(s) / len(s) for v, s in scores.items()}
    top = max(validation.values())
    tied = [v for v in grid if validation[v] >= top - 1e-12]
    best = tied[(len(tied) - 1) // 2]  # the middle of the tied range
    w, b = _fit(xtr, ytr, n_classes, best, max_iter)
    scores = xte @ w + b
    return LinearProbeResult(
        top1=topk_accuracy(scores, yte, 1),
        top5=topk_accuracy(scores, yte, 5) if n_classes > 5 else None,
        l2=best,
        validation=validation,
    )
