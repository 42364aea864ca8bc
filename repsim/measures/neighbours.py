"""Neighbourhood measures: do two representations put the same samples next to each other?

Neighbours are by cosine similarity (ReSi's and the platonic-representation paper's default):
N_k(i) is the set of the k samples j != i with the largest cos(x_i, x_j). Lists come from a
blocked ``topk`` over row blocks, so the n x n similarity matrix never has to exist at once,
and the sample itself is excluded by its index (not by assuming it is its own first neighbour,
which duplicated samples break). Ties (exactly equal similarities) are ordered as
``torch.topk`` returns them.

In a layer grid each layer's neighbour lists are computed once; the overlaps of all L x M pairs
are batched comparisons of (n, k) index lists. Nothing here streams: neighbours need all rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC, unbiased_hsic, unit_rows
from ..core.validation import (
    resolve_dtype,
)
from .kinds import layer_measure

_RESI = "Klabunde et al. 2025, ReSi (ICLR)"
_HUH = "Huh et al. 2024, The platonic representation hypothesis (ICML)"
_COSINE_KNN = ("orthogonal", "isotropic_scaling", "permutation")
_NEIGHBOURS = dict(
    family="neighbours",
    larger_is_more_similar=True,
    invariances=_COSINE_KNN,
    cost="O(n^2 d), O(block_size n) memory",
    min_samples=2,
)


def _unit_rows(x: Tensor, name: str, dtype) -> Tensor:
    """Unit rows normalised in float64, returned in the compute dtype."""
    return unit_rows(x.to(ACC), name).to(resolve_dtype(dtype, x))


@deprecated_arguments(positional=("block_size",))
def knn_indices(z: Tensor, k: int, *, block_size: int = 4096) -> Tensor:
    """(n, k) indices of each row's k most cosine-similar other rows (rows of ``z`` unit length), nearest first."""
    n = z.shape[0]
    out = torch.empty(n, k, dtype=torch.long, device=z.device)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sims = z[start:stop] @ z.T
        rows = torch.arange(stop - start, device=z.device)
        sims[rows, rows + start] = -math.inf  # exclude the sample itself, by index
        out[start:stop] = sims.topk(k, dim=1).indices
    return out


def _check_k(k: int, n: int, minimum: int = 1) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < minimum:
        raise ValueError(f"k must be an integer >= {minimum} (the number of neighbours), got {k!r}")
    if k >= n:
        raise ValueError(f"k = {k} neighbours need at least k + 1 = {k + 1} samples, got n = {n}; lower k")


class _Layer:
    """One layer's unit rows and neighbour lists, shared by every pair it takes part in."""

    def __init__(self, x: Tensor, name: str, k: int, dtype, block_size: int) -> None:
        self.z = _unit_rows(x, name, dtype)
        self.knn = knn_indices(self.z, k, block_size=block_size)


def _matches(a: Tensor, b: Tensor) -> Tensor:
    """(..., n, k, k) boolean: a[..., i, r] == b[..., i, s] (neighbour lists hold distinct indices)."""
    return a[..., :, :, None] == b[..., :, None, :]


def _per_x_layer(lx, ly, stat) -> Tensor:
    """(L, M): ``stat(eq)`` -> (M,) of one x layer's list matches with every y layer, eq (M, n, k, k)
    boolean; one x layer at a time, so the (L, M, n, k, k) comparisons never exist at once."""
    b = torch.stack([layer.knn for layer in ly])  # (M, n, k)
    return torch.stack([stat(_matches(a.knn[None], b)) for a in lx])


def _neighbour_workspace(n: int, dx: list[int], dy: list[int] | None, limit: int, k: int = 10,
                         block_size: int = 4096, **_) -> int:  # fmt: skip
    """Unit rows (float64 at most) and lists of every layer, one similarity row block, and one x layer's
    (M, n, k, k) list comparisons with their float64 sums."""
    layers = len(dx) + len(dy or [])
    m = len(dy) if dy is not None else len(dx)
    return 8 * n * (sum(dx) + sum(dy or [])) + 8 * layers * n * k + 8 * min(block_size, n) * n + 9 * m * n * k * k


_NEIGHBOURS["workspace"] = _neighbour_workspace


def _neighbour_grid(per_pair_stat, min_k: int = 1):
    """The batched grid of a neighbourhood measure: each layer's unit rows and lists once (a
    :class:`_Layer`), then ``per_pair_stat(lx, ly, k)`` -> (L, M) for every pair at once."""

    def grid(xs, ys, k: int, block_size: int, dtype, names) -> Tensor:
        _check_k(k, xs[0].shape[0], min_k)
        lx = [_Layer(x, nm, k, dtype, block_size) for x, nm in zip(xs, names[0], strict=True)]
        ly = lx if ys is xs else [_Layer(y, nm, k, dtype, block_size) for y, nm in zip(ys, names[1], strict=True)]
        return per_pair_stat(lx, ly, k).to(ACC)

    return grid


