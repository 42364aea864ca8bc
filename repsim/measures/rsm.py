"""Measures built on n x n distance matrices or on column spaces: distance correlation, eigenspace
overlap, GULP, RSM norm difference.

* ``distance_correlation`` (Szekely, Rizzo & Bakirov 2007): dCor = sqrt(dCov^2(X, Y) /
  sqrt(dVar^2(X) dVar^2(Y))) with dCov^2 = (1/n^2) sum_ij A_ij B_ij of the double-centred Euclidean
  distance matrices; ``debiased=True`` gives the U-centred estimate R* of dCor^2
  (Szekely & Rizzo 2013), which may be negative and is never clamped.
* ``eigenspace_overlap`` (May et al. 2019): EOS = |U^T V|_F^2 / max(r_x, r_y) with U, V orthonormal
  bases of the (uncentred) column spaces of x and y, r their ranks.
* ``gulp`` (Boix-Adsera et al. 2022): the distance between the ridge predictors of the two
  representations, on centred representations scaled to tr(Sigma) = 1 (the authors' code).
* ``rsm_norm_difference``: |D_x - D_y|_F of the Euclidean distance matrices.

Distance-matrix measures are computed in row blocks, so only a (layers x block x n) slab is in
memory at once; eigenspace overlap and GULP need only d x d moments and stream exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.numerics import (
    ACC,
    EIGEN_RTOL,
    center_columns,
    eigh_kept,
    gram_sq_distances,
    sq_row_norms,
)
from ..core.validation import (
    check_choice,
    resolve_dtype,
)
from .kinds import layer_measure, moment_measure

_BLOCK_ELEMENTS = 1 << 25  # float64 entries of distance blocks held at once (256 MiB)


# ---------------------------------------------------------------------------- shared helpers
class _DistanceRows:
    """Euclidean distance matrices of several layers, produced in row blocks (never n x n at once
    unless it fits the block budget). Distances come from the Gram identity on centred features,
    |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 <x_i, x_j>, products in ``compute``, the rest float64."""

    def __init__(self, layers: list[Tensor], compute: torch.dtype) -> None:
        self.layers = [center_columns(x, compute) for x in layers]
        self.sq = [sq_row_norms(x) for x in self.layers]
        self.n = layers[0].shape[0]

    def block(self, k: int, i0: int, i1: int) -> Tensor:
        x = self.layers[k]
        g = (x[i0:i1] @ x.T).to(ACC)
        d2 = gram_sq_distances(self.sq[k][i0:i1], self.sq[k], g)
        rows = torch.arange(i1 - i0, device=d2.device)
        d2[rows, rows + i0] = 0  # exact zero self-distances
        return d2.sqrt_()


def _block_size(n: int, layers: int) -> int:
    return max(1, min(n, _BLOCK_ELEMENTS // max(1, layers * n)))


# ---------------------------------------------------------------------------- distance correlation
def _dcor_grid(xs: list[Tensor], ys: list[Tensor], debiased: bool, dtype, names) -> Tensor:
    """``names``: what errors call the layers of xs and ys (the kind's ``x``/``y`` or ``xs[k]``/``ys[k]``)."""
    compute = resolve_dtype(dtype, *xs, *ys)
    same = ys is xs
    dist = _DistanceRows(xs if same else xs + ys, compute)
    n, nl = dist.n, len(dist.layers)
    b = _block_size(n, nl)
    # Pass 1 (per layer, once): row sums and the grand sum of each distance matrix. When every
    # layer's whole matrix fits the block budget it is kept for pass 2 instead of rebuilt.
    keep = b >= n
    kept: list[Tensor] = []
    row_sums = torch.zeros(nl, n, dtype=ACC, device=xs[0].device)
    for i0 in range(0, n, b):
        i1 = min(n, i0 + b)
        for k in range(nl):
            block = dist.block(k, i0, i1)
            row_sums[k, i0:i1] = block.sum(1)
            if keep:
                kept.append(block)
    total = row_sums.sum(1)
    if debiased:  # U-centring (Szekely & Rizzo 2013): zero diagonal, 1/(n-2) row terms
        row_term, grand = row_sums / (n - 2), total / ((n - 1) * (n - 2))
    else:  # double centring A = a - a_i. - a_.j + a_..
        row_term, grand = row_sums / n, total / n**2
    # Pass 2: centred blocks of every layer; all pair inner products from one product per block.
    lx = len(xs)
    var = torch.zeros(nl, dtype=ACC, device=xs[0].device)
    cross = torch.zeros(lx, lx if same else nl - lx, dtype=ACC, device=xs[0].device)
    for i0 in range(0, n, b):
        i1 = min(n, i0 + b)
        blocks = []
        for k in range(nl):
            c = (kept[k] if keep else dist.block(k, i0, i1)) - row_term[k, i0:i1, None] - row_term[k, None, :]
            c += grand[k]
            if debiased:
                rows = torch.arange(i1 - i0, device=c.device)
                c[rows, rows + i0] = 0
            blocks.append(c.flatten())
        flat = torch.stack(blocks)
        var += flat.pow(2).sum(1)
        cross += flat[:lx] @ (flat[:lx] if same else flat[lx:]).T
    vx, vy = var[:lx], (var[:lx] if same else var[lx:])
    if not bool((vx > 0).all() and (vy > 0).all()):
        side, v = (names[0], vx) if not bool((vx > 0).all()) else (names[1], vy)
        k = int((v <= 0).nonzero()[0])
        raise ValueError(
            f"the distance variance of {side[k]} is not positive (all samples coincide"
            + (", or too few distinct samples for the bias-corrected estimate" if debiased else "")
            + "); pass distinct samples"
        )
    r2 = cross / torch.sqrt(vx[:, None] * vy[None, :])
    if debiased:
        return r2
    # The V-statistic dCov^2 is a squared norm, >= 0; only rounding can make it negative.
    if not bool((r2 >= -1e-12).all()):
        raise ValueError("distance covariance came out negative beyond rounding; please report this input")
    return r2.clamp_min(0).sqrt()


# ---------------------------------------------------------------------------- column-space bases
def _default_rtol(compute: torch.dtype) -> float:
    # float64 scatters: the library's eigen cut-off; float32 products resolve eigenvalues only to ~1e-7 lambda_max
    return EIGEN_RTOL if compute == torch.float64 else 1e-5


class _ColumnSpace:
    """An orthonormal basis of the uncentred column space of X (n x p), from its moments only.

    X = Q A with Q = [Xc V_r L_r^{-1/2}, 1/sqrt(n)] orthonormal (n x (r+1)) and
    A = [[L_r^{1/2} V_r^T], [sqrt(n) mu^T]]: the centred scatter S = Xc^T Xc = V L V^T and the mean
    give A exactly, and A's left singular vectors U_A (singular values of A are those of X) give
    the basis Q U_A. Working through the centred scatter keeps the conditioning of X's own
    directions instead of squaring a large mean into the Gram matrix.
    """

    def __init__(self, sxx: Tensor, mean: Tensor, n: int, rtol: float) -> None:
        lam, v = eigh_kept(sxx, rtol)
        self.whiten = v / lam.sqrt()  # p x r: Xc @ whiten has orthonormal columns
        a = torch.cat([lam.sqrt()[:, None] * v.T, math.sqrt(n) * mean[None, :]])
        u, sv, _ = torch.linalg.svd(a, full_matrices=False)
        keep = sv.pow(2) > rtol * sv[0].pow(2) if sv.numel() else sv > 0
        self.coef = u[:, keep]  # (r+1) x rank
        self.rank = int(keep.sum())

    def basis(self, xc: Tensor, n: int) -> Tensor:
        """The (n, rank) orthonormal basis, in the dtype of ``xc``."""
        q = torch.cat([xc @ self.whiten.to(xc.dtype), torch.full((n, 1), n**-0.5, dtype=xc.dtype, device=xc.device)], 1)
        return q @ self.coef.to(xc.dtype)


def _cross_of_bases(cs_x: _ColumnSpace, cs_y: _ColumnSpace, sxy: Tensor) -> Tensor:
    """|U_x^T U_y|_F^2 from moments: Q_x^T Q_y = blockdiag(W_x^T S_xy W_y, 1) (1 is orthogonal to Xc)."""
    k = cs_x.whiten.T @ sxy @ cs_y.whiten
    g = torch.zeros(k.shape[0] + 1, k.shape[1] + 1, dtype=ACC, device=k.device)
    g[:-1, :-1] = k
    g[-1, -1] = 1
    return (cs_x.coef.T @ g @ cs_y.coef).pow(2).sum()


NORMALIZERS = ("rank", "width")


def _check_rtol(rtol: float) -> float:
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1) (relative eigenvalue cut-off), got {rtol}")
    return float(rtol)


