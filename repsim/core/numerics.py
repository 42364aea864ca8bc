"""Numeric helpers shared by the measures and the inference engines: each written once, with one
threshold and one precision policy.

Precision policy:

* Reductions (squared row norms, sums of squares, block norms, the combinations of the Gram
  identity and of the unbiased HSIC) accumulate in float64, whatever the inputs' dtype.
* Centring always runs in float64: the column mean (:func:`column_mean`) and the subtraction
  (:func:`center_columns`, by row chunks, so never a float64 copy of the features); the centred
  features come back in the compute dtype, each entry rounded once.
* The n- or d-sized matrix products run in the compute dtype chosen by the caller
  (:func:`repsim.core.validation.resolve_dtype`); their results are converted to float64 before they
  are combined with the float64 norms.

Thresholds (module constants, one per question):

* :data:`ZERO_NORM_RTOL`: when a row (or a mean vector) is too small to have a direction.
* :data:`EIGEN_RTOL`: which eigenvalues of a scatter matrix are rank deficiency plus rounding.

Internal to repsim: imported by repsim modules only.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

ACC = torch.float64
"""The accumulation precision of the library (centring, reductions, decompositions): every module
that accumulates imports this one constant (the precision policy: float32 products allowed,
centring and reductions in float64)."""

CENTRE_CHUNK = 1 << 19
"""Entries of one row chunk of :func:`column_mean` and :func:`center_columns` (4 MiB in float64):
float64 centring of float32 features without a float64 copy of them. A chunk that stays in cache
keeps it fast: on one CPU thread, 20000 x 2048 float32 features take 0.3 s (mean and subtraction),
against 0.2 s for float32 centring of the whole array and 1.6 s with 32 MiB chunks."""

ZERO_NORM_RTOL = 1e-12
"""A row (or vector) has no direction when its norm is at most this times its scale before a
cancelling subtraction or sum (a row's raw norm before removing its own mean; the samples' RMS norm
for their mean vector). A float64 subtraction leaves rounding residue of about 1e-16 sqrt(d) of
the original norm; 1e-12 sits far above that (for any d below 1e8) and far below any real signal.
Without a subtraction the reference is the norm itself and the test is
exact zero: normalising a non-zero row is accurate to rounding whatever its scale, so a row is
never refused because another row is larger."""

EIGEN_RTOL = 1e-10
"""Eigenvalues of a symmetric PSD scatter at most this times the largest are dropped. A float64
scatter resolves eigenvalues to ~1e-16 of the largest; the rounding of its products and of the
data itself puts the null space of a rank-deficient scatter at up to ~1e-12 of it. 1e-10 leaves
margin above that, while a real direction with 1e-10 of the leading variance carries no usable
signal (whitening it would amplify noise by 1e5)."""


def _row_chunks(x: Tensor):
    """Row slices of ``x`` of about :data:`CENTRE_CHUNK` entries each."""
    rows = max(1, CENTRE_CHUNK // max(1, x.shape[1]))
    return (slice(lo, lo + rows) for lo in range(0, x.shape[0], rows))


def column_mean(x: Tensor) -> Tensor:
    """mu = (1/n) sum_i x_i, shape (d,), summed in float64 (by row chunks: no float64 copy of ``x``)."""
    if x.dtype == ACC:
        return x.sum(dim=0) / x.shape[0]
    total = torch.zeros(x.shape[1], dtype=ACC, device=x.device)
    for rows in _row_chunks(x):
        total += x[rows].to(ACC).sum(dim=0)
    return total / x.shape[0]


def center_columns(x: Tensor, dtype: torch.dtype, mean: Tensor | None = None) -> Tensor:
    """Column-centred copy X - 1 mu^T in ``dtype``, mu the float64 column mean (``mean``: the column
    mean if the caller already has it).

    The subtraction always runs in float64 and each entry is rounded once to ``dtype``; for a lower
    ``dtype`` it runs over row chunks of :data:`CENTRE_CHUNK` entries, so there is never a float64
    copy of the features. Centring before the products is what keeps float32 products honest on
    features with a large mean (uncentred products X^T Y - n mu_x mu_y^T cancel catastrophically at
    offsets of 1e3). Centring in float32 instead would leave a common shift of up to eps |mu| in
    every row: harmless to CKA, but at an offset of 1e3 it made aligned_cosine's float32 error
    100x larger (1e-7 instead of 1.5e-9).
    """
    mu = column_mean(x) if mean is None else mean.to(ACC)
    if dtype == ACC:  # one float64 copy, centred in place (a second n x d allocation costs page faults)
        return x.to(ACC, copy=True).sub_(mu)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for rows in _row_chunks(x):
        out[rows] = x[rows].to(ACC) - mu  # rounded once, on assignment
    return out


def unit_rows(
    x: Tensor, name: str, reference: Tensor | None = None, what: str = "all-zero", fix: str = "drop them"
) -> Tensor:
    """x_i / |x_i| for every row, in ``x``'s dtype, refusing rows that have no direction.

    A row is refused when |x_i| <= ZERO_NORM_RTOL * r_i, with r_i = ``reference[i]`` the row's norm
    before a cancelling subtraction (e.g. the raw norm when ``x`` is centred across features);
    without ``reference`` the test is |x_i| == 0 (see :data:`ZERO_NORM_RTOL`). ``what`` names such
    a row in the error ("all-zero", "constant"), ``fix`` says what to do about it.
    """
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    bad = norms[:, 0] == 0 if reference is None else norms[:, 0] <= ZERO_NORM_RTOL * reference
    count = int(bad.sum())
    if count:
        raise ValueError(f"{name} has {count} {what} rows, whose direction (cosine similarity) is undefined; {fix}")
    return x / norms


def sq_frobenius(m: Tensor) -> Tensor:
    """|M|_F^2 = sum_ij M_ij^2 as a float64 0-d tensor, without a float64 copy of ``m``."""
    return torch.linalg.vector_norm(m, dtype=ACC) ** 2


def sq_row_norms(x: Tensor) -> Tensor:
    """|x_i|^2 of every row, shape (..., n), in float64 (the row converted before squaring)."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=ACC) ** 2


