"""Neighbourhood measures: do two representations put the same samples next to each other?

Neighbours are by cosine similarity (ReSi's and the platonic-representation paper's default):
N_k(i) is the set of the k samples j != i with the largest cos(x_i, x_j). Each layer's lists come
from :func:`repsim.knn_lists` (exact blocked search with ties broken by index, or an approximate
faiss index: the ``knn`` option), so the n x n similarity matrix never exists, and the sample
itself is excluded by its index (not by assuming it is its own first neighbour, which duplicated
samples break).

In a layer grid each layer's lists are computed once (and once per :func:`repsim.knn_cache` scope
across measures); every measure is then a function of the (n, k) lists (CKNNA also of the
similarities on them, second-order cosine of the unit rows). That is what makes the permutation
null cheap: y[perm]'s lists are y's lists relabelled (:meth:`repsim.KNNLists.permuted`), so B
permutations cost O(B n k^2) list comparisons (second-order cosine: O(B n k d) gathered products)
instead of B searches of O(n^2 d). Nothing here streams: neighbours need all rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC, unbiased_hsic
from .kinds import layer_measure
from .knn import cached_lists, check_knn_options, exact_indices, knn_bytes, resolve_route, unit_rows_in

_RESI = "Klabunde et al. 2025, ReSi (ICLR)"
_HUH = "Huh et al. 2024, The platonic representation hypothesis (ICML)"
_COSINE_KNN = ("orthogonal", "isotropic_scaling", "permutation")
_COST = "O(n^2 d) exact (knn='approx': O(n d log n)), O(block_size n + n k) memory"


def _workspace(n, dims_x, dims_y, limit, *, k=10, knn="exact", **_) -> int:
    """Peak bytes of a neighbour grid: every layer's lists (n k), the largest layer's search, and
    one pair's (n, k, k) comparison (CKNNA's: booleans and the float64 values matched on them)."""
    dims = [*dims_x, *(dims_y or [])]
    searches = [knn_bytes(n, d, k, resolve_route(knn, n, d)) for d in dims]
    lists = len(dims) * n * k * 16
    return int(max(searches) + lists + 9 * n * k * k)


_NEIGHBOURS = dict(
    family="neighbours",
    larger_is_more_similar=True,
    invariances=_COSINE_KNN,
    cost=_COST,
    min_samples=2,
    options_check=check_knn_options,
    workspace=_workspace,
)


@deprecated_arguments(positional=("block_size",))
def knn_indices(z: Tensor, k: int, *, block_size: int = 4096) -> Tensor:
    """(n, k) indices of each row's k most cosine-similar other rows (rows of ``z`` unit length),
    nearest first, ties by the smaller index (see :func:`repsim.knn_lists`)."""
    return exact_indices(z, k, block_size)


def _check_k(k: int, n: int, minimum: int = 1) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < minimum:
        raise ValueError(f"k must be an integer >= {minimum} (the number of neighbours), got {k!r}")
    if k >= n:
        raise ValueError(f"k = {k} neighbours need at least k + 1 = {k + 1} samples, got n = {n}; lower k")


class _Layer:
    """One layer's neighbour lists (a :class:`~repsim.KNNLists`) and, when a measure asks, its unit
    rows; shared by every pair it takes part in."""

    def __init__(self, knn: Tensor, similarities, rows, lists=None) -> None:
        self.lists, self.knn, self._rows, self._z = lists, knn, rows, None
        self._sims = similarities  # a tensor, or a function giving it (permuted: only CKNNA reads them)
        self._pattern = None
        self.self_hsic: Tensor | None = None  # CKNNA's HSIC(M∘K, M∘K): unchanged by a permutation

    @classmethod
    def of(cls, x: Tensor, name: str, k: int, dtype, block_size: int, knn: str, recall: float) -> _Layer:
        lists = cached_lists(x, k, knn=knn, recall=recall, block_size=block_size, dtype=dtype)
        return cls(lists.indices, lists.similarities, lambda: unit_rows_in(x, dtype, name), lists)

    @property
    def sims(self) -> Tensor:
        if callable(self._sims):
            self._sims = self._sims()
        return self._sims

    @property
    def z(self) -> Tensor:
        if self._z is None:
            self._z = self._rows()
        return self._z

    def permuted(self, perm: Tensor, inverse: Tensor) -> _Layer:
        """This layer with its samples permuted (y[perm]; ``inverse`` = perm^-1): the lists relabelled
        as :meth:`repsim.KNNLists.permuted` does, no new search."""
        out = _Layer(inverse[self.knn[perm]], lambda: self.sims[perm], lambda: self.z[perm])
        out.self_hsic = self.self_hsic
        return out


def _chunks(n: int, k: int):
    """Row ranges whose (rows, k, k) comparisons stay within 2^26 entries."""
    step = max(1, 2**26 // (k * k))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _matches(a: Tensor, b: Tensor) -> Tensor:
    """(..., n, k, k) boolean: a[..., i, r] == b[..., i, s] (neighbour lists hold distinct indices)."""
    return a[..., :, :, None] == b[..., :, None, :]


def _per_pair(stat):
    """The (L, M) grid of ``stat(a, b, k) -> 0-d`` over every pair of layers."""

    def grid(lx, ly, k):
        return torch.stack([torch.stack([stat(a, b, k) for b in ly]) for a in lx]).to(ACC)

    return grid


def _layers(xs, ys, names, k, block_size, dtype, knn, recall, min_k):
    _check_k(k, xs[0].shape[0], min_k)

    def of(layers, layer_names):
        return [_Layer.of(t, nm, k, dtype, block_size, knn, recall) for t, nm in zip(layers, layer_names, strict=True)]

    lx = of(xs, names[0])
    ly = lx if ys is xs else of(ys, names[1])
    return lx, ly


def _neighbour_grid(per_pair_stat, min_k: int = 1):
    """The batched grid of a neighbourhood measure: each layer's lists once (a :class:`_Layer`),
    then ``per_pair_stat(lx, ly, k)`` -> (L, M) for every pair."""

    def grid(xs, ys, k: int, block_size: int, dtype, knn: str, recall: float, names) -> Tensor:
        lx, ly = _layers(xs, ys, names, k, block_size, dtype, knn, recall, min_k)
        return per_pair_stat(lx, ly, k).to(ACC)

    return grid


def _neighbour_null(per_pair_stat, min_k: int = 1):
    """The measure's grid under each permutation of y's samples (L, M, B), from lists searched once:
    y[perm]'s lists are y's relabelled (:meth:`_Layer.permuted`)."""

    def null(xs, ys, perms, k: int, block_size: int, dtype, knn: str, recall: float, names) -> Tensor:
        lx, ly = _layers(xs, ys, names, k, block_size, dtype, knn, recall, min_k)
        out = []
        for perm in perms.to(ly[0].knn.device):
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(perm.numel(), device=perm.device)
            out.append(per_pair_stat(lx, [b.permuted(perm, inverse) for b in ly], k).to(ACC))
        return torch.stack(out, dim=-1)

    return null


# -------------------------------------------------------------------------------- overlap measures
def _common(a: _Layer, b: _Layer) -> Tensor:
    """(n,) |N_k(i) ∩ N'_k(i)|, by row chunks."""
    n, k = a.knn.shape
    # lists hold distinct indices: each entry of x's list is in y's or not; k passes over (n, k)
    # (measured 4x faster on CPU than one (n, k, k) comparison, and n k memory)
    common = torch.zeros(n, dtype=torch.int64, device=a.knn.device)
    for r in range(k):
        common += (a.knn[:, r, None] == b.knn).any(1)
    return common.to(ACC)


