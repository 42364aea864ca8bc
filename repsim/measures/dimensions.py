"""The effective number of shared dimensions (ENSD), a second-moment measure.

The participation ratio PR(C) = (tr C)^2 / tr(C^2) counts the dimensions a covariance C spreads
its variance over (d for an isotropic cloud in d dimensions, 1 for a line). ENSD extends it to a
pair of representations through their centred Gram matrices (Giaffar, Rojas Buxó & Aoi 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kinds import moment_measure

_GIAFFAR = (
    "Giaffar, Rojas Buxó & Aoi 2023, The effective number of shared dimensions: a simple method for "
    "revealing shared structure between datasets (bioRxiv)"
)


def _traces(s: Tensor, n: int, **_) -> tuple[Tensor, Tensor]:
    """tr K and tr K^2 of the centred Gram K = Xc Xc^T, from the scatter: tr S and |S|_F^2."""
    return torch.trace(s), s.square().sum()


def _ensd_pair(px, py, sxy, n, **_) -> Tensor:
    (tx, fx), (ty, fy) = px, py
    # tr(K_x K_y) = |Xc^T Yc|_F^2
    return tx * ty * sxy.square().sum() / (fx * fy)


@moment_measure(
    "ensd",
    differentiable=True,
    prepare=_traces,
    pair=_ensd_pair,
    family="cka",
    larger_is_more_similar=True,
    invariances=("orthogonal", "isotropic_scaling", "translation", "permutation"),
    cost="O(n d^2)",
    identity_value=None,  # ensd(x, x) is the participation ratio of x
    reference=_GIAFFAR,
)
def ensd(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Effective number of shared dimensions (Giaffar et al. 2023).

    ENSD = tr(K_x) tr(K_y) tr(K_x K_y) / (tr(K_x^2) tr(K_y^2)) for the centred Grams K_x = Xc Xc^T,
    K_y = Yc Yc^T; from the scatters, tr K_x = tr S_xx, tr K_x^2 = |S_xx|_F^2, tr(K_x K_y) = |S_xy|_F^2.
    ENSD(x, x) = PR(x) = (tr S_xx)^2 / |S_xx|_F^2, the participation ratio (so there is no fixed
    identity value), and ENSD = linear_cka(x, y) * sqrt(PR(x) PR(y)): a number of dimensions, not a
    score in [0, 1]. Invariant to rotations, isotropic
    scaling and translation. Exact from moments.
    """
