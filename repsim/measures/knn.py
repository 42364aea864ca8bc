"""Neighbour lists as reusable state: each sample's k most cosine-similar other samples.

:func:`knn_lists` computes a layer's lists once; every neighbourhood measure, the layer grid and
the permutation nulls of :mod:`repsim.inference` read them (a permutation of y's samples only
relabels y's lists: see :meth:`KNNLists.permuted`). Two routes:

* ``"exact"``: row blocks of the cosine similarity matrix (unit rows, products in the inputs'
  precision: float32 for float32 features), each block's top k selected and the block dropped,
  so n x n never exists; O(n^2 d) multiply-adds, O(block n) memory. Ties are broken
  deterministically: among equal similarities the smaller index ranks first, also at the k-th
  place (brute force with a lexicographic sort gives the same lists). The similarities of the
  chosen pairs are rescored in float64.
* ``"approx"``: a faiss index (``pip install repsim-toolkit[knn]``) on the unit rows with the inner
  product: HNSW (M = 32) when n d is small enough for its graph to build in seconds, IVF-Flat
  (nlist ~ 2 sqrt(n), trained on a seeded sample of 40 nlist rows) beyond. The search breadth
  (HNSW's efSearch, IVF's nprobe) is doubled until the recall@k measured against exact search on a
  seeded sample of queries reaches ``recall``; the recall reported is measured on a second,
  disjoint seeded sample, so it is not the one the breadth was tuned on. On CUDA tensors the IVF
  index moves to the GPU when faiss has GPU support (a code path not exercised by the CPU tests).
  Approximate lists have no deterministic tie order.

``"auto"`` is exact while the exact search's n^2 d multiply-adds stay under
:data:`AUTO_EXACT_FLOPS` (about a minute on one core), approximate beyond when faiss is installed.

Within :func:`knn_cache` (what ``calibrate``, ``permutation_test`` and ``compare`` open), lists
are kept per tensor (the same values in memory, unmodified) and reused by every neighbour measure.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..core.numerics import ACC, unit_rows
from ..core.validation import as_features, check_choice, resolve_dtype

__all__ = ["AUTO_EXACT_FLOPS", "KNNCache", "KNNLists", "knn_bytes", "knn_cache", "knn_lists", "resolve_route"]

ROUTES = ("exact", "approx", "auto")
INDEXES = ("auto", "hnsw", "ivf-flat")
AUTO_EXACT_FLOPS = 1e12
"""``knn="auto"`` stays exact while n^2 d is at most this (about a minute on one core)."""
_WORKSPACE = 512 * 2**20  # bytes of one block of similarities and its selection temporaries
_HNSW_MAX_ND = 2e7  # HNSW below this n d (its graph builds in seconds), IVF-Flat above


@dataclass(frozen=True, eq=False)  # tensors inside: compared by identity, not elementwise
class KNNLists:
    """One layer's neighbour lists: ``indices[i]`` are the k samples most cosine-similar to i (i
    excluded), nearest first; ``similarities[i]`` their cosines, rescored in float64."""

    indices: Tensor
    similarities: Tensor
    route: str
    """"exact" or "approx"."""
    params: dict = field(default_factory=dict)
    """The index and its parameters (approx): index, nlist / M, nprobe / efSearch."""
    recall: float | None = None
    """recall@k of approximate lists against exact search on a seeded query sample (None: exact)."""
    timings: dict = field(default_factory=dict, compare=False)
    """Seconds spent: products, selection (exact); build, truth (exact lists of the query sample),
    tune, search (approx); rescoring (both)."""

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    @property
    def n(self) -> int:
        return int(self.indices.shape[0])

    def describe(self) -> str:
        """The route in words: ``exact`` or ``approx hnsw M=32 efSearch=64 recall@10=0.991``."""
        if self.route == "exact":
            return "exact"
        params = " ".join(f"{key}={value}" for key, value in self.params.items() if key != "index")
        return f"approx {self.params.get('index', '')} {params} recall@{self.k}={self.recall:.3f}"

    def permuted(self, perm: Tensor) -> KNNLists:
        """The lists of ``y[perm]``: sample i of the permuted data is sample perm[i], and its
        neighbours perm[i]'s neighbours renamed by perm's inverse. Order (and so rank) is kept:
        cos(y[perm][i], y[perm][j]) = cos(y[perm[i]], y[perm[j]]). O(n k), no search."""
        perm = perm.to(self.indices.device)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        return KNNLists(inverse[self.indices[perm]], self.similarities[perm], self.route, self.params, self.recall)


# -------------------------------------------------------------------------------- exact
def _ordered(vals: Tensor, idx: Tensor) -> Tensor:
    """Indices ordered by similarity, descending, equal similarities by index, ascending."""
    order = idx.argsort(dim=1)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    return idx.gather(1, vals.argsort(dim=1, descending=True, stable=True))


def topk_by_index(sims: Tensor, k: int) -> Tensor:
    """(b, k) indices of each row's k largest values, ties broken by the smaller index (also at the
    k-th place, where ``topk`` alone would choose among equal values arbitrarily)."""
    m = min(k + 1, sims.shape[1])
    vals, idx = sims.topk(m, dim=1, sorted=False)  # unsorted is faster; the (b, k + 1) result is sorted here
    order = vals.argsort(dim=1, descending=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    tied = vals[:, k - 1] == vals[:, k] if m > k else torch.zeros(sims.shape[0], dtype=torch.bool, device=sims.device)
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    rows = tied.nonzero().squeeze(1)
    if rows.numel():  # a tie at the boundary (rare): take the smallest indices among the tied values
        sub = sims[rows]
        threshold = vals[rows, k - 1 :]
        greater, equal = sub > threshold, sub == threshold
        need = k - greater.sum(1, keepdim=True)
        chosen = (greater | (equal & (equal.cumsum(1) <= need))).nonzero()[:, 1].view(-1, k)
        idx[rows] = chosen
        vals[rows] = sub.gather(1, chosen)
    return _ordered(vals, idx)


def _sync(t: Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


def _block_rows(n: int, block_size: int, itemsize: int) -> int:
    """Rows per block: ``block_size`` at most, and one block's similarities (and the selection's
    temporaries, about three copies) within the workspace."""
    return max(1, min(block_size, _WORKSPACE // (3 * itemsize * max(n, 1))))


def exact_indices(z: Tensor, k: int, block_size: int = 4096, timings: dict | None = None, rows: Tensor | None = None):
    """(n, k) exact lists of the unit rows ``z`` (or of the query ``rows`` only), ties by index."""
    queries = torch.arange(z.shape[0], device=z.device) if rows is None else rows.to(z.device)
    out = torch.empty(queries.numel(), k, dtype=torch.long, device=z.device)
    step = _block_rows(z.shape[0], block_size, z.element_size())
    spent = {"products": 0.0, "selection": 0.0}
    for start in range(0, queries.numel(), step):
        q = queries[start : start + step]
        t0 = time.perf_counter()
        sims = (z[start : start + step] if rows is None else z[q]) @ z.T  # a slice: no gathered copy
        _sync(sims)
        t1 = time.perf_counter()
        sims[torch.arange(q.numel(), device=z.device), q] = -math.inf  # the sample itself, by index
        out[start : start + q.numel()] = topk_by_index(sims, k)
        _sync(out)
        spent["products"] += t1 - t0
        spent["selection"] += time.perf_counter() - t1
    if timings is not None:
        timings.update(spent)
    return out


def _rescored(x: Tensor, idx: Tensor) -> Tensor:
    """float64 cosines cos(x_i, x_idx[i, r]), by row blocks (never n x k x d at once)."""
    norms = x.to(ACC).norm(dim=1) if x.shape[0] * x.shape[1] <= 2**24 else _block_norms(x)
    out = torch.empty(idx.shape, dtype=ACC, device=x.device)
    step = max(1, 2**22 // max(1, idx.shape[1] * x.shape[1]))
    for start in range(0, idx.shape[0], step):
        i = idx[start : start + step]
        rows = x[start : start + step].to(ACC)
        dots = (rows[:, None, :] * x[i].to(ACC)).sum(-1)
        out[start : start + step] = dots / (norms[start : start + step, None] * norms[i])
    return out


def _block_norms(x: Tensor) -> Tensor:
    step = max(1, 2**24 // x.shape[1])
    return torch.cat([x[s : s + step].to(ACC).norm(dim=1) for s in range(0, x.shape[0], step)])


def unit_rows_in(x: Tensor, dtype, name: str = "x") -> Tensor:
    """Unit rows normalised in float64 (by blocks), returned in the compute dtype."""
    dtype = resolve_dtype(dtype, x)
    step = max(1, 2**24 // max(1, x.shape[1]))
    return torch.cat([unit_rows(x[s : s + step].to(ACC), name).to(dtype) for s in range(0, x.shape[0], step)])


# -------------------------------------------------------------------------------- approximate
def _faiss():
    try:
        import faiss
    except ImportError as err:  # an optional extra: say how to get it
        raise ImportError(
            "knn='approx' needs faiss: pip install 'repsim-toolkit[knn]' (faiss-cpu), or use knn='exact'"
        ) from err
    return faiss


def _build_index(faiss, data: np.ndarray, index: str, seed: int, gpu_device: int | None):
    n, d = data.shape
    kind = index if index != "auto" else ("hnsw" if n * d <= _HNSW_MAX_ND and gpu_device is None else "ivf-flat")
    if kind == "hnsw":
        built = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        built.add(data)
        return built, {"index": "hnsw", "M": 32}
    # 2 sqrt(n) lists balance the k-means (40 nlist training rows x nlist x d per iteration) against
    # the search (n x nprobe n / nlist x d); faiss wants >= 39 training points per list
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 40))
    quantizer = faiss.IndexFlatIP(d)
    built = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    built.cp.seed = seed
    rng = np.random.default_rng(seed)
    train = data[np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))]
    params = {"index": "ivf-flat", "nlist": nlist}
    if gpu_device is not None and hasattr(faiss, "StandardGpuResources"):  # pragma: no cover - no GPU in CI
        resources = faiss.StandardGpuResources()
        built = faiss.index_cpu_to_gpu(resources, gpu_device, built)
        built.referenced_objects = [resources]  # the GPU index needs its resources alive (faiss's own idiom)
        params["index"] = "gpu-ivf-flat"
    built.train(train)
    built.add(data)
    return built, params


def _breadths(params: dict, k: int) -> list[int]:
    if params["index"] == "hnsw":  # efSearch >= k + 1
        return [b for b in (16, 32, 64, 128, 256, 512, 1024, 2048) if b >= k + 1] or [2 * (k + 1)]
    return sorted({min(params["nlist"], 2**i) for i in range(0, 16)})


def _set_breadth(faiss, built, params: dict, breadth: int) -> dict:
    if params["index"] == "hnsw":
        built.hnsw.efSearch = breadth
        return {**params, "efSearch": breadth}
    built.nprobe = breadth
    return {**params, "nprobe": breadth}


def _search(built, data: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(q, k) neighbours of the query rows, the row itself dropped (by index), -1 where none was found."""
    _, found = built.search(np.ascontiguousarray(data[rows]), k + 1)
    found = torch.from_numpy(found)
    drop = (found == torch.from_numpy(rows)[:, None]) | (found < 0)
    order = drop.to(torch.int8).argsort(dim=1, stable=True)  # kept entries first, in the index's order
    kept = found.gather(1, order)[:, :k]
    return kept.masked_fill(drop.gather(1, order)[:, :k], -1).numpy()


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = (found[:, :, None] == exact[:, None, :]).any(-1).sum()
    return float(hits) / (exact.shape[0] * k)


