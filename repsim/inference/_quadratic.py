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

import torch
from torch import Tensor

from ..core.numerics import ACC
from ..measures.quadratic import QuadraticForm, Side
from ..measures.registry import get_measure
from ._shifts import shifted_dot, shifted_quadratic, wrapped_diagonals

_GATHER_ELEMENTS = 1 << 24  # float64 elements of permuted matrices held at once (128 MiB)


def quadratic_form(name: str, options: dict) -> QuadraticForm | None:
    """The quadratic form of a registry measure with these (resolved) options, or None if it has none:
    the form object its entry declares (``quadratic=``; :mod:`repsim.measures.quadratic`)."""
    return get_measure(name).quadratic_form(**options)


def shift_statistics(form: QuadraticForm, x: Tensor, y: Tensor) -> Tensor:
    """The statistic of ``x`` against ``y`` with y's rows shifted by s, for every s = 0..n-1: one FFT
    per matrix (and vector) of the form (:mod:`._shifts`)."""
    sx, sy = form.side(x, native=True), form.side(y, native=True)
    q = shifted_quadratic(sx.matrix, sy.matrix)[None, None]
    d = shifted_dot(sx.vector, sy.vector)[None, None] if form.uses_vector else None
    return form.finish(q, d, _stack_scalars([sx]), _stack_scalars([sy]))[0, 0]


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
