"""Seeded Gaussian random projections of wide layers, and linear CKA corrected for the projection.

A sketch replaces features X (n, d) by X R with R (d, k) of i.i.d. N(0, 1/k) entries, drawn from a
seeded generator per (seed, side, layer): every batch of a stream sees the same R, two layers or
two models never share one (so their sketches are independent). Layers with d <= k are left as
they are (exact). Cost: n d k multiply-adds per layer and 4 d k bytes for R.

What it does to linear CKA = |S_xy|_F^2 / (|S_xx|_F |S_yy|_F), with S the centred scatters
(Kornblith et al. 2019). With independent R_x, R_y and E[R R^T] = I:

* the numerator is unbiased: E |R_x^T S_xy R_y|_F^2 = |S_xy|_F^2;
* the denominators are not: for Gaussian R, E |R^T S R|_F^2 = (1 + 1/k) tr(S^2) + tr(S)^2 / k and
  E tr(R^T S R)^2 = tr(S)^2 + 2 tr(S^2) / k, so the plain sketched CKA is biased *down* by about
  1 / sqrt((1 + r_x/k)(1 + r_y/k)), with r = tr(S)^2 / tr(S^2) a layer's effective rank: badly so
  when r is comparable to k (wide layers, flattened maps).

Solving the two expectations for tr(S^2) gives an unbiased estimate from the sketch itself,

    T2 = (|S^|_F^2 - tr(S^)^2 / k) k^2 / ((k + 2)(k - 1)),   S^ = R^T S R,

and :func:`sketched_linear_cka` reports |S^_xy|_F^2 / sqrt(T2_x T2_y): each of its three parts
unbiased, the ratio consistent with an O(1/k) bias (measured in docs/guide/wide.md). The
``debiased=True`` (unbiased-HSIC) CKA of sketched features is reported as it is (its denominator
keeps the same upward bias), and every other moment measure too: a sketch is an estimator, so the
``route`` column of ``repsim.compare`` says ``sketch k``.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments


def _layer_seed(seed: int, side: int, layer: int) -> int:
    digest = hashlib.sha256(f"repsim-sketch|{seed}|{side}|{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def projection(d: int, k: int, seed: int = 0, side: int = 0, layer: int = 0, device=None) -> Tensor:
    """The (d, k) float32 Gaussian projection with N(0, 1/k) entries of (seed, side, layer)."""
    if not (isinstance(k, int) and k >= 2):
        raise ValueError(f"sketch must be an integer number of dimensions >= 2, got {k!r}")
    gen = torch.Generator(device="cpu").manual_seed(_layer_seed(seed, side, layer))
    r = torch.randn(d, k, generator=gen, dtype=torch.float32) / k**0.5
    return r.to(device) if device is not None else r


class LayerSketch:
    """The projections of one side's layers; ``__call__(xs)`` sketches a batch (layers with d <= k pass through)."""

    def __init__(self, k: int, seed: int = 0, side: int = 0) -> None:
        projection(2, k)  # validates k
        self.k, self.seed, self.side = k, seed, side
        self._r: dict[int, Tensor] = {}

    def sketched(self, d: int) -> bool:
        return d > self.k

    def projected(self, layer: int) -> bool:
        """Whether layer number ``layer`` of the batches seen so far was projected."""
        return layer in self._r

    def __call__(self, xs: list[Tensor]) -> list[Tensor]:
        out = []
        for i, x in enumerate(xs):
            if not self.sketched(x.shape[1]):
                out.append(x)
                continue
            if i not in self._r:
                self._r[i] = projection(x.shape[1], self.k, self.seed, self.side, i, x.device)
            r = self._r[i]
            out.append(x.to(r.dtype) @ r if x.dtype != torch.float64 else x @ r.to(torch.float64))
        return out


@deprecated_arguments(positional=("seed", "side"))
def sketch(x: Tensor, k: int, *, seed: int = 0, side: int = 0) -> Tensor:
    """``x`` (n, d) projected to k dims by the seeded Gaussian projection (unchanged when d <= k)."""
    from ..core.validation import as_features

    x = as_features(x, "x")
    return LayerSketch(k, seed, side)([x])[0]


def corrected_frobenius_sq(s_hat: Tensor, k: int) -> Tensor:
    """Unbiased estimate of tr(S^2) from a Gaussian sketch S^ = R^T S R with k columns (see module docstring)."""
    q = s_hat.pow(2).sum()
    p = torch.diagonal(s_hat).sum().pow(2)
    return (q - p / k) * (k * k) / ((k + 2) * (k - 1))


def sketched_linear_cka(m, k: int, sketched_x: bool, sketched_y: bool) -> Tensor:
    """Linear CKA from the moments of sketched features, each denominator corrected when its side was sketched."""
    num = m.sxy.pow(2).sum()
    den_x = corrected_frobenius_sq(m.sxx, k) if sketched_x else m.sxx.pow(2).sum()
    den_y = corrected_frobenius_sq(m.syy, k) if sketched_y else m.syy.pow(2).sum()
    if not bool(den_x > 0) or not bool(den_y > 0):
        raise ValueError(
            f"the sketch with k = {k} dims is too small for these layers (its corrected self-similarity is not "
            "positive); use a larger sketch or an exact route"
        )
    return num / (den_x * den_y).sqrt()
