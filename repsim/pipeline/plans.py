"""Memory plans: how each measure of a comparison is computed, what it costs, and refusing before it cannot fit.

A comparison of wide layers (flattened conv maps, token features) has several exact routes with
very different costs (bytes of state, multiply-adds):

* ``moments``: float64 feature moments, streamed over batches: 8 (sum_l d_l^2 + sum_m d_m^2 + P Q)
  bytes for P = sum_l d_l, Q = sum_m d_m; n (sum d^2 + P Q) multiply-adds. Cheap when d << n.
* ``stored``: the features of all n samples kept (n (P + Q) values in their own dtype), the measure
  computed at the end. For CKA/HSIC and Pearson RSA in Gram space by row blocks
  (:mod:`repsim.measures.blocked`): n^2 (P + Q + L M) multiply-adds and a bounded workspace.
  Cheap when n << d.
* ``capped at k``: the measures that need all samples at once (neighbours, RSA, topology, ...)
  on the first k samples (``sample_cap``).

and two estimators past exactness that only an explicit choice selects: ``minibatch b``
(``minibatch_cka``) and ``sketch k`` (``sketch=k``: seeded Gaussian projections to k dims, see
:mod:`repsim.measures.sketch`). :func:`plan_routes` picks, per measure, the exact route with the
fewest multiply-adds among those that fit the budget; when none fits it raises
:class:`MemoryBudgetError` naming the layers, their widths, the bytes of every route and the
options. The result is a :class:`MemoryPlan`: inspect it before running with
``repsim.compare(..., dry_run=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from ..core.budget import MemoryBudgetError, format_bytes


@dataclass
class MemoryPlan:
    """How a comparison will run: one row per measure (its route, bytes, multiply-adds), the layer
    widths, and the budget. ``table`` and ``layers`` are DataFrames; ``str(plan)`` is a summary."""

    n: int | None
    budget: int
    table: pd.DataFrame
    layers: pd.DataFrame
    workspace: int
    store_samples: int = 0
    """How many samples' features are kept (0: none, only streamed)."""
    store_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """Peak bytes of the plan: the stored features, every streaming state, and the largest workspace."""
        if not len(self.table):
            return self.store_bytes
        state = int(self.table["state_bytes"].sum())
        return int(self.store_bytes + state + self.table["workspace_bytes"].max())

    def route(self, measure: str) -> str:
        return str(self.table.set_index("measure").loc[measure, "route"])

    def __str__(self) -> str:
        head = (
            f"memory plan: n = {self.n if self.n is not None else 'unknown'}, budget {format_bytes(self.budget)}, "
            f"peak about {format_bytes(self.total_bytes)}"
            + (
                f", features of {self.store_samples} samples kept ({format_bytes(self.store_bytes)})"
                if self.store_samples
                else ""
            )
        )  # fmt: skip
        rows = [
            f"  {r.measure:<24} {r.route:<18} state {format_bytes(r.state_bytes):>9}  "
            f"workspace {format_bytes(r.workspace_bytes):>9}  {r.flops:.2e} multiply-adds"
            for r in self.table.itertuples()
        ]
        return "\n".join([head, *rows])


# ------------------------------------------------------------------------------------ costs
def moment_bytes(dx: Sequence[int], dy: Sequence[int] | None) -> int:
    """Float64 moment state of a layer grid (scatters per layer and the cross block), plus one batch's products."""
    p, q = sum(dx), sum(dy) if dy is not None else 0
    selfs = sum(d * d for d in dx) + (sum(d * d for d in dy) if dy is not None else 0)
    cross = p * (q if dy is not None else p)
    return 2 * 8 * (selfs + cross)


def moment_flops(n: int | None, dx: Sequence[int], dy: Sequence[int] | None) -> float:
    dy_ = dy if dy is not None else dx
    return float(n or 0) * (sum(d * d for d in dx) + sum(d * d for d in dy_) + sum(dx) * sum(dy_))


def gram_flops(n: int | None, dx: Sequence[int], dy: Sequence[int] | None) -> float:
    dy_ = dy if dy is not None else dx
    return float(n or 0) ** 2 * (sum(dx) + (sum(dy_) if dy is not None else 0) + len(dx) * len(dy_))


