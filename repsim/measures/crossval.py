"""Cross-validated shape distance: fit the alignment on some samples, measure it on the others.

The in-sample shape metrics (:func:`repsim.angular_shape`) choose the best rotation for the very
samples they score, so with many features and few samples they report a small distance even for
unrelated representations (the rotation fits noise). Fitting the centring, partial whitening and
rotation on training samples and scoring held-out samples removes that optimism (the practice of
netrep's ``fit`` / ``score``; Williams et al. 2021, Generalized shape metrics on neural
representations, NeurIPS). The value depends on the split, so this is a
plain function, not a registry entry.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.validation import as_feature_pair
from .alignment import angle_of_cosine, check_alpha, partial_whitening

__all__ = ["crossvalidated_shape"]


def _train_mask(train, n: int, seed: int) -> Tensor:
    if isinstance(train, float) and not isinstance(train, bool):
        if not 0.0 < train < 1.0:
            raise ValueError(f"train as a fraction must be in (0, 1) (the share of samples to fit on), got {train}")
        k = round(train * n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[:k]] = True
        return mask
    mask = torch.as_tensor(train)
    if mask.dtype != torch.bool or mask.shape != (n,):
        raise ValueError(
            f"train must be a fraction in (0, 1) or a boolean mask of the {n} samples, got a {mask.dtype} "
            f"tensor of shape {tuple(mask.shape)}; e.g. train=0.5"
        )
    return mask.cpu()


def crossvalidated_shape(
    x: Tensor, y: Tensor, *, train: float | Tensor = 0.5, alpha: float = 1.0, seed: int = 0
) -> Tensor:
    """Angular shape distance with the alignment fitted on training samples, scored on the rest.

    ``train``: a boolean mask of the n samples, or a fraction of them drawn at random (``seed``);
    the test samples are the others. Fitted on the training samples only: the means mu_x, mu_y,
    the partial whitening Z_x, Z_y of :func:`repsim.angular_shape` (from the training covariance,
    ``alpha`` in [0, 1]) and the rotation: with A = phi_x^T phi_y = U S V^T over the training
    samples (phi_x = (X - mu_x) Z_x), the partial isometry U V^T. On the test samples
    (centred with the training means):

        d = arccos( tr(U^T phi_x^T phi_y V) / (|phi_x|_F |phi_y|_F) ),

    which is :func:`repsim.angular_shape` when the test samples are the training samples. Widths
    may differ (zero-padding convention). Needs at least 3 training and 2 test samples; with
    ``alpha < 1`` the training covariance must have full rank. A float64 0-d tensor; not exact
    from moments of the whole set (it depends on the split).
    """
    check_alpha(alpha)
    x, y = as_feature_pair(x, y, min_samples=5, varying=True)
    n = x.shape[0]
    mask = _train_mask(train, n, seed).to(x.device)
    n_train = int(mask.sum())
    if n_train < 3 or n - n_train < 2:
        raise ValueError(
            f"crossvalidated_shape needs at least 3 training and 2 test samples; the split has {n_train} and "
            f"{n - n_train} of {n}; change train="
        )
    x64, y64 = x.to(torch.float64), y.to(torch.float64)
    mu_x, mu_y = x64[mask].mean(0), y64[mask].mean(0)
    xtr, ytr = x64[mask] - mu_x, y64[mask] - mu_y
    zx = partial_whitening(xtr.T @ xtr, n_train, alpha).z
    zy = partial_whitening(ytr.T @ ytr, n_train, alpha).z
    u, _, vh = torch.linalg.svd((xtr @ zx).T @ (ytr @ zy), full_matrices=False)
    px, py = (x64[~mask] - mu_x) @ zx, (y64[~mask] - mu_y) @ zy
    norms = px.norm() * py.norm()
    if not bool(norms > 0):
        raise ValueError("the test samples of x or y all sit at the training mean; use another split")
    return angle_of_cosine(torch.trace(u.T @ px.T @ py @ vh.T) / norms)
