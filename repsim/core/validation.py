"""Input checks shared by every public function: one clear ``ValueError`` per misuse.

Public for the packages built on repsim (``probes``, ``zoo``) and for new measures: a function that
takes features validates them with :func:`as_features` (or :func:`as_feature_pair` /
:func:`as_layer_lists`), and its errors name the argument and say how to fix it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


def constant_tolerance(dtype: torch.dtype) -> float:
    """Relative spread below which a feature column counts as constant up to rounding."""
    return _CONSTANT_RTOL.get(dtype, 8 * torch.finfo(dtype).eps if dtype.is_floating_point else 1e-10)


# float32: ~8 ulps; float64: far above rounding yet far below any real signal (1e-10 of the magnitude)
_CONSTANT_RTOL = {torch.float64: 1e-10, torch.float32: 1e-6}


def near_constant(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> Tensor:
    """Device-side bool per column: max - min is within rounding of the column's largest magnitude."""
    return (hi - lo) <= constant_tolerance(dtype) * torch.maximum(lo.abs(), hi.abs())


def as_features(
    x, name: str, min_samples: int = 2, reason: str = "", varying: bool = False, check_values: bool = True
) -> Tensor:
    """Return ``x`` as a 2-D floating tensor of finite values with at least ``min_samples`` rows.

    ``varying=True`` also refuses features that are constant across samples up to rounding: every
    column's range is below :func:`constant_tolerance` times its largest magnitude (exact equality
    would let rows that equal one vector plus rounding noise through, and a measure would return
    a number made of rounding). Both checks come from one pass (column minima and maxima: NaN
    propagates into them, and so does Inf) and one host synchronisation.
    ``check_values=False`` checks only type and shape (no host synchronisation): for streaming
    accumulators, which track extremes on the device and check them once at the end.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2:
        hint = (
            " flatten or pool it first, e.g. x.flatten(1) or x.mean(dim=(2, 3))"
            if x.ndim > 2
            else " reshape it to (n, 1)"
        )
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {tuple(x.shape)};{hint}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    n = x.shape[0]
    if n < min_samples:
        why = f" ({reason})" if reason else ""
        raise ValueError(f"{name} has {n} samples but at least {min_samples} are needed{why}; pass more rows")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(x.shape)})")
    if not check_values:
        return x
    lo, hi = x.amin(dim=0), x.amax(dim=0)  # 10x faster than torch.aminmax(dim=0) on CPU (torch 2.13)
    finite = torch.isfinite(lo).all() & torch.isfinite(hi).all()
    constant = near_constant(lo, hi, x.dtype).all() if varying else torch.zeros((), dtype=torch.bool, device=x.device)
    finite_ok, is_constant = torch.stack([finite, constant]).tolist()  # the one host synchronisation
    if not finite_ok:
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf values; clean or drop those samples first")
    if is_constant:
        raise_constant(name)
    return x


def raise_constant(name: str):
    raise ValueError(
        f"{name} is constant across samples (up to rounding), so its similarity to anything is undefined "
        "(0/0, or a number made of rounding noise); "
        "check that the layer is not dead or the inputs are not all identical"
    )


def check_same_samples(x: Tensor, y: Tensor, names: tuple[str, str] = ("x", "y")) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{names[0]} has {x.shape[0]} samples (rows) but {names[1]} has {y.shape[0]}; "
            "both must hold features of the same samples in the same order"
        )
    if x.device != y.device:
        raise ValueError(f"{names[0]} is on {x.device} but {names[1]} is on {y.device}; move both to one device")


def as_feature_list(
    xs, name: str, min_samples: int = 2, reason: str = "", varying: bool = False, check_values: bool = True
) -> list[Tensor]:
    """Accept one tensor, a sequence of tensors or a mapping name -> tensor."""
    if isinstance(xs, (Tensor, np.ndarray)):
        items = [xs]
    elif isinstance(xs, Mapping):
        items = list(xs.values())
    elif isinstance(xs, Sequence) and not isinstance(xs, str):
        items = list(xs)
    else:
        raise ValueError(f"{name} must be a tensor, a list of tensors or a dict of tensors, got {type(xs).__name__}")
    if not items:
        raise ValueError(f"{name} is empty; pass at least one (n, d) feature tensor")
    out = [as_features(x, f"{name}[{i}]", min_samples, reason, varying, check_values) for i, x in enumerate(items)]
    for i, x in enumerate(out[1:], start=1):
        check_same_samples(out[0], x, (f"{name}[0]", f"{name}[{i}]"))
    return out


def as_feature_pair(x, y, min_samples: int = 2, reason: str = "", varying: bool = False) -> tuple[Tensor, Tensor]:
    """``x`` and ``y`` checked by :func:`as_features` and for the same samples."""
    x = as_features(x, "x", min_samples, reason, varying)
    y = as_features(y, "y", min_samples, reason, varying)
    check_same_samples(x, y)
    return x, y


def as_layer_lists(
    xs, ys, min_samples: int = 2, reason: str = "", varying: bool = False
) -> tuple[list[Tensor], list[Tensor]]:
    """The layer lists of a grid, checked by :func:`as_feature_list` and for the same samples.

    ``ys=None``, or ``ys`` the very object ``xs``, is one model's layers against themselves: the
    returned ``ys`` *is* the returned ``xs`` (validated once), which every grid tests with ``is`` to
    do its per-layer work once and use symmetric products.
    """
    same = ys is None or ys is xs
    xs = as_feature_list(xs, "xs", min_samples, reason, varying)
    ys = xs if same else as_feature_list(ys, "ys", min_samples, reason, varying)
    check_same_samples(xs[0], ys[0], ("xs[0]", "ys[0]"))
    return xs, ys


def resolve_dtype(dtype: torch.dtype | None, *tensors: Tensor) -> torch.dtype:
    """The dtype the big products run in (the library's precision policy).

    ``None`` (the default everywhere): the inputs' promoted float dtype, with float16/bfloat16
    raised to float32; float32 features give float32 products, float64 features float64 products.
    Centring and every reduction still run in float64 and results are float64, so the measured
    error of the float32 path stays at the 1e-6 level (docs/guide/measures.md, "Precision").
    An explicit dtype (``torch.float64`` for the exact path) is used as given.
    """
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype such as torch.float64, got {dtype}")
        return dtype
    out = tensors[0].dtype
    for t in tensors[1:]:
        out = torch.promote_types(out, t.dtype)
    # Half precision products lose too much for similarity; float32 is the fastest honest choice.
    return torch.float32 if out in (torch.float16, torch.bfloat16) else out


def check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value
