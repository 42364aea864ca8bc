"""Safe checkpoint loading: state dicts only, never arbitrary pickled objects.

``.safetensors`` files are read with safetensors; ``.pt``/``.pth``/``.bin``/``.ckpt`` with
``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and plain containers
and refuses everything else (a crafted file cannot run code). Both are untrusted input.
"""

from __future__ import annotations

import importlib
import json
import math
import pickle
import re
import zipfile
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


# Bytes per element of the safetensors dtypes (the format's spec: huggingface/safetensors README).
_SAFETENSORS_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is damaged: {what}. The file was changed or truncated after it was written (an interrupted "
        "copy or download, a disk error); nothing was loaded from it. Copy or save it again"
    )


def _storage_names(obj, prefix: str = "") -> list[str]:
    """The tensors of ``obj`` by storage, in the order torch.save numbers its storage records (first use,
    depth first, in the pickler's traversal order): entry i names the tensor(s) stored in ``data/i``."""
    order: dict[int, str] = {}

    def walk(o, name):
        if isinstance(o, Tensor):
            order.setdefault(o.untyped_storage()._cdata, name)
        elif isinstance(o, Mapping):
            for k, v in o.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{name}[{i}]")

    walk(obj, prefix)
    return list(order.values())


def _check_torch_zip(path: Path) -> None:
    """Refuse a ``torch.save`` zip whose records fail their CRC-32 (a few ms for a ResNet-18).

    ``torch.load`` reads the records without checking them, so flipped bytes inside a tensor load as
    silently wrong weights. Legacy (non-zip) files carry no checksum and are not checked.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise _damaged(path, f"its zip structure is broken ({err or type(err).__name__})") from None
    if bad is None:
        return
    record = re.search(r"/data/(\d+)$", bad)
    tensor = ""
    if record:  # name the tensor as well: the payload loads (torch does not check), only its bytes are wrong
        try:
            names = _storage_names(torch.load(path, map_location="cpu", weights_only=True))
            tensor = f" (tensor {names[int(record.group(1))]!r})" if int(record.group(1)) < len(names) else ""
        except Exception:  # the name is a courtesy; the refusal stands without it
            tensor = ""
    raise _damaged(path, f"record {bad!r}{tensor} fails its CRC-32 check")


def _check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header and size disagree (truncated, padded or overwritten header).

    The format has no checksum: this checks the header length, that each tensor's byte range matches its
    dtype and shape, that the ranges tile the data section from 0 without gaps or overlaps, and that the
    file ends where the last one does. Bytes flipped inside a tensor's data cannot be detected.
    """
    size = path.stat().st_size
    raw = path.open("rb").read(8) if size >= 8 else b""
    n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    if n < 2 or 8 + n > size:
        raise _damaged(path, f"its header length ({n} bytes) does not fit the file's {size} bytes")
    with path.open("rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _damaged(path, f"its header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    end = 0
    tensors = [(k, v) for k, v in header.items() if k != "__metadata__"]
    entries = sorted(tensors, key=lambda kv: _offsets(path, kv)[0])
    for name, entry in entries:
        begin, stop = _offsets(path, (name, entry))
        width = _SAFETENSORS_BYTES.get(entry.get("dtype"))
        shape = entry.get("shape")
        if width is None or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _damaged(path, f"record {name!r} has dtype {entry.get('dtype')!r} and shape {shape!r}")
        if begin != end or stop - begin != width * math.prod(shape):
            raise _damaged(
                path,
                f"record {name!r} spans bytes {begin}..{stop} of the data, but its {entry['dtype']} {shape} needs "
                f"{width * math.prod(shape)} bytes from {end}",
            )
        end = stop
    if 8 + n + end != size:
        last = f"record {entries[-1][0]!r} ends" if entries else "the header ends"
        raise _damaged(path, f"the file has {size} bytes but its {last} at byte {8 + n + end}")


def _offsets(path: Path, item) -> tuple[int, int]:
    name, entry = item
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _damaged(path, f"record {name!r} has no valid data_offsets ({offsets!r})")
    if not 0 <= offsets[0] <= offsets[1]:
        raise _damaged(path, f"record {name!r} has data_offsets {offsets} out of order")
    return offsets[0], offsets[1]


def load_state_dict(path) -> dict[str, Tensor]:
    """Read a state dict from ``path``, unwrapping common nestings and wrapper prefixes.

    The file is checked before it is read: a ``torch.save`` zip's per-record CRC-32, a safetensors
    file's header against its size. A damaged file raises :class:`CheckpointError` naming the record.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): the save that wrote it was probably interrupted; save it again"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        _check_safetensors(path)
        try:
            raw = load_file(str(path), device="cpu")
        except Exception as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    else:
        _check_torch_zip(path)
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
            detail = str(err).strip() or f"{type(err).__name__}, the file ends early"
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {detail}") from None
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
