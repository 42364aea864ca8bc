"""The model x layer atlas behind :func:`repsim.compare_many`: every model pair x every layer pair.

The work is cut into *group pairs*: the models are split into groups of ``block_models`` (the memory
planner's choice: all of them when their features and the measure's workspace fit), and each
(group, group) pair is one :func:`repsim.measure_grid` call per measure over the layers of both
groups, so each layer's own work (centring and self-similarity for CKA, neighbour lists for the kNN
measures) is done once per group pair: exactly once when everything fits. Each model pair's block
of rows is written atomically (``out/blocks/``) as its group pair finishes; a restarted run skips
the blocks on disk. Under ``torchrun`` the group pairs are dealt to the ranks and the blocks
gathered, so every rank ends with the table of one process.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..core import distributed as D
from ..core.featureset import FeatureSet
from ..core.io import atomic_write_text
from ..measures.registry import get_measure, measure_grid

AGGREGATES = ("max", "diagonal", "best_match", "mean")
MANIFEST = "atlas.json"


# -------------------------------------------------------------------------------- aggregates
def aggregate_grid(grid: Tensor, how: str | Callable, larger_is_more_similar: bool = True) -> Tensor:
    """One model pair's (L, M) layer grid summarised to a scalar (float64 0-d tensor).

    * ``"max"``: the most similar cell, max_ij G_ij (min for a distance), as the platonic
      representation hypothesis aligns models (Huh et al. 2024);
    * ``"diagonal"``: mean_i G_{i, j(i)} over layers at the same relative depth,
      j(i) = round(i (M - 1) / (L - 1)) (the plain diagonal when L = M; j = M - 1 when L = 1);
    * ``"best_match"``: every layer's best match on the other side, averaged both ways,
      (mean_i best_j G_ij + mean_j best_i G_ij) / 2;
    * ``"mean"``: the mean of all cells;
    * a callable: ``how(grid)`` -> a scalar.
    """
    g = grid.to(torch.float64)
    best = (lambda t, d: t.amax(dim=d)) if larger_is_more_similar else (lambda t, d: t.amin(dim=d))
    if callable(how):
        return torch.as_tensor(how(g), dtype=torch.float64).reshape(())
    if how == "max":
        return best(g.reshape(-1), 0)
    if how == "mean":
        return g.mean()
    if how == "diagonal":
        rows, cols = g.shape
        depth = torch.arange(rows, dtype=torch.float64) / (rows - 1) if rows > 1 else torch.ones(1, dtype=torch.float64)
        j = torch.round(depth * (cols - 1)).long().to(g.device)
        return g[torch.arange(rows, device=g.device), j].mean()
    if how == "best_match":
        return (best(g, 1).mean() + best(g, 0).mean()) / 2
    raise ValueError(f"aggregate must be one of {AGGREGATES} or a callable, got {how!r}")


def _grid_aggregate(how, larger: bool) -> str | Callable:
    """What :func:`repsim.calibrate_grid` takes for ``how`` (its own "max"/"mean", else a callable)."""
    if how in ("max", "mean"):
        return how
    return lambda g: aggregate_grid(g, how, larger)


# -------------------------------------------------------------------------------- the result
@dataclass
class ManyResult:
    """Every model pair x every layer pair of :func:`repsim.compare_many`.

    ``table``: one row per (model_a, layer_a, model_b, layer_b, measure) with ``value``, ``n`` (samples)
    and ``route``; symmetric measures list each unordered model pair once (model_a before model_b in
    ``models``), asymmetric ones both orders. With calibration (``inference={"calibrate": B}``) the
    cells also have ``calibrated``, ``threshold``, ``p_value``, and each model pair has one more row
    per measure with layer_a = layer_b = ``"<aggregate>"`` holding the aggregate and its calibration
    against the aggregate's own null.
    """

    table: pd.DataFrame
    models: list[str]
    layers: dict[str, list[str]]
    measures: list[str]
    out: Path | None = None
    aggregate: str | None = None
    """The aggregate that was calibrated (None without calibration)."""
    symmetric: dict[str, bool] = field(default_factory=dict)

    def grid(self, measure: str, model_a: str, model_b: str, column: str = "value") -> pd.DataFrame:
        """layer_a x layer_b values of one model pair (any order; a symmetric measure's transposed)."""
        cells = self._cells(measure)
        pick = cells[(cells["model_a"] == model_a) & (cells["model_b"] == model_b)]
        transposed = pick.empty
        if transposed:
            pick = cells[(cells["model_a"] == model_b) & (cells["model_b"] == model_a)]
        if pick.empty:
            raise ValueError(f"no rows for {measure} between {model_a!r} and {model_b!r}; models are {self.models}")
        table = pick.pivot(index="layer_a", columns="layer_b", values=column)
        table = table.loc[self.layers[pick["model_a"].iloc[0]], self.layers[pick["model_b"].iloc[0]]]
        out = table.T if transposed else table
        out.index.name, out.columns.name = "layer_a", "layer_b"
        return out

    def _cells(self, measure: str) -> pd.DataFrame:
        if measure not in self.measures:
            raise ValueError(f"measure {measure!r} was not computed; computed: {self.measures}")
        t = self.table
        return t[(t["measure"] == measure) & ~t["layer_a"].astype(str).str.startswith("<")]

    def matrix(self, measure: str, aggregate: str | Callable = "max", calibrated: bool = False) -> pd.DataFrame:
        """model x model DataFrame of ``measure`` aggregated over each pair's layer grid
        (:func:`aggregate_grid`: ``"max"``, ``"diagonal"``, ``"best_match"``, ``"mean"`` or a callable).

        ``calibrated=True``: the calibrated aggregate (0 = not above its own permutation null), for the
        aggregate that ``inference={"calibrate": B, "aggregate": ...}`` calibrated; NaN on the diagonal.
        """
        frame = pd.DataFrame(np.nan, index=pd.Index(self.models, name="model_a"),
                             columns=pd.Index(self.models, name="model_b"))  # fmt: skip
        if calibrated:
            return self._calibrated_matrix(measure, aggregate, frame)
        larger = get_measure(measure).larger_is_more_similar
        for a in self.models:
            for b in self.models:
                try:
                    g = self.grid(measure, a, b)
                except ValueError:
                    continue
                frame.loc[a, b] = float(aggregate_grid(torch.tensor(g.to_numpy(dtype=float)), aggregate, larger))
        return frame

    def _calibrated_matrix(self, measure, aggregate, frame: pd.DataFrame) -> pd.DataFrame:
        if self.aggregate is None or "calibrated" not in self.table:
            raise ValueError("no calibration: pass inference={'calibrate': B} to compare_many")
        if aggregate != self.aggregate:
            raise ValueError(f"the calibrated aggregate is {self.aggregate!r}; ask matrix(..., aggregate=it)")
        t = self.table
        rows = t[(t["measure"] == measure) & (t["layer_a"] == f"<{self.aggregate}>")]
        for _, r in rows.iterrows():
            frame.loc[r["model_a"], r["model_b"]] = r["calibrated"]
            if self.symmetric.get(measure, True):
                frame.loc[r["model_b"], r["model_a"]] = r["calibrated"]
        return frame

    def heatmap(self, measure: str, aggregate: str | Callable = "max", ax=None, **kwargs):
        """The atlas figure: the model x model heatmap of the aggregate (for two models, their
        layer x layer heatmap); returns the Axes."""
        from .plotting import heatmap

        kwargs.setdefault("measure", measure)  # the colour scale compare's heatmaps use (plotting.colour_scale)
        if len(self.models) == 2:
            a, b = self.models
            return heatmap(self.grid(measure, a, b), title=f"{measure}: {a} vs {b}", ax=ax, **kwargs)
        name = aggregate if isinstance(aggregate, str) else getattr(aggregate, "__name__", "custom")
        return heatmap(self.matrix(measure, aggregate), title=f"{measure} ({name} over layer pairs)", ax=ax, **kwargs)

    def save(self, folder, aggregate: str | Callable = "max") -> list[Path]:
        """Write the table (CSV), each measure's matrix (CSV) and heatmap (PNG) to ``folder``; returns the paths."""
        import matplotlib.pyplot as plt

        from ..core.io import atomic_save_figure

        folder = Path(folder)
        name = aggregate if isinstance(aggregate, str) else getattr(aggregate, "__name__", "custom")
        written = [atomic_write_text(folder / "table.csv", self.table.to_csv(index=False))]
        for m in self.measures:
            written.append(atomic_write_text(folder / f"matrix_{m}_{name}.csv", self.matrix(m, aggregate).to_csv()))
            ax = self.heatmap(m, aggregate)
            written.append(atomic_save_figure(ax.figure, folder / f"atlas_{m}_{name}.png", dpi=120))
            plt.close(ax.figure)
        return written


# -------------------------------------------------------------------------------- the plan
@dataclass
class AtlasPlan:
    """How the atlas runs: the model groups, the group pairs (units) and what stays resident."""

    groups: list[list[int]]
    units: list[tuple[int, int]]
    resident_bytes: int
    workspace_bytes: int
    budget: int

    def __str__(self) -> str:
        from ..core.budget import format_bytes

        return (f"{len(self.groups)} group(s) of up to {max(len(g) for g in self.groups)} models, {len(self.units)} "
                f"group pair(s); features resident {format_bytes(self.resident_bytes)} + workspace "
                f"{format_bytes(self.workspace_bytes)} of a {format_bytes(self.budget)} budget")  # fmt: skip


def plan_atlas(sets: Sequence[FeatureSet], layers: Sequence[Sequence[str]], n: int, measures: Sequence[str],
               budget: int, workspace: int, block_models: int | None, world: int) -> AtlasPlan:  # fmt: skip
    """Largest groups whose resident features (two groups at a time, or all models when one group
    holds them) and the measures' workspace fit ``budget``; a MemoryBudgetError when one pair does not."""
    from ..core.budget import MemoryBudgetError, format_bytes
    from ..measures.blocked import workspace_limit
    from .plans import workspace_estimate

    count = len(sets)
    per_model = [n * sum(s.dims[k] for k in ls) * 4 for s, ls in zip(sets, layers, strict=True)]
    dims = [[s.dims[k] for k in ls] for s, ls in zip(sets, layers, strict=True)]

    def need(g: int) -> tuple[int, int]:
        together = count if g >= count else min(count, 2 * g)
        resident = sum(sorted(per_model, reverse=True)[:together])
        widest = sorted(range(count), key=lambda i: -sum(dims[i]))[:together]
        flat = [d for i in widest for d in dims[i]]
        with workspace_limit(workspace):
            work = max(workspace_estimate(m, n, flat, None, workspace) for m in measures)
        return resident, work

    sizes = [block_models] if block_models else list(range(count, 0, -1))
    if world > 1 and not block_models:  # enough group pairs for every rank: k groups give k(k+1)/2 units
        k = math.ceil((math.sqrt(8 * world + 1) - 1) / 2)
        sizes = [g for g in sizes if math.ceil(count / g) >= k] or [1]
    for g in sizes:
        resident, work = need(g)
        if resident + work <= budget or block_models:
            groups = [list(range(i, min(i + g, count))) for i in range(0, count, g)]
            units = [(i, j) for i in range(len(groups)) for j in range(i, len(groups))]
            return AtlasPlan(groups, units, resident, work, budget)
    resident, work = need(1)
    raise MemoryBudgetError(
        f"the atlas of {count} models ({n} samples) needs at least {format_bytes(resident)} of features for one "
        f"model pair and {format_bytes(work)} of workspace, but the memory budget is {format_bytes(budget)}. "
        "Options: memory='...' (a larger budget), fewer layers (layers=[...]), max_samples=..., sketch=k"
    )


# -------------------------------------------------------------------------------- running it
@dataclass
class AtlasJob:
    """Everything one atlas run needs (see :func:`run_atlas`)."""

    sets: list[FeatureSet]
    rows: list  # per set: None or the row index putting it on the common ids
    names: list[str]
    layers: list[list[str]]
    measures: list[str]
    options: Mapping[str, Mapping]
    n: int
    inference: Mapping
    sketch: int | None = None
    sketch_seed: int = 0
    projected: dict = field(default_factory=dict)


def resident_layers(job: AtlasJob, i: int) -> list[Tensor]:
    """Model i's selected layers as resident tensors on the common ids (memory-mapped files read now)."""
    s, rows = job.sets[i], job.rows[i]
    out = []
    for layer in job.layers[i]:
        t = s[layer]
        if rows is not None:
            t = t[torch.from_numpy(rows)]  # a gather: a copy in RAM
        elif _mapped(t):
            t = t.clone()  # read the file now: the grids read every layer many times
        out.append(t)
    if job.sketch is not None:
        from ..measures.sketch import LayerSketch

        sketcher = LayerSketch(job.sketch, job.sketch_seed, side=i)
        out = sketcher(out)
        job.projected[i] = [sketcher.projected(j) for j in range(len(out))]
    return out


def _mapped(t: Tensor) -> bool:
    """A tensor over a read-only (memory-mapped) buffer: copied into RAM before the grids read it."""
    try:
        return not t.numpy().flags.writeable
    except (RuntimeError, TypeError):
        return False


def _grids(job: AtlasJob, xs: list[Tensor], ys: list[Tensor] | None, proj) -> dict[str, Tensor]:
    """Every measure's grid between ``xs`` and ``ys`` (None: xs with itself; per-layer work once)."""
    out = {}
    for m in job.measures:
        corrected = get_measure(m).sketch_corrected if job.sketch is not None else None
        if corrected is not None:  # the measure's declared projection-corrected form
            from .many import sketched_grid

            both = xs if ys is None else xs + ys
            g = sketched_grid(both, job.sketch, proj[0] if ys is None else proj[0] + proj[1], corrected)
            out[m] = g if ys is None else g[: len(xs), len(xs) :]
        else:
            out[m] = measure_grid(xs, ys, m, **dict(job.options.get(m, {}))).cpu()
    return out


def _block_rows(job: AtlasJob, a: int, b: int, values: Tensor, m: str, route: str) -> list[dict]:
    return [
        {"model_a": job.names[a], "layer_a": la, "model_b": job.names[b], "layer_b": lb, "measure": m,
         "value": float(values[i, j]), "n": job.n, "route": route}
        for i, la in enumerate(job.layers[a])
        for j, lb in enumerate(job.layers[b])
    ]


def _calibration_rows(job: AtlasJob, a: int, b: int, xs, ys, m: str, rows: list[dict]) -> list[dict]:
    """Calibrate model pair (a, b) of measure m: every cell against its own null and the aggregate
    against the aggregate's (:func:`repsim.calibrate_grid`, one permutation shared by all layers)."""
    from ..inference.calibration import calibrate_grid

    info = get_measure(m)
    how = job.inference.get("aggregate", "max")
    res = calibrate_grid(xs, ys, m, aggregate=_grid_aggregate(how, info.larger_is_more_similar),
                         n_permutations=int(job.inference["calibrate"]), alpha=float(job.inference.get("alpha", 0.05)),
                         seed=int(job.inference.get("seed", 0)) + 7919 * a + b,
                         **dict(job.options.get(m, {})))  # fmt: skip
    cells = res.cells
    for row, (_, c) in zip(rows, cells.iterrows(), strict=True):
        row.update(calibrated=float(c["calibrated"]), threshold=float(c["threshold"]), p_value=float(c["p_value"]))
    label = f"<{how}>"
    return [{"model_a": job.names[a], "layer_a": label, "model_b": job.names[b], "layer_b": label, "measure": m,
             "value": res.observed, "n": job.n, "route": "calibrated", "calibrated": res.score,
             "threshold": res.threshold, "p_value": res.p_value}]  # fmt: skip


def _unit_blocks(job: AtlasJob, ga: list[int], gb: list[int], same: bool, done: set, cache: dict) -> dict:
    """The rows of every model pair of one group pair that is not done yet: {(a, b): rows}."""
    pairs = [(a, b) for a in ga for b in gb if (not same or a <= b) and (a, b) not in done]
    if not pairs:
        return {}
    for i in {*ga, *gb}:
        if i not in cache:
            cache[i] = resident_layers(job, i)
    xs = [t for i in ga for t in cache[i]]
    ys = None if same else [t for i in gb for t in cache[i]]
    proj = ([p for i in ga for p in job.projected.get(i, [])], [p for i in gb for p in job.projected.get(i, [])])
    grids = _grids(job, xs, ys, proj)
    back = {m: _grids(job, ys, xs, proj[::-1])[m] for m in job.measures
            if not same and not get_measure(m).symmetric}  # fmt: skip
    off_a = np.cumsum([0] + [len(job.layers[i]) for i in ga])
    off_b = off_a if same else np.cumsum([0] + [len(job.layers[i]) for i in gb])
    pos_a, pos_b = {i: k for k, i in enumerate(ga)}, {i: k for k, i in enumerate(gb)}
    out = {}
    for a, b in pairs:
        rows = []
        ra = slice(off_a[pos_a[a]], off_a[pos_a[a] + 1])
        rb = slice(off_b[pos_b[b]], off_b[pos_b[b] + 1])
        for m in job.measures:
            route = "sketch" if job.sketch is not None else "grid"
            block = _block_rows(job, a, b, grids[m][ra, rb], m, route)
            if job.inference.get("calibrate") and a != b:
                block += _calibration_rows(job, a, b, cache[a], cache[b], m, block)
            rows += block
            if a != b and not get_measure(m).symmetric:
                reverse = back[m][rb, ra] if m in back else grids[m][rb, ra]
                rows += _block_rows(job, b, a, reverse, m, route)
        out[(a, b)] = rows
    return out


def _block_path(out: Path, a: int, b: int) -> Path:
    return out / "blocks" / f"{a:05d}_{b:05d}.json"


def run_atlas(job: AtlasJob, plan: AtlasPlan, out: Path | None, workspace: int, progress: bool) -> pd.DataFrame:
    """Compute the missing model-pair blocks of the plan's units (this rank's share under a process
    group), write each as it finishes, and return the whole table in model order."""
    from tqdm.auto import tqdm

    from ..measures.blocked import workspace_limit

    rank, world = D.rank_and_world()
    blocks: dict[tuple[int, int], list[dict]] = {}
    done = set()
    if out is not None:
        for path in (out / "blocks").glob("*.json"):
            a, b = (int(p) for p in path.stem.split("_"))
            blocks[(a, b)] = json.loads(path.read_text())
            done.add((a, b))
    mine = [u for k, u in enumerate(plan.units) if k % world == rank]
    cache: dict[int, list[Tensor]] = {}
    with workspace_limit(workspace):
        for gi, gj in tqdm(mine, desc="model pairs", disable=not progress or rank != 0):
            needed = {*plan.groups[gi], *plan.groups[gj]}
            for i in [i for i in cache if i not in needed]:
                del cache[i]  # two groups resident at a time
            new = _unit_blocks(job, plan.groups[gi], plan.groups[gj], gi == gj, done, cache)
            for (a, b), rows in new.items():
                if out is not None:
                    atomic_write_text(_block_path(out, a, b), json.dumps(rows))
                blocks[(a, b)] = rows
    if world > 1:
        merged: dict = {}
        for part in D.gather(blocks):
            merged.update(part)
        blocks = merged
    rows = [r for key in sorted(blocks) for r in blocks[key]]
    return _ordered(pd.DataFrame(rows), job)


def _ordered(table: pd.DataFrame, job: AtlasJob) -> pd.DataFrame:
    """Rows by model pair, then measure, then layer pair (the order of a single process's run)."""
    if table.empty:
        return table
    model = {nm: i for i, nm in enumerate(job.names)}
    measure = {m: i for i, m in enumerate(job.measures)}
    key = pd.DataFrame({"a": table["model_a"].map(model), "b": table["model_b"].map(model),
                        "m": table["measure"].map(measure)})  # fmt: skip
    low, high = np.minimum(key["a"], key["b"]), np.maximum(key["a"], key["b"])
    order = np.lexsort((np.arange(len(table)), key["m"], high, low))
    return table.iloc[order].reset_index(drop=True)


def manifest(job: AtlasJob, contents: list[str]) -> dict:
    """What an ``out`` folder's blocks were computed from; a restart must match it to reuse them."""
    ids = hashlib.sha256(repr(job.sets[0].ids if job.rows[0] is None else [job.sets[0].ids[i] for i in job.rows[0]])
                         .encode()).hexdigest()  # fmt: skip
    return {"models": job.names, "layers": job.layers, "measures": job.measures,
            "options": {m: {k: repr(v) for k, v in dict(o).items()} for m, o in job.options.items()},
            "n": job.n, "ids_sha256": ids, "sources": contents, "sketch": job.sketch, "sketch_seed": job.sketch_seed,
            "inference": {k: repr(v) for k, v in dict(job.inference).items()}}  # fmt: skip


def check_manifest(out: Path, wanted: dict) -> None:
    """Write the manifest of a new ``out`` folder, or refuse one that holds another atlas's blocks."""
    path = out / MANIFEST
    if path.exists():
        stored, wanted = json.loads(path.read_text()), json.loads(json.dumps(wanted))
        if stored != wanted:
            differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            raise ValueError(
                f"{out} holds the blocks of another atlas (differs in {differ}); give another out= folder or "
                "delete that one"
            )
        return
    if D.rank_and_world()[0] == 0:
        atomic_write_text(path, json.dumps(wanted, indent=1))