def gram_sq_distances(sq_a: Tensor, sq_b: Tensor, gram: Tensor) -> Tensor:
    """Squared Euclidean distances from the Gram identity |a_i - b_j|^2 = |a_i|^2 + |b_j|^2 - 2 <a_i, b_j>.

    ``sq_a`` (..., n), ``sq_b`` (..., m) are the squared row norms, ``gram`` (..., n, m) the inner
    products (all in the caller's float64 by the precision policy); returns (..., n, m), clamped at
    0 because rounding of the cancelling difference can dip below it. The rows should be centred
    first: the cancellation error is ~eps |a|^2, which centring keeps at the data's spread.
    """
    return (sq_a[..., :, None] + sq_b[..., None, :] - 2 * gram).clamp_min_(0)


def safe_sqrt(t: Tensor) -> Tensor:
    """The square root of a non-negative tensor, with gradient 0 (not inf) where it is 0.

    Self-distances are exact zeros; sqrt's derivative there is infinite, and times the zero that
    flows back it makes NaN gradients. The values are sqrt's, bit for bit (0 where ``t <= 0``)."""
    positive = t > 0
    return torch.where(positive, torch.where(positive, t, torch.ones_like(t)).sqrt(), torch.zeros_like(t))


def unbiased_hsic(n: int, tr_kl: Tensor, k_sum: Tensor, l_sum: Tensor, kl_sum: Tensor) -> Tensor:
    """Song et al.'s (2012, JMLR) unbiased HSIC from its four terms, for zero-diagonal K~, L~ (n >= 4):

        [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)).

    The terms broadcast (layer grids, batches of resamples). It can be negative; never clamped.
    """
    return (tr_kl + k_sum * l_sum / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl_sum) / (n * (n - 3))


def eigh_kept(s: Tensor, rtol: float = EIGEN_RTOL) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors of a symmetric PSD ``s``, keeping lambda > rtol * lambda_max.

    The dropped ones are rank deficiency plus rounding (see :data:`EIGEN_RTOL`); keeping them would
    whiten noise. A zero (or rounding-negative) lambda_max keeps nothing.
    """
    vals, vecs = torch.linalg.eigh(s)
    vals, vecs = vals.flip(0), vecs.flip(1)
    keep = vals > rtol * vals[0].clamp_min(torch.finfo(vals.dtype).tiny)
    return vals[keep], vecs[:, keep]


def block_sq_norms(m: Tensor, row_sizes: list[int], col_sizes: list[int]) -> Tensor:
    """|M_lm|_F^2 = sum_ij (M_lm)_ij^2 of every block of ``m`` split by ``row_sizes`` x ``col_sizes``,
    shape (L, M), accumulated in float64 without a full-size float64 copy of ``m``."""
    rows = [0, *itertools.accumulate(row_sizes)]
    cols = [0, *itertools.accumulate(col_sizes)]
    return torch.stack(
        [
            torch.stack([sq_frobenius(m[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]) for j in range(len(col_sizes))])
            for i in range(len(row_sizes))
        ]
    )
