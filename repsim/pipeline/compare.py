"""``repsim.compare``: two models, one loader, every requested layer pair, in one streaming pass.

The pass reads top to bottom in :func:`compare`: check the arguments and decide each measure's
kind (:mod:`repsim.pipeline.routes`), walk the loader (:func:`repsim.networks.batches.walk`), run both models
through their hooks, make the memory plan on the first batch, stream or keep every batch's
features, then merge the ranks' states (:mod:`repsim.core.distributed`) and compute the table
(:class:`repsim.pipeline.comparison.Comparison`), with inference columns when asked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from ..core import distributed as D
from ..core.budget import parse_memory
from ..measures.blocked import workspace_limit
from ..measures.sketch import LayerSketch
from ..networks.batches import Batch, batch_labels, model_inputs, walk
from ..networks.features import eval_mode, expected_samples, resolve_device
from ..networks.hooks import (
    HIDDEN_STATES,
    OUTPUT_LAYER,
    FeatureHooks,
    Pool,
    default_layers,
    forward_features,
    with_hidden_states,
)
from .comparison import Comparison, add_inference, check_inference
from .plans import MemoryPlan
from .routes import (
    COMPARE_ONLY,
    Plan,
    Samples,
    agree_on_shift,
    available_measures,
    check_measures,
    check_options,
    collective_plan,
    first_shapes,
    measure_rows,
)

__all__ = ["COMPARE_ONLY", "OUTPUT_LAYER", "Comparison", "available_measures", "compare", "plan"]


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
    """Compare two models layer by layer on the samples of ``loader``: a :class:`Comparison` (a tidy
    table of every measure between every pair of ``layers_a`` x ``layers_b``).

    One pass: each batch goes through both models (eval mode, ``inference_mode``, on ``device``),
    hooks capture the layers (default :func:`repsim.networks.hooks.default_layers`; ``"hidden_states"`` for
    transformers), ``pool`` makes (n, d) rows ("mean", "flatten", "mask_mean", ..., "tokens", or a
    callable). ``measures``: registry names (:func:`repsim.list_measures`) or ``minibatch_cka``;
    streaming ones see every sample, the others the first ``sample_cap``. A memory plan made after
    the first batch chooses each measure's route within ``memory`` or refuses before any work
    (``dry_run=True`` returns it; ``sketch=k`` projects wide layers); every row's ``route`` says how
    it was computed. ``inference`` adds p-values, intervals or calibrated scores. Batches may be
    tensors, ``(x, y)`` tuples or dicts (passed by keyword); ``inputs_a``/``inputs_b``/``paired``
    give the two models different inputs. ``autocast``/``channels_last`` for speed. Under
    ``torchrun`` each rank reads its shard and the states merge in rank order (``result_on``,
    ``distributed``). Hooks and training flags are restored afterwards, also after an exception.

    Every argument in detail: docs/guide/compare.md, "What compare does".
    """
    plan, inference = _checked(measures, measure_options, inference, dtype, pool, sample_cap, result_on, sketch)
    shard = D.shard_of(loader, distributed)
    if max_samples is not None and shard.world > 1:
        raise ValueError("max_samples is not supported under a process group; subset the dataset before sharding it")
    sides = _Sides.of(model_a, model_b, layers_a, layers_b, inputs_a, inputs_b, paired, bool(plan.needs_labels))
    device = resolve_device(device, sides.model_a)
    budget = parse_memory(memory, device)  # before the models move: a GPU's free memory is what they leave
    n_expected = None if plan.tokens else expected_samples(loader, max_samples)  # tokens: not known in advance
    sides.to(device, channels_last)
    run = _Run(plan, shard, sides, budget, n_expected, sample_cap, sketch, sketch_seed, inference)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with eval_mode(sides.model_a, sides.model_b), sides.hooks(pool) as hooks:
        for batch in walk(loader, shard, sides.adapt, max_samples, device, channels_last, progress, "compare"):
            with amp:
                xs, ys, outputs = sides.forward(hooks, batch, bool(plan.functional))
            step = run.prepare(batch, xs, ys)
            if plan.memory is None:  # the plan, from the first batch's shapes, before anything accumulates
                memory_plan = run.memory_plan(step)
                if dry_run:
                    return memory_plan
                run.begin(memory_plan)
            run.add(step, outputs, batch.labels)
    if plan.memory is None:  # this rank saw no sample: it still takes part in the plan's collective
        memory_plan = run.memory_plan(None)
        if dry_run:
            return memory_plan
        run.begin(memory_plan)
    run.agree_on_shift(None)  # an empty rank still joins the shift's collective
    with workspace_limit(plan.memory.workspace):
        result = run.finish(result_on)
        if inference and result is not None:
            add_inference(result, plan, inference, progress)
    return result


def plan(model_a: nn.Module, model_b: nn.Module, loader: Iterable, **options) -> MemoryPlan:
    """The :class:`~repsim.pipeline.plans.MemoryPlan` that :func:`compare` would run under, after one forward
    pass on the first batch: ``compare(model_a, model_b, loader, **options, dry_run=True)``."""
    if "dry_run" in options:
        raise ValueError("plan() is compare(..., dry_run=True); do not pass dry_run")
    return compare(model_a, model_b, loader, dry_run=True, **options)


def _checked(measures, measure_options, inference, dtype, pool, sample_cap, result_on, sketch) -> tuple[Plan, dict]:
    """The checked arguments as a :class:`~repsim.pipeline.routes.Plan` (each measure's kind) and the inference spec."""
    measures = check_measures(measures)
    options = check_options(measures, measure_options)
    inference = check_inference(inference)
    if sample_cap < 4:
        raise ValueError(f"sample_cap must be at least 4, got {sample_cap}")
    if result_on not in ("all", "rank0"):
        raise ValueError(f"result_on must be 'all' or 'rank0', got {result_on!r}")
    if sketch is not None and not (isinstance(sketch, int) and not isinstance(sketch, bool) and sketch >= 2):
        raise ValueError(f"sketch must be an integer number of dimensions >= 2 (e.g. sketch=512), got {sketch!r}")
    plan = Plan(measures, dtype, options)
    plan.tokens = _check_tokens(pool, plan)
    plan.keep_capped = bool(inference)
    return plan, inference


@dataclass
class _Sides:
    """The two models as compare runs them: hooked layers, each one's inputs, and whether they are one run."""

    model_a: nn.Module
    model_b: nn.Module
    layers_a: list[str]
    layers_b: list[str]
    inputs_a: Callable | None
    inputs_b: Callable | None
    paired: bool
    needs_labels: bool

    @classmethod
    def of(cls, model_a, model_b, layers_a, layers_b, inputs_a, inputs_b, paired, needs_labels) -> _Sides:
        if paired and (inputs_a is not None or inputs_b is not None):
            raise ValueError("give either paired=True (the loader yields pairs) or inputs_a/inputs_b, not both")
        model_a, model_b, layers_a, layers_b = _hidden_state_layers(model_a, model_b, layers_a, layers_b)
        layers_a = list(layers_a) if layers_a is not None else default_layers(model_a)
        if layers_b is not None:
            layers_b = list(layers_b)
        else:
            layers_b = layers_a if model_a is model_b else default_layers(model_b)
        return cls(model_a, model_b, layers_a, layers_b, inputs_a, inputs_b, paired, needs_labels)

    @property
    def same(self) -> bool:
        """One model on the same inputs: its features serve both sides (one forward pass)."""
        return self.model_a is self.model_b and self.inputs_a is None and self.inputs_b is None and not self.paired

    @property
    def self_grid(self) -> bool:
        """The same features on both sides: the streamed states hold them once."""
        return self.same and self.layers_a == self.layers_b

    def to(self, device: torch.device, channels_last: bool) -> None:
        for model in (self.model_a, self.model_b):
            model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)

    @contextlib.contextmanager
    def hooks(self, pool: Pool):
        """Hooks on both models; passing the same module twice hooks it once, for both layer lists."""
        one = self.model_a is self.model_b
        hooked_a = list(dict.fromkeys(self.layers_a + self.layers_b)) if one else self.layers_a
        with (
            FeatureHooks(self.model_a, hooked_a, pool) as hooks_a,
            contextlib.nullcontext() if one else FeatureHooks(self.model_b, self.layers_b, pool) as hooks_b,
        ):
            yield hooks_a, hooks_a if one else hooks_b

    def adapt(self, batch) -> tuple[object, object, Tensor | None]:
        """walk's adapter: (model_a's inputs, model_b's inputs, labels) of one loader batch."""
        if self.paired:
            if not (isinstance(batch, Sequence) and len(batch) in (2, 3)):
                raise ValueError("paired=True needs batches (inputs_a, inputs_b) or (inputs_a, inputs_b, labels)")
            raw_a, raw_b = batch[0], batch[1]
            labels = torch.as_tensor(batch[2]) if len(batch) == 3 else None
        else:
            raw_a = self.inputs_a(batch) if self.inputs_a is not None else batch
            raw_b = self.inputs_b(batch) if self.inputs_b is not None else batch
            labels = batch_labels(batch) if self.needs_labels else None
        in_a = model_inputs(raw_a, self.model_a)
        return in_a, (in_a if self.same else model_inputs(raw_b, self.model_b)), labels

    def forward(self, hooks, batch: Batch, output: bool) -> tuple[list[Tensor], list[Tensor], tuple | None]:
        """Both models on one batch: (features of layers_a, of layers_b, the two outputs or None)."""
        feats_a = forward_features(self.model_a, hooks[0], batch.inputs, output)
        feats_b = feats_a if self.same else forward_features(self.model_b, hooks[1], batch.other, output)
        outputs = (feats_a[OUTPUT_LAYER], feats_b[OUTPUT_LAYER]) if output else None
        return [feats_a[n] for n in self.layers_a], [feats_b[n] for n in self.layers_b], outputs


