"""The one feature-collection body every extractor runs (:func:`collect`), and where its rows go.

:func:`repsim.extract_features` (one process or a shard per rank), the text features
(:func:`repsim.sentence_features`, :func:`repsim.token_features`) and :func:`repsim.compare_many`'s
extraction all call :func:`collect`: hooks on the layers, the loader walked by
:func:`repsim.networks.batches.walk` (sample cap, padding repeats dropped, global order keys),
one forward per batch (:meth:`FeatureHooks.forward`), per-layer chunks into a :class:`Rows` sink
(CPU memory under a budget, or ``.npy`` files on disk, resumable), and under a process group every
rank's rows gathered in the global sample order.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..core import distributed as D
from .batches import walk
from .hooks import FeatureHooks, Pool


def collect(
    model: nn.Module,
    loader: Iterable,
    layers: list[str],
    pool: Pool,
    sink: Rows,
    *,
    shard: D.Shard,
    adapt: Callable,
    device: torch.device,
    max_samples: int | None = None,
    progress: bool = False,
    desc: str = "features",
    token_rows: bool = False,
) -> Rows:
    """Run ``model`` over ``loader`` and put every batch's hooked features into ``sink``; returns it.

    ``adapt(batch) -> (inputs, None, labels)`` reads a batch (see :func:`walk`). ``token_rows``: the
    rows are the real tokens of each sequence (pool="tokens"), all keyed by their sentence's key.
    The model runs in eval mode without gradients; its flags and hooks are restored afterwards.
    """
    from .features import eval_mode

    model.to(device)
    with torch.no_grad(), eval_mode(model), FeatureHooks(model, layers, pool=pool) as hooks:
        # skip: batches already on disk (a resumed extraction) are passed over before they are copied
        for batch in walk(loader, shard, adapt, max_samples, device, False, progress, desc, sink.skip):
            feats = hooks.forward(model, batch.inputs)
            keys = batch.keys
            if token_rows:
                mask = batch.inputs.get("attention_mask") if isinstance(batch.inputs, dict) else None
                if mask is None:
                    raise ValueError("token features need batches with an 'attention_mask' (see text_batches)")
                keys = keys.repeat_interleave(mask.bool().sum(dim=1).cpu())
            sink.add(feats, batch.labels, keys)
    return sink


class Rows:
    """Where collected rows go: CPU memory under a budget, or one memory-mapped ``.npy`` file per layer.

    ``n``: the rows expected (None: unknown, the budget is then checked as they grow); ``spill_dir``:
    write the rows there (``layer{i}.npy``, ``labels.npy``) with a ``progress.json`` after every
    batch, so that a run with the same ``fingerprint`` resumes after its last finished batch.
    """

    def __init__(self, layers, n, budget, dtype=None, spill_dir=None, fingerprint: str = "", what="rows") -> None:
        self.layers, self.n, self.budget, self.dtype, self.what = list(layers), n, budget, dtype, what
        self.chunks: dict[str, list[Tensor]] = {name: [] for name in self.layers}
        self.labels: list[Tensor] = []
        self.keys: list[Tensor] = []
        self.bytes = self.seen = self.done = 0
        self.dir = None if spill_dir is None else Path(spill_dir)
        self.fingerprint, self.files, self.label_file = fingerprint, None, None
        if self.dir is not None:
            if n is None:
                raise ValueError("spill_dir needs the number of samples: give max_samples or a loader with a length")
            progress = self.dir / "progress.json"
            if progress.exists():
                state = json.loads(progress.read_text())
                if state.get("fingerprint") == fingerprint:
                    self.done = int(state["done"])

    def skip(self, size: int) -> bool:
        if self.seen + size <= self.done:
            self.seen += size
            return True
        return False

    def _dtype(self, f: Tensor) -> torch.dtype:
        return self.dtype or f.dtype

    def _open(self, feats: dict[str, Tensor], labelled: bool) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        mode = "r+" if self.done else "w+"
        self.files = {}
        for i, name in enumerate(self.layers):
            f = feats[name]
            dt = torch.empty(0, dtype=self._dtype(f)).numpy().dtype
            self.files[name] = np.lib.format.open_memmap(
                self.dir / f"layer{i}.npy", mode=mode, dtype=dt, shape=(self.n, f.shape[1])
            )
        if labelled:
            self.label_file = np.lib.format.open_memmap(self.dir / "labels.npy", mode=mode, dtype=np.int64,
                                                        shape=(self.n,))  # fmt: skip

    def add(self, feats: dict[str, Tensor], y: Tensor | None, keys: Tensor) -> None:
        size = feats[self.layers[0]].shape[0]
        for name in self.layers:
            if feats[name].shape[0] != keys.shape[0]:
                raise ValueError(
                    f"layer {name!r} gave {feats[name].shape[0]} rows for {keys.shape[0]} {self.what}; hook modules "
                    "whose outputs are over the input's tokens"
                )
        if self.dir is not None:
            self._write(feats, y, size)
            return
        if self.bytes == 0:
            self._check_budget(feats)
        for name in self.layers:
            f = feats[name].to("cpu", dtype=self._dtype(feats[name]))
            self.chunks[name].append(f)
            self.bytes += f.numel() * f.element_size()
        if self.bytes > self.budget:  # an unknown n: refuse as soon as the rows outgrow the budget
            self._check_budget(feats, grown=True)
        if y is not None:
            self.labels.append(y.cpu())
        self.keys.append(keys)
        self.seen += size

    def _write(self, feats: dict[str, Tensor], y: Tensor | None, size: int) -> None:
        from ..core.io import atomic_write_text

        if self.files is None:
            self._open(feats, y is not None)
        lo = self.seen
        for name in self.layers:
            self.files[name][lo : lo + size] = feats[name].to("cpu", self._dtype(feats[name])).numpy()
        if self.label_file is not None and y is not None:
            self.label_file[lo : lo + size] = y.cpu().numpy()
        self.seen += size
        for f in self.files.values():
            f.flush()
        if self.label_file is not None:
            self.label_file.flush()
        atomic_write_text(self.dir / "progress.json", json.dumps({"fingerprint": self.fingerprint, "done": self.seen}))

    def _check_budget(self, feats: dict[str, Tensor], grown: bool = False) -> None:
        from ..core.budget import MemoryBudgetError, format_bytes

        per_sample = sum(f.shape[1] * torch.empty(0, dtype=self._dtype(f)).element_size() for f in feats.values())
        need = None if self.n is None else self.n * per_sample
        if grown or (need is not None and need > self.budget):
            widest = max(feats.items(), key=lambda kv: kv[1].shape[1])
            raise MemoryBudgetError(
                f"the features of {self.n if self.n is not None else 'these'} samples "
                f"({', '.join(f'{k}: d = {v.shape[1]}' for k, v in feats.items())}) need "
                f"{format_bytes(need) if need is not None else 'more than ' + format_bytes(self.bytes)} but the memory "
                f"budget is {format_bytes(self.budget)}; widest layer {widest[0]} (d = {widest[1].shape[1]}). Options: "
                "spill_dir=... or out=... (memory-mapped files on disk), pool='mean', max_samples=..., "
                "dtype=torch.float16, memory='...' (a larger budget), fewer layers"
            )

    def result(self, shard: D.Shard) -> tuple[dict[str, Tensor], Tensor | None, Tensor]:
        """({layer: (rows, d)}, labels or None, order keys): the spilled files read back memory-mapped,
        or the chunks, gathered from every rank in the global order under a process group."""
        if self.dir is not None:
            return self._spilled()
        keys = torch.cat(self.keys) if self.keys else None
        columns = [torch.cat(self.chunks[n]) if self.chunks[n] else None for n in self.layers]
        labelled = bool(self.labels) and sum(len(t) for t in self.labels) == (0 if keys is None else len(keys))
        columns.append(torch.cat(self.labels) if labelled else None)
        if shard.world > 1:  # one process's keys are in order already
            keys, columns = D.in_global_order(keys, columns)
        if keys is None:
            raise ValueError(f"the loader yielded no {self.what}")
        y = columns[-1]
        if y is not None and y.shape[0] != keys.shape[0]:
            y = None
        return dict(zip(self.layers, columns[:-1], strict=True)), y, keys

    def _spilled(self) -> tuple[dict[str, Tensor], Tensor | None, Tensor]:
        if self.files is None and self.done == 0:
            raise ValueError(f"the loader yielded no {self.what}")
        n = self.seen
        with warnings.catch_warnings():  # read-only views of the files, on purpose
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            feats = {
                name: torch.from_numpy(np.load(self.dir / f"layer{i}.npy", mmap_mode="r")[:n])
                for i, name in enumerate(self.layers)
            }
            path = self.dir / "labels.npy"
            labels = torch.from_numpy(np.load(path, mmap_mode="r")[:n]) if path.exists() else None
        return feats, labels, torch.arange(n)
