"""Feature extraction over a loader: device/eval handling, the sample count, and the features held or spilled.

Batches are unpacked and walked by :mod:`repsim.networks.batches` (``split_batch`` is re-exported here).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .batches import split_batch, walk
from .hooks import FeatureHooks, Pool, default_layers, forward_features

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
    memory: int | str | None = None,
    spill_dir=None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Features of ``layers`` (default: :func:`repsim.networks.hooks.default_layers`) over a whole loader.

    Returns ({layer: (n, d) tensor on CPU}, labels (n,) or None). Runs in eval mode without
    gradients; the model's training flags are restored afterwards, and its hooks removed.
    ``dtype`` casts stored features (e.g. torch.float16 to halve memory); default keeps them.

    Memory: after the first batch the features' size n * sum(d) is checked against ``memory``
    (bytes or "8GB"; default 60 % of the available RAM; n from the loader's length or
    ``max_samples``, else checked as they grow): when they would not fit, a
    :class:`repsim.core.budget.MemoryBudgetError` says so before the features are held, with the options.
    ``spill_dir``: write the features to one ``.npy`` file per layer there instead, chunk by chunk,
    and return memory-mapped tensors (read-only views of those files); an extraction killed midway
    resumes from its last finished batch when called again with the same arguments.

    Under ``torchrun`` (a process group, see :mod:`repsim.core.distributed`) each rank runs its shard
    of the loader and every rank returns all features, in the global sample order (padding
    repeats of a ``DistributedSampler`` dropped); ``distributed=False`` keeps each rank's own.
    """
    from ..core import distributed as D
    from ..core.budget import parse_memory

    if isinstance(pool, str) and pool == "tokens":  # rows per token need the batch's attention mask
        raise ValueError("pool='tokens' is for token sequences: use repsim.token_features(model, batches, layers)")
    shard = D.shard_of(loader, distributed)
    if shard.world > 1:
        if max_samples is not None:
            raise ValueError("max_samples is not supported under a process group; subset the dataset first")
        if spill_dir is not None:
            raise ValueError("spill_dir is not supported under a process group; use compare_many's cache_dir")
        return _extract_sharded(model, loader, layers, pool, device, progress, dtype, shard)
    layers = _layers(model, layers)
    device = resolve_device(device, model)
    model.to(device)
    budget = parse_memory(memory)
    fingerprint = _fingerprint(loader, layers, pool, max_samples, dtype)
    sink = _FeatureSink(layers, expected_samples(loader, max_samples), budget, dtype, spill_dir, fingerprint)
    with eval_mode(model), FeatureHooks(model, layers, pool) as hooks:
        # skip: batches already on disk (a resumed extraction) are passed over before they are copied
        batches = walk(loader, shard, _inputs_and_labels, max_samples, device, False, progress, "features", sink.skip)
        for batch in batches:
            sink.add(forward_features(model, hooks, batch.inputs), batch.labels)
    return sink.result()


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