def _check_eos_options(normalizer: str = "rank", rtol: float | None = None, **_) -> None:
    check_choice(normalizer, "normalizer", NORMALIZERS)
    if rtol is not None:
        _check_rtol(rtol)


def _eos_prepare(s: Tensor, n: int, *, mean: Tensor, rtol: float | None = None, **_) -> _ColumnSpace:
    """The layer's uncentred column space from its centred scatter and its mean (float64 moments)."""
    cs = _ColumnSpace(s, mean, n, _default_rtol(ACC) if rtol is None else rtol)
    if cs.rank == 0:
        raise ValueError("a representation is all zeros, so its column space is empty and the overlap undefined")
    cs.width = s.shape[0]
    return cs


def _eos_pair(cx: _ColumnSpace, cy: _ColumnSpace, sxy: Tensor, n: int, *, normalizer: str = "rank", **_) -> Tensor:
    norm = max(cx.rank, cy.rank) if normalizer == "rank" else max(cx.width, cy.width)
    return _cross_of_bases(cx, cy, sxy) / norm


# ---------------------------------------------------------------------------- GULP
class _RidgeWeights:
    """Sigma = S / n of the centred representation scaled to tr(Sigma) = 1; W = V (Lambda + lam)^{-1/2}
    (lam = 0: pseudo-inverse over eigenvalues > rtol * largest)."""

    def __init__(self, s: Tensor, lam: float, rtol: float) -> None:
        trace = torch.trace(s)
        # x -> x sqrt(n) / |Xc|_F, so Sigma = S / tr(S) has unit trace
        self.scale2 = 1.0 / trace
        sigma = s * self.scale2
        if lam > 0:
            ev, v = torch.linalg.eigh(sigma)
            self.w = v / (ev.clamp_min(0) + lam).sqrt()
        else:
            ev, v = eigh_kept(sigma, rtol)
            self.w = v / ev.sqrt()

    def whitened(self, cross: Tensor, other: _RidgeWeights) -> Tensor:
        """|W_x^T Sigma_xy W_y|_F^2 for the cross-scatter ``cross`` = Xc^T Yc."""
        sigma_xy = cross * torch.sqrt(self.scale2 * other.scale2)
        return (self.w.T @ sigma_xy @ other.w).pow(2).sum()


