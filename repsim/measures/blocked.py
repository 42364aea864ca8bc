"""Gram-space layer grids by row blocks: exact HSIC and RDM correlations without an n x n matrix per layer.

Every Gram-space grid statistic here is a sum over the n^2 entries of two per-layer n x n
matrices, sum_ij A^l_ij B^m_ij (plus per-layer row sums). Row block r of A^l is a product of
stored features, A^l[r, :] = f(X_l[r] X_l^T), so the grid accumulates block by block:

    S_lm = sum_r <A^l[r, :], B^m[r, :]>_F     (one (L, c n) x (c n, M) product per block)

and the largest live object is (L + M) c n entries for c rows, whatever n. The block height c
is chosen from the workspace limit (:func:`workspace_limit`, set by ``repsim.compare``'s memory
plan; 512 MiB by default). Every matrix is symmetric, so only the blocks on and above the
diagonal are made, the ones above counted twice: the flops are half those of the full Gram
matrices, n^2 (sum_l d_l) / 2 for the products and n^2 L M / 2 for the grid, nothing recomputed.
Each block is written in place into one buffer per matrix (no stacking copies), and the Gram
diagonals |xc_i|^2 that the unbiased HSIC needs come from the square blocks (no extra pass).

Precision: the per-block products run in the features' ``compute`` dtype; every reduction over
entries runs in float64 (an n^2-long sum).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor

from ..core.numerics import ACC, center_columns, gram_sq_distances, safe_sqrt, sq_row_norms, unbiased_hsic

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


def _multi_sums(xs, ys, blocks, row_sums: tuple[bool, ...], n: int, itemsize: int, device, summed=None) -> list:
    """sum_ij A^l_ij B^m_ij for every layer pair, sum_ij (A^l_ij)^2 per layer and optionally the row sums,
    for ``len(row_sums)`` symmetric matrices per layer made from one shared piece of work per block.

    Every matrix here is symmetric, so only the blocks on and above the diagonal are made: for row
    block lo..hi, its square part (columns lo..hi, counted once) and the rest of its row (columns
    hi..n, counted twice, for its mirror image below the diagonal): half the products of full rows.
    ``blocks(i, item, lo, hi, cols, outs)`` writes layer i's blocks rows lo..hi x columns cols (float64)
    into ``outs`` (one per matrix, e.g. a Gram block and an RDM block derived from it); ``summed[k]``
    False: matrix k is only an intermediate, not accumulated. Layers are numbered xs then ys (``ys=None``:
    a self-grid of xs). Returns one (cross (L, M), self_x (L,), self_y (M,), (rows_x, rows_y) or None)
    per matrix, all float64.
    """
    layers = xs if ys is None else xs + ys
    big, count = len(xs), len(xs) + (0 if ys is None else len(ys))
    summed = summed or (True,) * len(row_sums)
    # at most max(64, n / 16) rows per block: the square blocks, made whole though symmetric, add n c / 2
    # entries to the n^2 / 2 of the upper triangle (c / n: 6% at n = 1000), while each product stays large
    c = min(block_rows(n, count * (len(row_sums) + 1), itemsize), max(64, -(-n // 16)))
    shape = (big, big if ys is None else count - big)
    sums = [
        (torch.zeros(shape, dtype=ACC, device=device), torch.zeros(count, dtype=ACC, device=device),
         torch.zeros(count, n, dtype=ACC, device=device) if wanted else None)
        for wanted in row_sums
    ]  # fmt: skip
    for lo in range(0, n, c):
        hi = min(n, lo + c)
        for cols, weight in (((lo, hi), 1.0), ((hi, n), 2.0)):
            if cols[0] == cols[1]:
                continue
            outs = [torch.empty(count, hi - lo, cols[1] - cols[0], dtype=ACC, device=device) for _ in row_sums]
            for i, item in enumerate(layers):
                blocks(i, item, lo, hi, cols, [o[i] for o in outs])
            for (cross, selfs, rows), out, wanted in zip(sums, outs, summed, strict=True):
                if wanted:
                    _add_block(cross, selfs, rows, out, big, ys is None, weight, (lo, hi, *cols))
    out = []
    for cross, selfs, rows in sums:
        self_y = selfs if ys is None else selfs[big:]
        rows_y = None if rows is None else (rows if ys is None else rows[big:])
        out.append((cross, selfs[:big], self_y, None if rows is None else (rows[:big], rows_y)))
    return out


def _add_block(cross, selfs, rows, block: Tensor, big: int, same: bool, weight: float, span) -> None:
    """Add one piece (L, rows, cols) of every layer's matrix, counted ``weight`` times, to the sums."""
    flat = block.reshape(block.shape[0], -1)  # contiguous: a view
    if same:
        prod = flat @ flat.T
        cross.add_(prod, alpha=weight)
        selfs.add_(prod.diagonal(), alpha=weight)
    else:
        cross.add_(flat[:big] @ flat[big:].T, alpha=weight)
        selfs.add_(torch.bmm(flat.unsqueeze(1), flat.unsqueeze(2)).flatten(), alpha=weight)
    if rows is not None:
        lo, hi, c0, c1 = span
        rows[:, lo:hi] += block.sum(-1)
        if weight != 1.0:  # the mirror image: these columns' rows get the block's column sums
            rows[:, c0:c1] += block.sum(-2)


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
    return gram_grids_blocked(xcs, ycs, estimators, None, None)[0]


