"""``repsim.compare``: two models, one loader, every requested layer pair, in one streaming pass."""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import distributed as D
from .features import _LABEL_KEYS, eval_mode, expected_samples, resolve_device, split_batch, total_batches
from .hooks import (
    HIDDEN_STATES,
    FeatureHooks,
    Pool,
    default_layers,
    first_tensor,
    pool_features,
    with_hidden_states,
)
from .io import atomic_write_text
from .measures.blocked import workspace_limit
from .measures.moments import StreamingMoments
from .measures.registry import call_with_supported, get_measure, measure_grid, registered_names
from .measures.sketch import LayerSketch, sketched_linear_cka
from .measures.streaming_cka import MinibatchCKA
from .memory import MeasureRequest, MemoryPlan, parse_memory, plan_routes

# minibatch CKA (Nguyen et al. 2021) is compare-only: its value depends on the batches, so it is
# not a registry measure. Every other name comes from the registry (repsim.measures.registry).
COMPARE_ONLY: dict[str, Callable[[torch.dtype | None], object]] = {
    "minibatch_cka": lambda dtype: MinibatchCKA(debiased=True, dtype=dtype),
}
OUTPUT_LAYER = "<output>"  # layer name of a functional measure's rows (the models' outputs)


def available_measures() -> list[str]:
    """Every name ``compare`` accepts: the whole registry plus ``minibatch_cka``."""
    return sorted({*registered_names(), *COMPARE_ONLY})


def __getattr__(name: str):  # MEASURES is computed on access: the registry grows as families register
    if name == "MEASURES":
        return tuple(available_measures())
    raise AttributeError(name)


@dataclass
class Comparison:
    """The result of :func:`compare`: a tidy table and views of it."""

    table: pd.DataFrame
    """Columns: layer_a, layer_b, measure, value, n (samples the value is computed on), route (how:
    ``moments``, ``stored``, ``capped at k``, ``minibatch b`` or ``sketch k``; see :mod:`repsim.memory`)."""
    layers_a: list[str] = field(default_factory=list)
    layers_b: list[str] = field(default_factory=list)
    plan: MemoryPlan | None = None
    """The memory plan the comparison ran under (routes, bytes, multiply-adds per measure)."""

    @property
    def measures(self) -> list[str]:
        return list(dict.fromkeys(self.table["measure"]))

    def _measure(self, measure: str | None) -> str:
        if measure is None:
            return self.measures[0]
        if measure not in self.measures:
            raise ValueError(f"measure {measure!r} is not in this comparison; it has {self.measures}")
        return measure

    def matrix(self, measure: str | None = None) -> pd.DataFrame:
        """layer_a x layer_b matrix of one measure (default: the first), in layer order."""
        measure = self._measure(measure)
        sub = self.table[self.table["measure"] == measure]
        m = sub.pivot(index="layer_a", columns="layer_b", values="value")
        rows = [layer for layer in self.layers_a if layer in m.index] or list(m.index)
        cols = [layer for layer in self.layers_b if layer in m.columns] or list(m.columns)
        return m.loc[rows, cols]

    def heatmap(self, measure: str | None = None, ax=None, **kwargs):
        """Seaborn heatmap of one measure over the layer grid; returns the Axes."""
        from .plotting import heatmap

        measure = self._measure(measure)
        info = None if measure in COMPARE_ONLY else get_measure(measure)
        bounded = info is None or (info.larger_is_more_similar and info.identity_value == 1.0)
        return heatmap(
            self.matrix(measure),
            title=measure,
            ax=ax,
            marks=self._not_significant(measure),
            **({"vmin": 0.0, "vmax": 1.0} if bounded else {}),
            **kwargs,
        )

    def _not_significant(self, measure: str, alpha: float = 0.05) -> pd.DataFrame | None:
        """Cells to hatch: adjusted p >= alpha, or (without p-values) an interval that includes 0."""
        sub = self.table[self.table["measure"] == measure]
        if "p_adjusted" in sub and sub["p_adjusted"].notna().any():
            flags = sub.assign(flag=sub["p_adjusted"] >= alpha)
        elif "ci_low" in sub and sub["ci_low"].notna().any():
            flags = sub.assign(flag=(sub["ci_low"] <= 0) & (sub["ci_high"] >= 0))
        else:
            return None
        matrix = self.matrix(measure)
        return flags.pivot(index="layer_a", columns="layer_b", values="flag").loc[matrix.index, matrix.columns]

    def to_csv(self, path) -> Path:
        """Write the tidy table atomically; returns the path."""
        return atomic_write_text(path, self.table.to_csv(index=False))


