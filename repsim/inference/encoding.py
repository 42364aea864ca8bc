"""Encoding models: cross-validated ridge from a model's features to every recorded unit, one penalty
per target, scored on held-out stimuli; reverse predictivity (recorded units -> model units).

Protocol of :func:`encoding_score` (the standard one of Brain-Score, himalaya and scikit-learn):

1. Outer folds over stimuli (``cv``: contiguous ``KFold``, explicit pairs or a splitter).
2. On each training fold, for every target, the penalty α of the grid with the smallest
   leave-one-out error, by generalised cross-validation from one decomposition of the training
   features (:mod:`repsim.measures.ridge`; equal to ``RidgeCV(alpha_per_target=True)`` fitted on
   that fold); an intercept is fitted (features and targets centred on the training fold).
3. Held-out predictions of every fold are pooled; per target, ``score`` is the Pearson r between
   predictions and responses over all held-out stimuli, ``r2`` is 1 - SS_res / SS_tot over them.

Why α per target: recorded units differ in their noise by orders of magnitude; one shared α
over-smooths the reliable ones and over-fits the noisy ones (Dupré la Tour et al. 2022, himalaya).

Scale: the route is dual (n × n Gram matrix accumulated over column blocks of the features, so a
memory-mapped layer of any width is never held in RAM) when a layer is at least as wide as a
training fold, primal (SVD of the features) otherwise; targets run in blocks; the peak is planned
before anything is read (:mod:`repsim.inference.encoding_plan`) and refused when over the budget.
Under ``torchrun`` each rank fits a contiguous share of the targets; the results are gathered in
rank order, equal to one process's.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core import distributed as dist_
from ..core.numerics import ACC, center_columns
from ..core.validation import check_choice, near_constant
from ..measures.ridge import dual_basis, gcv_fit, primal_basis
from ..measures.sketch import projection as gaussian_projection
from .encoding_data import Columns, as_layers, folds_of, scan
from .encoding_plan import EncodingPlan, check_plan, column_block, plan_encoding

DEFAULT_ALPHAS = tuple(float(10.0**k) for k in range(-3, 9))
"""10^-3 ... 10^8, one per decade: the scale of α is that of the Gram eigenvalues (sum of squared
features), so the grid is wide; a warning says when many targets pick an end of it."""


@dataclass
class EncodingResult:
    """Per-target held-out scores of an encoding model.

    ``table``: one row per (layer,) target in target order: ``target``, ``score`` (Pearson r over all
    held-out predictions), ``r2``, ``alpha`` (median over folds of the chosen α), ``n`` (held-out
    stimuli), ``route``; ``alphas``: {layer: (folds, targets) chosen α}; ``folds``: the (train,
    test) index pairs; ``plans``: {layer: EncodingPlan}; ``predictions``: {layer: (held-out, targets)}
    when asked for, rows in ``test_indices`` order.
    """

    table: pd.DataFrame
    alphas: dict
    folds: list
    plans: dict
    predictions: dict | None = None
    test_indices: np.ndarray | None = field(default=None, repr=False)

    @property
    def summary(self) -> pd.DataFrame:
        """Median and mean of ``score`` and ``r2`` over targets (per layer when there are several)."""
        keys = [c for c in ("layer",) if c in self.table]
        grouped = self.table.groupby(keys, sort=False) if keys else self.table.groupby(lambda _: 0)
        out = grouped.agg(
            n_targets=("score", "size"),
            median_score=("score", "median"),
            mean_score=("score", "mean"),
            median_r2=("r2", "median"),
            mean_r2=("r2", "mean"),
        )
        return out.reset_index() if keys else out.reset_index(drop=True)

    def ceiled(self, ceiling) -> pd.DataFrame:
        """The table with ``ceiling`` and ``ceiled`` = score / ceiling columns (see :func:`ceil_scores`)."""
        from .ceiling import ceil_scores

        return ceil_scores(self.table, ceiling)


def _check_alphas(alphas) -> Tensor:
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64).ravel())
    if a.numel() == 0 or not torch.isfinite(a).all() or (a <= 0).any():
        raise ValueError(f"alphas must be a non-empty list of positive finite penalties, got {alphas!r}")
    return a


def _gram(cols: Columns, dtype: torch.dtype, device) -> Tensor:
    """K = X_c X_cᵀ (float64) over column blocks, X_c centred on the column means of all stimuli in
    float64 (the folds re-centre on their own training rows from K; this first centring keeps the
    products free of the cancellation a large feature mean would cause). Refuses NaN/Inf and
    all-constant features on the way."""
    width = column_block(cols.n, torch.empty((), dtype=dtype).element_size())
    k = torch.zeros(cols.n, cols.n, dtype=ACC, device=device)
    varying = False
    for lo, x in cols.blocks(width, device):
        lo_v, hi_v = x.amin(dim=0), x.amax(dim=0)
        if not (torch.isfinite(lo_v).all() and torch.isfinite(hi_v).all()):
            raise ValueError(f"{cols.name} contains NaN or Inf values (in columns {lo}..{lo + x.shape[1] - 1}); "
                             "clean or drop them first")  # fmt: skip
        varying = varying or not bool(near_constant(lo_v, hi_v, x.dtype).all())
        xc = center_columns(x, dtype)
        k += (xc @ xc.T).to(ACC)
    if not varying:
        _raise_constant(cols.name)
    return k


def _raise_constant(name: str):
    raise ValueError(f"{name} is constant across stimuli (up to rounding), so it predicts nothing; check the layer")


def _dense(cols: Columns, device) -> Tensor:
    x = torch.cat([b.to(ACC) for _, b in cols.blocks(column_block(cols.n, 8), device)], dim=1)
    if not torch.isfinite(x).all():
        raise ValueError(f"{cols.name} contains NaN or Inf values; clean or drop them first")
    return x


def _projected(cols: Columns, k: int, seed: int, device) -> Columns:
    """X R with R (d, k) Gaussian N(0, 1/k), drawn block by block (seeded per block: never all of R)."""
    width = column_block(cols.n, 4)
    out = torch.zeros(cols.n, k, dtype=torch.float32, device=device)
    for lo, x in cols.blocks(width, device):
        r = gaussian_projection(x.shape[1], k, seed=seed, side=1, layer=lo // width, device=device)
        out += center_columns(x, torch.float32) @ r
    return Columns(out, cols.name)


def _bases(cols: Columns, folds, route: str, dtype: torch.dtype, device):
    """One basis per fold, made when needed (one fold's decomposition in memory at a time)."""
    if route == "dual":
        k = _gram(cols, dtype, device)
        eps = torch.finfo(dtype).eps
        for tr, te in folds:
            tr_t, te_t = torch.as_tensor(tr, device=device), torch.as_tensor(te, device=device)
            yield dual_basis(k[tr_t[:, None], tr_t], k[te_t[:, None], tr_t], eps)  # no m x n temporaries
    else:
        x = _dense(cols, device)
        if bool(near_constant(x.amin(dim=0), x.amax(dim=0), x.dtype).all()):
            _raise_constant(cols.name)
        for tr, te in folds:
            yield primal_basis(x[torch.as_tensor(tr, device=device)], x[torch.as_tensor(te, device=device)])


class _Scores:
    """Per-target sums over every fold's held-out pairs (float64), the chosen α, and the predictions."""

    def __init__(self, t: int, n_folds: int, n_held: int | None, device) -> None:
        z = lambda: torch.zeros(t, dtype=ACC, device=device)  # noqa: E731
        self.n, self.sp, self.sy, self.spp, self.syy, self.spy, self.sres = (z() for _ in range(7))
        self.alpha = torch.zeros(n_folds, t, dtype=ACC, device=device)
        self.pred = None if n_held is None else torch.zeros(n_held, t, dtype=ACC, device=device)

    def add(self, cols: slice, fold: int, row0: int, pred: Tensor, y: Tensor, alpha: Tensor) -> None:
        self.n[cols] += y.shape[0]
        self.sp[cols] += pred.sum(0)
        self.sy[cols] += y.sum(0)
        self.spp[cols] += (pred * pred).sum(0)
        self.syy[cols] += (y * y).sum(0)
        self.spy[cols] += (pred * y).sum(0)
        self.sres[cols] += ((y - pred) ** 2).sum(0)
        self.alpha[fold, cols] = alpha
        if self.pred is not None:
            self.pred[row0 : row0 + y.shape[0], cols] = pred

    def result(self) -> dict:
        n = self.n
        cov = self.spy - self.sp * self.sy / n
        vp, vy = self.spp - self.sp**2 / n, self.syy - self.sy**2 / n
        r = cov / torch.sqrt(vp * vy)
        return {"score": r.cpu(), "r2": (1 - self.sres / vy).cpu(), "n": n.cpu(), "alpha": self.alpha.cpu(),
                "pred": None if self.pred is None else self.pred.cpu()}  # fmt: skip


def _share(t: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous targets rank ``rank`` fits (ranks in order cover 0..t)."""
    return t * rank // world, t * (rank + 1) // world


def _fit_sets(predictors: Columns, sets: dict, folds, alphas: Tensor, how: dict) -> dict:
    """Every target set against one predictor set, fold by fold (one decomposition per fold).

    ``sets``: {name: (Columns, float64 means, (t0, t1) this rank's targets)}; ``how``: route, dtype,
    device, block_size, keep (predictions), progress. Returns {name: _Scores.result()}.
    """
    device, tb = how["device"], how["block_size"]
    n_held = sum(len(te) for _, te in folds)
    offsets = np.concatenate([[0], np.cumsum([len(te) for _, te in folds])])
    scores = {name: _Scores(t1 - t0, len(folds), n_held if how["keep"] else None, device)
              for name, (_, _, (t0, t1)) in sets.items()}  # fmt: skip
    total = len(folds) * sum(-(-(t1 - t0) // tb) for _, _, (t0, t1) in sets.values())
    bar = tqdm(total=total, desc=f"ridge {predictors.name}", disable=not how["progress"], leave=False)
    for f, basis in enumerate(_bases(predictors, folds, how["route"], how["dtype"], device)):
        tr, te = (torch.as_tensor(i, device=device) for i in folds[f])
        for name, (cols, mean, (t0, t1)) in sets.items():
            for lo in range(t0, t1, tb):
                hi = min(lo + tb, t1)
                y = cols.block(lo, hi, device).to(ACC, copy=True)  # a copy: centred in place below
                y -= mean[lo:hi].to(device)
                fit = gcv_fit(basis, y[tr], alphas, how["dtype"])
                scores[name].add(slice(lo - t0, hi - t0), f, int(offsets[f]), fit.predictions, y[te], fit.alpha)
                bar.update()
        del basis
    bar.close()
    out = {name: s.result() for name, s in scores.items()}
    for name, (_, mean, (t0, t1)) in sets.items():
        if out[name]["pred"] is not None:
            out[name]["pred"] += mean[t0:t1]  # back to the targets' own offset
    return out


def _gathered(res: dict, enabled: bool) -> dict:
    """Every rank's targets, concatenated in rank order (one process: as is)."""
    if not enabled:
        return res
    parts = dist_.gather(res)
    out = {}
    for name in res:
        got = [p[name] for p in parts]
        out[name] = {k: (None if got[0][k] is None else torch.cat([g[k] for g in got], dim=-1)) for k in got[0]}
    return out


def _warn_edges(alpha: Tensor, alphas: Tensor, what: str) -> None:
    if alphas.numel() < 2:
        return
    lo, hi = (alpha == alphas.min()).double().mean().item(), (alpha == alphas.max()).double().mean().item()
    if max(lo, hi) > 0.1:
        end = f"the smallest alpha ({alphas.min().item():g})" if lo >= hi else f"the largest ({alphas.max().item():g})"
        warnings.warn(f"{max(lo, hi):.0%} of the fold x target choices of {what} picked {end}; the grid may be too "
                      "narrow there: extend alphas", RuntimeWarning, stacklevel=3)  # fmt: skip


def _table(res: dict, names, route: str, layer: str | None, target_col: str) -> pd.DataFrame:
    undefined = int(torch.isnan(res["score"]).sum())
    if undefined:
        warnings.warn(f"{undefined} targets{'' if layer is None else f' of layer {layer!r}'} got held-out predictions "
                      "that are constant over all held-out stimuli (every fold chose the largest alpha on "
                      "features without signal): their score is NaN; extend alphas or check the features",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
    cols = {} if layer is None else {"layer": layer}
    cols.update({target_col: list(names), "score": res["score"].numpy(), "r2": res["r2"].numpy(),
                 "alpha": res["alpha"].median(dim=0).values.numpy(), "n": res["n"].numpy().astype(int),
                 "route": route})  # fmt: skip
    return pd.DataFrame(cols)


@dataclass
class _Setup:
    folds: list
    alphas: Tensor
    rows: np.ndarray | None
    rank: int
    world: int
    gathered: bool


def _setup(n: int, cv, groups, max_samples, alphas, distributed) -> _Setup:
    rows = None
    if max_samples is not None:
        if not (isinstance(max_samples, (int, np.integer)) and max_samples >= 4):
            raise ValueError(f"max_samples must be an integer >= 4, got {max_samples!r}")
        if max_samples < n:
            rows, n = np.arange(int(max_samples)), int(max_samples)
            groups = None if groups is None else np.asarray(groups)[rows]
    gathered = distributed is not False and dist_.is_distributed()
    rank, world = dist_.rank_and_world() if gathered else (0, 1)
    return _Setup(folds_of(cv, n, groups), _check_alphas(alphas), rows, rank, world, gathered)


def _target_set(cols: Columns, setup: _Setup, device, constant: str) -> tuple:
    """(Columns, float64 means, this rank's share, constant mask): the targets' shared preprocessing."""
    if setup.rows is not None:
        cols = cols.subset(setup.rows)
    means, const = scan(cols, column_block(cols.n, 8), device)
    if constant == "raise" and bool(const.any()):
        idx = torch.nonzero(const).flatten()[:10].tolist()
        raise ValueError(f"{cols.name} has {int(const.sum())} targets constant across stimuli (e.g. columns {idx}): "
                         "no model can predict them and their correlation is undefined; drop them first")  # fmt: skip
    return cols, means, _share(cols.width, setup.rank, setup.world), const.cpu()


def _route(solver: str, d: int, setup: _Setup) -> str:
    check_choice(solver, "solver", ("auto", "dual", "primal"))
    m = max(len(tr) for tr, _ in setup.folds)
    return ("primal" if d < m else "dual") if solver == "auto" else solver


def _plan(n: int, d: int, t: int, setup: _Setup, how: dict, memory, layers: int = 1) -> EncodingPlan:
    m = max(len(tr) for tr, _ in setup.folds)
    p = plan_encoding(n, d, -(-t // setup.world), cv=len(setup.folds), n_train=m, n_alphas=setup.alphas.numel(),
                      layers=layers, dtype=how["dtype"], block_size=how["block_size"], memory=memory,
                      keep_predictions=how["keep"], route=how["route"], device=how["device"])  # fmt: skip
    check_plan(p)
    return p


def _how(dtype, device, block_size, return_predictions, progress, route="dual") -> dict:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (torch.float32 or torch.float64), got {dtype!r}")
    if block_size is not None and not (isinstance(block_size, (int, np.integer)) and block_size >= 1):
        raise ValueError(f"block_size must be a positive number of targets per block, got {block_size!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return {"dtype": dtype, "device": device, "block_size": block_size, "keep": bool(return_predictions),
            "progress": progress, "route": route}  # fmt: skip


def _predictors(cols: Columns, setup: _Setup, projection, seed: int, device) -> Columns:
    if setup.rows is not None:
        cols = cols.subset(setup.rows)
    if projection is None:
        return cols
    if not (isinstance(projection, (int, np.integer)) and projection >= 2):
        raise ValueError(f"projection must be an integer number of dimensions >= 2, got {projection!r}")
    return cols if cols.width <= projection else _projected(cols, int(projection), seed, device)


def _same_stimuli(sets: dict[str, Columns], targets: Columns) -> None:
    for cols in sets.values():
        if cols.n != targets.n:
            raise ValueError(f"{cols.name} has {cols.n} stimuli (rows) but {targets.name} has {targets.n}; "
                             "both must hold the same stimuli in the same order")  # fmt: skip


def _names(targets, width: int) -> list:
    cols = getattr(targets, "columns", None)
    return list(cols) if cols is not None and len(cols) == width else list(range(width))


def encoding_score(
    features,
    targets,
    *,
    alphas=DEFAULT_ALPHAS,
    cv=5,
    groups=None,
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    memory=None,
    max_samples: int | None = None,
    projection: int | None = None,
    seed: int = 0,
    solver: str = "auto",
    return_predictions: bool = False,
    distributed: bool | None = None,
    progress: bool = True,
) -> EncodingResult:
    """Held-out prediction of every target from a model's features by ridge with α per target.

    ``features``: (stimuli, d) tensor, numpy array or memmap, or any array-like with ``.shape`` and
    slicing; or a mapping {layer: such an array}, every layer run through the same folds and the
    same target preprocessing. ``targets``: (stimuli, t) responses (a DataFrame's column names become
    the ``target`` labels). ``alphas``: the penalty grid; ``cv``: int (contiguous, unshuffled
    ``KFold``), (train, test) pairs, or a scikit-learn splitter (``groups`` passed to it);
    ``block_size``: targets per block (default: the most that fit ``memory``); ``dtype`` of the big
    products (default: float32 for float32 features, else float64; decompositions and reductions
    always float64); ``max_samples``: use the first stimuli only; ``projection``: a seeded Gaussian
    random projection of wider layers to that many features (an estimator: each Gram entry has
    standard error <= sqrt(2/k) |x_i||x_j|); ``solver``: "auto" (primal when the layer is narrower
    than a training fold, else dual), "primal" or "dual"; ``return_predictions``: keep the held-out
    predictions (``.predictions``, rows in ``.test_indices`` order).

    The memory plan (:func:`repsim.plan_encoding`) is checked before anything is read; over the
    budget a :class:`repsim.MemoryBudgetError` lists the options. Returns an
    :class:`EncodingResult` (``.table``, ``.summary``). Formulas: :mod:`repsim.measures.ridge`.
    """
    options = dict(alphas=alphas, cv=cv, groups=groups, block_size=block_size, dtype=dtype, device=device,
                   memory=memory, max_samples=max_samples, projection=projection, seed=seed, solver=solver,
                   return_predictions=return_predictions, distributed=distributed, progress=progress)  # fmt: skip
    tables, alphas_out, plans, preds = [], {}, {}, {}
    for fit in encoding_layers(features, targets, **options):
        tables.append(fit.table)
        alphas_out[fit.layer], plans[fit.layer], preds[fit.layer] = fit.alphas, fit.plan, fit.predictions
    return EncodingResult(pd.concat(tables, ignore_index=True), alphas_out, fit.folds, plans,
                          preds if return_predictions else None, fit.test_indices)  # fmt: skip


@dataclass
class LayerFit:
    """One layer's results from :func:`encoding_layers` (the fields of :class:`EncodingResult`, per layer)."""

    layer: str
    table: pd.DataFrame
    alphas: np.ndarray
    plan: EncodingPlan
    predictions: np.ndarray | None
    folds: list
    test_indices: np.ndarray
    held_out: np.ndarray = field(repr=False)


def encoding_layers(features, targets, **options):
    """:func:`encoding_score` one layer at a time (same arguments): yields a :class:`LayerFit` per
    layer, so a caller can use a layer's held-out predictions and drop them before the next layer.
    ``held_out``: the targets' held-out responses (rows in ``test_indices`` order), kept only with
    ``return_predictions``."""
    opts = dict(alphas=DEFAULT_ALPHAS, cv=5, groups=None, block_size=None, dtype=None, device=None, memory=None,
                max_samples=None, projection=None, seed=0, solver="auto", return_predictions=False,
                distributed=None, progress=True)  # fmt: skip
    unknown = set(options) - set(opts)
    if unknown:
        raise TypeError(f"encoding_layers got unexpected arguments {sorted(unknown)}")
    opts.update(options)
    layers = as_layers(features)
    tcols = Columns(targets, "targets")
    _same_stimuli(layers, tcols)
    setup = _setup(tcols.n, opts["cv"], opts["groups"], opts["max_samples"], opts["alphas"], opts["distributed"])
    how = _how(opts["dtype"], opts["device"], opts["block_size"], opts["return_predictions"], opts["progress"])
    tset = _target_set(tcols, setup, how["device"], "raise")
    names = _names(targets, tcols.width)
    test_idx = np.concatenate([te for _, te in setup.folds])
    held = _held_out(tset, test_idx) if how["keep"] else None
    for layer, cols in layers.items():
        pred_cols = _predictors(cols, setup, opts["projection"], opts["seed"], how["device"])
        lhow = dict(how, route=_route(opts["solver"], pred_cols.width, setup))
        lhow["dtype"] = opts["dtype"] or (torch.float32 if pred_cols.dtype == torch.float32 else ACC)
        plan = _plan(pred_cols.n, pred_cols.width, tcols.width, setup, lhow, opts["memory"])
        lhow["block_size"] = plan.block_size
        res = _gathered(_fit_sets(pred_cols, {"t": tset[:3]}, setup.folds, setup.alphas, lhow), setup.gathered)["t"]
        _warn_edges(res["alpha"], setup.alphas, f"layer {layer!r}")
        table = _table(res, names, lhow["route"], layer if isinstance(features, Mapping) else None, "target")
        pred = None if res["pred"] is None else res["pred"].numpy()
        yield LayerFit(layer, table, res["alpha"].numpy(), plan, pred, setup.folds, test_idx, held)


def _held_out(tset: tuple, test_idx: np.ndarray) -> np.ndarray:
    cols = tset[0]
    width = column_block(cols.n, 8)
    return np.concatenate([b.to(ACC).numpy()[test_idx] for _, b in cols.blocks(width)], axis=1)


def reverse_predictivity(
    features,
    targets,
    *,
    alphas=DEFAULT_ALPHAS,
    cv=5,
    groups=None,
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    device=None,
    memory=None,
    max_samples: int | None = None,
    solver: str = "auto",
    return_predictions: bool = False,
    distributed: bool | None = None,
    progress: bool = True,
) -> EncodingResult:
    """Reverse predictivity: every model unit predicted from the recorded responses, same protocol
    as :func:`encoding_score` (Muzellec & Kar 2025): how much of the model the brain data explain.

    ``features``: one layer or {layer: array} (the units become the targets; units constant across
    stimuli are left out with a warning, as they have no variance to explain); ``targets``: the
    recorded responses (stimuli, t), the predictors, decomposed once per fold for every layer.
    Returns an :class:`EncodingResult` whose table has a ``unit`` column instead of ``target``
    (and ``layer``).
    """
    layers = as_layers(features)
    pcols = Columns(targets, "targets")
    _same_stimuli(layers, pcols)
    setup = _setup(pcols.n, cv, groups, max_samples, alphas, distributed)
    how = _how(dtype, device, block_size, return_predictions, progress)
    pred_cols = _predictors(pcols, setup, None, 0, how["device"])
    how["route"] = _route(solver, pred_cols.width, setup)
    how["dtype"] = dtype or (torch.float32 if pred_cols.dtype == torch.float32 else ACC)
    sets = {layer: _target_set(cols, setup, how["device"], "keep") for layer, cols in layers.items()}
    plan = _plan(pred_cols.n, pred_cols.width, max(s[0].width for s in sets.values()), setup, how, memory, len(sets))
    how["block_size"] = plan.block_size
    res = _gathered(_fit_sets(pred_cols, {k: v[:3] for k, v in sets.items()}, setup.folds, setup.alphas, how),
                    setup.gathered)  # fmt: skip
    tables, alphas_out, preds = [], {}, {}
    for layer, (cols, _, _, const) in sets.items():
        r = res[layer]
        _warn_edges(r["alpha"], setup.alphas, f"layer {layer!r} (reverse)")
        table = _table(r, range(cols.width), how["route"], layer, "unit")
        if bool(const.any()):
            warnings.warn(f"{int(const.sum())} of {cols.width} units of layer {layer!r} are constant across "
                          "stimuli and are left out of the reverse predictivity table", RuntimeWarning,
                          stacklevel=2)  # fmt: skip
            table = table[~const.numpy()].reset_index(drop=True)
        tables.append(table)
        alphas_out[layer] = r["alpha"].numpy()
        preds[layer] = None if r["pred"] is None else r["pred"].numpy()
    test_idx = np.concatenate([te for _, te in setup.folds])
    return EncodingResult(pd.concat(tables, ignore_index=True), alphas_out, setup.folds, {"targets": plan},
                          preds if return_predictions else None, test_idx)  # fmt: skip