def _approx_lists(z: Tensor, k: int, target: float, index: str, seed: int, n_queries: int, block_size: int):
    faiss = _faiss()
    timings: dict[str, float] = {}
    data = np.ascontiguousarray(z.detach().to("cpu", torch.float32).numpy())
    n = data.shape[0]
    t0 = time.perf_counter()
    gpu = (z.device.index or 0) if z.is_cuda else None
    built, params = _build_index(faiss, data, index, seed, gpu)
    timings["build"] = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    sample = rng.permutation(n)[: min(n, 2 * n_queries)]
    tune, check = np.sort(sample[: len(sample) // 2 or 1]), np.sort(sample[len(sample) // 2 :] if n > 1 else sample)
    z32 = z.to(torch.float32)
    t0 = time.perf_counter()
    truth = exact_indices(z32, k, block_size, rows=torch.from_numpy(np.concatenate([tune, check]))).cpu().numpy()
    timings["truth"] = time.perf_counter() - t0  # exact lists of the query sample, for the recall
    truth_tune, truth_check = truth[: len(tune)], truth[len(tune) :]
    t0 = time.perf_counter()
    for breadth in _breadths(params, k):
        chosen = _set_breadth(faiss, built, params, breadth)
        if _recall(_search(built, data, tune, k), truth_tune) >= target:
            break
    timings["tune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = np.concatenate([_search(built, data, np.arange(s, min(n, s + 65536)), k) for s in range(0, n, 65536)])
    timings["search"] = time.perf_counter() - t0
    missing = np.nonzero((found < 0).any(1))[0]
    if missing.size:  # rows whose probed lists held fewer than k others: searched exactly
        found[missing] = exact_indices(z32, k, block_size, rows=torch.from_numpy(missing)).cpu().numpy()
    measured = _recall(found[check], truth_check)
    indices = torch.from_numpy(found).to(torch.long).to(z.device)
    return indices, chosen, measured, timings


# -------------------------------------------------------------------------------- routes
def resolve_route(knn: str, n: int, d: int) -> str:
    """ "exact" or "approx" for ``knn`` on n samples of d features ("auto": exact while n^2 d
    <= :data:`AUTO_EXACT_FLOPS`, or while faiss is missing)."""
    check_choice(knn, "knn", ROUTES)
    if knn != "auto":
        return knn
    if float(n) * n * d <= AUTO_EXACT_FLOPS:
        return "exact"
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "exact"
    return "approx"


def check_knn_options(knn: str = "exact", recall: float = 0.99, **_) -> None:
    """The neighbour measures' route options, refused before any work."""
    check_choice(knn, "knn", ROUTES)
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be a number in (0, 1] (the target recall@k of knn='approx'), got {recall!r}")


def knn_bytes(n: int, d: int, k: int, route: str = "exact", itemsize: int = 4) -> int:
    """Peak bytes of one layer's lists: unit rows (n d), a block of similarities (exact) or the
    index (approx: the vectors, and HNSW's graph or IVF's ids), and the lists (n k indices and
    float64 similarities)."""
    features = n * d * itemsize
    lists = n * k * 16
    if route == "approx":
        index = n * d * 4 + (n * 32 * 2 * 4 if n * d <= _HNSW_MAX_ND else n * 8)
        return int(features + index + lists + 3 * 65536 * (k + 1) * 8)
    block = _block_rows(n, 4096, itemsize)
    return int(features + min(_WORKSPACE, 3 * itemsize * block * n) + lists)


def knn_lists(
    x,
    *,
    k: int = 10,
    knn: str = "exact",
    recall: float = 0.99,
    index: str = "auto",
    block_size: int = 4096,
    n_queries: int = 500,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> KNNLists:
    """Each sample's k most cosine-similar other samples of ``x`` (n, d): a :class:`KNNLists`.

    Args:
        k: neighbours per sample (1 <= k < n).
        knn: "exact" (blocked search, ties by index), "approx" (a faiss index; needs the ``knn``
            extra) or "auto" (exact while n^2 d <= :data:`AUTO_EXACT_FLOPS`).
        recall: the target recall@k of the approximate route: the search breadth doubles until
            the recall measured on ``n_queries`` seeded queries reaches it.
        index: "auto" (HNSW for small n d, IVF-Flat beyond), "hnsw" or "ivf-flat".
        block_size: at most this many query rows per block of the exact search.
        n_queries: queries sampled (seeded) for tuning, and as many again for the reported recall.
        seed: seeds the query samples and IVF's training sample.
        dtype: precision of the exact products (default: the features', float32 for float32).

    Example:
        >>> lists = repsim.knn_lists(x, k=10, knn="approx", recall=0.95)
        >>> lists.recall, lists.describe()
    """
    x = as_features(x, "x", 2)
    check_knn_options(knn, recall)
    check_choice(index, "index", INDEXES)
    n = x.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, n - 1] = [1, {n - 1}] (the number of neighbours), got {k!r}")
    if not isinstance(n_queries, int) or n_queries < 1:
        raise ValueError(f"n_queries must be a positive integer, got {n_queries!r}")
    route = resolve_route(knn, n, x.shape[1])
    z = unit_rows_in(x, dtype)
    if route == "exact":
        timings: dict[str, float] = {}
        indices = exact_indices(z, k, block_size, timings)
        params, measured = {}, None
    else:
        indices, params, measured, timings = _approx_lists(z, k, float(recall), index, seed, n_queries, block_size)
    t0 = time.perf_counter()
    sims = _rescored(x, indices)
    timings["rescoring"] = time.perf_counter() - t0
    return KNNLists(indices, sims, route, params, measured, timings)


# -------------------------------------------------------------------------------- reuse
class KNNCache:
    """Lists used inside one :func:`knn_cache` scope, per (tensor, options); ``computed`` lists them
    in order, searched here or found in an enclosing scope (what a comparison's route column reports)."""

    def __init__(self) -> None:
        self._store: dict[tuple, tuple[Tensor, int, KNNLists]] = {}
        self.computed: list[KNNLists] = []

    def find(self, x: Tensor, key: tuple) -> KNNLists | None:
        hit = self._store.get((*_where(x), *key))
        return hit[2] if hit is not None and hit[1] == _version(x) else None

    def keep(self, x: Tensor, key: tuple, lists: KNNLists) -> None:
        # the tensor is held (not a weak reference) while the scope is open, so its memory cannot be
        # reused by another tensor: the same address, layout and version counter are the same data,
        # also through a view or a detached alias (which share the counter)
        self._store[(*_where(x), *key)] = (x, _version(x), lists)
        self.computed.append(lists)

    def routes(self) -> str:
        """The distinct routes of the lists computed here, in words."""
        return "; ".join(dict.fromkeys(lists.describe() for lists in self.computed)) or "exact"


_SCOPES: list[KNNCache] = []


def _where(x: Tensor) -> tuple:
    """Where a tensor's values live: address, layout, dtype and device."""
    return (x.data_ptr(), x.storage_offset(), tuple(x.shape), x.stride(), str(x.dtype), str(x.device))


def _version(x: Tensor) -> int:
    """The tensor's in-place modification counter (-1 for inference-mode tensors, which have none)."""
    return -1 if x.is_inference() else x._version


@contextlib.contextmanager
def knn_cache() -> Iterator[KNNCache]:
    """Reuse neighbour lists within the block: every neighbour measure computed on the same tensor
    (the same values in memory, unmodified) with the same k and route options reads one search.

    Example:
        >>> with repsim.knn_cache() as cache:
        ...     a = repsim.measure("mutual_knn", x, y); b = repsim.measure("jaccard_knn", x, y)
        >>> len(cache.computed)  # 2 searches, not 4
    """
    scope = KNNCache()
    _SCOPES.append(scope)
    try:
        yield scope
    finally:
        _SCOPES.remove(scope)


def cached_lists(x: Tensor, k: int, **options) -> KNNLists:
    """:func:`knn_lists` of ``x``, from the innermost :func:`knn_cache` scope when one is open."""
    if not _SCOPES:
        return knn_lists(x, k=k, **options)
    key = tuple(map(str, (k, *sorted(options.items(), key=lambda kv: kv[0]))))
    # nested scopes (a calibration inside a comparison) share their lists; every scope that did not
    # hold them keeps them, so each scope's ``computed`` lists what was used within it
    missed = []
    for scope in reversed(_SCOPES):
        lists = scope.find(x, key)
        if lists is not None:
            break
        missed.append(scope)
    else:
        lists = knn_lists(x, k=k, **options)
    for scope in missed:
        scope.keep(x, key, lists)
    return lists


def with_knn(measures, measure_options=None, knn: str | None = None) -> dict:
    """``measure_options`` with ``knn`` set on every neighbour measure among ``measures`` that does
    not set it itself (what ``compare(..., knn=...)``, ``compare_many`` and the CLI's ``--knn`` do);
    ``knn=None`` leaves them as given."""
    from .registry import get_measure

    out = {name: dict(opts) for name, opts in (measure_options or {}).items()}
    if knn is None:
        return out
    check_choice(knn, "knn", ROUTES)
    from .registry import registered_names

    known = set(registered_names())
    for name in [measures] if isinstance(measures, str) else measures:
        if name in known and get_measure(name).family == "neighbours":
            out.setdefault(name, {}).setdefault("knn", knn)
    return out
