"""RDMs of brains and models: Mahalanobis and crossnobis distances, square/condensed forms, RDM comparators.

Conventions. An RDM is square (..., n, n) (symmetric, zero diagonal) or condensed (..., M) with
M = n(n-1)/2 (the upper triangle row by row, as ``scipy.spatial.distance.squareform``); every
function here takes either and leading dims are batch dims (subjects, models, layers).

Distances (Walther et al. 2016, NeuroImage 137, 188-200). With condition patterns u_k (mean of the
rows of condition k) over P channels and a noise covariance Sigma:

* ``mahalanobis``: d(i, j) = (u_i - u_j) Sigma^-1 (u_i - u_j)^T / P.
* ``crossnobis``: the patterns u_k^(r) of each run r = 1..R, and
  d(i, j) = 1 / (R (R - 1)) sum_{a != b} (u_i - u_j)^(a) Sigma^-1 (u_i - u_j)^(b)T / P.
  Noise independent across runs makes every cross term an unbiased estimate of the squared distance
  of the true patterns (expected 0 for equal conditions, so values can be negative).
  All fold pairs at once: sum_{a != b} A_a B_b^T = (sum_a A_a)(sum_b B_b)^T - sum_a A_a B_a^T, so the
  cost is one whitening product (R K, P) x (P, P) and R + 1 products (K, P) x (P, K), whatever the
  number of fold pairs (R (R - 1) of them).

Sigma is estimated from the residuals of the rows around their condition's mean over all runs
(dof = rows - conditions) and shrunk towards mu I by the Ledoit & Wolf (2004) optimal intensity,
or given as a precision matrix (``noise=``), or ``noise="identity"`` (Euclidean / crossvalidated
Euclidean distances per channel).

Comparators (``compare_rdms``) on the M entries a, b of two RDMs:

* ``pearson``, ``cosine``: correlation, cosine of a and b; ``spearman``: Pearson of average ranks;
* ``rho_a``: 12 sum (r_a - mean)(r_b - mean) / (M^3 - M), Spearman's rho without tie correction
  (Nili et al. 2014: the expectation under random tie breaking);
* ``kendall_tau_a`` (C - D) / (M(M-1)/2) and ``kendall_tau_b`` (C - D)/sqrt((n0 - n1)(n0 - n2));
* ``whitened_cosine`` / ``whitened_pearson`` (Diedrichsen et al. 2021, Neurons, Behavior, Data
  analysis and Theory 5(3)): a^T V^-1 b / sqrt(a^T V^-1 a b^T V^-1 b) with V = Xi o Xi,
  Xi = C C^T (C the pair-contrast matrix, i.i.d. pattern noise) the covariance of distance
  estimates; pearson subtracts the mean of the entries first. V = 2 I + B B^T (B the pair-condition
  incidence), so V^-1 a is half the double-centred RDM -(H A H)/... on the off-diagonal entries;
  we compute the whitened vectors as double-centred RDMs (entries of the full matrix, diagonal
  included). With excluded pairs (a bootstrap sample that repeats a stimulus drops the pairs of a
  stimulus with its copy) the double centring becomes the weighted least-squares removal of
  additive effects (a_i + a_j)/2 over the kept pairs and the diagonal, which is what rsatoolbox does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..core.budget import MemoryBudgetError, format_bytes, parse_memory
from ..core.numerics import ACC
from ..core.validation import check_choice

RDM_METHODS = ("cosine", "correlation", "euclidean", "mahalanobis", "crossnobis")
COMPARE_METHODS = (
    "pearson",
    "spearman",
    "kendall_tau_a",
    "kendall_tau_b",
    "rho_a",
    "cosine",
    "whitened_cosine",
    "whitened_pearson",
)
# the comparators that are one dot product of prepared vectors (no Python loop over pairs of RDMs)
VECTORISED = ("pearson", "spearman", "rho_a", "cosine", "whitened_cosine", "whitened_pearson")


# ------------------------------------------------------------------------------------------------ forms
def n_conditions(m: int, name: str = "rdm") -> int:
    """n with n(n-1)/2 = m, refusing a length that is no condensed RDM."""
    n = round((1 + math.sqrt(1 + 8 * m)) / 2)
    if n * (n - 1) // 2 != m or n < 2:
        raise ValueError(f"{name} has {m} entries, which is no n(n-1)/2: pass a square (n, n) or condensed RDM")
    return n


def to_condensed(rdms, *, name: str = "rdms") -> Tensor:
    """Condensed (..., n(n-1)/2) form of square RDMs (..., n, n) (upper triangle, row by row).

    A tensor whose last two dims are equal and which is symmetric with a zero diagonal is read as
    square; anything else as condensed already (returned as a float64 tensor)."""
    x = _as_tensor(rdms, name)
    if _is_square(x):
        n = x.shape[-1]
        iu = torch.triu_indices(n, n, 1)
        return x[..., iu[0], iu[1]]
    n_conditions(x.shape[-1], name)
    return x


def to_square(rdms, *, name: str = "rdms") -> Tensor:
    """Square (..., n, n) form of condensed RDMs (..., n(n-1)/2) (square ones are returned as they are)."""
    x = _as_tensor(rdms, name)
    if _is_square(x):
        return x
    n = n_conditions(x.shape[-1], name)
    out = x.new_zeros(*x.shape[:-1], n, n)
    iu = torch.triu_indices(n, n, 1)
    out[..., iu[0], iu[1]] = x
    out[..., iu[1], iu[0]] = x
    return out


def _as_tensor(x, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array (square (..., n, n) or condensed (..., M))")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one dissimilarity, got shape {tuple(x.shape)}")
    return x.to(ACC)


def _is_square(x: Tensor) -> bool:
    if x.ndim < 2 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 2:
        return False
    diag_zero = bool((x.diagonal(dim1=-2, dim2=-1).nan_to_num(0) == 0).all())
    return diag_zero and bool(torch.allclose(x, x.transpose(-1, -2), equal_nan=True))


def condensed_checked(rdms, name: str) -> Tensor:
    """Condensed float64 RDMs with finite entries (NaN/Inf refused with the fix)."""
    v = to_condensed(rdms, name=name)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} holds {int((~torch.isfinite(v)).sum())} NaN or Inf dissimilarities; clean them first")
    if v.shape[-1] < 3:
        raise ValueError(f"{name} has {v.shape[-1]} dissimilarities; comparing RDMs needs at least 3 conditions")
    return v


# ------------------------------------------------------------------------------------------------ distances
def labels_index(labels, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(unique labels in sorted order, integer code per row) of a label vector of length n."""
    arr = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must hold one label per row of x ({n}), got shape {arr.shape}")
    return np.unique(arr, return_inverse=True)