def _jaccard(a, b, k):
    common = _common(a, b)
    return (common / (2 * k - common)).mean()


def _mutual(a, b, k):
    return (_common(a, b) / k).mean()


def _rank(a, b, k):
    r = torch.arange(1, k + 1, device=a.knn.device, dtype=ACC)
    weight = 2.0 / ((1 + (r[:, None] - r[None, :]).abs()) * (r[:, None] + r[None, :]))
    harmonic = torch.cat([torch.zeros(1, dtype=ACC, device=a.knn.device), (1.0 / r).cumsum(0)])
    total = torch.zeros((), dtype=ACC, device=a.knn.device)
    for s, e in _chunks(*a.knn.shape):
        eq = _matches(a.knn[s:e], b.knn[s:e])  # rank r in x's list equals rank s in y's list
        score, common = (eq * weight).sum((-2, -1)), eq.sum((-2, -1))
        total += torch.where(common > 0, score / harmonic[common].clamp_min(1e-300), torch.zeros_like(score)).sum()
    return total / a.knn.shape[0]


def _cycle(a, b, k):
    n = a.knn.shape[0]
    hits = torch.zeros((), dtype=ACC, device=a.knn.device)
    for s, e in _chunks(n, k):
        # i -> its neighbours j in y -> their neighbours in x: does the cycle come back to i?
        back = a.knn[b.knn[s:e]]  # (rows, k, k)
        self_index = torch.arange(s, e, device=back.device)[:, None, None]
        hits += (back == self_index).flatten(1).any(1).sum()
    return hits / n


