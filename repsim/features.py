"""Feeding loaders through models: batch unpacking, device/eval handling, feature extraction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .hooks import FeatureHooks, Pool, default_layers, forward_features

_INPUT_KEYS = ("x", "image", "images", "input", "inputs", "pixel_values", "img")
_LABEL_KEYS = ("y", "label", "labels", "target", "targets")


def split_batch(batch) -> tuple[Tensor, Tensor | None]:
    """(inputs, labels or None) from a batch that is a tensor, an (x, y, ...) tuple or a dict."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        if x is None:
            x = next((v for v in batch.values() if isinstance(v, Tensor)), None)
        if x is None:
            raise ValueError(
                f"cannot find the inputs in a dict batch with keys {list(batch)}; use one of {_INPUT_KEYS}"
            )
        y = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        return x, torch.as_tensor(y) if y is not None else None
    if isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
        y = batch[1] if len(batch) > 1 else None
        return batch[0], torch.as_tensor(y) if y is not None and not isinstance(y, str) else None
    raise ValueError(f"cannot read a batch of type {type(batch).__name__}; yield tensors, (x, y) tuples or dicts")


def resolve_device(device, model: nn.Module | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if model is not None:
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(*models: nn.Module):
    """Eval mode for the duration; restores each module's own training flag afterwards."""
    flags = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for pairs in flags:
            for m, was_training in pairs:
                m.training = was_training


def limited(loader: Iterable, max_samples: int | None) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Batches of the loader, the last one cut so that at most ``max_samples`` samples come out."""
    seen = 0
    for batch in loader:
        x, y = split_batch(batch)
        if max_samples is not None:
            if seen >= max_samples:
                return
            keep = max_samples - seen
            x, y = x[:keep], (y[:keep] if y is not None else None)
        seen += x.shape[0]
        yield x, y


def progress_batches(loader: Iterable, max_samples: int | None, desc: str, progress: bool):
    """:func:`limited` batches behind a tqdm bar (silent when ``progress`` is False)."""
    return tqdm(
        limited(loader, max_samples),
        total=total_batches(loader, max_samples),
        desc=desc,
        disable=not progress,
        leave=False,
    )


def total_batches(loader, max_samples: int | None) -> int | None:
    try:
        n = len(loader)
    except TypeError:
        return None
    batch_size = getattr(loader, "batch_size", None)
    if max_samples is not None and batch_size:
        n = min(n, -(-max_samples // batch_size))
    return n


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable,
    layers: Sequence[str] | str | None = None,
    pool: Pool = "mean",
    device=None,
    max_samples: int | None = None,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    distributed: bool | None = None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Features of ``layers`` (default: :func:`repsim.hooks.default_layers`) over a whole loader.

    Returns ({layer: (n, d) tensor on CPU}, labels (n,) or None). Runs in eval mode without
    gradients; the model's training flags are restored afterwards, and its hooks removed.
    ``dtype`` casts stored features (e.g. torch.float16 to halve memory); default keeps them.

    Under ``torchrun`` (a process group, see :mod:`repsim.distributed`) each rank runs its shard
    of the loader and every rank returns all features, in the global sample order (padding
    repeats of a ``DistributedSampler`` dropped); ``distributed=False`` keeps each rank's own.
    """
    from . import distributed as D

    if isinstance(pool, str) and pool == "tokens":  # rows per token need the batch's attention mask
        raise ValueError("pool='tokens' is for token sequences: use repsim.token_features(model, batches, layers)")
    shard = D.shard_of(loader, distributed)
    if shard.world > 1:
        if max_samples is not None:
            raise ValueError("max_samples is not supported under a process group; subset the dataset first")
        return _extract_sharded(model, loader, layers, pool, device, progress, dtype, shard)
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers) if layers is not None else default_layers(model)
    device = resolve_device(device, model)
    model.to(device)
    chunks: dict[str, list[Tensor]] = {name: [] for name in layers}
    labels: list[Tensor] = []
    with eval_mode(model), FeatureHooks(model, layers, pool) as hooks:
        for x, y in progress_batches(loader, max_samples, "features", progress):
            feats = forward_features(model, hooks, _to(x, device))
            for name, f in feats.items():
                chunks[name].append(f.to("cpu", dtype=dtype or f.dtype))
            if y is not None:
                labels.append(y.cpu())
    if not chunks[layers[0]]:
        raise ValueError("the loader yielded no samples")
    feats = {name: torch.cat(c) for name, c in chunks.items()}
    n = feats[layers[0]].shape[0]
    y = torch.cat(labels) if len(labels) and sum(len(t) for t in labels) == n else None
    return feats, y


@torch.inference_mode()
def _extract_sharded(model, loader, layers, pool, device, progress, dtype, shard):
    from . import distributed as D

    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers) if layers is not None else default_layers(model)
    device = resolve_device(device, model)
    model.to(device)
    chunks: dict[str, list[Tensor]] = {name: [] for name in layers}
    labels: list[Tensor] = []
    keys: list[Tensor] = []
    n_stream = 0
    with eval_mode(model), FeatureHooks(model, layers, pool) as hooks:
        for local_batch, batch in enumerate(tqdm(loader, desc="features", disable=not progress, leave=False)):
            x, y = split_batch(batch)
            k, keep = shard.keys(n_stream, local_batch, x.shape[0])
            n_stream += x.shape[0]
            if keep <= 0:
                continue
            feats = forward_features(model, hooks, _to(x[:keep], device))
            for name, f in feats.items():
                chunks[name].append(f.to("cpu", dtype=dtype or f.dtype))
            if y is not None:
                labels.append(y[:keep].cpu())
            keys.append(k[:keep])
    local = (
        {n: torch.cat(c) for n, c in chunks.items() if c},
        torch.cat(labels) if labels else None,
        torch.cat(keys) if keys else None,
    )
    parts = [p for p in D.gather(local) if p[2] is not None]
    if not parts:
        raise ValueError("the loader yielded no samples")
    order = torch.argsort(torch.cat([p[2] for p in parts]))
    feats = {n: torch.cat([p[0][n] for p in parts])[order] for n in layers}
    y = torch.cat([p[1] for p in parts])[order] if all(p[1] is not None for p in parts) else None
    if y is not None and y.shape[0] != order.shape[0]:
        y = None
    return feats, y


def _to(x, device):
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device, non_blocking=True) if isinstance(x, Tensor) else x
