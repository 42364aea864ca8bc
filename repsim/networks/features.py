"""Feature extraction over a loader: device/eval handling, the sample count, and the features held or spilled.

Batches are unpacked and walked by :mod:`repsim.networks.batches` (``split_batch`` is re-exported here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..core.deprecation import deprecated_arguments
from .batches import split_batch
from .collect import Rows, collect
from .hooks import Pool, default_layers

__all__ = ["eval_mode", "expected_samples", "extract_features", "resolve_device", "split_batch"]


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


def expected_samples(loader: Iterable, max_samples: int | None) -> int | None:
    """How many samples a run will see: the dataset's length (a DataLoader's or a DistributedSampler's),
    capped by ``max_samples``; None when the loader does not say (an iterable without a length)."""
    n = None
    sampler = getattr(loader, "sampler", None)
    dataset = getattr(sampler, "dataset", None) if sampler is not None else None
    dataset = dataset if dataset is not None else getattr(loader, "dataset", None)
    from ..core.distributed import ShardedBatches

    if isinstance(loader, ShardedBatches):
        dataset = getattr(loader.batches, "dataset", None)
    try:
        n = len(dataset) if dataset is not None else None
    except TypeError:  # an IterableDataset without a length
        n = None
    if n is None and isinstance(loader, Sequence) and not isinstance(loader, (str, bytes)):
        n = _batches_size(loader)
    if max_samples is not None:
        n = max_samples if n is None else min(n, max_samples)
    return n


def _batches_size(batches: Sequence) -> int | None:
    """Samples in a list of batches (tensors, (x, ...) tuples or dicts of tensors); None when unclear."""
    total = 0
    for b in batches:
        first = b if isinstance(b, (Tensor, Mapping)) else (b[0] if isinstance(b, Sequence) and b else None)
        if isinstance(first, Mapping):
            first = next((v for v in first.values() if isinstance(v, Tensor)), None)
        if not isinstance(first, Tensor) or first.ndim == 0:
            return None
        total += first.shape[0]
    return total


_LEGACY = ("layers", "pool", "device", "max_samples", "progress", "dtype", "distributed", "memory", "spill_dir")


@deprecated_arguments(positional=_LEGACY)
def extract_features(
    model: nn.Module,
    loader: Iterable,
    *,
    layers: Sequence[str] | str | None = None,
    pool: Pool = "mean",
    device=None,
    max_samples: int | None = None,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    distributed: bool | None = None,
    memory: int | str | None = None,
    spill_dir=None,
    out=None,
    ids=None,
    name: str | None = None,
    meta: Mapping | None = None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Features of ``layers`` (default: :func:`repsim.networks.hooks.default_layers`) over a whole loader.

    Returns ({layer: (n, d) tensor on CPU}, labels (n,) or None). Runs in eval mode without
    gradients; the model's training flags are restored afterwards, and its hooks removed.
    ``dtype`` casts stored features (e.g. torch.float16 to halve memory); default keeps them.
    Arguments after ``loader`` are keyword-only (by position: deprecated, until 0.5).

    Memory: after the first batch the features' size n * sum(d) is checked against ``memory``
    (bytes or "8GB"; default 60 % of the available RAM; n from the loader's length or
    ``max_samples``, else checked as they grow): when they would not fit, a
    :class:`repsim.core.budget.MemoryBudgetError` says so before the features are held, with the options.
    ``spill_dir``: write the features to one ``.npy`` file per layer there instead, chunk by chunk,
    and return memory-mapped tensors (read-only views of those files); an extraction killed midway
    resumes from its last finished batch when called again with the same arguments.

    ``out``: write a :class:`repsim.FeatureSet` folder there (spilled as above, so resumable; then its
    ids and metadata: ``name``, the weights' content hash, layers, pool, dtype, the data fingerprint,
    repsim's version, the time, and ``meta``); read it back with :func:`repsim.load_features`.
    ``ids``: the samples' ids, a sequence of n ints or strings or a function of the sample's position
    (0 .. n-1 in the loader's order; default the position itself, the dataset index of an unshuffled
    DataLoader). A resumed ``out`` continues only if the weights, layers, pool, dtype and data
    fingerprint are those it was started with; otherwise it starts over.

    Under ``torchrun`` (a process group, see :mod:`repsim.core.distributed`) each rank runs its shard
    of the loader and every rank returns all features, in the global sample order (padding
    repeats of a ``DistributedSampler`` dropped); ``distributed=False`` keeps each rank's own.
    With ``out``, rank 0 writes the gathered features.
    """
    from ..core import distributed as D
    from ..core.budget import parse_memory

    if isinstance(pool, str) and pool == "tokens":  # rows per token need the batch's attention mask
        raise ValueError("pool='tokens' is for token sequences: use repsim.token_features(model, batches, layers)")
    if out is not None and spill_dir is not None:
        raise ValueError("give out= (a FeatureSet folder) or spill_dir=, not both")
    shard = D.shard_of(loader, distributed)
    if shard.world > 1 and max_samples is not None:
        raise ValueError("max_samples is not supported under a process group; subset the dataset first")
    if shard.world > 1 and spill_dir is not None:
        raise ValueError("spill_dir is not supported under a process group; use out= (rank 0 writes the FeatureSet)")
    names = _layers(model, layers)
    a = {"pool": pool, "max_samples": max_samples, "dtype": dtype}
    record = None
    spill = spill_dir
    if out is not None:
        record = _record(model, loader, names, a, shard, ids, name, meta)
        spill = out if shard.world == 1 else None
        if shard.rank == 0:  # the folder is incomplete until its index is written again at the end
            (Path(out) / "featureset.json").unlink(missing_ok=True)
    fingerprint = record["fingerprint"] if record else _fingerprint(loader, names, pool, max_samples, dtype)
    n = expected_samples(loader, max_samples)
    sink = Rows(names, n, parse_memory(memory), dtype, spill, fingerprint, "samples")
    collect(model, loader, names, pool, sink, shard=shard, adapt=_inputs_and_labels,
            device=resolve_device(device, model), max_samples=max_samples, progress=progress, desc="features")
    feats, labels, _ = sink.result(shard)
    if record is not None and shard.rank == 0:
        _finish_featureset(Path(out), feats, labels, record, shard.world > 1)
    return feats, labels


