"""Multiple-comparison adjustment of p-values over a layer grid."""

from __future__ import annotations

import numpy as np

from ..core.deprecation import deprecated_arguments
from ..core.validation import check_choice

ADJUSTMENTS = ("holm", "bh", "none")


@deprecated_arguments(positional=("method",))
def adjust_p_values(p_values, *, method: str = "holm") -> np.ndarray:
    """Adjusted p-values, same shape as ``p_values``.

    ``"holm"``: Holm's (1979) step-down family-wise error control, p_(i) * (m - i + 1), made
    monotone; ``"bh"``: Benjamini & Hochberg's (1995) false-discovery-rate step-up,
    p_(i) * m / i, made monotone from the largest down; ``"none"``: unchanged. Capped at 1.
    """
    check_choice(method, "adjust", ADJUSTMENTS)
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    if flat.size == 0:
        return p.copy()
    if np.isnan(flat).any() or (flat < 0).any() or (flat > 1).any():
        raise ValueError("p_values must lie in [0, 1] with no NaN")
    if method == "none":
        return p.copy()
    m = flat.size
    order = np.argsort(flat, kind="stable")
    ranked = flat[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.reshape(p.shape)
