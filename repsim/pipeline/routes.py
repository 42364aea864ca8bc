"""One comparison's pass (:class:`Pass`): each requested measure resolved once into a
:class:`MeasureSpec`, the memory plan from the first batch's shapes, the streamed states and kept
samples over the batches, and the table at the end.

Life cycle (what :func:`repsim.compare` calls, in order)::

    specs = resolve_measures(measures, measure_options)      # registry entries, options, kinds: once
    run = Pass(specs, setup)                                 # no work yet
    for batch in walk(loader):                               # repsim.networks.batches
        xs, ys, outputs = forward(batch)                     # repsim.networks.hooks
        run.update(batch, xs, ys, outputs)                   # the first batch makes the plan
    result = run.finish()                                    # a Comparison (routes, rows, warnings)

A measure is streamed (float64 feature moments, or its registry accumulator), stored (every
sample's features kept and the measure computed at the end, exact), capped (the first
``sample_cap`` samples), functional (the models' outputs) or batch-dependent (``minibatch_cka``).
What the pipeline does differently per measure is read from the registry entry's declared
capabilities (``gram_pass``, ``sketch_corrected``, ``streaming``, ``needs_labels``, ...), never
from its name.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from ..core import distributed as D
from ..measures.cka import CHANCE_WARNING_LEVEL, BiasedCKAChanceWarning, biased_cka_chance_level
from ..measures.gram_pass import fused_gram_grids
from ..measures.knn import knn_cache
from ..measures.moments import StreamingMoments
from ..measures.registry import MeasureInfo, call_with_supported, get_measure, registered_names, renamed_options
from ..measures.sketch import LayerSketch
from ..measures.streaming_cka import MinibatchCKA
from ..networks.hooks import OUTPUT_LAYER
from .comparison import Comparison
from .plans import MeasureRequest, MemoryPlan, plan_routes

# Batch-dependent measures: their value depends on how the loader batches the samples, so they are
# not registry measures (a registry measure is a function of x and y). minibatch CKA (Nguyen et al.
# 2021) is the one; its accumulator is built from compare's dtype.
BATCH_DEPENDENT: dict[str, Callable[[torch.dtype | None], object]] = {
    # compare's float64 default is for the exact routes; the minibatch estimator follows the precision
    # policy instead: each b x b Gram in the features' own dtype after centring in that dtype, then
    # double-centred and reduced in float64 (pytorch-cka's float32 arithmetic without its drift)
    "minibatch_cka": lambda dtype: MinibatchCKA(debiased=True, dtype=None if dtype == torch.float64 else dtype),
}
COMPARE_ONLY = BATCH_DEPENDENT  # its name before 0.4
CHECK_EVERY = 16  # batches between reads of the device-side NaN/Inf flags (see Pass._check_finite)


def available_measures() -> list[str]:
    """Every name ``compare`` accepts: the whole registry plus the batch-dependent ``minibatch_cka``."""
    return sorted({*registered_names(), *BATCH_DEPENDENT})


@dataclass
class MeasureSpec:
    """One requested measure, resolved once: its registry entry (None for a batch-dependent one), the
    user's options (checked, under their current names), its kind, and the route the plan gives it."""

    name: str
    info: MeasureInfo | None
    options: dict
    kind: str
    """"moments" | "accumulator" | "capped" | "functional" | "minibatch"."""
    route: str = ""
    exact_route: str = ""
    """The route before ``sketch=k`` relabels it (what layers no wider than k get: they are not projected)."""

    @property
    def batch_dependent(self) -> bool:
        return self.info is None

    @property
    def needs_labels(self) -> bool:
        return self.info is not None and self.info.needs_labels

    @property
    def stored(self) -> bool:
        return self.route.startswith("stored")

    @property
    def resolved(self) -> dict:
        """The options with the entry's fixed defaults (what the measure computes with)."""
        return {} if self.info is None else {**self.info.defaults, **self.options}

    @property
    def biased_cka(self) -> bool:
        """Biased linear CKA, whose chance level grows with width/n (BiasedCKAChanceWarning)."""
        return self.info is not None and self.info.gram_pass == "cka" and not self.resolved.get("debiased", False)

    def with_dtype(self, dtype) -> dict:
        """The options, with compare's precision where the measure takes a ``dtype`` it was not given."""
        if self.info is not None and "dtype" in self.info.options() and "dtype" not in self.options:
            return {**self.options, "dtype": dtype}
        return dict(self.options)

    def request(self, sketch: int | None, batch_size: int) -> MeasureRequest:
        kind = self.kind
        return MeasureRequest(
            self.name, options=self.options, info=self.info, streaming_moments=kind == "moments",
            capped=kind == "capped", functional=kind == "functional",
            minibatch=batch_size if kind == "minibatch" else None,
            sketch=sketch if kind in ("moments", "accumulator") else None,
        )  # fmt: skip


