"""Ridge regression with one penalty per target, chosen by efficient leave-one-out (generalised
cross-validation), for every target and every penalty from one decomposition.

With intercept (an unpenalised constant, fitted by centring on the training rows), training
features X (m, d), X_c = X - 1 x̄ᵀ, and the thin SVD X_c = U S Vᵀ of rank r (λ = s², the
eigenvalues of K = X_c X_cᵀ or of X_cᵀ X_c), the ridge hat matrix at penalty α is
H_α = 11ᵀ/m + U diag(λ/(λ+α)) Uᵀ, and for one target y (centred: y_c)

* leave-one-out residual (Allen 1974; Golub, Heath & Wahba 1979):
  e_i = [(I - H_α) y]_i / (I - H_α)_ii, with
  (I - H_α) y / α = U diag(1/(λ+α)) Uᵀ y_c + (y_c - U Uᵀ y_c) / α and
  (I - H_α)_ii / α = Σ_k U_ik² / (λ_k+α) + (1 - 1/m - Σ_k U_ik²) / α;
* α per target: the grid value with the smallest mean squared e (the first on ties), as
  scikit-learn's ``RidgeCV(alpha_per_target=True)`` (``_RidgeGCV``);
* held-out prediction: ŷ = ȳ + (x - x̄)ᵀ X_cᵀ U diag(1/(λ+α)) Uᵀ y_c, where X_cᵀ U = V S: the
  d × t coefficient matrix is never formed.

One decomposition per training fold serves every α and every target: :func:`dual_basis` from the
m × m Gram matrix (d ≥ m), :func:`primal_basis` from the SVD of the m × d features (d < m). The
residual term (y_c - U Uᵀ y_c) is computed once per target block, not once per α, so the
subtraction does not cancel against a large U diag(.) Uᵀ y term when α is small.

Precision: the decompositions run in float64; the m × r × t products in the caller's dtype
(float32 allowed), squared residuals and their means summed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.numerics import ACC

TIE_RTOL = 1e-5
"""Relative gap between the two smallest LOO errors below which a float32 choice of α is redone in
float64. Float32 products left relative errors of at most 1.6e-7 in the errors (measured: 800
training rows, 2000 targets, 12 α), so a gap above 1e-5 (60x that) is not decided by rounding; on
that data 1.5 % of the targets are redone."""


@dataclass
class RidgeBasis:
    """One training fold's decomposition: what every α and every target of the fold share.

    ``eigvals`` (r,) the kept λ (float64, descending); ``u`` (m, r) the left singular vectors of the
    centred training features; ``test`` (p, r) the centred held-out features times X_cᵀ U = V S;
    ``leverage_rest`` (m,) = 1 - 1/m - Σ_k U_ik² (the part of I - H outside U, clamped at 0);
    ``route`` "dual" or "primal".
    """

    eigvals: Tensor
    u: Tensor
    test: Tensor
    leverage_rest: Tensor
    route: str
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def rank(self) -> int:
        return int(self.eigvals.numel())

    def prepared(self, alphas: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """(U in ``dtype``, 1/(λ+α) (r, a), diag(I - H_α)/α (m, a)), made once per fold and reused by
        every block of targets. The diagonal is summed by row chunks: no m × r float64 temporary."""
        key = (dtype, tuple(alphas.tolist()))
        if key not in self._cache:
            self._cache.clear()
            inv = 1.0 / (self.eigvals.to(ACC)[:, None] + alphas.to(self.eigvals.device, ACC)[None, :])
            rows = max(1, (1 << 22) // max(1, self.rank))
            diag = torch.cat([(self.u[i : i + rows].to(ACC) ** 2) @ inv for i in range(0, self.u.shape[0], rows)])
            diag += self.leverage_rest[:, None] / alphas.to(diag.device, ACC)[None, :]
            self._cache[key] = (self.u.to(dtype), inv, diag)
        return self._cache[key]


def _kept(vals: Tensor, vecs: Tensor, eps: float, scale: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Descending eigenpairs (from eigh's ascending ones) above the rounding floor eps · tr(K): by
    Weyl's inequality a perturbation of the Gram matrix by rounding (|E|_2 <= eps tr K for products
    rounded at eps) moves no eigenvalue further than that, so smaller ones are null space plus noise
    (the constant direction included). ``scale``: the trace before centring, when the centring
    subtracted a large common part (its rounding is relative to that)."""
    vals, vecs = vals.flip(0), vecs.flip(-1)
    floor = eps * torch.maximum(vals.clamp_min(0).sum(), torch.as_tensor(scale, dtype=vals.dtype))
    keep = vals > floor
    return vals[keep], vecs[:, keep]