def hsic_from_sums(
    sums, xcs: list[Tensor], ycs: list[Tensor], estimators: tuple[str, ...], diagonals: Tensor | None = None
) -> dict:
    """The HSIC estimators from the Gram-block sums of centred features (see :func:`hsic_grids_blocked`);
    ``diagonals``: the Gram diagonals |xc_i|^2 (L + M, n) if the blocks gave them (saves a pass)."""
    cross, kk, ll, _ = sums
    n = xcs[0].shape[0]
    out = {}
    if "biased" in estimators:
        scale = (n - 1) ** 2
        out["biased"] = (cross / scale, kk / scale, ll / scale)
    if "unbiased" in estimators:
        if diagonals is None:
            dx = torch.stack([sq_row_norms(t) for t in xcs])  # (L, n)
            dy = dx if ycs is xcs else torch.stack([sq_row_norms(t) for t in ycs])
        else:
            dx = diagonals[: len(xcs)]
            dy = dx if ycs is xcs else diagonals[len(xcs) :]
        sx, sy = -dx.sum(1), -dy.sum(1)
        kl_diag = dx @ dy.T
        out["unbiased"] = (
            unbiased_hsic(n, cross - kl_diag, sx[:, None], sy[None, :], kl_diag),
            unbiased_hsic(n, kk - dx.pow(2).sum(1), sx, sx, dx.pow(2).sum(1)),
            unbiased_hsic(n, ll - dy.pow(2).sum(1), sy, sy, dy.pow(2).sum(1)),
        )
    return out


