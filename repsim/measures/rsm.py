"""Measures on representational similarity matrices and subspaces: distance correlation,
eigenspace overlap, GULP and the RSM norm difference.

Eigenspace overlap and GULP are functions of second moments and stream exactly; distance
correlation and the RSM norm difference need all n x n distances (O(n^2) memory).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import as_feature_list, as_features, check_choice, check_same_samples, resolve_dtype
from . import _moment_grid as mg
from .gram import squared_distances
from .registry import register

_ACC = torch.float64
_ROUNDING = 1e-13
DCOR_ESTIMATORS = ("biased", "unbiased")


def _distances(x: Tensor, dtype) -> Tensor:
    compute = resolve_dtype(dtype, x)
    xc = (x.to(_ACC) - x.to(_ACC).mean(0)).to(compute)  # centred in float64 first: no cancellation
    return squared_distances(xc).to(_ACC).sqrt()


def _pairs(xs, ys, min_samples: int) -> tuple[list[Tensor], list[Tensor] | None]:
    xs = as_feature_list(xs, "xs", min_samples, varying=True)
    ys = None if ys is None else as_feature_list(ys, "ys", min_samples, varying=True)
    check_same_samples(xs[0], (ys or xs)[0], ("xs[0]", "ys[0]"))
    return xs, ys


# -------------------------------------------------------------------------------- distance correlation
def _double_centred(d: Tensor) -> Tensor:
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def _u_centred(d: Tensor) -> Tensor:
    """Székely & Rizzo's (2014) U-centring: unbiased inner products, zero diagonal."""
    n = d.shape[0]
    u = d - d.sum(0, keepdim=True) / (n - 2) - d.sum(1, keepdim=True) / (n - 2) + d.sum() / ((n - 1) * (n - 2))
    return u.fill_diagonal_(0.0)


def _dcor_grid(xs, ys=None, estimator: str = "biased", dtype: torch.dtype | None = None) -> Tensor:
    check_choice(estimator, "estimator", DCOR_ESTIMATORS)
    xs, ys = _pairs(xs, ys, 4)
    centre = _double_centred if estimator == "biased" else _u_centred
    flat_x = torch.stack([centre(_distances(x, dtype)).flatten() for x in xs])
    flat_y = flat_x if ys is None else torch.stack([centre(_distances(y, dtype)).flatten() for y in ys])
    cross = flat_x @ flat_y.T  # the n-free normalisers cancel in the ratio
    vx, vy = flat_x.pow(2).sum(1), flat_y.pow(2).sum(1)
    dcor2 = cross / (vx[:, None] * vy[None, :]).sqrt()
    return dcor2.clamp_min(0.0).sqrt() if estimator == "biased" else dcor2


def distance_correlation(x: Tensor, y: Tensor, estimator: str = "biased", dtype: torch.dtype | None = None) -> Tensor:
    """Distance correlation (Székely, Rizzo & Bakirov 2007).

    With Euclidean distance matrices a_ij = |x_i - x_j|, b_ij = |y_i - y_j| and their double-centred
    A, B (A_ij = a_ij - a_i. - a_.j + a_..): dCov^2 = mean(A * B), dCor = sqrt(dCov^2(x, y) /
    sqrt(dCov^2(x, x) dCov^2(y, y))), in [0, 1], 0 iff independent (in the population).
    ``estimator="unbiased"`` returns the bias-corrected *squared* distance correlation of
    Székely & Rizzo (2014) (U-centred matrices), which is near 0 for independent data even when
    d >> n and can be slightly negative; it is not clamped. O(n^2 d) time, O(n^2) memory.
    """
    check_choice(estimator, "estimator", DCOR_ESTIMATORS)
    x = as_features(x, "x", 4, "distance correlation needs n >= 4", varying=True)
    y = as_features(y, "y", 4, "distance correlation needs n >= 4", varying=True)
    check_same_samples(x, y)
    return _dcor_grid([x], [y], estimator, dtype)[0, 0]


# -------------------------------------------------------------------------------- RSM norm difference
def _rsm_grid(xs, ys=None, dtype: torch.dtype | None = None) -> Tensor:
    xs, ys = _pairs(xs, ys, 2)
    dx = [_distances(x, dtype) for x in xs]
    dy = dx if ys is None else [_distances(y, dtype) for y in ys]
    n = dx[0].shape[0]
    return torch.stack([torch.stack([(a - b).norm() / n for b in dy]) for a in dx])


