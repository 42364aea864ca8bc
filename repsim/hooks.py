"""Forward hooks that capture named layers' outputs, and the choice of which layers to capture.

Hooks are always removed when the context exits, also after an exception. A module that runs
more than once in one forward pass (a shared block, a weight-tied layer) makes its output
ambiguous, so it is refused with a clear error instead of silently keeping one of the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

Pool = str | Callable[[Tensor], Tensor]
POOLS = ("mean", "flatten", "none", "mask_mean", "first", "last")


def list_layers(model: nn.Module, leaves_only: bool = False) -> list[str]:
    """Names of ``model``'s submodules as ``named_modules()`` gives them (the root excluded)."""
    return [name for name, m in model.named_modules() if name and (not leaves_only or not list(m.children()))]


def default_layers(model: nn.Module) -> list[str]:
    """A sensible default: the outputs of the model's top-level blocks.

    timm models expose them as ``feature_info``; otherwise the top-level children that hold
    parameters, keeping only the composite ones (ResNet's ``layer1..layer4``, the zoo's
    ``encoder``/``projector``) when there are at least two of them.
    """
    info = getattr(model, "feature_info", None)
    if info is not None:
        names = [entry["module"] for entry in info] if isinstance(info, list) else list(info.module_name())
        known = set(list_layers(model))
        if names and all(n in known for n in names):
            return names
    children = [(name, m) for name, m in model.named_children() if any(True for _ in m.parameters())]
    composite = [name for name, m in children if list(m.children())]
    if len(composite) >= 2:
        return composite
    return [name for name, _ in children] or list_layers(model)[-1:]


def first_tensor(output) -> Tensor:
    """The tensor in a module's output: itself, the first tensor of a tuple/list, or of a dict's values."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, Sequence):
        for item in output:
            if isinstance(item, (Tensor, Mapping, Sequence)) and not isinstance(item, str):
                try:
                    return first_tensor(item)
                except TypeError:
                    continue
    raise TypeError(f"no tensor in a module output of type {type(output).__name__}")


def pool_features(t: Tensor, pool: Pool = "mean", mask: Tensor | None = None) -> Tensor:
    """Turn one layer's output (n, ...) into an (n, d) matrix.

    ``"mean"`` (default): global average over everything after the channel axis for conv maps
    (n, C, H, W) -> (n, C), and over the token axis for sequences (n, T, D) -> (n, D), the timm
    ViT layout. ``"flatten"``: all of it, (n, C*H*W); exact, but d grows with resolution.
    ``"none"``: 2-D outputs only. A callable maps (n, ...) -> (n, d) itself.

    Sequence outputs (n, T, D) of keyword-input models (``mask`` = the batch's ``attention_mask``,
    (n, T), 1 for real tokens, 0 for padding): ``"mask_mean"`` averages the real tokens only,
    sum_t m_t h_t / sum_t m_t, so padding never changes a feature; ``"first"`` takes token 0 (a
    CLS token); ``"last"`` takes the last real token of each row (the last position with m_t = 1,
    for left or right padding; the last position without a mask). Outputs that are not (n, T, D)
    are pooled as by ``"mean"``.
    """
    if pool in ("mask_mean", "first", "last") and t.ndim == 3:
        if mask is not None and tuple(mask.shape) != tuple(t.shape[:2]):
            mask = None  # this output is not over the input's tokens (e.g. a pooled head): no mask applies
        if pool == "first":
            out = t[:, 0]
        elif pool == "last":
            if mask is None:
                out = t[:, -1]
            else:
                positions = torch.arange(1, t.shape[1] + 1, device=t.device)
                last = (mask.to(positions.dtype) * positions).argmax(dim=1)
                out = t[torch.arange(t.shape[0], device=t.device), last]
        elif mask is None:
            out = t.mean(dim=1)
        else:
            m = mask.to(t.dtype).unsqueeze(-1)
            out = (t * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
    elif pool in ("mask_mean", "first", "last"):
        out = t.flatten(1) if t.ndim == 2 else t.flatten(2).mean(dim=2)
    elif callable(pool):
        out = pool(t)
    elif pool == "flatten" or t.ndim == 2:
        out = t.flatten(1)
    elif pool == "mean":
        out = t.mean(dim=1) if t.ndim == 3 else t.flatten(2).mean(dim=2)
    elif pool == "none":
        raise ValueError(f"a layer output has shape {tuple(t.shape)}; pool='none' takes 2-D outputs only")
    else:
        raise ValueError(f"pool must be one of {POOLS} or a callable, got {pool!r}")
    if out.ndim != 2:
        raise ValueError(f"pooling must give (n, d) features, got shape {tuple(out.shape)}")
    return out


class FeatureHooks:
    """Context manager capturing the (pooled) outputs of named modules for one forward at a time.

    >>> with FeatureHooks(model, ["layer1", "layer4"]) as hooks:
    ...     model(x)
    ...     feats = hooks.pop()   # {"layer1": (n, d1), "layer4": (n, d4)}
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], pool: Pool = "mean", detach: bool = True) -> None:
        self.model = model
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("layers is empty; name at least one module (see repsim.list_layers(model))")
        modules = dict(model.named_modules())
        unknown = [name for name in self.layers if name not in modules]
        if unknown:
            raise ValueError(
                f"unknown layer name(s) {unknown} for {type(model).__name__}; "
                f"valid names look like {list_layers(model)[:8]} (see repsim.list_layers(model))"
            )
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers has duplicates: {self.layers}")
        self._modules = {name: modules[name] for name in self.layers}
        self.pool = pool
        self.detach = detach
        self._handles: list = []
        self._captured: dict[str, Tensor] = {}
        self.mask: Tensor | None = None  # the batch's attention mask, for pool="mask_mean"/"last"

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if name in self._captured:
                raise ValueError(
                    f"layer {name!r} ran more than once in one forward pass, so its output is ambiguous; "
                    "hook a module that runs once (e.g. its parent block)"
                )
            t = first_tensor(output)
            if self.detach:
                t = t.detach()
            self._captured[name] = pool_features(t, self.pool, self.mask)

        return hook

    def __enter__(self) -> FeatureHooks:
        try:
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captured.clear()

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass, in ``layers`` order; clears them for the next."""
        missing = [name for name in self.layers if name not in self._captured]
        if missing:
            self._captured.clear()
            raise ValueError(f"layer(s) {missing} did not run in the forward pass; pick modules on the forward path")
        out = {name: self._captured[name] for name in self.layers}
        self._captured.clear()
        return out


@torch.no_grad()
def forward_features(model: nn.Module, hooks: FeatureHooks, x) -> dict[str, Tensor]:
    """One forward pass of ``model`` on ``x``; returns the hooked features."""
    hooks._captured.clear()
    if isinstance(x, Mapping):
        model(**x)
    else:
        model(x)
    return hooks.pop()