def workspace_estimate(
    name, n: int, dx: Sequence[int], dy: Sequence[int] | None, workspace: int, options: Mapping | None = None
) -> int:
    """Peak temporary bytes of ``name``'s grid on n stored samples (conservative for measures without a model);
    ``name`` a registry name or its entry (:class:`~repsim.measures.registry.MeasureInfo`)."""
    from ..measures.registry import MeasureInfo, get_measure

    info = name if isinstance(name, MeasureInfo) else get_measure(name)
    if info.workspace is not None:
        opts = {**info.defaults, **(options or {})}
        return int(info.workspace(n, list(dx), None if dy is None else list(dy), workspace, **opts))
    dy_ = list(dy) if dy is not None else []
    layers = len(dx) + len(dy_)
    dmax = max([*dx, *dy_])
    # float64 copies of the inputs, an n x n matrix per layer, and a few d x d or n x d per pair
    return 8 * (n * (sum(dx) + sum(dy_)) + layers * n * n + 4 * max(n * dmax, dmax * dmax))


# ------------------------------------------------------------------------------------ planning
@dataclass
class MeasureRequest:
    """One requested measure as the planner sees it."""

    name: str
    options: Mapping = field(default_factory=dict)
    info: object = None  # the registry entry when the caller has it (no second look-up of the name)
    streaming_moments: bool = False  # exact from shared StreamingMoments
    capped: bool = False  # needs all samples at once
    functional: bool = False
    minibatch: int | None = None  # the minibatch route (batch size)
    sketch: int | None = None  # the sketch route (dims)


