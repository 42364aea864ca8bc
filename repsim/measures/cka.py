"""Centered kernel alignment: linear (feature or Gram space), kernel, debiased, and layer grids.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))   (Kornblith et al. 2019, ICML).
Linear CKA with column-centred Xc, Yc equals |Yc^T Xc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F).
Debiased CKA puts the unbiased HSIC of Song et al. (2012) in all three places (n >= 4); it is
close to 0 for independent features even when d >> n, where biased CKA is inflated
(Murphy et al. 2024). Debiased values can be negative and are never clamped.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.numerics import ACC, center_columns, sq_frobenius, unbiased_hsic
from ..core.validation import (
    as_layer_lists,
    check_choice,
    resolve_dtype,
)
from ._products import self_product
from .blocked import blocked_workspace, hsic_grids_blocked, workspace_bytes
from .gram import rbf_gram
from .hsic import (
    CrossMoments,
    LayerMoments,
    cka_from_hsic,
    estimator_name,
    gram_hsic_grid,
    min_samples,
    moment_hsic_grid,
)
from .kinds import layer_measure
from .quadratic import QuadraticForm, Side
from .sketch import sketched_linear_cka
from .streaming_cka import StreamingLinearCKA

METHODS = ("auto", "feature", "gram")
KERNELS = ("rbf", "linear")


class BiasedCKAChanceWarning(UserWarning):
    """Biased linear CKA was asked for at widths where independent features already score high."""


CHANCE_WARNING_LEVEL = 0.25
"""Warn when the chance level of biased linear CKA (:func:`biased_cka_chance_level`) exceeds this."""


def biased_cka_chance_level(n: int, p: int, q: int) -> float:
    """Approximate E[biased linear CKA] of independent isotropic Gaussian x (n, p) and y (n, q).

    With centred Gram matrices K, L: E tr(KL) = p q (n - 1), and X_c^T X_c is Wishart(p, n - 1),
    so E|K|_F^2 = (n - 1) p (n + p); the ratio of expectations is

        sqrt(p q / ((n + p)(n + q)))          (= d / (n + d) for p = q = d),

    within 0.005 of simulated means from n = 50 to 500 and d = 10 to 4000 (biased CKA concentrates).
    Features with an uneven spectrum have a lower chance level (p, q become effective ranks
    (tr S)^2 / tr S^2 <= p), so this is the largest chance level at these widths.
    """
    return math.sqrt(p * q / ((n + p) * (n + q)))


def warn_biased_chance(n: int, x_dims: list[int], y_dims: list[int], stacklevel: int = 3) -> None:
    """Warn (:class:`BiasedCKAChanceWarning`) when the widest pair's chance level exceeds the stated level.

    Shapes only: no pass over the data and no host synchronisation."""
    level = biased_cka_chance_level(n, max(x_dims), max(y_dims))
    if level > CHANCE_WARNING_LEVEL:
        warnings.warn(
            f"biased linear CKA of independent features of widths {max(x_dims)} and {max(y_dims)} at n = {n} "
            f"is about {level:.2f} by chance (above {CHANCE_WARNING_LEVEL}); a raw value here says little. "
            "Use debiased=True (chance level ~0) or repsim.calibrate(...) for a score that is 0 at chance",
            BiasedCKAChanceWarning,
            stacklevel=stacklevel,
        )


def choose_method(n: int, x_dims: list[int], y_dims: list[int]) -> str:
    """The cheaper of feature space (O(n d^2)) and Gram space (O(n^2 d)) by multiply-adds."""
    feature = n * (sum(x_dims) * sum(y_dims) + sum(p * p for p in x_dims) + sum(q * q for q in y_dims))
    gram = n * n * (sum(x_dims) + sum(y_dims) + len(x_dims) * len(y_dims))
    return "feature" if feature <= gram else "gram"


def linear_cka_grid_validated(
    xs: list[Tensor], ys: list[Tensor], debiased: bool, dtype: torch.dtype | None, method: str
) -> Tensor:
    """Linear CKA for every (x, y) layer pair of already-validated inputs, shape (L, M), float64."""
    return linear_cka_grids_validated(xs, ys, (debiased,), dtype, method)[debiased]


def linear_cka_grids_validated(
    xs: list[Tensor], ys: list[Tensor], debiased: tuple[bool, ...], dtype: torch.dtype | None, method: str
) -> dict[bool, Tensor]:
    """Linear CKA grids for each ``debiased`` flag from one pass: the products are shared (see
    :func:`repsim.measures.blocked.hsic_grids_blocked`). {flag: (L, M) float64 grid}."""
    compute = resolve_dtype(dtype, *xs, *ys)
    n = xs[0].shape[0]
    if method == "auto":
        method = choose_method(n, [x.shape[1] for x in xs], [y.shape[1] for y in ys])
    xcs = [center_columns(x, compute) for x in xs]
    ycs = xcs if ys is xs else [center_columns(y, compute) for y in ys]
    estimators = tuple(estimator_name(flag) for flag in debiased)
    if method == "feature":
        terms = _feature_hsic_terms(xcs, ycs, estimators)
    else:  # by row blocks: never an n x n matrix per layer (repsim.measures.blocked)
        terms = hsic_grids_blocked(xcs, ycs, estimators)
    return {flag: cka_from_hsic(*terms[estimator_name(flag)], flag) for flag in debiased}


def _feature_hsic_terms(xcs: list[Tensor], ycs: list[Tensor], estimators: tuple[str, ...]) -> dict:
    """HSIC terms of every pair from feature moments; the (P, Q) cross product of all layers at once,
    or one x-layer's (p_l, Q) rows at a time when that would exceed the workspace limit."""
    unbiased = "unbiased" in estimators
    mx, x_sq = LayerMoments.of(xcs, unbiased)
    my, y_sq = (mx, x_sq) if ycs is xcs else LayerMoments.of(ycs, unbiased)
    q = sum(y.shape[1] for y in ycs)
    if sum(x.shape[1] for x in xcs) * q * xcs[0].element_size() <= workspace_bytes() or len(xcs) == 1:
        crosses = [(mx, CrossMoments.of(xcs, ycs, x_sq, y_sq, unbiased))]
    else:
        crosses = [
            (mx.layer(i), CrossMoments.of([x], ycs, x_sq[:, i : i + 1], y_sq, unbiased)) for i, x in enumerate(xcs)
        ]
    out = {}
    for estimator in estimators:
        kl = torch.cat([moment_hsic_grid(m, my, cross, estimator) for m, cross in crosses])
        kk = mx.self_hsic(estimator)
        out[estimator] = (kl, kk, kk if my is mx else my.self_hsic(estimator))
    return out


