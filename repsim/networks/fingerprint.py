"""Content fingerprints for caches that cannot go stale: of weights, of files, and of the data seen.

A cache keyed on a file's path and mtime, or on a dataset's length, returns the old features for a
retrained checkpoint copied over the old one, or for another dataset of the same size (the bug of
repsim 0.3's ``compare_many`` cache, and of Brain-Score's before brain-score/vision#2472). These
fingerprints hash what the features are a function of: the weights' bytes, the architecture, the
layers, pooling and dtype, repsim's version, and the data (sample ids, the first and the last batch's
input tensors, the dataset's and its transform's description).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core import distributed as D

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _update_tensor(h, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def file_hash(path) -> str:
    """sha256 of a file's bytes (a checkpoint's content, whatever its name or mtime)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def state_hash(model: nn.Module) -> str:
    """sha256 of a module's state (every parameter and buffer, by name, dtype, shape and bytes)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _update_tensor(h, t)
    return h.hexdigest()


def describe(obj) -> str:
    """A stable description of a dataset or transform: its repr without memory addresses."""
    return _ADDRESS.sub("", repr(obj))


def describe_data(loader) -> str:
    """The dataset's type, length, transform and root, and the batch size, as one stable string."""
    dataset = getattr(loader, "dataset", None)
    parts = [type(loader).__qualname__, f"batch_size={getattr(loader, 'batch_size', None)}"]
    if dataset is not None:
        try:
            size = len(dataset)
        except TypeError:
            size = None
        parts += [type(dataset).__qualname__, f"len={size}", f"root={getattr(dataset, 'root', None)}",
                  f"transform={describe(getattr(dataset, 'transform', None))}"]  # fmt: skip
    return "|".join(parts)


def _hash_inputs(h, inputs) -> None:
    if isinstance(inputs, Tensor):
        _update_tensor(h, inputs)
    elif isinstance(inputs, Mapping):
        for k in sorted(inputs):
            h.update(str(k).encode())
            _hash_inputs(h, inputs[k])
    elif isinstance(inputs, (list, tuple)):
        for item in inputs:
            _hash_inputs(h, item)
    else:
        h.update(describe(inputs).encode())


def data_fingerprint(loader: Iterable, ids: list, adapt, shard: D.Shard, max_samples: int | None = None) -> str:
    """sha256 of the data a run sees: the sample ids, the first and the last batch's inputs (as the
    run reads them: capped, padding repeats cut) and :func:`describe_data`. Reads the loader once
    without a model; under a process group every rank's part is hashed together."""
    from .batches import walk

    first = last = None
    for batch in walk(loader, shard, adapt, max_samples):
        if first is None:
            first = hashlib.sha256()
            _hash_inputs(first, batch.inputs)
        last = batch.inputs
    h = hashlib.sha256(describe_data(loader).encode())
    h.update(repr(list(ids)).encode())
    h.update(first.hexdigest().encode() if first is not None else b"empty")
    if last is not None:
        _hash_inputs(h, last)
    digest = h.hexdigest()
    if shard.world > 1:
        digest = hashlib.sha256("".join(D.gather(digest)).encode()).hexdigest()
    return digest


def key_of(*parts) -> str:
    """A short hex key of the parts' reprs (a cache folder's name)."""
    return hashlib.sha256("|".join(repr(p) for p in parts).encode()).hexdigest()[:20]


def source_hash(source) -> str:
    """The content hash of a model source: a checkpoint file's bytes or a module's state."""
    if isinstance(source, (str, Path)):
        return file_hash(source)
    return state_hash(source)