def resolve_measures(measures: Sequence[str] | str, measure_options: Mapping[str, Mapping] | None) -> list[MeasureSpec]:
    """The requested measures, deduplicated in order, each resolved once into a :class:`MeasureSpec`;
    every option is checked here, before any work (a ValueError names the measure and the option)."""
    measures = [measures] if isinstance(measures, str) else list(dict.fromkeys(measures))
    known = available_measures()
    unknown = [m for m in measures if m not in known]
    if unknown or not measures:
        raise ValueError(f"unknown measure(s) {unknown}; choose from {known}")
    options = check_options(measures, measure_options)
    specs = []
    for name in measures:
        if name in BATCH_DEPENDENT:
            if options.get(name):
                raise ValueError(f"{name} takes no options in compare; got {sorted(options[name])}")
            specs.append(MeasureSpec(name, None, {}, "minibatch"))
            continue
        info = get_measure(name)
        opts = renamed_options(name, info.renamed, options.get(name, {}))
        info.resolve_options(opts)  # unknown options and ones the entry fixes, refused now
        specs.append(MeasureSpec(name, info, opts, _kind(info)))
    return specs


def _kind(info: MeasureInfo) -> str:
    if info.needs_outputs:
        return "functional"
    if info.streaming:
        return "moments" if info.from_moments is not None else "accumulator"
    return "capped"


def check_measures(measures: Sequence[str] | str) -> list[str]:
    """The requested measure names, deduplicated in order; a ValueError lists the known ones."""
    return [spec.name for spec in resolve_measures(measures, None)]


def check_options(measures: list[str], options: Mapping[str, Mapping] | None) -> dict[str, dict]:
    """``measure_options`` as plain dicts; refused when it names a measure that is not requested."""
    options = {k: dict(v) for k, v in (options or {}).items()}
    stray = sorted(set(options) - set(measures))
    if stray:
        raise ValueError(f"measure_options names measures that are not requested: {stray}")
    return options


@dataclass
class Setup:
    """What one pass is run with (fixed before the first batch)."""

    layers_a: list[str]
    layers_b: list[str]
    self_grid: bool
    """The same features on both sides (a model with itself, same layers, same inputs): kept once."""
    shard: D.Shard
    budget: int
    n_expected: int | None
    sample_cap: int
    dtype: torch.dtype | None = torch.float64
    sketch: int | None = None
    sketch_seed: int = 0
    inference: dict | None = None
    tokens: bool = False
    """pool="tokens": every real token a sample; its sentence's order key, repeated."""
    dry_run: bool = False
    models: tuple[str, str] = ("model_a", "model_b")


@dataclass
class Step:
    """One batch's features as the measures see them (token rows for pool="tokens", projected for sketch=k)."""

    xs: list[Tensor]
    ys: list[Tensor] | None
    """None when both sides are the same features (a self-grid)."""
    keys: Tensor
    rows: int
    size: int


