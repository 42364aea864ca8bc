"""One protocol for every streaming accumulator: declared state, ``update``/``merge``/``compute``/``reset``.

In the spirit of torchmetrics' ``Metric``: a subclass declares each piece of its state once with
:meth:`Accumulator.add_state` (its initial value and how two partial states over disjoint samples
combine), implements ``update`` and ``compute``, and inherits ``reset``, ``merge`` (two states in a
fixed order: deterministic) and ``sync`` (every rank's state under ``torchrun``, merged in rank
order, so a distributed result equals one process's to rounding). A state whose pieces combine
jointly (Chan et al.'s pairwise update of means and scatters) overrides :meth:`Accumulator.merge_state`.

Reductions:

* ``"sum"``: elementwise sum (tensors, numbers, lists/tuples of them, or objects with ``add``)
* ``"min"`` / ``"max"``: elementwise extremes (NaN propagates)
* ``"cat"``: list concatenation (per-sample pieces, kept in merge order)
* ``"same"``: must be equal in both states (a form flag, a shared shift); the first non-None wins
* ``None``: combined by the subclass's :meth:`Accumulator.merge_state`
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from ..core.validation import as_feature_list, check_same_samples

REDUCTIONS = ("sum", "min", "max", "cat", "same", None)


_OPS: dict[str, Callable] = {
    "sum": lambda a, b: a + b,
    "min": lambda a, b: torch.minimum(a, b) if isinstance(a, Tensor) else min(a, b),
    "max": lambda a, b: torch.maximum(a, b) if isinstance(a, Tensor) else max(a, b),
}


def combine_states(a, b, reduce: str):
    """``a`` and ``b`` combined elementwise by ``reduce`` ("sum", "min", "max"); None is the identity."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise ValueError("merge() needs accumulators over the same layers; their states differ in length")
        return type(a)(combine_states(u, v, reduce) for u, v in zip(a, b, strict=True))
    if reduce == "sum" and not isinstance(a, Tensor) and hasattr(a, "add"):  # a moment dataclass, in-place add
        out = copy.deepcopy(a)
        out.add(b)
        return out
    return _OPS[reduce](a, b)


def _equal(a, b) -> bool:
    if isinstance(a, Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b.to(a.device)))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b, strict=True))
    return a == b


class Accumulator:
    """Base of every streaming accumulator (see the module docstring for the protocol)."""

    def __init__(self) -> None:
        self._defaults: dict[str, tuple[object, str | None]] = {}
        self._mismatch: dict[str, str] = {}

    # ------------------------------------------------------------------ declaration
    def add_state(self, name: str, default, reduce: str | None, mismatch: str | None = None) -> None:
        """Declare a piece of state with its initial value and its reduction; sets the attribute.

        ``mismatch``: the error message when a ``"same"`` state differs between merged accumulators."""
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if mismatch is not None:
            self._mismatch[name] = mismatch
        self._defaults[name] = (copy.deepcopy(default), reduce)
        setattr(self, name, copy.deepcopy(default))

    def reset(self) -> None:
        """Back to the declared initial state (as if no batch had been seen)."""
        for name, (default, _) in self._defaults.items():
            setattr(self, name, copy.deepcopy(default))

    def state(self) -> dict[str, object]:
        """The declared state by name (what :meth:`merge` combines and :meth:`sync` gathers)."""
        return {name: getattr(self, name) for name in self._defaults}

    # ------------------------------------------------------------------ the protocol
    def update(self, *args, **kwargs) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def merge_state(self, other: Accumulator) -> None:
        """Combine the states declared with ``reduce=None`` (subclasses that have them override this)."""
        custom = [name for name, (_, reduce) in self._defaults.items() if reduce is None]
        if custom:
            raise NotImplementedError(f"{type(self).__name__} must merge {custom} in merge_state()")

    def merge(self, other: Accumulator) -> None:
        """Add the state of an accumulator of the same kind over other samples (another batch stream or rank)."""
        if type(other) is not type(self):
            raise ValueError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        for name, (_, reduce) in self._defaults.items():  # agreement first: a refused merge changes nothing
            mine, theirs = getattr(self, name), getattr(other, name)
            if reduce == "same" and mine is not None and theirs is not None and not _equal(mine, theirs):
                raise ValueError(
                    self._mismatch.get(name, f"merge() needs accumulators that agree on {name.lstrip('_')}")
                )
        self.merge_state(other)
        for name, (_, reduce) in self._defaults.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if reduce is None:
                continue
            if reduce == "same":
                setattr(self, name, theirs if mine is None else mine)
            elif reduce == "cat":
                setattr(self, name, list(mine or []) + list(theirs or []))
            else:
                setattr(self, name, combine_states(mine, theirs, reduce))

    def to(self, device) -> Accumulator:
        """A copy with every tensor of the state on ``device``."""
        clone = copy.copy(self)
        for name in self._defaults:
            setattr(clone, name, _move(getattr(self, name), device))
        return clone

    def sync(self) -> Accumulator:
        """Under a ``torchrun`` process group: every rank's state merged in rank order (a new
        accumulator, on this rank's device; deterministic). Without one: ``self``."""
        from ..core import distributed as D

        if not D.is_distributed():
            return self
        device = _device_of(self.state())
        states = D.gather(self.to("cpu"))
        total = states[0]
        for other in states[1:]:
            total.merge(other)
        return total.to(device) if device is not None else total


def _move(value, device):
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_move(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_move(v, device) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        clone = copy.copy(value)
        for key in value.__dataclass_fields__:
            setattr(clone, key, _move(getattr(value, key), device))
        return clone
    return value


def _device_of(value):
    if isinstance(value, Tensor):
        return value.device
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            d = _device_of(v)
            if d is not None:
                return d
    if hasattr(value, "__dataclass_fields__"):
        return _device_of([getattr(value, k) for k in value.__dataclass_fields__])
    return None


class LayerStream(Accumulator):
    """An accumulator fed ``update(xs, ys=None)``: single (b, d) tensors or lists of per-layer tensors of
    the same batch (``ys=None``: xs against itself), one form per stream; declares ``n`` (summed)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("n", 0, "sum")
        self.add_state("_single", None, "same")

    def _layer_lists(self, xs, ys) -> tuple[list[Tensor], list[Tensor]]:
        """The batch as per-layer lists (``ys`` is ``xs`` itself when None), values unchecked: NaN/Inf are
        refused in ``compute``, so ``update`` never synchronises with the host."""
        single = isinstance(xs, Tensor) and (ys is None or isinstance(ys, Tensor))
        if self._single is not None and single != self._single:
            raise ValueError("update() got single tensors after lists (or the reverse); keep one form per stream")
        self._single = single
        xs = as_feature_list(xs, "xs", 1, check_values=False)
        ys = xs if ys is None else as_feature_list(ys, "ys", 1, check_values=False)
        check_same_samples(xs[0], ys[0], ("xs", "ys"))
        return xs, ys
