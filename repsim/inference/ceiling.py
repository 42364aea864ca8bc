"""Noise ceilings of recorded responses: per-target split-half reliability with the Spearman–Brown
correction, and ceiled scores reported beside their raw values.

For responses of R repeats of S stimuli, a split draws a random half A of the repeats (⌊R/2⌋ of
them) and takes the rest as B; r_s is the Pearson r over stimuli between the mean responses of A and
of B, per target. The split-half r is the mean of r_s over ``n_splits`` seeded splits, and the
reliability of the mean over all R repeats is the Spearman–Brown prophecy for doubling the test
length, ρ = 2 r / (1 + r) (Spearman 1910; Brown 1910), as Brain-Score's internal consistency.

Which ceiling divides which score: for y = s + e (signal plus independent noise), ρ = var(s) /
var(y), so a perfect model's r² is ρ and its Pearson r is √ρ. ``kind="r"`` (default) gives the
ceiling of a correlation score, √ρ; ``kind="r2"`` that of explained variance, ρ;
``kind="brainscore"`` divides a correlation by ρ, Brain-Score's convention (a perfect model then
scores 1/√ρ > 1). The ceiled score is raw / ceiling, never clipped: ceiled values above 1 are kept
and reported with a warning (the ceiling is itself an estimate with sampling error).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..core.numerics import ACC
from ..core.validation import check_choice
from .permutation import seeded_generator

KINDS = ("r", "r2", "brainscore")
_BLOCK = 1 << 22  # entries of one half-mean block (32 MiB in float64)


def spearman_brown(r, factor: float = 2.0):
    """Reliability of a test ``factor`` times as long: k r / (1 + (k - 1) r)."""
    return factor * r / (1 + (factor - 1) * r)


def _responses(responses) -> Tensor:
    x = torch.as_tensor(np.asarray(responses) if not isinstance(responses, Tensor) else responses)
    if x.ndim == 2:
        raise ValueError("responses must be 3-D (repeats, stimuli, targets); for one target use "
                         "responses[..., None]")  # fmt: skip
    if x.ndim != 3:
        raise ValueError(f"responses must be 3-D (repeats, stimuli, targets), got shape {tuple(x.shape)}")
    r, s, _ = x.shape
    if r < 2:
        raise ValueError(f"responses has {r} repeat; split-half reliability needs at least 2 repeats per stimulus")
    if s < 3:
        raise ValueError(f"responses has {s} stimuli; a correlation over stimuli needs at least 3")
    x = x.to(ACC)
    if not torch.isfinite(x).all():
        raise ValueError("responses contains NaN or Inf (missing repeats?); impute or drop those stimuli or "
                         "targets first: every stimulus needs the same repeats")  # fmt: skip
    return x


def _split_r(x: Tensor, halves: Tensor) -> Tensor:
    """Pearson r over stimuli between the two halves' means, per split and target: (splits, targets).
    ``halves`` (splits, R) holds 1/|A| for A, -1/|B| for B (signs separate the halves)."""
    a = torch.einsum("pr,rst->pst", halves.clamp_min(0), x)
    b = torch.einsum("pr,rst->pst", (-halves).clamp_min(0), x)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    return (a * b).sum(1) / den


def split_half_ceiling(
    responses,
    *,
    n_splits: int = 100,
    seed: int | None = 0,
    kind: str = "r",
    targets=None,
    chunk: int = 16,
) -> pd.DataFrame:
    """Per-target noise ceiling from repeated responses (module docstring for the formulas).

    ``responses``: (repeats, stimuli, targets) tensor or array; ``n_splits``: random half splits
    (seeded by ``seed``); ``kind``: "r", "r2" or "brainscore" (which score the ceiling divides);
    ``targets``: labels (default 0..t-1). Returns a table with ``target``, ``split_half_r`` (mean
    over splits), ``split_half_sd`` (its spread over splits), ``reliability`` (Spearman–Brown),
    ``ceiling``, ``n_repeats``, ``n_splits``. Targets whose reliability is not positive get a NaN
    ceiling with a warning (their responses are noise; no score can be ceiled by them).
    """
    check_choice(kind, "kind", KINDS)
    if not (isinstance(n_splits, int) and n_splits >= 1):
        raise ValueError(f"n_splits must be a positive integer, got {n_splits!r}")
    x = _responses(responses)
    reps, _, t = x.shape
    gen = seeded_generator(seed, "cpu")
    half = reps // 2
    rs = []
    for lo in range(0, n_splits, chunk):
        size = min(chunk, n_splits - lo)
        perms = torch.stack([torch.randperm(reps, generator=gen) for _ in range(size)])
        halves = torch.empty(size, reps, dtype=ACC)
        halves.scatter_(1, perms[:, :half], 1.0 / half)
        halves.scatter_(1, perms[:, half:], -1.0 / (reps - half))
        halves = halves.to(x.device)
        tb = max(1, _BLOCK // (size * x.shape[1]))  # targets per block: two (splits, stimuli, block) means
        rs.append(torch.cat([_split_r(x[..., j : j + tb], halves) for j in range(0, t, tb)], dim=1))
    r_all = torch.cat(rs).cpu()
    if not torch.isfinite(r_all).all():
        raise ValueError("some targets are constant across stimuli within a half of the repeats, so their "
                         "split-half correlation is undefined; drop those targets")  # fmt: skip
    r = r_all.mean(0)
    rel = spearman_brown(r)
    ceiling = rel.sqrt() if kind == "r" else rel.clone()
    bad = rel <= 0
    if bool(bad.any()):
        ceiling[bad] = float("nan")
        warnings.warn(f"{int(bad.sum())} of {t} targets have a split-half reliability <= 0 (noise only); their "
                      "ceiling is NaN and their scores cannot be ceiled", RuntimeWarning, stacklevel=2)  # fmt: skip
    labels = list(range(t)) if targets is None else list(targets)
    if len(labels) != t:
        raise ValueError(f"targets has {len(labels)} labels for {t} targets")
    return pd.DataFrame({"target": labels, "split_half_r": r.numpy(), "split_half_sd": r_all.std(0).numpy(),
                         "reliability": rel.numpy(), "ceiling": ceiling.numpy(), "n_repeats": reps,
                         "n_splits": n_splits})  # fmt: skip


def _ceiling_series(table: pd.DataFrame, ceiling, key: str) -> pd.Series:
    """The ceiling of each target label: from a split_half_ceiling table, an array in target order, or a scalar."""
    labels = pd.unique(table[key])
    if isinstance(ceiling, pd.DataFrame):
        if key not in ceiling or "ceiling" not in ceiling:
            raise ValueError(f"ceiling must have {key!r} and 'ceiling' columns (a split_half_ceiling table)")
        return ceiling.set_index(key)["ceiling"].astype(float)
    values = np.asarray(ceiling, dtype=np.float64)
    if values.ndim == 0:
        return pd.Series(float(values), index=labels)
    if values.shape != (len(labels),):
        raise ValueError(f"ceiling has {values.size} values for {len(labels)} targets; pass one per target, "
                         "in target order")  # fmt: skip
    return pd.Series(values, index=labels)


def ceil_scores(table: pd.DataFrame, ceiling, *, score: str = "score", key: str = "target") -> pd.DataFrame:
    """``table`` with ``ceiling`` and ``ceiled`` = ``score`` / ceiling beside the raw ``score``.

    ``ceiling``: a :func:`split_half_ceiling` table (matched on ``key``), one value per target in
    target order, or one value for all. Never clipped: ceiled values above 1 are kept with a warning;
    a missing or non-positive ceiling gives a NaN ceiled value, with a warning.
    """
    if score not in table or key not in table:
        raise ValueError(f"table must have {score!r} and {key!r} columns, got {list(table.columns)}")
    series = _ceiling_series(table, ceiling, key)
    missing = set(pd.unique(table[key])) - set(series.index)
    if missing:
        raise ValueError(f"ceiling has no value for {len(missing)} targets (e.g. {sorted(missing, key=str)[:5]})")
    out = table.copy()
    out["ceiling"] = out[key].map(series).to_numpy(dtype=np.float64)
    valid = out["ceiling"] > 0
    out["ceiled"] = np.where(valid, out[score] / out["ceiling"].where(valid, 1.0), np.nan)
    if not bool(valid.all()):
        warnings.warn(f"{int((~valid).sum())} rows have no positive ceiling; their ceiled score is NaN",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
    above = out["ceiled"] > 1
    if bool(above.any()):
        warnings.warn(f"{int(above.sum())} ceiled scores exceed 1 (up to {out['ceiled'].max():.3f}); reported as is, "
                      "not clipped: the ceiling is an estimate with its own sampling error", RuntimeWarning,
                      stacklevel=2)  # fmt: skip
    return out