def _layers(model: nn.Module, layers) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    return list(layers) if layers is not None else default_layers(model)


def _inputs_and_labels(batch) -> tuple[Tensor, None, Tensor | None]:
    """walk's adapter for one model fed the batch's inputs (see :func:`repsim.networks.batches.split_batch`)."""
    x, y = split_batch(batch)
    return x, None, y


def _fingerprint(loader, layers, pool, max_samples, dtype) -> str:
    n = len(getattr(loader, "dataset", ())) if hasattr(loader, "dataset") else "?"
    return f"{list(layers)}|{pool}|{max_samples}|{dtype}|{n}|{getattr(loader, 'batch_size', '?')}"


def _record(model, loader, layers, a, shard, ids, name, meta) -> dict:
    """What an ``out`` FeatureSet records: its ids, and the content fingerprint that keys its resumption."""
    import datetime

    from ..core.featureset import repsim_version
    from .fingerprint import data_fingerprint, describe_data, key_of, state_hash

    sample_ids = sample_ids_of(loader, ids, shard, a["max_samples"])
    data = data_fingerprint(loader, sample_ids, _inputs_and_labels, shard, a["max_samples"])
    weights = state_hash(model)
    pool = a["pool"] if isinstance(a["pool"], str) else getattr(a["pool"], "__qualname__", repr(a["pool"]))
    record = {"model": name or type(model).__name__, "weights_sha256": weights, "arch": type(model).__qualname__,
              "layers": list(layers), "pool": pool, "dtype": str(a["dtype"]), "data_fingerprint": data,
              "data": describe_data(loader), "repsim_version": repsim_version(),
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **dict(meta or {})}  # fmt: skip
    record["fingerprint"] = key_of(weights, record["arch"], layers, pool, record["dtype"], data,
                                   record["repsim_version"])  # fmt: skip
    record["ids"] = sample_ids
    return record


def sample_ids_of(loader, ids, shard, max_samples) -> list:
    """The ids of the samples a run sees, in the global order: ``ids`` given (a sequence, or a function
    of the position), else the positions 0 .. n-1."""
    if ids is not None and not callable(ids):
        return list(ids)
    n = expected_samples(loader, max_samples)
    if n is None:  # no length: count them
        from .batches import walk

        n = sum(b.size for b in walk(loader, shard, _inputs_and_labels, max_samples))
        if shard.world > 1:
            from ..core import distributed as D

            n = sum(D.gather(n))
    return [ids(i) for i in range(n)] if callable(ids) else list(range(n))


def _finish_featureset(folder: Path, feats, labels, record: dict, write_arrays: bool) -> None:
    from ..core.featureset import FeatureSet, write_index

    ids = record.pop("ids")
    n = next(iter(feats.values())).shape[0]
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries but the loader gave {n} samples; give one id per sample")
    meta = {k: v for k, v in record.items() if k != "fingerprint"} | {"fingerprint": record["fingerprint"]}
    files_short = not write_arrays and any(
        np.load(folder / f"layer{i}.npy", mmap_mode="r").shape[0] != n for i in range(len(feats))
    )
    if write_arrays or files_short:  # gathered from the ranks (or fewer samples than the loader's length)
        FeatureSet(feats, ids=ids, meta=meta, labels=labels).save(folder)
        return
    files = [f"layer{i}.npy" for i in range(len(feats))]
    write_index(folder, list(feats), files, ids, meta, labels is not None)
