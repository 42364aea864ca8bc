"""Permutation nulls of whole layer grids for the measures that are quadratic forms.

Linear CKA (biased or debiased) and Pearson/Spearman RSA of layer i of x against layer j of y,
with y's samples permuted by pi, are functions of

    Q_ij(pi) = sum_ab A_i[a, b] B_j[pi(a), pi(b)]     and     D_ij(pi) = sum_a u_i[a] v_j[pi(a)]

for per-layer symmetric n x n matrices A_i, B_j (centred Gram matrices, zero-diagonal Grams,
standardised RDMs) and per-layer vectors u_i, v_j (Gram row sums), plus permutation-invariant
per-layer scalars (norms, totals). The per-layer work is done once; each permutation then costs
only Q and D. Two engines compute them for every cell and permutation:

* :func:`shift_null_grid`: pi ranges over the cyclic shifts of one random ordering of the
  samples; all n shifts of every cell come from FFTs of the matrices' wrapped diagonals
  (see ``_shifts.py``): each layer's diagonals are transformed once and a cell costs one
  elementwise product and sum of two (n/2 + 1)^2 spectra.
* :func:`block_shift_null_grid`: pi ranges over cyclic shifts of whole blocks (equal sizes) in a
  random block order; the same FFT per position pair of the blocks.
* :func:`explicit_null_grid`: any given permutations (the restricted ones of ``groups``/``blocks``,
  or uniform ones when more are needed than there are shifts): per permutation and y-layer one
  gather of B_j and one product with all A_i at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.numerics import ACC, center_columns, sq_frobenius, unbiased_hsic
from ..core.validation import resolve_dtype
from ..measures._products import self_product
from ..measures.registry import get_measure
from ..measures.rsa import average_ranks, rdm
from ._shifts import wrapped_diagonals

_GATHER_ELEMENTS = 1 << 24  # float64 elements of permuted matrices held at once (128 MiB)


@dataclass
class Side:
    """One layer's part of a quadratic form: matrix, optional vector, invariant scalars."""

    matrix: Tensor
    vector: Tensor | None
    scalars: dict[str, Tensor]
    features: Tensor | None = None
    """Linear CKA only: the centred features Z_c, with matrix = Z_c Z_c^T (zero diagonal if debiased)."""


@dataclass
class QuadraticForm:
    """statistic_ij(pi) = finish(Q_ij(pi), D_ij(pi), x-side scalars, y-side scalars)."""

    side: Callable[[Tensor], Side]
    finish: Callable[[Tensor, Tensor | None, dict, dict], Tensor]
    uses_vector: bool
    low_rank: bool = False
    """The matrices are Z_c Z_c^T of centred features (linear CKA): Q and D also come from features."""


def _cka_form(debiased: bool, dtype) -> QuadraticForm:
    def side(z: Tensor) -> Side:
        zc = center_columns(z, resolve_dtype(dtype, z))
        k = self_product(zc.T).to(ACC)
        if not debiased:
            return Side(k, None, {"norm": sq_frobenius(k).sqrt()}, zc)
        n = k.shape[0]
        k.fill_diagonal_(0.0)
        rows = k.sum(1)
        total = rows.sum()
        self_hsic = unbiased_hsic(n, sq_frobenius(k), total, total, rows @ rows)
        return Side(k, rows, {"total": total, "self": self_hsic, "n": torch.tensor(float(n), dtype=ACC)}, zc)

    def finish(q: Tensor, d: Tensor | None, sx: dict, sy: dict) -> Tensor:
        if not debiased:
            return q / (sx["norm"][:, None, None] * sy["norm"][None, :, None])
        n = int(sx["n"][0])
        cross = unbiased_hsic(n, q, sx["total"][:, None, None], sy["total"][None, :, None], d)
        return cross / (sx["self"][:, None, None] * sy["self"][None, :, None]).sqrt()

    return QuadraticForm(side, finish, debiased, low_rank=True)


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


