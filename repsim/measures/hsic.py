"""HSIC estimators, on Gram matrices and on feature moments, for whole layer grids at once.

Notation: K, L are n x n Gram matrices, H = I - 11^T/n, K~ is K with its diagonal
zeroed.

* biased HSIC (Gretton et al. 2005):   tr(KHLH) / (n-1)^2
* unbiased HSIC (Song et al. 2012), n >= 4:
  [tr(K~L~) + (1^T K~ 1)(1^T L~ 1)/((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3))

For linear kernels every term has an O(n d^2) feature-space form, so neither estimator needs the
n x n Gram matrix: with per-sample squared norms a_i = |x_i|^2, b_i = |y_i|^2 and sums s_x = sum x_i,
tr(K~L~) = |X^T Y|_F^2 - sum a_i b_i, 1^T K~ 1 = |s_x|^2 - sum a_i and
1^T K~ L~ 1 = s_x^T (X^T Y) s_y - s_x^T (sum x_i b_i) - s_y^T (sum y_i a_i) + sum a_i b_i.
The unbiased estimator is exactly invariant to shifting the features, so the moments may be
taken about any fixed point (the streaming accumulators use the first batch's mean).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC, block_sq_norms, sq_row_norms, unbiased_hsic
from ..core.validation import check_choice
from ._products import self_product, transpose_product

ESTIMATORS = ("biased", "unbiased")


def min_samples(estimator: str) -> int:
    return 4 if estimator == "unbiased" else 2


def estimator_name(debiased: bool) -> str:
    """The HSIC estimator a CKA variant uses: "unbiased" (debiased CKA) or "biased"."""
    return "unbiased" if debiased else "biased"


def cka_from_hsic(kl: Tensor, kk: Tensor, ll: Tensor, debiased: bool) -> Tensor:
    """Normalise an (L, M) grid of HSIC values; refuse instead of returning NaN (one host sync)."""
    positive = torch.stack([(kk > 0).all(), (ll > 0).all()]).tolist()
    for name, values, ok in (("x", kk, positive[0]), ("y", ll, positive[1])):
        if not ok:
            bad = int((values <= 0).nonzero()[0, 0])
            why = (
                "the debiased estimate of its self-similarity is not positive, which happens with very few "
                "samples; use more samples or debiased=False"
                if debiased
                else "its features do not vary across samples"
            )
            raise ValueError(f"CKA is undefined for {name} layer {bad}: {why}")
    return kl / torch.sqrt(kk[:, None] * ll[None, :])


# --------------------------------------------------------------------------------------------
# Gram space
# --------------------------------------------------------------------------------------------
def double_center(k: Tensor) -> Tensor:
    """HKH for a (..., n, n) stack of Gram matrices."""
    k = k - k.mean(dim=-2, keepdim=True)
    return k - k.mean(dim=-1, keepdim=True)


def _zero_diagonal(k: Tensor) -> Tensor:
    return k - torch.diag_embed(torch.diagonal(k, dim1=-2, dim2=-1))


def gram_hsic_grid(ks: Tensor, ls: Tensor, estimator: str) -> tuple[Tensor, Tensor, Tensor]:
    """HSIC for every pair of two Gram stacks (L, n, n) and (M, n, n).

    Returns (hsic_kl of shape (L, M), hsic_kk of shape (L,), hsic_ll of shape (M,)), in float64.
    """
    n = ks.shape[-1]
    if estimator == "biased":
        ks, ls = double_center(ks), double_center(ls)
        scale = (n - 1) ** 2
        flat_k, flat_l = ks.flatten(1), ls.flatten(1)
        kl = (flat_k.to(ACC) @ flat_l.to(ACC).T) / scale  # an n^2-long reduction: float64
        kk = flat_k.to(ACC).pow(2).sum(1) / scale
        ll = flat_l.to(ACC).pow(2).sum(1) / scale
        return kl, kk, ll
    ks, ls = _zero_diagonal(ks), _zero_diagonal(ls)
    k_rows, l_rows = ks.sum(-1).to(ACC), ls.sum(-1).to(ACC)  # K~1 and L~1
    k_sum, l_sum = k_rows.sum(-1), l_rows.sum(-1)
    tr_kl = ks.flatten(1).to(ACC) @ ls.flatten(1).to(ACC).T  # an n^2-long reduction: float64
    kl = unbiased_hsic(n, tr_kl, k_sum[:, None], l_sum[None, :], k_rows @ l_rows.T)
    kk = unbiased_hsic(n, ks.to(ACC).pow(2).sum((1, 2)), k_sum, k_sum, k_rows.pow(2).sum(1))
    ll = unbiased_hsic(n, ls.to(ACC).pow(2).sum((1, 2)), l_sum, l_sum, l_rows.pow(2).sum(1))
    return kl, kk, ll


@deprecated_arguments(positional=("estimator",))
def hsic(k: Tensor, l: Tensor, *, estimator: str = "biased") -> Tensor:
    """HSIC between two (n, n) Gram matrices, as a float64 0-d tensor.

    ``estimator="biased"``: tr(KHLH)/(n-1)^2 (Gretton et al. 2005).
    ``estimator="unbiased"``: Song et al. (2012), needs n >= 4; it can be negative, and is not
    clamped.
    """
    from ..core.validation import as_features, check_same_samples

    check_choice(estimator, "estimator", ESTIMATORS)
    need = min_samples(estimator)
    k = as_features(k, "k", need, f"the {estimator} HSIC estimator needs n >= {need}")
    l = as_features(l, "l", need, f"the {estimator} HSIC estimator needs n >= {need}")
    for name, g in (("k", k), ("l", l)):
        if g.shape[0] != g.shape[1]:
            raise ValueError(f"{name} must be a square (n, n) Gram matrix, got shape {tuple(g.shape)}")
    check_same_samples(k, l, ("k", "l"))
    return gram_hsic_grid(k.to(ACC)[None], l.to(ACC)[None], estimator)[0][0, 0]


# --------------------------------------------------------------------------------------------
# Feature space: sufficient statistics of linear kernels
# --------------------------------------------------------------------------------------------
def _segments(sizes: list[int], device) -> Tensor:
    """(L, P) indicator matrix: row l marks the columns of layer l in a concatenation."""
    index = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    return torch.nn.functional.one_hot(index, len(sizes)).T.to(ACC)


@dataclass
class LayerMoments:
    """Running sums over samples of one list of layers (features shifted by a fixed point).

    ``total``: sum x (P,), concatenated over layers; ``grams``: sum x x^T per layer;
    ``sq``: sum a (L,); ``sq2``: sum a^2 (L,); ``x_sq``: sum x a (P,), each layer with its own a.
    """

    sizes: list[int]
    n: int
    total: Tensor
    grams: list[Tensor]
    sq: Tensor
    sq2: Tensor
    x_sq: Tensor

    @staticmethod
    def of(xs: list[Tensor], need_unbiased: bool = True) -> tuple[LayerMoments, Tensor]:
        """Moments of one batch, plus its per-sample squared norms (n, L) for the cross terms."""
        n, device = xs[0].shape[0], xs[0].device
        grams = [self_product(x).to(ACC) for x in xs]
        if need_unbiased:
            sq_norms = torch.stack([sq_row_norms(x) for x in xs], dim=1)
        else:  # the biased estimator needs no per-sample norms
            sq_norms = torch.zeros(n, len(xs), dtype=ACC, device=device)
        moments = LayerMoments(
            sizes=[x.shape[1] for x in xs],
            n=n,
            total=torch.cat([x.sum(0).to(ACC) for x in xs]),  # summed in x's dtype: a dtype-converting sum is slow
            grams=grams,
            sq=sq_norms.sum(0),
            sq2=sq_norms.pow(2).sum(0),
            x_sq=(
                torch.cat([(x.T @ sq_norms[:, i].to(x.dtype)).to(ACC) for i, x in enumerate(xs)])
                if need_unbiased
                else torch.zeros(sum(x.shape[1] for x in xs), dtype=ACC, device=device)
            ),
        )
        return moments, sq_norms

    def layer(self, i: int) -> LayerMoments:
        """The moments of layer ``i`` alone (views, no copies)."""
        lo = sum(self.sizes[:i])
        hi = lo + self.sizes[i]
        return LayerMoments(
            [self.sizes[i]], self.n, self.total[lo:hi], [self.grams[i]], self.sq[i : i + 1], self.sq2[i : i + 1],
            self.x_sq[lo:hi],
        )  # fmt: skip

    def add(self, other: LayerMoments) -> None:
        self.n += other.n
        self.total += other.total
        for g, h in zip(self.grams, other.grams, strict=True):
            g += h
        self.sq += other.sq
        self.sq2 += other.sq2
        self.x_sq += other.x_sq

    def self_hsic(self, estimator: str) -> Tensor:
        """HSIC(K_l, K_l) for every layer l, shape (L,)."""
        n, out = self.n, []
        offsets = [0, *itertools.accumulate(self.sizes)]  # host ints: no device round trip
        for i, g in enumerate(self.grams):
            s = self.total[offsets[i] : offsets[i + 1]]
            if estimator == "biased":
                out.append((g - torch.outer(s, s) / n).pow(2).sum() / (n - 1) ** 2)
            else:
                k_sum = s @ s - self.sq[i]
                kl_sum = s @ g @ s - 2 * s @ self.x_sq[offsets[i] : offsets[i + 1]] + self.sq2[i]
                out.append(unbiased_hsic(n, g.pow(2).sum() - self.sq2[i], k_sum, k_sum, kl_sum))
        return torch.stack(out)


@dataclass
class CrossMoments:
    """Running cross sums of two layer lists: sum x y^T (P, Q), sum x b (P, M), sum y a (Q, L), sum a b (L, M)."""

    cross: Tensor
    x_ysq: Tensor
    y_xsq: Tensor
    sq_sq: Tensor

    @staticmethod
    def of(
        xs: list[Tensor],
        ys: list[Tensor],
        x_sq: Tensor,
        y_sq: Tensor,
        need_unbiased: bool = True,
        accumulate: bool = False,
    ) -> CrossMoments:
        """Cross sums of one batch. The (P, Q) product stays in the features' dtype unless
        ``accumulate`` (streaming sums need float64); reductions of it always run in float64."""
        x_cat = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
        y_cat = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
        cross = transpose_product(x_cat, y_cat)
        if accumulate:
            cross = cross.to(ACC)
        if not need_unbiased:
            zero = torch.zeros((), dtype=ACC, device=cross.device)
            return CrossMoments(cross, zero, zero, zero)
        return CrossMoments(
            cross=cross,
            x_ysq=(x_cat.T @ y_sq.to(x_cat.dtype)).to(ACC),
            y_xsq=(y_cat.T @ x_sq.to(y_cat.dtype)).to(ACC),
            sq_sq=x_sq.T @ y_sq,
        )

    def add(self, other: CrossMoments) -> None:
        self.cross += other.cross
        self.x_ysq += other.x_ysq
        self.y_xsq += other.y_xsq
        self.sq_sq += other.sq_sq


def moment_hsic_grid(mx: LayerMoments, my: LayerMoments, cross: CrossMoments, estimator: str) -> Tensor:
    """HSIC(K_l, L_m) for every layer pair from linear-kernel moments, shape (L, M).

    Expanded so that the (P, Q) cross product is only read, never copied:
    |C_lm - s_l s_m^T / n|^2 = |C_lm|^2 - 2 s_l^T C_lm s_m / n + |s_l|^2 |s_m|^2 / n^2.
    """
    n, c = mx.n, cross.cross
    seg_x, seg_y = _segments(mx.sizes, c.device), _segments(my.sizes, c.device)
    sx, sy = mx.total, my.total
    block = block_sq_norms(c, mx.sizes, my.sizes)
    # s_l^T C_lm s_m for all pairs: (S_x^T C) with S_x the block-diagonal (P, L) matrix of sx, then per y-layer
    s_blocks = (seg_x.T * sx[:, None]).to(c.dtype)
    s_c_s = ((s_blocks.T @ c).to(ACC) * sy) @ seg_y.T
    sx2, sy2 = seg_x @ sx.pow(2), seg_y @ sy.pow(2)
    if estimator == "biased":
        return (block - 2 * s_c_s / n + torch.outer(sx2, sy2) / n**2) / (n - 1) ** 2
    tr_kl = block - cross.sq_sq
    k_sum, l_sum = sx2 - mx.sq, sy2 - my.sq
    kl_sum = s_c_s - seg_x @ (sx[:, None] * cross.x_ysq) - (seg_y @ (sy[:, None] * cross.y_xsq)).T + cross.sq_sq
    return unbiased_hsic(n, tr_kl, k_sum[:, None], l_sum[None, :], kl_sum)
