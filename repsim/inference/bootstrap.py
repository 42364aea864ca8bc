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
* ``scheme="replacement"`` (the ordinary bootstrap, percentile/BCa/normal), offered only for
  measures that are functions of second moments, where a duplicate merely re-weights the
  covariances. Even there it is biased for estimators whose bias grows as d/n (biased CKA, the
  CCA family): a resample has only ~63 % distinct samples, so its values sit above the
  full-sample estimate (measured: biased CKA of independent 200 x 50 data, 0.197; every
  resample > 0.29). Use it for well-conditioned, low-dimensional cases only.

The coverage of both is checked by simulation in the tests and in ``benchmarks/inference.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from scipy.stats import norm
from torch import Tensor

from .._validation import as_features, check_choice, check_same_samples
from ..measures.registry import MeasureInfo, _options, get_measure
from .permutation import _generator

_ACC = torch.float64
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


def _indices(n: int, scheme: str, gen: torch.Generator) -> Tensor:
    if scheme == "replacement":
        return torch.randint(0, n, (n,), generator=gen)
    return torch.randperm(n, generator=gen)[: n // 2]


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
            half = norm.ppf(1 - alpha / 2) * c * float(centred.std(correction=1))
            return estimate - half, estimate + half
        lo, hi = torch.quantile(centred, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=_ACC)).tolist()
        return estimate - c * hi, estimate - c * lo
    if method == "normal":
        half = norm.ppf(1 - alpha / 2) * float(values.std(correction=1))
        return estimate - half, estimate + half
    if method == "percentile":
        lo, hi = torch.quantile(values, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=_ACC)).tolist()
        return lo, hi
    # BCa (Efron 1987): bias correction z0 from the share below the estimate, acceleration from a
    # grouped jackknife (20 groups of samples left out; n leave-one-out fits would cost n measures)
    share = float(((values < estimate).sum() + 0.5 * (values == estimate).sum()) / values.numel())
    z0 = norm.ppf(min(max(share, 1e-10), 1 - 1e-10))
    theta = jackknife()
    d = theta.mean() - theta
    accel = float((d**3).sum() / (6 * (d**2).sum() ** 1.5)) if float((d**2).sum()) > 0 else 0.0
    qs = []
    for z in (norm.ppf(alpha / 2), norm.ppf(1 - alpha / 2)):
        qs.append(float(norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))))
    lo, hi = torch.quantile(values, torch.tensor(qs, dtype=_ACC)).tolist()
    return lo, hi


# -------------------------------------------------------------------------------- batched fast paths
# A half-sample is a 0/1 weight vector w over the n samples (m ones). Every term of the biased or
# unbiased HSIC and of Pearson RSA restricted to it is a quadratic form w^T M w or a weighted sum
# sum_i w_i (K w)_i (L w)_i of full-sample n x n matrices, so all B resamples come from a few
# (n x n) @ (n x B) products instead of B gathered submatrices.


def _quadratic_terms(mats: tuple[Tensor, ...], w: Tensor) -> dict[str, Tensor]:
    k, l, kk, ll, kl = mats
    kw, lw = k @ w, l @ w
    return {
        "kk": (w * (kk @ w)).sum(0),
        "ll": (w * (ll @ w)).sum(0),
        "kl": (w * (kl @ w)).sum(0),
        "k": (w * kw).sum(0),
        "l": (w * lw).sum(0),
        "kwkw": (w * kw * kw).sum(0),
        "lwlw": (w * lw * lw).sum(0),
        "kwlw": (w * kw * lw).sum(0),
    }


def _cka_weights(t: dict[str, Tensor], m: int, debiased: bool) -> Tensor:
    if not debiased:  # tr(K H L H) on the subsample, up to a common factor

        def h(ab, aa_w, a, b):
            return ab - 2.0 / m * aa_w + a * b / m**2

        return (
            h(t["kl"], t["kwlw"], t["k"], t["l"])
            / (h(t["kk"], t["kwkw"], t["k"], t["k"]) * h(t["ll"], t["lwlw"], t["l"], t["l"])).sqrt()
        )

    def u(ab, a, b, ab_w):  # Song et al.'s estimator on zero-diagonal kernels
        return (ab + a * b / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * ab_w) / (m * (m - 3))

    return (
        u(t["kl"], t["k"], t["l"], t["kwlw"])
        / (u(t["kk"], t["k"], t["k"], t["kwkw"]) * u(t["ll"], t["l"], t["l"], t["lwlw"])).sqrt()
    )


def _pearson_weights(t: dict[str, Tensor], m: int) -> Tensor:
    pairs = m * (m - 1)  # off-diagonal entries of a zero-diagonal m x m matrix
    cov = t["kl"] - t["k"] * t["l"] / pairs
    return cov / ((t["kk"] - t["k"] ** 2 / pairs) * (t["ll"] - t["l"] ** 2 / pairs)).sqrt()


def _fast_subsamples(name: str, opts: dict):
    """(build, statistic) for measures whose value on a subsample is a function of full-sample n x n
    matrices restricted to it; None otherwise."""
    opts = {k: v for k, v in opts.items() if k != "dtype"}
    if name in ("linear_cka", "debiased_cka") and set(opts) <= {"debiased", "method"}:
        debiased = bool(opts.get("debiased", False))

        def grams(x, y):
            xc, yc = x.to(_ACC) - x.to(_ACC).mean(0), y.to(_ACC) - y.to(_ACC).mean(0)
            k, l = xc @ xc.T, yc @ yc.T
            if debiased:
                k.fill_diagonal_(0.0)
                l.fill_diagonal_(0.0)
            return k, l

        return grams, lambda t, m: _cka_weights(t, m, debiased)
    if name in ("rsa", "rsa_spearman") and opts.get("compare", "pearson") == "pearson":
        from ..measures.rsa import rdm

        method = opts.get("rdm", "cosine")
        return (lambda x, y: (rdm(x, method), rdm(y, method))), _pearson_weights
    return None