def _second_order(a, b, k):
    # the union of both lists: x's k neighbours, then y's that x's list lacks (weight 0 for repeats)
    joint = torch.cat([a.knn, b.knn], dim=1)  # (n, 2k)
    keep = torch.cat([torch.ones_like(a.knn, dtype=torch.bool), ~_matches(b.knn, a.knn).any(-1)], dim=1)
    sx = (a.z[:, None, :] * a.z[joint]).sum(-1).to(ACC) * keep
    sy = (b.z[:, None, :] * b.z[joint]).sum(-1).to(ACC) * keep
    cos = (sx * sy).sum(1) / (sx.norm(dim=1) * sy.norm(dim=1)).clamp_min(1e-300)
    return cos.mean()


@layer_measure(
    "jaccard_knn",
    differentiable=False,
    grid=_neighbour_grid(_per_pair(_jaccard)),
    null_grid=_neighbour_null(_per_pair(_jaccard)),
    identity_value=1.0,
    reference=_RESI,
    **_NEIGHBOURS,
)
def jaccard_knn(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 10,
    knn: str = "exact",
    recall: float = 0.99,
    block_size: int = 4096,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Mean Jaccard similarity of the k-NN sets: mean_i |N_k(i) ∩ N'_k(i)| / |N_k(i) ∪ N'_k(i)| (ReSi).

    Cosine neighbours; invariant to rotations, isotropic scaling and feature permutations, not to
    translation. O(n^2 d) time exact (``knn='approx'``: a faiss index), O(block_size n + n k) memory.

    ``knn``: the lists' route ("exact": blocked search, ties by index; "approx": a faiss index
    whose search breadth reaches ``recall``@k against exact search on seeded queries; "auto":
    exact while n^2 d <= 1e12), see :func:`repsim.knn_lists`.
    """


@layer_measure(
    "mutual_knn",
    differentiable=False,
    grid=_neighbour_grid(_per_pair(_mutual)),
    null_grid=_neighbour_null(_per_pair(_mutual)),
    identity_value=1.0,
    reference=_HUH,
    **_NEIGHBOURS,
)
def mutual_knn(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 10,
    knn: str = "exact",
    recall: float = 0.99,
    block_size: int = 4096,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Mutual k-NN alignment of the platonic-representation paper: mean_i |N_k(i) ∩ N'_k(i)| / k.

    Neighbours by cosine similarity (the paper L2-normalises features and ranks inner products).

    ``knn``: the lists' route ("exact": blocked search, ties by index; "approx": a faiss index
    whose search breadth reaches ``recall``@k against exact search on seeded queries; "auto":
    exact while n^2 d <= 1e12), see :func:`repsim.knn_lists`.
    """


