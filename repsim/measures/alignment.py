"""Alignment-based measures: Procrustes and shape metrics, regression, neuron matching.

All but ``aligned_cosine`` are functions of the centred scatter matrices and stream exactly.
Notation: Xc, Yc column-centred (n, p), (n, q); S_xx = Xc^T Xc, S_yy, S_xy = Xc^T Yc;
|M|_* the nuclear norm (sum of singular values). Widths may differ: max_Q tr(Q^T Xc^T Yc) over
(partial) isometries Q is |S_xy|_* whatever p and q, which is the zero-padding convention.
"""

from __future__ import annotations

from typing import NamedTuple

import scipy.optimize
import torch
from torch import Tensor

from .._numerics import center_columns, eigh_kept, sq_row_norms, unit_rows
from .._validation import as_features, check_choice, check_same_samples, resolve_dtype
from . import _moment_grid as mg
from .registry import register

_WILLIAMS = "Williams et al. 2021, Generalized shape metrics on neural representations (NeurIPS)"
_DING = "Ding et al. 2021, Grounding representation similarity with statistical testing (NeurIPS)"
_LI = "Li et al. 2016, Convergent learning (ICLR)"


@mg.diagonal_only
def _trace(diag: Tensor, n: int, **_) -> Tensor:
    return diag.sum()


def _nuclear(m: Tensor) -> Tensor:
    return torch.linalg.svdvals(m).sum()


_ROUNDING = 1e-13


