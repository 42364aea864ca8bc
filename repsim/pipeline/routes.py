"""How ``compare`` computes each measure: its kind from the registry, its route from the memory plan.

A measure is streamed (float64 feature moments, or its registry accumulator), stored (every
sample's features kept and the measure computed at the end, exact), capped (the first
``sample_cap`` samples), functional (the models' outputs) or ``minibatch_cka``. :class:`Plan`
holds the choice and the streamed states; :func:`collective_plan` makes the memory plan (one
for every rank); :func:`measure_rows` turns the states and the kept samples into table rows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import distributed as D
from ..measures.moments import StreamingMoments
from ..measures.registry import call_with_supported, get_measure, measure_grid, registered_names
from ..measures.sketch import LayerSketch, sketched_linear_cka
from ..measures.streaming_cka import MinibatchCKA
from ..networks.hooks import OUTPUT_LAYER
from .plans import MeasureRequest, MemoryPlan, plan_routes

# minibatch CKA (Nguyen et al. 2021) is compare-only: its value depends on the batches, so it is
# not a registry measure. Every other name comes from the registry (repsim.measures.registry).
COMPARE_ONLY: dict[str, Callable[[torch.dtype | None], object]] = {
    "minibatch_cka": lambda dtype: MinibatchCKA(debiased=True, dtype=dtype),
}


def available_measures() -> list[str]:
    """Every name ``compare`` accepts: the whole registry plus ``minibatch_cka``."""
    return sorted({*registered_names(), *COMPARE_ONLY})


def check_measures(measures: Sequence[str] | str) -> list[str]:
    """The requested measure names, deduplicated in order; a ValueError lists the known ones."""
    if isinstance(measures, str):
        measures = [measures]
    known = available_measures()
    unknown = [m for m in measures if m not in known]
    if unknown or not measures:
        raise ValueError(f"unknown measure(s) {unknown}; choose from {known}")
    return list(dict.fromkeys(measures))


def check_options(measures: list[str], options: Mapping[str, Mapping] | None) -> dict[str, dict]:
    """``measure_options`` as plain dicts; refused when it names a measure that is not requested."""
    options = {k: dict(v) for k, v in (options or {}).items()}
    stray = sorted(set(options) - set(measures))
    if stray:
        raise ValueError(f"measure_options names measures that are not requested: {stray}")
    return options


class Plan:
    """How each requested measure is computed: its kind from the registry, its route from the memory plan."""

    def __init__(self, measures: list[str], dtype: torch.dtype | None, options: dict[str, dict]) -> None:
        self.options = options
        self.dtype = dtype
        self.order = list(measures)
        self.kind: dict[str, str] = {}  # "moments" | "accumulator" | "capped" | "functional" | "minibatch"
        self.needs_labels: set[str] = set()
        for name in measures:
            if name in COMPARE_ONLY:
                self.kind[name] = "minibatch"
                continue
            info = get_measure(name)
            if info.needs_labels:
                self.needs_labels.add(name)
            if info.needs_outputs:
                self.kind[name] = "functional"
            elif info.streaming and info.from_moments is not None:
                self.kind[name] = "moments"
            elif info.streaming:
                self.kind[name] = "accumulator"
            else:
                self.kind[name] = "capped"
        self.functional = [m for m in measures if self.kind[m] == "functional"]
        self.memory: MemoryPlan | None = None
        self.routes: dict[str, str] = {}
        self.stream: StreamingMoments | None = None
        self.accumulators: dict[str, object] = {}
        self.sketch: int | None = None
        self.sketchers: tuple[LayerSketch, LayerSketch] | None = None  # the two models' projections (sketch=k)
        self.keep_capped = False  # set when inference needs the capped samples
        self.tokens = False  # pool="tokens": samples are tokens, blocks are their sentences

    def requests(self, sketch: int | None, batch_size: int) -> list[MeasureRequest]:
        out = []
        for name in self.order:
            kind = self.kind[name]
            out.append(
                MeasureRequest(
                    name,
                    options=self.options.get(name, {}),
                    streaming_moments=kind == "moments",
                    capped=kind == "capped",
                    functional=kind == "functional",
                    minibatch=batch_size if kind == "minibatch" else None,
                    sketch=sketch if kind in ("moments", "accumulator") and sketch is not None else None,
                )
            )
        return out

    def route(self, memory: MemoryPlan, sketch: int | None) -> None:
        """Build the accumulators of the streamed routes; stored ones are computed in measure_rows."""
        self.memory, self.sketch = memory, sketch
        self.routes = dict(zip(memory.table["measure"], memory.table["route"], strict=True))
        for name in self.order:
            kind, route = self.kind[name], self.routes[name]
            if kind == "minibatch":
                self.accumulators[name] = COMPARE_ONLY[name](self.dtype)
            elif kind == "moments" and not route.startswith("stored"):
                self.stream = self.stream or StreamingMoments(dtype=self.dtype)
            elif kind == "accumulator" and not route.startswith("stored"):
                info = get_measure(name)
                self.accumulators[name] = call_with_supported(
                    info.accumulator, dtype=self.dtype, **info.defaults, **self.options.get(name, {})
                )

    def stored(self, name: str) -> bool:
        return self.routes.get(name, "").startswith("stored")

    def start(self, memory: MemoryPlan, sketch: int | None, sketchers, world: int) -> tuple[int, bool]:
        """Build the accumulators; (how many samples to keep, whether ranks must agree on a shift)."""
        self.route(memory, sketch)
        self.sketchers = sketchers
        # every sample for the stored route; else the first sample_cap (capped measures, inference) or none
        store_cap = sys.maxsize if any(self.stored(m) for m in self.order) else memory.store_samples
        need_shift = world > 1 and any(hasattr(a, "set_shift") for a in self.accumulators.values())
        return store_cap, need_shift

    def merged(self, distributed: bool) -> tuple[StreamingMoments | None, dict[str, object]]:
        """The streamed states, every rank's merged in rank order under a process group (collectives)."""
        if not distributed:
            return self.stream, self.accumulators
        stream = self.stream.sync() if self.stream is not None else None
        return stream, {name: _synced(name, acc) for name, acc in self.accumulators.items()}