def _rsa_form(method: str, compare: str) -> QuadraticForm:
    def side(z: Tensor) -> Side:
        a = rdm(z, method=method)
        n = a.shape[0]
        return Side(standardised_rdm(a, compare), None, {"pairs": torch.tensor(float(n * (n - 1)), dtype=ACC)})

    def finish(q: Tensor, d: Tensor | None, sx: dict, sy: dict) -> Tensor:
        return q / sx["pairs"][:, None, None]

    return QuadraticForm(side, finish, False)


def quadratic_form(name: str, options: dict) -> QuadraticForm | None:
    """The quadratic form of a registry measure with these (resolved) options, or None if it has none."""
    opts = {k: v for k, v in options.items() if k != "dtype"}
    form = get_measure(name).quadratic_form(**opts)  # declared on the registry entry
    if form == "cka":
        return _cka_form(bool(opts.get("debiased", False)), options.get("dtype"))
    if form in ("rsa_pearson", "rsa_spearman"):
        return _rsa_form(opts.get("rdm", "cosine"), form.removeprefix("rsa_"))
    return None


def _stack_scalars(sides: list[Side]) -> dict[str, Tensor]:
    return {key: torch.stack([s.scalars[key] for s in sides]) for key in sides[0].scalars}


# -------------------------------------------------------------------------------- engines
def shift_permutations(order: Tensor, shifts: Tensor) -> Tensor:
    """The explicit permutations of the cyclic shifts ``shifts`` of ``order``: perm_s[order[i]] = order[(i+s) % n]."""
    n = order.shape[0]
    idx = (torch.arange(n, device=order.device)[None, :] + shifts[:, None].to(order.device)) % n
    perms = torch.empty(shifts.shape[0], n, dtype=torch.int64, device=order.device)
    perms[:, order] = order[idx]
    return perms


def shift_null_grid(form: QuadraticForm, xs: list[Tensor], ys: list[Tensor], order: Tensor, shifts: Tensor) -> Tensor:
    """(L, M, len(shifts)) statistics of every cell at the cyclic shifts ``shifts`` of ``order``.

    Q_ij(s) = IFFT( sum_d w_d conj(FFT a_id) FFT b_jd )(s) over the wrapped diagonals d <= n/2
    (symmetric matrices: diagonal n - d mirrors d, so w_d = 2 except d = 0 and d = n/2)."""
    n = order.shape[0]
    rows = n // 2 + 1
    weight = torch.full((rows, 1), 2.0, dtype=ACC, device=xs[0].device)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0  # d = n/2 is its own mirror

    def spectra(z: Tensor) -> tuple[Tensor, Tensor | None, dict]:
        side = form.side(z[order])
        f = torch.fft.rfft(wrapped_diagonals(side.matrix, rows), dim=1)
        v = torch.fft.rfft(side.vector) if side.vector is not None else None
        return f, v, side.scalars

    y_spec = [spectra(y) for y in ys]
    fb = torch.stack([s[0] for s in y_spec])  # (M, rows, F)
    vb = torch.stack([s[1] for s in y_spec]) if form.uses_vector else None
    sy = {k: torch.stack([s[2][k] for s in y_spec]) for k in y_spec[0][2]}
    del y_spec
    q_rows, d_rows, sx_list = [], [], []
    for x in xs:
        fa, va, sx = spectra(x)
        fa = (weight * fa).conj()
        q_rows.append(torch.fft.irfft(torch.einsum("df,mdf->mf", fa, fb), n=n)[:, shifts])
        if form.uses_vector:
            d_rows.append(torch.fft.irfft(va.conj()[None, :] * vb, n=n)[:, shifts])
        sx_list.append(sx)
    sx = {k: torch.stack([s[k] for s in sx_list]) for k in sx_list[0]}
    q = torch.stack(q_rows)
    d = torch.stack(d_rows) if form.uses_vector else None
    return form.finish(q, d, sx, sy)