def _gulp_tol(compute: torch.dtype) -> float:
    return 10 * torch.finfo(compute).eps ** 0.5


def _gulp_distance(t_xx: Tensor, t_yy: Tensor, t_xy: Tensor, compute: torch.dtype) -> Tensor:
    """sqrt(T_xx + T_yy - 2 T_xy), T_ab = |W_a^T Sigma_ab W_b|_F^2.

    The square is a difference of O(T) terms, known only to ~eps (T_xx + T_yy): below
    64 eps (T_xx + T_yy) (including small negatives) it is rounding and gives 0, so equal inputs
    give exactly 0; a negative square beyond 10 sqrt(eps) (T_xx + T_yy) is refused (ill-conditioning).
    """
    d2 = t_xx + t_yy - 2 * t_xy
    scale = t_xx + t_yy
    if not bool((d2 >= -_gulp_tol(compute) * scale).all()):
        raise ValueError(
            "the squared GULP distance came out negative beyond rounding (ill-conditioned inputs); "
            "use lam > 0 or float64 (dtype=torch.float64)"
        )
    noise = 64 * torch.finfo(compute).eps * scale
    return torch.where(d2 > noise, d2, torch.zeros_like(d2)).sqrt()


def _check_lam(lam: float) -> float:
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0 (the ridge penalty), got {lam!r}")
    return float(lam)


def _check_gulp_options(lam: float = 0.0, rtol: float | None = None, **_) -> None:
    _check_lam(lam)
    if rtol is not None:
        _check_rtol(rtol)


def _gulp_prepare(s: Tensor, n: int, *, lam: float = 0.0, rtol: float | None = None, **_) -> _RidgeWeights:
    """The layer's ridge whitening and its self term T_xx (float64 moments)."""
    if not bool(torch.trace(s) > 0):
        raise ValueError("a representation is constant across samples, so GULP's normalisation is undefined")
    weights = _RidgeWeights(s, float(lam), _default_rtol(ACC) if rtol is None else rtol)
    weights.self_term = weights.whitened(s, weights)
    return weights


