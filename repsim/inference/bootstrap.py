"""Confidence intervals for any registered measure, and for the difference of two that share a side.

Why not the textbook bootstrap everywhere: resampling with replacement puts duplicated samples in
the data, and a duplicate matches itself perfectly. For Gram- and RDM-based measures (debiased
CKA, RSA, kernel and neighbourhood measures) the pairs of a sample with its own copy inflate the
value, and the unbiased HSIC assumes distinct samples. So:

* ``scheme="subsample"`` (the default for every measure): half-samples drawn WITHOUT replacement,
  so no duplicate ever occurs. Their spread estimates the full-sample spread through the
  delete-d jackknife (Shao & Wu 1989): Var(theta_n) ~ m/(n - m) Var*(theta_m) for subsamples of
  m = n/2 (factor 1). The interval is theta_n - c [q_{1-a/2}, q_{a/2}] of the centred subsample
  values, c = sqrt(m/(n - m)), which also removes the subsample estimator's own small-n bias.
  Half-samples are drawn in complementary pairs (S and the rest of one permutation), as in
  balanced repeated replication: each is a uniform half-sample, and the batched paths get both
  from one product.
* ``scheme="replacement"`` (the ordinary bootstrap, percentile/BCa/normal), offered only for
  measures that are functions of second moments, where a duplicate merely re-weights the
  covariances. Even there it is biased for estimators whose bias grows as d/n (biased CKA, the
  CCA family): a resample has only ~63 % distinct samples, so its values sit above the
  full-sample estimate (measured: biased CKA of independent 200 x 50 data, 0.197; every
  resample > 0.29). Use it for well-conditioned, low-dimensional cases only.

The coverage of both is checked by simulation in the tests and in ``benchmarks/inference.py``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC, center_columns, unbiased_hsic
from ..core.validation import as_features, check_choice, check_same_samples, resolve_dtype
from ..measures._products import self_product
from ..measures.registry import MeasureInfo, get_measure
from .permutation import seeded_generator
from .restricted import _codes, block_positions

_NORMAL = NormalDist()  # the standard normal's cdf and quantile (the stdlib's are exact to double precision)
SCHEMES = ("auto", "replacement", "subsample")
METHODS = ("percentile", "bca", "normal")


@dataclass
class BootstrapResult:
    """An estimate with its confidence interval and the resampled values behind it."""

    measure: str
    estimate: float
    ci_low: float
    ci_high: float
    level: float
    resamples: Tensor = field(repr=False)
    method: str
    scheme: str
    n: int


def _scheme(info: MeasureInfo, scheme: str) -> str:
    if scheme == "auto":
        return "subsample"
    if scheme == "replacement" and info.from_moments is None:
        raise ValueError(
            f"{info.name} is computed from pairs of samples, which duplicated samples (resampling with replacement) "
            "inflate; use scheme='subsample' (half-samples without replacement, the default for it)"
        )
    return scheme


def _draw(n: int, n_resamples: int, scheme: str, gen: torch.Generator) -> Tensor:
    """(n_resamples, size) sample indices. Half-samples come in complementary pairs: one permutation
    gives S = its first n//2 and S' = its next n//2 (for odd n one random sample sits out). Each is
    a uniform half-sample, as in balanced repeated replication (McCarthy 1969), and the pairs let the
    batched paths compute both halves from one product."""
    if scheme == "replacement":
        return torch.stack([torch.randint(0, n, (n,), generator=gen) for _ in range(n_resamples)])
    m = n // 2
    rows = []
    for _ in range((n_resamples + 1) // 2):
        perm = torch.randperm(n, generator=gen)
        rows += [perm[:m], perm[m : 2 * m]]
    return torch.stack(rows[:n_resamples])


def _block_members(blocks, n: int) -> list[Tensor] | None:
    """The sample positions of each block (None: every sample is its own unit)."""
    if blocks is None:
        return None
    members = [torch.from_numpy(pos) for pos in block_positions(_codes(blocks, "blocks", n))]
    if len(members) < 4:
        raise ValueError(
            f"blocks: {len(members)} distinct blocks; resampling whole blocks needs at least 4 "
            "(use smaller blocks, or blocks=None to resample samples)"
        )
    return members


def _resamples(n: int, n_resamples: int, scheme: str, gen: torch.Generator, members) -> list[Tensor] | Tensor:
    """Sample indices of every resample: rows of :func:`_draw`, or with ``members`` (blocks) the
    samples of the drawn blocks, so a block is always kept or left out whole."""
    if members is None:
        return _draw(n, n_resamples, scheme, gen)
    units = _draw(len(members), n_resamples, scheme, gen)
    return [torch.cat([members[u] for u in row.tolist()]) for row in units]


def _check(n_resamples: int, level: float, method: str) -> None:
    check_choice(method, "method", METHODS)
    if not isinstance(n_resamples, int) or n_resamples < 10:
        raise ValueError(f"n_resamples must be an integer >= 10, got {n_resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95; got {level}")


def _interval(estimate: float, values: Tensor, level: float, method: str, scheme: str, n: int, jackknife) -> tuple:
    alpha = 1 - level
    if scheme == "subsample":
        if method == "bca":
            raise ValueError(
                "method='bca' needs scheme='replacement'; subsample intervals are 'percentile' or 'normal'"
            )
        m = n // 2
        c = math.sqrt(m / (n - m))
        centred = values - values.mean()
        if method == "normal":
            half = _NORMAL.inv_cdf(1 - alpha / 2) * c * float(centred.std(correction=1))
            return estimate - half, estimate + half
        lo, hi = torch.quantile(centred, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=ACC)).tolist()
        return estimate - c * hi, estimate - c * lo
    if method == "normal":
        half = _NORMAL.inv_cdf(1 - alpha / 2) * float(values.std(correction=1))
        return estimate - half, estimate + half
    if method == "percentile":
        lo, hi = torch.quantile(values, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=ACC)).tolist()
        return lo, hi
    # BCa (Efron 1987): bias correction z0 from the share below the estimate, acceleration from a
    # grouped jackknife (20 groups of samples left out; n leave-one-out fits would cost n measures)
    share = float(((values < estimate).sum() + 0.5 * (values == estimate).sum()) / values.numel())
    z0 = _NORMAL.inv_cdf(min(max(share, 1e-10), 1 - 1e-10))
    theta = jackknife()
    d = theta.mean() - theta
    accel = float((d**3).sum() / (6 * (d**2).sum() ** 1.5)) if float((d**2).sum()) > 0 else 0.0
    qs = []
    for z in (_NORMAL.inv_cdf(alpha / 2), _NORMAL.inv_cdf(1 - alpha / 2)):
        qs.append(float(_NORMAL.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))))
    lo, hi = torch.quantile(values, torch.tensor(qs, dtype=ACC)).tolist()
    return lo, hi


# -------------------------------------------------------------------------------- batched fast paths
# A half-sample is a 0/1 weight vector w over the n samples (m ones). Every term of the biased or
# unbiased HSIC and of Pearson RSA restricted to it is a quadratic form w^T M w or a weighted sum
# sum_i w_i (K w)_i (L w)_i of full-sample n x n matrices, so all B resamples come from a few
# (n x n) @ (n x B) products instead of B gathered submatrices. Three more savings:
# * K w = Xc (Xc^T w) for linear kernels: O(n d) per resample instead of O(n^2) when d < n;
# * the quadratic forms of K∘L, K∘K and L∘L come from one stacked (3n x n) @ (n x B) product;
# * half-samples come in complementary pairs (S, S'), so M w' = M 1 - M w (- the column of the
#   one sample left out when n is odd): one product serves both halves.
# Products run in the inputs' precision (float32 features: float32 products, after centring in
# float64, as every measure does); every sum over samples is taken in float64.


class _HadamardQuad:
    """Quadratic forms w^T M w of the stacked [K∘L, K∘K, L∘L] for a batch of 0/1 weight columns.

    The matrices are symmetric, so only the upper block triangle is multiplied: with row panels I,
    w^T M w = sum_I 2 w_I^T (M'_{I, I:} w_{I:}) where M' is M with its diagonal blocks halved;
    (k + 1)/2k of the multiply-adds of M W for k panels (8: 56 %)."""

    def __init__(self, k: Tensor, l: Tensor):
        n = k.shape[0]
        self.m = torch.empty(3, n, n, dtype=k.dtype, device=k.device)
        torch.mul(k, l, out=self.m[0])
        torch.mul(k, k, out=self.m[1])
        torch.mul(l, l, out=self.m[2])
        self.ones = self.m.sum(2).to(ACC)  # M 1, (3, n), before the diagonal blocks are halved
        self.total = self.ones.sum(1)  # 1^T M 1, (3,)
        panels = max(1, min(n // 256, 8))
        self.edges = [i * n // panels for i in range(panels + 1)]
        for lo, hi in itertools.pairwise(self.edges):
            self.m[:, lo:hi, lo:hi] *= 0.5
        self.panel_of = torch.bucketize(torch.arange(n), torch.tensor(self.edges[1:-1]), right=True)

    def forms(self, w: Tensor) -> Tensor:
        """w^T M w for every column of w (n, c), as (3, c) float64."""
        out = torch.zeros(3, w.shape[1], dtype=ACC, device=w.device)
        for lo, hi in itertools.pairwise(self.edges):
            partial = self.m[:, lo:hi, lo:] @ w[lo:]  # (3, h, c): M'_{I, I:} w_{I:}
            out += 2 * (w[lo:hi] * partial).sum(1, dtype=ACC)
        return out

    def row_dot(self, j: Tensor, w: Tensor) -> Tensor:
        """(M w)_j for one sample index j per column of w, (3, c) float64 (the halved block restored)."""
        rows = self.m[:, j, :]  # (3, c, n)
        full = (rows * w.T).sum(2, dtype=ACC)
        lo = torch.tensor(self.edges, device=w.device)[self.panel_of[j.cpu()].to(w.device)]
        hi = torch.tensor(self.edges, device=w.device)[self.panel_of[j.cpu()].to(w.device) + 1]
        cols = torch.arange(w.shape[0], device=w.device)[:, None]
        in_block = ((cols >= lo) & (cols < hi)).to(w.dtype)  # (n, c): the columns of j's diagonal block
        return full + (rows * (w * in_block).T).sum(2, dtype=ACC)


@dataclass
class _Fast:
    """Everything a batch of half-sample weights needs: the Hadamard quadratic forms and K, L actions."""

    quad: _HadamardQuad
    k_apply: object  # W (n, c) -> K W
    l_apply: object
    k_ones: Tensor  # K 1, L 1 (n,)
    l_ones: Tensor
    stat: object  # (terms, m) -> values (c,)


def _terms(w: Tensor, kw: Tensor, lw: Tensor, forms: Tensor) -> dict[str, Tensor]:
    wk, wl = w * kw, w * lw
    return {
        "kl": forms[0],
        "kk": forms[1],
        "ll": forms[2],
        "k": wk.sum(0, dtype=ACC),
        "l": wl.sum(0, dtype=ACC),
        "kwkw": (wk * kw).sum(0, dtype=ACC),
        "lwlw": (wl * lw).sum(0, dtype=ACC),
        "kwlw": (wk * lw).sum(0, dtype=ACC),
    }


def _cka_weights(t: dict[str, Tensor], m: int, debiased: bool) -> Tensor:
    if not debiased:  # tr(K H L H) on the subsample, up to a common factor

        def h(ab, aa_w, a, b):
            return ab - 2.0 / m * aa_w + a * b / m**2

        return (
            h(t["kl"], t["kwlw"], t["k"], t["l"])
            / (h(t["kk"], t["kwkw"], t["k"], t["k"]) * h(t["ll"], t["lwlw"], t["l"], t["l"])).sqrt()
        )

    # Song et al.'s estimator on zero-diagonal kernels
    return (
        unbiased_hsic(m, t["kl"], t["k"], t["l"], t["kwlw"])
        / (
            unbiased_hsic(m, t["kk"], t["k"], t["k"], t["kwkw"]) * unbiased_hsic(m, t["ll"], t["l"], t["l"], t["lwlw"])
        ).sqrt()
    )


def _pearson_weights(t: dict[str, Tensor], m: int) -> Tensor:
    pairs = m * (m - 1)  # off-diagonal entries of a zero-diagonal m x m matrix
    cov = t["kl"] - t["k"] * t["l"] / pairs
    return cov / ((t["kk"] - t["k"] ** 2 / pairs) * (t["ll"] - t["l"] ** 2 / pairs)).sqrt()


def _linear_kernel_fast(x: Tensor, y: Tensor, debiased: bool, dtype) -> _Fast:
    compute = resolve_dtype(dtype, x, y)
    xc, yc = center_columns(x, compute), center_columns(y, compute)
    k, l = self_product(xc.T), self_product(yc.T)  # symmetric n x n products: the panelled half
    if debiased:  # Song et al.'s estimator uses zero-diagonal kernels
        k.fill_diagonal_(0.0)
        l.fill_diagonal_(0.0)
    quad = _HadamardQuad(k, l)
    k_ones, l_ones = k.sum(1), l.sum(1)
    del k, l
    dx = xc.pow(2).sum(1, keepdim=True) if debiased else None
    dy = yc.pow(2).sum(1, keepdim=True) if debiased else None

    def apply(zc, diag):
        if diag is None:
            return lambda w: zc @ (zc.T @ w)
        return lambda w: zc @ (zc.T @ w) - diag * w

    stat = lambda t, m: _cka_weights(t, m, debiased)  # noqa: E731
    return _Fast(quad, apply(xc, dx), apply(yc, dy), k_ones, l_ones, stat)


def _matrix_fast(k: Tensor, l: Tensor, stat) -> _Fast:
    return _Fast(_HadamardQuad(k, l), lambda w: k @ w, lambda w: l @ w, k.sum(1), l.sum(1), stat)


def _fast_subsamples(name: str, opts: dict):
    """A builder (x, y) -> _Fast for measures whose value on a subsample is a function of full-sample
    n x n matrices restricted to it (their quadratic form says so); None otherwise."""
    form = get_measure(name).quadratic_form(**opts)
    if form is None:
        return None
    if form.low_rank:  # K = Z_c Z_c^T: every product with K goes through the centred features
        return lambda x, y: _linear_kernel_fast(x, y, form.debiased, form.dtype)
    if form.subsample_matrices:
        return lambda x, y: _matrix_fast(form.raw_matrix(x), form.raw_matrix(y), _pearson_weights)
    return None


def _weights(rows: Tensor, n: int, dtype, device) -> Tensor:
    w = torch.zeros(n, rows.shape[0], dtype=dtype, device=device)
    return w.scatter_(0, rows.T.to(device), 1.0)


def _batched_values(x: Tensor, y: Tensor, indices: Tensor, build, chunk: int = 128) -> Tensor:
    """measure(x[S], y[S]) for every half-sample S (row of ``indices``), drawn in complementary pairs
    (rows 2j and 2j + 1 are disjoint; see _draw)."""
    fast = build(x, y)
    n, m = x.shape[0], indices.shape[1]
    quad = fast.quad
    dtype, device = quad.m.dtype, quad.m.device
    out = []
    for start in range(0, indices.shape[0], 2 * chunk):
        block = indices[start : start + 2 * chunk]
        first, second = block[0::2], block[1::2]
        w = _weights(first, n, dtype, device)
        kw, lw, forms = fast.k_apply(w), fast.l_apply(w), quad.forms(w)
        interleaved = torch.empty(block.shape[0], dtype=ACC, device=device)
        interleaved[0::2] = fast.stat(_terms(w, kw, lw, forms), m)
        if second.shape[0]:
            # w' = 1 - w (- e_j, the sample that sat out when n is odd): M w' = M 1 - M w - M e_j and
            # w'^T M w' = 1^T M 1 - 2 (M 1)^T w + w^T M w (- 2 (M 1)_j + 2 (M w)_j + M_jj)
            c = second.shape[0]
            w, kw, lw, forms = w[:, :c], kw[:, :c], lw[:, :c], forms[:, :c]
            kw2, lw2 = fast.k_ones[:, None] - kw, fast.l_ones[:, None] - lw
            forms2 = quad.total[:, None] - 2 * (quad.ones @ w.to(ACC)) + forms
            if n % 2:
                left = (1.0 - w - _weights(second, n, dtype, device)).clamp_min_(0)  # e_j per column
                j = left.argmax(0)
                kw2, lw2 = kw2 - fast.k_apply(left), lw2 - fast.l_apply(left)
                m_jj = 2 * quad.m[:, j, j].to(ACC)  # the diagonal block was halved
                forms2 = forms2 - 2 * quad.ones[:, j] + 2 * quad.row_dot(j, w) + m_jj
            interleaved[1::2] = fast.stat(_terms(1.0 - w - (left if n % 2 else 0.0), kw2, lw2, forms2), m)
        out.append(interleaved)
    return torch.cat(out)


def _grouped_jackknife(fn, n: int, members=None, groups: int = 20) -> Tensor:
    """fn on the data with each of ``groups`` folds of samples (of whole blocks, with ``members``) left out."""
    if members is None:
        folds = torch.arange(n) % groups
    else:
        folds = torch.empty(n, dtype=torch.long)
        for b, rows in enumerate(members):
            folds[rows] = b % groups
    groups = min(groups, int(folds.max()) + 1)
    return torch.stack([fn(torch.nonzero(folds != g).flatten()) for g in range(groups)]).to(ACC)


def _prepared(x, y, measure: str, options: dict):
    info = get_measure(measure)
    if info.needs_outputs:
        raise ValueError(f"{measure} compares model outputs; bootstrap it on the per-sample outputs instead")
    x, y = as_features(x, "x"), as_features(y, "y")
    check_same_samples(x, y)
    return info, x, y, info.resolve_options(options)


@deprecated_arguments(positional=("n_resamples", "ci", "method", "scheme", "seed", "blocks"))
def bootstrap(
    x,
    y,
    measure: str = "linear_cka",
    *,
    n_resamples: int = 1000,
    ci: float = 0.95,
    method: str = "percentile",
    scheme: str = "auto",
    seed: int | None = 0,
    blocks=None,
    **measure_options,
) -> BootstrapResult:
    """A confidence interval for ``measure(x, y)`` by resampling samples (rows of both sides together).

    ``scheme``: "subsample" (the default: half-samples without replacement, so no sample is ever
    paired with its own copy; intervals scaled by the delete-d jackknife, see the module
    docstring) or "replacement" (the ordinary bootstrap, for second-moment measures only).
    ``method``: "percentile", "bca" (replacement only) or "normal". The same
    ``seed`` gives bit-identical intervals.

    ``blocks`` (one id per sample, as in :func:`~repsim.permutation_test`) resamples whole blocks
    instead of samples: the tokens of one sentence, the crops of one image, the frames of one clip
    are dependent, and an interval that resamples them one by one is too narrow. The half-samples
    are then halves of the blocks (and the jackknife factor counts blocks); with
    ``scheme="replacement"``, blocks are drawn with replacement (the cluster bootstrap).
    """
    _check(n_resamples, ci, method)
    info, x, y, opts = _prepared(x, y, measure, measure_options)
    used = _scheme(info, check_choice(scheme, "scheme", SCHEMES))
    n = x.shape[0]
    members = _block_members(blocks, n)
    gen = seeded_generator(seed, x.device)
    estimate = float(info.fn(x, y, **opts))
    indices = _resamples(n, n_resamples, used, gen, members)
    fast = _fast_subsamples(measure, opts) if used == "subsample" and members is None else None
    if fast is not None:  # a few n x n matrices, every resample a weighted sum over them
        values = _batched_values(x, y, indices, fast).to(ACC).cpu()
    else:
        values = _resampled(info, x, y, opts, _on(indices, x.device), used).to(ACC).cpu()
    units = n if members is None else len(members)

    def jackknife():
        return _grouped_jackknife(lambda i: info.fn(x[i], y[i], **opts), n, members)

    lo, hi = _interval(estimate, values, ci, method, used, units, jackknife)
    return BootstrapResult(measure, estimate, lo, hi, ci, values, method, used, n)


def _resampled(info: MeasureInfo, x: Tensor, y: Tensor, opts: dict, indices, scheme: str) -> Tensor:
    """The measure on every resample; one it cannot be computed on stops the bootstrap at the first such
    resample (the first drawn, in practice: the resamples have one size), naming the user's n and the
    resamples' size (a half-sample has half the samples: CCA-type measures need more than their ranks)."""
    values = []
    for rows in indices:
        try:
            values.append(info.fn(x[rows], y[rows], **opts))
        except ValueError as err:
            n, m = x.shape[0], rows.numel()
            what = "half-samples" if scheme == "subsample" else "resamples"
            raise ValueError(
                f"bootstrap of {info.name} at n = {n}: the measure cannot be computed on the {what} this interval "
                f"needs (m = {m} samples each). Cause: {err}. Give more samples, settings of {info.name} that need "
                "fewer (svcca: n_components=k with 2k < m), or a test without resampling (permutations)"
            ) from err
    return torch.stack(values)


def _on(indices, device):
    """The resamples' indices on ``device``: one transfer for a (B, m) tensor, one per blocked resample."""
    return indices.to(device) if isinstance(indices, Tensor) else [i.to(device) for i in indices]


@dataclass
class PairedResult:
    """measure(x, y) - measure(x, z) on the same samples, with a paired interval and p-value."""

    measure: str
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    """Two-sided, for "no difference", by inverting the interval (the smallest level excluding 0)."""
    level: float
    resamples: Tensor = field(repr=False)
    scheme: str
    n: int


@deprecated_arguments(positional=("n_resamples", "ci", "scheme", "seed", "blocks"))
def compare_paired(
    x,
    y,
    z,
    measure: str = "linear_cka",
    *,
    n_resamples: int = 1000,
    ci: float = 0.95,
    scheme: str = "auto",
    seed: int | None = 0,
    blocks=None,
    **measure_options,
) -> PairedResult:
    """Is ``y`` more similar to ``x`` than ``z`` is? measure(x, y) - measure(x, z) with a paired interval.

    Every resample draws one set of samples for all three representations, so the two
    similarities' shared noise cancels in the difference (e.g. CKA(CL, NSCL) - CKA(CL, CE) on one
    reference set). Schemes as in :func:`bootstrap`; the interval is the percentile (replacement)
    or jackknife-scaled (subsample) interval of the differences; the two-sided p-value for
    "no difference" is the smallest 1 - level whose interval excludes 0. ``blocks`` resamples whole
    blocks of dependent samples, as in :func:`bootstrap`.
    """
    _check(n_resamples, ci, "percentile")
    info, x, y, opts = _prepared(x, y, measure, measure_options)
    z = as_features(z, "z")
    check_same_samples(x, z, ("x", "z"))
    used = _scheme(info, check_choice(scheme, "scheme", SCHEMES))
    n = x.shape[0]
    members = _block_members(blocks, n)
    units = n if members is None else len(members)
    gen = seeded_generator(seed, x.device)

    def diff(idx=None):
        if idx is None:
            return info.fn(x, y, **opts) - info.fn(x, z, **opts)
        return info.fn(x[idx], y[idx], **opts) - info.fn(x[idx], z[idx], **opts)

    estimate = float(diff())
    indices = _resamples(n, n_resamples, used, gen, members)
    fast = _fast_subsamples(measure, opts) if used == "subsample" and members is None else None
    if fast is not None:
        values = (_batched_values(x, y, indices, fast) - _batched_values(x, z, indices, fast)).to(ACC).cpu()
    else:
        values = torch.stack([diff(i) for i in _on(indices, x.device)]).to(ACC).cpu()
    lo, hi = _interval(estimate, values, ci, "percentile", used, units, None)
    # invert the interval: centred differences (subsample) or the raw percentile (replacement)
    if used == "subsample":
        c = math.sqrt((units // 2) / (units - units // 2))
        centred = values - values.mean()
        ref = estimate / c
        tail = min(int((centred >= ref).sum()), int((centred <= ref).sum()))
    else:
        tail = min(int((values <= 0).sum()), int((values >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (values.numel() + 1))
    return PairedResult(measure, estimate, lo, hi, p, ci, values, used, n)
