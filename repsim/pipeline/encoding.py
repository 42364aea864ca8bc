"""Layer × region encoding tables: a model's layers, extracted over a loader, each predicting the
recorded responses through the same folds, with bootstrap intervals and the best layer per region.

The region score of a layer is the median over the region's targets of the held-out Pearson r
(ceiled per target first when a ceiling is given). Its interval resamples stimuli: each resample
draws the held-out (prediction, response) pairs with replacement (seeded; the same draws for every
layer, so layers are compared on the same resamples) and recomputes every target's r, then the
median; the interval is the percentile one. The folds, α and predictions are held fixed (the
refitting variance is not in the interval; Brain-Score's split-half resampling of stimuli is the
alternative). ``p_best`` is the fraction of resamples in which a layer has the region's highest
score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..core.numerics import ACC
from ..inference.ceiling import ceil_scores
from ..inference.encoding import DEFAULT_ALPHAS, encoding_layers
from ..inference.permutation import seeded_generator
from ..networks.features import extract_features


@dataclass
class EncodingComparison:
    """``table``: one row per (layer, region): ``n_targets``, ``score`` (median r, raw), with
    ``ceiled`` when a ceiling was given, ``ci_low``/``ci_high`` (of the ceiled score when there is
    one, else of the raw), ``best`` and ``p_best``; ``targets``: the per-target table of every layer
    (with ``region``, and ``ceiling``/``ceiled``); ``best``: {region: best layer}."""

    table: pd.DataFrame
    targets: pd.DataFrame
    best: dict
    level: float
    n_resamples: int


def _regions(regions, t: int) -> np.ndarray:
    if regions is None:
        return np.array(["all"] * t, dtype=object)
    labels = np.asarray(regions, dtype=object).ravel()
    if labels.shape != (t,):
        raise ValueError(f"regions must hold one label per target ({t}), got {labels.size}")
    return labels


def _region_medians(r: Tensor, groups: list[np.ndarray]) -> Tensor:
    """(..., t) scores -> (..., regions) medians over each region's targets (NaN: a target without a ceiling)."""
    return torch.stack([r[..., g].nanquantile(0.5, dim=-1) for g in groups], dim=-1)


def _resampled_r(pred: Tensor, y: Tensor, counts: Tensor) -> Tensor:
    """Pearson r of every target under each resample's counts (B, n): weighted moments in float64."""
    w = counts / counts.sum(dim=1, keepdim=True)
    mp, my = w @ pred, w @ y
    cov = w @ (pred * y) - mp * my
    vp, vy = w @ (pred * pred) - mp * mp, w @ (y * y) - my * my
    return cov / torch.sqrt(vp * vy)


def _bootstrap(pred: np.ndarray, y: np.ndarray, scale: np.ndarray, groups, n_resamples: int, seed, chunk=64):
    """(n_resamples, regions) region medians of scale * r under seeded stimulus resamples."""
    gen = seeded_generator(seed, "cpu")
    n = pred.shape[0]
    p, yy = torch.from_numpy(pred).to(ACC), torch.from_numpy(y).to(ACC)
    mu_p, mu_y = p.mean(0), yy.mean(0)  # centred first: the weighted moments then do not cancel
    p, yy = p - mu_p, yy - mu_y
    s = torch.from_numpy(scale)
    out = []
    for lo in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - lo)
        idx = torch.randint(n, (size, n), generator=gen)
        counts = torch.zeros(size, n, dtype=ACC).scatter_add_(1, idx, torch.ones(size, n, dtype=ACC))
        r = torch.nan_to_num(_resampled_r(p, yy, counts), nan=0.0)  # a resample with a constant prediction
        out.append(_region_medians(r * s, groups))
    return torch.cat(out)