def _basis(vals: Tensor, u: Tensor, test: Tensor, route: str) -> RidgeBasis:
    m = u.shape[0]
    rest = (1.0 - 1.0 / m - (u * u).sum(dim=1)).clamp_min(0)
    return RidgeBasis(vals, u, test, rest, route)


def double_centre(k_train: Tensor, k_test: Tensor) -> tuple[Tensor, Tensor]:
    """Gram matrices of features centred on the training mean, from uncentred ones (float64):
    (x_i - x̄)ᵀ(x_j - x̄) = K_ij - k̄_i - k̄_j + k̄̄ with k̄_i the mean of row i over the training rows."""
    k_train, k_test = k_train.to(ACC), k_test.to(ACC)
    col = k_train.mean(dim=0)
    grand = col.mean()
    kc = k_train - col[None, :] - col[:, None] + grand
    kt = k_test - k_test.mean(dim=1, keepdim=True) - col[None, :] + grand
    return kc, kt


def dual_basis(k_train: Tensor, k_test: Tensor, eps: float = torch.finfo(ACC).eps) -> RidgeBasis:
    """The basis of one fold from Gram matrices: ``k_train`` (m, m) of the training rows,
    ``k_test`` (p, m) held-out × training (both uncentred or centred by any common vector: they are
    centred here on the training mean, in float64). ``eps``: the rounding unit of the products that
    built the Gram matrices (float32's when they were accumulated from float32 products)."""
    scale = k_train.diagonal().to(ACC).sum()
    kc, kt = double_centre(k_train, k_test)
    del k_train, k_test  # the caller's slices: free before the decomposition's m² buffers
    vals, vecs = torch.linalg.eigh(kc)
    del kc
    vals, u = _kept(vals, vecs, eps, scale)
    del vecs
    return _basis(vals, u, kt @ u, "dual")


def primal_basis(x_train: Tensor, x_test: Tensor) -> RidgeBasis:
    """The basis of one fold from features: ``x_train`` (m, d), ``x_test`` (p, d); thin SVD of the
    training features centred on their mean, in float64 (cost m d², memory m d)."""
    x_train, x_test = x_train.to(ACC), x_test.to(ACC)
    mean = x_train.mean(dim=0)
    xc = x_train - mean
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    vals, keep_u = _kept((s * s).flip(0), u.flip(-1), torch.finfo(ACC).eps)  # _kept takes eigh's ascending order
    r = vals.numel()
    test = (x_test - mean) @ (vh[:r].T * s[:r])
    return _basis(vals, keep_u, test, "primal")


@dataclass
class RidgeFit:
    """Results of one fold for a block of targets: ``alpha_index`` (t,) index into the α grid,
    ``alpha`` (t,), ``predictions`` (p, t) held-out predictions, ``loo_mse`` (n_alphas, t) mean
    squared leave-one-out error of every α (float64)."""

    alpha_index: Tensor
    alpha: Tensor
    predictions: Tensor
    loo_mse: Tensor


