"""Inference over a layer grid: a p-value and an interval for every (layer pair, measure) cell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
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
    blocks: Tensor | None = None,
) -> pd.DataFrame:
    """p_value, p_adjusted, ci_low, ci_high for every (layer_a, layer_b, measure).

    ``blocks``: block ids of the samples (e.g. the sentence of each token): permutations move whole
    blocks (see :func:`repsim.permutation_test`) and intervals resample whole blocks (see
    :func:`repsim.bootstrap`).

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
    # the bar counts resamples, not cells, so its rate and time left (tqdm's estimate) are in real units
    per_cell = permutations + bootstrap_resamples
    bar = tqdm(total=len(cells) * per_cell, desc="inference", unit="resample", disable=not progress)
    for k, (m, i, la, j, lb) in enumerate(cells):
        bar.set_postfix_str(f"{m} {la} x {lb}", refresh=False)
        row = {"layer_a": la, "layer_b": lb, "measure": m}
        opts = dict(options.get(m, {}))
        errors = []  # a cell whose test or interval cannot run gets NaN and its reason; the others keep theirs
        if permutations:
            try:
                res = permutation_test(
                    feats_a[i], feats_b[j], m, n_permutations=permutations, seed=seed + k, blocks=blocks, **opts
                )
                row.update(p_value=res.p_value, n_permutations=res.n_permutations)
            except ValueError as err:
                row.update(p_value=float("nan"))
                errors.append(f"permutation test of {m} on ({la}, {lb}): {err}")
        if bootstrap_resamples:
            try:
                boot = bootstrap(
                    feats_a[i], feats_b[j], m, n_resamples=bootstrap_resamples, ci=ci, seed=seed + k, blocks=blocks,
                    **opts,
                )
                row.update(ci_low=boot.ci_low, ci_high=boot.ci_high, ci_scheme=boot.scheme)
            except ValueError as err:
                row.update(ci_low=float("nan"), ci_high=float("nan"))
                errors.append(f"interval of {m} on ({la}, {lb}): {err}")
        if errors:
            row["inference_error"] = "; ".join(errors)
        row["n_inference"] = int(feats_a[i].shape[0])
        rows.append(row)
        bar.update(per_cell)
    bar.close()
    table = pd.DataFrame(rows)
    if permutations and len(table):
        table["p_adjusted"] = table.groupby("measure")["p_value"].transform(lambda p: _adjusted(p, adjust))
    return table


def _adjusted(p: pd.Series, method: str) -> np.ndarray:
    """Adjusted p-values within one family; the cells without a p-value (NaN) are not in it."""
    out = np.full(len(p), np.nan)
    have = p.notna().to_numpy()
    out[have] = adjust_p_values(p.to_numpy()[have], method=method)
    return out


GRID_AGGREGATE_LAYER = "<max>"
"""layer_a and layer_b of the row that holds a measure's calibrated grid maximum in ``compare``."""


def calibration_table(
    feats_a: Sequence[Tensor],
    feats_b: Sequence[Tensor],
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    measures: Sequence[str],
    permutations: int,
    alpha: float = 0.05,
    seed: int = 0,
    measure_options: Mapping[str, Mapping] | None = None,
    progress: bool = False,
    blocks: Tensor | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-cell and grid-maximum calibration of every (feature) measure over a layer grid.

    Returns (cells, aggregates): ``cells`` has layer_a, layer_b, measure, calibrated, threshold;
    ``aggregates`` one row per measure with layer_a = layer_b = ``"<max>"``, the observed grid
    maximum (the best cell: the smallest value of a distance) as ``value``, and its calibrated
    score and threshold against the maximum's own null (one permutation shared by every layer,
    see :func:`repsim.calibrate_grid`). Measures of model outputs or labels are skipped.
    """
    from .calibration import calibrate_grid

    options = measure_options or {}
    cells, aggregates = [], []
    names = [m for m in measures if not (get_measure(m).needs_outputs or get_measure(m).needs_labels)]
    for k, m in enumerate(tqdm(names, desc="calibration", disable=not progress)):
        res = calibrate_grid(
            list(feats_a),
            list(feats_b),
            m,
            aggregate="max",
            n_permutations=permutations,
            alpha=alpha,
            seed=seed + k,
            blocks=blocks,
            **dict(options.get(m, {})),
        )
        table = res.cells.assign(
            layer_a=[layers_a[i] for i in res.cells["layer_a"]],
            layer_b=[layers_b[j] for j in res.cells["layer_b"]],
            measure=m,
        )
        cells.append(table[["layer_a", "layer_b", "measure", "calibrated", "threshold"]])
        aggregates.append(
            {"layer_a": GRID_AGGREGATE_LAYER, "layer_b": GRID_AGGREGATE_LAYER, "measure": m, "value": res.observed,
             "n": res.n, "calibrated": res.score, "threshold": res.threshold}
        )  # fmt: skip
    columns = ["layer_a", "layer_b", "measure", "calibrated", "threshold"]
    return (pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=columns)), pd.DataFrame(aggregates)


def calibrated_matrix(
    measure: str,
    features: Sequence[Tensor],
    permutations: int,
    alpha: float = 0.05,
    seed: int = 0,
    options: Mapping | None = None,
) -> tuple[Tensor, Tensor]:
    """(calibrated, threshold) N x N matrices of ``measure`` (with ``options``) between N models'
    features (one shared permutation per draw; each pair is calibrated against its own null)."""
    from .calibration import calibrate_grid

    feats = list(features)
    res = calibrate_grid(
        feats, feats, measure, aggregate="max", n_permutations=permutations, alpha=alpha, seed=seed,
        **dict(options or {}),
    )  # fmt: skip
    n = len(features)
    return (
        torch.tensor(res.cells["calibrated"].to_numpy()).reshape(n, n),
        torch.tensor(res.cells["threshold"].to_numpy()).reshape(n, n),
    )