def condition_rdm(x, method: str, *, runs=None, conditions=None, noise=None, memory=None) -> Tensor:
    """Mahalanobis or crossnobis RDMs (..., K, K) of x (..., rows, P): see the module docstring."""
    x = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError("x must be a tensor (..., rows, channels) for a mahalanobis or crossnobis RDM")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf values; clean or drop those rows first")
    rows, p = x.shape[-2:]
    if conditions is None:
        if method == "crossnobis":
            raise ValueError("a crossnobis RDM needs conditions= (one label per row) and runs= (one per row)")
        conditions = np.arange(rows)
    cond_names, cond = labels_index(conditions, rows, "conditions")
    k = len(cond_names)
    if k < 2:
        raise ValueError("conditions holds one label: an RDM needs at least 2 conditions")
    if method == "crossnobis":
        if runs is None:
            raise ValueError("a crossnobis RDM needs runs= (one label per row): it crossvalidates over runs")
        run_names, run = labels_index(runs, rows, "runs")
        if len(run_names) < 2:
            raise ValueError("runs holds one label: crossnobis needs at least 2 runs (use method='mahalanobis')")
    else:
        run_names, run = np.zeros(1), np.zeros(rows, dtype=np.int64)
    r = len(run_names)
    cell = torch.as_tensor(run * k + cond)
    counts = torch.bincount(cell, minlength=r * k)
    if bool((counts == 0).any()):
        bad = int((counts == 0).nonzero()[0, 0])
        raise ValueError(
            f"condition {cond_names[bad % k]!r} has no row in run {run_names[bad // k]!r}: every condition must "
            "appear in every run (drop the incomplete runs or conditions)"
        )
    batch = x.shape[:-2]
    flat = x.reshape(-1, rows, p)
    chunk = _batch_chunk(flat.shape[0], rows, p, k, r, noise, memory)
    out = [_condition_rdm_chunk(flat[i : i + chunk], cell, counts, cond, k, r, noise)
           for i in range(0, flat.shape[0], chunk)]  # fmt: skip
    return torch.cat(out).reshape(*batch, k, k)