class RdmRows:
    """Rows of one layer's RDM from row blocks of its centred Gram matrix Gc = Xc Xc^T plus O(n d) vectors.

    With x_i = xc_i + mu, the uncentred Gram is G_ij = Gc_ij + b_i + b_j + |mu|^2 (b_i = xc_i . mu), so
    the cosine RDM is 1 - G_ij / (r_i r_j) (r_i = |x_i|); the correlation RDM is the same on rows
    centred across features, x'_i . x'_j = G_ij - d xbar_i xbar_j; the Euclidean one is
    sqrt(c_i + c_j - 2 Gc_ij), c_i = |xc_i|^2. An RDM block thus costs O(c n) on top of the Gram block
    that CKA needs anyway. The combination runs in float64 (entries within rounding of 0 are clamped
    to 0). Entries are shifted by the layer's mean over the first block (``shift``) so that the
    one-pass Pearson sums do not cancel, and the diagonal is zero.
    """

    def __init__(self, x: Tensor, xc: Tensor, method: str, name: str, from_gram: bool = True) -> None:
        self.method, self.shift, self.from_gram, self.z = method, None, from_gram, None
        if method == "euclidean":
            self.c = sq_row_norms(xc)
            return
        n, self.d = x.shape
        # float64 reductions without a float64 copy of the features (they can be large)
        mu = x.sum(0, dtype=ACC) / n
        self.b = (xc @ mu.to(xc.dtype)).to(ACC) if xc.dtype == ACC else xc.to(ACC) @ mu
        self.mu2 = mu @ mu
        sq = raw = sq_row_norms(x)
        if method == "correlation":
            if self.d < 2:
                raise ValueError(f"{name} needs at least 2 features for a correlation RDM; use rdm='euclidean'")
            self.t = x.sum(1, dtype=ACC) / self.d  # row means, removed from each row
            sq = (raw - self.d * self.t.pow(2)).clamp_min(0)  # |x_i - xbar_i|^2, to rounding of |x_i|^2
        else:
            self.t = None
        zero = sq <= 1e-10 * raw if method == "correlation" else sq == 0
        if bool(zero.any()):
            what = "constant" if method == "correlation" else "all-zero"
            raise ValueError(
                f"{name} has {int(zero.sum())} {what} rows, for which a {method} RDM is undefined; "
                "drop them or use rdm='euclidean'"
            )
        self.r = sq.sqrt()
        if not from_gram:
            # products in a low precision: 1 - <u_i, u_j> = |z_i - z_j|^2 / 2 with the unit rows centred over
            # samples first (z = u - u_bar), so a common offset (all cosines near 1) cannot cancel in float32
            x64 = x.to(ACC)
            z = (x64 if self.t is None else x64 - self.t[:, None]) / self.r[:, None]
            z = center_columns(z, ACC)
            self.s, self.z = sq_row_norms(z), z.to(xc.dtype)

    def rows(self, gc: Tensor | None, lo: int, hi: int, cols: tuple[int, int], out: Tensor) -> Tensor:
        """The RDM block rows lo..hi x columns ``cols`` (float64, shifted, zero diagonal) into ``out``, from
        the Gram block gc = Gc[lo:hi, cols] (float64; left unchanged)."""
        c0, c1 = cols
        if self.z is not None:
            zz = (self.z[lo:hi] @ self.z[c0:c1].T).to(ACC)
            out.copy_(gram_sq_distances(self.s[lo:hi], self.s[c0:c1], zz)).div_(2)  # 1 - <z_i, z_j> = |z_i - z_j|^2/2
        elif self.method == "euclidean":
            if _tracked(gc, out):  # safe_sqrt: zero gradient at zero distance
                out.copy_(safe_sqrt(gram_sq_distances(self.c[lo:hi], self.c[c0:c1], gc)))
            else:  # the same values (sqrt's, 0 where the squared distance is <= 0), in place
                torch.add(self.c[lo:hi, None], self.c[None, c0:c1], out=out)
                out.sub_(gc, alpha=2).clamp_min_(0).sqrt_()
        elif _tracked(gc, out):  # differentiable: out of place, then copied in
            g = gc + self.b[lo:hi, None] + self.b[None, c0:c1] + self.mu2
            if self.t is not None:
                g = g - self.d * self.t[lo:hi, None] * self.t[None, c0:c1]
            out.copy_((1 - g / (self.r[lo:hi, None] * self.r[None, c0:c1])).clamp_min(0))
        else:  # in place: (gc + b_i + b_j + |mu|^2 [- d t_i t_j]) / (r_i r_j)
            torch.add(gc, self.b[lo:hi, None], out=out)
            out.add_(self.b[None, c0:c1]).add_(self.mu2)
            if self.t is not None:
                out.sub_(self.d * self.t[lo:hi, None] * self.t[None, c0:c1])
            out.div_(self.r[lo:hi, None] * self.r[None, c0:c1]).neg_().add_(1).clamp_min_(0)
        square = c0 == lo
        idx = torch.arange(hi - lo, device=out.device) if square else None
        if self.shift is None:  # the first block (a square one): the mean of its off-diagonal entries
            off = torch.ones_like(out, dtype=torch.bool)
            off[idx, idx] = False
            self.shift = out[off].mean() if bool(off.any()) else out.mean()
        out.sub_(self.shift)
        if square:
            out[idx, idx] = 0.0
        return out