class Pass:
    """All the state of one comparison: ``update(batch)`` for every batch (the first makes the plan,
    :meth:`plan`), then :meth:`finish` gives the :class:`~repsim.pipeline.comparison.Comparison`."""

    def __init__(self, specs: list[MeasureSpec], setup: Setup) -> None:
        self.specs, self.setup = specs, setup
        k, seed = setup.sketch, setup.sketch_seed
        self.sketchers = (LayerSketch(k, seed, 0), LayerSketch(k, seed, 1)) if k else None
        self.kept = Kept(len(setup.layers_a), len(setup.layers_b))
        self.memory: MemoryPlan | None = None
        self.stream: StreamingMoments | None = None
        self.accumulators: dict[str, object] = {}
        self.need_shift = False
        self.batches = 0
        self.first_bad: Tensor | None = None  # per layer: the first batch with NaN/Inf, -1 for none

    @property
    def functional(self) -> bool:
        return any(s.kind == "functional" for s in self.specs)

    def step(self, batch, xs: list[Tensor], ys: list[Tensor]) -> Step:
        keys, rows, self_grid = batch.keys, batch.size, self.setup.self_grid
        if self.setup.tokens:  # every real token a sample; its sentence's order key, repeated
            counts = token_counts(batch.inputs, batch.other, xs[0].shape[0], ys[0].shape[0])
            keys, rows = keys.repeat_interleave(counts), int(counts.sum())
        if self.sketchers is not None:  # independent projections per model: never a self-grid
            xs, ys, self_grid = self.sketchers[0](xs), self.sketchers[1](ys), False
        return Step(xs, None if self_grid else ys, keys, rows, batch.size)

    def update(self, batch, xs: list[Tensor], ys: list[Tensor], outputs: tuple | None) -> None:
        """Add one batch: checked (NaN/Inf named by model and layer), planned (the first), accumulated, kept."""
        self._check_finite(batch.index, xs, ys)
        step = self.step(batch, xs, ys)
        if self.memory is None:
            self.plan(step)
        if self.setup.dry_run:
            return
        if self.need_shift:  # once, before the first update: every rank's accumulators shift by the same means
            agree_on_shift(self.accumulators, step.xs, step.ys)
            self.need_shift = False
        if self.stream is not None:
            self.stream.update(step.xs, step.ys)
        for acc in self.accumulators.values():
            acc.update(step.xs, step.ys)
        # ys of a self-grid are the xs: the kept samples hold both sides
        self.kept.add(step.xs, step.xs if step.ys is None else step.ys, outputs, batch.labels, step.keys, step.rows)
        self.batches += 1

    def _check_finite(self, index: int, xs: list[Tensor], ys: list[Tensor]) -> None:
        """NaN/Inf refused, naming the model, the layer and the batch where they appeared. On the host every
        batch is checked; on a device the first bad batch of each layer is kept on the device and read every
        ``CHECK_EVERY`` batches and at the end, so the per-batch loop does not wait for the host."""
        layers = [*xs, *ys] if ys is not xs else xs
        # a sum carries any NaN/Inf in one vectorised read (torch.isfinite(t).all(), or a float64 sum, costs as
        # much as a Gram product on wide layers); it overflows only for float32 features beyond ~1e31, which no
        # float32 product survives either; float16 is summed in float32 (its range ends at 65504)
        bad = torch.stack([~(t.sum(dtype=torch.float32) if t.dtype == torch.float16 else t.sum()).isfinite()
                           for t in layers])  # fmt: skip
        first = bad.long() * (index + 1) - 1  # this batch's index where bad, else -1
        self.first_bad = first if self.first_bad is None else torch.where(self.first_bad >= 0, self.first_bad, first)
        # under a process group every rank must stop together: the flags are read in finish, collectively
        alone = self.setup.shard.world == 1
        if alone and (bad.device.type == "cpu" or self.batches % CHECK_EVERY == CHECK_EVERY - 1):
            self.raise_if_not_finite()

    def raise_if_not_finite(self) -> None:
        """The NaN/Inf refusal, if a layer had any; under a process group one collective, and every rank raises."""
        s = self.setup
        found = [] if self.first_bad is None else self.first_bad.tolist()
        ranks = D.gather(found) if s.shard.world > 1 else [found]
        names = [(s.models[0], a) for a in s.layers_a] + [(s.models[1], b) for b in s.layers_b]
        where = "" if s.shard.world == 1 else " on rank {}"
        bad = [
            f"{model} layer {layer!r} (batch {i}{where.format(r)})"
            for r, flags in enumerate(ranks)
            for (model, layer), i in zip(names, flags, strict=False)  # a self-grid has layers_a only
            if i >= 0
        ]
        if bad:
            raise ValueError(
                f"NaN or Inf in the features of {', '.join(bad)} of the loader; check the inputs of that batch and "
                "the model's numerics (autocast=False, a smaller learning rate when training)"
            )

    def plan(self, step: Step | None) -> MemoryPlan:
        """The memory plan from the first batch's shapes (None: this rank has none; it joins the collective),
        the routes set on the specs, the streamed states built; the same on every rank."""
        s = self.setup
        shapes = None if step is None else first_shapes(step.xs, step.ys, s.layers_a, s.layers_b, step.size)
        self.memory = collective_plan(self.specs, s.shard, shapes, s.n_expected, s.sample_cap, s.budget, s.sketch,
                                      s.inference)  # fmt: skip
        labels = dict(zip(self.memory.table["measure"], self.memory.table["route"], strict=True))
        for spec in self.specs:
            spec.route = labels[spec.name]
            spec.exact_route = _unsketched(spec.route, s.sketch)
            if spec.kind == "minibatch":
                self.accumulators[spec.name] = BATCH_DEPENDENT[spec.name](s.dtype)
            elif spec.kind == "moments" and not spec.stored:
                self.stream = self.stream or StreamingMoments(dtype=s.dtype)
            elif spec.kind == "accumulator" and not spec.stored:
                build = spec.info.accumulator
                self.accumulators[spec.name] = call_with_supported(build, dtype=s.dtype, **spec.resolved)
        # every sample for the stored route; else the first sample_cap (capped measures, inference) or none
        self.kept.cap = sys.maxsize if self.stores_all else self.memory.store_samples
        self.need_shift = s.shard.world > 1 and any(hasattr(a, "set_shift") for a in self.accumulators.values())
        return self.memory

    @property
    def stores_all(self) -> bool:
        return any(spec.stored for spec in self.specs)

    def finish(self, result_on: str = "all") -> Comparison | None:
        """Merge the ranks' states and kept samples, compute every measure's rows: the Comparison."""
        s = self.setup
        if self.need_shift:  # an empty rank joins the shift's collective (the others made it at their first batch)
            agree_on_shift(self.accumulators, None, None)
        self.raise_if_not_finite()  # after the shift: every rank's collectives in the same order
        stream, accumulators = self._merged()
        gathered = self.memory.store_samples and s.shard.world > 1
        kept = self.kept.samples(s.shard, gathered, None if self.stores_all else s.sample_cap)
        capped = kept.head(s.sample_cap)
        n_total = max([stream.n if stream is not None else 0, *(getattr(a, "n", 0) for a in accumulators.values())])
        n_total = n_total or kept.n
        if n_total == 0:
            raise ValueError("the loader yielded no samples")
        if s.shard.world > 1 and result_on == "rank0" and s.shard.rank != 0:
            return None
        rows = Rows(self, kept, capped).all(stream, accumulators, n_total)
        # pool="tokens": each token carries its sentence's order key; inference permutes whole sentences
        blocks = torch.unique(capped.keys, return_inverse=True)[1] if s.tokens and capped.n else None
        table = pd.DataFrame(rows).reindex(columns=_columns(rows))
        samples = (capped.xs, capped.ys)
        return Comparison(table, s.layers_a, s.layers_b, self.memory, self.specs, samples, blocks)

    def _merged(self) -> tuple[StreamingMoments | None, dict[str, object]]:
        """The streamed states, every rank's merged in rank order under a process group (collectives)."""
        if self.setup.shard.world == 1:
            return self.stream, self.accumulators
        stream = self.stream.sync() if self.stream is not None else None
        return stream, {name: _synced(name, acc) for name, acc in self.accumulators.items()}

    def chance_warning(self, result: Comparison | None) -> Comparison | None:
        """One BiasedCKAChanceWarning for the whole comparison, whatever route computed the biased CKA,
        naming the cells whose chance level is high (none for a model compared with itself); the result."""
        if result is None or (self.setup.self_grid and self.sketchers is None):
            return result
        rows = result.table.to_dict("records")
        widths = self.memory.layers
        dims = {(m, layer): int(d) for m, layer, d in widths[["model", "layer", "d"]].itertuples(index=False)}
        biased = {spec.name for spec in self.specs if spec.biased_cka}
        cells = []
        for r in rows:
            p, q = dims.get(("a", r["layer_a"])), dims.get(("b", r["layer_b"]), dims.get(("a", r["layer_b"])))
            if r["measure"] in biased and not math.isnan(r["value"]) and p and q:  # layers, not model outputs
                level = biased_cka_chance_level(r["n"], p, q)
                if level > CHANCE_WARNING_LEVEL:
                    cells.append(f"{r['measure']} ({r['layer_a']}, {r['layer_b']}): {level:.2f}")
        if cells:
            more = f"; ... ({len(cells) - 6} more)" if len(cells) > 6 else ""
            warnings.warn(
                f"biased linear CKA of independent features is this high by chance (above {CHANCE_WARNING_LEVEL}) "
                f"in {len(cells)} cell(s): {'; '.join(cells[:6])}{more}. A raw value there says little: use "
                "debiased_cka (chance level ~0) or inference={'calibrate': ...} for a score that is 0 at chance",
                BiasedCKAChanceWarning,
                stacklevel=5,  # the caller of compare (through its two decorators)
            )
        return result