def _batch_chunk(b: int, rows: int, p: int, k: int, r: int, noise, memory) -> int:
    """Batch elements per chunk under the memory budget, refusing before allocating if one does not fit."""
    per = 8 * (2 * rows * p + (r + 1) * k * p + 4 * k * k)
    if not (isinstance(noise, str) and noise == "identity"):
        per += 8 * 6 * p * p  # the covariance, Ledoit-Wolf's temporaries, the shrunk copy and the precision
    budget = parse_memory(memory)
    if per > budget:
        raise MemoryBudgetError(
            f"one RDM over {p} channels needs ~{format_bytes(per)} (covariance {p} x {p}, {r} runs x {k} conditions), "
            f"over the budget {format_bytes(budget)}. Options: raise memory=, pass noise='identity' (no whitening) "
            "or a diagonal precision, or reduce channels (e.g. a PCA of the residuals) first"
        )
    return max(1, min(b, budget // per))


def _condition_rdm_chunk(x: Tensor, cell: Tensor, counts: Tensor, cond: np.ndarray, k: int, r: int, noise) -> Tensor:
    b, _, p = x.shape
    x = x.to(ACC)
    # cell means (b, r*k, p): one scatter-add over rows
    sums = x.new_zeros(b, r * k, p).index_add_(1, cell.to(x.device), x)
    means = sums.div_(counts.to(x)[None, :, None])  # in place: the cell sums are not needed again
    precision = _precision(x, torch.as_tensor(cond, device=x.device), k, noise)  # (b, p, p) or None
    u = means.reshape(b, r, k, p)
    # every run's patterns whitened in one product (R K P^2 flops, the whole cost); the sum over runs of
    # the whitened patterns is the whitened sum, so no further product with the precision is needed
    w = u if precision is None else (means.reshape(b, r * k, p) @ precision).reshape(b, r, k, p)
    if r == 1:
        gram = w[:, 0] @ u[:, 0].transpose(1, 2)
        scale = p
    else:
        cross = w.sum(1) @ u.sum(1).transpose(1, 2)
        for a in range(r):  # minus the same-run terms: (sum_a u_a)(sum_b u_b)^T - sum_a u_a u_a^T
            cross -= w[:, a] @ u[:, a].transpose(1, 2)
        gram = (cross + cross.transpose(1, 2)) / 2
        scale = p * r * (r - 1)
    d = gram.diagonal(dim1=1, dim2=2)
    out = (d[:, :, None] + d[:, None, :] - 2 * gram) / scale
    return out - torch.diag_embed(out.diagonal(dim1=1, dim2=2))


def _precision(x: Tensor, cond: Tensor, k: int, noise) -> Tensor | None:
    """Noise precision (p, p) or (b, p, p): given, identity (None) or Ledoit-Wolf shrunk covariance of the residuals."""
    b, rows, p = x.shape
    if isinstance(noise, str):
        if noise != "identity":
            raise ValueError(f"noise must be None (estimate), 'identity' or a precision matrix (p, p), got {noise!r}")
        return None
    if noise is not None:
        prec = torch.as_tensor(noise, dtype=ACC, device=x.device)
        if prec.shape[-2:] != (p, p):
            raise ValueError(f"noise must be a precision matrix ({p}, {p}) (or batched), got {tuple(prec.shape)}")
        return prec if prec.ndim == 2 else prec.reshape(b, p, p)  # one shared (p, p): no batch copy in the products
    dof = rows - k
    if dof < 1:
        raise ValueError(
            "no residuals to estimate the noise from (one row per condition): pass noise= (a precision matrix "
            "from the first-level model's residuals) or noise='identity'"
        )
    counts = torch.bincount(cond, minlength=k).to(x)
    cmeans = x.new_zeros(b, k, p).index_add_(1, cond, x) / counts[None, :, None]
    res = x - cmeans[:, cond]
    cov = ledoit_wolf(res) * (rows / dof)
    return torch.linalg.inv(cov)


def ledoit_wolf(res: Tensor) -> Tensor:
    """Ledoit & Wolf (2004) shrinkage covariance of centred rows res (b, n, p): (1 - s) S + s mu I.

    S = res^T res / n, mu = tr(S)/p, and the optimal intensity s = min(beta, delta)/delta with
    delta = |S - mu I|_F^2 / p, beta = sum_k |x_k x_k^T - S|_F^2 / (p n^2)."""
    _, n, p = res.shape
    s = res.transpose(1, 2) @ res / n
    mu = s.diagonal(dim1=1, dim2=2).sum(-1) / p
    eye = torch.eye(p, dtype=res.dtype, device=res.device)
    delta = ((s - mu[:, None, None] * eye) ** 2).sum((1, 2)) / p
    # sum_k |x_k x_k^T|_F^2 = sum_k |x_k|^4; cross term sum_k <x_k x_k^T, S> = n |S|_F^2
    x4 = ((res**2).sum(-1) ** 2).sum(-1)
    beta = (x4 / n - (s**2).sum((1, 2))) / (p * n)
    beta = torch.minimum(beta, delta)
    shrink = torch.where(delta > 0, beta / delta.clamp_min(torch.finfo(res.dtype).tiny), torch.zeros_like(delta))
    return (1 - shrink)[:, None, None] * s + (shrink * mu)[:, None, None] * eye


# ------------------------------------------------------------------------------------------------ comparators
def compare_rdms(a, b, *, method: str = "cosine") -> Tensor:
    """Similarity of RDMs ``a`` (..., M) and ``b`` (..., M) (square or condensed), broadcast over leading dims.

    ``compare_rdms(models[:, None], subjects[None])`` gives the (models, subjects) table in one call.
    Methods (module docstring for the formulas): "pearson", "spearman", "kendall_tau_a",
    "kendall_tau_b", "rho_a", "cosine", "whitened_cosine", "whitened_pearson". All but the Kendall
    taus are one batched dot product of prepared vectors; the taus loop over the broadcast pairs
    in Python (O(M log M) each, scipy). Returns float64 of the broadcast leading shape.
    References: Nili et al. 2014 (PLoS Comput Biol 10: e1003553), Diedrichsen et al. 2021.
    """
    check_choice(method, "method", COMPARE_METHODS)
    va, vb = condensed_checked(a, "a"), condensed_checked(b, "b")
    if va.shape[-1] != vb.shape[-1]:
        raise ValueError(f"a and b have {va.shape[-1]} and {vb.shape[-1]} dissimilarities: RDMs of the same conditions")
    try:
        shape = torch.broadcast_shapes(va.shape[:-1], vb.shape[:-1])
    except RuntimeError as err:
        shapes = f"a {tuple(va.shape[:-1])} and b {tuple(vb.shape[:-1])}"
        raise ValueError(f"the leading dims of {shapes} do not broadcast") from err
    return compare_vectors(va, vb, method, None).reshape(shape)


def compare_vectors(va: Tensor, vb: Tensor, method: str, keep: Tensor | None, names=("a", "b")) -> Tensor:
    """Comparator of condensed vectors (..., M); ``keep`` (..., M) bool marks the entries compared
    (broadcast against both; None: all)."""
    if method in ("kendall_tau_a", "kendall_tau_b"):
        return _kendall_broadcast(va, vb, method, keep)
    pa = prepare(va, method, keep, names[0])
    pb = prepare(vb, method, keep, names[1])
    return torch.einsum("...m,...m->...", pa, pb)


def prepare(v: Tensor, method: str, keep: Tensor | None, name: str = "rdm") -> Tensor:
    """Vectors whose dot product is the comparator (unit vectors except rho_a)."""
    v = v.to(ACC)
    w = None if keep is None else keep.to(ACC).expand(v.shape)
    if method in ("spearman", "rho_a"):
        v = masked_ranks(v, keep)
    if method in ("pearson", "spearman", "rho_a", "whitened_pearson"):
        v = v - _mean(v, w)
    if method == "rho_a":
        m = v.shape[-1] if w is None else w.sum(-1, keepdim=True)
        return _masked(v, w) * torch.sqrt(torch.as_tensor(12 / (m**3 - m), dtype=ACC))
    if method in ("whitened_cosine", "whitened_pearson"):
        v = whiten(v, keep)
        w = None
    v = _masked(v, w)
    norm = v.norm(dim=-1, keepdim=True)
    if not bool((norm > 0).all()):
        raise ValueError(f"an RDM in {name} is constant (or all zero), so its {method} similarity is undefined")
    return v / norm


def _masked(v: Tensor, w: Tensor | None) -> Tensor:
    return v if w is None else v * w


def _mean(v: Tensor, w: Tensor | None) -> Tensor:
    if w is None:
        return v.mean(-1, keepdim=True)
    return (v * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)


def masked_ranks(v: Tensor, keep: Tensor | None) -> Tensor:
    """Average ranks 1..m along the last dim (ties averaged, as scipy.stats.rankdata); excluded entries 0."""
    import scipy.stats  # lazily: scipy.stats adds ~0.9 s to `import repsim`

    arr = v.detach().cpu().numpy()
    if keep is None:
        return torch.from_numpy(scipy.stats.rankdata(arr, axis=-1)).to(v.device, ACC)
    k = np.broadcast_to(keep.cpu().numpy(), arr.shape)
    # excluded entries set to +inf rank above every kept one (values are finite), leaving the kept ranks
    # as among the kept entries alone: one vectorised call instead of nan_policy="omit"'s loop over rows
    ranked = scipy.stats.rankdata(np.where(k, arr, np.inf), axis=-1)
    return torch.from_numpy(np.where(k, ranked, 0.0)).to(v.device, ACC)


def whiten(v: Tensor, keep: Tensor | None) -> Tensor:
    """RDM vectors (..., M) mapped to (..., M + n): the off-diagonal (times sqrt 2) and diagonal entries of
    the RDM with additive effects (a_i + a_j)/2 removed by least squares (double centring when all pairs
    are kept), so that dot products of these are a^T V^-1 b up to one constant (Diedrichsen et al. 2021)."""
    m = v.shape[-1]
    n = n_conditions(m)
    iu = torch.triu_indices(n, n, 1, device=v.device)
    y = -0.5 * v
    if keep is None:
        sq = v.new_zeros(*v.shape[:-1], n, n)
        sq[..., iu[0], iu[1]] = y
        sq = sq + sq.transpose(-1, -2)
        row = sq.mean(-1, keepdim=True)
        cen = sq - row - row.transpose(-1, -2) + sq.mean((-1, -2), keepdim=True)
        pairs, diag = cen[..., iu[0], iu[1]], cen.diagonal(dim1=-2, dim2=-1)
    else:
        kp = keep.to(ACC).expand(v.shape)
        y = y * kp
        kmat = kp.new_zeros(*kp.shape[:-1], n, n)
        kmat[..., iu[0], iu[1]] = kp
        kmat = kmat + kmat.transpose(-1, -2)
        ymat = y.new_zeros(*y.shape[:-1], n, n)
        ymat[..., iu[0], iu[1]] = y
        ymat = ymat + ymat.transpose(-1, -2)
        # normal equations of min sum_kept 2 (y_ij - (a_i + a_j)/2)^2 + sum_i (0 - a_i)^2
        lhs = 0.5 * (torch.diag_embed(kmat.sum(-1)) + kmat) + torch.eye(n, dtype=ACC, device=v.device)
        rhs = ymat.sum(-1)
        a = torch.linalg.solve(lhs, rhs.unsqueeze(-1)).squeeze(-1)
        pairs = (y - (a[..., iu[0]] + a[..., iu[1]]) / 2) * kp
        diag = -a
    return torch.cat([pairs * math.sqrt(2), diag], dim=-1)


def _kendall_broadcast(va: Tensor, vb: Tensor, method: str, keep: Tensor | None) -> Tensor:
    """Kendall's tau per broadcast pair: a Python loop (scipy's O(M log M) per pair)."""
    from .rsa import kendall_tau_a, kendall_tau_b

    tau = kendall_tau_a if method == "kendall_tau_a" else kendall_tau_b
    shape = torch.broadcast_shapes(va.shape[:-1], vb.shape[:-1])
    m = va.shape[-1]
    a = va.expand(*shape, m).reshape(-1, m)
    b = vb.expand(*shape, m).reshape(-1, m)
    kk = None if keep is None else keep.expand(*shape, m).reshape(-1, m)
    out = torch.empty(a.shape[0], dtype=ACC)
    for i in range(a.shape[0]):
        ai, bi = (a[i], b[i]) if kk is None else (a[i][kk[i]], b[i][kk[i]])
        out[i] = tau(ai, bi)
    return out.reshape(shape)