def _check_measures(measures: Sequence[str]) -> list[str]:
    if isinstance(measures, str):
        measures = [measures]
    known = available_measures()
    unknown = [m for m in measures if m not in known]
    if unknown or not measures:
        raise ValueError(f"unknown measure(s) {unknown}; choose from {known}")
    return list(dict.fromkeys(measures))


def _keyword_names(model: nn.Module) -> set[str] | None:
    """Keyword parameters of ``model.forward`` (None: it takes ``**kwargs``)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _model_inputs(batch, model: nn.Module):
    """What ``model`` is called with: a dict batch's entries it takes by keyword, else the batch's inputs."""
    if isinstance(batch, Mapping):
        names = _keyword_names(model)
        kwargs = {k: v for k, v in batch.items() if k not in _LABEL_KEYS and (names is None or k in names)}
        if kwargs:
            return kwargs
    if isinstance(batch, (Tensor, Mapping)) or (isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor)):
        return split_batch(batch)[0] if not isinstance(batch, Tensor) else batch
    return batch


def _labels(batch) -> Tensor | None:
    try:
        return split_batch(batch)[1]
    except (ValueError, TypeError):
        return None


def _size(inputs) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    if isinstance(inputs, Mapping):
        return next(v.shape[0] for v in inputs.values() if isinstance(v, Tensor))
    raise ValueError(f"cannot tell the batch size of inputs of type {type(inputs).__name__}; give tensors or dicts")


def _head(inputs, k: int):
    if isinstance(inputs, Tensor):
        return inputs[:k]
    if isinstance(inputs, Mapping):
        return {key: (v[:k] if isinstance(v, Tensor) else v) for key, v in inputs.items()}
    return inputs


def _to_device(inputs, device: torch.device, channels_last: bool):
    """Host-to-device copy that overlaps compute on CUDA (pinned source, ``non_blocking``)."""
    if isinstance(inputs, Mapping):
        return {k: _to_device(v, device, channels_last) for k, v in inputs.items()}
    if not isinstance(inputs, Tensor):
        return inputs
    if device.type == "cuda" and inputs.device.type == "cpu" and not inputs.is_pinned():
        inputs = inputs.pin_memory()
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def _forward(model: nn.Module, hooks: FeatureHooks, inputs, want_output: bool, pool: Pool):
    hooks._captured.clear()
    hooks.mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    feats = hooks.pop()
    if want_output:
        if isinstance(out, Mapping) and "logits" in out:
            out = out["logits"]
        feats[OUTPUT_LAYER] = pool_features(first_tensor(out).detach(), pool, hooks.mask).float()
    return feats


class _Plan:
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
        """Build the accumulators of the streamed routes; stored ones are computed in _finish."""
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


@torch.inference_mode()
def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    loader: Iterable,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    measures: Sequence[str] = ("linear_cka", "debiased_cka", "rsa"),
    device=None,
    max_samples: int | None = None,
    pool: Pool = "mean",
    sample_cap: int = 5000,
    dtype: torch.dtype | None = torch.float64,
    progress: bool = True,
    inputs_a: Callable | None = None,
    inputs_b: Callable | None = None,
    paired: bool = False,
    autocast: bool = False,
    channels_last: bool = False,
    distributed: bool | None = None,
    result_on: str = "all",
    measure_options: Mapping[str, Mapping] | None = None,
    inference: Mapping | None = None,
    memory: int | str | None = None,
    dry_run: bool = False,
    sketch: int | None = None,
    sketch_seed: int = 0,
) -> Comparison | MemoryPlan | None:
    """Compare two models layer by layer on the samples of ``loader``.

    One pass over the loader: each batch goes through both models (eval mode, ``inference_mode``,
    on ``device``), hooks capture ``layers_a``/``layers_b`` (module names as in ``named_modules()``;
    default :func:`repsim.hooks.default_layers`; ``"hidden_states"``: the model's
    ``output_hidden_states``, rows ``hidden_states.0 ..``), outputs become (n, d) vectors by ``pool``
    ("mean": global average pool, the default; "flatten"; "mask_mean"/"mask_max"/"first"/"last"
    for token sequences, see :func:`repsim.hooks.pool_features`; or a callable). ``pool="tokens"``:
    every real token is a sample (both models must see the same tokens; the ``n`` column counts
    tokens, ``max_samples`` sentences; ``inference`` permutes whole sentences and refuses
    intervals; see :mod:`repsim.text` for models with different tokenizers).

    ``measures``: any name of the registry (:func:`repsim.list_measures`) or ``minibatch_cka``.
    Streaming entries see every sample in O(d^2) memory (through
    :class:`~repsim.measures.moments.StreamingMoments` or the entry's own accumulator); the others
    use the first ``sample_cap`` samples (O(sample_cap^2) memory). Functional measures
    (``needs_outputs``) compare the models' outputs (a ``logits`` entry of a dict output, else the
    first tensor), in rows whose layer is ``"<output>"``; ``needs_labels`` measures get the
    loader's labels. The table's ``n`` column says how many samples each value saw.

    Memory (wide layers: ``pool="flatten"``, token features): after the first batch's forward
    pass, a plan (:mod:`repsim.memory`) chooses for every streaming measure the exact route with
    the fewest multiply-adds that fits ``memory`` (bytes or a string like ``"8GB"``; default 60 %
    of the memory available now, or of free device memory on a GPU): float64 feature moments
    (O(d^2), ``"moments"``) or the features of all n samples kept and the measure computed at the
    end, in Gram space by row blocks for CKA and RSA (O(n d), ``"stored"``; n from the loader's
    length or ``max_samples``). When no exact route fits, nothing runs: a
    :class:`repsim.memory.MemoryBudgetError` names the layers, the bytes of each route and the
    options. ``dry_run=True`` returns the :class:`~repsim.memory.MemoryPlan` (per measure: route,
    bytes, multiply-adds; per layer: d) after one forward pass, without computing. Every row of
    the result says how it was computed in its ``route`` column: ``moments``, ``stored``,
    ``capped at k``, ``minibatch b`` (``minibatch_cka``), ``sketch k``. ``sketch=k`` (an
    estimator, never chosen for you) projects every layer wider than k by a seeded Gaussian
    projection (``sketch_seed``; independent per model and layer) before any measure; linear CKA
    then corrects its denominators for the projection (:mod:`repsim.measures.sketch`).

    Inputs: a batch is a tensor, an ``(x, y)`` tuple, or a dict. A dict batch is passed by keyword
    (``model(**batch)``, labels left out) to a model whose ``forward`` takes its keys (e.g.
    ``input_ids``, ``attention_mask``, ``pixel_values``); the ``attention_mask`` drives
    ``pool="mask_mean"``/``"last"``. ``inputs_a``/``inputs_b``: callables mapping the loader's batch
    to each model's inputs (two resolutions, an image and its caption); ``paired=True``: the loader
    yields ``(inputs_a, inputs_b)`` or ``(inputs_a, inputs_b, labels)``. The samples stay aligned.

    Speed: ``autocast=True`` runs the forward passes in bfloat16 autocast; ``channels_last=True``
    converts the models and 4-D inputs to channels-last; host-to-device copies are pinned and
    non-blocking, and the per-batch loop never synchronises with the host.

    Distributed (``torchrun``): when a process group is initialised (``distributed=None``) each
    rank reads its shard (a ``DistributedSampler`` or :func:`repsim.distributed.shard`, see
    :mod:`repsim.distributed`), and the float64 states are merged in rank order, so the result
    equals one process's to rounding. Capped measures use the same samples in the same order as
    one process. ``result_on="all"`` returns the result on every rank, ``"rank0"`` on rank 0 only
    (None elsewhere). ``distributed=False`` computes on each rank's own data independently.

    Hooks are removed and training flags restored afterwards, also after an exception. Passing
    the same module twice runs it once per batch.
    """
    measures = _check_measures(measures)
    options = _check_options(measures, measure_options)
    inference = _check_inference(inference)
    if sample_cap < 4:
        raise ValueError(f"sample_cap must be at least 4, got {sample_cap}")
    if result_on not in ("all", "rank0"):
        raise ValueError(f"result_on must be 'all' or 'rank0', got {result_on!r}")
    if paired and (inputs_a is not None or inputs_b is not None):
        raise ValueError("give either paired=True (the loader yields pairs) or inputs_a/inputs_b, not both")
    if sketch is not None and not (isinstance(sketch, int) and not isinstance(sketch, bool) and sketch >= 2):
        raise ValueError(f"sketch must be an integer number of dimensions >= 2 (e.g. sketch=512), got {sketch!r}")
    shard = D.shard_of(loader, distributed)
    plan = _Plan(measures, dtype, options)
    tokens = plan.tokens = _check_tokens(pool, plan, inference)
    model_a, model_b, layers_a, layers_b = _hidden_state_layers(model_a, model_b, layers_a, layers_b)
    same = model_a is model_b and inputs_a is None and inputs_b is None and not paired
    layers_a = list(layers_a) if layers_a is not None else default_layers(model_a)
    layers_b = list(layers_b) if layers_b is not None else (layers_a if model_a is model_b else default_layers(model_b))
    device = resolve_device(device, model_a)
    budget = parse_memory(memory, device)
    n_expected = None if tokens else expected_samples(loader, max_samples)  # tokens: not known in advance
    for model in (model_a, model_b):
        model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    want_output = bool(plan.functional)
    plan.keep_capped = bool(inference)
    kept_a: list[list[Tensor]] = [[] for _ in layers_a]
    kept_b: list[list[Tensor]] = [[] for _ in layers_b]
    kept_out: list[list[Tensor]] = [[], []]
    kept_keys: list[Tensor] = []
    kept_labels: list[Tensor] = []
    n_stream = n_real = n_kept = 0
    store_cap = 0  # samples whose features are kept, set by the memory plan
    need_shift = False
    sketches = (LayerSketch(sketch, sketch_seed, 0), LayerSketch(sketch, sketch_seed, 1)) if sketch else None
    if max_samples is not None and shard.world > 1:
        raise ValueError("max_samples is not supported under a process group; subset the dataset before sharding it")
    hooked_a = list(dict.fromkeys(layers_a + layers_b)) if model_a is model_b else layers_a
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with (
        eval_mode(model_a, model_b),
        FeatureHooks(model_a, hooked_a, pool) as hooks_a,
        contextlib.nullcontext() if model_a is model_b else FeatureHooks(model_b, layers_b, pool) as hooks_b,
    ):
        hooks_b = hooks_a if model_a is model_b else hooks_b
        bar = tqdm(loader, desc="compare", total=total_batches(loader, max_samples), disable=not progress, leave=False)
        for local_batch, batch in enumerate(bar):
            if max_samples is not None and n_real >= max_samples:
                break
            if paired:
                if not (isinstance(batch, Sequence) and len(batch) in (2, 3)):
                    raise ValueError("paired=True needs batches (inputs_a, inputs_b) or (inputs_a, inputs_b, labels)")
                raw_a, raw_b = batch[0], batch[1]
                labels = torch.as_tensor(batch[2]) if len(batch) == 3 else None
            else:
                raw_a = inputs_a(batch) if inputs_a is not None else batch
                raw_b = inputs_b(batch) if inputs_b is not None else batch
                labels = _labels(batch) if plan.needs_labels else None
            in_a, in_b = _model_inputs(raw_a, model_a), _model_inputs(raw_b, model_b)
            size = _size(in_a)
            if _size(in_b) != size:
                raise ValueError(f"the two models' inputs have {size} and {_size(in_b)} samples in one batch")
            # Global order keys of this batch's samples; padding repeats (a DistributedSampler's) are a suffix.
            keys, keep = shard.keys(n_stream, local_batch, size)
            n_stream += size
            if max_samples is not None:
                keep = min(keep, max_samples - n_real)
            if keep <= 0:
                continue
            if keep < size:
                in_a, in_b = _head(in_a, keep), _head(in_b, keep)
                labels = labels[:keep] if labels is not None else None
            in_a = _to_device(in_a, device, channels_last)
            with amp:
                feats_a = _forward(model_a, hooks_a, in_a, want_output, pool)
                if same:
                    feats_b = feats_a
                else:
                    feats_b = _forward(model_b, hooks_b, _to_device(in_b, device, channels_last), want_output, pool)
            xs = [feats_a[name] for name in layers_a]
            ys = [feats_b[name] for name in layers_b]
            rows = keep
            if tokens:  # every real token a sample; its sentence's order key, repeated
                counts = _token_counts(in_a, in_b, xs[0].shape[0], ys[0].shape[0])
                keys, rows = keys[:keep].repeat_interleave(counts), int(counts.sum())
            self_grid = same and layers_a == layers_b
            if sketches is not None:  # independent projections per model: never a self-grid
                xs, ys, self_grid = sketches[0](xs), sketches[1](ys), False
            if plan.memory is None:  # the plan, from the first batch's shapes, before anything accumulates
                shapes = _shapes(xs, None if self_grid else ys, layers_a, layers_b, keep)
                memory_plan = _plan_collectively(plan, shard, shapes, n_expected, sample_cap, budget, sketch, inference)
                if dry_run:
                    return memory_plan
                store_cap, need_shift = _start(plan, memory_plan, sketch, sketches, n_expected, shard)
            if need_shift:
                _agree_on_shift(plan, xs, None if self_grid else ys)
                need_shift = False
            if plan.stream is not None:
                plan.stream.update(xs, None if self_grid else ys)
            for acc in plan.accumulators.values():
                acc.update(xs, None if self_grid else ys)
            if n_kept < store_cap:
                # Each rank keeps its own first store_cap samples: the global first ones are among them.
                take = min(store_cap - n_kept, rows)
                for chunks, f in zip(kept_a + kept_b, xs + ys, strict=True):
                    chunks.append(f[:take])
                if want_output:
                    kept_out[0].append(feats_a[OUTPUT_LAYER][:take])
                    kept_out[1].append(feats_b[OUTPUT_LAYER][:take])
                if labels is not None:
                    kept_labels.append(labels[:take])
                kept_keys.append(keys[:take])
                n_kept += take
            n_real += keep
    if plan.memory is None:  # this rank saw no sample: it still takes part in the plan's collective
        memory_plan = _plan_collectively(plan, shard, None, n_expected, sample_cap, budget, sketch, inference)
        if dry_run:
            return memory_plan
        _, need_shift = _start(plan, memory_plan, sketch, sketches, n_expected, shard)
    if need_shift:
        _agree_on_shift(plan, None, None)
    with workspace_limit(plan.memory.workspace):
        result = _finish(
            plan, shard, layers_a, layers_b, kept_a, kept_b, kept_out, kept_keys, kept_labels, sample_cap, result_on
        )
        if inference and result is not None:
            _add_inference(result, plan, inference, progress)
    return result


def plan(model_a: nn.Module, model_b: nn.Module, loader: Iterable, **options) -> MemoryPlan:
    """The :class:`~repsim.memory.MemoryPlan` that :func:`compare` would run under, after one forward
    pass on the first batch: ``compare(model_a, model_b, loader, **options, dry_run=True)``."""
    if "dry_run" in options:
        raise ValueError("plan() is compare(..., dry_run=True); do not pass dry_run")
    return compare(model_a, model_b, loader, dry_run=True, **options)


def _shapes(xs, ys, layers_a, layers_b, batch_size: int):
    """What the plan needs of the first batch: each layer's width, the features' item size, the batch size."""
    dims_x = dict(zip(layers_a, (x.shape[1] for x in xs), strict=True))
    dims_y = None if ys is None else dict(zip(layers_b, (y.shape[1] for y in ys), strict=True))
    return dims_x, dims_y, max(t.element_size() for t in [*xs, *(ys or [])]), batch_size


def _plan_collectively(plan, shard, shapes, n, sample_cap, budget, sketch, inference) -> MemoryPlan:
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


def _start(plan, memory_plan: MemoryPlan, sketch, sketches, n_expected, shard) -> tuple[int, bool]:
    """Build the plan's accumulators; (how many samples to keep, whether ranks must agree on a shift)."""
    plan.route(memory_plan, sketch)
    plan.sketchers = sketches
    # every sample for the stored route; else the first sample_cap (capped measures, inference) or none
    store_cap = sys.maxsize if any(plan.stored(m) for m in plan.order) else memory_plan.store_samples
    need_shift = shard.world > 1 and any(hasattr(a, "set_shift") for a in plan.accumulators.values())
    return store_cap, need_shift


