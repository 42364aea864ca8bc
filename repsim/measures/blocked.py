"""Gram-space layer grids by row blocks: exact HSIC and RDM correlations without an n x n matrix per layer.

Every Gram-space grid statistic here is a sum over the n^2 entries of two per-layer n x n
matrices, sum_ij A^l_ij B^m_ij (plus per-layer row sums). Row block r of A^l is a product of
stored features, A^l[r, :] = f(X_l[r] X_l^T), so the grid accumulates block by block:

    S_lm = sum_r <A^l[r, :], B^m[r, :]>_F     (one (L, c n) x (c n, M) product per block)

and the largest live object is (L + M) c n entries for c rows, whatever n. The block height c
is chosen from the workspace limit (:func:`workspace_limit`, set by ``repsim.compare``'s memory
plan; 512 MiB by default), so the flops are exactly those of the full Gram matrices:
n^2 (sum_l d_l) for the products and n^2 L M for the grid, nothing recomputed.

Precision: the per-block products run in the features' ``compute`` dtype; every reduction over
entries runs in float64 (an n^2-long sum).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

_ACC = torch.float64
DEFAULT_WORKSPACE = 512 * 2**20
_WORKSPACE: contextvars.ContextVar[int] = contextvars.ContextVar("repsim_workspace", default=DEFAULT_WORKSPACE)


@contextlib.contextmanager
def workspace_limit(nbytes: int) -> Iterator[None]:
    """Bound the temporary memory of the blocked Gram-space grids within this context (bytes)."""
    if not nbytes > 0:
        raise ValueError(f"the workspace limit must be a positive number of bytes, got {nbytes}")
    token = _WORKSPACE.set(int(nbytes))
    try:
        yield
    finally:
        _WORKSPACE.reset(token)


def workspace_bytes() -> int:
    """The workspace limit in force (bytes)."""
    return _WORKSPACE.get()


def block_rows(n: int, matrices: int, itemsize: int, limit: int | None = None) -> int:
    """Rows per block so that ``matrices`` row blocks (compute dtype plus a float64 copy) fit the limit."""
    limit = workspace_bytes() if limit is None else limit
    per_row = max(1, matrices) * n * (itemsize + 2 * 8)
    return int(max(1, min(n, limit // per_row)))


def blocked_workspace(n: int, matrices: int, itemsize: int, limit: int | None = None) -> int:
    """Bytes the blocked grids allocate at most for ``matrices`` layers of n samples (for memory plans)."""
    c = block_rows(n, matrices, itemsize, limit)
    return max(1, matrices) * c * n * (itemsize + 2 * 8) + 4 * max(1, matrices) * n * 8


def _grid_sums(
    xs: list,
    ys: list | None,
    block: Callable[[int, object, int, int], Tensor],
    n: int,
    itemsize: int,
    device,
    row_sums: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """sum_ij A^l_ij B^m_ij for every pair, sum_ij (A^l_ij)^2 per layer, and optionally row sums.

    ``block(i, item, lo, hi)`` returns rows lo..hi of layer i's n x n matrix (float64) from its
    prepared ``item``; layers are numbered xs then ys (``ys=None``: a self-grid of xs). Returns
    (cross (L, M), self_x (L,), self_y (M,), rows (L + M, n) or None), all float64.
    """
    layers = xs if ys is None else xs + ys
    big = len(xs)
    c = block_rows(n, len(layers), itemsize)
    cross = torch.zeros(big, big if ys is None else len(ys), dtype=_ACC, device=device)
    selfs = torch.zeros(len(layers), dtype=_ACC, device=device)
    rows = torch.zeros(len(layers), n, dtype=_ACC, device=device) if row_sums else None
    for lo in range(0, n, c):
        hi = min(n, lo + c)
        flat = torch.stack([block(i, item, lo, hi) for i, item in enumerate(layers)]).reshape(len(layers), -1)
        if ys is None:
            prod = flat @ flat.T
            cross += prod
            selfs += prod.diagonal()
        else:
            cross += flat[:big] @ flat[big:].T
            selfs += flat.pow(2).sum(1)
        if rows is not None:
            rows[:, lo:hi] = flat.reshape(len(layers), hi - lo, n).sum(-1)
    self_y = selfs if ys is None else selfs[big:]
    rows_y = None if rows is None else (rows if ys is None else rows[big:])
    return cross, selfs[:big], self_y, (None if rows is None else (rows[:big], rows_y))


def hsic_grids_blocked(
    xcs: list[Tensor], ycs: list[Tensor], estimators: tuple[str, ...] = ("biased", "unbiased")
) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Linear-kernel HSIC for every layer pair from column-centred features, by row blocks; every
    requested estimator from one pass over the Gram blocks.

    With column-centred Xc the Gram K = Xc Xc^T is already H K H, so the biased estimator is
    sum_ij K_ij L_ij / (n - 1)^2. Its rows also sum to zero (K 1 = Xc (Xc^T 1) = 0), so the
    unbiased estimator of Song et al. (2012), which is shift-invariant and may use centred
    features too, needs only the same sum and the diagonals k_i = |xc_i|^2, l_i = |yc_i|^2:
    tr(K~L~) = sum_ij K_ij L_ij - sum_i k_i l_i, 1^T K~ 1 = -sum_i k_i, 1^T K~ L~ 1 = sum_i k_i l_i
    (K~ 1 = -k). Returns {estimator: (HSIC_xy (L, M), HSIC_xx (L,), HSIC_yy (M,))} in float64.
    """
    from .hsic import _unbiased_combine

    n = xcs[0].shape[0]
    itemsize = xcs[0].element_size()

    def block(i: int, t: Tensor, lo: int, hi: int) -> Tensor:
        return (t[lo:hi] @ t.T).to(_ACC)

    ys = None if ycs is xcs else ycs
    cross, kk, ll, _ = _grid_sums(xcs, ys, block, n, itemsize, xcs[0].device, False)
    out = {}
    if "biased" in estimators:
        scale = (n - 1) ** 2
        out["biased"] = (cross / scale, kk / scale, ll / scale)
    if "unbiased" in estimators:
        dx = torch.stack([torch.linalg.vector_norm(t, dim=1, dtype=_ACC) ** 2 for t in xcs])  # (L, n)
        dy = dx if ys is None else torch.stack([torch.linalg.vector_norm(t, dim=1, dtype=_ACC) ** 2 for t in ycs])
        sx, sy = -dx.sum(1), -dy.sum(1)
        kl_diag = dx @ dy.T
        out["unbiased"] = (
            _unbiased_combine(n, cross - kl_diag, sx[:, None], sy[None, :], kl_diag),
            _unbiased_combine(n, kk - dx.pow(2).sum(1), sx, sx, dx.pow(2).sum(1)),
            _unbiased_combine(n, ll - dy.pow(2).sum(1), sy, sy, dy.pow(2).sum(1)),
        )
    return out