def explicit_null_grid(form: QuadraticForm, xs: list[Tensor], ys: list[Tensor], perms: Tensor) -> Tensor:
    """(L, M, B) statistics of every cell for the given (B, n) permutations of y's samples.

    Gram route: per permutation and y-layer one gather of B_j (n^2 elements) and one product with
    every A_i. Linear CKA has a feature route as well, taken when cheaper (total widths P, Q with
    n P Q below ~20 n^2 M, a gather costing ~20 multiply-adds on CPU): Q_ij = |X_ci^T Y_cj[pi]|_F^2
    for all cells from one (P, n) x (n, Q) product per permutation, and for debiased CKA the
    zero-diagonal corrections from the Gram diagonals k_i = |x_a|^2: tr(K0 L0_pi) = Q - k.l_pi, and
    the row sums of a zero-diagonal centred Gram are -k, so 1'K0 L0_pi 1 = k.l_pi."""
    x_sides = [form.side(x) for x in xs]
    y_sides = [form.side(y) for y in ys]
    perms = perms.to(xs[0].device)
    n_perm, n = perms.shape
    n_x, n_y = len(xs), len(ys)
    widths_x, widths_y = sum(x.shape[1] for x in xs), sum(y.shape[1] for y in ys)
    if form.low_rank and n * widths_x * widths_y < 20 * n * n * n_y:
        q, d = _explicit_by_features(x_sides, y_sides, perms, form.uses_vector)
    else:
        q = torch.empty(n_x, n_y, n_perm, dtype=ACC, device=xs[0].device)
        d = torch.empty_like(q) if form.uses_vector else None
        a_flat = torch.stack([s.matrix.reshape(-1) for s in x_sides])  # (L, n^2)
        u = torch.stack([s.vector for s in x_sides]) if form.uses_vector else None
        chunk = max(1, _GATHER_ELEMENTS // (n * n))  # permutations gathered at once
        for j, side in enumerate(y_sides):
            for lo in range(0, n_perm, chunk):
                p = perms[lo : lo + chunk]  # (c, n)
                gathered = side.matrix[p[:, :, None], p[:, None, :]].reshape(p.shape[0], -1)  # (c, n^2)
                q[:, j, lo : lo + chunk] = a_flat @ gathered.T
                if form.uses_vector:
                    d[:, j, lo : lo + chunk] = u @ side.vector[p].T
    return form.finish(q, d, _stack_scalars(x_sides), _stack_scalars(y_sides))


def _explicit_by_features(x_sides: list[Side], y_sides: list[Side], perms: Tensor, debiased: bool):
    """(Q, D), each (L, M, B), of linear CKA from the centred features (see explicit_null_grid)."""
    xcat = torch.cat([s.features for s in x_sides], dim=1)  # (n, P)
    ycat = torch.cat([s.features for s in y_sides], dim=1)  # (n, Q)
    n_perm, n = perms.shape

    def membership(sides: list[Side]) -> Tensor:  # (widths, layers) 0/1: which layer owns a column
        owner = torch.cat([torch.full((s.features.shape[1],), i) for i, s in enumerate(sides)])
        return torch.nn.functional.one_hot(owner, len(sides)).to(ACC).to(xcat.device)

    sx, sy = membership(x_sides), membership(y_sides)
    chunk = max(1, _GATHER_ELEMENTS // (n * ycat.shape[1] + xcat.shape[1] * ycat.shape[1]))
    q = torch.empty(len(x_sides), len(y_sides), n_perm, dtype=ACC, device=xcat.device)
    for lo in range(0, n_perm, chunk):
        p = perms[lo : lo + chunk]
        cross = torch.einsum("np,cnq->cpq", xcat, ycat[p]).to(ACC)  # (c, P, Q) in the Gram dtype
        q[:, :, lo : lo + chunk] = torch.einsum("pl,cpq,qm->lmc", sx, cross.square(), sy)
    if not debiased:
        return q, None
    kd = torch.stack([s.features.to(ACC).square().sum(1) for s in x_sides])  # (L, n) Gram diagonals
    ld = torch.stack([s.features.to(ACC).square().sum(1) for s in y_sides])  # (M, n)
    d = torch.einsum("ln,mcn->lmc", kd, ld[:, perms])
    return q - d, d


def block_shift_permutations(units: Tensor, order: Tensor, shifts: Tensor) -> Tensor:
    """Explicit permutations of block shifts: unit order[i] receives unit order[(i + r) % m], position by position.

    ``units`` (m, s) lists each block's sample positions; returns (len(shifts), n)."""
    m, s = units.shape
    idx = (torch.arange(m, device=order.device)[None, :] + shifts[:, None].to(order.device)) % m  # (B, m)
    target = units[order]  # (m, s): the slots, in the random block order
    source = units[order[idx]]  # (B, m, s): the blocks sent onto them
    perms = torch.empty(shifts.shape[0], m * s, dtype=torch.int64, device=order.device)
    perms[:, target.reshape(-1)] = source.reshape(shifts.shape[0], -1)
    return perms


def block_shift_null_grid(
    form: QuadraticForm, xs: list[Tensor], ys: list[Tensor], units: Tensor, order: Tensor, shifts: Tensor
) -> Tensor:
    """(L, M, len(shifts)) statistics under cyclic shifts of whole blocks (m blocks of s samples each).

    With the samples arranged as (block i in the random order, position t), block shift r sends
    block i onto block i + r, so Q(r) = sum_{t,u} sum_{i,j} A[i,t,j,u] B[i+r,t,j+r,u]: for every
    position pair (t, u) a circular cross-correlation of the wrapped diagonals of an m x m matrix,
    all of them from one FFT of length m per layer (the unrestricted engine is s = 1). Each layer's
    n^2 entries are gathered once, not once per permutation."""
    m, s = units.shape
    arranged = units[order].reshape(-1)  # sample index at (i, t), flattened i-major
    i = torch.arange(m, device=units.device)
    d = torch.arange(m, device=units.device)
    diag_j = (i[None, :] + d[:, None]) % m  # (d, i) -> j = i + d

    def spectra(z: Tensor) -> tuple[Tensor, Tensor | None, dict]:
        side = form.side(z)
        a = side.matrix[arranged][:, arranged].reshape(m, s, m, s).permute(1, 3, 0, 2)  # (t, u, i, j)
        wrapped = a[:, :, i[None, :], diag_j]  # (t, u, d, i) = A[i, t, i + d, u]
        f = torch.fft.rfft(wrapped.reshape(-1, m), dim=1)  # (s s m, m//2 + 1)
        v = None
        if side.vector is not None:
            v = torch.fft.rfft(side.vector[arranged].reshape(m, s).T, dim=1)  # (s, m//2 + 1)
        return f, v, side.scalars

    y_spec = [spectra(y) for y in ys]
    fb = torch.stack([sp[0] for sp in y_spec])  # (M, s s m, F)
    vb = torch.stack([sp[1] for sp in y_spec]) if form.uses_vector else None
    sy = {k: torch.stack([sp[2][k] for sp in y_spec]) for k in y_spec[0][2]}
    del y_spec
    q_rows, d_rows, sx_list = [], [], []
    for x in xs:
        fa, va, sx = spectra(x)
        q_rows.append(torch.fft.irfft(torch.einsum("kf,mkf->mf", fa.conj(), fb), n=m)[:, shifts])
        if form.uses_vector:
            d_rows.append(torch.fft.irfft(torch.einsum("tf,mtf->mf", va.conj(), vb), n=m)[:, shifts])
        sx_list.append(sx)
    sx = {k: torch.stack([sp[k] for sp in sx_list]) for k in sx_list[0]}
    q = torch.stack(q_rows)
    return form.finish(q, torch.stack(d_rows) if form.uses_vector else None, sx, sy)
