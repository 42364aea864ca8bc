"""From a loader's batches to model inputs: unpacking, labels, device moves, and the one loader loop.

Every feature pass of repsim (:func:`repsim.compare`, :func:`repsim.compare_many`,
:func:`repsim.extract_features`, the text features) walks its loader with :func:`walk`, so the
``max_samples`` cap, the drop of a ``DistributedSampler``'s padding repeats, the global order
keys (:mod:`repsim.core.distributed`), the device copies and the progress bar behave alike everywhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.distributed import Shard

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


def _keyword_names(model: nn.Module) -> set[str] | None:
    """Keyword parameters of ``model.forward`` (None: it takes ``**kwargs``)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def model_inputs(batch, model: nn.Module):
    """What ``model`` is called with: a dict batch's entries it takes by keyword, else the batch's inputs."""
    if isinstance(batch, Mapping):
        names = _keyword_names(model)
        kwargs = {k: v for k, v in batch.items() if k not in _LABEL_KEYS and (names is None or k in names)}
        if kwargs:
            return kwargs
    if isinstance(batch, (Tensor, Mapping)) or (isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor)):
        return split_batch(batch)[0] if not isinstance(batch, Tensor) else batch
    return batch


def batch_labels(batch) -> Tensor | None:
    """The batch's labels, or None when it has none (or cannot be read as a labelled batch)."""
    try:
        return split_batch(batch)[1]
    except (ValueError, TypeError):
        return None


def batch_size(inputs) -> int:
    """Samples in one batch of model inputs (a tensor, or a dict holding tensors)."""
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    if isinstance(inputs, Mapping):
        return next(v.shape[0] for v in inputs.values() if isinstance(v, Tensor))
    raise ValueError(f"cannot tell the batch size of inputs of type {type(inputs).__name__}; give tensors or dicts")


def head(inputs, k: int):
    """The first ``k`` samples of a batch of model inputs (a dict's tensors each cut)."""
    if isinstance(inputs, Tensor):
        return inputs[:k]
    if isinstance(inputs, Mapping):
        return {key: (v[:k] if isinstance(v, Tensor) else v) for key, v in inputs.items()}
    return inputs


def to_device(inputs, device: torch.device, channels_last: bool = False):
    """Host-to-device copy that overlaps compute on CUDA (pinned source, ``non_blocking``)."""
    if isinstance(inputs, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in inputs.items()}
    if not isinstance(inputs, Tensor):
        return inputs
    if device.type == "cuda" and inputs.device.type == "cpu" and not inputs.is_pinned():
        inputs = inputs.pin_memory()
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def total_batches(loader, max_samples: int | None) -> int | None:
    """Batches a run reads (for the progress bar): the loader's length, capped by ``max_samples``."""
    try:
        n = len(loader)
    except TypeError:
        return None
    batch_size = getattr(loader, "batch_size", None)
    if max_samples is not None and batch_size:
        n = min(n, -(-max_samples // batch_size))
    return n


@dataclass
class Batch:
    """One batch as :func:`walk` yields it: only the samples this rank keeps, in the loader's order."""

    inputs: object
    """Model inputs (of the first model when the adapter gives two sides)."""
    other: object | None
    """The second model's inputs (the same object as ``inputs`` when both models see the same)."""
    labels: Tensor | None
    keys: Tensor
    """Global order keys of the kept samples (see :meth:`repsim.core.distributed.Shard.keys`)."""
    size: int
    """Samples kept: a DistributedSampler's padding repeats and samples past ``max_samples`` are cut."""
    index: int
    """The batch's number in this rank's loader (counting the batches that kept nothing)."""


def walk(
    loader: Iterable,
    shard: Shard,
    adapt: Callable,
    max_samples: int | None = None,
    device: torch.device | None = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "",
    skip: Callable[[int], bool] | None = None,
) -> Iterator[Batch]:
    """The loader's batches as model inputs, cut to what this rank keeps and moved to ``device``.

    ``adapt(batch)`` gives ``(inputs, other, labels)`` (``other`` None for one model). A batch's
    samples get their global order keys from ``shard``; padding repeats of a DistributedSampler
    (always a suffix of a rank's stream) are cut, and so are the samples past ``max_samples``:
    the loop stops reading once that many came out. ``skip(size)``: True passes over a batch
    before it is copied (a resumed extraction); ``device`` None leaves the inputs on the host.
    """
    bar = tqdm(loader, desc=desc, total=total_batches(loader, max_samples), disable=not progress, leave=False)
    n_stream = n_real = 0
    for index, raw in enumerate(bar):
        if max_samples is not None and n_real >= max_samples:
            return
        inputs, other, labels = adapt(raw)
        size = batch_size(inputs)
        if other is not None and other is not inputs and batch_size(other) != size:
            raise ValueError(f"the two models' inputs have {size} and {batch_size(other)} samples in one batch")
        keys, keep = shard.keys(n_stream, index, size)
        n_stream += size
        if max_samples is not None:
            keep = min(keep, max_samples - n_real)
        if keep <= 0:
            continue
        n_real += keep
        if skip is not None and skip(keep):
            continue
        if keep < size:
            same = other is inputs
            inputs, labels = head(inputs, keep), (labels[:keep] if labels is not None else None)
            other = inputs if same else (None if other is None else head(other, keep))
        if device is not None:
            same = other is inputs
            inputs = to_device(inputs, device, channels_last)
            other = inputs if same else (None if other is None else to_device(other, device, channels_last))
        yield Batch(inputs, other, labels, keys[:keep], keep, index)
