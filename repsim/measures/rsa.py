"""Representational similarity analysis: RDMs over samples and their comparison.

An RDM holds a dissimilarity for every pair of samples: 1 - cosine similarity, 1 - Pearson
correlation (across features), or Euclidean distance. Two RDMs are compared on their upper
triangles (M = n(n-1)/2 entries) by Pearson correlation (what the alignment paper's code uses),
Spearman correlation (average ranks for ties), Kendall's tau_a or Kendall's tau_b (tau_a corrected
for ties, Kendall 1945: a tied RDM compared with itself scores 1 under tau_b, below 1 under tau_a).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC, center_columns, gram_sq_distances, safe_sqrt, sq_row_norms, unit_rows
from ..core.validation import (
    as_features,
    check_choice,
    resolve_dtype,
)
from .gram import squared_distances
from .kinds import layer_measure
from .quadratic import QuadraticForm, Side

RDMS = ("cosine", "correlation", "euclidean")
# "kendall" stays tau_a (its values, ties included, are what they were); tau_b is the separate "kendall_tau_b"
COMPARATORS = ("pearson", "spearman", "kendall", "kendall_tau_b")


@deprecated_arguments(positional=("method", "dtype"))
def rdm(
    x: Tensor,
    *,
    method: str = "cosine",
    dtype: torch.dtype | None = None,
    runs=None,
    conditions=None,
    noise=None,
    memory=None,
) -> Tensor:
    """Representational dissimilarity matrix (n, n) of the rows of ``x`` (n, d); batches (..., n, d) give (..., n, n).

    cosine: 1 - <x_i, x_j>/(|x_i||x_j|); correlation: 1 - Pearson r between rows x_i and x_j;
    euclidean: |x_i - x_j|_2. "mahalanobis" and "crossnobis" (Walther et al. 2016) take rows of
    measurements (..., rows, channels) labelled by ``conditions`` (and ``runs``: crossnobis
    crossvalidates over them), average the rows of one condition in one run, and return (..., K, K)
    over the K sorted condition labels: (u_i - u_j) Sigma^-1 (u_i - u_j)^T / P, crossnobis with the
    two patterns from different runs (unbiased, so it can be negative). ``noise``: None (Sigma from
    the residuals around each condition's mean, Ledoit-Wolf shrinkage), "identity", or a precision
    matrix (P, P). ``memory``: budget for the batched crossnobis (refused with options before
    allocating). Formulas: :mod:`repsim.measures.rdms`.
    """
    from .rdms import RDM_METHODS, condition_rdm

    check_choice(method, "rdm", RDM_METHODS)
    if method in ("mahalanobis", "crossnobis"):
        return condition_rdm(x, method, runs=runs, conditions=conditions, noise=noise, memory=memory)
    if runs is not None or conditions is not None or noise is not None:
        raise ValueError(f"runs, conditions and noise apply to method='mahalanobis' or 'crossnobis', not {method!r}")
    if isinstance(x, Tensor) and x.ndim > 2:  # a batch: one RDM per leading index
        flat = x.reshape(-1, *x.shape[-2:])
        return torch.stack([rdm(t, method=method, dtype=dtype) for t in flat]).reshape(*x.shape[:-1], x.shape[-2])
    x = as_features(x, "x")
    return _rdm(x, method, "x", resolve_dtype(dtype, x))


def _rdm(x: Tensor, method: str, name: str, compute: torch.dtype) -> Tensor:
    """The RDM with its (n, n) product in ``compute``; normalising and centring run in float64.

    Cosine and correlation RDMs use 1 - <z_i, z_j> = |z_i - z_j|^2 / 2 for unit rows z, with z
    column-centred first (pairwise differences do not change): on features with a large common
    offset every cosine is within float32 rounding of 1, so 1 - z z^T in float32 would be rounding
    noise, while the centred rows keep the differences at full relative precision.
    """
    if method == "euclidean":
        return safe_sqrt(squared_distances(x.to(compute)))  # a zero gradient at the zero diagonal
    x = x.to(ACC)
    reference = None
    if method == "correlation":
        if x.shape[1] < 2:
            raise ValueError(f"{name} needs at least 2 features for a correlation RDM; use rdm='euclidean'")
        reference = torch.linalg.vector_norm(x, dim=1)  # removing the row mean cancels: rounding residue is no row
        x = x - x.mean(dim=1, keepdim=True)
    what = "constant" if method == "correlation" else "all-zero"
    z = unit_rows(x, name, reference, what, f"a {method} RDM needs every row's; drop them or use rdm='euclidean'")
    z = center_columns(z, ACC)
    zc = z.to(compute)
    # 1 - <z_i, z_j> = |z_i - z_j|^2 / 2 for unit rows (halving is exact, so this is bitwise the half)
    d = gram_sq_distances(sq_row_norms(z), sq_row_norms(z), (zc @ zc.T).to(ACC)) / 2
    return d.fill_diagonal_(0)


def _pearson_grid_blocked(xs, ys, method: str, compute: torch.dtype, names) -> Tensor:
    """Pearson RSA of every pair by row blocks (:class:`~repsim.measures.blocked.RdmRows`)."""
    from .blocked import gram_grids_blocked

    xcs = [center_columns(x, compute) for x in xs]
    ycs = xcs if ys is xs else [center_columns(y, compute) for y in ys]
    exact = compute == torch.float64  # float64 products: RDM rows from the Gram blocks; else their own products
    rx = rdm_rows(xs, xcs, method, names[0], exact)
    ry = None if ys is xs else rdm_rows(ys, ycs, method, names[1], exact)
    _, (cov, var_x, var_y) = gram_grids_blocked(xcs, ycs, (), rx, ry)
    return pearson_grid(cov, var_x, var_y, names)


def rdm_rows(xs: list[Tensor], xcs: list[Tensor], method: str, names: list[str], from_gram: bool = True) -> list:
    """One :class:`~repsim.measures.blocked.RdmRows` per layer (features and their centred copies)."""
    from .blocked import RdmRows

    return [RdmRows(x, xc, method, nm, from_gram) for x, xc, nm in zip(xs, xcs, names, strict=True)]


def pearson_grid(cov: Tensor, var_x: Tensor, var_y: Tensor, names) -> Tensor:
    """cov / sqrt(var_x var_y), refusing a constant RDM (a correlation with it is undefined)."""
    scale_x, scale_y = var_x.clamp_min(0).sqrt(), var_y.clamp_min(0).sqrt()
    for scale, nm in ((scale_x, names[0]), (scale_y, names[1])):
        if not bool((scale > 0).all()):
            bad = int((scale <= 0).nonzero()[0, 0])
            raise ValueError(f"the RDM of {nm[bad]} is constant, so its correlation with another RDM is undefined")
    return cov / (scale_x[:, None] * scale_y[None, :])


def _upper(m: Tensor) -> Tensor:
    n = m.shape[0]
    iu = torch.triu_indices(n, n, 1, device=m.device)
    return m[iu[0], iu[1]]


def average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..M with ties given their average rank (as scipy.stats.rankdata), on any device."""
    _, inverse, counts = torch.unique(v, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(ACC)
    return (ends - (counts.to(ACC) - 1) / 2)[inverse]


def _standardised(v: Tensor, name: str) -> Tensor:
    v = v.to(ACC) - v.to(ACC).mean()
    norm = v.norm()
    if not bool(norm > 0):
        raise ValueError(f"the RDM of {name} is constant, so its correlation with another RDM is undefined")
    return v / norm


def kendall_tau_a(a: Tensor, b: Tensor) -> Tensor:
    """Kendall's tau_a = (concordant - discordant) / (M(M-1)/2), in O(M log M).

    scipy computes tau_b = (C - D)/sqrt((n0 - n1)(n0 - n2)) with the O(M log M) algorithm of
    Knight (1966); tau_a follows by rescaling with the tie counts n1, n2.
    """
    tau_b, n0, n1, n2 = _kendall(a, b)
    return torch.tensor(tau_b * np.sqrt((n0 - n1) * (n0 - n2)) / n0, dtype=ACC, device=a.device)


def kendall_tau_b(a: Tensor, b: Tensor) -> Tensor:
    """Kendall's tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)) (Kendall 1945), in O(M log M).

    C, D: concordant and discordant pairs among the n0 = M(M-1)/2; n1, n2: pairs tied in ``a``, in
    ``b``. Pairs tied in either count in neither C nor D, and the denominator drops them too, so
    a vector compared with itself scores 1 whatever its ties (tau_a gives (n0 - n1)/n0).
    """
    tau_b, *_ = _kendall(a, b)
    return torch.tensor(tau_b, dtype=ACC, device=a.device)


def _kendall(a: Tensor, b: Tensor) -> tuple[float, float, float, float]:
    """(tau_b, n0, n1, n2) of two vectors, refusing a constant one (no untied pair: tau undefined)."""
    av, bv = a.detach().cpu().to(ACC).numpy(), b.detach().cpu().to(ACC).numpy()
    m = av.size
    n0 = m * (m - 1) / 2

    def tied_pairs(v: np.ndarray) -> float:
        counts = np.unique(v, return_counts=True)[1].astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    n1, n2 = tied_pairs(av), tied_pairs(bv)
    if n1 == n0 or n2 == n0:
        raise ValueError("an RDM is constant, so Kendall's tau is undefined")
    import scipy.stats  # here, not at the top: scipy.stats alone adds ~0.9 s to `import repsim`

    return float(scipy.stats.kendalltau(av, bv, variant="b").statistic), n0, n1, n2


def _prepared(v: Tensor, compare: str, name: str) -> Tensor:
    """What the comparator correlates: standardised entries (Pearson) or standardised ranks (Spearman)."""
    if compare == "spearman":
        v = average_ranks(v)
    return _standardised(v, name)


def _rsa_workspace(n: int, dx: list[int], dy: list[int] | None, limit: int, compare: str = "pearson", **_) -> int:
    """Pearson: prepared rows of every layer (float64 and compute copies) plus the blocked workspace;
    rank comparators: every layer's condensed RDM and its ranks (float64) at once."""
    layers = len(dx) + len(dy or [])
    prepared = 16 * n * (sum(dx) + sum(dy or []))
    if compare == "pearson":
        from .blocked import blocked_workspace

        return prepared + blocked_workspace(n, layers, 8, limit)
    return prepared + 3 * 8 * layers * n * (n - 1) // 2 + 8 * n * n


_MIN_REASON = "an RDM comparison needs at least 3 samples"


def _check_rsa_options(rdm: str = "cosine", compare: str = "pearson", **_) -> None:
    check_choice(rdm, "rdm", RDMS)
    check_choice(compare, "compare", COMPARATORS)


def _rsa_invariances(rdm: str = "cosine", **_) -> tuple[str, ...]:
    # every comparator is invariant to a positive rescaling of an RDM, so a feature map acts through
    # what it does to the dissimilarities: cosines see rotations and scale, not shifts; Euclidean
    # distances see rotations and shifts, scale only rescales them; the correlation across features
    # centres each sample over its features, which a rotation does not preserve
    return {
        "cosine": ("orthogonal", "isotropic_scaling", "permutation"),
        "euclidean": ("orthogonal", "isotropic_scaling", "translation", "permutation"),
        "correlation": ("isotropic_scaling", "permutation"),
    }[rdm]


def standardised_rdm(a: Tensor, compare: str) -> Tensor:
    """The (n, n) float64 symmetric zero-diagonal matrix of the RDM's upper-triangle entries (their
    average ranks for ``compare="spearman"``) standardised to mean 0 and population variance 1: the
    Pearson (Spearman) RSA of two RDMs is sum_{a != b} A_ab B_ab / (n (n - 1)) of these."""
    n = a.shape[0]
    iu = torch.triu_indices(n, n, 1, device=a.device)
    v = a[iu[0], iu[1]].to(ACC)
    if compare == "spearman":
        v = average_ranks(v)
    v = (v - v.mean()) / v.std(correction=0)
    full = torch.zeros(n, n, dtype=ACC, device=a.device)
    full[iu[0], iu[1]] = v
    return full + full.T  # symmetric with a zero diagonal: the sum over a != b counts every pair twice


@dataclass(frozen=True)
class RSAForm(QuadraticForm):
    """Pearson (Spearman) RSA as a quadratic form: A = the standardised RDM (ranked for Spearman),
    statistic Q / (n (n - 1)). Pearson RSA on a subsample is a function of the full RDMs restricted
    to it (``subsample_matrices``); Spearman's ranks change with the subsample."""

    rdm: str = "cosine"
    compare: str = "pearson"

    @property
    def subsample_matrices(self) -> bool:
        return self.compare == "pearson"

    def raw_matrix(self, z: Tensor) -> Tensor:
        # float64: RDM entries share a large common level, which float32 sums would cancel away
        return rdm(z, method=self.rdm).to(ACC)

    def side(self, z: Tensor, native: bool = False) -> Side:
        a = rdm(z, method=self.rdm)
        n = a.shape[0]
        return Side(standardised_rdm(a, self.compare), None, {"pairs": torch.tensor(float(n * (n - 1)), dtype=ACC)})

    def finish(self, q: Tensor, d: Tensor | None, sx: dict, sy: dict) -> Tensor:
        return q / sx["pairs"][:, None, None]


def _rsa_quadratic(compare: str = "pearson", rdm: str = "cosine", **_) -> RSAForm | None:
    return RSAForm(rdm, compare) if compare in ("pearson", "spearman") else None


def _rsa_pairs(xs, ys, rdm: str, compare: str, dtype, names) -> Tensor:
    return rsa_grid_validated(xs, ys, rdm, compare, dtype, names)


def _rsa_differentiable(compare: str = "pearson", **_) -> bool:
    # Pearson of the RDMs' entries has a gradient; Spearman and Kendall rank them (ranks are piecewise
    # constant, and Kendall's tau is computed by SciPy on the host)
    return compare == "pearson"


@layer_measure(
    "rsa",
    differentiable=_rsa_differentiable,
    grid=_rsa_pairs,
    options_check=_check_rsa_options,
    min_samples=3,
    reason=_MIN_REASON,
    family="rsa",
    larger_is_more_similar=True,
    invariances=_rsa_invariances,
    cost="O(n^2 d + n^2 log n) (rank comparators)",
    identity_value=1.0,
    reference="Kriegeskorte et al. 2008",
    workspace=_rsa_workspace,
    quadratic=_rsa_quadratic,
    gram_pass="rsa",
    aliases={"rsa_spearman": dict(defaults={"compare": "spearman"}, cost="O(n^2 d + n^2 log n)")},
)
def rsa(
    x: Tensor,
    y: Tensor,
    *,
    rdm: str = "cosine",
    compare: str = "pearson",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """RSA: correlation between the upper triangles of the RDMs of ``x`` (n, p) and ``y`` (n, q).

    Args:
        rdm: "cosine" (1 - cosine similarity), "correlation" (1 - Pearson r) or "euclidean".
        compare: "pearson", "spearman", "kendall" (tau_a) or "kendall_tau_b" (tau_a corrected for
            ties; 1 for an RDM with tied entries against itself, where tau_a is below 1).
    Returns a float64 0-d tensor. O(n^2) memory. ``rsa.grid(xs, ys)`` (= :func:`rsa_grid`): each
    layer's RDM (and ranks, for Spearman) once; Pearson and Spearman grids are one matrix product
    of the standardised upper triangles (Pearson by row blocks: no n x n RDM is held).
    """


rsa_grid = rsa.grid


def rsa_grid_validated(
    xs: list[Tensor],
    ys: list[Tensor],
    rdm: str,
    compare: str,
    dtype: torch.dtype | None,
    names: tuple[list[str], list[str]],
) -> Tensor:
    compute = resolve_dtype(dtype, *xs, *ys)
    if compare == "pearson":  # by row blocks: no n x n RDM per layer is ever held
        return _pearson_grid_blocked(xs, ys, rdm, compute, names)

    def vectors(group: list[Tensor], group_names: list[str]) -> list[Tensor]:
        return [_upper(_rdm(t, rdm, nm, compute)) for t, nm in zip(group, group_names, strict=True)]

    ax = vectors(xs, names[0])
    by = ax if ys is xs else vectors(ys, names[1])
    if compare in ("kendall", "kendall_tau_b"):
        tau = kendall_tau_a if compare == "kendall" else kendall_tau_b
        return torch.stack([torch.stack([tau(a, b) for b in by]) for a in ax])
    px = torch.stack([_prepared(a, compare, nm) for a, nm in zip(ax, names[0], strict=True)])
    py = px if by is ax else torch.stack([_prepared(b, compare, nm) for b, nm in zip(by, names[1], strict=True)])
    return px @ py.T
