"""Inputs of encoding models: features and targets that may not fit in memory (numpy memmaps, feature
stores with ``.shape`` and slicing, tensors), read by column blocks, checked block by block; and the
outer folds over stimuli."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.numerics import ACC
from ..core.validation import near_constant


class Columns:
    """A 2-D (samples, columns) array-like read by blocks of columns as float tensors.

    ``data``: a tensor, a numpy array or memmap, or any object with ``.shape`` and 2-D slicing
    (``data[rows, lo:hi]``); ``rows``: the sample indices used (None: all). Nothing is copied until
    a block is read.
    """

    def __init__(self, data, name: str, rows: np.ndarray | None = None) -> None:
        if hasattr(data, "to_numpy") and hasattr(data, "columns"):  # a pandas DataFrame
            data = data.to_numpy()
        if isinstance(data, (list, tuple)):
            data = np.asarray(data)
        shape = getattr(data, "shape", None)
        if shape is None or not hasattr(data, "__getitem__"):
            raise ValueError(f"{name} must be an array of shape (stimuli, columns) (tensor, numpy array, memmap "
                             f"or an object with .shape and slicing), got {type(data).__name__}")  # fmt: skip
        if len(shape) == 1:
            data = data.reshape(-1, 1) if hasattr(data, "reshape") else data
            shape = (shape[0], 1)
        if len(shape) != 2:
            raise ValueError(f"{name} must be 2-D (stimuli, columns), got shape {tuple(shape)}; flatten or pool it")
        self.data, self.name, self.rows = data, name, rows
        self.n = int(shape[0]) if rows is None else len(rows)
        self.width = int(shape[1])
        dt = getattr(data, "dtype", None)
        self.dtype = _torch_dtype(dt)
        if self.n < 1 or self.width < 1:
            raise ValueError(f"{name} is empty (shape {tuple(shape)})")

    def subset(self, rows: np.ndarray) -> Columns:
        base = rows if self.rows is None else self.rows[rows]
        return Columns(self.data, self.name, base)

    def block(self, lo: int, hi: int, device=None) -> Tensor:
        """Columns lo:hi of the used rows, as a tensor (float; integer data converted to float64)."""
        rows = self.rows
        if rows is not None and len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            x, rows = self.data[int(rows[0]) : int(rows[0]) + len(rows), lo:hi], None  # a range: read only it
        else:
            x = self.data[:, lo:hi]
        if isinstance(x, Tensor):
            x = x.detach()
        else:
            arr = np.asarray(x)
            if not (arr.flags.writeable and arr.flags.c_contiguous):  # a read-only memmap: copy the block
                arr = np.array(arr, order="C")
            x = torch.from_numpy(arr)
        if rows is not None:
            x = x[torch.as_tensor(rows)]
        if not x.is_floating_point():
            x = x.to(ACC)
        return x.to(device) if device is not None else x

    def blocks(self, width: int, device=None):
        for lo in range(0, self.width, width):
            yield lo, self.block(lo, min(lo + width, self.width), device)


def _torch_dtype(dt) -> torch.dtype:
    if isinstance(dt, torch.dtype):
        return dt if dt.is_floating_point else ACC
    try:
        return {np.dtype("float32"): torch.float32, np.dtype("float16"): torch.float32}.get(np.dtype(dt), ACC)
    except TypeError:
        return ACC


def as_layers(features) -> dict[str, Columns]:
    """One array-like, or a Mapping layer -> array-like (every layer of a model, sharing the folds)."""
    if isinstance(features, Mapping):
        if not features:
            raise ValueError("features is an empty mapping; pass at least one layer's (stimuli, features) array")
        return {str(k): Columns(v, f"features[{k!r}]") for k, v in features.items()}
    return {"features": Columns(features, "features")}


def scan(cols: Columns, width: int, device=None) -> tuple[Tensor, Tensor]:
    """One pass over the blocks: per column float64 mean, and whether it is constant (up to rounding);
    refuses NaN or Inf."""
    means, constant = [], []
    for lo, x in cols.blocks(width, device):
        lo_v, hi_v = x.amin(dim=0), x.amax(dim=0)
        if not (torch.isfinite(lo_v).all() and torch.isfinite(hi_v).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{cols.name} contains {bad} NaN or Inf values (columns {lo}..{lo + x.shape[1] - 1}); "
                             "clean or drop them first")  # fmt: skip
        means.append(x.to(ACC).mean(dim=0))
        constant.append(near_constant(lo_v, hi_v, x.dtype))
    return torch.cat(means), torch.cat(constant)


def folds_of(cv, n: int, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer folds: ``cv`` an int (contiguous folds, scikit-learn's unshuffled ``KFold(cv)``), a
    sequence of (train, test) index pairs, or a scikit-learn splitter (``.split(X, y, groups)``)."""
    from sklearn.model_selection import KFold

    if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
        if not 2 <= cv <= n:
            raise ValueError(f"cv must be between 2 and the number of stimuli ({n}), got {cv}")
        pairs = list(KFold(int(cv)).split(np.zeros((n, 1))))
    elif hasattr(cv, "split"):
        pairs = list(cv.split(np.zeros((n, 1)), None, groups))
    elif isinstance(cv, Sequence) and not isinstance(cv, str):
        pairs = list(cv)
    else:
        raise ValueError("cv must be an int, a list of (train, test) index pairs or a scikit-learn splitter, "
                         f"got {type(cv).__name__}")  # fmt: skip
    if not pairs:
        raise ValueError("cv gave no folds; pass at least one (train, test) pair")
    out = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"cv fold {i} must be a (train, test) pair of index arrays")
        tr, te = (np.asarray(a, dtype=np.int64).ravel() for a in pair)
        if len(tr) < 3 or len(te) < 1:
            raise ValueError(f"cv fold {i} has {len(tr)} training and {len(te)} held-out stimuli; "
                             "each fold needs at least 3 training stimuli and 1 held-out stimulus")  # fmt: skip
        if min(tr.min(), te.min()) < 0 or max(tr.max(), te.max()) >= n:
            raise ValueError(f"cv fold {i} has indices outside 0..{n - 1}")
        if np.intersect1d(tr, te).size:
            raise ValueError(f"cv fold {i} holds out stimuli it also trains on; train and test must be disjoint")
        out.append((tr, te))
    return out