@layer_measure(
    "rank_similarity",
    differentiable=False,
    grid=_neighbour_grid(_per_pair(_rank)),
    null_grid=_neighbour_null(_per_pair(_rank)),
    identity_value=1.0,
    reference="Wang et al. 2022; " + _RESI,
    **_NEIGHBOURS,
)
def rank_similarity(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 10,
    knn: str = "exact",
    recall: float = 0.99,
    block_size: int = 4096,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Rank similarity (Wang et al. 2022, as defined in ReSi's survey): neighbours shared by both
    lists, weighted by how high and how equally they rank.

    For sample i with common neighbours C_i = N_k(i) ∩ N'_k(i) and 1-based ranks r_j, r'_j:
    v_i = [sum_{j in C_i} 2 / ((1 + |r_j - r'_j|)(r_j + r'_j))] / sum_{m=1}^{|C_i|} 1/m  (0 if C_i is empty);
    the measure is mean_i v_i, in [0, 1].

    ``knn``: the lists' route ("exact": blocked search, ties by index; "approx": a faiss index
    whose search breadth reaches ``recall``@k against exact search on seeded queries; "auto":
    exact while n^2 d <= 1e12), see :func:`repsim.knn_lists`.
    """


@layer_measure(
    "cycle_knn",
    differentiable=False,
    grid=_neighbour_grid(_per_pair(_cycle)),
    null_grid=_neighbour_null(_per_pair(_cycle)),
    symmetric=False,
    identity_value=None,  # kNN is not a symmetric relation: even cycle_knn(x, x) can be below 1
    attainable_best=1.0,  # a fraction of samples: 1 when every cycle returns
    reference=_HUH,
    **_NEIGHBOURS,
)
def cycle_knn(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 10,
    knn: str = "exact",
    recall: float = 0.99,
    block_size: int = 4096,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Cycle k-NN (Huh et al. 2024): the fraction of samples i for which some neighbour j of i in y
    has i among its neighbours in x (i -> N'_k(i) -> N_k(j) returns to i). Not symmetric.

    ``knn``: the lists' route ("exact": blocked search, ties by index; "approx": a faiss index
    whose search breadth reaches ``recall``@k against exact search on seeded queries; "auto":
    exact while n^2 d <= 1e12), see :func:`repsim.knn_lists`.
    """


@layer_measure(
    "second_order_cosine",
    differentiable=True,
    grid=_neighbour_grid(_per_pair(_second_order)),
    null_grid=_neighbour_null(_per_pair(_second_order)),
    identity_value=1.0,
    reference="Hamilton et al. 2016, Cultural shift or linguistic drift? (EMNLP); " + _RESI,
    **_NEIGHBOURS,
)
def second_order_cosine(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 10,
    knn: str = "exact",
    recall: float = 0.99,
    block_size: int = 4096,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Second-order cosine similarity (Hamilton et al. 2016).

    For each sample i, with U_i = N_k(i) ∪ N'_k(i): the cosine similarity between the vectors
    (cos(x_i, x_j))_{j in U_i} and (cos(y_i, y_j))_{j in U_i}; averaged over i. These are
    cosine *similarities*, as published (ReSi uses cosine distances in the vectors).

    ``knn``: the lists' route ("exact": blocked search, ties by index; "approx": a faiss index
    whose search breadth reaches ``recall``@k against exact search on seeded queries; "auto":
    exact while n^2 d <= 1e12), see :func:`repsim.knn_lists`.
    """


# -------------------------------------------------------------------------------- CKNNA
class _Pattern:
    """The sparse pattern of a layer's kNN mask (entries (i, j) for j in N_k(i), row-major as the
    (n, k) lists) and, for each entry, the position of its transpose (j, i) in it, or -1."""

    def __init__(self, knn: Tensor) -> None:
        n, k = knn.shape
        rows = torch.arange(n, device=knn.device).repeat_interleave(k)
        cols = knn.reshape(-1)
        keys = rows * n + cols
        order = keys.argsort()
        ordered = keys[order]
        transposed = cols * n + rows
        pos = torch.searchsorted(ordered, transposed).clamp_max(ordered.numel() - 1)
        self.n, self.cols = n, cols
        self.transpose = torch.where(ordered[pos] == transposed, order[pos], torch.full_like(pos, -1))

    def hsic(self, a: Tensor, b: Tensor) -> Tensor:
        """Song et al.'s unbiased HSIC of the zero-diagonal matrices A, B with values ``a``, ``b``
        (n, k) on this pattern (0 elsewhere): tr(A B) = sum_ij A_ij B_ji, 1^T A B 1 = (A^T 1).(B 1)."""
        a, b = a.reshape(-1), b.reshape(-1)
        b_t = torch.where(self.transpose >= 0, b[self.transpose.clamp_min(0)], torch.zeros_like(b))
        a_cols = torch.zeros(self.n, dtype=ACC, device=a.device).index_add_(0, self.cols, a)
        b_rows = b.view(self.n, -1).sum(1)
        return unbiased_hsic(self.n, (a * b_t).sum(), a.sum(), b.sum(), a_cols @ b_rows)


def _pattern(layer: _Layer) -> _Pattern:
    if layer._pattern is None:
        layer._pattern = _Pattern(layer.knn)
    return layer._pattern


def _self_hsic(layer: _Layer, name: str) -> Tensor:
    if layer.self_hsic is None:
        layer.self_hsic = _pattern(layer).hsic(layer.sims, layer.sims)
    value = layer.self_hsic
    if not bool(value > 0):
        raise ValueError(
            f"CKNNA is undefined: the masked self-similarity of {name} is not positive (too few samples or "
            "neighbours); use more samples or a larger k"
        )
    return value


def _cknna_pair(a: _Layer, b: _Layer, k: int) -> Tensor:
    # on x's pattern: entries (i, j) with j in both lists keep K_ij (x's similarity) and L_ij (y's,
    # read from y's list at j's position there); the rest of both masked kernels is 0
    eq = _matches(a.knn, b.knn)  # (n, k, k)
    both = eq.any(-1)
    l_on_x = (eq * b.sims[:, None, :]).sum(-1)
    cross = _pattern(a).hsic(a.sims * both, l_on_x * both)
    return cross / (_self_hsic(a, "x") * _self_hsic(b, "y")).sqrt()


@layer_measure(
    "cknna",
    differentiable=True,
    grid=_neighbour_grid(_per_pair(_cknna_pair), min_k=2),
    null_grid=_neighbour_null(_per_pair(_cknna_pair), min_k=2),
    min_samples=4,
    cost=_COST,
    options_check=check_knn_options,
    workspace=_workspace,
    symmetric=False,  # the kNN masks are not symmetric, and 1^T K L 1 uses K's column and L's row sums
    identity_value=1.0,
    reference=_HUH,
    family="neighbours",
    larger_is_more_similar=True,
    invariances=_COSINE_KNN,
)
def cknna(
    x: Tensor,
    y: Tensor,
    *,
    k: int = 10,
    knn: str = "exact",
    recall: float = 0.99,
    block_size: int = 4096,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """CKNNA (Huh et al. 2024): CKA restricted to pairs that are mutual k-nearest neighbours.

    K = Z_x Z_x^T, L = Z_y Z_y^T of the unit rows; M_ij = 1 if j is among i's k nearest neighbours
    in both x and y. CKNNA = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_x∘K, M_x∘K) HSIC_u(M_y∘L, M_y∘L)) with
    Song et al.'s unbiased HSIC. Because the kNN relation is not symmetric, neither are the masked
    kernels nor (slightly) the measure: cknna(x, y) != cknna(y, x) in general. No epsilon is
    added to the denominator (the paper's code adds 1e-6); an undefined value is refused. The
    masked kernels are kept sparse on the lists (O(n k) memory): K's entries are the lists'
    float64 similarities.

    ``knn``: the lists' route ("exact": blocked search, ties by index; "approx": a faiss index
    whose search breadth reaches ``recall``@k against exact search on seeded queries; "auto":
    exact while n^2 d <= 1e12), see :func:`repsim.knn_lists`.
    """