def rsm_norm_difference(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Root-mean-square difference of the Euclidean distance matrices: |D_x - D_y|_F / n.

    D_ij = |x_i - x_j|_2. The Frobenius norm is what the measure means (ReSi computes the spectral
    norm, O(n^3)); dividing by n makes it an RMS over the n^2 entries that does not grow with n.
    A metric between representations up to rotations and translations; not scale invariant.
    """
    x, y = as_features(x, "x", 2, varying=True), as_features(y, "y", 2, varying=True)
    check_same_samples(x, y)
    return _rsm_grid([x], [y], dtype)[0, 0]


# -------------------------------------------------------------------------------- eigenspace overlap
class _Range(NamedTuple):
    basis: Tensor
    inv_sqrt: Tensor


def _range(s: Tensor, n: int, **_) -> _Range:
    vals, vecs = mg.eigh_kept(s)
    return _Range(vecs, vals.rsqrt())


def _overlap_pair(px: _Range, py: _Range, sxy: Tensor, n, **_) -> Tensor:
    # U^T V for orthonormal bases U = X V_x L_x^{-1/2} of range(X) and likewise for Y
    core = (px.basis * px.inv_sqrt).T @ sxy @ (py.basis * py.inv_sqrt)
    return core.pow(2).sum() / max(px.inv_sqrt.numel(), py.inv_sqrt.numel())


def eigenspace_overlap(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Eigenspace overlap score (May et al. 2019): |U^T V|_F^2 / max(rank x, rank y).

    U, V: orthonormal bases of the column spaces of the (uncentred, as published) n x d
    representations. For full-rank inputs the normaliser is max(d, d'), the published one; with
    rank-deficient inputs (redundant or dead features) the ranks are what the score means (ReSi
    divides by the widths there). In [0, 1]; invariant to every invertible linear map, not to
    translation. Exact from uncentred second moments: |U^T V|_F^2 = tr(S_xx^+ S_xy S_yy^+ S_yx).
    """
    x, y = mg.validated_pair(x, y, 2)
    return mg.one_shot(x, y, dtype, _range, _overlap_pair, centre=False)


# -------------------------------------------------------------------------------- GULP
class _Ridge(NamedTuple):
    basis: Tensor
    vals: Tensor  # eigenvalues of the normalised covariance
    inv: Tensor  # 1 / (vals + lam)
    trace: Tensor  # tr(S), to normalise cross-covariances
    self_term: Tensor  # tr((Sigma (Sigma + lam)^-1)^2)


def _ridge(s: Tensor, n: int, lam: float = 0.0, **_) -> _Ridge:
    trace = torch.diagonal(s).sum()
    vals, vecs = mg.eigh_kept(s / trace)  # covariance of the representation scaled to mean squared norm 1
    inv = (vals + lam).reciprocal()
    return _Ridge(vecs, vals, inv, trace, (vals * inv).pow(2).sum())


def _gulp_pair(pa: _Ridge, pb: _Ridge, sxy: Tensor, n, **_) -> Tensor:
    cross = sxy / (pa.trace * pb.trace).sqrt()
    core = (pa.basis * pa.inv.sqrt()).T @ cross @ (pb.basis * pb.inv.sqrt())
    d2 = pa.self_term + pb.self_term - 2 * core.pow(2).sum()
    scale = pa.self_term + pb.self_term
    if bool(d2 < -1e-8 * scale):
        raise ValueError(f"GULP's squared distance came out negative ({float(d2):.3g}) beyond rounding; report this")
    return torch.where(d2 <= _ROUNDING * scale, torch.zeros_like(d2), d2).sqrt()


def _check_lam(lam: float) -> None:
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0 (the ridge penalty of GULP's linear predictors), got {lam}")


def gulp(x: Tensor, y: Tensor, lam: float = 0.0, dtype: torch.dtype | None = None) -> Tensor:
    """GULP distance (Boix-Adserà et al. 2022) between the ridge-regression predictors of x and y.

    Each side is centred and scaled to mean squared row norm 1 (as the paper's experiments do);
    with Sigma_x, Sigma_y, Sigma_xy the covariances and R_x = (Sigma_x + lam I)^{-1}:
    d^2 = tr((Sigma_x R_x)^2) + tr((Sigma_y R_y)^2) - 2 tr(R_x Sigma_xy R_y Sigma_yx), d = sqrt(d^2).
    Returns the distance (ReSi returns d^2). ``lam=0`` uses pseudo-inverses with a relative
    eigenvalue tolerance (redundant columns do not change the value) and is invariant to every
    invertible linear map; ``lam > 0`` only to rotations, scaling and translation. A metric.
    Exact from moments.
    """
    _check_lam(lam)
    x, y = mg.validated_pair(x, y)
    return mg.one_shot(x, y, dtype, _ridge, _gulp_pair, lam=lam)


def _gulp_grid(xs, ys=None, lam: float = 0.0, dtype: torch.dtype | None = None) -> Tensor:
    _check_lam(lam)
    return mg.grid(xs, ys, dtype, _ridge, _gulp_pair, lam=lam)


register(
    "distance_correlation",
    fn=distance_correlation,
    family="rsm",
    larger_is_more_similar=True,
    invariances=("orthogonal", "isotropic_scaling", "translation", "permutation"),
    cost="O(n^2 d), O(n^2) memory",
    identity_value=1.0,
    grid=_dcor_grid,
    reference="Székely, Rizzo & Bakirov 2007 (Ann. Statist.); Székely & Rizzo 2014 (unbiased)",
)
register(
    "rsm_norm_difference",
    fn=rsm_norm_difference,
    family="rsm",
    larger_is_more_similar=False,
    metric=True,
    invariances=("orthogonal", "translation", "permutation"),
    cost="O(n^2 d), O(n^2) memory",
    identity_value=0.0,
    grid=_rsm_grid,
    reference="Klabunde et al. 2025 (ReSi)",
)
register(
    "eigenspace_overlap",
    fn=eigenspace_overlap,
    family="rsm",
    larger_is_more_similar=True,
    invariances=("invertible_linear",),
    streaming=True,
    from_moments=lambda m: mg.from_moments(m, _range, _overlap_pair, centre=False),
    cost="O(n d^2 + d^3)",
    identity_value=1.0,
    grid=lambda xs, ys=None, dtype=None: mg.grid(xs, ys, dtype, _range, _overlap_pair, min_samples=2, centre=False),
    reference="May et al. 2019, On the downstream performance of compressed word embeddings (NeurIPS)",
)
register(
    "gulp",
    fn=gulp,
    family="rsm",
    larger_is_more_similar=False,
    metric=True,
    invariances=("affine",),  # lam = 0
    streaming=True,
    from_moments=lambda m, lam=0.0: mg.from_moments(m, _ridge, _gulp_pair, lam=lam),
    cost="O(n d^2 + d^3)",
    identity_value=0.0,
    grid=_gulp_grid,
    reference="Boix-Adserà, Lawrence, Stepaniants & Rigollet 2022, GULP (NeurIPS)",
)