def _check_tokens(pool: Pool, plan: _Plan, inference) -> bool:
    """pool="tokens": refuse what would treat a sentence's tokens as independent or unlabelled samples."""
    if not (isinstance(pool, str) and pool == "tokens"):
        return False
    if inference and inference.get("bootstrap"):
        raise ValueError(
            "intervals with pool='tokens' would resample tokens as if they were independent; use permutations or "
            "calibrate (they move whole sentences), or resample whole sentences on repsim.text.token_features"
        )
    if plan.needs_labels:
        raise ValueError(
            f"pool='tokens' has no per-token labels for {sorted(plan.needs_labels)}; use repsim.text.token_features "
            "and call the measure with your token labels"
        )
    return True


def _token_counts(in_a, in_b, rows_a: int, rows_b: int) -> Tensor:
    """Real tokens per sentence of one batch for pool="tokens"; both models must see the same tokens."""
    masks = [x.get("attention_mask") if isinstance(x, Mapping) else None for x in (in_a, in_b)]
    mask_a, mask_b = (m.cpu() if m is not None else None for m in masks)
    if (mask_a is None) != (mask_b is None) or (
        mask_a is not None and (mask_a.shape != mask_b.shape or not torch.equal(mask_a, mask_b))
    ):
        raise ValueError(
            "pool='tokens' needs both models to see the same tokens, but their attention masks differ "
            "(different tokenizers?); compare them on shared words instead: "
            "repsim.text.compare_texts(..., unit='word')"
        )
    if mask_a is None:
        raise ValueError("pool='tokens' needs dict batches with an 'attention_mask' (see repsim.text.text_batches)")
    counts = mask_a.bool().sum(dim=1)
    if rows_a != rows_b or rows_a != int(counts.sum()):
        raise ValueError(
            f"pool='tokens': the layers gave {rows_a} and {rows_b} token rows for {int(counts.sum())} real tokens; "
            "hook modules whose outputs are over the input's tokens"
        )
    return counts