def _batched_values(x: Tensor, y: Tensor, indices: Tensor, fast, chunk: int = 256) -> Tensor:
    build, stat = fast
    k, l = build(x, y)
    mats = (k, l, k * k, l * l, k * l)  # the elementwise products once, shared by every chunk
    b, m = indices.shape
    out = []
    for start in range(0, b, chunk):
        ib = indices[start : start + chunk].to(k.device)
        w = torch.zeros(k.shape[0], ib.shape[0], dtype=k.dtype, device=k.device)
        w.scatter_(0, ib.T, 1.0)
        out.append(stat(_quadratic_terms(mats, w), m))
    return torch.cat(out)


def _grouped_jackknife(fn, n: int, groups: int = 20) -> Tensor:
    folds = torch.arange(n) % groups
    return torch.stack([fn(torch.nonzero(folds != g).flatten()) for g in range(groups)]).to(_ACC)


def _prepared(x, y, measure: str, options: dict):
    info = get_measure(measure)
    if info.needs_outputs:
        raise ValueError(f"{measure} compares model outputs; bootstrap it on the per-sample outputs instead")
    x, y = as_features(x, "x"), as_features(y, "y")
    check_same_samples(x, y)
    return info, x, y, _options(info, options)


def bootstrap(
    x,
    y,
    measure: str = "linear_cka",
    n_resamples: int = 1000,
    ci: float = 0.95,
    method: str = "percentile",
    scheme: str = "auto",
    seed: int | None = 0,
    **measure_options,
) -> BootstrapResult:
    """A confidence interval for ``measure(x, y)`` by resampling samples (rows of both sides together).

    ``scheme``: "subsample" (the default: half-samples without replacement, so no sample is ever
    paired with its own copy; intervals scaled by the delete-d jackknife, see the module
    docstring) or "replacement" (the ordinary bootstrap, for second-moment measures only).
    ``method``: "percentile", "bca" (replacement only) or "normal". The same
    ``seed`` gives bit-identical intervals.
    """
    _check(n_resamples, ci, method)
    info, x, y, opts = _prepared(x, y, measure, measure_options)
    used = _scheme(info, check_choice(scheme, "scheme", SCHEMES))
    n = x.shape[0]
    gen = _generator(seed, x.device)
    estimate = float(info.fn(x, y, **opts))
    indices = torch.stack([_indices(n, used, gen) for _ in range(n_resamples)])
    fast = _fast_subsamples(measure, opts) if used == "subsample" else None
    if fast is not None:  # one n x n matrix per side, every resample a gathered submatrix
        values = _batched_values(x, y, indices, fast).to(_ACC).cpu()
    else:
        values = torch.stack([info.fn(x[i], y[i], **opts) for i in indices.to(x.device)]).to(_ACC).cpu()
    lo, hi = _interval(
        estimate, values, ci, method, used, n, lambda: _grouped_jackknife(lambda i: info.fn(x[i], y[i], **opts), n)
    )
    return BootstrapResult(measure, estimate, lo, hi, ci, values, method, used, n)


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


def compare_paired(
    x,
    y,
    z,
    measure: str = "linear_cka",
    n_resamples: int = 1000,
    ci: float = 0.95,
    scheme: str = "auto",
    seed: int | None = 0,
    **measure_options,
) -> PairedResult:
    """Is ``y`` more similar to ``x`` than ``z`` is? measure(x, y) - measure(x, z) with a paired interval.

    Every resample draws one set of samples for all three representations, so the two
    similarities' shared noise cancels in the difference (e.g. CKA(CL, NSCL) - CKA(CL, CE) on one
    reference set). Schemes as in :func:`bootstrap`; the interval is the percentile (replacement)
    or jackknife-scaled (subsample) interval of the differences; the two-sided p-value for
    "no difference" is the smallest 1 - level whose interval excludes 0.
    """
    _check(n_resamples, ci, "percentile")
    info, x, y, opts = _prepared(x, y, measure, measure_options)
    z = as_features(z, "z")
    check_same_samples(x, z, ("x", "z"))
    used = _scheme(info, check_choice(scheme, "scheme", SCHEMES))
    n = x.shape[0]
    gen = _generator(seed, x.device)

    def diff(idx=None):
        if idx is None:
            return info.fn(x, y, **opts) - info.fn(x, z, **opts)
        return info.fn(x[idx], y[idx], **opts) - info.fn(x[idx], z[idx], **opts)

    estimate = float(diff())
    indices = torch.stack([_indices(n, used, gen) for _ in range(n_resamples)])
    fast = _fast_subsamples(measure, opts) if used == "subsample" else None
    if fast is not None:
        values = (_batched_values(x, y, indices, fast) - _batched_values(x, z, indices, fast)).to(_ACC).cpu()
    else:
        values = torch.stack([diff(i) for i in indices.to(x.device)]).to(_ACC).cpu()
    lo, hi = _interval(estimate, values, ci, "percentile", used, n, None)
    # invert the interval: centred differences (subsample) or the raw percentile (replacement)
    if used == "subsample":
        c = math.sqrt((n // 2) / (n - n // 2))
        centred = values - values.mean()
        ref = estimate / c
        tail = min(int((centred >= ref).sum()), int((centred <= ref).sum()))
    else:
        tail = min(int((values <= 0).sum()), int((values >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (values.numel() + 1))
    return PairedResult(measure, estimate, lo, hi, p, ci, values, used, n)
