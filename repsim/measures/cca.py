"""The CCA family: mean CCA, mean squared CCA, SVCCA, PWCCA, all exact from second moments.

With centred scatter matrices S_xx, S_yy, S_xy, the canonical correlations rho_1 >= rho_2 >= ...
are the singular values of S_xx^{-1/2} S_xy S_yy^{-1/2} (Hotelling 1936). Inverse square roots
come from float64 eigendecompositions of the d x d scatters, with directions whose variance is
below ``repsim.core.numerics.EIGEN_RTOL`` (1e-10) of the largest dropped (rank deficiency; whitening
them would amplify rounding).

The CCA family is invariant to every invertible linear map of either side, which is why it needs
many more samples than features: the centred column spaces (dimensions r_x, r_y) lie in the
(n - 1)-dimensional space orthogonal to the constant vector, so they share at least
r_x + r_y - (n - 1) directions, and that many canonical correlations are 1 whatever the data
(all min(r_x, r_y) of them once max(r_x, r_y) >= n - 1). The measures refuse n <= r_x + r_y, where
at least one is forced, instead of averaging it in.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..core.numerics import eigh_kept
from .kinds import moment_measure

_RAGHU = "Raghu et al. 2017, SVCCA (NeurIPS)"
_MORCOS = "Morcos et al. 2018, Insights on representational similarity (NeurIPS)"


class _Whitened(NamedTuple):
    basis: Tensor  # (d, k) eigenvectors kept
    inv_sqrt: Tensor  # (k,) lambda^{-1/2}
    scatter: Tensor  # (d, d), for PWCCA's weights
    truncated: bool = False  # SVCCA: only the leading principal directions kept


def _whiten(s: Tensor, n: int, variance: float | None = None, n_components: int | None = None, **_) -> _Whitened:
    vals, vecs = eigh_kept(s)
    if n_components is not None:  # SVCCA with a fixed number of leading principal directions
        if n_components > vals.numel():
            raise ValueError(
                f"n_components={n_components} exceeds a layer's rank ({vals.numel()} directions with variance); "
                "use a smaller n_components or variance= instead"
            )
        vals, vecs = vals[:n_components], vecs[:, :n_components]
    elif variance is not None:  # SVCCA: the leading principal directions explaining `variance`
        share = vals.cumsum(0) / vals.sum()
        k = int(torch.searchsorted(share, torch.tensor(variance, dtype=share.dtype, device=share.device))) + 1
        vals, vecs = vals[:k], vecs[:, :k]
    return _Whitened(vecs, vals.rsqrt(), s, n_components is not None or variance is not None)


def _check_rank(px: _Whitened, py: _Whitened, n: int) -> None:
    kx, ky = px.inv_sqrt.numel(), py.inv_sqrt.numel()
    if n <= kx + ky:
        # Centred column spaces of dimensions kx, ky inside the (n - 1)-dimensional space orthogonal to the
        # constant vector intersect in at least kx + ky - (n - 1) dimensions: that many correlations are exactly 1.
        forced = min(kx + ky - (n - 1), kx, ky)
        raise ValueError(
            f"CCA needs more samples than the two ranks together: n = {n} but x has rank {kx} and y rank {ky}, "
            f"so {forced} of the {min(kx, ky)} canonical correlations are 1 whatever the data; use more samples, "
            + (
                "fewer components (n_components=k with 2k < n, or a smaller variance=)"
                if px.truncated
                else "reduce the widths (svcca, which keeps the leading principal components)"
            )
            + " or a measure without this need (linear_cka)"
        )


def _canonical(px: _Whitened, py: _Whitened, sxy: Tensor, n: int):
    """SVD of the whitened cross-covariance: (U, rho, V) with rho descending, clipped to [0, 1]."""
    _check_rank(px, py, n)
    core = (px.basis * px.inv_sqrt).T @ sxy @ (py.basis * py.inv_sqrt)
    u, rho, vh = torch.linalg.svd(core, full_matrices=False)
    # rho <= 1 exactly; rounding can exceed it by ~1e-15
    return u, rho.clamp(0.0, 1.0), vh


def _mean_rho(px, py, sxy, n, **_) -> Tensor:
    return _canonical(px, py, sxy, n)[1].mean()


def _mean_rho_squared(px, py, sxy, n, **_) -> Tensor:
    return _canonical(px, py, sxy, n)[1].square().mean()


def _pwcca_pair(px: _Whitened, py: _Whitened, sxy: Tensor, n: int, **_) -> Tensor:
    u, rho, _ = _canonical(px, py, sxy, n)
    # Canonical weights of x: w_i = S_xx^{-1/2} u_i, variates h_i = Xc w_i; Morcos et al.'s weight
    # alpha_i = sum_j |<h_i, x_j>| over x's neurons x_j, and <h_i, x_j> = (S_xx w_i)_j.
    w = (px.basis * px.inv_sqrt) @ u
    alpha = (px.scatter @ w).abs().sum(0)
    return (alpha * rho).sum() / alpha.sum()


_DEFAULT_VARIANCE = 0.99


def _check_variance(variance: float = _DEFAULT_VARIANCE, n_components: int | None = None, **_) -> None:
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1] (the share of variance SVCCA keeps), got {variance}")
    if n_components is None:
        return
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(
            f"n_components must be a positive int (the principal components kept per side), got {n_components!r}"
        )
    if variance != _DEFAULT_VARIANCE:
        raise ValueError(
            f"svcca keeps either a share of variance or a number of components: got variance={variance} and "
            f"n_components={n_components}; pass only one"
        )


_COST = "O(n d^2 + d^3)"


# plain CCA: every canonical correlation, invariant to any invertible affine map of either side, and so
# to the smaller groups inside it (declared too: list_measures() shows each one, and the tests check each)
_CCA = dict(
    prepare=_whiten,
    family="cca",
    larger_is_more_similar=True,
    invariances=("invertible_linear", "affine", "orthogonal", "isotropic_scaling", "translation", "permutation"),
    cost=_COST,
    identity_value=1.0,
)


@moment_measure("mean_cca", differentiable=True, pair=_mean_rho, reference="Hotelling 1936; " + _RAGHU, **_CCA)
def mean_cca(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Mean canonical correlation (1/k) sum_i rho_i, k = min(rank x, rank y).

    rho_i are the singular values of S_xx^{-1/2} S_xy S_yy^{-1/2} of the centred features
    (Hotelling 1936; used for networks by Raghu et al. 2017). Needs n > rank(x) + rank(y).
    Invariant to invertible linear maps and translations of either side. Exact from moments.
    """