def _hidden_state_layers(model_a, model_b, layers_a, layers_b):
    """layers="hidden_states": the model wrapped so that its output_hidden_states are hookable layers."""
    wanted_a = isinstance(layers_a, str) and layers_a == HIDDEN_STATES
    wanted_b = isinstance(layers_b, str) and layers_b == HIDDEN_STATES
    if model_a is model_b and (wanted_a or wanted_b):
        if not (wanted_a and (wanted_b or layers_b is None)):
            raise ValueError("comparing a model with itself, give layers='hidden_states' for both sides or neither")
        wrapped, names = with_hidden_states(model_a, HIDDEN_STATES)
        return wrapped, wrapped, names, names
    model_a, layers_a = with_hidden_states(model_a, layers_a)
    model_b, layers_b = with_hidden_states(model_b, layers_b)
    return model_a, model_b, layers_a, layers_b


def _agree_on_shift(plan: _Plan, xs: list[Tensor] | None, ys: list[Tensor] | None) -> None:
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


def _finish(plan, shard, layers_a, layers_b, kept_a, kept_b, kept_out, kept_keys, kept_labels, sample_cap, result_on):
    rows: list[dict] = []
    distributed = shard.world > 1
    stream, accumulators = plan.stream, plan.accumulators
    if distributed:
        stream = stream.sync() if stream is not None else None
        accumulators = {name: _synced(name, acc) for name, acc in accumulators.items()}

    def cat(chunks: list[Tensor]) -> Tensor | None:
        """The kept batches of one layer as one tensor; the batches are released at once, so the stored
        route never holds its features twice (the memory plan counts them once)."""
        out = torch.cat(chunks) if chunks else None
        chunks.clear()
        return out

    kept_x = [cat(c) for c in kept_a]
    kept_y = [cat(c) for c in kept_b]
    outputs = [cat(c) for c in kept_out]
    keys = cat(kept_keys)
    labels = cat(kept_labels)
    if distributed and plan.memory.store_samples:
        # every rank's kept samples, put in the global order of one process's run (their order keys)
        local = D.to_cpu((keys, kept_x, kept_y, outputs, labels))
        parts = [p for p in D.gather(local) if p[0] is not None]
        keys = torch.cat([p[0] for p in parts]) if parts else None
        if keys is not None:
            order = torch.argsort(keys, stable=True)  # one process's order (a sentence's tokens keep theirs)
            order = order if any(plan.stored(m) for m in plan.order) else order[:sample_cap]
            keys = keys[order]
            device = kept_x[0].device if kept_x and kept_x[0] is not None else torch.device("cpu")

            def pick(i: int, j: int | None = None) -> Tensor | None:
                got = [p[i] if j is None else p[i][j] for p in parts]
                return None if any(g is None for g in got) else torch.cat(got)[order].to(device)

            kept_x = [pick(1, j) for j in range(len(layers_a))]
            kept_y = [pick(2, j) for j in range(len(layers_b))]
            outputs = [pick(3, 0), pick(3, 1)]
            labels = pick(4)
    n_kept = 0 if keys is None else keys.shape[0]
    n_capped = min(sample_cap, n_kept)
    capped_x = [None if t is None else t[:sample_cap] for t in kept_x]
    capped_y = [None if t is None else t[:sample_cap] for t in kept_y]
    outputs = [None if t is None else t[:sample_cap] for t in outputs]
    labels = None if labels is None else labels[:sample_cap]
    n_total = stream.n if stream is not None else None
    for acc in accumulators.values():
        n_total = max(n_total or 0, getattr(acc, "n", 0))
    if n_total is None:
        n_total = n_kept
    if n_total == 0 and n_kept == 0:
        raise ValueError("the loader yielded no samples")
    if distributed and result_on == "rank0" and shard.rank != 0:
        return None

    def add(measure: str, grid: Tensor, n: int, la: list[str], lb: list[str]) -> None:
        values = grid.detach().to("cpu", torch.float64).reshape(len(la), len(lb)).tolist()  # one sync per measure
        route = plan.routes[measure]
        for i, a in enumerate(la):
            for j, b in enumerate(lb):
                rows.append(
                    {"layer_a": a, "layer_b": b, "measure": measure, "value": values[i][j], "n": n, "route": route}
                )

    shared = _shared_gram_grids(plan, kept_x, kept_y, n_kept, sample_cap)
    for name in plan.order:
        opts = plan.options.get(name, {})
        kind = plan.kind[name]
        if "dtype" in _options_of(name) and "dtype" not in opts:
            opts = {**opts, "dtype": plan.dtype}  # compare's precision reaches every measure that has one
        if kind == "functional":
            if name in plan.needs_labels and labels is None:
                raise ValueError(f"{name} needs labels; the loader's batches must carry them ((x, y) or 'labels')")
            if name in plan.needs_labels:
                opts = {**opts, "labels": labels}
            value = call_with_supported(get_measure(name).fn, outputs[0], outputs[1], **opts)
            add(name, value, n_capped, [OUTPUT_LAYER], [OUTPUT_LAYER])
        elif plan.stored(name):  # exact on every kept sample
            grid = shared[name] if name in shared else measure_grid(name, kept_x, kept_y, **opts)
            add(name, grid, n_kept, layers_a, layers_b)
        elif kind == "capped" and name in shared:  # computed with the stored CKA's Gram blocks
            add(name, shared[name], n_capped, layers_a, layers_b)
        elif kind == "capped":
            if name in plan.needs_labels:
                opts = {**opts, "labels": labels}
            add(name, measure_grid(name, capped_x, capped_y, **opts), n_capped, layers_a, layers_b)
        elif kind == "moments":
            opts = {k: v for k, v in opts.items() if k != "dtype"}
            if plan.sketch is not None and name == "linear_cka" and not opts.get("debiased", False):
                add(name, _sketched_cka_grid(stream, plan.sketch, plan.sketchers), stream.n, layers_a, layers_b)
            else:
                add(name, stream.compute(name, **opts), stream.n, layers_a, layers_b)
        else:
            acc = accumulators[name]
            add(name, acc.compute(), getattr(acc, "n", n_total), layers_a, layers_b)
    columns = ["layer_a", "layer_b", "measure", "value", "n", "route"]
    result = Comparison(pd.DataFrame(rows, columns=columns), layers_a, layers_b)
    result._capped = (capped_x, capped_y)  # the samples inference runs on (see _add_inference)
    # pool="tokens": each token carries its sentence's order key; inference permutes whole sentences
    result._blocks = torch.unique(keys[:n_capped], return_inverse=True)[1] if plan.tokens and n_capped else None
    result.plan = plan.memory
    return result


