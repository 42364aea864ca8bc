"""Calibrated similarity: scores that are 0 when nothing is shared, with honest grid aggregates.

A raw score's chance level moves with n, the widths and the measure (biased CKA of independent
features is near 1 when d >> n). Calibration measures a score against its own permutation null
(Groeger, Wen & Brbic 2026, arXiv 2602.14486):

    tau = the ceil((1 - alpha)(B + 1))-th smallest of {s_obs, s_1, ..., s_B}
    calibrated = clip((s_obs - tau) / (s_max - tau), 0, 1)

with s_1..s_B the measure after B permutations of y's samples (x fixed) and s_max the measure's
attainable maximum. The observed value is part of the reference set, which is what makes
P(calibrated > 0) = P(s_obs > tau) <= alpha exactly under the null (the observed rank is uniform
on 1..B+1 under exchangeability): calibrated > 0 is the level-alpha permutation test, and a
positive score says how far above chance the observed value lies, as a fraction of the room
between chance and perfect agreement. Distances are calibrated in the similarity direction: the
same construction on the negated values, i.e. tau is the ceil((1 - alpha)(B + 1))-th *largest*
combined value and calibrated = clip((tau - d_obs) / (tau - d_best), 0, 1) with d_best the
attainable best (0 for every registered distance).

For a layer grid the same permutation is applied to every layer of y in each draw, so the
aggregate (max or mean over the cells) has its own null, which is what the maximum over a grid
must be compared with: under the null it sits far above any single cell's chance level.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC
from ..core.validation import as_feature_list, as_features, check_choice, check_same_samples
from ..measures.cka import BiasedCKAChanceWarning
from ..measures.knn import knn_cache
from ..measures.registry import MeasureInfo, get_measure, measure_grid
from ._quadratic import (
    block_shift_null_grid,
    block_shift_permutations,
    explicit_null_grid,
    quadratic_form,
    shift_null_grid,
    shift_permutations,
)
from .restricted import permutation_design

SCHEMES = ("auto", "shifts", "random")
AGGREGATES = ("max", "mean")


# -------------------------------------------------------------------------------- results
@dataclass
class CalibrationResult:
    """A calibrated score and what it was computed from (see :func:`calibrate`)."""

    measure: str
    score: float
    """Calibrated: 0 unless the observed value beats the threshold; 1 = the attainable maximum."""
    observed: float
    threshold: float
    """tau: the (1 - alpha) quantile of the null with the observed value included."""
    p_value: float
    """Add-one permutation p-value (1 + #{null as or more extreme}) / (1 + B)."""
    null: Tensor = field(repr=False)
    alpha: float
    smax: float | None
    """The attainable best used to normalise; None when the score is the unnormalised excess."""
    scheme: str
    """"shifts" (cyclic shifts of one random ordering, one FFT), "block shifts" (of whole blocks) or
    "random" (explicit draws)."""
    n: int
    permutations: Tensor | None = field(default=None, repr=False)
    """The (B, n) permutations of y's samples behind ``null`` (``y[perm]``), when kept."""

    @property
    def n_permutations(self) -> int:
        return int(self.null.numel())


@dataclass
class GridCalibrationResult:
    """A calibrated grid aggregate and the per-cell calibrated grid (see :func:`calibrate_grid`)."""

    measure: str
    aggregate: str
    score: float
    """The calibrated aggregate, against the aggregate's own null."""
    observed: float
    threshold: float
    p_value: float
    null: Tensor = field(repr=False)
    """(B,) the aggregate under each shared permutation."""
    cells: pd.DataFrame
    """One row per cell: layer_a, layer_b, observed, threshold, calibrated, p_value."""
    cell_null: Tensor = field(repr=False)
    """(L, M, B) every cell under each shared permutation."""
    alpha: float
    smax: float | None
    scheme: str
    n: int
    permutations: Tensor | None = field(default=None, repr=False)

    @property
    def n_permutations(self) -> int:
        return int(self.null.numel())

    def matrix(self, column: str = "calibrated") -> pd.DataFrame:
        """layer_a x layer_b matrix of one column of :attr:`cells`, in layer order."""
        table = self.cells.pivot(index="layer_a", columns="layer_b", values=column)
        return table.loc[list(dict.fromkeys(self.cells["layer_a"])), list(dict.fromkeys(self.cells["layer_b"]))]


# -------------------------------------------------------------------------------- the rule
def threshold_index(n_null: int, alpha: float) -> int:
    """0-based index of tau in the sorted B + 1 combined values: ceil((1 - alpha)(B + 1)) - 1, clamped."""
    return max(0, min(math.ceil((1.0 - alpha) * (n_null + 1)) - 1, n_null))


def calibrated_values(
    observed: Tensor, null: Tensor, alpha: float, best: float | None, larger_is_more_similar: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(calibrated, tau, p_value) for observed values (...) against nulls (..., B), in float64.

    Similarities: tau is the ceil((1 - alpha)(B + 1))-th smallest of observed and null together,
    calibrated = clip((s - tau) / (best - tau), 0, 1), or max(s - tau, 0) when ``best`` is None.
    Distances: the same on the negated values (tau the ceil((1 - alpha)(B + 1))-th largest,
    calibrated = clip((tau - d) / (tau - best), 0, 1)). The denominator is floored at 1e-12.
    """
    sign = 1.0 if larger_is_more_similar else -1.0
    obs = sign * observed.to(ACC)
    nul = sign * null.to(ACC)
    combined = torch.cat([obs[..., None], nul], dim=-1).sort(dim=-1).values
    tau = combined[..., threshold_index(null.shape[-1], alpha)]
    excess = obs - tau
    # the observed value is one of the combined values: equal up to rounding is no excess
    excess = torch.where(excess.abs() <= 1e-12 * obs.abs().clamp_min(1.0), torch.zeros_like(excess), excess)
    score = excess.clamp_min(0.0) if best is None else (excess / (sign * best - tau).clamp_min(1e-12)).clamp(0.0, 1.0)
    # the add-one p-value with permutation_test's tolerance for ties made of rounding
    tol = 1e-12 * obs.abs().clamp_min(1.0)
    p = (1 + (nul >= (obs - tol)[..., None]).sum(-1)).to(ACC) / (1 + null.shape[-1])
    return score, sign * tau, p


def attainable_best(info: MeasureInfo, smax: float | None) -> float | None:
    """The value calibration normalises by: ``smax`` if given (inf = do not normalise), else the registry's."""
    if smax is None:
        best = info.attainable_best
        return None if best is None or not math.isfinite(best) else float(best)
    if isinstance(smax, bool) or not isinstance(smax, (int, float)) or math.isnan(smax):
        raise ValueError(f"smax must be a number (the attainable best value) or None, got {smax!r}")
    return None if math.isinf(smax) else float(smax)


# -------------------------------------------------------------------------------- validation
def _check_common(measure: str, n_permutations, alpha, scheme: str, aggregate=None) -> MeasureInfo:
    info = get_measure(measure)  # a ValueError naming the registered measures
    if info.needs_outputs or info.needs_labels:
        raise ValueError(f"measure {measure!r} compares model outputs or needs labels; calibration permutes features")
    if not isinstance(n_permutations, int) or isinstance(n_permutations, bool) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    check_choice(scheme, "scheme", SCHEMES)
    if aggregate is not None and not callable(aggregate):
        check_choice(aggregate, "aggregate", AGGREGATES)
    return info


def _fresh_or_seeded_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()  # fresh entropy: not reproducible, by request
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    else:
        gen.manual_seed(seed)
    return gen


# -------------------------------------------------------------------------------- the nulls
def null_grid(
    measure: str,
    xs: list[Tensor],
    ys: list[Tensor],
    n_permutations: int,
    groups=None,
    blocks=None,
    seed: int | None = 0,
    scheme: str = "auto",
    options: Mapping | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor, str]:
    """(L, M, B) statistics of every cell under B permutations of y's samples shared by all layers.

    Returns (null, permutations (B, n), scheme used). Schemes:

    * ``"shifts"``: cyclic shifts of one random ordering, every cell from one FFT per layer;
      for linear/debiased CKA and Pearson/Spearman RSA, unrestricted, when B <= n - 1.
    * ``"block shifts"``: ``blocks`` of one size (no ``groups``), B <= m - 1 for m blocks: cyclic
      shifts of whole blocks in a random block order, again every cell from one FFT per layer.
    * ``"random"``: explicit permutations drawn uniformly from the allowed set (all of them, or
      those ``groups``/``blocks`` allow). Quadratic-form measures then gather their per-layer
      matrices per permutation; measures with a ``null_grid`` (the neighbour measures) compute
      their per-layer state once and relabel it per permutation (y[perm]'s kNN lists are y's
      lists renamed: O(B n k^2), no new search); every other measure is one ``measure_grid`` call
      per permutation over the whole grid (never one call per cell).

    ``"auto"`` takes the (block) shifts where they apply. Other restricted designs (``groups``,
    blocks of several sizes) have no cyclic-shift form (the shifts of different strata would have
    to move independently), so they use explicit draws, batched.
    """
    info = get_measure(measure)
    user = dict(options or {})  # measure_grid takes the user's options; the forms need them resolved
    opts = info.resolve_options(user)
    n = xs[0].shape[0]
    design = permutation_design(n, groups, blocks)
    gen = _fresh_or_seeded_generator(seed)
    form = quadratic_form(measure, opts)
    shifts_ok = form is not None and not design.restricted and n_permutations <= n - 1
    if scheme == "shifts" and not shifts_ok:
        why = (
            "groups/blocks restrict the permutations"
            if design.restricted
            else f"n_permutations={n_permutations} exceeds the n - 1 = {n - 1} shifts"
            if form is not None
            else "this measure has no shift form"
        )
        raise ValueError(f"scheme='shifts' is not available: {why}; use scheme='auto' or 'random'")
    if shifts_ok and scheme != "random":
        order = torch.randperm(n, generator=gen)
        shifts = torch.randperm(n - 1, generator=gen)[:n_permutations] + 1
        dev = xs[0].device
        null = shift_null_grid(form, xs, ys, order.to(dev), shifts.to(dev))
        return null, shift_permutations(order, shifts), "shifts"
    units = design.strata[0] if design.restricted and groups is None and len(design.strata) == 1 else None
    if form is not None and units is not None and n_permutations <= units.shape[0] - 1 and scheme != "random":
        # equal-size blocks: cyclic shifts of whole blocks in a random block order, again one FFT per layer
        dev = xs[0].device
        units_t = torch.from_numpy(units).to(dev)
        order = torch.randperm(units.shape[0], generator=gen).to(dev)
        shifts = (torch.randperm(units.shape[0] - 1, generator=gen)[:n_permutations] + 1).to(dev)
        null = block_shift_null_grid(form, xs, ys, units_t, order, shifts)
        return null, block_shift_permutations(units_t, order, shifts).cpu(), "block shifts"
    perms = design.draw(n_permutations, gen)
    if form is not None:
        return explicit_null_grid(form, xs, ys, perms), perms, "random"
    if info.null_grid is not None:  # per-layer state once (neighbour lists), relabelled per permutation
        return info.null_grid(xs, ys, perms.to(ys[0].device), **user).to(ACC), perms, "random"
    from tqdm.auto import tqdm

    device = ys[0].device
    grids = []
    for perm in tqdm(perms, desc=f"{measure} null", disable=not progress):
        p = perm.to(device)
        grids.append(measure_grid(xs, [y[p] for y in ys], measure, **user).to(ACC))
    return torch.stack(grids, dim=-1), perms, "random"


# -------------------------------------------------------------------------------- public API
@deprecated_arguments(
    positional=("n_permutations", "alpha", "smax", "groups", "blocks", "seed", "scheme", "keep_permutations")
)
def calibrate(
    x,
    y,
    measure: str = "linear_cka",
    *,
    n_permutations: int = 200,
    alpha: float = 0.05,
    smax: float | None = None,
    groups=None,
    blocks=None,
    seed: int | None = None,
    scheme: str = "auto",
    keep_permutations: bool = False,
    **measure_options,
) -> CalibrationResult:
    """Calibrated similarity of ``x`` (n, p) and ``y`` (n, q): 0 unless it beats its permutation null.

    tau is the ceil((1 - alpha)(B + 1))-th smallest of the observed value and the B null values
    (the (1 - alpha) quantile of the null *including the observed value*, as in Groeger, Wen &
    Brbic 2026 and their ``calibrated-similarity`` package), and

        score = clip((observed - tau) / (smax - tau), 0, 1).

    score > 0 exactly when the level-``alpha`` permutation test rejects (P = floor(alpha (B+1))/(B+1)
    <= alpha under the null); p_value = (1 + #{null >= observed}) / (1 + B).

    Args:
        measure: any registered feature measure (:func:`repsim.list_measures`). Distances are
            calibrated in the similarity direction, on the lower tail: tau is the
            ceil((1 - alpha)(B + 1))-th *largest* combined value and
            score = clip((tau - observed) / (tau - smax), 0, 1), smax being the best distance.
        n_permutations: B. With the cyclic-shift scheme B <= n - 1; a larger B uses explicit draws.
        alpha: level of the threshold, in (0, 1).
        smax: the attainable best value. None (default): the registry's ``attainable_best``
            (1 for CKA, RSA, CCA, kNN overlaps; 0 for distances). ``math.inf``, or a measure
            whose registry entry has none, gives the unnormalised excess max(observed - tau, 0).
        groups: one label per sample; permutations stay within each label (class-stratified).
        blocks: one id per sample; the samples of one id move together (tokens of a sentence,
            captions of an image), blocks trading places only with blocks of the same size
            (see :mod:`repsim.inference.restricted`).
        seed: seeds the permutations (None: fresh randomness each call).
        scheme: "auto" (for linear/debiased CKA and RSA: cyclic shifts with one FFT when
            unrestricted, shifts of whole blocks when ``blocks`` all have one size; explicit
            draws otherwise), "shifts" or "random".
        keep_permutations: also return the (B, n) permutations in ``permutations``.
        **measure_options: options of the measure (e.g. ``k=10`` for mutual_knn).

    Returns:
        :class:`CalibrationResult` (score, observed, threshold, p_value, null, measure, ...).
    """
    info = _check_common(measure, n_permutations, alpha, scheme)
    x, y = as_features(x, "x"), as_features(y, "y")
    check_same_samples(x, y)
    best = attainable_best(info, smax)
    smax = math.inf if best is None else best
    design = dict(groups=groups, blocks=blocks, seed=seed, scheme=scheme, keep_permutations=keep_permutations)
    grid = calibrate_grid([x], [y], measure, n_permutations=n_permutations, alpha=alpha, smax=smax, **design,
                          **measure_options)  # fmt: skip
    return CalibrationResult(
        measure=measure,
        score=grid.score,
        observed=grid.observed,
        threshold=grid.threshold,
        p_value=grid.p_value,
        null=grid.null,
        alpha=alpha,
        smax=best,
        scheme=grid.scheme,
        n=grid.n,
        permutations=grid.permutations,
    )


def _aggregate_fn(aggregate, larger_is_more_similar: bool) -> tuple[Callable[[Tensor], Tensor], str]:
    if callable(aggregate):
        return (lambda g: torch.as_tensor(aggregate(g), dtype=ACC)), getattr(aggregate, "__name__", "custom")
    if aggregate == "mean":
        return (lambda g: g.mean(dim=(0, 1))), "mean"
    # "max": the most similar cell, i.e. the smallest value of a distance
    return ((lambda g: g.amax(dim=(0, 1))) if larger_is_more_similar else (lambda g: g.amin(dim=(0, 1)))), "max"


def _layer_names(layers, count: int) -> list:
    return list(layers.keys()) if isinstance(layers, Mapping) else list(range(count))


def _cell_table(names_a, names_b, observed, threshold, calibrated, p_value) -> pd.DataFrame:
    """One row per (layer_a, layer_b) cell of the (L, M) grids."""
    columns = {"observed": observed, "threshold": threshold, "calibrated": calibrated, "p_value": p_value}
    table = pd.DataFrame([(a, b) for a in names_a for b in names_b], columns=["layer_a", "layer_b"])
    for key, grid in columns.items():
        table[key] = grid.cpu().to(torch.float64).reshape(-1).numpy()
    return table


@deprecated_arguments(
    positional=(
        "aggregate",
        "n_permutations",
        "alpha",
        "smax",
        "groups",
        "blocks",
        "seed",
        "scheme",
        "keep_permutations",
        "progress",
    )
)
def calibrate_grid(
    xs,
    ys,
    measure: str = "linear_cka",
    *,
    aggregate: str | Callable[[Tensor], Tensor] = "max",
    n_permutations: int = 200,
    alpha: float = 0.05,
    smax: float | None = None,
    groups=None,
    blocks=None,
    seed: int | None = None,
    scheme: str = "auto",
    keep_permutations: bool = False,
    progress: bool = False,
    **measure_options,
) -> GridCalibrationResult:
    """Calibrate a layer grid's aggregate and every cell, with ONE permutation per draw for all layers.

    ``xs``/``ys``: lists (or dicts name -> tensor) of (n, d_l) features of the same samples.
    Each draw permutes the samples of every layer of ``ys`` by the same permutation, so the
    aggregate of the permuted grid is a draw from the aggregate's null and its threshold accounts
    for the search over cells: the maximum over an L x M grid of independent representations
    beats a single cell's threshold far more often than alpha, its own threshold at rate alpha.

    Args:
        aggregate: "max" (the best cell; for a distance the smallest), "mean", or a callable
            taking the (L, M) float64 grid and returning a scalar (larger = more similar for
            similarities, smaller for distances).
        Other arguments as in :func:`calibrate`; ``progress`` shows a bar over the permutations of
        measures computed by one grid call per permutation.

    Returns:
        :class:`GridCalibrationResult`: the calibrated aggregate (score, observed, threshold,
        p_value, null) and ``cells``, a tidy DataFrame (layer_a, layer_b, observed, threshold,
        calibrated, p_value) with each cell calibrated against its own null under the same draws.
    """
    info = _check_common(measure, n_permutations, alpha, scheme, aggregate)
    xs_list = as_feature_list(xs, "xs")
    ys_list = as_feature_list(ys, "ys")
    names_a, names_b = _layer_names(xs, len(xs_list)), _layer_names(ys, len(ys_list))
    check_same_samples(xs_list[0], ys_list[0], ("xs[0]", "ys[0]"))
    best = attainable_best(info, smax)
    info.resolve_options(measure_options)  # unknown or clashing options fail here, before any work
    with warnings.catch_warnings(), knn_cache():  # the observed grid and the null share neighbour lists
        warnings.simplefilter("ignore", BiasedCKAChanceWarning)  # calibrating is the remedy it points to
        observed = measure_grid(xs_list, ys_list, measure, **measure_options).to(ACC)
        null, perms, used = null_grid(
            measure, xs_list, ys_list, n_permutations, groups, blocks, seed, scheme, measure_options, progress
        )
    null = null.to(observed.device)
    agg, agg_name = _aggregate_fn(aggregate, info.larger_is_more_similar)
    obs_agg = agg(observed).reshape(())
    if callable(aggregate):
        null_agg = torch.stack([agg(null[..., k]).reshape(()) for k in range(null.shape[-1])])
    else:
        null_agg = agg(null)
    score, tau, p = calibrated_values(obs_agg, null_agg, alpha, best, info.larger_is_more_similar)
    cell_score, cell_tau, cell_p = calibrated_values(observed, null, alpha, best, info.larger_is_more_similar)
    return GridCalibrationResult(
        measure=measure,
        aggregate=agg_name,
        score=float(score),
        observed=float(obs_agg),
        threshold=float(tau),
        p_value=float(p),
        null=null_agg.cpu(),
        cells=_cell_table(names_a, names_b, observed, cell_tau, cell_score, cell_p),
        cell_null=null.cpu(),
        alpha=alpha,
        smax=best,
        scheme=used,
        n=int(xs_list[0].shape[0]),
        permutations=perms if keep_permutations else None,
    )
