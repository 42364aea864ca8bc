"""Reading features that repsim or other tools stored: :func:`load_features`.

Layouts other tools write (checked against their code; see docs/guide/many.md for the versions):

* thingsvision (``thingsvision.utils.storing.save_features``): a folder holding ``features.npy``
  (or ``.pt``, ``.hdf5`` with one dataset ``features``, ``.txt``), or splits ``features_01.npy``,
  ``features_02.npy`` ... stacked in order; one layer per folder; ``file_names.txt`` (one image per
  line, in row order; written by its ``ImageDataset``) gives the ids when present.
* Net2Brain (``FeatureExtractor.extract(..., consolidate_per_layer=True)``): a folder of
  ``{layer}.npz`` files, each mapping an image id (its file name without extension) to that
  image's (1, ...) features.
* platonic-rep (``extract_features.py``): a ``torch.save`` dict whose ``"feats"`` is an
  (N, L, D) tensor, one slice per hooked block (also ``num_params``, and ``mask``, ``loss``, ``bpb``
  for language models), read here with ``weights_only=True``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .featureset import FeatureSet, is_featureset, read_featureset

ID_KEYS = ("ids", "sample_ids")
SUFFIXES = (".npy", ".npz", ".safetensors", ".h5", ".hdf5", ".pt", ".pth")


def load_features(path, *, layers: Sequence[str] | str | None = None, ids=None, name: str | None = None) -> FeatureSet:
    """A :class:`repsim.FeatureSet` from a file or folder of stored features.

    Reads repsim's own folders (:meth:`FeatureSet.save`, memory-mapped), ``.npy`` (an (n, d) array
    is one layer named after the file; an (n, L, d) array L layers ``"0"`` .. ``"L-1"``), ``.npz``
    and ``.safetensors`` (one entry per layer), HDF5 (``.h5``/``.hdf5``, one dataset per layer,
    nested groups joined by ``/``; needs ``h5py``, the ``features`` extra), torch ``.pt``/``.pth``
    (a tensor or a dict of tensors, loaded with ``weights_only=True``: nothing is unpickled), and
    the layouts of thingsvision, Net2Brain and platonic-rep (see the module's docstring).

    Args:
        layers: keep only these layers (default all).
        ids: the samples' ids, overriding any stored (default: the stored ids — an ``ids`` or
            ``sample_ids`` entry, thingsvision's ``file_names.txt``, Net2Brain's image names —
            else the row positions 0 .. n-1).
        name: the model's name (``meta["model"]``; default the file or folder name).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no feature file or folder at {path}")
    wanted = [layers] if isinstance(layers, str) else layers
    if path.is_dir() and is_featureset(path):
        fs = read_featureset(path, wanted)
    else:
        feats, stored_ids, meta = _read_any(path)
        if not feats:
            raise ValueError(f"found no features in {path}")
        if wanted is not None:
            missing = [k for k in wanted if k not in feats]
            if missing:
                raise ValueError(f"layers {missing} are not in {path}; it holds {list(feats)}")
            feats = {k: feats[k] for k in wanted}
        fs = FeatureSet(feats, ids=stored_ids, meta={"source": str(path), **meta})
    if ids is not None:
        fs = FeatureSet({k: fs._features[k] for k in fs.layers}, ids=ids, meta=fs.meta, labels=fs.labels)
    fs.meta.setdefault("model", name or path.stem)
    if name is not None:
        fs.meta["model"] = name
    return fs


def _read_any(path: Path) -> tuple[dict, list | None, dict]:
    if path.is_dir():
        return _read_folder(path)
    suffix = path.suffix.lower()
    readers = {".npy": _read_npy, ".npz": _read_npz, ".safetensors": _read_safetensors, ".h5": _read_hdf5,
               ".hdf5": _read_hdf5, ".pt": _read_torch, ".pth": _read_torch, ".txt": _read_txt}  # fmt: skip
    if suffix not in readers:
        raise ValueError(f"cannot read {path.name}: give one of {', '.join(SUFFIXES)} or a folder")
    return readers[suffix](path)


def _split_layers(array, stem: str) -> dict:
    """An (n, d) array is one layer; an (n, L, d) array (platonic-rep's stacked blocks) L layers."""
    if array.ndim == 3:
        return {str(i): array[:, i, :] for i in range(array.shape[1])}
    return {stem: array}