# -------------------------------------------------------------------------------- overlap measures
def _jaccard(lx, ly, k):
    def stat(eq):
        common = eq.sum((-2, -1)).to(ACC)  # (M, n)
        return (common / (2 * k - common)).mean(-1)

    return _per_x_layer(lx, ly, stat)


def _mutual(lx, ly, k):
    return _per_x_layer(lx, ly, lambda eq: (eq.sum((-2, -1)).to(ACC) / k).mean(-1))


def _rank(lx, ly, k):
    r = torch.arange(1, k + 1, device=lx[0].knn.device, dtype=ACC)
    weight = 2.0 / ((1 + (r[:, None] - r[None, :]).abs()) * (r[:, None] + r[None, :]))
    harmonic = torch.cat([torch.zeros(1, dtype=ACC, device=r.device), (1.0 / r).cumsum(0)])

    def stat(eq):  # eq (M, n, k, k): rank r in x's list equals rank s in y's list
        score = (eq * weight).sum((-2, -1))
        common = eq.sum((-2, -1))
        norm = harmonic[common]
        return torch.where(common > 0, score / norm.clamp_min(1e-300), torch.zeros_like(score)).mean(-1)

    return _per_x_layer(lx, ly, stat)


def _cycle(lx, ly, k):
    out = torch.empty(len(lx), len(ly), dtype=ACC, device=lx[0].knn.device)
    n = lx[0].knn.shape[0]
    self_index = torch.arange(n, device=out.device)[:, None, None]
    for i, a in enumerate(lx):
        for j, b in enumerate(ly):
            # i -> its neighbours j in y -> their neighbours in x: does the cycle come back to i?
            back = a.knn[b.knn]  # (n, k, k)
            out[i, j] = (back == self_index).flatten(1).any(1).to(ACC).mean()
    return out


def _second_order(lx, ly, k):
    out = torch.empty(len(lx), len(ly), dtype=ACC, device=lx[0].knn.device)
    for i, a in enumerate(lx):
        for j, b in enumerate(ly):
            # the union of both lists: x's k neighbours, then y's that x's list lacks (weight 0 for repeats)
            joint = torch.cat([a.knn, b.knn], dim=1)  # (n, 2k)
            keep = torch.cat([torch.ones_like(a.knn, dtype=torch.bool), ~_matches(b.knn, a.knn).any(-1)], dim=1)
            sx = (a.z[:, None, :] * a.z[joint]).sum(-1).to(ACC) * keep
            sy = (b.z[:, None, :] * b.z[joint]).sum(-1).to(ACC) * keep
            cos = (sx * sy).sum(1) / (sx.norm(dim=1) * sy.norm(dim=1)).clamp_min(1e-300)
            out[i, j] = cos.mean()
    return out


@layer_measure(
    "jaccard_knn",
    differentiable=False,
    grid=_neighbour_grid(_jaccard),
    identity_value=1.0,
    reference=_RESI,
    **_NEIGHBOURS,
)
def jaccard_knn(
    x: Tensor, y: Tensor, *, k: int = 10, block_size: int = 4096, dtype: torch.dtype | None = None
) -> Tensor:
    """Mean Jaccard similarity of the k-NN sets: mean_i |N_k(i) ∩ N'_k(i)| / |N_k(i) ∪ N'_k(i)| (ReSi).

    Cosine neighbours; invariant to rotations, isotropic scaling and feature permutations, not to
    translation. O(n^2 d) time, O(block_size n) memory.
    """


@layer_measure(
    "mutual_knn",
    differentiable=False,
    grid=_neighbour_grid(_mutual),
    identity_value=1.0,
    reference=_HUH,
    **_NEIGHBOURS,
)
def mutual_knn(
    x: Tensor, y: Tensor, *, k: int = 10, block_size: int = 4096, dtype: torch.dtype | None = None
) -> Tensor:
    """Mutual k-NN alignment of the platonic-representation paper: mean_i |N_k(i) ∩ N'_k(i)| / k.

    Neighbours by cosine similarity (the paper L2-normalises features and ranks inner products).
    """


@layer_measure(
    "rank_similarity",
    differentiable=False,
    grid=_neighbour_grid(_rank),
    identity_value=1.0,
    reference="Wang et al. 2022; " + _RESI,
    **_NEIGHBOURS,
)
def rank_similarity(
    x: Tensor, y: Tensor, *, k: int = 10, block_size: int = 4096, dtype: torch.dtype | None = None
) -> Tensor:
    """Rank similarity (Wang et al. 2022, as defined in ReSi's survey): neighbours shared by both
    lists, weighted by how high and how equally they rank.

    For sample i with common neighbours C_i = N_k(i) ∩ N'_k(i) and 1-based ranks r_j, r'_j:
    v_i = [sum_{j in C_i} 2 / ((1 + |r_j - r'_j|)(r_j + r'_j))] / sum_{m=1}^{|C_i|} 1/m  (0 if C_i is empty);
    the measure is mean_i v_i, in [0, 1].
    """


