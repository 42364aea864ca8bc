"""Gram matrices, cosine-similarity matrices and the alignment paper's Frobenius gap and bounds."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC, center_columns, gram_sq_distances, sq_row_norms, unit_rows
from ..core.validation import (
    as_features,
    check_same_samples,
    resolve_dtype,
)
from .hsic import double_center
from .kinds import layer_measure


def squared_distances(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances of the rows, (n, n) in ``x``'s dtype, non-negative, zero diagonal.

    The Gram identity on column-centred rows (translation-invariant; centring avoids cancellation),
    the product in ``x``'s dtype and the combination in float64 (:mod:`repsim.core.numerics`)."""
    xc = center_columns(x, x.dtype)
    d = gram_sq_distances(sq_row_norms(xc), sq_row_norms(xc), (xc @ xc.T).to(ACC))
    return d.fill_diagonal_(0).to(x.dtype)


def _median(values: Tensor) -> Tensor:
    """numpy-style median (mean of the two middle values for even counts)."""
    flat = values.flatten()
    m = flat.numel()
    lo = torch.kthvalue(flat, (m + 1) // 2).values
    hi = torch.kthvalue(flat, m // 2 + 1).values
    return (lo + hi) / 2


@deprecated_arguments(positional=("sigma",))
def rbf_gram(x: Tensor, *, sigma: float = 0.8) -> Tensor:
    """RBF Gram matrix exp(-|x_i - x_j|^2 / (2 s^2)) with s^2 = sigma^2 * median(|x_i - x_j|^2).

    The bandwidth follows Kornblith et al.'s (2019) reference code: the median is over the full
    n x n matrix of squared distances, diagonal included.
    """
    d = squared_distances(x)
    med = _median(d)
    if not bool(med > 0):
        raise ValueError(
            "the median squared distance between samples is 0 (more than half the pairs coincide), "
            "so the RBF bandwidth is undefined; deduplicate the samples or use kernel='linear'"
        )
    return torch.exp(-d / (2 * sigma**2 * med))


@deprecated_arguments(positional=("dtype",))
def cosine_similarity_matrix(x: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
    """Sigma = Z Z^T with Z the L2-normalised rows of ``x``: entries in [-1, 1], ones on the diagonal."""
    x = as_features(x, "x")
    z = unit_rows(x.to(resolve_dtype(dtype, x)), "x")
    return z @ z.T


class GramGap(NamedTuple):
    """The Frobenius gap between two cosine-similarity matrices and the bounds it implies."""

    frobenius_gap: Tensor
    """|Sigma_A - Sigma_B|_F."""
    relative_centered_gap: Tensor
    """rho = |H Sigma_A H - H Sigma_B H|_F / |H Sigma_A H|_F."""
    cka_lower_bound: Tensor
    """max((1 - rho) / (1 + rho), 0): a lower bound on CKA(Sigma_A, Sigma_B)."""
    rdm_distance_ratio: Tensor
    """r = |b - a|_2 / (sqrt(M) sigma_a) over the M upper-triangle entries of the RDMs 11^T - Sigma."""
    rsa_lower_bound: Tensor
    """(1 - r) / (1 + r) for r < 1, else -1: a lower bound on the Pearson RSA of the (1 - cosine) RDMs."""


def gram_gap(x: Tensor, y: Tensor) -> GramGap:
    """Frobenius gap of the cosine-similarity matrices of ``x`` (n, p) and ``y`` (n, q).

    Sigma = Z Z^T of the row-normalised features. The alignment paper (arXiv 2510.08852) bounds
    this gap between CL and NSCL and turns it into lower bounds on representation similarity:
    CKA(Sigma_A, Sigma_B) >= (1 - rho)/(1 + rho), the CKA between the kernels Sigma (linear CKA of
    the row-normalised features), and RSA >= (1 - r)/(1 + r) for Pearson RSA of (1 - cosine) RDMs.
    Once rho or r reaches 1 the bounds are vacuous and reported as the trivial values (0 for CKA,
    -1 for RSA). ``x`` is the reference side (A): rho and r are relative to it.
    """
    x, y = as_features(x, "x", 3), as_features(y, "y", 3)
    check_same_samples(x, y)
    sa, sb = _cosine_gram(x, "x"), _cosine_gram(y, "y")
    gap = (sa - sb).norm()
    ca, cb = double_center(sa), double_center(sb)
    ca_norm = ca.norm()
    if not bool(ca_norm > 0):
        raise ValueError("x has a constant cosine-similarity matrix (all rows parallel), so rho is undefined")
    rho = (ca - cb).norm() / ca_norm
    n = x.shape[0]
    iu = torch.triu_indices(n, n, 1, device=x.device)
    a, b = 1 - sa[iu[0], iu[1]], 1 - sb[iu[0], iu[1]]
    sigma_a = a.std(correction=0)
    if not bool(sigma_a > 0):
        raise ValueError("the RDM of x is constant, so the RSA ratio r is undefined")
    r = (b - a).norm() / (a.numel() ** 0.5 * sigma_a)
    # (1-r)/(1+r) bounds a correlation only while r < 1: beyond, b may point against a, so the
    # honest bound is the trivial -1. CKA of two PSD kernels is >= 0 whatever rho is.
    cka_bound = ((1 - rho) / (1 + rho)).clamp_min(0)
    rsa_bound = torch.where(r < 1, (1 - r) / (1 + r), torch.full_like(r, -1.0))
    return GramGap(gap, rho, cka_bound, r, rsa_bound)


_GAP_REFERENCE = "arXiv 2510.08852 (alignment of supervised and self-supervised CL)"
_GAP = dict(family="gram", invariances=("orthogonal", "isotropic_scaling", "permutation"), cost="O(n^2 d)")


def _cosine_gram(x: Tensor, name: str = "x", **_) -> Tensor:
    """Sigma = Z Z^T of the float64 row-normalised features."""
    z = unit_rows(x.to(ACC), name)
    return z @ z.T


def _centred_cosine_gram(x: Tensor, name: str = "x", **_) -> tuple[Tensor, Tensor]:
    """H Sigma H and its Frobenius norm, refused when it is 0 (rho would divide by it)."""
    c = double_center(_cosine_gram(x, name))
    norm = c.norm()
    if not bool(norm > 0):
        raise ValueError(f"{name} has a constant cosine-similarity matrix (all rows parallel), so rho is undefined")
    return c, norm


def _cka_bound_pair(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], **_) -> Tensor:
    rho = (a[0] - b[0]).norm() / a[1]
    return ((1 - rho) / (1 + rho)).clamp_min(0)


@layer_measure(
    "frobenius_gap",
    differentiable=True,
    prepare=_cosine_gram,
    pair=lambda a, b, **_: (a - b).norm(),
    larger_is_more_similar=False,
    metric=True,
    identity_value=0.0,
    reference=_GAP_REFERENCE,
    **_GAP,
)
def frobenius_gap(x: Tensor, y: Tensor) -> Tensor:
    """|Sigma_x - Sigma_y|_F of the cosine-similarity matrices Sigma = Z Z^T of the unit rows (see
    :func:`gram_gap`, which also gives the bounds; arXiv 2510.08852). Each Gram matrix once in a grid."""


@layer_measure(
    "cka_lower_bound",
    differentiable=True,
    prepare=_centred_cosine_gram,
    pair=_cka_bound_pair,
    larger_is_more_similar=True,
    symmetric=False,
    identity_value=1.0,
    reference=_GAP_REFERENCE,
    **_GAP,
)
def cka_lower_bound(x: Tensor, y: Tensor) -> Tensor:
    """max((1 - rho)/(1 + rho), 0), rho = |H Sigma_x H - H Sigma_y H|_F / |H Sigma_x H|_F relative to ``x``:
    a lower bound on the CKA of the cosine-similarity matrices (see :func:`gram_gap`; arXiv 2510.08852)."""