def _columns(rows: list[dict]) -> list[str]:
    columns = ["layer_a", "layer_b", "measure", "value", "n", "route"]
    return columns + (["error"] if any("error" in r for r in rows) else [])


def _unsketched(route: str, sketch: int | None) -> str:
    """The exact route under a ``sketch k`` label (for the layers the sketch leaves as they are)."""
    if sketch is None or not route.startswith("sketch"):
        return route
    rest = route[len(f"sketch {sketch}") :].lstrip(", ")
    return rest or "moments"


class Rows:
    """The table's rows: every requested measure on every layer pair, by its route. A cell that fails
    (a ValueError: too few samples for its widths, a degenerate layer) is recorded, value NaN and the
    reason in ``error``, and never discards the other cells."""

    def __init__(self, run: Pass, kept: Samples, capped: Samples) -> None:
        self.run, self.kept, self.capped = run, kept, capped
        self.rows: list[dict] = []

    def all(self, stream: StreamingMoments | None, accumulators: dict, n_total: int) -> list[dict]:
        s, kept, capped = self.run.setup, self.kept, self.capped
        names = ([f"{s.models[0]} layer {a!r}" for a in s.layers_a], [f"{s.models[1]} layer {b!r}" for b in s.layers_b])
        try:
            shared = shared_gram_grids(self.run.specs, kept.xs, kept.ys, kept.n, s.sample_cap, s.dtype, names)
        except ValueError:  # a degenerate layer: each measure on its own below, its failing cells recorded
            shared = {}
        for spec in self.run.specs:
            opts = spec.with_dtype(s.dtype)
            if spec.kind == "functional":
                self.functional(spec, opts)
            elif spec.stored:  # exact on every kept sample
                self.grid(spec, shared.get(spec.name), kept, opts)
            elif spec.kind == "capped":  # the first sample_cap samples (with the stored CKA's Gram blocks if shared)
                self.grid(spec, shared.get(spec.name), capped, self.labelled(spec, opts))
            elif spec.kind == "moments":
                self.moments(spec, stream)
            else:
                acc = accumulators[spec.name]
                self.add(spec, lambda acc=acc: acc.compute(), None, getattr(acc, "n", n_total))
        errors = [r["error"] for r in self.rows if "error" in r]
        if self.rows and len(errors) == len(self.rows):
            raise ValueError(f"no cell of the comparison could be computed; the first: {errors[0]}")
        return self.rows

    def labelled(self, spec: MeasureSpec, opts: dict) -> dict:
        return {**opts, "labels": self.capped.labels} if spec.needs_labels else opts

    def functional(self, spec: MeasureSpec, opts: dict) -> None:
        capped = self.capped
        if spec.needs_labels and capped.labels is None:
            raise ValueError(f"{spec.name} needs labels; the loader's batches must carry them ((x, y) or 'labels')")
        value = call_with_supported(spec.info.fn, capped.outputs[0], capped.outputs[1], **self.labelled(spec, opts))
        self.add(spec, lambda: value, None, capped.n, [OUTPUT_LAYER], [OUTPUT_LAYER])

    def grid(self, spec: MeasureSpec, shared: Tensor | None, samples: Samples, opts: dict) -> None:
        from ..measures.registry import measure_grid

        xs, ys = samples.xs, samples.ys
        scope = []  # the neighbour lists the grid used (knn_cache), for the route column

        def computed() -> Tensor:
            with knn_cache() as knn:
                scope.append(knn)
                return measure_grid(xs, ys, spec.info, **opts)

        whole = (lambda: shared) if shared is not None else computed
        # cell by cell (only after the grid failed): the one-shot function, whose errors call the pair x and y
        self.add(spec, whole, lambda i, j: spec.info.fn(xs[i], ys[j], **opts), samples.n)
        if scope and scope[0].computed:  # the lists' route: exact, or the index, its parameters and recall@k
            for row in self.rows:
                if row["measure"] == spec.name:
                    row["route"] = row["route"].split(", knn ")[0] + ", knn " + scope[0].routes()

    def moments(self, spec: MeasureSpec, stream: StreamingMoments) -> None:
        opts = {k: v for k, v in spec.options.items() if k != "dtype"}
        corrected = spec.info.sketch_corrected
        if self.run.sketchers is not None and corrected is not None and not opts.get("debiased", False):
            k, (px, py) = self.run.setup.sketch, self.run.sketchers

            def cell(i: int, j: int) -> Tensor:  # the projection-corrected form
                return corrected(stream.moments(i, j), k, px.projected(i), py.projected(j))

            self.add(spec, None, cell, stream.n)
            return
        resolved = spec.info.resolve_options(opts)

        def cell(i: int, j: int) -> Tensor:
            return call_with_supported(spec.info.from_moments, stream.moments(i, j), **resolved)

        self.add(spec, lambda: stream.compute(spec.name, **opts), cell, stream.n)

    def add(self, spec: MeasureSpec, whole, cell, n: int, la: list[str] | None = None, lb: list[str] | None = None):
        """Rows of one measure: the whole grid at once (one host sync), else cell by cell, a failing cell NaN."""
        la = self.run.setup.layers_a if la is None else la
        lb = self.run.setup.layers_b if lb is None else lb
        values, errors = None, {}
        if whole is not None:
            try:
                values = whole().detach().to("cpu", torch.float64).reshape(len(la), len(lb)).tolist()
            except ValueError as err:
                if cell is None:
                    raise
                first = err
        if values is None:
            values = [[math.nan] * len(lb) for _ in la]
            for i, j in ((i, j) for i in range(len(la)) for j in range(len(lb))):
                try:
                    values[i][j] = float(cell(i, j))
                except ValueError as err:
                    errors[i, j] = f"{spec.name} on ({la[i]}, {lb[j]}) at n = {n}: {err}"
            if whole is not None and not errors:
                raise first  # the grid failed where no single cell does: not a per-cell cause
        for i, a in enumerate(la):
            for j, b in enumerate(lb):
                row = {"layer_a": a, "layer_b": b, "measure": spec.name, "value": values[i][j], "n": n,
                       "route": self.route(spec, i, j)}  # fmt: skip
                if (i, j) in errors:
                    row["error"] = errors[i, j]
                self.rows.append(row)

    def route(self, spec: MeasureSpec, i: int, j: int) -> str:
        """The cell's route: the exact one where sketch=k left both layers as they are (no wider than k)."""
        sketchers = self.run.sketchers
        if sketchers is None or spec.kind == "functional" or sketchers[0].projected(i) or sketchers[1].projected(j):
            return spec.route
        return spec.exact_route


