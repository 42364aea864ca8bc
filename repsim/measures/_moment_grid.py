"""Plumbing shared by the measures that are functions of second moments (CCA, shape, regression, ...).

Each such measure is written as ``prepare(scatter, n, **opts)`` (per-layer work: eigendecompositions,
whitening, traces; done once per layer) and ``pair(prep_x, prep_y, sxy, n, **opts)``. From that one
definition come the one-shot function, the exact streaming ``from_moments`` and a grid that runs
the n-sized products once (one product of the concatenated centred layers) and each layer's
decomposition once.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from ..core.numerics import center_columns, column_mean
from ..core.validation import as_feature_pair, as_layer_lists, resolve_dtype
from ._products import self_product, transpose_product
from .moments import Moments

Prepare = Callable[..., object]
Pair = Callable[..., Tensor]


def validated_pair(x, y, min_samples: int = 3, reason: str = "") -> tuple[Tensor, Tensor]:
    return as_feature_pair(x, y, min_samples, reason, varying=True)


def scatter_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The precision of these measures' scatter products: float64 unless asked otherwise.

    An exception to the library's "products in the inputs' precision" default: whitening
    (inverse square roots), nuclear norms and the square roots of cancelling differences amplify
    product rounding (float32 products gave procrustes(x, x) = 3e-4 instead of 0), and the
    products are O(n d^2), a small part of the cost of a comparison."""
    return torch.float64 if dtype is None else dtype


def diagonal_only(prepare: Prepare) -> Prepare:
    """Mark a ``prepare`` that reads only the diagonal of its scatter (a trace, per-neuron variances).

    It then receives that diagonal (d,) instead of the (d, d) matrix, and the one-shot and grid paths
    skip the O(n d^2) self-product: for Procrustes a pair needs one product (X^T Y) instead of three.
    """
    prepare.diagonal_only = True  # type: ignore[attr-defined]
    return prepare


def _reads_diagonal(prepare: Prepare) -> bool:
    return getattr(prepare, "diagonal_only", False)


def _self_term(s: Tensor, prepare: Prepare) -> Tensor:
    return torch.diagonal(s) if _reads_diagonal(prepare) else s


def _prepared(prepare: Prepare, s: Tensor, n: int, mean: Tensor, opts: dict) -> object:
    """``prepare(s, n, **opts)``, with the layer's column means as ``mean=`` for a prepare that takes
    them (eigenspace overlap: the uncentred column space from the centred scatter and the mean)."""
    if "mean" in inspect.signature(prepare).parameters:
        return prepare(s, n, mean=mean, **opts)
    return prepare(s, n, **opts)


def one_shot(
    x: Tensor, y: Tensor, dtype, prepare: Prepare, pair: Pair, prepare_y: Prepare | None = None, **opts
) -> Tensor:
    return grid([x], [y], dtype, prepare, pair, prepare_y=prepare_y, validated=True, **opts)[0, 0]


def _scatters(m: Moments, centred: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(S_xx, S_yy, S_xy) about the means (``centred``) or about the origin."""
    if centred:
        return m.sxx, m.syy, m.sxy
    return m.uncentred_xx(), m.uncentred_yy(), m.uncentred_xy()


def from_moments(
    m: Moments, prepare: Prepare, pair: Pair, prepare_y: Prepare | None = None, centred: bool = True, **opts
) -> Tensor:
    sxx, syy, sxy = _scatters(m, centred)
    prepare_y = prepare_y or prepare
    px = _prepared(prepare, _self_term(sxx, prepare), m.n, m.mean_x, opts)
    py = _prepared(prepare_y, _self_term(syy, prepare_y), m.n, m.mean_y, opts)
    return pair(px, py, sxy, m.n, **opts)


def _layer_terms(layers: list[Tensor], compute: torch.dtype, full: bool, centred: bool):
    """Per layer: (mean, centred features in ``compute`` dtype, self term about the mean or the origin).

    The self term is the scatter (d, d) when ``full``, else only its diagonal (d,). Centring, the
    diagonal and every sum run in float64; the products in ``compute``, as StreamingMoments does.
    """
    terms = []
    for t in layers:
        mean = column_mean(t)
        c64 = center_columns(t, torch.float64, mean)
        c = c64.to(compute)
        if full:
            s = self_product(c).to(torch.float64)
            s = s if centred else s + t.shape[0] * torch.outer(mean, mean)
        else:
            s = c64.square().sum(0)
            s = s if centred else s + t.shape[0] * mean.square()
        terms.append((mean, c, s))
    return terms


def grid(
    xs,
    ys,
    dtype,
    prepare: Prepare,
    pair: Pair,
    min_samples: int = 3,
    prepare_y: Prepare | None = None,
    centred: bool = True,
    validated: bool = False,
    **opts,
) -> Tensor:
    """(L, M) of ``pair`` over every layer pair, from one product of the concatenated centred layers.

    Each layer's self term (its scatter, or only the diagonal for :func:`diagonal_only` prepares) and
    ``prepare`` are computed once; with ``ys=None`` (or ``xs`` itself) the cross product is the
    symmetric one of xs.
    """
    if not validated:
        xs, ys = as_layer_lists(xs, ys, min_samples, varying=True)
    same = ys is xs
    prepare_y = prepare_y or prepare
    n = xs[0].shape[0]
    compute = resolve_dtype(scatter_dtype(dtype), *xs, *ys)
    terms_x = _layer_terms(xs, compute, not _reads_diagonal(prepare), centred)
    if same and _reads_diagonal(prepare_y) == _reads_diagonal(prepare):
        terms_y = terms_x
    else:
        terms_y = _layer_terms(ys, compute, not _reads_diagonal(prepare_y), centred)
    cx = torch.cat([c for _, c, _ in terms_x], dim=1)
    cy = cx if same else torch.cat([c for _, c, _ in terms_y], dim=1)
    sxy = transpose_product(cx, cy).to(torch.float64)
    if not centred:
        sxy = sxy + n * torch.outer(torch.cat([m for m, _, _ in terms_x]), torch.cat([m for m, _, _ in terms_y]))
    preps_x = [_prepared(prepare, s, n, mean, opts) for mean, _, s in terms_x]
    preps_y = [_prepared(prepare_y, s, n, mean, opts) for mean, _, s in terms_y]
    edges_x = [0, *itertools.accumulate(c.shape[1] for _, c, _ in terms_x)]
    edges_y = [0, *itertools.accumulate(c.shape[1] for _, c, _ in terms_y)]
    return torch.stack(
        [
            torch.stack(
                [
                    pair(px, py, sxy[edges_x[i] : edges_x[i + 1], edges_y[j] : edges_y[j + 1]], n, **opts)
                    for j, py in enumerate(preps_y)
                ]
            )
            for i, px in enumerate(preps_x)
        ]
    )
