"""``repsim.compare``: two models, one loader, every requested layer pair, in one streaming pass."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from ._io import atomic_write_text
from .features import _to, eval_mode, progress_batches, resolve_device
from .hooks import FeatureHooks, Pool, default_layers, forward_features
from .measures.cka import kernel_cka
from .measures.gram import gram_gap
from .measures.rsa import rsa_grid
from .streaming import MinibatchCKA, StreamingLinearCKA

# Measures that stream over every sample in O(d^2) memory.
STREAMING: dict[str, Callable[[torch.dtype | None], object]] = {
    "linear_cka": lambda dtype: StreamingLinearCKA(debiased=False, dtype=dtype),
    "debiased_cka": lambda dtype: StreamingLinearCKA(debiased=True, dtype=dtype),
    "minibatch_cka": lambda dtype: MinibatchCKA(debiased=True, dtype=dtype),
}


def _pairwise(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[list[Tensor], list[Tensor]], Tensor]:
    return lambda xs, ys: torch.tensor([[fn(x, y).item() for y in ys] for x in xs], dtype=torch.float64)


# Measures that need all samples at once (O(n^2) memory): computed on the first ``sample_cap`` samples.
CAPPED: dict[str, Callable[[list[Tensor], list[Tensor]], Tensor]] = {
    "rsa": lambda xs, ys: rsa_grid(xs, ys, rdm="cosine", compare="pearson"),
    "rsa_spearman": lambda xs, ys: rsa_grid(xs, ys, rdm="cosine", compare="spearman"),
    "kernel_cka": _pairwise(lambda x, y: kernel_cka(x, y)),
    "debiased_kernel_cka": _pairwise(lambda x, y: kernel_cka(x, y, debiased=True)),
    "frobenius_gap": _pairwise(lambda x, y: gram_gap(x, y).frobenius_gap),
    "cka_lower_bound": _pairwise(lambda x, y: gram_gap(x, y).cka_lower_bound),
}
MEASURES = (*STREAMING, *CAPPED)


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
        return m.loc[self.layers_a or list(m.index), self.layers_b or list(m.columns)]

    def heatmap(self, measure: str | None = None, ax=None, **kwargs):
        """Seaborn heatmap of one measure over the layer grid; returns the Axes."""
        from .plotting import heatmap

        measure = self._measure(measure)
        bounded = measure not in ("frobenius_gap",)
        return heatmap(
            self.matrix(measure), title=measure, ax=ax, **({"vmin": 0.0, "vmax": 1.0} if bounded else {}), **kwargs
        )

    def to_csv(self, path) -> Path:
        """Write the tidy table atomically; returns the path."""
        return atomic_write_text(path, self.table.to_csv(index=False))


def _check_measures(measures: Sequence[str]) -> list[str]:
    if isinstance(measures, str):
        measures = [measures]
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(f"unknown measure(s) {unknown}; choose from {list(MEASURES)}")
    return list(dict.fromkeys(measures))


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
) -> Comparison:
    """Compare two models layer by layer on the samples of ``loader``.

    One pass over the loader: each batch goes through both models (eval mode, no gradients, on
    ``device``), hooks capture ``layers_a``/``layers_b`` (module names as in ``named_modules()``;
    default :func:`repsim.hooks.default_layers`), conv maps become vectors by ``pool`` ("mean":
    global average pool, the default; "flatten"; or a callable), and every layer pair is
    accumulated in streaming form. Streaming measures (``linear_cka``, ``debiased_cka``,
    ``minibatch_cka``) see every sample in O(d^2) memory; measures that need all samples at once
    (``rsa``, ``rsa_spearman``, ``kernel_cka``, ``debiased_kernel_cka``, ``frobenius_gap``,
    ``cka_lower_bound``) use the first ``sample_cap`` samples (O(sample_cap^2) memory). The
    table's ``n`` column says which. Hooks are removed and training flags restored afterwards,
    also after an exception. Passing the same module twice runs it once per batch.
    """
    measures = _check_measures(measures)
    if sample_cap < 4:
        raise ValueError(f"sample_cap must be at least 4, got {sample_cap}")
    same = model_a is model_b
    layers_a = list(layers_a) if layers_a is not None else default_layers(model_a)
    layers_b = list(layers_b) if layers_b is not None else (layers_a if same else default_layers(model_b))
    device = resolve_device(device, model_a)
    model_a.to(device)
    model_b.to(device)
    streams = {m: STREAMING[m](dtype) for m in measures if m in STREAMING}
    capped = [m for m in measures if m in CAPPED]
    kept_a: list[list[Tensor]] = [[] for _ in layers_a]
    kept_b: list[list[Tensor]] = [[] for _ in layers_b]
    n_seen = n_kept = 0
    # One model on both sides runs once per batch, with the union of both layer lists hooked.
    hooked_a = list(dict.fromkeys(layers_a + layers_b)) if same else layers_a
    with (
        eval_mode(model_a, model_b),
        FeatureHooks(model_a, hooked_a, pool) as hooks_a,
        contextlib.nullcontext() if same else FeatureHooks(model_b, layers_b, pool) as hooks_b,
    ):
        for x, _ in progress_batches(loader, max_samples, "compare", progress):
            x = _to(x, device)
            feats_a = forward_features(model_a, hooks_a, x)
            feats_b = feats_a if same else forward_features(model_b, hooks_b, x)
            xs = [feats_a[name] for name in layers_a]
            ys = [feats_b[name] for name in layers_b]
            for acc in streams.values():
                acc.update(xs, None if (same and layers_a == layers_b) else ys)
            if capped and n_kept < sample_cap:
                take = min(sample_cap - n_kept, xs[0].shape[0])
                for keep, f in zip(kept_a + kept_b, xs + ys, strict=True):
                    keep.append(f[:take])
                n_kept += take
            n_seen += xs[0].shape[0]
    if n_seen == 0:
        raise ValueError("the loader yielded no samples")
    rows = []

    def add(measure: str, grid: Tensor, n: int) -> None:
        for i, la in enumerate(layers_a):
            for j, lb in enumerate(layers_b):
                rows.append({"layer_a": la, "layer_b": lb, "measure": measure, "value": float(grid[i, j]), "n": n})

    for measure, acc in streams.items():
        add(measure, acc.compute().cpu(), n_seen)
    if capped:
        xa = [torch.cat(chunks) for chunks in kept_a]
        xb = [torch.cat(chunks) for chunks in kept_b]
        for measure in capped:
            add(measure, CAPPED[measure](xa, xb).cpu(), n_kept)
    return Comparison(pd.DataFrame(rows), layers_a, layers_b)