def shared_gram_grids(specs: list[MeasureSpec], xs: list[Tensor], ys: list[Tensor], n_kept: int, sample_cap: int,
                      dtype, names: tuple[list[str], list[str]] | None = None) -> dict[str, Tensor]:  # fmt: skip
    """Stored-route linear CKA (biased and debiased) and, on the same samples, Pearson RSA, from one pass
    over the centred Gram blocks (:func:`repsim.measures.gram_pass.fused_gram_grids`): {name: grid}.
    Which measures fuse is the registry's ``gram_pass`` declaration; the pass takes the options below."""
    ckas = {
        s.name: bool(s.resolved.get("debiased", False))
        for s in specs if s.stored and s.info.gram_pass == "cka" and set(s.resolved) <= {"debiased"}
    }  # fmt: skip
    rsas = {
        s.name: s.resolved.get("rdm", "cosine")
        for s in specs
        if s.kind == "capped" and s.info.gram_pass == "rsa" and s.resolved.get("compare", "pearson") == "pearson"
        and set(s.resolved) <= {"rdm", "compare"}
    }  # fmt: skip
    fuse_rsa = bool(ckas) and bool(rsas) and n_kept <= sample_cap and dtype == torch.float64
    if len(ckas) + (len(rsas) if fuse_rsa else 0) < 2:
        return {}
    return fused_gram_grids(xs, ys, ckas, rsas if fuse_rsa else {}, dtype, names)