@dataclass
class _Step:
    """One batch's features as the measures see them (token rows for pool="tokens", projected for sketch=k)."""

    xs: list[Tensor]
    ys: list[Tensor] | None
    """None when both sides are the same features (a self-grid)."""
    keys: Tensor
    rows: int
    size: int


class _Run:
    """compare's state over the pass: the memory plan's streamed states (in ``plan``) and the kept samples."""

    def __init__(self, plan: Plan, shard: D.Shard, sides: _Sides, budget: int, n_expected, sample_cap: int,
                 sketch: int | None, sketch_seed: int, inference) -> None:  # fmt: skip
        self.plan, self.shard, self.sides, self.budget = plan, shard, sides, budget
        self.n_expected, self.sample_cap, self.sketch, self.inference = n_expected, sample_cap, sketch, inference
        self.sketches = (LayerSketch(sketch, sketch_seed, 0), LayerSketch(sketch, sketch_seed, 1)) if sketch else None
        self.kept = _Kept(len(sides.layers_a), len(sides.layers_b))
        self.need_shift = False

    def prepare(self, batch: Batch, xs: list[Tensor], ys: list[Tensor]) -> _Step:
        keys, rows, self_grid = batch.keys, batch.size, self.sides.self_grid
        if self.plan.tokens:  # every real token a sample; its sentence's order key, repeated
            counts = _token_counts(batch.inputs, batch.other, xs[0].shape[0], ys[0].shape[0])
            keys, rows = keys.repeat_interleave(counts), int(counts.sum())
        if self.sketches is not None:  # independent projections per model: never a self-grid
            xs, ys, self_grid = self.sketches[0](xs), self.sketches[1](ys), False
        return _Step(xs, None if self_grid else ys, keys, rows, batch.size)

    def memory_plan(self, step: _Step | None) -> MemoryPlan:
        """The plan from the first batch's shapes (None: this rank has none); the same on every rank."""
        layers_a, layers_b = self.sides.layers_a, self.sides.layers_b
        shapes = None if step is None else first_shapes(step.xs, step.ys, layers_a, layers_b, step.size)
        return collective_plan(self.plan, self.shard, shapes, self.n_expected, self.sample_cap, self.budget,
                               self.sketch, self.inference)  # fmt: skip

    def begin(self, memory_plan: MemoryPlan) -> None:
        self.kept.cap, self.need_shift = self.plan.start(memory_plan, self.sketch, self.sketches, self.shard.world)

    def agree_on_shift(self, step: _Step | None) -> None:
        """Once, before the first update: every rank's accumulators shift by the same batch means."""
        if self.need_shift:
            agree_on_shift(self.plan, None if step is None else step.xs, None if step is None else step.ys)
            self.need_shift = False

    def add(self, step: _Step, outputs: tuple | None, labels: Tensor | None) -> None:
        self.agree_on_shift(step)
        if self.plan.stream is not None:
            self.plan.stream.update(step.xs, step.ys)
        for acc in self.plan.accumulators.values():
            acc.update(step.xs, step.ys)
        # ys of a self-grid are the xs: the kept samples hold both sides
        self.kept.add(step.xs, step.xs if step.ys is None else step.ys, outputs, labels, step.keys, step.rows)

    def finish(self, result_on: str) -> Comparison | None:
        """Merge the ranks' states and kept samples, and compute every measure's rows."""
        plan, shard, sample_cap = self.plan, self.shard, self.sample_cap
        stream, accumulators = plan.merged(shard.world > 1)
        kept = self.kept.samples(shard, plan.memory.store_samples and shard.world > 1, self.stored_limit())
        capped = kept.head(sample_cap)
        n_total = stream.n if stream is not None else None
        for acc in accumulators.values():
            n_total = max(n_total or 0, getattr(acc, "n", 0))
        if n_total is None:
            n_total = kept.n
        if n_total == 0 and kept.n == 0:
            raise ValueError("the loader yielded no samples")
        if shard.world > 1 and result_on == "rank0" and shard.rank != 0:
            return None
        layers_a, layers_b = self.sides.layers_a, self.sides.layers_b
        rows = measure_rows(plan, stream, accumulators, kept, capped, n_total, sample_cap, layers_a, layers_b)
        columns = ["layer_a", "layer_b", "measure", "value", "n", "route"]
        result = Comparison(pd.DataFrame(rows, columns=columns), layers_a, layers_b)
        result._capped = (capped.xs, capped.ys)  # the samples inference runs on (see add_inference)
        # pool="tokens": each token carries its sentence's order key; inference permutes whole sentences
        blocks = plan.tokens and capped.n
        result._blocks = torch.unique(capped.keys, return_inverse=True)[1] if blocks else None
        result.plan = plan.memory
        return result

    def stored_limit(self) -> int | None:
        """How many of the gathered samples to keep: all for a stored route, else the capped ones."""
        return None if any(self.plan.stored(m) for m in self.plan.order) else self.sample_cap


class _Kept:
    """The samples whose features are kept (stored route, capped measures, inference), batch by batch.

    Each rank keeps its own first ``cap`` samples: the global first ones are among them.
    """

    def __init__(self, n_a: int, n_b: int) -> None:
        self.a: list[list[Tensor]] = [[] for _ in range(n_a)]
        self.b: list[list[Tensor]] = [[] for _ in range(n_b)]
        self.outputs: list[list[Tensor]] = [[], []]
        self.keys: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.n = 0
        self.cap = 0  # samples whose features are kept, set by the memory plan

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


def _check_tokens(pool: Pool, plan: Plan) -> bool:
    """pool="tokens": refuse measures that need per-sample labels, which tokens do not have (inference is
    safe: it moves and resamples whole sentences, the ``blocks`` add_inference passes on)."""
    if not (isinstance(pool, str) and pool == "tokens"):
        return False
    if plan.needs_labels:
        raise ValueError(
            f"pool='tokens' has no per-token labels for {sorted(plan.needs_labels)}; use repsim.token_features "
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
