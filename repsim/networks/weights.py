"""Weight-space distances between two models of one architecture."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from ..core.deprecation import deprecated_arguments


@dataclass
class WeightDistance:
    """Per-tensor distances and the summaries the alignment paper reports."""

    table: pd.DataFrame
    """One row per parameter tensor: name, shape, numel, relative_frobenius, l2, cosine."""
    mean_relative: float
    """Mean relative Frobenius distance over weight tensors with >= 2 dims (conv/linear kernels),
    the per-layer average of the alignment paper's code."""
    global_l2: float
    """|theta_A - theta_B|_2 over all compared parameters, flattened."""
    global_cosine: float
    """Cosine of the angle between the flattened parameter vectors."""

    @property
    def angle_degrees(self) -> float:
        return math.degrees(math.acos(max(-1.0, min(1.0, self.global_cosine))))

    def summary(self) -> dict[str, float]:
        return {
            "mean_relative": self.mean_relative,
            "global_l2": self.global_l2,
            "global_cosine": self.global_cosine,
            "angle_degrees": self.angle_degrees,
        }


def _parameters(model_or_state, name: str) -> dict[str, Tensor]:
    if isinstance(model_or_state, nn.Module):
        return {k: v.detach() for k, v in model_or_state.named_parameters()}
    if isinstance(model_or_state, Mapping):
        return {k: v.detach() for k, v in model_or_state.items() if isinstance(v, Tensor) and v.is_floating_point()}
    raise ValueError(f"{name} must be an nn.Module or a state dict, got {type(model_or_state).__name__}")


@deprecated_arguments(positional=("include",))
def weight_distance(model_a, model_b, *, include: str | None = None) -> WeightDistance:
    """Distances between the parameters of two models (or state dicts) of the same architecture.

    Per tensor: relative Frobenius distance |W_A - W_B|_F / (0.5 (|W_A|_F + |W_B|_F)) (0 when both
    are zero), L2 distance |W_A - W_B|_F and cosine similarity of the flattened tensors. ``include``
    is a regular expression on parameter names (e.g. ``"^encoder\\."`` for the encoder only).
    Computed in float64. Mismatched names or shapes raise a ValueError listing the differences.
    """
    pa, pb = _parameters(model_a, "model_a"), _parameters(model_b, "model_b")
    if include is not None:
        pattern = re.compile(include)
        pa = {k: v for k, v in pa.items() if pattern.search(k)}
        pb = {k: v for k, v in pb.items() if pattern.search(k)}
    only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
    shapes = [
        f"{k}: {tuple(pa[k].shape)} vs {tuple(pb[k].shape)}" for k in pa if k in pb and pa[k].shape != pb[k].shape
    ]
    if only_a or only_b or shapes:
        parts = []
        if only_a:
            parts.append(f"only in model_a: {only_a[:10]}{' ...' if len(only_a) > 10 else ''}")
        if only_b:
            parts.append(f"only in model_b: {only_b[:10]}{' ...' if len(only_b) > 10 else ''}")
        if shapes:
            parts.append(f"different shapes: {shapes[:10]}")
        raise ValueError("the two models have different architectures; " + "; ".join(parts))
    if not pa:
        raise ValueError("no parameters to compare" + (f" match include={include!r}" if include else ""))
    rows, dot, sq_a, sq_b, sq_diff = [], 0.0, 0.0, 0.0, 0.0
    for name, wa in pa.items():
        a = wa.to("cpu", torch.float64).flatten()
        b = pb[name].to("cpu", torch.float64).flatten()
        na, nb, diff = a.norm().item(), b.norm().item(), (a - b).norm().item()
        d = (a @ b).item()
        rows.append(
            {
                "name": name,
                "shape": tuple(wa.shape),
                "numel": a.numel(),
                "relative_frobenius": diff / (0.5 * (na + nb)) if na + nb > 0 else 0.0,
                "l2": diff,
                "cosine": d / (na * nb) if na > 0 and nb > 0 else float("nan") if na + nb > 0 else 1.0,
            }
        )
        dot, sq_a, sq_b, sq_diff = dot + d, sq_a + na**2, sq_b + nb**2, sq_diff + diff**2
    table = pd.DataFrame(rows)
    matrices = table[[len(s) >= 2 for s in table["shape"]]]
    mean_relative = float((matrices if len(matrices) else table)["relative_frobenius"].mean())
    cosine = dot / math.sqrt(sq_a * sq_b) if sq_a > 0 and sq_b > 0 else float("nan")
    return WeightDistance(table, mean_relative, math.sqrt(sq_diff), cosine)