def _min_samples(debiased: bool = False, **_) -> int:
    return min_samples(estimator_name(debiased))


def _min_reason(debiased: bool = False, **_) -> str:
    return "debiased CKA uses the unbiased HSIC estimator, which needs n >= 4" if debiased else "CKA needs n >= 2"


def _check_method(method: str = "auto", **_) -> None:
    check_choice(method, "method", METHODS)


def _linear_cka_pairs(xs: list[Tensor], ys: list[Tensor], debiased: bool, dtype, method: str) -> Tensor:
    if not debiased and ys is not xs:  # a self-grid compares a model with itself: no chance question
        warn_biased_chance(xs[0].shape[0], [x.shape[1] for x in xs], [y.shape[1] for y in ys], stacklevel=6)
    return linear_cka_grid_validated(xs, ys, debiased, dtype, method)


@dataclass(frozen=True)
class CKAForm(QuadraticForm):
    """Linear CKA as a quadratic form: A = K = Z_c Z_c^T of the centred features (products in
    ``dtype``, the rest float64); biased: Q / (|K|_F |L|_F); debiased: K with a zero diagonal, D of
    its row sums and Song et al.'s unbiased HSIC of Q, the totals and D."""

    debiased: bool = False
    dtype: torch.dtype | None = None
    low_rank = True

    @property
    def uses_vector(self) -> bool:  # type: ignore[override]
        return self.debiased

    def side(self, z: Tensor, native: bool = False) -> Side:
        zc = center_columns(z, resolve_dtype(self.dtype, z))
        k = self_product(zc.T)
        k = k if native else k.to(ACC)
        if not self.debiased:
            return Side(k, None, {"norm": sq_frobenius(k).sqrt()}, zc)
        n = k.shape[0]
        k.fill_diagonal_(0.0)
        rows = k.sum(1, dtype=ACC)
        total = rows.sum()
        self_hsic = unbiased_hsic(n, sq_frobenius(k), total, total, rows @ rows)
        return Side(k, rows, {"total": total, "self": self_hsic, "n": torch.tensor(float(n), dtype=ACC)}, zc)

    def finish(self, q: Tensor, d: Tensor | None, sx: dict, sy: dict) -> Tensor:
        if not self.debiased:
            return q / (sx["norm"][:, None, None] * sy["norm"][None, :, None])
        n = int(sx["n"][0])
        cross = unbiased_hsic(n, q, sx["total"][:, None, None], sy["total"][None, :, None], d)
        return cross / (sx["self"][:, None, None] * sy["self"][None, :, None]).sqrt()


def _cka_quadratic(method: str = "auto", debiased: bool = False, dtype=None, **_) -> CKAForm | None:
    return CKAForm(bool(debiased), dtype) if method in ("auto", "feature", "gram") else None


def _linear_cka_workspace(n: int, dx: list[int], dy: list[int] | None, limit: int, dtype=None, **_) -> int:
    """Centred copies of every layer (float64 at most) plus the blocked grid's workspace."""
    return 8 * n * (sum(dx) + sum(dy or [])) + blocked_workspace(n, len(dx) + len(dy or []), 8, limit)


def linear_cka_from_moments(m, debiased: bool = False) -> Tensor:
    """Biased linear CKA from centred scatter matrices: |S_xy|_F^2 / (|S_xx|_F |S_yy|_F)."""
    if debiased:
        raise ValueError("debiased CKA needs per-sample norms; stream it with StreamingLinearCKA(debiased=True)")
    return m.sxy.pow(2).sum() / (m.sxx.norm() * m.syy.norm())


