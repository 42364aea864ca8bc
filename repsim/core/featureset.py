"""Stored features: a :class:`FeatureSet` is the (n, d) features of some layers of one model, the n
sample ids they belong to, and what made them (metadata), on disk as one folder.

The folder (``FeatureSet.save``)::

    featureset.json   {"format": "repsim-featureset", "version": 1, "layers": [...], "files": [...],
                       "n": n, "ids": "ids.json", "meta": {...}}
    layer0.npy ...    one (n, d_l) array per layer (NumPy .npy: read back memory-mapped)
    ids.json          the n sample ids (ints or strings), in row order
    labels.npy        optional: the samples' labels

Comparisons join two feature sets on their ids (:func:`align`), never on row positions alone: rows
stored in another order are realigned, and missing or duplicated ids refuse with their counts.
Reading other tools' files is :func:`repsim.load_features` (:mod:`repsim.core.feature_files`).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .io import atomic_write, atomic_write_text

FORMAT = "repsim-featureset"
INDEX = "featureset.json"
JOINS = ("exact", "inner")


@lru_cache(maxsize=1)
def repsim_version() -> str:
    """repsim's version, read from the package's ``__init__`` (core imports nothing above it)."""
    text = (Path(__file__).resolve().parents[1] / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    return found.group(1) if found else "unknown"


def _as_array(value, layer: str) -> np.ndarray | Tensor:
    """A layer's features as an (n, d) array or tensor (kept as they are: memory maps stay maps)."""
    if isinstance(value, Tensor):
        t = value.detach()
        if t.ndim > 2:
            t = t.reshape(t.shape[0], -1)
        if t.ndim != 2:
            raise ValueError(f"features[{layer!r}] must be (n, d); got shape {tuple(t.shape)}")
        return t
    a = value if isinstance(value, np.ndarray) else np.asarray(value)  # a memory map stays one
    if a.ndim > 2:
        a = a.reshape(a.shape[0], -1)
    if a.ndim != 2:
        raise ValueError(f"features[{layer!r}] must be (n, d); got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"features[{layer!r}] must hold floating-point values; got dtype {a.dtype}")
    return a


def as_ids(ids, n: int, name: str = "ids") -> list:
    """``ids`` as a list of n Python ints or strings (None: 0 .. n-1)."""
    if ids is None:
        return list(range(n))
    if isinstance(ids, (Tensor, np.ndarray)):
        ids = ids.tolist()
    out = [i.item() if isinstance(i, np.generic) else i for i in ids]
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries for {n} samples; give one id per row")
    bad = next((i for i in out if not isinstance(i, (int, str)) or isinstance(i, bool)), None)
    if bad is not None:
        raise ValueError(f"{name} must be ints or strings; got {type(bad).__name__} {bad!r}")
    return out


class FeatureSet:
    """Features of some layers of one model on the same n samples, with their ids and metadata.

    Args:
        features: ``{layer: (n, d) tensor or array}`` (arrays of more dims are flattened per row;
            NumPy memory maps are kept as maps, so a stored set is read lazily).
        ids: the n sample ids, ints or strings (default 0 .. n-1, the row positions).
        meta: what made the features (model, checkpoint hash, arch, layer, pool, dtype, data
            fingerprint, transform, repsim version, time; any JSON-serialisable entries).
        labels: optional (n,) labels of the samples.

    ``fs[layer]`` is an (n, d) tensor (a read-only view of a memory-mapped file for a loaded set).
    """

    def __init__(self, features: Mapping[str, Tensor | np.ndarray], *, ids=None, meta=None, labels=None) -> None:
        if not isinstance(features, Mapping) or not features:
            raise ValueError("features must be a non-empty mapping {layer name: (n, d) array}")
        self._features = {str(k): _as_array(v, str(k)) for k, v in features.items()}
        sizes = {k: v.shape[0] for k, v in self._features.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"every layer must have the same number of rows (samples); got {sizes}")
        self.n = next(iter(sizes.values()))
        self.ids = as_ids(ids, self.n)
        self.meta = dict(meta or {})
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels))
        if self.labels is not None and self.labels.shape[0] != self.n:
            raise ValueError(f"labels has {self.labels.shape[0]} entries for {self.n} samples")

    @property
    def layers(self) -> list[str]:
        return list(self._features)

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self._features.items()}

    def nbytes(self, layers: Sequence[str] | None = None) -> int:
        """Bytes of the features of ``layers`` (default all) when held in memory."""
        names = self.layers if layers is None else layers
        return sum(int(np.prod(self._features[k].shape)) * _itemsize(self._features[k]) for k in names)

    def __getitem__(self, layer: str) -> Tensor:
        if layer not in self._features:
            raise KeyError(f"no layer {layer!r} in this feature set; its layers are {self.layers}")
        value = self._features[layer]
        if isinstance(value, Tensor):
            return value
        with warnings.catch_warnings():  # read-only views of memory-mapped files, on purpose
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(value)

    def __contains__(self, layer) -> bool:
        return layer in self._features

    def __repr__(self) -> str:
        name = self.meta.get("model", "")
        return f"FeatureSet({name!r}, n={self.n}, layers={self.dims})"

    def select(self, layers: Sequence[str] | None = None, rows=None) -> FeatureSet:
        """A feature set of some ``layers`` (default all) and the ``rows`` given (an index array)."""
        names = self.layers if layers is None else list(layers)
        missing = [k for k in names if k not in self._features]
        if missing:
            raise ValueError(f"layers {missing} are not in the feature set; its layers are {self.layers}")
        if rows is None:
            return FeatureSet({k: self._features[k] for k in names}, ids=self.ids, meta=self.meta, labels=self.labels)
        rows = np.asarray(rows, dtype=np.int64)
        feats = {k: self[k][torch.from_numpy(rows)] for k in names}
        labels = None if self.labels is None else self.labels[torch.from_numpy(rows)]
        return FeatureSet(feats, ids=[self.ids[i] for i in rows], meta=self.meta, labels=labels)

    def save(self, path) -> Path:
        """Write the set as a folder (see the module's docstring), every file atomically; returns it."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i, layer in enumerate(self.layers):
            array = self[layer].cpu().numpy()
            files.append(f"layer{i}.npy")
            atomic_write(folder / files[-1], lambda tmp, a=array: _save_npy(tmp, a))
        if self.labels is not None:
            atomic_write(folder / "labels.npy", lambda tmp: _save_npy(tmp, self.labels.numpy()))
        write_index(folder, self.layers, files, self.ids, self.meta, self.labels is not None)
        return folder


def _itemsize(value) -> int:
    return value.element_size() if isinstance(value, Tensor) else value.dtype.itemsize


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def write_index(folder: Path, layers, files, ids, meta, labels: bool) -> None:
    """The ids and the index of a stored set (written last: a folder with an index is complete)."""
    atomic_write_text(folder / "ids.json", json.dumps(list(ids)))
    index = {"format": FORMAT, "version": 1, "layers": list(layers), "files": list(files), "n": len(ids),
             "ids": "ids.json", "labels": "labels.npy" if labels else None, "meta": _jsonable(meta)}  # fmt: skip
    atomic_write_text(folder / INDEX, json.dumps(index, indent=1))


def _jsonable(meta: Mapping) -> dict:
    return {str(k): (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v))
            for k, v in meta.items()}  # fmt: skip


def is_featureset(path) -> bool:
    return (Path(path) / INDEX).is_file()


def read_featureset(path, layers: Sequence[str] | None = None) -> FeatureSet:
    """A stored set, its arrays memory-mapped (nothing is read until used)."""
    folder = Path(path)
    index = json.loads((folder / INDEX).read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{folder / INDEX} is not a repsim feature set index")
    names = index["layers"] if layers is None else list(layers)
    missing = [k for k in names if k not in index["layers"]]
    if missing:
        raise ValueError(f"layers {missing} are not in {folder}; it holds {index['layers']}")
    files = dict(zip(index["layers"], index["files"], strict=True))
    feats = {k: np.load(folder / files[k], mmap_mode="r") for k in names}
    ids = json.loads((folder / index["ids"]).read_text())
    labels = np.load(folder / index["labels"]) if index.get("labels") else None
    return FeatureSet(feats, ids=ids, meta=index.get("meta", {}), labels=labels)


# -------------------------------------------------------------------------------- joining on ids
def _duplicates(ids: list) -> int:
    return len(ids) - len(set(ids))


def align(a: FeatureSet, b: FeatureSet, join: str = "exact", names: tuple[str, str] = ("a", "b")):
    """Row indices (rows_a, rows_b) putting ``a`` and ``b`` on their common sample ids, in ``a``'s order.

    ``join="exact"`` (default) refuses unless both hold the same ids, naming how many are missing on
    each side and duplicated; rows stored in another order are realigned (and counted).
    ``join="inner"`` keeps the common ids and warns how many were dropped on each side. Returns
    ``(None, None)`` when the rows already match (no copy needed).
    """
    from .validation import check_choice

    check_choice(join, "join", JOINS)
    ids_a, ids_b = a.ids, b.ids
    if ids_a == ids_b and not _duplicates(ids_a):
        return None, None
    dup_a, dup_b = _duplicates(ids_a), _duplicates(ids_b)
    if dup_a or dup_b:
        raise ValueError(
            f"sample ids must be unique to join on them: {names[0]} has {dup_a} duplicated ids, {names[1]} has "
            f"{dup_b}; fix the ids (e.g. FeatureSet(..., ids=...)) before comparing"
        )
    where_b = {i: r for r, i in enumerate(ids_b)}
    common = [i for i in ids_a if i in where_b]
    only_a, only_b = len(ids_a) - len(common), len(ids_b) - len(common)
    rows_a = np.array([r for r, i in enumerate(ids_a) if i in where_b], dtype=np.int64)
    rows_b = np.array([where_b[i] for i in common], dtype=np.int64)
    moved = int((rows_b != np.arange(len(rows_b))).sum()) if len(rows_b) == len(ids_b) else len(rows_b)
    if join == "exact" and (only_a or only_b):
        raise ValueError(
            f"the sample ids differ: {only_a} of {names[0]}'s {len(ids_a)} ids are missing from {names[1]}, "
            f"{only_b} of {names[1]}'s {len(ids_b)} are missing from {names[0]} ({len(common)} in common, "
            f"{moved} of them in another order). Options: join='inner' (compare on the common ids), or "
            "extract both on the same samples"
        )
    if not common:
        raise ValueError(f"{names[0]} and {names[1]} share no sample id; nothing to compare")
    if only_a or only_b:
        warnings.warn(
            f"join='inner': comparing {len(common)} common ids; dropped {only_a} of {names[0]}'s and "
            f"{only_b} of {names[1]}'s",
            stacklevel=3,
        )
    return rows_a, rows_b


def common_rows(sets: Sequence[FeatureSet], join: str = "exact", names: Sequence[str] | None = None):
    """For several sets: each one's rows on the ids common to all, in the first set's order (None for
    a set already in that order), and those ids. Refusals and warnings as in :func:`align`."""
    names = list(names) if names is not None else [f"sources[{i}]" for i in range(len(sets))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one summary warning below instead of one per pair
        for s, nm in zip(sets[1:], names[1:], strict=True):
            align(sets[0], s, join, (names[0], nm))  # refuses with the counts of this pair
    common = set(sets[0].ids).intersection(*[set(s.ids) for s in sets[1:]])
    order = [i for i in sets[0].ids if i in common]
    if not order:
        raise ValueError("the sources share no sample id; nothing to compare")
    dropped = {nm: s.n - len(order) for s, nm in zip(sets, names, strict=True) if s.n != len(order)}
    if dropped:
        warnings.warn(f"join='inner': comparing {len(order)} common ids; dropped {dropped}", stacklevel=3)
    out = []
    for s in sets:
        if s.ids == order:
            out.append(None)
            continue
        where = {i: r for r, i in enumerate(s.ids)}
        out.append(np.array([where[i] for i in order], dtype=np.int64))
    return out, order
