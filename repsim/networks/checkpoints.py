"""Safe checkpoint loading: state dicts only, never arbitrary pickled objects.

``.safetensors`` files are read with safetensors; ``.pt``/``.pth``/``.bin``/``.ckpt`` with
``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and plain containers
and refuses everything else (a crafted file cannot run code). Both are untrusted input.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.deprecation import deprecated_arguments
from ..core.io import atomic_write

NESTING_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "MODEL_STATE",
    "model_state",
    "net",
    "network",
    "module",
    "weights",
    "params",
    "ema",
    "model_ema",
    "teacher",
    "student",
)
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "net.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not fit the requested architecture."""


def load_state_dict(path) -> dict[str, Tensor]:
    """Read a state dict from ``path``, unwrapping common nestings and wrapper prefixes."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message is long and its wording varies; keep the line that names the cause.
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            refused = [ln for ln in lines if "global" in ln.lower() and "unsupported" in ln.lower()]
            if refused:
                raise CheckpointError(
                    f"refused to load {path}: it contains pickled objects other than tensors and plain containers "
                    f"({refused[0]}). Only state dicts are loaded, so code in a checkpoint never runs; re-save it "
                    "with torch.save(model.state_dict(), path) or as .safetensors"
                ) from None
            detail = next((ln for ln in lines if ln.lower().startswith("unsupported")), type(err).__name__)
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({detail})") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {err}") from None
    return unwrap_state_dict(raw, str(path))


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def unwrap_state_dict(obj, origin: str = "checkpoint") -> dict[str, Tensor]:
    """Find the tensor dict inside ``obj`` (nested under keys like ``state_dict``, ``model``,
    ``MODEL_STATE``...) and strip wrapper prefixes (``module.``, ``_orig_mod.``...) shared by every key."""
    seen = 0
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping) or seen > 5:
            raise CheckpointError(f"no state dict found in {origin}")
        inner = next((obj[k] for k in NESTING_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
            if tensors:  # a state dict saved next to scalars such as 'epoch'
                obj = tensors
                break
            raise CheckpointError(
                f"no state dict found in {origin}: top-level keys are {list(obj)[:10]}; expected tensors or one of "
                f"{list(NESTING_KEYS[:5])}"
            )
        obj, seen = inner, seen + 1
    state = dict(obj)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def save_state_dict(state: Mapping[str, Tensor], path) -> Path:
    """Write a state dict atomically (``.safetensors`` or a weights-only ``torch.save``)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


_HEAD_KEYS = (
    "fc.weight",
    "head.weight",
    "head.fc.weight",
    "classifier.weight",
    "classifier.1.weight",
    "last_linear.weight",
)


def build_arch(arch: str | Callable[..., nn.Module], num_classes: int | None = None) -> nn.Module:
    """An untrained model from a name: ``module:function`` import path, torchvision or timm name.

    Weights never come from a hub here (``pretrained=False``); they come from the checkpoint.
    """
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if callable(arch):
        return arch(**kwargs)
    if ":" in arch:
        module, _, fn = arch.partition(":")
        try:
            factory = getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as err:
            raise CheckpointError(f"cannot import architecture {arch!r}: {err}") from None
        return factory(**kwargs)
    import torchvision

    if arch in torchvision.models.list_models():
        return torchvision.models.get_model(arch, weights=None, **kwargs)
    import timm

    if timm.is_model(arch):
        return timm.create_model(arch, pretrained=False, **({"num_classes": 0} if num_classes is None else kwargs))
    raise CheckpointError(
        f"unknown architecture {arch!r}: give a torchvision model name (e.g. resnet18), a timm name "
        "(e.g. resnet18.a1_in1k, vit_tiny_patch16_224) or an import path 'package.module:function'"
    )


def _fit_to_model(state: dict[str, Tensor], model: nn.Module, origin: str) -> dict[str, Tensor]:
    """Pick the view of ``state`` whose keys match ``model``: itself, or its part under one prefix
    (the ``encoder.`` of an encoder+projector checkpoint, say)."""
    wanted = set(model.state_dict())
    candidates = [state]
    for prefix in sorted({k.split(".", 1)[0] for k in state if "." in k}):
        candidates.append({k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")})
    best = max(candidates, key=lambda c: len(wanted & set(c)))
    missing, unexpected = sorted(wanted - set(best)), sorted(set(best) - wanted)
    shapes = [
        f"{k}: file {tuple(best[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model.state_dict().items()
        if k in best and best[k].shape != v.shape
    ]
    if missing or shapes:
        parts = [
            f"{len(missing)} missing keys {missing[:6]}" if missing else "",
            f"{len(unexpected)} unexpected keys {unexpected[:6]}" if unexpected else "",
            f"shape mismatches {shapes[:6]}" if shapes else "",
        ]
        raise CheckpointError(
            f"{origin} does not fit {type(model).__name__}: "
            + "; ".join(p for p in parts if p)
            + ". Check --arch (and num_classes)"
        )
    return {k: best[k] for k in wanted}


@deprecated_arguments(positional=("num_classes",))
def load_model(
    path_or_state,
    arch: str | Callable[..., nn.Module] | nn.Module,
    *,
    num_classes: int | None = None,
) -> nn.Module:
    """A model of ``arch`` with the weights from ``path_or_state`` (a path or a state dict), in eval mode.

    ``arch``: a torchvision or timm name, an import path ``"pkg.module:function"``, a callable,
    or an ``nn.Module`` instance to load into. ``num_classes`` defaults to the classifier size
    found in the checkpoint (or none, for a headless backbone).
    """
    origin = str(path_or_state) if not isinstance(path_or_state, Mapping) else "state dict"
    state = (
        load_state_dict(path_or_state) if not isinstance(path_or_state, Mapping) else unwrap_state_dict(path_or_state)
    )
    if isinstance(arch, nn.Module):
        model = arch
    else:
        if num_classes is None:
            head = next((state[k] for k in _HEAD_KEYS if k in state and state[k].ndim == 2), None)
            num_classes = head.shape[0] if head is not None else None
        model = build_arch(arch, num_classes)
    model.load_state_dict(_fit_to_model(state, model, origin), strict=True)
    return model.eval()