def first_shapes(xs, ys, layers_a, layers_b, batch_size: int):
    """What the plan needs of the first batch: each layer's width, the features' item size, the batch size."""
    dims_x = dict(zip(layers_a, (x.shape[1] for x in xs), strict=True))
    dims_y = None if ys is None else dict(zip(layers_b, (y.shape[1] for y in ys), strict=True))
    return dims_x, dims_y, max(t.element_size() for t in [*xs, *(ys or [])]), batch_size


def collective_plan(plan, shard, shapes, n, sample_cap, budget, sketch, inference) -> MemoryPlan:
    """The memory plan from the first batch's shapes; under a process group every rank makes the same
    one (the first rank with data gives the shapes, the smallest budget counts; an empty rank joins)."""
    if shard.world > 1:
        gathered = D.gather((shapes, budget))
        shapes = next((s for s, _ in gathered if s is not None), None)
        budget = min(b for _, b in gathered)
    if shapes is None:
        raise ValueError("the loader yielded no samples")
    dims_x, dims_y, itemsize, batch_size = shapes
    memory_plan = plan_routes(
        plan.requests(sketch, batch_size), dims_x, dims_y, n, sample_cap, budget, itemsize, bool(inference)
    )
    if sketch is not None:  # say on every row that the features were projected
        memory_plan.table["route"] = [
            f"sketch {sketch}" if r.startswith(("moments", "sketch")) else f"sketch {sketch}, {r}"
            for r in memory_plan.table["route"]
        ]
    return memory_plan


def agree_on_shift(plan: Plan, xs: list[Tensor] | None, ys: list[Tensor] | None) -> None:
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
    for acc in plan.accumulators.values():
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


def measure_rows(plan: Plan, stream, accumulators: dict, kept: Samples, capped: Samples, n_total: int,
                 sample_cap: int, layers_a: list[str], layers_b: list[str]) -> list[dict]:  # fmt: skip
    """The table's rows: every requested measure on every layer pair, by its route."""
    rows: list[dict] = []

    def add(measure: str, grid: Tensor, n: int, la: list[str], lb: list[str]) -> None:
        values = grid.detach().to("cpu", torch.float64).reshape(len(la), len(lb)).tolist()  # one sync per measure
        route = plan.routes[measure]
        for i, a in enumerate(la):
            for j, b in enumerate(lb):
                rows.append(
                    {"layer_a": a, "layer_b": b, "measure": measure, "value": values[i][j], "n": n, "route": route}
                )

    shared = _shared_gram_grids(plan, kept.xs, kept.ys, kept.n, sample_cap)
    for name in plan.order:
        opts = plan.options.get(name, {})
        kind = plan.kind[name]
        if "dtype" in _options_of(name) and "dtype" not in opts:
            opts = {**opts, "dtype": plan.dtype}  # compare's precision reaches every measure that has one
        if name in plan.needs_labels and kind in ("functional", "capped"):
            if kind == "functional" and capped.labels is None:
                raise ValueError(f"{name} needs labels; the loader's batches must carry them ((x, y) or 'labels')")
            labelled = {**opts, "labels": capped.labels}
        else:
            labelled = opts
        if kind == "functional":
            value = call_with_supported(get_measure(name).fn, capped.outputs[0], capped.outputs[1], **labelled)
            add(name, value, capped.n, [OUTPUT_LAYER], [OUTPUT_LAYER])
        elif plan.stored(name):  # exact on every kept sample
            grid = shared[name] if name in shared else measure_grid(name, kept.xs, kept.ys, **opts)
            add(name, grid, kept.n, layers_a, layers_b)
        elif kind == "capped" and name in shared:  # computed with the stored CKA's Gram blocks
            add(name, shared[name], capped.n, layers_a, layers_b)
        elif kind == "capped":
            add(name, measure_grid(name, capped.xs, capped.ys, **labelled), capped.n, layers_a, layers_b)
        elif kind == "moments":
            opts = {k: v for k, v in opts.items() if k != "dtype"}
            if plan.sketch is not None and name == "linear_cka" and not opts.get("debiased", False):
                add(name, _sketched_cka_grid(stream, plan.sketch, plan.sketchers), stream.n, layers_a, layers_b)
            else:
                add(name, stream.compute(name, **opts), stream.n, layers_a, layers_b)
        else:
            acc = accumulators[name]
            add(name, acc.compute(), getattr(acc, "n", n_total), layers_a, layers_b)
    return rows