def _loo_mse(u: Tensor, b: Tensor, outside: Tensor | None, inv: Tensor, g_diag: Tensor, alphas: Tensor) -> Tensor:
    """Mean squared leave-one-out residual of every α (rows) and target (columns), summed in float64.

    Without an ``outside`` part (the features span every centred direction) the residuals stay in
    the products' dtype and only their sum of squares is float64: two passes over m × t instead of
    five (measured 2x faster per α on 2 cores at m = 800, t = 2000)."""
    mse = torch.empty(alphas.numel(), b.shape[1], dtype=ACC, device=b.device)
    m = u.shape[0]
    for i in range(alphas.numel()):
        gy = u @ (b * inv[:, i, None].to(u.dtype))
        if outside is None:
            e = gy / g_diag[:, i, None].to(u.dtype)
        else:
            e = (gy.to(ACC) + outside / alphas[i]) / g_diag[:, i, None]
        mse[i] = torch.linalg.vector_norm(e, dim=0, dtype=ACC) ** 2 / m
    return mse


def _outside(u64: Tensor, yc: Tensor, rank: int) -> Tensor | None:
    """y_c - U Uᵀ y_c, the part of the centred targets outside the features' span, in float64.

    It is divided by α in the LOO residuals, so its rounding matters at small α: a float32 product
    here (error ~1e-7 |y|, against a true value of 0 when the features span every centred direction)
    made float32 runs pick α = 1e-3 where float64 picks 100 (measured). When U spans all m - 1
    centred directions the part is exactly 0: None.
    """
    if rank >= u64.shape[0] - 1:
        return None
    return yc - u64 @ (u64.T @ yc)


def near_ties(mse: Tensor, rtol: float = TIE_RTOL) -> Tensor:
    """Targets whose two best α have mean squared LOO errors within ``rtol`` of each other."""
    if mse.shape[0] < 2:
        return torch.zeros(mse.shape[1], dtype=torch.bool, device=mse.device)
    two = torch.topk(mse, 2, dim=0, largest=False).values
    return (two[1] - two[0]) <= rtol * two[0].abs()


def gcv_fit(basis: RidgeBasis, y_train: Tensor, alphas: Tensor, dtype: torch.dtype | None = None) -> RidgeFit:
    """α per target by leave-one-out on the training fold, then held-out predictions (module docstring).

    ``y_train`` (m, t) training targets (centred here on their mean, in float64); ``alphas`` a 1-D
    grid of positive penalties; ``dtype`` of the m × r × t products (default: float64). With a lower
    dtype, targets whose two best α are near ties (:data:`TIE_RTOL`) have their errors recomputed in
    float64, so rounding never decides the choice. Cost: (n_alphas + 2) m r t multiply-adds;
    memory a few m × t blocks.
    """
    dtype = dtype or ACC
    y64 = y_train.to(ACC)
    mean = y64.mean(dim=0)
    yc = y64 - mean
    alphas = alphas.to(device=yc.device, dtype=ACC)
    u, inv, g_diag = basis.prepared(alphas, dtype)
    u64 = basis.u.to(ACC)
    b = u.T @ yc.to(dtype)  # (r, t)
    outside = _outside(u64, yc, basis.rank)
    lam = basis.eigvals.to(ACC)
    mse = _loo_mse(u, b, outside, inv, g_diag, alphas)
    if dtype != ACC:
        redo = torch.nonzero(near_ties(mse)).flatten()
        if redo.numel():
            b64 = u64.T @ yc[:, redo]
            mse[:, redo] = _loo_mse(u64, b64, None if outside is None else outside[:, redo], inv, g_diag, alphas)
    best = torch.argmin(mse, dim=0)  # the first minimum, as RidgeCV's strict ">" update
    chosen = alphas[best]
    weights = (1.0 / (lam[:, None] + chosen[None, :])).to(dtype)
    pred = (basis.test.to(dtype) @ (b * weights)).to(ACC) + mean
    return RidgeFit(best, chosen, pred, mse)