def plan_routes(
    requests: Sequence[MeasureRequest],
    dims_x: Mapping[str, int],
    dims_y: Mapping[str, int] | None,
    n: int | None,
    sample_cap: int,
    budget: int,
    itemsize: int = 4,
    keep_for_inference: bool = False,
) -> MemoryPlan:
    """Choose a route for every measure and check the total against ``budget`` (raises MemoryBudgetError)."""
    dx = list(dims_x.values())
    dy = None if dims_y is None else list(dims_y.values())
    p, q = sum(dx), (sum(dy) if dy is not None else 0)
    n_cap = sample_cap if n is None else min(n, sample_cap)
    # the workspace of the blocked grids: what the budget leaves after the states, within [64 MB, 2 GB]
    workspace = int(min(2 * 2**30, max(64 * 2**20, budget // 4)))
    rows = []
    need_store_all = False
    need_cap = keep_for_inference or any(r.capped or r.functional for r in requests)
    failures: list[str] = []
    shared_moments_counted = False
    for r in requests:
        row = _non_exact_row(r, dx, dy, n, n_cap, workspace, itemsize)
        if row is not None:
            rows.append(row)
            continue
        # an exact streaming measure: moments vs stored features
        moments = moment_bytes(dx, dy)  # StreamingMoments, or an accumulator of the same second moments
        # every moment measure shares one accumulator: count its bytes once
        moments_marginal = 0 if r.streaming_moments and shared_moments_counted else moments
        store = None if n is None else n * (p + q) * itemsize
        stored_ws = None if n is None else workspace_estimate(r.info or r.name, n, dx, dy, workspace, r.options)
        options = []
        if moments <= budget:
            options.append(("moments", moments_marginal, 0, moment_flops(n, dx, dy)))
        if store is not None and store + stored_ws <= budget:
            flops = min(gram_flops(n, dx, dy), moment_flops(n, dx, dy))
            options.append(("stored", 0, stored_ws, flops))
        if not options:
            failures.append(
                f"{r.name}: moments need {format_bytes(moments)}; stored features "
                + (
                    "need the number of samples (unknown: give max_samples or a loader with a length)"
                    if store is None
                    else f"need {format_bytes(store + stored_ws)}"
                )
            )
            continue
        route, state, ws, flops = min(options, key=lambda o: (o[3], o[1] + o[2]))
        if route == "moments" and r.streaming_moments:
            shared_moments_counted = True
        if route == "stored":
            need_store_all = True
        rows.append((r.name, route, state, ws, flops))
    store_samples = (n or 0) if need_store_all else (n_cap if need_cap else 0)
    store_bytes = store_samples * (p + q) * itemsize
    table = pd.DataFrame(rows, columns=["measure", "route", "state_bytes", "workspace_bytes", "flops"])
    layers = pd.DataFrame(
        [("a", name, d) for name, d in dims_x.items()] + [("b", name, d) for name, d in (dims_y or {}).items()],
        columns=["model", "layer", "d"],
    )
    plan = MemoryPlan(n, budget, table, layers, workspace, store_samples, store_bytes)
    if failures or plan.total_bytes > budget:
        raise MemoryBudgetError(_refusal(plan, failures, dims_x, dims_y, n, budget))
    return plan


def _non_exact_row(r: MeasureRequest, dx, dy, n, n_cap: int, workspace: int, itemsize: int) -> tuple | None:
    """The plan's row of a measure that does not choose between exact routes: functional and capped
    measures (the first ``n_cap`` samples), minibatch CKA and sketches; None for an exact streaming one."""
    p, q = sum(dx), (sum(dy) if dy is not None else 0)
    if r.functional:
        return (r.name, f"capped at {n_cap}", 0, 0, 0.0)
    if r.minibatch is not None:
        b = r.minibatch
        layers = len(dx) + (len(dy) if dy is not None else 0)
        return (r.name, f"minibatch {b}", 8 * (len(dx) * max(1, len(dy or dx)) + layers),
                layers * b * b * (itemsize + 8), float(n or 0) * b * (p + q))  # fmt: skip
    if r.sketch is not None:
        k = r.sketch
        sk_x = [min(d, k) for d in dx]
        sk_y = None if dy is None else [min(d, k) for d in dy]
        proj = 4 * sum(d * k for d in [*dx, *(dy or [])] if d > k)
        return (r.name, f"sketch {k}", moment_bytes(sk_x, sk_y) + proj, 0,
                float(n or 0) * (p + q) * k + moment_flops(n, sk_x, sk_y))  # fmt: skip
    if r.capped:
        ws = workspace_estimate(r.info or r.name, n_cap, dx, dy, workspace, r.options)
        route = f"capped at {n_cap}{_knn_label(r, n_cap, [*dx, *(dy or [])])}"
        return (r.name, route, 0, ws, gram_flops(n_cap, dx, dy))
    return None


def _knn_label(r: MeasureRequest, n: int, dims: Sequence[int]) -> str:
    """The plan's kNN label of a neighbour measure (", knn exact" / ", knn approx"), else ""."""
    from ..measures.knn import resolve_route
    from ..measures.registry import get_measure

    info = r.info or get_measure(r.name)  # the request's resolved entry: no second look-up
    if info.family != "neighbours":
        return ""
    knn = {**info.option_defaults(), **r.options}.get("knn", "exact")
    return f", knn {resolve_route(str(knn), n, max(dims))}"


def _refusal(plan: MemoryPlan, failures: list[str], dims_x, dims_y, n, budget: int) -> str:
    widest = sorted([*dims_x.items(), *(dims_y or {}).items()], key=lambda kv: -kv[1])[:3]
    lines = [
        f"no exact route fits the memory budget of {format_bytes(budget)} (n = {n if n is not None else 'unknown'}; "
        f"widest layers: {', '.join(f'{k} (d = {v})' for k, v in widest)}).",
        *failures,
    ]
    if not failures:
        lines.append(f"the plan needs about {format_bytes(plan.total_bytes)}:\n{plan}")
    lines.append(
        "Options: pool='mean' (average the spatial/token axes), max_samples=... (fewer samples for the stored route), "
        "memory='...' (a larger budget), measures=['minibatch_cka'] (minibatch CKA, another estimator), "
        "sketch=k (seeded random projection to k dims, an estimator with stated error), or fewer layers."
    )
    if any(", knn " in str(route) for route in plan.table["route"]) or any("knn" in f for f in failures):
        lines.append(
            "Neighbour measures: sample_cap=... (fewer samples), knn='approx' (a faiss index: no n x n block, "
            "recall measured), block_size=... (smaller blocks of the exact search)."
        )
    return "\n".join(lines)
