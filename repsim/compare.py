"""``repsim.compare``: two models, one loader, every requested layer pair, in one streaming pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from ._io import atomic_write_text
from .features import _to, eval_mode, progress_batches, resolve_device
from .hooks import OUTPUT, FeatureHooks, Pool, default_layers, forward_features
from .measures.moments import StreamingMoments
from .measures.registry import MeasureInfo, get_measure, measure_grid, registered_names
from .streaming import MinibatchCKA

# compare-only: an estimator of population CKA from per-batch Gram matrices, not a function of (x, y)
MINIBATCH = "minibatch_cka"


def available_measures() -> list[str]:
    """Every name ``compare`` accepts: the whole measure registry plus ``minibatch_cka``."""
    return [*registered_names(), MINIBATCH]


@dataclass
class Comparison:
    """The result of :func:`compare`: a tidy table and views of it."""

    table: pd.DataFrame
    """Columns: layer_a, layer_b, measure, value, n (samples the value is computed on)."""
    layers_a: list[str] = field(default_factory=list)
    layers_b: list[str] = field(default_factory=list)

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
        info = get_measure(measure) if measure != MINIBATCH else None
        bounded = info is None or (info.larger_is_more_similar and info.identity_value == 1.0)
        marks = self._not_significant(measure)
        return heatmap(
            self.matrix(measure),
            title=measure,
            ax=ax,
            marks=marks,
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
        m = flags.pivot(index="layer_a", columns="layer_b", values="flag")
        return m.loc[self.matrix(measure).index, self.matrix(measure).columns]

    def to_csv(self, path) -> Path:
        """Write the tidy table atomically; returns the path."""
        return atomic_write_text(path, self.table.to_csv(index=False))


def _check_measures(measures: Sequence[str]) -> list[str]:
    if isinstance(measures, str):
        measures = [measures]
    known = available_measures()
    unknown = [m for m in measures if m not in known]
    if unknown or not measures:
        raise ValueError(f"unknown measure(s) {unknown}; choose from {known} (see repsim.list_measures())")
    return list(dict.fromkeys(measures))


def _check_options(measures: list[str], options: Mapping[str, Mapping] | None) -> dict[str, dict]:
    options = {k: dict(v) for k, v in (options or {}).items()}
    stray = sorted(set(options) - set(measures))
    if stray:
        raise ValueError(f"measure_options names measures that are not requested: {stray}")
    return options


@torch.no_grad()
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
    measure_options: Mapping[str, Mapping] | None = None,
    inference: Mapping | None = None,
) -> Comparison:
    """Compare two models layer by layer on the samples of ``loader``.

    One pass over the loader: each batch goes through both models (eval mode, no gradients, on
    ``device``), hooks capture ``layers_a``/``layers_b`` (module names as in ``named_modules()``;
    default :func:`repsim.hooks.default_layers`), conv maps become vectors by ``pool`` ("mean":
    global average pool, the default; "flatten"; or a callable), and every layer pair is
    accumulated in streaming form.

    ``measures``: any name of :func:`repsim.list_measures` (plus ``minibatch_cka``), with options
    per measure in ``measure_options`` (e.g. ``{"svcca": {"variance": 0.95}}``). Streaming
    measures see every sample in O(d^2) memory: all the second-moment measures (CKA, the CCA
    family, Procrustes and shape metrics, regression, GULP, ...) share one float64 moment
    accumulator per layer pair, so adding one costs no extra pass. Measures that need all samples
    at once (RSA, kernel CKA, neighbourhood, topology, ...) use the first ``sample_cap`` samples.
    The table's ``n`` column says which. Functional measures (``jsd``, ``disagreement``,
    ``abs_acc_diff``) compare the models' outputs (row ``layer_a = layer_b = "output"``);
    ``abs_acc_diff`` uses the loader's labels. Hooks are removed and training flags restored
    afterwards, also after an exception. Passing the same module twice runs it once per batch.

    ``inference={"permutations": 1000, "bootstrap": 1000}`` (optional keys ``ci``, ``adjust``:
    "holm" | "bh" | "none", ``seed``) adds ``p_value``, ``p_adjusted`` (within each measure's
    grid), ``ci_low``, ``ci_high`` and ``n_inference`` columns, computed on the first
    ``sample_cap`` samples (see :mod:`repsim.inference`).
    """
    measures = _check_measures(measures)
    inference = _check_inference(inference)
    options = _check_options(measures, measure_options)
    infos = {m: get_measure(m) for m in measures if m != MINIBATCH}
    functional = [m for m, info in infos.items() if info.needs_outputs]
    representational = [m for m in measures if m not in functional]
    if sample_cap < 4:
        raise ValueError(f"sample_cap must be at least 4, got {sample_cap}")
    same = model_a is model_b
    layers_a = list(layers_a) if layers_a is not None else default_layers(model_a)
    layers_b = list(layers_b) if layers_b is not None else (layers_a if same else default_layers(model_b))
    device = resolve_device(device, model_a)
    model_a.to(device)
    model_b.to(device)
    moment_measures = [m for m in representational if m in infos and infos[m].from_moments is not None]
    moments = StreamingMoments(dtype=dtype) if moment_measures else None
    streams = {m: _accumulator(infos.get(m), dtype, options.get(m, {})) for m in representational}
    streams = {m: acc for m, acc in streams.items() if acc is not None and m not in moment_measures}
    capped = [m for m in representational if m not in streams and m not in moment_measures]
    kept_a: list[list[Tensor]] = [[] for _ in layers_a]
    kept_b: list[list[Tensor]] = [[] for _ in layers_b]
    kept_out: list[list[Tensor]] = [[], []]
    kept_labels: list[Tensor] = []
    needs_labels = any(infos[m].needs_labels for m in functional)
    n_seen = n_kept = 0
    # One model on both sides runs once per batch, with the union of both layer lists hooked.
    hooked_a = list(dict.fromkeys(layers_a + layers_b)) if same else layers_a
    with (
        eval_mode(model_a, model_b),
        FeatureHooks(model_a, hooked_a, pool) as hooks_a,
        contextlib.nullcontext() if same else FeatureHooks(model_b, layers_b, pool) as hooks_b,
    ):
        for x, labels in progress_batches(loader, max_samples, "compare", progress):
            x = _to(x, device)
            feats_a = forward_features(model_a, hooks_a, x, keep_output=bool(functional))
            feats_b = feats_a if same else forward_features(model_b, hooks_b, x, keep_output=bool(functional))
            xs = [feats_a[name] for name in layers_a]
            ys = [feats_b[name] for name in layers_b]
            self_grid = same and layers_a == layers_b
            if moments is not None:
                moments.update(xs, None if self_grid else ys)
            for acc in streams.values():
                acc.update(xs, None if self_grid else ys)
            if (capped or functional or inference) and n_kept < sample_cap:
                take = min(sample_cap - n_kept, xs[0].shape[0])
                if capped or inference:
                    for keep, f in zip(kept_a + kept_b, xs + ys, strict=True):
                        keep.append(f[:take])
                if functional:
                    kept_out[0].append(feats_a[OUTPUT][:take])
                    kept_out[1].append(feats_b[OUTPUT][:take])
                    if needs_labels:
                        if labels is None:
                            raise ValueError("abs_acc_diff needs labels: the loader must yield (x, y) or dict batches")
                        kept_labels.append(labels[:take])
                n_kept += take
            n_seen += xs[0].shape[0]
    if n_seen == 0:
        raise ValueError("the loader yielded no samples")
    rows = []

    def add(measure: str, grid: Tensor, n: int) -> None:
        for i, la in enumerate(layers_a):
            for j, lb in enumerate(layers_b):
                rows.append({"layer_a": la, "layer_b": lb, "measure": measure, "value": float(grid[i, j]), "n": n})

    for measure in representational:
        if measure in moment_measures:
            grid = moments.compute(measure, **options.get(measure, {}))
        elif measure in streams:
            grid = streams[measure].compute()
        else:
            continue
        add(measure, grid.reshape(len(layers_a), len(layers_b)).cpu(), n_seen)
    if capped or inference:
        xa = [torch.cat(chunks) for chunks in kept_a]
        xb = [torch.cat(chunks) for chunks in kept_b]
        for measure in capped:
            opts = options.get(measure, {})
            if "dtype" in infos[measure].options() and "dtype" not in opts:
                opts = {**opts, "dtype": dtype}  # compare's precision applies to every measure that has one
            add(measure, measure_grid(measure, xa, xb, **opts).cpu(), n_kept)
    for measure in functional:
        out_a, out_b = torch.cat(kept_out[0]), torch.cat(kept_out[1])
        extra = {"labels": torch.cat(kept_labels).to(out_a.device)} if infos[measure].needs_labels else {}
        value = get_measure(measure).fn(out_a, out_b, **{**options.get(measure, {}), **extra})
        rows.append({"layer_a": OUTPUT, "layer_b": OUTPUT, "measure": measure, "value": float(value), "n": n_kept})
    table = pd.DataFrame(rows)
    if inference:
        from .inference import inference_table

        extra = inference_table(
            xa,
            xb,
            layers_a,
            layers_b,
            [m for m in measures if m != MINIBATCH],
            permutations=inference["permutations"],
            bootstrap_resamples=inference["bootstrap"],
            ci=inference["ci"],
            adjust=inference["adjust"],
            seed=inference["seed"],
            measure_options=options,
            progress=progress,
        )
        if len(extra):
            table = table.merge(extra, on=["layer_a", "layer_b", "measure"], how="left")
    return Comparison(table, layers_a, layers_b)


INFERENCE_KEYS = {"permutations": 0, "bootstrap": 0, "ci": 0.95, "adjust": "holm", "seed": 0}


def _check_inference(inference: Mapping | None) -> dict | None:
    if not inference:
        return None
    unknown = sorted(set(inference) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(f"inference takes the keys {sorted(INFERENCE_KEYS)}; got unknown {unknown}")
    spec = {**INFERENCE_KEYS, **inference}
    if not (spec["permutations"] or spec["bootstrap"]):
        raise ValueError("inference needs permutations > 0 or bootstrap > 0 (e.g. {'permutations': 1000})")
    return spec


def _accumulator(info: MeasureInfo | None, dtype, options: dict):
    """A streaming accumulator for measures that have their own (None: moments or capped)."""
    if info is None:  # minibatch_cka
        return MinibatchCKA(debiased=True, dtype=dtype)
    if info.from_moments is None and info.accumulator is not None:
        return info.accumulator(dtype=dtype, **{**info.defaults, **options})
    return None
