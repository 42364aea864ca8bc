"""Grounding scores: does a similarity measure see what it should, on models whose right answer is known?

Each score takes similarities a measure produced (or features, and computes them with the registry)
and a known ground truth, and says how well the similarities follow it. Every score is oriented so
that larger is better whatever the measure's direction: distances (``larger_is_more_similar=False``)
are negated first (:func:`oriented`).

* :func:`layer_monotonicity`: within one network, similarity between layers i and j should fall as
  |i - j| grows (Spearman with -|i - j|, and the fraction of correctly ordered triples; Kornblith et
  al. 2019's sanity check, ReSi's "layer monotonicity" test).
* :func:`group_ordering`: models trained with a known group variable (fraction of randomised labels,
  augmentation strength): similarity should fall with the gap between the groups (Spearman with
  -gap) and in-group pairs should outrank cross-group pairs (AUPRC, as ReSi scores its grouping tests).
* :func:`shortcut_affinity`: rank correlation between a measure's similarity and the prediction
  agreement of the same model pairs (:func:`prediction_agreement`).
* :func:`separation`: effect size with which a measure separates one set of pairs from another
  (Cohen's d and the probability of superiority over all cross pairs).

Reference: Klabunde et al., "ReSi: A Comprehensive Benchmark for Representational Similarity
Measures", ICLR 2025; Ding, Denain and Steinhardt, "Grounding Representation Similarity Through
Statistical Testing", NeurIPS 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "group_ordering",
    "layer_monotonicity",
    "oriented",
    "prediction_agreement",
    "separation",
    "shortcut_affinity",
]


def _vector(values, name: str, min_len: int = 2) -> np.ndarray:
    a = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    if a.size < min_len:
        raise ValueError(f"{name} needs at least {min_len} values, got {a.size}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has NaN or Inf values; drop the failed pairs before scoring")
    return a


def oriented(values, larger_is_more_similar: bool = True) -> np.ndarray:
    """``values`` as float64 numpy, negated for a distance so that larger always means more similar."""
    a = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    return a if larger_is_more_similar else -a


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan  # no ranking to correlate (a constant measure says nothing)
    return float(spearmanr(a, b).statistic)


def layer_monotonicity(similarity, larger_is_more_similar: bool = True) -> dict[str, float]:
    """Scores of an (L, L) layer-by-layer similarity matrix of one network, layers in depth order.

    ``spearman``: Spearman correlation of s(i, j) with -|i - j| over the off-diagonal pairs i < j.
    ``conformity``: over every anchor i and pair j, k with |i - j| < |i - k|, the fraction with
    s(i, j) > s(i, k) (ties count one half); 1 = perfectly monotone, 0.5 = chance.
    """
    s = oriented(similarity, larger_is_more_similar)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 3:
        raise ValueError(f"similarity must be a square (L, L) matrix with L >= 3 layers, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("similarity has NaN or Inf entries; the measure failed on some layer pair")
    n_layers = s.shape[0]
    iu = np.triu_indices(n_layers, 1)
    spearman = _spearman(s[iu], -np.abs(iu[0] - iu[1]).astype(float))
    good = total = 0.0
    for i in range(n_layers):
        for j in range(n_layers):
            for k in range(n_layers):
                if j == i or k == i or abs(i - j) >= abs(i - k):
                    continue
                total += 1
                good += 1.0 if s[i, j] > s[i, k] else 0.5 if s[i, j] == s[i, k] else 0.0
    return {"spearman": spearman, "conformity": good / total}


def group_ordering(similarities, gaps, larger_is_more_similar: bool = True) -> dict[str, float]:
    """How well similarities of model pairs follow the gap of a known group variable between them.

    ``similarities[k]`` is the measure on pair k and ``gaps[k] >= 0`` the pair's distance in the
    group variable (|f_a - f_b| for label-randomisation fractions, |s_a - s_b| for augmentation
    strengths; 0 = the same group). ``spearman``: Spearman correlation with -gap. ``auprc``: average
    precision of ranking the in-group pairs (gap 0) above the cross-group pairs by similarity
    (ReSi's grouping score; chance = the share of in-group pairs, also returned as ``chance``).
    """
    from sklearn.metrics import average_precision_score

    s = oriented(_vector(similarities, "similarities"), larger_is_more_similar)
    g = _vector(gaps, "gaps")
    if s.shape != g.shape:
        raise ValueError(f"similarities and gaps must have the same length, got {s.size} and {g.size}")
    if (g < 0).any():
        raise ValueError("gaps must be >= 0 (absolute differences of the group variable)")
    in_group = g == 0
    out = {"spearman": _spearman(s, -g), "auprc": math.nan, "chance": float(in_group.mean())}
    if in_group.any() and not in_group.all():
        out["auprc"] = float(average_precision_score(in_group, s))
    return out


def prediction_agreement(logits_a, logits_b) -> Tensor:
    """Fraction of samples on which two models predict the same class (argmax of (n, C) logits)."""
    a, b = torch.as_tensor(logits_a), torch.as_tensor(logits_b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"logits must be two (n, C) tensors of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    return (a.argmax(1) == b.argmax(1)).double().mean()


def shortcut_affinity(similarities, agreements, larger_is_more_similar: bool = True) -> float:
    """Spearman correlation between a measure's similarity of model pairs and their prediction agreement
    (on shortcut-free data): models that rely on a shortcut more should agree less and look less similar."""
    s = oriented(_vector(similarities, "similarities", 3), larger_is_more_similar)
    a = _vector(agreements, "agreements", 3)
    if s.shape != a.shape:
        raise ValueError(f"similarities and agreements must have the same length, got {s.size} and {a.size}")
    return _spearman(s, a)


def separation(
    closer: Sequence[float], farther: Sequence[float], larger_is_more_similar: bool = True
) -> dict[str, float]:
    """Effect size with which a measure puts the ``closer`` pairs above the ``farther`` ones.

    ``cohens_d``: (mean closer - mean farther) / pooled sd (inf when both spreads are 0 and the means
    differ); ``superiority``: P(closer > farther) over every cross pair (ties one half), in [0, 1].
    """
    a = oriented(_vector(closer, "closer", 1), larger_is_more_similar)
    b = oriented(_vector(farther, "farther", 1), larger_is_more_similar)
    diff = a.mean() - b.mean()
    spread = (a.size - 1) * a.var(ddof=1) if a.size > 1 else 0.0
    spread += (b.size - 1) * b.var(ddof=1) if b.size > 1 else 0.0
    dof = a.size + b.size - 2
    pooled = math.sqrt(spread / dof) if dof > 0 else 0.0
    d = diff / pooled if pooled > 0 else 0.0 if diff == 0 else math.copysign(math.inf, diff)
    cross = a[:, None] - b[None, :]
    superiority = float(((cross > 0) + 0.5 * (cross == 0)).mean())
    return {"cohens_d": float(d), "superiority": superiority}