def _tracked(*tensors: Tensor | None) -> bool:
    """Autograd records these: the in-place and ``out=`` shortcuts (no autograd) must not be taken."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def pearson_from_sums(sums, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(cov (L, M), var_x (L,), var_y (M,)) of the off-diagonal RDM entries from their block sums."""
    cross, sq_x, sq_y, (rx, ry) = sums
    m = n * (n - 1)
    sums_x, sums_y = rx.sum(1), ry.sum(1)
    return cross - torch.outer(sums_x, sums_y) / m, sq_x - sums_x.pow(2) / m, sq_y - sums_y.pow(2) / m


def gram_grids_blocked(
    xcs: list[Tensor], ycs: list[Tensor], estimators: tuple[str, ...], rdm_x: list | None, rdm_y: list | None
) -> tuple[dict, tuple | None]:
    """One pass over the centred Gram blocks of every layer: the HSIC estimators of every pair and, with
    ``rdm_x``/``rdm_y`` (:class:`RdmRows` per layer), the Pearson terms of their RDMs.

    Returns (hsic {estimator: (xy, xx, yy)}, pearson (cov, var_x, var_y) or None). The RDMs need no
    second pass over the features: this is what makes linear CKA, debiased CKA and Pearson RSA of one
    comparison cost one set of Gram products."""
    n = xcs[0].shape[0]
    ys = None if ycs is xcs else ycs
    rdms = None if rdm_x is None else (rdm_x if ys is None else rdm_x + rdm_y)
    items = list(range(len(xcs) + (0 if ys is None else len(ycs))))
    layers = xcs if ys is None else xcs + ycs

    own = rdms is not None and not estimators and all(r.z is not None for r in rdms)  # no Gram block needed
    diagonals = torch.empty(len(items), n, dtype=ACC, device=xcs[0].device) if estimators else None

    def blocks(i: int, _, lo: int, hi: int, cols: tuple[int, int], outs: list[Tensor]) -> None:
        gc = None if own else outs[0]
        if gc is not None:
            a, b = layers[i][lo:hi], layers[i][cols[0] : cols[1]]
            if a.dtype == ACC and not _tracked(a, gc):
                torch.matmul(a, b.T, out=gc)  # straight into the buffer (out= has no autograd)
            else:
                product = (a @ b.T).to(ACC)
                gc.copy_(product)  # the buffer joins the graph (autograd tracks the copy)
                gc = product if product.requires_grad else gc
            if diagonals is not None and cols[0] == lo:
                diagonals[i, lo:hi] = gc.diagonal()
        if rdms is not None:
            rdms[i].rows(gc, lo, hi, cols, outs[1])

    big = len(xcs)
    split = (items[:big], None if ys is None else items[big:])
    row_sums = (False,) if rdms is None else (False, True)  # only the Pearson terms need row sums
    summed = (bool(estimators),) if rdms is None else (bool(estimators), True)  # the Gram sums feed HSIC only
    sums = _multi_sums(split[0], split[1], blocks, row_sums, n, xcs[0].element_size(), xcs[0].device, summed)
    hsic = hsic_from_sums(sums[0], xcs, ycs, estimators, diagonals) if estimators else {}
    return hsic, (pearson_from_sums(sums[1], n) if rdms is not None else None)