def _read_npy(path: Path):
    return _split_layers(np.load(path, mmap_mode="r"), path.stem), None, {}


def _read_txt(path: Path):
    return {path.stem: np.loadtxt(path, ndmin=2)}, None, {}


def _read_npz(path: Path):
    with np.load(path, allow_pickle=False) as data:
        entries = {k: data[k] for k in data.files}
    ids = next((entries.pop(k).tolist() for k in ID_KEYS if k in entries), None)
    if len(entries) > 1 and all(v.ndim >= 1 and v.shape[0] == 1 for v in entries.values()):
        # Net2Brain: one layer per file, one (1, ...) entry per image, keyed by the image's name
        names = sorted(entries)
        return {path.stem: np.concatenate([entries[k].reshape(1, -1) for k in names])}, names, {}
    return entries, ids, {}


def _read_safetensors(path: Path):
    from safetensors import safe_open

    feats, ids, meta = {}, None, {}
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        for key in f.keys():  # noqa: SIM118  (safe_open has keys(), not iteration)
            t = f.get_tensor(key)
            if key in ID_KEYS:
                ids = t.tolist()
            else:
                feats[key] = t
    return feats, ids, meta


def _read_hdf5(path: Path):
    try:
        import h5py
    except ImportError as err:  # an optional extra
        raise ImportError("reading HDF5 needs h5py: pip install 'repsim-toolkit[features]'") from err
    feats, ids = {}, None
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            nonlocal ids
            if not isinstance(obj, h5py.Dataset):
                return
            if name in ID_KEYS:
                ids = [v.decode() if isinstance(v, bytes) else v for v in obj[()].tolist()]
            elif obj.ndim >= 2:
                feats[name] = obj[()]

        f.visititems(visit)
    return feats, ids, {}


def _read_torch(path: Path):
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):  # thingsvision's features.pt
        return _split_layers(obj, path.stem), None, {}
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name} holds a {type(obj).__name__}; expected a tensor or a dict of tensors")
    if "feats" in obj:  # platonic-rep: {"feats": (N, L, D) or a list of (N, D), "num_params": ..., ...}
        raw = obj["feats"]
        feats = {str(i): t for i, t in enumerate(raw)} if isinstance(raw, (list, tuple)) else _split_layers(raw, "0")
        meta = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
                for k, v in obj.items() if k in ("num_params", "loss", "bpb")}  # fmt: skip
        return feats, None, {"layout": "platonic-rep", **meta}
    ids = next((obj[k] for k in ID_KEYS if k in obj), None)
    feats = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor) and k not in ID_KEYS and v.ndim >= 2}
    return feats, (ids.tolist() if isinstance(ids, torch.Tensor) else ids), {}


_SPLIT = re.compile(r"^features_(\d+)$")


def _read_folder(path: Path):
    """thingsvision's ``features.*`` folder, or Net2Brain's folder of ``{layer}.npz``."""
    names_file = path / "file_names.txt"
    ids = None
    if names_file.exists():
        ids = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    for suffix in (".npy", ".pt", ".hdf5", ".txt"):
        whole = path / f"features{suffix}"
        splits = sorted((p for p in path.glob(f"features_*{suffix}") if _SPLIT.match(p.stem)),
                        key=lambda p: int(_SPLIT.match(p.stem).group(1)))  # fmt: skip
        if whole.exists() or splits:
            parts = [next(iter(_read_any(p)[0].values())) for p in ([whole] if whole.exists() else splits)]
            array = parts[0] if len(parts) == 1 else np.concatenate([np.asarray(p) for p in parts])
            return {path.name: array}, ids, {"layout": "thingsvision"}
    layer_files = sorted(path.glob("*.npz"))
    if layer_files:
        feats, ids = {}, None
        for f in layer_files:
            layer, names, _ = _read_npz(f)
            feats.update(layer)
            if ids is not None and names != ids:
                raise ValueError(f"{f.name} holds other images than the other layers of {path}")
            ids = names
        return feats, ids, {"layout": "net2brain"}
    raise ValueError(
        f"{path} is not a feature folder: expected featureset.json (repsim), features.npy/.pt/.hdf5 "
        "(thingsvision) or one {layer}.npz per layer (Net2Brain)"
    )