def _sqrt_nonneg(v: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """sqrt of a squared distance that is >= 0 in exact arithmetic (von Neumann's trace inequality).

    A float64 nuclear norm carries ~1e-16 relative rounding, which a square root would turn into
    ~1e-8: squared distances within ``_ROUNDING * scale`` of 0 are unresolvable and reported as 0.
    """
    return torch.where(v <= _ROUNDING * scale, torch.zeros_like(v), v).sqrt()


# -------------------------------------------------------------------------------- Procrustes
def _procrustes_pair(tx, ty, sxy, n, **_) -> Tensor:
    return _sqrt_nonneg(2 - 2 * _nuclear(sxy) / (tx * ty).sqrt())


def _size_shape_pair(tx, ty, sxy, n, **_) -> Tensor:
    return _sqrt_nonneg((tx + ty - 2 * _nuclear(sxy)) / n, (tx + ty) / n)


def procrustes(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Orthogonal Procrustes distance of the centred, unit-Frobenius representations.

    d = min_Q |X~ - Y~ Q|_F = sqrt(2 - 2 |X~^T Y~|_*),  X~ = Xc/|Xc|_F,  Y~ = Yc/|Yc|_F.
    A metric, invariant to rotations, isotropic scaling and translation of either side. Ding et
    al. (2021) report its square. Exact from moments: |X~^T Y~|_* = |S_xy|_* / sqrt(tr S_xx tr S_yy).
    """
    x, y = mg.validated_pair(x, y)
    return mg.one_shot(x, y, dtype, _trace, _procrustes_pair)


def procrustes_size_shape(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Procrustes size-and-shape distance (Williams et al. 2021): centred, not rescaled.

    d = min_Q |Xc - Yc Q|_F / sqrt(n) = sqrt((tr S_xx + tr S_yy - 2 |S_xy|_*) / n).
    The 1/sqrt(n) makes it a per-sample (RMS) distance that does not grow with the number of
    samples. A metric, invariant to rotations and translation, not to scaling.
    """
    x, y = mg.validated_pair(x, y)
    return mg.one_shot(x, y, dtype, _trace, _size_shape_pair)


def _assignment(c: Tensor) -> Tensor:
    """Rows and columns of the maximum-weight matching of ``c`` (scipy's Hungarian solver, on the host)."""
    rows, cols = scipy.optimize.linear_sum_assignment(c.detach().cpu().numpy(), maximize=True)
    return c[torch.as_tensor(rows, device=c.device), torch.as_tensor(cols, device=c.device)]


def _equal_widths(sxy: Tensor, measure: str) -> None:
    if sxy.shape[0] != sxy.shape[1]:
        raise ValueError(
            f"{measure} matches neurons one to one, so x and y need the same width; got {sxy.shape[0]} "
            f"and {sxy.shape[1]} (reduce the wider side, e.g. with PCA, or use procrustes)"
        )


def _permutation_pair(tx, ty, sxy, n, **_) -> Tensor:
    _equal_widths(sxy, "permutation_procrustes")
    return _sqrt_nonneg((tx + ty - 2 * _assignment(sxy).sum()) / n, (tx + ty) / n)


def permutation_procrustes(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Procrustes distance over feature permutations: min_P |Xc - Yc P|_F / sqrt(n).

    = sqrt((tr S_xx + tr S_yy - 2 max_P tr(P^T S_xy)) / n), the maximum found by the Hungarian
    algorithm (scipy.optimize.linear_sum_assignment). Needs equal widths. A metric on
    representations up to neuron permutation and translation (Williams et al. 2021).
    """
    x, y = mg.validated_pair(x, y)
    if x.shape[1] != y.shape[1]:
        _equal_widths(torch.empty(x.shape[1], y.shape[1]), "permutation_procrustes")
    return mg.one_shot(x, y, dtype, _trace, _permutation_pair)


# -------------------------------------------------------------------------------- angular shape
class _Whitening(NamedTuple):
    z: Tensor  # (d, d) partial whitening map


def _partial_whitening(s: Tensor, n: int, alpha: float = 1.0, **_) -> _Whitening:
    if alpha == 1.0:
        return _Whitening(torch.eye(s.shape[0], dtype=s.dtype, device=s.device))
    vals, vecs = eigh_kept(s / n)
    if vals.numel() < s.shape[0]:
        raise ValueError(
            "angular_shape with alpha < 1 whitens the covariance, which is rank deficient here (fewer samples than "
            "features, or redundant features); use alpha=1, more samples, or reduce the features first (e.g. PCA)"
        )
    scale = alpha + (1 - alpha) * vals.rsqrt()
    return _Whitening((vecs * scale) @ vecs.T)


def _angle(cos: Tensor) -> Tensor:
    """arccos, with 1 - cos within rounding of 0 reported as angle 0 (see :func:`_sqrt_nonneg`)."""
    return torch.where(1 - cos <= _ROUNDING, torch.zeros_like(cos), torch.arccos(cos.clamp(-1.0, 1.0)))


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (1: rotation-invariant, 0: CCA-whitened), got {alpha}")


def angular_shape(
    x: Tensor, y: Tensor, alpha: float = 1.0, center: bool = True, dtype: torch.dtype | None = None
) -> Tensor:
    """Generalized shape metric (Williams et al. 2021): the angle between partially whitened representations.

    phi(X) = Xc Z,  Z = V diag(alpha + (1 - alpha) lambda^{-1/2}) V^T  for the covariance
    S_xx/n = V diag(lambda) V^T;  d = arccos(|phi(X)^T phi(Y)|_* / (|phi(X)|_F |phi(Y)|_F)).
    ``alpha=1``: the angular Procrustes metric (rotation, scaling, translation invariant);
    ``alpha=0``: CCA whitening, invariant to every invertible linear map. A metric for every alpha.
    For 0 < alpha < 1 the map mixes alpha (scale-free) with lambda^{-1/2} (scales as 1/c), so the
    metric is *not* invariant to isotropic scaling: phi(cX) is not proportional to phi(X). The
    registry's declared invariances are those of the default, alpha = 1.
    ``center=True`` centres each side first (as netrep does); ``center=False`` works about the
    origin (ReSi's variant of the angular metric). Exact from moments.
    """
    _check_alpha(alpha)
    x, y = mg.validated_pair(x, y)
    return mg.one_shot(x, y, dtype, *_angular_parts(alpha), centre=center)


def _angular_parts(alpha: float):
    """(prepare, pair) of the shape metric. alpha = 1 needs no whitening: Z = I, and only the traces."""
    if alpha == 1.0:

        def rotation_pair(tx, ty, sxy, n, **_):
            return _angle(_nuclear(sxy) / (tx * ty).sqrt())

        return _trace, rotation_pair

    def prepare(s, n, **_):
        w = _partial_whitening(s, n, alpha).z
        return w, torch.trace(w.T @ s @ w)

    def pair(px, py, sxy, n, **_):
        (zx, nx), (zy, ny) = px, py
        return _angle(_nuclear(zx.T @ sxy @ zy) / (nx * ny).sqrt())

    return prepare, pair


def _angular_from_moments(m, alpha: float = 1.0, center: bool = True) -> Tensor:
    _check_alpha(alpha)
    return mg.from_moments(m, *_angular_parts(alpha), centre=center)


def _angular_grid(xs, ys=None, alpha: float = 1.0, center: bool = True, dtype: torch.dtype | None = None):
    _check_alpha(alpha)
    return mg.grid(xs, ys, dtype, *_angular_parts(alpha), centre=center)


# -------------------------------------------------------------------------------- regression
class _PseudoInverse(NamedTuple):
    basis: Tensor
    inv: Tensor


def _pinv(s: Tensor, n: int, **_) -> _PseudoInverse:
    vals, vecs = eigh_kept(s)
    if n - 1 <= vals.numel():  # centred data span at most n - 1 dimensions: rank n - 1 fits any target
        raise ValueError(
            f"linear_regression needs more samples than the predictor's rank + 1 (n = {n}, rank {vals.numel()}); "
            "otherwise it fits any target perfectly (R^2 = 1). Use more samples or fewer features"
        )
    return _PseudoInverse(vecs, vals.reciprocal())


def _r2_pair(px: _PseudoInverse, ty: Tensor, sxy: Tensor, n, **_) -> Tensor:
    proj = px.basis.T @ sxy  # (k, q)
    return (proj.pow(2) * px.inv[:, None]).sum() / ty


REGRESSION_TARGETS = ("y", "x")


def linear_regression(x: Tensor, y: Tensor, predict: str = "y", dtype: torch.dtype | None = None) -> Tensor:
    """R^2 of the least-squares linear prediction of one representation from the other.

    ``predict="y"`` (default): R^2 = 1 - min_B |Yc - Xc B|_F^2 / |Yc|_F^2 = tr(S_yx S_xx^+ S_xy) / tr(S_yy),
    i.e. how much of y is a linear function of x (Kornblith et al. 2019 use it as a baseline;
    ReSi's "linear regression"). ``predict="x"`` regresses x on y. Not symmetric. Needs n larger
    than the predictor's rank. Exact from moments.
    """
    check_choice(predict, "predict", REGRESSION_TARGETS)
    x, y = mg.validated_pair(x, y)
    if predict == "x":
        x, y = y, x
    return mg.one_shot(x, y, dtype, _pinv, _r2_pair, prepare_y=_trace)


def _regression_from_moments(m, predict: str = "y") -> Tensor:
    m = m.swapped() if predict == "x" else m
    return mg.from_moments(m, _pinv, _r2_pair, prepare_y=_trace)


def _regression_grid(xs, ys=None, predict: str = "y", dtype: torch.dtype | None = None) -> Tensor:
    check_choice(predict, "predict", REGRESSION_TARGETS)
    if predict == "x":
        return mg.grid(ys if ys is not None else xs, xs, dtype, _pinv, _r2_pair, prepare_y=_trace).T
    return mg.grid(xs, ys, dtype, _pinv, _r2_pair, prepare_y=_trace)


# -------------------------------------------------------------------------------- neuron matching
@mg.diagonal_only
def _stds(diag: Tensor, n: int, **_) -> Tensor:
    sd = diag.sqrt()
    if bool((sd <= 1e-12 * sd.max()).any()):
        raise ValueError(
            f"{int((sd <= 1e-12 * sd.max()).sum())} neuron(s) are constant across samples, so their correlation "
            "with other neurons is undefined; drop dead units first"
        )
    return sd


def _correlations(sx, sy, sxy) -> Tensor:
    return sxy / torch.outer(sx, sy)


def _hard_pair(sx, sy, sxy, n, **_) -> Tensor:
    return _assignment(_correlations(sx, sy, sxy)).mean()


def _soft_pair(sx, sy, sxy, n, **_) -> Tensor:
    return _correlations(sx, sy, sxy).amax(dim=1).mean()


def hard_correlation_match(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Mean Pearson correlation of a one-to-one matching of x's and y's neurons (Li et al. 2016).

    The matching maximises the total correlation (Hungarian algorithm); with different widths
    the min(p, q) best-matched pairs count. Symmetric; invariant to neuron permutation, scaling
    and translation, not to rotations. Exact from moments.
    """
    x, y = mg.validated_pair(x, y)
    return mg.one_shot(x, y, dtype, _stds, _hard_pair)


def soft_correlation_match(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Mean over x's neurons of the largest Pearson correlation with any neuron of y (Li et al. 2016).

    Several x neurons may match the same y neuron (hence "soft"); not symmetric. Exact from moments.
    """
    x, y = mg.validated_pair(x, y)
    return mg.one_shot(x, y, dtype, _stds, _soft_pair)


# -------------------------------------------------------------------------------- aligned cosine
def aligned_cosine(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Mean cosine similarity of matching rows after aligning y to x by orthogonal Procrustes.

    With centred, unit-Frobenius X~, Y~ and Y~^T X~ = U S V^T, Q = U V^T (the rotation, or
    partial isometry when widths differ, minimising |X~ - Y~ Q|_F): mean_i cos(x~_i, (Y~ Q)_i)
    (Hamilton et al. 2016). Needs every sample; O(n d^2 + d^3).
    """
    x = as_features(x, "x", 3, varying=True)
    y = as_features(y, "y", 3, varying=True)
    check_same_samples(x, y)
    compute = resolve_dtype(dtype, x, y)
    xc, yc = center_columns(x, compute), center_columns(y, compute)
    u, _, vh = torch.linalg.svd((yc.T @ xc).to(torch.float64), full_matrices=False)
    aligned = (yc @ (u @ vh).to(compute)).to(torch.float64)
    # a sample at its mean is centred to rounding residue of its raw norm: no direction to compare
    why = "centred-to-zero (at the mean, or aligned onto nothing)"
    fix = "drop those samples"
    ux = unit_rows(xc.to(torch.float64), "x", sq_row_norms(x).sqrt(), why, fix)
    uy = unit_rows(aligned, "y", sq_row_norms(y).sqrt(), why, fix)
    return (ux * uy).sum(1).mean()


# -------------------------------------------------------------------------------- registry
def _moments(prepare, pair, **kw):
    return lambda m: mg.from_moments(m, prepare, pair, **kw)


def _grid(prepare, pair, **kw):
    return lambda xs, ys=None, dtype=None: mg.grid(xs, ys, dtype, prepare, pair, **kw)


_ROTATION = ("orthogonal", "isotropic_scaling", "translation", "permutation")
_SVD_COST = "O(n d^2 + d^3)"
register(
    "procrustes",
    fn=procrustes,
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=_ROTATION,
    streaming=True,
    from_moments=_moments(_trace, _procrustes_pair),
    cost=_SVD_COST,
    identity_value=0.0,
    grid=_grid(_trace, _procrustes_pair),
    reference=_DING + "; " + _WILLIAMS,
)
register(
    "procrustes_size_shape",
    fn=procrustes_size_shape,
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=("orthogonal", "translation", "permutation"),
    streaming=True,
    from_moments=_moments(_trace, _size_shape_pair),
    cost=_SVD_COST,
    identity_value=0.0,
    grid=_grid(_trace, _size_shape_pair),
    reference=_WILLIAMS,
)
register(
    "permutation_procrustes",
    fn=permutation_procrustes,
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=("translation", "permutation"),
    streaming=True,
    from_moments=_moments(_trace, _permutation_pair),
    cost="O(n d^2 + d^3) (Hungarian on the host)",
    identity_value=0.0,
    needs_equal_widths=True,
    grid=_grid(_trace, _permutation_pair),
    reference=_WILLIAMS,
)
register(
    "angular_shape",
    fn=angular_shape,
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=_ROTATION,  # alpha = 1; alpha = 0 is invariant to every invertible linear map
    streaming=True,
    from_moments=_angular_from_moments,
    cost=_SVD_COST,
    identity_value=0.0,
    grid=_angular_grid,
    reference=_WILLIAMS,
)
register(
    "linear_regression",
    fn=linear_regression,
    family="alignment",
    larger_is_more_similar=True,
    # predictor side: any affine map; target side: rotations, scaling, translation; both: their intersection
    invariances=_ROTATION,
    streaming=True,
    from_moments=_regression_from_moments,
    cost=_SVD_COST,
    symmetric=False,
    identity_value=1.0,
    grid=_regression_grid,
    reference="Kornblith et al. 2019 (baseline); Klabunde et al. 2025 (ReSi)",
)
register(
    "hard_correlation_match",
    fn=hard_correlation_match,
    family="alignment",
    larger_is_more_similar=True,
    invariances=("isotropic_scaling", "translation", "permutation"),
    streaming=True,
    from_moments=_moments(_stds, _hard_pair),
    cost="O(n d^2 + d^3) (Hungarian on the host)",
    identity_value=1.0,
    grid=_grid(_stds, _hard_pair),
    reference=_LI,
)
register(
    "soft_correlation_match",
    fn=soft_correlation_match,
    family="alignment",
    larger_is_more_similar=True,
    invariances=("isotropic_scaling", "translation", "permutation"),
    streaming=True,
    from_moments=_moments(_stds, _soft_pair),
    cost="O(n d^2)",
    symmetric=False,
    identity_value=1.0,
    grid=_grid(_stds, _soft_pair),
    reference=_LI,
)
register(
    "aligned_cosine",
    fn=aligned_cosine,
    family="alignment",
    larger_is_more_similar=True,
    invariances=_ROTATION,
    cost=_SVD_COST,
    symmetric=False,
    identity_value=1.0,
    reference="Hamilton et al. 2016, Diachronic word embeddings (ACL); Klabunde et al. 2025 (ReSi)",
)