def hsic_grid_blocked(xcs: list[Tensor], ycs: list[Tensor], estimator: str) -> tuple[Tensor, Tensor, Tensor]:
    """One estimator of :func:`hsic_grids_blocked` (same shapes as :func:`repsim.measures.hsic.gram_hsic_grid`)."""
    return hsic_grids_blocked(xcs, ycs, (estimator,))[estimator]


def rdm_pearson_grid_blocked(
    xs: list, ys: list | None, entry: Callable[[object, int, int], Tensor], n: int, itemsize: int, device
) -> tuple[Tensor, Tensor, Tensor]:
    """Pearson covariance terms of the off-diagonal RDM entries of every layer pair, by row blocks.

    ``entry(item, lo, hi)`` gives rows lo..hi of a layer's RDM (float64) from its prepared
    ``item``; ``ys=None`` is a self-grid. The upper triangle and the full off-diagonal set give the
    same correlation (each pair counted twice). Entries are shifted by each layer's mean over the
    first block before summing, so the one-pass sums do not cancel. Returns (cov (L, M), var_x (L,),
    var_y (M,)), unnormalised; the correlation is cov / sqrt(var_x var_y).
    """
    layers = xs if ys is None else xs + ys
    first = block_rows(n, len(layers), itemsize)
    off_first = ~torch.eye(first, n, dtype=torch.bool, device=device)
    shifts = [entry(item, 0, first)[off_first].mean() for item in layers]

    def block(i: int, item, lo: int, hi: int) -> Tensor:
        d = entry(item, lo, hi) - shifts[i]
        idx = torch.arange(hi - lo, device=d.device)
        d[idx, idx + lo] = 0.0  # the diagonal is not an RDM entry
        return d

    cross, sq_x, sq_y, (rx, ry) = _grid_sums(xs, ys, block, n, itemsize, device, True)
    m = n * (n - 1)
    sums_x, sums_y = rx.sum(1), ry.sum(1)
    cov = cross - torch.outer(sums_x, sums_y) / m
    return cov, sq_x - sums_x.pow(2) / m, sq_y - sums_y.pow(2) / m