@moment_measure(
    "svcca",
    differentiable=True,
    prepare=_whiten,
    pair=_mean_rho,
    options_check=_check_variance,
    family="cca",
    larger_is_more_similar=True,
    invariances=("orthogonal", "isotropic_scaling", "translation", "permutation"),
    cost=_COST,
    identity_value=1.0,
    reference=_RAGHU,
)
def svcca(
    x: Tensor,
    y: Tensor,
    *,
    variance: float = _DEFAULT_VARIANCE,
    n_components: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """SVCCA (Raghu et al. 2017): PCA of each side keeping the leading components that explain
    ``variance`` of its variance, then the mean canonical correlation of the two reductions.

    The number of components kept is the smallest k with sum_{i<=k} lambda_i >= variance *
    sum lambda_i; or, with ``n_components=k``, the k leading components of each side (Raghu et
    al.'s experiments keep a fixed number). The two are exclusive: ``n_components`` with a
    ``variance`` other than the default 0.99 is refused; k above a layer's rank is refused too.
    (ReSi's implementation compares a normalised cumulative sum with 0.99 times the total and so
    keeps a single component; this is the published rule.) Invariant to
    orthogonal maps, isotropic scaling and translation, not to general linear maps (the PCA step
    depends on the metric). Exact from moments.
    """


@moment_measure(
    "mean_squared_cca",
    differentiable=True,
    pair=_mean_rho_squared,
    reference="Yanai 1974; Kornblith et al. 2019 (R^2_CCA)",
    **_CCA,
)
def mean_squared_cca(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Mean squared canonical correlation (1/k) sum_i rho_i^2, k = min(rank x, rank y): Yanai's
    R^2_CCA (Kornblith et al. 2019).

    The rho_i are those of :func:`mean_cca`; R^2_CCA = |Q_y^T Q_x|_F^2 / k for orthonormal bases
    Q_x, Q_y of the centred column spaces. Needs n > rank(x) + rank(y). Invariant to invertible
    linear maps and translations of either side. Exact from moments.
    """


@moment_measure(
    "pwcca",
    differentiable=True,
    prepare=_whiten,
    pair=_pwcca_pair,
    family="cca",
    larger_is_more_similar=True,
    # the weights are sums of |.| over x's neurons: a rotation of x changes them (of y it does not)
    invariances=("isotropic_scaling", "translation", "permutation"),
    cost=_COST,
    symmetric=False,
    identity_value=1.0,
    reference=_MORCOS,
)
def pwcca(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Projection-weighted CCA (Morcos et al. 2018): sum_i alpha_i rho_i / sum_i alpha_i.

    alpha_i = sum_j |<h_i, x_j>|: how much of ``x``'s centred neurons x_j the canonical variate
    h_i of ``x`` accounts for; so PWCCA is not symmetric (``x`` is the reference). Works for
    either side being wider (google/svcca raised when the first input was wider). Activations are
    centred before weighting (ReSi weights with uncentred activations). Exact from moments:
    <h_i, x_j> = (S_xx w_i)_j for the canonical weights w_i.
    """
