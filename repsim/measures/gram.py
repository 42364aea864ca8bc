"""Gram matrices, cosine-similarity matrices and the alignment paper's Frobenius gap and bounds."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._numerics import center_columns, gram_sq_distances, sq_row_norms, unit_rows
from .._validation import (
    as_features,
    as_layer_lists,
    check_same_samples,
    resolve_dtype,
)
from .hsic import double_center
from .registry import register

_ACC = torch.float64


def squared_distances(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances of the rows, (n, n) in ``x``'s dtype, non-negative, zero diagonal.

    The Gram identity on column-centred rows (translation-invariant; centring avoids cancellation),
    the product in ``x``'s dtype and the combination in float64 (:mod:`repsim._numerics`)."""
    xc = center_columns(x, x.dtype)
    d = gram_sq_distances(sq_row_norms(xc), sq_row_norms(xc), (xc @ xc.T).to(_ACC))
    return d.fill_diagonal_(0).to(x.dtype)


def _median(values: Tensor) -> Tensor:
    """numpy-style median (mean of the two middle values for even counts)."""
    flat = values.flatten()
    m = flat.numel()
    lo = torch.kthvalue(flat, (m + 1) // 2).values
    hi = torch.kthvalue(flat, m // 2 + 1).values
    return (lo + hi) / 2


def rbf_gram(x: Tensor, sigma: float = 0.8) -> Tensor:
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


def cosine_similarity_matrix(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
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


def frobenius_gap(x: Tensor, y: Tensor) -> Tensor:
    """|Sigma_x - Sigma_y|_F of the cosine-similarity matrices (see :func:`gram_gap`)."""
    return gram_gap(x, y).frobenius_gap


def cka_lower_bound(x: Tensor, y: Tensor) -> Tensor:
    """max((1 - rho)/(1 + rho), 0), rho relative to ``x`` (see :func:`gram_gap`)."""
    return gram_gap(x, y).cka_lower_bound


def _cosine_gram(x: Tensor, name: str) -> Tensor:
    """Sigma = Z Z^T of the float64 row-normalised features."""
    z = unit_rows(x.to(_ACC), name)
    return z @ z.T


def _cosine_grams(xs, name: str) -> list[Tensor]:
    return [_cosine_gram(x, f"{name}[{i}]") for i, x in enumerate(xs)]


def frobenius_gap_grid(xs, ys=None) -> Tensor:
    """|Sigma_x - Sigma_y|_F for every layer pair, (L, M): each cosine Gram matrix built once."""
    xs, ys_list = as_layer_lists(xs, ys, 3)
    sa = _cosine_grams(xs, "xs")
    sb = sa if ys_list is xs else _cosine_grams(ys_list, "ys")
    return torch.stack([torch.stack([(a - b).norm() for b in sb]) for a in sa])


def cka_lower_bound_grid(xs, ys=None) -> Tensor:
    """max((1 - rho)/(1 + rho), 0) for every layer pair, rho relative to the ``xs`` layer: each
    double-centred cosine Gram matrix and its norm computed once."""
    xs, ys_list = as_layer_lists(xs, ys, 3)
    ca = [double_center(s) for s in _cosine_grams(xs, "xs")]
    cb = ca if ys_list is xs else [double_center(s) for s in _cosine_grams(ys_list, "ys")]
    norms = torch.stack([c.norm() for c in ca])
    if not bool((norms > 0).all()):
        bad = int((norms <= 0).nonzero()[0, 0])
        raise ValueError(f"xs[{bad}] has a constant cosine-similarity matrix (all rows parallel), so rho is undefined")
    rho = torch.stack([torch.stack([(a - b).norm() for b in cb]) for a in ca]) / norms[:, None]
    return ((1 - rho) / (1 + rho)).clamp_min(0)


_GAP_REFERENCE = "arXiv 2510.08852 (alignment of supervised and self-supervised CL)"
register(
    "frobenius_gap",
    fn=frobenius_gap,
    family="gram",
    larger_is_more_similar=False,
    metric=True,
    invariances=("orthogonal", "isotropic_scaling", "permutation"),
    cost="O(n^2 d)",
    identity_value=0.0,
    grid=frobenius_gap_grid,
    reference=_GAP_REFERENCE,
)
register(
    "cka_lower_bound",
    fn=cka_lower_bound,
    family="gram",
    larger_is_more_similar=True,
    invariances=("orthogonal", "isotropic_scaling", "permutation"),
    cost="O(n^2 d)",
    symmetric=False,
    identity_value=1.0,
    grid=cka_lower_bound_grid,
    reference=_GAP_REFERENCE,
)
