"""``repsim.compare``: two models, one loader, every requested layer pair, in one streaming pass.

The pass reads top to bottom in :func:`compare`: the arguments are checked and every measure
resolved once (:func:`repsim.pipeline.routes.resolve_measures`), then one
:class:`~repsim.pipeline.routes.Pass` holds all the state: the loader is walked
(:func:`repsim.networks.batches.walk`), both models run through their hooks, ``Pass.update`` takes
each batch (the first makes the memory plan), ``Pass.finish`` merges the ranks' states
(:mod:`repsim.core.distributed`) and computes the table (:class:`repsim.pipeline.comparison.Comparison`),
and inference adds its columns when asked.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core import distributed as D
from ..core.budget import parse_memory
from ..core.deprecation import deprecated_arguments
from ..core.validation import check_choice
from ..measures.blocked import workspace_limit
from ..measures.cka import BiasedCKAChanceWarning
from ..measures.knn import knn_cache, with_knn
from ..networks.batches import Batch, batch_labels, model_inputs, walk
from ..networks.features import eval_mode, expected_samples, resolve_device
from ..networks.hooks import (
    HIDDEN_STATES,
    OUTPUT_LAYER,
    POOLS,
    FeatureHooks,
    Pool,
    default_layers,
    forward_features,
    with_hidden_states,
)
from .comparison import Comparison, add_inference, check_inference
from .plans import MemoryPlan
from .routes import COMPARE_ONLY, MeasureSpec, Pass, Setup, available_measures, resolve_measures

__all__ = ["COMPARE_ONLY", "OUTPUT_LAYER", "Comparison", "available_measures", "compare", "plan"]

_LEGACY_ORDER = (
    "layers_a", "layers_b", "measures", "device", "max_samples", "pool", "sample_cap", "dtype", "progress",
    "inputs_a", "inputs_b", "paired", "autocast", "channels_last", "distributed", "result_on", "measure_options",
    "inference", "memory", "dry_run", "sketch", "sketch_seed",
)  # fmt: skip


@deprecated_arguments(positional=_LEGACY_ORDER)
@torch.inference_mode()
def compare(
    model_a: nn.Module,
    model_b: nn.Module,
    loader: Iterable,
    *,
    layers_a: Sequence[str] | str | None = None,
    layers_b: Sequence[str] | str | None = None,
    measures: Sequence[str] = ("linear_cka", "debiased_cka", "rsa"),
    device=None,
    max_samples: int | None = None,
    pool: Pool = "mask_mean",
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
    layers: Sequence[str] | str | None = None,
    knn: str | None = None,
) -> Comparison | MemoryPlan | None:
    """Compare two models layer by layer on the samples of ``loader``: a :class:`Comparison` (a tidy
    table of every measure between every pair of ``layers_a`` x ``layers_b``).

    One pass: each batch goes through both models (eval mode, ``inference_mode``, on ``device``), hooks capture the
    layers (default :func:`repsim.networks.hooks.default_layers`; ``"hidden_states"`` for transformers; ``layers=`` for
    both models; ``layers_b`` left out: ``layers_a``'s when ``model_b`` is ``model_a``, else ``model_b``'s defaults),
    ``pool`` makes (n, d) rows (default ``"mask_mean"``: the mean over the real tokens of batches with an
    ``attention_mask``, else the plain ``"mean"``; "flatten", ..., "tokens", or a callable). ``measures``: registry
    names (:func:`repsim.list_measures`) or ``minibatch_cka``; streaming ones see every sample, the others the first
    ``sample_cap``. A memory plan made after the first batch chooses each measure's route within ``memory`` or refuses
    before any work (``dry_run=True`` returns it; ``sketch=k`` projects wide layers); every row's ``route`` says how it
    was computed; a cell that cannot be computed is NaN with its reason in ``error``; ``knn`` sets the neighbour
    measures' kNN route (:func:`repsim.knn_lists`). ``inference`` adds p-values, intervals or calibrated scores.
    Batches may be tensors, ``(x, y)`` tuples or dicts (passed by keyword); ``inputs_a``/``inputs_b``/ ``paired`` give
    the two models different inputs. ``autocast``/``channels_last`` for speed. Under ``torchrun`` each rank reads its
    shard and the states merge in rank order (``result_on``, ``distributed``). Hooks and training flags are restored
    afterwards, also after an exception.
    Every argument after ``loader`` is keyword-only; in detail: docs/guide/compare.md.
    """
    specs, inference = _checked(measures, with_knn(measures, measure_options, knn), inference, pool, sample_cap,
                                result_on, sketch)  # fmt: skip
    shard = D.shard_of(loader, distributed)
    if max_samples is not None and shard.world > 1:
        raise ValueError("max_samples is not supported under a process group; subset the dataset before sharding it")
    needs_labels = any(s.needs_labels for s in specs)
    sides = _Sides.of(model_a, model_b, (layers, layers_a, layers_b), inputs_a, inputs_b, paired, needs_labels)
    device = resolve_device(device, sides.model_a)
    budget = parse_memory(memory, device)  # before the models move: a GPU's free memory is what they leave
    n_expected = None if pool == "tokens" else expected_samples(loader, max_samples)  # tokens: not known in advance
    sides.to(device, channels_last)
    run = Pass(specs, Setup(sides.layers_a, sides.layers_b, sides.self_grid, shard, budget, n_expected, sample_cap,
                            dtype, sketch, sketch_seed, inference, pool == "tokens", dry_run))  # fmt: skip
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with eval_mode(sides.model_a, sides.model_b), sides.hooks(pool) as hooks:
        for batch in walk(loader, shard, sides.adapt, max_samples, device, channels_last, progress, "compare"):
            with amp:
                xs, ys, outputs = sides.forward(hooks, batch, run.functional)
            run.update(batch, xs, ys, outputs)
            if dry_run:
                break
    memory = run.memory or run.plan(None)  # a rank that saw no sample still joins the plan's collective
    if dry_run:
        return memory
    with workspace_limit(memory.workspace), warnings.catch_warnings(), knn_cache():  # one kNN search per layer
        warnings.simplefilter("ignore", BiasedCKAChanceWarning)  # given once below, for the whole comparison
        result = run.finish(result_on)
        if inference and result is not None:
            add_inference(result, inference, progress)
    return run.chance_warning(result)


def plan(model_a: nn.Module, model_b: nn.Module, loader: Iterable, **options) -> MemoryPlan:
    """The :class:`~repsim.pipeline.plans.MemoryPlan` that :func:`compare` would run under, after one forward
    pass on the first batch: ``compare(model_a, model_b, loader, **options, dry_run=True)``."""
    if "dry_run" in options:
        raise ValueError("plan() is compare(..., dry_run=True); do not pass dry_run")
    return compare(model_a, model_b, loader, dry_run=True, **options)


def _checked(measures, measure_options, inference, pool, sample_cap, result_on, sketch) -> tuple[list, dict | None]:
    """Every argument that can be checked before the pass: the measures resolved once (registry entry,
    options, kind), the inference spec, the pool, the caps."""
    specs = resolve_measures(measures, measure_options)
    inference = check_inference(inference)
    if not callable(pool):
        check_choice(pool, "pool", POOLS)
    if sample_cap < 4:
        raise ValueError(f"sample_cap must be at least 4, got {sample_cap}")
    if result_on not in ("all", "rank0"):
        raise ValueError(f"result_on must be 'all' or 'rank0', got {result_on!r}")
    if sketch is not None and not (isinstance(sketch, int) and not isinstance(sketch, bool) and sketch >= 2):
        raise ValueError(f"sketch must be an integer number of dimensions >= 2 (e.g. sketch=512), got {sketch!r}")
    _check_tokens(pool, specs)
    return specs, inference


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
    def of(cls, model_a, model_b, layers, inputs_a, inputs_b, paired, needs_labels) -> _Sides:
        """``layers``: (layers, layers_a, layers_b) as given; ``layers=`` sets both models'."""
        layers, layers_a, layers_b = layers
        if layers is not None:
            if layers_a is not None or layers_b is not None:
                raise ValueError("give layers= (both models) or layers_a=/layers_b=, not both")
            layers_a = layers_b = layers
        if paired and (inputs_a is not None or inputs_b is not None):
            raise ValueError("give either paired=True (the loader yields pairs) or inputs_a/inputs_b, not both")
        model_a, model_b, layers_a, layers_b = _hidden_state_layers(model_a, model_b, layers_a, layers_b)
        layers_a, layers_b = ([names] if isinstance(names, str) else names for names in (layers_a, layers_b))
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
            FeatureHooks(self.model_a, hooked_a, pool=pool) as hooks_a,
            contextlib.nullcontext() if one else FeatureHooks(self.model_b, self.layers_b, pool=pool) as hooks_b,
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


def _check_tokens(pool: Pool, specs: list[MeasureSpec]) -> None:
    """pool="tokens": refuse measures that need per-sample labels, which tokens do not have (inference is
    safe: it moves and resamples whole sentences, the ``blocks`` of the Comparison)."""
    labelled = sorted(s.name for s in specs if s.needs_labels)
    if isinstance(pool, str) and pool == "tokens" and labelled:
        raise ValueError(
            f"pool='tokens' has no per-token labels for {labelled}; use repsim.token_features "
            "and call the measure with your token labels"
        )


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