def first_shapes(xs, ys, layers_a, layers_b, batch_size: int):
    """What the plan needs of the first batch: each layer's width, the features' item size, the batch size."""
    dims_x = dict(zip(layers_a, (x.shape[1] for x in xs), strict=True))
    dims_y = None if ys is None else dict(zip(layers_b, (y.shape[1] for y in ys), strict=True))
    return dims_x, dims_y, max(t.element_size() for t in [*xs, *(ys or [])]), batch_size


def collective_plan(specs: list[MeasureSpec], shard, shapes, n, sample_cap, budget, sketch, inference) -> MemoryPlan:
    """The memory plan from the first batch's shapes; under a process group every rank makes the same
    one (the first rank with data gives the shapes, the smallest budget counts; an empty rank joins)."""
    if shard.world > 1:
        gathered = D.gather((shapes, budget))
        shapes = next((s for s, _ in gathered if s is not None), None)
        budget = min(b for _, b in gathered)
    if shapes is None:
        raise ValueError("the loader yielded no samples")
    dims_x, dims_y, itemsize, batch_size = shapes
    requests = [spec.request(sketch, batch_size) for spec in specs]
    memory_plan = plan_routes(requests, dims_x, dims_y, n, sample_cap, budget, itemsize, bool(inference))
    if sketch is not None:  # say on every row that the features were projected
        memory_plan.table["route"] = [
            f"sketch {sketch}" if r.startswith(("moments", "sketch")) else f"sketch {sketch}, {r}"
            for r in memory_plan.table["route"]
        ]
    return memory_plan


