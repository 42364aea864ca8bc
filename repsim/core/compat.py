"""Compatibility guard for a CUDA build of torchvision next to a CPU build of torch.

Why this exists: the only torchvision wheel for torch 2.13 is a CUDA build. With CPU torch its
compiled extension (``torchvision/_C``) fails to load, and ``import torchvision`` then dies in
``torchvision._meta_registrations`` with "operator torchvision::nms does not exist", because
that module registers fake kernels for ``nms``/``qnms`` unconditionally. ``import timm`` fails the
same way.

The guard loads the extension exactly as torchvision would. Only when that load fails does it
define the schemas of those two operators, each backed by a kernel that raises a clear error.
On a working (CUDA or matching CPU) install the load succeeds and nothing is defined.
``torchvision.ops`` and ``torchvision.io`` stay unusable in the guarded case: decode images with
PIL and use only the pure-Python parts (models, transforms v2, datasets).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

# The operators torchvision registers fake kernels for at import time, whatever its ops load.
_UNCONDITIONAL_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_state: dict[str, object] = {"guarded": None, "library": None}


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"_C{suffix}"
        if candidate.exists():
            return candidate
    return None


def _raise_unavailable(*args, **kwargs):
    raise RuntimeError(
        "torchvision's compiled operators are unavailable: this torchvision wheel does not match "
        "the installed torch (a CUDA torchvision with CPU torch). torchvision.ops and "
        "torchvision.io cannot run here; install a matching torch/torchvision pair to use them."
    )


def ensure_torchvision_importable() -> bool:
    """Make ``import torchvision`` (and ``import timm``) work; return True if the guard is active.

    Idempotent. Does nothing when torchvision is absent, already imported, or its extension loads.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never reach for a hub here
    if _state["guarded"] is not None:
        return bool(_state["guarded"])
    if "torchvision" in sys.modules:
        _state["guarded"] = False
        return False
    path = _extension_path()  # find_spec may re-enter through the import hook, which runs the guard
    if _state["guarded"] is not None:
        return bool(_state["guarded"])
    if path is None:
        _state["guarded"] = False
        return False

    import torch

    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError):
        library = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _UNCONDITIONAL_OPS.items():
            library.define(schema)
            library.impl(name, _raise_unavailable, "CompositeExplicitAutograd")
        _state["library"] = library  # keep it alive: dropping it would deregister the schemas
        _state["guarded"] = True
        return True
    _state["guarded"] = False
    return False


def torchvision_guard_active() -> bool:
    """True if :func:`ensure_torchvision_importable` had to define stand-in operator schemas."""
    return bool(_state["guarded"])