class _FeatureSink:
    """Where extracted features go: CPU memory under a budget, or memory-mapped .npy files (resumable)."""

    def __init__(self, layers, n, budget, dtype, spill_dir, fingerprint) -> None:
        from pathlib import Path

        self.layers, self.n, self.budget, self.dtype = layers, n, budget, dtype
        self.chunks: dict[str, list[Tensor]] = {name: [] for name in layers}
        self.labels: list[Tensor] = []
        self.bytes = self.seen = self.done = 0
        self.dir = None if spill_dir is None else Path(spill_dir)
        self.fingerprint, self.files, self.label_file = fingerprint, None, None
        if self.dir is not None:
            if n is None:
                raise ValueError("spill_dir needs the number of samples: give max_samples or a loader with a length")
            progress = self.dir / "progress.json"
            if progress.exists():
                import json

                state = json.loads(progress.read_text())
                if state.get("fingerprint") == fingerprint:
                    self.done = int(state["done"])

    def skip(self, size: int) -> bool:
        if self.seen + size <= self.done:
            self.seen += size
            return True
        return False

    def _open(self, feats: dict[str, Tensor], labelled: bool) -> None:
        import numpy as np

        self.dir.mkdir(parents=True, exist_ok=True)
        mode = "r+" if self.done else "w+"
        self.files = {}
        for i, name in enumerate(self.layers):
            f = feats[name]
            dt = torch.empty(0, dtype=self.dtype or f.dtype).numpy().dtype
            self.files[name] = np.lib.format.open_memmap(
                self.dir / f"layer{i}.npy", mode=mode, dtype=dt, shape=(self.n, f.shape[1])
            )
        if labelled:
            self.label_file = np.lib.format.open_memmap(self.dir / "labels.npy", mode=mode, dtype=np.int64,
                                                        shape=(self.n,))  # fmt: skip

    def add(self, feats: dict[str, Tensor], y: Tensor | None) -> None:
        size = feats[self.layers[0]].shape[0]
        if self.dir is not None:
            if self.files is None:
                self._open(feats, y is not None)
            lo = self.seen
            for name in self.layers:
                self.files[name][lo : lo + size] = feats[name].to("cpu", self.dtype or feats[name].dtype).numpy()
            if self.label_file is not None and y is not None:
                self.label_file[lo : lo + size] = y.cpu().numpy()
            self.seen += size
            self._checkpoint()
            return
        if self.bytes == 0:
            self._check_budget(feats)
        for name in self.layers:
            f = feats[name].to("cpu", dtype=self.dtype or feats[name].dtype)
            self.chunks[name].append(f)
            self.bytes += f.numel() * f.element_size()
        if self.bytes > self.budget:  # an unknown n: refuse as soon as the features outgrow the budget
            self._check_budget(feats, grown=True)
        if y is not None:
            self.labels.append(y.cpu())
        self.seen += size

    def _check_budget(self, feats: dict[str, Tensor], grown: bool = False) -> None:
        from ..core.budget import MemoryBudgetError, format_bytes

        per_sample = sum(f.shape[1] * torch.empty(0, dtype=self.dtype or f.dtype).element_size()
                         for f in feats.values())  # fmt: skip
        need = None if self.n is None else self.n * per_sample
        if grown or (need is not None and need > self.budget):
            widest = max(feats.items(), key=lambda kv: kv[1].shape[1])
            raise MemoryBudgetError(
                f"the features of {self.n if self.n is not None else 'these'} samples "
                f"({', '.join(f'{k}: d = {v.shape[1]}' for k, v in feats.items())}) need "
                f"{format_bytes(need) if need is not None else 'more than ' + format_bytes(self.bytes)} but the memory "
                f"budget is {format_bytes(self.budget)}; widest layer {widest[0]} (d = {widest[1].shape[1]}). Options: "
                "spill_dir=... (memory-mapped files on disk), pool='mean', max_samples=..., dtype=torch.float16, "
                "memory='...' (a larger budget), fewer layers"
            )

    def _checkpoint(self) -> None:
        import json

        from ..core.io import atomic_write_text

        for f in self.files.values():
            f.flush()
        if self.label_file is not None:
            self.label_file.flush()
        atomic_write_text(self.dir / "progress.json", json.dumps({"fingerprint": self.fingerprint, "done": self.seen}))

    def result(self) -> tuple[dict[str, Tensor], Tensor | None]:
        if self.dir is not None:
            import numpy as np

            if self.files is None and self.done == 0:
                raise ValueError("the loader yielded no samples")
            n = self.seen
            with warnings.catch_warnings():  # read-only views of the files, on purpose
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                feats = {
                    name: torch.from_numpy(np.load(self.dir / f"layer{i}.npy", mmap_mode="r")[:n])
                    for i, name in enumerate(self.layers)
                }
                path = self.dir / "labels.npy"
                labels = torch.from_numpy(np.load(path, mmap_mode="r")[:n]) if path.exists() else None
            return feats, labels
        if not self.chunks[self.layers[0]]:
            raise ValueError("the loader yielded no samples")
        feats = {name: torch.cat(c) for name, c in self.chunks.items()}
        n = feats[self.layers[0]].shape[0]
        y = torch.cat(self.labels) if len(self.labels) and sum(len(t) for t in self.labels) == n else None
        return feats, y


@torch.inference_mode()
def _extract_sharded(model, loader, layers, pool, device, progress, dtype, shard):
    """Each rank runs its shard; every rank returns all features in the global order (see extract_features)."""
    from ..core import distributed as D

    layers = _layers(model, layers)
    device = resolve_device(device, model)
    model.to(device)
    chunks: dict[str, list[Tensor]] = {name: [] for name in layers}
    labels: list[Tensor] = []
    keys: list[Tensor] = []
    with eval_mode(model), FeatureHooks(model, layers, pool) as hooks:
        for batch in walk(loader, shard, _inputs_and_labels, None, device, False, progress, "features"):
            for name, f in forward_features(model, hooks, batch.inputs).items():
                chunks[name].append(f.to("cpu", dtype=dtype or f.dtype))
            if batch.labels is not None:
                labels.append(batch.labels.cpu())
            keys.append(batch.keys)
    columns = [torch.cat(chunks[n]) if chunks[n] else None for n in layers]
    columns.append(torch.cat(labels) if labels else None)
    order_keys, columns = D.in_global_order(torch.cat(keys) if keys else None, columns)
    if order_keys is None:
        raise ValueError("the loader yielded no samples")
    y = columns[-1]
    if y is not None and y.shape[0] != order_keys.shape[0]:
        y = None
    return dict(zip(layers, columns[:-1], strict=True)), y