def _gulp_pair(rx: _RidgeWeights, ry: _RidgeWeights, sxy: Tensor, n: int, **_) -> Tensor:
    return _gulp_distance(rx.self_term, ry.self_term, rx.whitened(sxy, ry), ACC)


# ---------------------------------------------------------------------------- RSM norm difference
def _rsm_norm_grid(xs, ys, dtype) -> Tensor:
    compute = resolve_dtype(dtype, *xs, *ys)
    same = ys is xs
    dist = _DistanceRows(xs if same else xs + ys, compute)
    n, lx = dist.n, len(xs)
    iy = range(lx) if same else range(lx, len(dist.layers))
    b = _block_size(n, len(dist.layers))
    sq = torch.zeros(lx, len(iy), dtype=ACC, device=xs[0].device)
    for i0 in range(0, n, b):
        i1 = min(n, i0 + b)
        bx = torch.stack([dist.block(k, i0, i1).flatten() for k in range(lx)])
        by = bx if same else torch.stack([dist.block(k, i0, i1).flatten() for k in iy])
        # Differences taken entry by entry (not |a|^2 + |b|^2 - 2ab), so near-equal RSMs keep precision.
        sq += torch.cdist(bx, by, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    return sq.sqrt()


# ---------------------------------------------------------------------------- declarations
@layer_measure(
    "distance_correlation",
    differentiable=True,
    grid=_dcor_grid,
    min_samples=lambda debiased=False, **_: 4 if debiased else 2,
    reason="distance correlation needs n >= 4 for the bias-corrected estimate",
    renamed={"bias_corrected": "debiased"},  # one vocabulary with CKA's debiased=
    family="rsm",
    larger_is_more_similar=True,
    invariances=("orthogonal", "isotropic_scaling", "translation", "permutation"),
    cost="O(n^2 d) time, O(block n) memory",
    identity_value=1.0,
    reference="Szekely, Rizzo & Bakirov 2007, Ann. Stat.; bias-corrected: Szekely & Rizzo 2013, J. Multivar. Anal.",
)
def distance_correlation(x: Tensor, y: Tensor, *, debiased: bool = False, dtype: torch.dtype | None = None):
    """Distance correlation of ``x`` (n, p) and ``y`` (n, q) (Szekely, Rizzo & Bakirov 2007).

    a_ij = |x_i - x_j|, A = a - a_i. - a_.j + a_.. (double centring), likewise B from y;
    dCov^2 = (1/n^2) sum A_ij B_ij, dCor = sqrt(dCov^2(x, y) / sqrt(dCov^2(x, x) dCov^2(y, y))),
    in [0, 1], 1 for x = y. ``debiased=True`` (n >= 4) returns Szekely & Rizzo's (2013)
    R*: U-centred matrices (zero diagonal, a_i./(n-2), a../((n-1)(n-2))), the bias-corrected
    estimate of dCor^2 (the square, not its root); it is near 0 for independent data even when
    d >> n and can be negative (never clamped).

    Cost O(n^2 (p + q)) time; memory O(block x n): the n x n matrices are built in row blocks,
    twice (once for the row means, once for the products).
    """


@moment_measure(
    "eigenspace_overlap",
    differentiable=True,
    prepare=_eos_prepare,
    pair=_eos_pair,
    options_check=_check_eos_options,
    min_samples=1,
    family="rsm",
    larger_is_more_similar=True,
    invariances=("orthogonal", "isotropic_scaling", "permutation", "invertible_linear"),
    cost="O(n d^2 + d^3)",
    identity_value=1.0,
    reference="May, Zhang, Dao & Re 2019, NeurIPS",
)
def eigenspace_overlap(
    x: Tensor, y: Tensor, *, normalizer: str = "rank", rtol: float | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Eigenspace overlap score (May et al. 2019): |U^T V|_F^2 / max(r_x, r_y) = tr(P_x P_y) / max(r_x, r_y).

    U (n x r_x), V (n x r_y): orthonormal bases of the column spaces of the uncentred ``x``, ``y``
    (May et al. compare embedding matrices as they are; no centring). In [0, 1], 1 when the
    column spaces coincide (e.g. y = x A with A invertible).

    Args:
        normalizer: "rank" (default): max of the numerical ranks. May et al. define the score for
            full-column-rank matrices, where rank = width, so this is their definition and keeps
            EOS(x, x) = 1 for rank-deficient or wide (p > n) inputs. "width": max(p, q), what ReSi
            divides by (its EOS(x, x) is rank/p < 1 when x is rank-deficient).
        rtol: eigenvalues of the centred scatter (and squared singular values of x) below
            rtol * largest count as zero; default 1e-10 (the moments are float64).
        dtype: precision of the n x d products (default float64, as every moment measure);
            decompositions are float64.

    Cost O(n d^2 + d^3); exact from streamed moments (``tr(P_x P_y)`` needs only the means and
    the centred scatter and cross-scatter matrices).
    """


def _gulp_invariances(lam: float = 0.0, **_) -> tuple[str, ...]:
    # lam = 0: the predictor spaces are the centred column spaces, so any affine map of the features
    # leaves the distance unchanged; lam > 0 keeps only orthogonal maps, scaling, translation, permutation
    rigid = ("orthogonal", "isotropic_scaling", "translation", "permutation")
    return rigid + (("invertible_linear", "affine") if lam == 0 else ())


@moment_measure(
    "gulp",
    differentiable=True,
    prepare=_gulp_prepare,
    pair=_gulp_pair,
    options_check=_check_gulp_options,
    min_samples=2,
    family="rsm",
    larger_is_more_similar=False,
    metric=True,
    invariances=_gulp_invariances,
    cost="O(n d^2 + d^3)",
    identity_value=0.0,
    reference="Boix-Adsera, Lawrence, Stepaniants & Rigollet 2022, NeurIPS",
)
def gulp(x: Tensor, y: Tensor, *, lam: float = 0.0, rtol: float | None = None, dtype: torch.dtype | None = None):
    """GULP distance (Boix-Adsera, Lawrence, Stepaniants & Rigollet 2022, NeurIPS).

    With Sigma_x, Sigma_y, Sigma_xy the covariances of the centred representations, each scaled
    to tr(Sigma) = 1 (as the authors' code does), and R_x = (Sigma_x + lam I)^{-1}:
        d_lam^2 = tr(R_x Sigma_x R_x Sigma_x) + tr(R_y Sigma_y R_y Sigma_y) - 2 tr(R_x Sigma_xy R_y Sigma_yx),
    it measures how differently lam-ridge regression on the two representations predicts targets.
    Returns d_lam (not its square, which ReSi returns). ``lam = 0`` (default, as ReSi and the
    authors' function) uses the pseudo-inverse over eigenvalues > rtol * largest; then
    d_0^2 = r_x + r_y - 2 sum rho_i^2 (canonical correlations) and the distance is invariant to
    invertible linear maps; lam > 0 only to orthogonal maps, scaling and shifts.

    The square is a difference of terms T of order min(d, 1/lam): squares below 64 eps T (and
    negatives down to -10 sqrt(eps) T) are rounding and give 0; a more negative square is refused.
    Cost O(n d^2 + d^3); exact from streamed moments.
    """


@layer_measure(
    "rsm_norm_difference",
    differentiable=True,
    grid=lambda xs, ys, dtype, **_: _rsm_norm_grid(xs, ys, dtype),
    min_samples=2,
    reason="a distance matrix needs two samples",
    family="rsm",
    larger_is_more_similar=False,
    metric=True,
    invariances=("orthogonal", "translation", "permutation"),
    cost="O(n^2 d) time, O(block n) memory",
    identity_value=0.0,
    reference="Shahbazi et al. 2021, NeuroImage; Klabunde et al. 2025 (ReSi)",
)
def rsm_norm_difference(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """|D_x - D_y|_F, D the (n, n) Euclidean distance matrix of the rows (Shahbazi et al. 2021; ReSi).

    The Frobenius norm of the difference of the full matrices; the norm of the condensed upper
    triangles is this divided by sqrt(2). ReSi takes the spectral norm (``ord=2`` of the matrix,
    O(n^3)) where its comment says the vector norm was meant. A metric on configurations up to
    rigid motions (orthogonal maps and shifts); not scale-invariant. Cost O(n^2 (p + q)), memory
    O(block x n).
    """
