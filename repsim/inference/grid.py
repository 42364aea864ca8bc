"""Inference over a layer grid: a p-value and an interval for every (layer pair, measure) cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from torch import Tensor
from tqdm.auto import tqdm

from ..measures.registry import get_measure
from .bootstrap import bootstrap
from .multiple import adjust_p_values
from .permutation import permutation_test


def inference_table(
    feats_a: Sequence[Tensor],
    feats_b: Sequence[Tensor],
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    measures: Sequence[str],
    permutations: int = 0,
    bootstrap_resamples: int = 0,
    ci: float = 0.95,
    adjust: str = "holm",
    seed: int = 0,
    measure_options: Mapping[str, Mapping] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """p_value, p_adjusted, ci_low, ci_high for every (layer_a, layer_b, measure).

    ``permutations``/``bootstrap_resamples`` = 0 skips that part (its columns are absent).
    p-values are adjusted within each measure's grid (one family per measure) by ``adjust``
    ("holm": family-wise error, "bh": false discovery rate, "none"). Measures of model outputs
    are skipped. Each cell uses its own seed derived from ``seed`` so cells are independent and
    reproducible.
    """
    options = measure_options or {}
    rows = []
    cells = [
        (m, i, la, j, lb)
        for m in measures
        if not get_measure(m).needs_outputs
        for i, la in enumerate(layers_a)
        for j, lb in enumerate(layers_b)
    ]
    for k, (m, i, la, j, lb) in enumerate(tqdm(cells, desc="inference", disable=not progress)):
        row = {"layer_a": la, "layer_b": lb, "measure": m}
        opts = dict(options.get(m, {}))
        if permutations:
            res = permutation_test(feats_a[i], feats_b[j], m, permutations, seed=seed + k, **opts)
            row.update(p_value=res.p_value, n_permutations=res.n_permutations)
        if bootstrap_resamples:
            boot = bootstrap(feats_a[i], feats_b[j], m, bootstrap_resamples, ci=ci, seed=seed + k, **opts)
            row.update(ci_low=boot.ci_low, ci_high=boot.ci_high, ci_scheme=boot.scheme)
        row["n_inference"] = int(feats_a[i].shape[0])
        rows.append(row)
    table = pd.DataFrame(rows)
    if permutations and len(table):
        table["p_adjusted"] = table.groupby("measure")["p_value"].transform(lambda p: adjust_p_values(p, adjust))
    return table