def _shared_gram_grids(plan: _Plan, xs: list[Tensor], ys: list[Tensor], n_kept: int, sample_cap: int) -> dict:
    """Stored-route linear CKA (biased and debiased) and, on the same samples, Pearson RSA, from one pass
    over the centred Gram blocks (:func:`repsim.measures.blocked.gram_grids_blocked`): {name: grid}."""
    from .measures.blocked import gram_grids_blocked
    from .measures.cka import cka_from_hsic, cka_grid, estimator_name
    from .measures.rsa import pearson_grid, rdm_rows, rsa_grid

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
    from ._validation import as_layer_lists
    from .measures.gram import center_columns

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


INFERENCE_KEYS = {"permutations": 0, "bootstrap": 0, "ci": 0.95, "adjust": "holm", "seed": 0}
# calibrate: permutations of calibrated similarity per cell and of each measure's "<max>" row, at level alpha
INFERENCE_KEYS |= {"calibrate": 0, "alpha": 0.05}


def _check_inference(inference: Mapping | None) -> dict | None:
    if not inference:
        return None
    unknown = sorted(set(inference) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(f"inference takes the keys {sorted(INFERENCE_KEYS)}; got unknown {unknown}")
    spec = {**INFERENCE_KEYS, **inference}
    if not (spec["permutations"] or spec["bootstrap"] or spec["calibrate"]):
        raise ValueError(
            "inference needs permutations > 0, bootstrap > 0 or calibrate > 0 (e.g. {'permutations': 1000})"
        )
    return spec


def _check_options(measures: list[str], options: Mapping[str, Mapping] | None) -> dict[str, dict]:
    options = {k: dict(v) for k, v in (options or {}).items()}
    stray = sorted(set(options) - set(measures))
    if stray:
        raise ValueError(f"measure_options names measures that are not requested: {stray}")
    return options


def _add_inference(result: Comparison, plan: _Plan, spec: dict, progress: bool) -> None:
    """p_value, p_adjusted, ci_low, ci_high, n_inference on the first sample_cap samples."""
    from .inference import inference_table

    xa, xb = result._capped
    if any(t is None for t in xa + xb):
        return
    if spec["calibrate"]:
        _add_calibration(result, plan, spec, progress)
    if not (spec["permutations"] or spec["bootstrap"]):
        return
    extra = inference_table(
        xa,
        xb,
        result.layers_a,
        result.layers_b,
        [m for m in plan.order if m not in COMPARE_ONLY],
        permutations=spec["permutations"],
        bootstrap_resamples=spec["bootstrap"],
        ci=spec["ci"],
        adjust=spec["adjust"],
        seed=spec["seed"],
        measure_options=plan.options,
        progress=progress,
        blocks=result._blocks,
    )
    if len(extra):
        result.table = result.table.merge(extra, on=["layer_a", "layer_b", "measure"], how="left")


def _add_calibration(result: Comparison, plan: _Plan, spec: dict, progress: bool) -> None:
    """calibrated and threshold columns, and one "<max>" row per measure (repsim.inference.calibration_table)."""
    from .inference.grid import calibration_table

    xa, xb = result._capped  # _add_inference checked they are all there
    cells, aggregates = calibration_table(
        xa, xb, result.layers_a, result.layers_b, [m for m in plan.order if m not in COMPARE_ONLY],
        spec["calibrate"], spec["alpha"], spec["seed"], plan.options, progress, blocks=result._blocks,
    )  # fmt: skip
    merged = result.table.merge(cells, on=["layer_a", "layer_b", "measure"], how="left")
    result.table = pd.concat([merged, aggregates], ignore_index=True) if len(aggregates) else merged


def _order(plan: _Plan) -> list[str]:
    return plan.order