_CKA_INVARIANCES = ("orthogonal", "isotropic_scaling", "translation", "permutation")
_KORNBLITH = "Kornblith et al. 2019, ICML; unbiased HSIC: Song et al. 2012"
_CKA = dict(
    family="cka",
    larger_is_more_similar=True,
    invariances=_CKA_INVARIANCES,
    identity_value=1.0,
    reference=_KORNBLITH,
    min_samples=_min_samples,
    reason=_min_reason,
)


@layer_measure(
    "linear_cka",
    differentiable=True,
    grid=_linear_cka_pairs,
    options_check=_check_method,
    streaming=True,
    from_moments=linear_cka_from_moments,
    cost="O(n d^2) or O(n^2 d), the cheaper",
    workspace=_linear_cka_workspace,
    quadratic=_cka_quadratic,
    gram_pass="cka",
    sketch_corrected=sketched_linear_cka,
    aliases={
        "debiased_cka": dict(
            defaults={"debiased": True},
            from_moments=None,
            sketch_corrected=None,
            accumulator=lambda dtype=None, **_: StreamingLinearCKA(debiased=True, dtype=dtype),
        )
    },
    **_CKA,
)
def linear_cka(
    x: Tensor, y: Tensor, *, debiased: bool = False, dtype: torch.dtype | None = None, method: str = "auto"
) -> Tensor:
    """Linear CKA between features ``x`` (n, p) and ``y`` (n, q) of the same n samples.

    CKA = |Yc^T Xc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F) with column-centred Xc, Yc (Kornblith et al.
    2019); with ``debiased=True`` the unbiased HSIC of Song et al. (2012) replaces the biased one.
    ``linear_cka.grid(xs, ys)`` (= :func:`cka_grid`) compares every layer of ``xs`` with every
    layer of ``ys``: each layer's centring and self-similarity once, the cross terms of all pairs
    from one matrix product (feature space) or one pass over Gram row blocks (Gram space).

    Args:
        debiased: use the unbiased HSIC estimator (n >= 4). Recommended when n is small or
            comparable to the feature dimension.
        dtype: dtype of the big matrix products. ``None`` (default): the inputs' precision
            (float32 features -> float32 products, half -> float32); centring and every reduction
            still run in float64 and the result is float64 (measured error bound in
            docs/guide/measures.md, "Precision"). ``torch.float64`` is the exact path (~1e-12).
        method: "feature" (O(n d^2)), "gram" (O(n^2 d)) or "auto" (the cheaper one).

    Returns:
        float64 0-d tensor on the inputs' device.
    """


cka_grid = linear_cka.grid


def _check_kernel(kernel: str = "rbf", sigma: float = 0.8, **_) -> None:
    check_choice(kernel, "kernel", KERNELS)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive (a fraction of the median distance), got {sigma}")


def _kernel_cka_pairs(xs: list[Tensor], ys: list[Tensor], kernel: str, sigma: float, debiased: bool, dtype) -> Tensor:
    if kernel == "linear":
        return linear_cka_grid_validated(xs, ys, debiased, dtype, "gram")
    compute = resolve_dtype(dtype, *xs, *ys)
    ks = torch.stack([rbf_gram(center_columns(x, compute), sigma=sigma) for x in xs])
    ls = ks if ys is xs else torch.stack([rbf_gram(center_columns(y, compute), sigma=sigma) for y in ys])
    kl, kk, ll = gram_hsic_grid(ks, ls, estimator_name(debiased))
    return cka_from_hsic(kl, kk, ll, debiased)


@layer_measure(
    "kernel_cka",
    differentiable=True,
    grid=_kernel_cka_pairs,
    options_check=_check_kernel,
    cost="O(n^2 d)",
    aliases={"debiased_kernel_cka": dict(defaults={"debiased": True})},
    **_CKA,
)
def kernel_cka(
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "rbf",
    sigma: float = 0.8,
    debiased: bool = False,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Kernel CKA with an RBF (or linear) kernel, HSIC(K, L)/sqrt(HSIC(K, K) HSIC(L, L)).

    RBF: k(x, x') = exp(-|x - x'|^2 / (2 s^2)), s^2 = sigma^2 * median squared pairwise distance,
    as in Kornblith et al.'s (2019) reference code. Builds n x n Gram matrices: O(n^2) memory.
    ``kernel_cka.grid(xs, ys)`` builds each layer's Gram matrix once (L + M kernels, not 2 L M)
    and all cross HSICs from one product of the flattened, centred Gram stacks.
    """


def linear_cka_grids(xs, ys=None, dtype: torch.dtype | None = None, method: str = "auto") -> dict[bool, Tensor]:
    """Biased and debiased linear CKA of every layer pair at once, the products computed once:
    ``{False: biased (L, M), True: debiased (L, M)}``. Arguments as in :func:`cka_grid`."""
    check_choice(method, "method", METHODS)
    xs, ys = as_layer_lists(xs, ys, 4, varying=True)
    return linear_cka_grids_validated(xs, ys, (False, True), dtype, method)