def agree_on_shift(accumulators: dict, xs: list[Tensor] | None, ys: list[Tensor] | None) -> None:
    """Every rank adopts the first batch means of the lowest rank that has data (one collective, once)."""
    mine = None
    if xs is not None:
        mine = (
            [x.to(torch.float64).mean(0).cpu() for x in xs],
            None if ys is None else [y.to(torch.float64).mean(0).cpu() for y in ys],
        )
    chosen = next((s for s in D.gather(mine) if s is not None), None)
    if chosen is None or xs is None:
        return
    device = xs[0].device
    shift_x = [s.to(device) for s in chosen[0]]
    shift_y = None if chosen[1] is None else [s.to(device) for s in chosen[1]]
    for acc in accumulators.values():
        if hasattr(acc, "set_shift"):
            acc.set_shift(shift_x, shift_y)


def _synced(name: str, acc):
    """Every rank's state of one accumulator, merged in rank order (see Accumulator.sync)."""
    if not hasattr(acc, "sync"):
        raise ValueError(f"{name}'s accumulator cannot be merged across ranks; run it with distributed=False")
    return acc.sync()


@dataclass
class Samples:
    """Kept samples in the global order: their order keys, each layer's features, the two models'
    outputs (functional measures) and the labels; None where nothing was kept."""

    keys: Tensor | None
    xs: list[Tensor | None]
    ys: list[Tensor | None]
    outputs: list[Tensor | None]
    labels: Tensor | None

    @property
    def n(self) -> int:
        return 0 if self.keys is None else self.keys.shape[0]

    def head(self, k: int) -> Samples:
        """The first ``k`` samples (the capped measures' and inference's)."""

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:k]

        return Samples(cut(self.keys), [cut(t) for t in self.xs], [cut(t) for t in self.ys],
                       [cut(t) for t in self.outputs], cut(self.labels))  # fmt: skip