@layer_measure(
    "cycle_knn",
    differentiable=False,
    grid=_neighbour_grid(_cycle),
    symmetric=False,
    identity_value=None,  # kNN is not a symmetric relation: even cycle_knn(x, x) can be below 1
    attainable_best=1.0,  # a fraction of samples: 1 when every cycle returns
    reference=_HUH,
    **_NEIGHBOURS,
)
def cycle_knn(x: Tensor, y: Tensor, *, k: int = 10, block_size: int = 4096, dtype: torch.dtype | None = None) -> Tensor:
    """Cycle k-NN (Huh et al. 2024): the fraction of samples i for which some neighbour j of i in y
    has i among its neighbours in x (i -> N'_k(i) -> N_k(j) returns to i). Not symmetric."""


@layer_measure(
    "second_order_cosine",
    differentiable=True,
    grid=_neighbour_grid(_second_order),
    identity_value=1.0,
    reference="Hamilton et al. 2016, Cultural shift or linguistic drift? (EMNLP); " + _RESI,
    **_NEIGHBOURS,
)
def second_order_cosine(
    x: Tensor, y: Tensor, *, k: int = 10, block_size: int = 4096, dtype: torch.dtype | None = None
) -> Tensor:
    """Second-order cosine similarity (Hamilton et al. 2016).

    For each sample i, with U_i = N_k(i) ∪ N'_k(i): the cosine similarity between the vectors
    (cos(x_i, x_j))_{j in U_i} and (cos(y_i, y_j))_{j in U_i}; averaged over i. These are
    cosine *similarities*, as published (ReSi uses cosine distances in the vectors).
    """


# -------------------------------------------------------------------------------- CKNNA
def _masked_kernel(layer: _Layer) -> tuple[Tensor, Tensor]:
    n = layer.z.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool, device=layer.z.device)
    mask.scatter_(1, layer.knn, True)
    return (layer.z @ layer.z.T).to(ACC), mask


def _song_hsic(k: Tensor, l: Tensor) -> Tensor:
    """Song et al.'s unbiased HSIC of zero-diagonal (possibly non-symmetric) kernels: tr(K L) = sum K * L^T
    and 1^T K L 1 = (K^T 1) . (L 1)."""
    return unbiased_hsic(k.shape[0], (k * l.T).sum(), k.sum(), l.sum(), k.sum(0) @ l.sum(1))


def _cknna(lx, ly, k):
    kx = [_masked_kernel(a) for a in lx]
    ky = kx if ly is lx else [_masked_kernel(b) for b in ly]
    self_x = [_song_hsic(g * m, g * m) for g, m in kx]
    self_y = self_x if ly is lx else [_song_hsic(g * m, g * m) for g, m in ky]
    for name, values in (("x", self_x), ("y", self_y)):
        if any(not bool(v > 0) for v in values):
            raise ValueError(
                f"CKNNA is undefined: the masked self-similarity of {name} is not positive (too few samples or "
                "neighbours); use more samples or a larger k"
            )
    out = torch.empty(len(lx), len(ly), dtype=ACC, device=lx[0].z.device)
    for i, (ga, ma) in enumerate(kx):
        for j, (gb, mb) in enumerate(ky):
            both = ma & mb
            out[i, j] = _song_hsic(ga * both, gb * both) / (self_x[i] * self_y[j]).sqrt()
    return out


@layer_measure(
    "cknna",
    differentiable=True,
    grid=_neighbour_grid(_cknna, min_k=2),
    min_samples=4,
    cost="O(n^2 d), O(n^2) memory",
    symmetric=False,  # the kNN masks are not symmetric, and 1^T K L 1 uses K's column and L's row sums
    identity_value=1.0,
    reference=_HUH,
    family="neighbours",
    larger_is_more_similar=True,
    invariances=_COSINE_KNN,
)
def cknna(x: Tensor, y: Tensor, *, k: int = 10, block_size: int = 4096, dtype: torch.dtype | None = None) -> Tensor:
    """CKNNA (Huh et al. 2024): CKA restricted to pairs that are mutual k-nearest neighbours.

    K = Z_x Z_x^T, L = Z_y Z_y^T of the unit rows; M_ij = 1 if j is among i's k nearest neighbours
    in both x and y. CKNNA = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_x∘K, M_x∘K) HSIC_u(M_y∘L, M_y∘L)) with
    Song et al.'s unbiased HSIC. Because the kNN relation is not symmetric, neither are the masked
    kernels nor (slightly) the measure: cknna(x, y) != cknna(y, x) in general. No epsilon is
    added to the denominator (the paper's code adds 1e-6); an undefined value is refused. O(n^2) memory per layer.
    """
