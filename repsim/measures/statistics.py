"""Differences of one summary statistic per representation (magnitude, concentricity, uniformity).

Each statistic summarises a representation by a single number; the measure is the absolute
difference of the two numbers (Klabunde et al. 2025, ReSi). Two representations that encode
entirely different things can have equal statistics, so these measures are necessary but not
sufficient signs of similarity. Each is a pseudo-metric (|a - b| of scalars).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import as_features, check_same_samples, resolve_dtype
from .registry import register

_ACC = torch.float64
_RESI = "Klabunde et al. 2025, ReSi (ICLR)"


def _pair(x, y, min_samples: int = 2) -> tuple[Tensor, Tensor]:
    x, y = as_features(x, "x", min_samples, varying=True), as_features(y, "y", min_samples, varying=True)
    check_same_samples(x, y)
    return x, y


def magnitude(x: Tensor) -> Tensor:
    """|mean_i x_i|_2: the length of the mean representation (Wang et al. 2020, as ReSi computes it)."""
    return x.to(_ACC).mean(0).norm()


def magnitude_difference(x: Tensor, y: Tensor) -> Tensor:
    """| |mean_i x_i|_2 - |mean_i y_i|_2 |, the difference of the mean representations' lengths.

    Invariant to rotations and permutations; not to scaling or translation. Exact from moments
    (the means).
    """
    x, y = _pair(x, y)
    return (magnitude(x) - magnitude(y)).abs()


def _unit_rows(x: Tensor, name: str) -> Tensor:
    norms = x.norm(dim=1, keepdim=True)
    if bool((norms <= 1e-12 * norms.max()).any()):
        raise ValueError(f"{name} has all-zero rows, whose direction (and cosine similarity) is undefined")
    return x / norms


def concentricity(x: Tensor) -> Tensor:
    """mean_i cos(x_i, mean_j x_j): how tightly the samples point along their mean (Wang et al. 2020)."""
    x = x.to(_ACC)
    mean = x.mean(0)
    if not bool(mean.norm() > 1e-12 * x.norm(dim=1).max()):
        raise ValueError("the mean representation is zero, so concentricity (cosine to the mean) is undefined")
    return (_unit_rows(x, "x") @ (mean / mean.norm())).mean()


def concentricity_difference(x: Tensor, y: Tensor) -> Tensor:
    """|concentricity(x) - concentricity(y)| with concentricity = mean_i cos(x_i, mean x).

    Invariant to rotations, isotropic scaling and permutations; not to translation.
    """
    x, y = _pair(x, y)
    return (concentricity(x) - concentricity(y)).abs()


def uniformity(x: Tensor, t: float = 2.0, normalize: bool = True, dtype: torch.dtype | None = None) -> Tensor:
    """Wang & Isola's (2020) uniformity log E_{i != j} exp(-t |z_i - z_j|^2), z_i = x_i / |x_i|.

    Computed with logsumexp over the n(n-1) ordered pairs, so it never underflows (a direct
    exp(-t d^2) underflows for unnormalised CNN features). ``normalize=False`` uses the raw rows
    (ReSi's variant, which also includes the i = j terms: not done here).
    """
    x = x.to(_ACC)
    z = _unit_rows(x, "x") if normalize else x - x.mean(0)  # centring leaves distances unchanged
    compute = resolve_dtype(dtype, z)
    zc = z.to(compute)
    sq = zc.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * zc @ zc.T).to(_ACC).clamp_min(0.0)
    n = x.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    return torch.logsumexp(-t * d2[off], dim=0) - math.log(n * (n - 1))


def uniformity_difference(
    x: Tensor, y: Tensor, t: float = 2.0, normalize: bool = True, dtype: torch.dtype | None = None
) -> Tensor:
    """|uniformity(x) - uniformity(y)| (Wang & Isola 2020 uniformity, t = 2, on L2-normalised rows).

    Invariant to rotations, isotropic scaling and permutations (with ``normalize=True``).
    O(n^2 d) time and memory.
    """
    if not t > 0:
        raise ValueError(f"t must be positive, got {t}")
    x, y = _pair(x, y)
    return (uniformity(x, t, normalize, dtype) - uniformity(y, t, normalize, dtype)).abs()


_STAT = {"family": "statistics", "larger_is_more_similar": False, "metric": True, "identity_value": 0.0}
register(
    "magnitude_difference",
    fn=magnitude_difference,
    invariances=("orthogonal", "permutation"),
    streaming=True,
    from_moments=lambda m: (m.mean_x.norm() - m.mean_y.norm()).abs(),
    cost="O(n d)",
    reference=_RESI + "; Wang et al. 2020",
    **_STAT,
)
register(
    "concentricity_difference",
    fn=concentricity_difference,
    invariances=("orthogonal", "isotropic_scaling", "permutation"),
    cost="O(n d)",
    reference=_RESI + "; Wang et al. 2020",
    **_STAT,
)
register(
    "uniformity_difference",
    fn=uniformity_difference,
    invariances=("orthogonal", "isotropic_scaling", "permutation"),
    cost="O(n^2 d), O(n^2) memory",
    reference=_RESI + "; Wang & Isola 2020 (ICML)",
    **_STAT,
)
