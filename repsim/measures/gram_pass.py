"""Several Gram-space measures from one pass over the centred Gram row blocks.

Linear CKA (biased and debiased: HSIC's estimators share every product) and Pearson RSA (the
correlation of the RDMs' upper triangles, whose row blocks come from the same centred features)
are all sums over the same n x n blocks, so :func:`fused_gram_grids` computes them together with
:func:`repsim.measures.blocked.gram_grids_blocked`: one pass, a bounded workspace. What
:func:`repsim.compare` calls when its stored route keeps every sample's features (the entries that
fuse declare ``gram_pass`` in the registry).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..core.numerics import center_columns
from ..core.validation import as_layer_lists
from .blocked import gram_grids_blocked
from .cka import cka_from_hsic, estimator_name
from .rsa import pearson_grid, rdm_rows


def fused_gram_grids(
    xs: list[Tensor],
    ys: list[Tensor] | None,
    cka: Mapping[str, bool],
    rsa: Mapping[str, str],
    dtype,
    names: tuple[list[str], list[str]] | None = None,
) -> dict[str, Tensor]:
    """{name: (L, M) float64 grid} for every linear CKA in ``cka`` (name -> ``debiased``) and every
    Pearson RSA in ``rsa`` (name -> ``rdm``) between the layers ``xs`` and ``ys`` (None or ``xs``
    itself: a self-grid), from one pass over the Gram blocks per RDM method.

    ``dtype``: the products' precision (float64: the exact path); centring is in float64 or ``dtype``.
    ``names``: how errors call the layers of each side (default ``xs[i]``, ``ys[j]``).
    """
    xs_v, ys_v = as_layer_lists(xs, None if ys is xs else ys, 4, varying=True)
    compute = torch.float64 if dtype == torch.float64 else dtype or xs_v[0].dtype
    xcs = [center_columns(x, compute) for x in xs_v]
    ycs = xcs if ys_v is xs_v else [center_columns(y, compute) for y in ys_v]
    estimators = tuple(dict.fromkeys(estimator_name(flag) for flag in cka.values()))
    out = {}
    names = names or ([f"xs[{i}]" for i in range(len(xcs))], [f"ys[{i}]" for i in range(len(ycs))])
    for k, method in enumerate(dict.fromkeys(rsa.values()) or [None]):
        rx = None if method is None else rdm_rows(xs_v, xcs, method, names[0])
        ry = None if method is None or ycs is xcs else rdm_rows(ys_v, ycs, method, names[1])
        hsic, pearson = gram_grids_blocked(xcs, ycs, estimators if k == 0 else (), rx, ry)
        if k == 0:
            out.update({name: cka_from_hsic(*hsic[estimator_name(flag)], flag) for name, flag in cka.items()})
        if pearson is not None:
            grid = pearson_grid(*pearson, names)
            out.update({name: grid for name, rdm in rsa.items() if rdm == method})
    return out
