"""Plumbing shared by the measures that are functions of second moments (CCA, shape, regression, ...).

Each such measure is written as ``prepare(scatter, n, **opts)`` (per-layer work: eigendecompositions,
whitening, traces; done once per layer) and ``pair(prep_x, prep_y, sxy, n, **opts)``. From that one
definition come the one-shot function, the exact streaming ``from_moments`` and a grid that runs
the n-sized products once (one product of the concatenated centred layers) and each layer's
decomposition once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._validation import as_feature_list, as_features, check_same_samples
from .moments import Moments, StreamingMoments

Prepare = Callable[..., object]
Pair = Callable[..., Tensor]


def validated_pair(x, y, min_samples: int = 3, reason: str = "") -> tuple[Tensor, Tensor]:
    x = as_features(x, "x", min_samples, reason, varying=True)
    y = as_features(y, "y", min_samples, reason, varying=True)
    check_same_samples(x, y)
    return x, y


def scatter_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The precision of these measures' scatter products: float64 unless asked otherwise.

    An exception to the library's "products in the inputs' precision" default: whitening
    (inverse square roots), nuclear norms and the square roots of cancelling differences amplify
    product rounding (float32 products gave procrustes(x, x) = 3e-4 instead of 0), and the
    products are O(n d^2), a small part of the cost of a comparison."""
    return torch.float64 if dtype is None else dtype


def one_shot(
    x: Tensor, y: Tensor, dtype, prepare: Prepare, pair: Pair, prepare_y: Prepare | None = None, **opts
) -> Tensor:
    acc = StreamingMoments(dtype=scatter_dtype(dtype))
    acc.update(x, y)
    return from_moments(acc.moments(), prepare, pair, prepare_y, **opts)


def _scatters(m: Moments, centre: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(S_xx, S_yy, S_xy) about the means (``centre``) or about the origin."""
    if centre:
        return m.sxx, m.syy, m.sxy
    return m.uncentred_xx(), m.uncentred_yy(), m.uncentred_xy()


def from_moments(
    m: Moments, prepare: Prepare, pair: Pair, prepare_y: Prepare | None = None, centre: bool = True, **opts
) -> Tensor:
    sxx, syy, sxy = _scatters(m, centre)
    px = prepare(sxx, m.n, **opts)
    py = (prepare_y or prepare)(syy, m.n, **opts)
    return pair(px, py, sxy, m.n, **opts)


def grid(
    xs,
    ys,
    dtype,
    prepare: Prepare,
    pair: Pair,
    min_samples: int = 3,
    prepare_y: Prepare | None = None,
    centre: bool = True,
    **opts,
) -> Tensor:
    xs = as_feature_list(xs, "xs", min_samples, varying=True)
    ys_list = xs if ys is None else as_feature_list(ys, "ys", min_samples, varying=True)
    check_same_samples(xs[0], ys_list[0], ("xs[0]", "ys[0]"))
    acc = StreamingMoments(dtype=scatter_dtype(dtype))
    acc.update(xs, None if ys is None else ys_list)
    n = acc.n
    preps_x = [prepare(_scatters(acc.moments(i, 0), centre)[0], n, **opts) for i in range(len(xs))]
    preps_y = [(prepare_y or prepare)(_scatters(acc.moments(0, j), centre)[1], n, **opts) for j in range(len(ys_list))]
    return torch.stack(
        [
            torch.stack(
                [pair(px, py, _scatters(acc.moments(i, j), centre)[2], n, **opts) for j, py in enumerate(preps_y)]
            )
            for i, px in enumerate(preps_x)
        ]
    )


def eigh_kept(s: Tensor, rel_tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors of a symmetric PSD matrix, dropping the null space.

    Eigenvalues below ``rel_tol`` times the largest are rank deficiency plus rounding; keeping
    them would whiten noise.
    """
    vals, vecs = torch.linalg.eigh(s)
    vals, vecs = vals.flip(0), vecs.flip(1)
    keep = vals > rel_tol * vals[0].clamp_min(torch.finfo(vals.dtype).tiny)
    return vals[keep], vecs[:, keep]