def _region_rows(layer, fit_table, regions, groups, names, boot, level) -> list[dict]:
    value = "ceiled" if "ceiled" in fit_table else "score"
    point_raw = _region_medians(torch.tensor(fit_table["score"].to_numpy(np.float64)), groups)
    point = _region_medians(torch.tensor(fit_table[value].to_numpy(np.float64)), groups)
    lo, hi = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=ACC), dim=0)
    rows = []
    for j, name in enumerate(names):
        row = {"layer": layer, "region": name, "n_targets": len(groups[j]), "score": float(point_raw[j])}
        if value == "ceiled":
            row["ceiled"] = float(point[j])
        row.update(ci_low=float(lo[j]), ci_high=float(hi[j]))
        rows.append(row)
    return rows


def compare_encoding(
    model: nn.Module,
    loader: Iterable,
    targets,
    *,
    layers: Sequence[str] | str | None = None,
    regions=None,
    ceiling=None,
    alphas=DEFAULT_ALPHAS,
    cv=5,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int | None = 0,
    pool: str = "mean",
    device=None,
    dtype: torch.dtype | None = None,
    memory=None,
    block_size: int | None = None,
    max_samples: int | None = None,
    spill_dir=None,
    progress: bool = True,
) -> EncodingComparison:
    """Every layer of ``model`` (features over ``loader``, in the order of ``targets``' rows) predicting
    ``targets`` (stimuli, t) by :func:`repsim.encoding_score` through the same folds; a layer ×
    region table with bootstrap intervals and the best layer per region (module docstring).

    ``regions``: one label per target (default: one region "all"); ``ceiling``: a
    :func:`repsim.split_half_ceiling` table, one value per target, or None; ``spill_dir``: write the
    features to disk as they are extracted (memory-mapped, for layers larger than RAM).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not (isinstance(n_resamples, int) and n_resamples >= 10):
        raise ValueError(f"n_resamples must be an integer >= 10, got {n_resamples!r}")
    feats, _ = extract_features(model, loader, layers, pool=pool, device=device, max_samples=max_samples,
                                progress=progress, memory=memory, spill_dir=spill_dir)  # fmt: skip
    region_of = _regions(regions, np.shape(targets)[1] if len(np.shape(targets)) == 2 else 1)
    names = list(pd.unique(region_of))
    groups = [np.flatnonzero(region_of == g) for g in names]
    rows, tables, boots = [], [], []
    fits = encoding_layers(feats, targets, alphas=alphas, cv=cv, block_size=block_size, dtype=dtype,
                           device=device, memory=memory, max_samples=max_samples, return_predictions=True,
                           progress=progress)  # fmt: skip
    for fit in fits:
        table = fit.table.assign(region=region_of)
        scale = np.ones(len(table))
        if ceiling is not None:
            table = ceil_scores(table, ceiling)
            scale = 1.0 / table["ceiling"].to_numpy(np.float64)
        tables.append(table)
        boot = _bootstrap(fit.predictions, fit.held_out, scale, groups, n_resamples, seed)
        boots.append(boot)
        rows.extend(_region_rows(fit.layer, table, region_of, groups, names, boot, level))
    return _finish(rows, tables, boots, names, level, n_resamples)


def _finish(rows, tables, boots, names, level, n_resamples) -> EncodingComparison:
    out = pd.DataFrame(rows)
    value = "ceiled" if "ceiled" in out else "score"
    wins = torch.stack(boots).argmax(dim=0)  # (resamples, regions): the winning layer of each resample
    layers = list(pd.unique(out["layer"]))
    out["p_best"] = [float((wins[:, names.index(r)] == layers.index(lay)).double().mean())
                     for lay, r in zip(out["layer"], out["region"], strict=True)]  # fmt: skip
    best = {r: out.loc[out.loc[out["region"] == r, value].idxmax(), "layer"] for r in names}
    out["best"] = [best[r] == lay for lay, r in zip(out["layer"], out["region"], strict=True)]
    return EncodingComparison(out, pd.concat(tables, ignore_index=True), best, level, n_resamples)