def _shared_gram_grids(plan: Plan, xs: list[Tensor], ys: list[Tensor], n_kept: int, sample_cap: int) -> dict:
    """Stored-route linear CKA (biased and debiased) and, on the same samples, Pearson RSA, from one pass
    over the centred Gram blocks (:func:`repsim.measures.blocked.gram_grids_blocked`): {name: grid}."""
    from ..measures.blocked import gram_grids_blocked
    from ..measures.cka import cka_from_hsic, cka_grid, estimator_name
    from ..measures.rsa import pearson_grid, rdm_rows, rsa_grid

    def opts(m: str) -> dict:
        return {**get_measure(m).defaults, **plan.options.get(m, {})}

    ckas = [
        m for m in plan.order if plan.stored(m) and get_measure(m).grid is cka_grid and set(opts(m)) <= {"debiased"}
    ]

    def pearson_rsa(m: str) -> bool:
        o = opts(m)
        return (
            get_measure(m).grid is rsa_grid
            and o.get("compare", "pearson") == "pearson"
            and set(o) <= {"rdm", "compare"}
        )

    rsas = [m for m in plan.order if plan.kind[m] == "capped" and pearson_rsa(m)]
    fuse_rsa = bool(ckas) and bool(rsas) and n_kept <= sample_cap and plan.dtype == torch.float64
    if len(ckas) + (len(rsas) if fuse_rsa else 0) < 2:
        return {}
    from ..core.validation import as_layer_lists
    from ..measures.gram import center_columns

    same = ys is xs
    xs_v, ys_v = as_layer_lists(xs, None if same else ys, 4, varying=True)
    compute = torch.float64 if plan.dtype == torch.float64 else plan.dtype or xs_v[0].dtype
    xcs = [center_columns(x, compute) for x in xs_v]
    ycs = xcs if ys_v is xs_v else [center_columns(y, compute) for y in ys_v]
    flags = {m: bool(opts(m).get("debiased", False)) for m in ckas}
    estimators = tuple(dict.fromkeys(estimator_name(f) for f in flags.values()))
    out = {}
    methods = dict.fromkeys(opts(m).get("rdm", "cosine") for m in rsas) if fuse_rsa else {}
    names = ([f"xs[{i}]" for i in range(len(xcs))], [f"ys[{i}]" for i in range(len(ycs))])
    for k, method in enumerate(methods or [None]):
        rx = None if method is None else rdm_rows(xs_v, xcs, method, names[0])
        ry = None if method is None or ycs is xcs else rdm_rows(ys_v, ycs, method, names[1])
        hsic, pearson = gram_grids_blocked(xcs, ycs, estimators if k == 0 else (), rx, ry)
        if k == 0:
            out.update({m: cka_from_hsic(*hsic[estimator_name(flags[m])], flags[m]) for m in ckas})
        if pearson is not None:
            grid = pearson_grid(*pearson, names)
            out.update({m: grid for m in rsas if opts(m).get("rdm", "cosine") == method})
    return out


def _options_of(name: str) -> list[str]:
    return [] if name in COMPARE_ONLY else get_measure(name).options()


def _sketched_cka_grid(stream: StreamingMoments, k: int, sketchers) -> Tensor:
    """Linear CKA of every sketched layer pair with the projection-corrected denominators."""
    rows = range(len(stream._sizes_x))
    cols = range(len(stream._sizes_y))
    return torch.stack(
        [
            torch.stack(
                [
                    sketched_linear_cka(stream.moments(i, j), k, sketchers[0].projected(i), sketchers[1].projected(j))
                    for j in cols
                ]
            )
            for i in rows
        ]
    )