@dataclass
class Kept:
    """The samples whose features are kept (stored route, capped measures, inference), batch by batch.

    Each rank keeps its own first ``cap`` samples: the global first ones are among them.
    """

    n_a: int
    n_b: int
    a: list[list[Tensor]] = field(init=False)
    b: list[list[Tensor]] = field(init=False)
    outputs: list[list[Tensor]] = field(init=False)
    keys: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    n: int = 0
    cap: int = 0
    """Samples whose features are kept, set by the memory plan."""

    def __post_init__(self) -> None:
        self.a, self.b = [[] for _ in range(self.n_a)], [[] for _ in range(self.n_b)]
        self.outputs = [[], []]

    def add(self, xs, ys, outputs, labels, keys, rows: int) -> None:
        if self.n >= self.cap:
            return
        take = min(self.cap - self.n, rows)
        for chunks, f in zip(self.a + self.b, xs + ys, strict=True):
            chunks.append(f[:take])
        if outputs is not None:
            self.outputs[0].append(outputs[0][:take])
            self.outputs[1].append(outputs[1][:take])
        if labels is not None:
            self.labels.append(labels[:take])
        self.keys.append(keys[:take])
        self.n += take

    def samples(self, shard: D.Shard, gathered: bool, limit: int | None) -> Samples:
        """The kept samples as tensors; ``gathered``: every rank's, in the global order (the first ``limit``)."""
        xs, ys = [_released(c) for c in self.a], [_released(c) for c in self.b]
        outputs = [_released(c) for c in self.outputs]
        keys, labels = _released(self.keys), _released(self.labels)
        if not gathered:
            return Samples(keys, xs, ys, outputs, labels)
        device = xs[0].device if xs and xs[0] is not None else torch.device("cpu")
        keys, columns = D.in_global_order(keys, [*xs, *ys, *outputs, labels], limit)
        columns = [None if t is None else t.to(device) for t in columns]
        n_a, n_b = len(xs), len(ys)
        return Samples(keys, columns[:n_a], columns[n_a : n_a + n_b], columns[n_a + n_b : -1], columns[-1])


def _released(chunks: list[Tensor]) -> Tensor | None:
    """The kept batches of one layer as one tensor; the batches are released at once, so the stored
    route never holds its features twice (the memory plan counts them once)."""
    out = torch.cat(chunks) if chunks else None
    chunks.clear()
    return out


def token_counts(in_a, in_b, rows_a: int, rows_b: int) -> Tensor:
    """Real tokens per sentence of one batch for pool="tokens"; both models must see the same tokens."""
    masks = [x.get("attention_mask") if isinstance(x, Mapping) else None for x in (in_a, in_b)]
    mask_a, mask_b = (m.cpu() if m is not None else None for m in masks)
    if (mask_a is None) != (mask_b is None) or (
        mask_a is not None and (mask_a.shape != mask_b.shape or not torch.equal(mask_a, mask_b))
    ):
        raise ValueError(
            "pool='tokens' needs both models to see the same tokens, but their attention masks differ "
            "(different tokenizers?); compare them on shared words instead: "
            "repsim.compare_texts(..., unit='word')"
        )
    if mask_a is None:
        raise ValueError("pool='tokens' needs dict batches with an 'attention_mask' (see repsim.text_batches)")
    counts = mask_a.bool().sum(dim=1)
    if rows_a != rows_b or rows_a != int(counts.sum()):
        raise ValueError(
            f"pool='tokens': the layers gave {rows_a} and {rows_b} token rows for {int(counts.sum())} real tokens; "
            "hook modules whose outputs are over the input's tokens"
        )
    return counts
