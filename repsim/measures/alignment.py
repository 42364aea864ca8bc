"""Alignment-based measures: Procrustes and shape metrics, regression, neuron matching.

All but ``aligned_cosine`` are functions of the centred scatter matrices and stream exactly.
Notation: Xc, Yc column-centred (n, p), (n, q); S_xx = Xc^T Xc, S_yy, S_xy = Xc^T Yc;
|M|_* the nuclear norm (sum of singular values). Widths may differ: max_Q tr(Q^T Xc^T Yc) over
(partial) isometries Q is |S_xy|_* whatever p and q, which is the zero-padding convention.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..core.numerics import center_columns, eigh_kept, sq_row_norms, unit_rows
from ..core.validation import check_choice, resolve_dtype
from . import _moment_grid as mg
from .kinds import MomentParts, layer_measure, moment_measure

_WILLIAMS = "Williams et al. 2021, Generalized shape metrics on neural representations (NeurIPS)"
_TANG = "Tang et al. 2020, Similarity of neural networks with gradients (arXiv 2003.11498)"
_KHOSLA = "Khosla & Williams 2023, Soft matching distance (arXiv 2311.09466)"
_DING = "Ding et al. 2021, Grounding representation similarity with statistical testing (NeurIPS)"
_LI = "Li et al. 2016, Convergent learning (ICLR)"


@mg.diagonal_only
def _trace(diag: Tensor, n: int, **_) -> Tensor:
    return diag.sum()


@mg.diagonal_only
def _trace_diagonal(diag: Tensor, n: int, **_) -> Tensor:
    """Per-neuron squared norms: the diagonal of the scatter."""
    return diag


def _nuclear(m: Tensor) -> Tensor:
    return torch.linalg.svdvals(m).sum()


_ROUNDING = 1e-13


def _sqrt_nonneg(v: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """sqrt of a squared distance that is >= 0 in exact arithmetic (von Neumann's trace inequality).

    A float64 nuclear norm carries ~1e-16 relative rounding, which a square root would turn into
    ~1e-8: squared distances within ``_ROUNDING * scale`` of 0 are unresolvable and reported as 0.
    """
    return torch.where(v <= _ROUNDING * scale, torch.zeros_like(v), v).sqrt()


_ROTATION = ("orthogonal", "isotropic_scaling", "translation", "permutation")
_SVD_COST = "O(n d^2 + d^3)"


# -------------------------------------------------------------------------------- Procrustes
def _procrustes_pair(tx, ty, sxy, n, **_) -> Tensor:
    return _sqrt_nonneg(2 - 2 * _nuclear(sxy) / (tx * ty).sqrt())


def _size_shape_pair(tx, ty, sxy, n, **_) -> Tensor:
    return _sqrt_nonneg((tx + ty - 2 * _nuclear(sxy)) / n, (tx + ty) / n)


@moment_measure(
    "procrustes",
    differentiable=True,
    prepare=_trace,
    pair=_procrustes_pair,
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=_ROTATION,
    cost=_SVD_COST,
    identity_value=0.0,
    reference=_DING + "; " + _WILLIAMS,
)
def procrustes(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Orthogonal Procrustes distance of the centred, unit-Frobenius representations.

    d = min_Q |X~ - Y~ Q|_F = sqrt(2 - 2 |X~^T Y~|_*),  X~ = Xc/|Xc|_F,  Y~ = Yc/|Yc|_F.
    A metric, invariant to rotations, isotropic scaling and translation of either side. Ding et
    al. (2021) report its square. Exact from moments: |X~^T Y~|_* = |S_xy|_* / sqrt(tr S_xx tr S_yy).
    """


# the unnormalised Procrustes distances: procrustes_size_shape and bures_distance (sqrt(n) times it)
_SIZE_SHAPE = dict(
    prepare=_trace,
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=("orthogonal", "translation", "permutation"),
    cost=_SVD_COST,
    identity_value=0.0,
)


@moment_measure("procrustes_size_shape", differentiable=True, pair=_size_shape_pair, reference=_WILLIAMS, **_SIZE_SHAPE)
def procrustes_size_shape(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Procrustes size-and-shape distance (Williams et al. 2021): centred, not rescaled.

    d = min_Q |Xc - Yc Q|_F / sqrt(n) = sqrt((tr S_xx + tr S_yy - 2 |S_xy|_*) / n).
    The 1/sqrt(n) makes it a per-sample (RMS) distance that does not grow with the number of
    samples. A metric, invariant to rotations and translation, not to scaling.
    """


# -------------------------------------------------------------------------------- Bures
def _fidelity(tx, ty, sxy, n, **_) -> Tensor:
    # <= 1 exactly (von Neumann's trace inequality); rounding can exceed it by ~1e-16
    return (_nuclear(sxy) / (tx * ty).sqrt()).clamp(0.0, 1.0)


def _bures_pair(tx, ty, sxy, n, **_) -> Tensor:
    return _sqrt_nonneg(tx + ty - 2 * _nuclear(sxy), tx + ty)


@moment_measure(
    "nbs",
    differentiable=True,
    prepare=_trace,
    pair=_fidelity,
    family="alignment",
    larger_is_more_similar=True,
    invariances=_ROTATION,
    cost=_SVD_COST,
    identity_value=1.0,
    reference=_TANG,
)
def nbs(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Normalized Bures similarity (Tang et al. 2020) of the centred Gram matrices.

    With K_x = Xc Xc^T, K_y = Yc Yc^T and the fidelity F(K_x, K_y) = tr((K_x^{1/2} K_y K_x^{1/2})^{1/2}):
    NBS = F / sqrt(tr K_x tr K_y), in [0, 1]. F = |Xc^T Yc|_* (K_x^{1/2} K_y K_x^{1/2} has the
    eigenvalues of (Xc^T Yc)(Xc^T Yc)^T), so NBS = |S_xy|_* / sqrt(tr S_xx tr S_yy): the cosine of
    the angular Procrustes distance, cos(angular_shape(x, y)) at alpha = 1, and 1 - procrustes(x, y)^2 / 2.
    Invariant to rotations, isotropic scaling and translation. Exact from moments.
    """


@moment_measure("bures_distance", differentiable=True, pair=_bures_pair, reference=_TANG, **_SIZE_SHAPE)
def bures_distance(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Bures distance between the centred Gram matrices: d_B = sqrt(tr K_x + tr K_y - 2 F(K_x, K_y)).

    F is the fidelity of :func:`nbs`, = |S_xy|_*, so d_B^2 = tr S_xx + tr S_yy - 2 |S_xy|_* =
    min_Q |Xc - Yc Q|_F^2. Not scaled per sample (the definition on Gram matrices): d_B grows as
    sqrt(n), and d_B = sqrt(n) * procrustes_size_shape(x, y), the per-sample (RMS) version.
    A metric, invariant to rotations and translation, not to scaling. Exact from moments.
    """


def _assignment(c: Tensor) -> Tensor:
    """Rows and columns of the maximum-weight matching of ``c`` (scipy's Hungarian solver, on the host)."""
    import scipy.optimize  # here, not at the top: scipy.optimize adds ~0.7 s to `import repsim`

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


@moment_measure(
    "permutation_procrustes",
    differentiable=True,
    prepare=_trace,
    pair=_permutation_pair,
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=("translation", "permutation"),
    cost="O(n d^2 + d^3) (Hungarian on the host)",
    identity_value=0.0,
    needs_equal_widths=True,
    reference=_WILLIAMS,
)
def permutation_procrustes(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Procrustes distance over feature permutations: min_P |Xc - Yc P|_F / sqrt(n).

    = sqrt((tr S_xx + tr S_yy - 2 max_P tr(P^T S_xy)) / n), the maximum found by the Hungarian
    algorithm (scipy.optimize.linear_sum_assignment). Needs equal widths. A metric on
    representations up to neuron permutation and translation (Williams et al. 2021).
    """


# -------------------------------------------------------------------------------- soft matching
# The replicated assignment's cost matrix has (L/p)(L/q) times the p q entries of the cost; beyond
# 16 times HiGHS was faster in our measurements (100 x 64, L = 1600: 0.57 s against 0.065 s; with
# p = q the assignment wins by far: 1024 x 1024 in 0.08 s against 16 s).
_MAX_REPLICATION = 16


def _transport_cost(c: Tensor, max_replication: int = _MAX_REPLICATION) -> Tensor:
    """min over plans P (p x q, P >= 0, rows summing to 1/p, columns to 1/q) of sum_ij P_ij c_ij.

    Exact by an assignment problem whenever L = lcm(p, q) has (L/p)(L/q) <= ``max_replication``:
    scaled by L, the marginals are the integers L/p and L/q, the transportation polytope then has integral vertices
    (its constraint matrix is totally unimodular), and an integral plan is an assignment between L/p
    copies of every row and L/q copies of every column, so the optimum is the Hungarian algorithm's
    (scipy.optimize.linear_sum_assignment) on the replicated L x L cost, divided by L. With p == q
    this is Birkhoff-von Neumann (L = p, no copies). Otherwise HiGHS solves the p q-variable linear
    programme. On the host, in float64; the value is read back from the plan on ``c`` itself so
    that it carries ``c``'s device and dtype.
    """
    import scipy.optimize  # here, not at the top: scipy.optimize adds ~0.7 s to `import repsim`
    import scipy.sparse

    p, q = c.shape
    cost = c.detach().cpu().to(torch.float64).numpy()
    copies = math.lcm(p, q)
    if (copies // p) * (copies // q) <= max_replication:
        rows, cols = scipy.optimize.linear_sum_assignment(np.repeat(np.repeat(cost, copies // p, 0), copies // q, 1))
        i = torch.as_tensor(rows // (copies // p), device=c.device)
        j = torch.as_tensor(cols // (copies // q), device=c.device)
        return c[i, j].sum() / copies
    # variable P_ij at index i * q + j; one equality per row sum and per column sum
    rows = scipy.sparse.kron(scipy.sparse.eye(p), np.ones((1, q)))
    cols = scipy.sparse.kron(np.ones((1, p)), scipy.sparse.eye(q))
    marginals = np.concatenate([np.full(p, 1.0 / p), np.full(q, 1.0 / q)])
    result = scipy.optimize.linprog(
        cost.ravel(), A_eq=scipy.sparse.vstack([rows, cols]).tocsr(), b_eq=marginals, bounds=(0, None), method="highs"
    )
    if not result.success:  # the problem is always feasible and bounded: a solver failure, not a user error
        raise RuntimeError(f"soft_matching: the transport problem was not solved ({result.message})")
    plan = torch.as_tensor(result.x.reshape(p, q), dtype=c.dtype, device=c.device)
    return (plan * c).sum()


def _soft_matching_pair(sx, sy, sxy, n, **_) -> Tensor:
    # squared distance between neuron i of x and j of y: |x_i|^2 + |y_j|^2 - 2 <x_i, y_j>
    cost = sx[:, None] + sy[None, :] - 2 * sxy
    return _sqrt_nonneg(_transport_cost(cost), (sx.mean() + sy.mean()))


def _soft_matching_invariances(center: bool = True, **_) -> tuple[str, ...]:
    return ("translation", "permutation") if center else ("permutation",)


@moment_measure(
    "soft_matching",
    differentiable=True,
    parts=lambda center=True, **_: MomentParts(_trace_diagonal, _soft_matching_pair, center=center),
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=_soft_matching_invariances,
    cost="O(n p q) + a p x q transport problem on the host (Hungarian on lcm(p, q) copies when few)",
    identity_value=0.0,
    reference=_KHOSLA,
)
def soft_matching(x: Tensor, y: Tensor, *, center: bool = True, dtype: torch.dtype | None = None) -> Tensor:
    """Soft-matching distance (Khosla & Williams 2023): optimal transport between the neurons of x and y.

    Each neuron is its tuning curve, the n-vector of its activations (a column x_i of x, y_j of y):
    d^2 = min_P sum_ij P_ij |x_i - y_j|^2 over the transportation polytope of p x q plans P >= 0
    whose rows sum to 1/p and columns to 1/q, i.e. the 2-Wasserstein distance between the uniform
    distributions over x's and y's tuning curves. A metric (symmetric, triangle inequality) that
    works across widths; invariant to neuron permutations, not to rotations or scaling. With p = q
    the optimum is a scaled permutation (Birkhoff), so d = sqrt(n / p) * permutation_procrustes(x, y).
    Not divided by n (the paper's normalisation): d grows as sqrt(n).

    ``center=True`` centres each neuron over the samples first (so a shift of one neuron's mean
    does not count, as in :func:`permutation_procrustes`); ``center=False`` compares raw
    activations. Exact from moments: |x_i - y_j|^2 needs only diag(S_xx), diag(S_yy) and S_xy.
    The transport problem is solved exactly on the host: by scipy's ``linear_sum_assignment`` on
    copies of the neurons (lcm(p, q)/p of each of x's, lcm(p, q)/q of each of y's) when that makes at
    most 16 times as many pairs (every p = q, and widths such as 64 and 256), else by HiGHS
    ``linprog`` with p q variables.
    """


# -------------------------------------------------------------------------------- angular shape
class _Whitening(NamedTuple):
    z: Tensor  # (d, d) partial whitening map


def partial_whitening(s: Tensor, n: int, alpha: float = 1.0, **_) -> _Whitening:
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


def angle_of_cosine(cos: Tensor) -> Tensor:
    """arccos, with 1 - cos within rounding of 0 reported as angle 0 (see :func:`_sqrt_nonneg`)."""
    return torch.where(1 - cos <= _ROUNDING, torch.zeros_like(cos), torch.arccos(cos.clamp(-1.0, 1.0)))


def check_alpha(alpha: float = 1.0, **_) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (1: rotation-invariant, 0: CCA-whitened), got {alpha}")


def _angular_parts(alpha: float = 1.0, center: bool = True, **_) -> MomentParts:
    """The shape metric's parts. alpha = 1 needs no whitening: Z = I, and only the traces."""
    if alpha == 1.0:

        def rotation_pair(tx, ty, sxy, n, **_):
            return angle_of_cosine(_nuclear(sxy) / (tx * ty).sqrt())

        return MomentParts(_trace, rotation_pair, center=center)

    def prepare(s, n, **_):
        w = partial_whitening(s, n, alpha).z
        return w, torch.trace(w.T @ s @ w)

    def pair(px, py, sxy, n, **_):
        (zx, nx), (zy, ny) = px, py
        return angle_of_cosine(_nuclear(zx.T @ sxy @ zy) / (nx * ny).sqrt())

    return MomentParts(prepare, pair, center=center)


def _angular_invariances(alpha: float = 1.0, center: bool = True, **_) -> tuple[str, ...]:
    # alpha = 0 whitens: any invertible map; 0 < alpha < 1 mixes a scale-free term with one that
    # scales as 1/c, so only rotations remain; centring adds translations
    if alpha == 0.0:
        kept = ("invertible_linear", "orthogonal", "isotropic_scaling", "permutation")
    elif alpha == 1.0:
        kept = ("orthogonal", "isotropic_scaling", "permutation")
    else:
        kept = ("orthogonal", "permutation")
    return kept + (("translation",) + (("affine",) if alpha == 0.0 else ()) if center else ())


@moment_measure(
    "angular_shape",
    differentiable=True,
    parts=_angular_parts,
    options_check=check_alpha,
    family="alignment",
    larger_is_more_similar=False,
    metric=True,
    invariances=_angular_invariances,
    cost=_SVD_COST,
    identity_value=0.0,
    reference=_WILLIAMS,
)
def angular_shape(
    x: Tensor, y: Tensor, *, alpha: float = 1.0, center: bool = True, dtype: torch.dtype | None = None
) -> Tensor:
    """Generalized shape metric (Williams et al. 2021): the angle between partially whitened representations.

    phi(X) = Xc Z,  Z = V diag(alpha + (1 - alpha) lambda^{-1/2}) V^T  for the covariance
    S_xx/n = V diag(lambda) V^T;  d = arccos(|phi(X)^T phi(Y)|_* / (|phi(X)|_F |phi(Y)|_F)).
    ``alpha=1``: the angular Procrustes metric (rotation, scaling, translation invariant);
    ``alpha=0``: CCA whitening, invariant to every invertible linear map. A metric for every alpha.
    For 0 < alpha < 1 the map mixes alpha (scale-free) with lambda^{-1/2} (scales as 1/c), so the
    metric is *not* invariant to isotropic scaling: phi(cX) is not proportional to phi(X). The
    registry declares the invariances for every alpha (``get_measure("angular_shape").invariances_at(alpha=0)``).
    ``center=True`` centres each side first (as netrep does); ``center=False`` works about the
    origin (ReSi's variant of the angular metric). Exact from moments.
    """


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


def _check_predict(predict: str = "y", **_) -> None:
    check_choice(predict, "predict", REGRESSION_TARGETS)


@moment_measure(
    "linear_regression",
    differentiable=True,
    parts=lambda predict="y", **_: MomentParts(_pinv, _r2_pair, prepare_y=_trace, swap=predict == "x"),
    options_check=_check_predict,
    family="alignment",
    larger_is_more_similar=True,
    # predictor side: any affine map; target side: rotations, scaling, translation; both: their intersection
    invariances=_ROTATION,
    cost=_SVD_COST,
    symmetric=False,
    identity_value=1.0,
    reference="Kornblith et al. 2019 (baseline); Klabunde et al. 2025 (ReSi)",
)
def linear_regression(x: Tensor, y: Tensor, *, predict: str = "y", dtype: torch.dtype | None = None) -> Tensor:
    """R^2 of the least-squares linear prediction of one representation from the other.

    ``predict="y"`` (default): R^2 = 1 - min_B |Yc - Xc B|_F^2 / |Yc|_F^2 = tr(S_yx S_xx^+ S_xy) / tr(S_yy),
    i.e. how much of y is a linear function of x (Kornblith et al. 2019 use it as a baseline;
    ReSi's "linear regression"). ``predict="x"`` regresses x on y. Not symmetric. Needs n larger
    than the predictor's rank. Exact from moments.
    """


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


_MATCHING = dict(family="alignment", larger_is_more_similar=True, identity_value=1.0, reference=_LI)
_MATCHING_INVARIANCES = ("isotropic_scaling", "translation", "permutation")


@moment_measure(
    "hard_correlation_match",
    differentiable=True,
    prepare=_stds,
    pair=_hard_pair,
    invariances=_MATCHING_INVARIANCES,
    cost="O(n d^2 + d^3) (Hungarian on the host)",
    **_MATCHING,
)
def hard_correlation_match(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Mean Pearson correlation of a one-to-one matching of x's and y's neurons (Li et al. 2016).

    The matching maximises the total correlation (Hungarian algorithm); with different widths
    the min(p, q) best-matched pairs count. Symmetric; invariant to neuron permutation, scaling
    and translation, not to rotations. Exact from moments.
    """


@moment_measure(
    "soft_correlation_match",
    differentiable=True,
    prepare=_stds,
    pair=_soft_pair,
    invariances=_MATCHING_INVARIANCES,
    cost="O(n d^2)",
    symmetric=False,
    **_MATCHING,
)
def soft_correlation_match(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Mean over x's neurons of the largest Pearson correlation with any neuron of y (Li et al. 2016).

    Several x neurons may match the same y neuron (hence "soft"); not symmetric. Exact from moments.
    """


# -------------------------------------------------------------------------------- aligned cosine
def _aligned_cosine_pair(x: Tensor, y: Tensor, dtype: torch.dtype | None = None) -> Tensor:
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


@layer_measure(
    "aligned_cosine",
    differentiable=True,
    pair=_aligned_cosine_pair,
    family="alignment",
    larger_is_more_similar=True,
    invariances=_ROTATION,
    cost=_SVD_COST,
    symmetric=False,
    identity_value=1.0,
    reference="Hamilton et al. 2016, Diachronic word embeddings (ACL); Klabunde et al. 2025 (ReSi)",
)
def aligned_cosine(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Mean cosine similarity of matching rows after aligning y to x by orthogonal Procrustes.

    With centred, unit-Frobenius X~, Y~ and Y~^T X~ = U S V^T, Q = U V^T (the rotation, or
    partial isometry when widths differ, minimising |X~ - Y~ Q|_F): mean_i cos(x~_i, (Y~ Q)_i)
    (Hamilton et al. 2016). Needs every sample; O(n d^2 + d^3).
    """
