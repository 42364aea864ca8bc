"""Forward hooks that capture named layers' outputs, and the choice of which layers to capture.

Hooks are always removed when the context exits, also after an exception. A module that runs
more than once in one forward pass (a shared block, a weight-tied layer) makes its output
ambiguous, so it is refused with a clear error instead of silently keeping one of the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.deprecation import deprecated_arguments

Pool = str | Callable[[Tensor], Tensor]
POOLS = ("mean", "flatten", "none", "mask_mean", "mask_max", "first", "last", "tokens")
SEQUENCE_POOLS = ("mask_mean", "mask_max", "first", "last")  # (n, T, D) token sequences -> (n, D)


@deprecated_arguments(positional=("leaves_only",))
def list_layers(model: nn.Module, *, leaves_only: bool = False) -> list[str]:
    """Names of ``model``'s submodules as ``named_modules()`` gives them (the root excluded)."""
    return [name for name, m in model.named_modules() if name and (not leaves_only or not list(m.children()))]


def block_list(model: nn.Module) -> str | None:
    """Name of the model's stack of blocks: its longest ``ModuleList`` of two or more blocks of one type.

    A transformer keeps its blocks in a ``ModuleList`` (GPT-2's ``h``, BERT's ``encoder.layer``,
    Llama's ``layers``, T5's ``encoder.block``); the list itself never runs, its blocks do. Ties
    go to the first in ``named_modules()`` order (an encoder-decoder's encoder). None: no such list.
    """
    best, size = None, 1
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > size:
            kinds = {type(block) for block in m}
            if len(kinds) == 1 and any(True for _ in m.parameters()):
                best, size = name, len(m)
    return best


def _stack_layers(model: nn.Module, stack: str) -> list[str]:
    """The blocks of ``stack``, preceded by the module that feeds block 0 and followed by a final norm.

    Both are looked for among the siblings of the stack's branch, from its parent up to the root:
    before it, an embedding module (or a module holding embeddings, BERT's ``embeddings``), or a
    parameter-free module right after embeddings (GPT-2's ``drop``, whose output is the sum of the
    token and position embeddings); after it, a normalisation (a class whose name has "Norm").
    """
    names = {id(m): name for name, m in model.named_modules()}  # the names named_modules() gives
    blocks = [f"{stack}.{i}" for i in range(len(model.get_submodule(stack)))]
    parts = stack.split(".")
    first = last = None
    seen_before = seen_after = False  # each is looked for at the nearest level that has siblings on its side
    for depth in range(len(parts) - 1, -1, -1):
        parent = model.get_submodule(".".join(parts[:depth])) if depth else model
        children = list(parent.named_children())
        at = [n for n, _ in children].index(parts[depth])
        before, after = [m for _, m in children[:at]], [m for _, m in children[at + 1 :]]
        if before and not seen_before:
            seen_before, first = True, _embedding_output(before, names)
        if after and not seen_after:
            seen_after = True
            last = names.get(id(after[0])) if "norm" in type(after[0]).__name__.lower() else None
    return [n for n in (first, *blocks, last) if n is not None]


def _embedding_output(before: list[nn.Module], names: dict[int, str]) -> str | None:
    def holds_embedding(m: nn.Module) -> bool:
        return any(isinstance(c, nn.Embedding) for c in m.modules())

    previous = before[-1]
    if holds_embedding(previous):
        return names.get(id(previous))
    has_params = any(True for _ in previous.parameters())
    if not has_params and not list(previous.children()) and any(holds_embedding(m) for m in before[:-1]):
        return names.get(id(previous))
    return None


def default_layers(model: nn.Module) -> list[str]:
    """A sensible default: the outputs of the model's top-level blocks.

    timm models expose them as ``feature_info``. Transformer stacks (a ``ModuleList`` of blocks of
    one type, see :func:`block_list`) give their embedding output, every block and the final norm
    where it exists: GPT-2 ``drop, h.0 .. h.N, ln_f``; BERT ``embeddings, encoder.layer.0 ..``;
    Llama ``embed_tokens, layers.0 .., norm``; T5 ``encoder.embed_tokens, encoder.block.0 ..,
    encoder.final_layer_norm``.
    Otherwise the top-level children that hold parameters, keeping only the composite ones
    (ResNet's ``layer1..layer4``, the zoo's ``encoder``/``projector``) when there are at least two.
    A ``ModuleList``, which never runs itself, is never a default layer: its items are. torchvision
    models whose top level is one or two containers (MobileNet, EfficientNet, ConvNeXt, VGG, ViT,
    Swin, RegNet...) get the blocks inside them (see :func:`_torchvision_blocks`).
    """
    info = getattr(model, "feature_info", None)
    if info is not None:
        names = [entry["module"] for entry in info] if isinstance(info, list) else list(info.module_name())
        known = set(list_layers(model))
        if names and all(n in known for n in names):
            return names
    stack = block_list(model)
    if stack is not None:
        return _stack_layers(model, stack)
    children = [(name, m) for name, m in model.named_children() if any(True for _ in m.parameters())]
    children = [
        (f"{name}.{i}", item) if isinstance(m, nn.ModuleList) else (name, m)
        for name, m in children
        for i, item in (enumerate(m) if isinstance(m, nn.ModuleList) else [(0, m)])
    ]
    composite = [name for name, m in children if list(m.children())]
    names = composite if len(composite) >= 2 else [name for name, _ in children] or list_layers(model)[-1:]
    if type(model).__module__.startswith("torchvision.models") and len(names) < 4:
        return _torchvision_blocks(model, names)
    return names


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _expand(module: nn.Module, name: str) -> list[str]:
    """A coarse torchvision container (``features``, ``encoder``...) as its blocks: its parameterised
    children when there are at least 3 (the composite ones if at least 2 are), or, through a child
    holding 80 % of its parameters (ViT's ``encoder.layers``), that child's blocks and its siblings."""
    kids = [(f"{name}.{k}", c) for k, c in module.named_children() if _n_params(c)]
    if len(kids) >= 3:
        composite = [k for k, c in kids if list(c.children())]
        return composite if len(composite) >= 2 else [k for k, _ in kids]
    if kids:
        big, child = max(kids, key=lambda kc: _n_params(kc[1]))
        if list(child.children()) and _n_params(child) >= 0.8 * _n_params(module):
            return [n for k, _ in kids for n in (_expand(child, big) if k == big else [k])]
    return [name]


def _width(module: nn.Module) -> int | None:
    """The output width of a block: the leading size of its last weight (conv, norm or linear)."""
    weights = [m.weight for m in module.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)]
    return int(weights[-1].shape[0]) if weights and weights[-1].ndim else None


def _torchvision_blocks(model: nn.Module, names: list[str]) -> list[str]:
    """torchvision models other than ResNet (MobileNet, EfficientNet, ConvNeXt, VGG, ViT, Swin...) have
    one or two containers at the top (``features``, ``classifier``): their blocks instead, as timm's
    ``feature_info`` gives. Past 12 blocks, the last block of each run of equal width (a stage, where
    a CNN's resolution changes) when that leaves at least 4: MobileNetV2's 19 blocks give 8."""
    blocks = [n for name in names for n in _expand(model.get_submodule(name), name)]
    if len(blocks) <= 12:
        return blocks
    widths = [_width(model.get_submodule(n)) for n in blocks]
    ends = [n for i, n in enumerate(blocks) if i == len(blocks) - 1 or widths[i] != widths[i + 1]]
    return ends if len(ends) >= 4 else blocks


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
    sum_t m_t h_t / sum_t m_t, so padding never changes a feature; ``"mask_max"`` takes the
    largest value of each feature over the real tokens, max_{t: m_t = 1} h_t; ``"first"`` takes
    the first real token (a CLS token; token 0 without a mask); ``"last"`` the last real token of
    each row (the last position with m_t = 1; the last position without a mask); both skip
    padding on either side. Outputs that are not
    (n, T, D) are pooled as by ``"mean"``. Which suits which model: docs/guide/text.md.

    ``"tokens"``: every real token a row, (sum_t m_t, D), sentence by sentence and in token order
    (all n * T tokens without a mask); only for (n, T, D) outputs over the input's tokens.
    """
    if mask is not None and (t.ndim != 3 or tuple(mask.shape) != tuple(t.shape[:2])):
        mask = None  # this output is not over the input's tokens (e.g. a pooled head): no mask applies
    if pool == "tokens":
        if t.ndim != 3:
            raise ValueError(
                f"pool='tokens' takes (n, T, D) token sequences; a layer output has shape {tuple(t.shape)} "
                "(hook the blocks, not a pooled head)"
            )
        out = t.reshape(-1, t.shape[-1]) if mask is None else t[mask.bool()]
    elif pool in SEQUENCE_POOLS and t.ndim == 3:
        if pool in ("first", "last"):
            if mask is None:
                out = t[:, 0] if pool == "first" else t[:, -1]
            else:  # the first/last position with m_t = 1: padding on either side is skipped
                positions = torch.arange(1, t.shape[1] + 1, device=t.device)
                if pool == "first":
                    positions = positions.flip(0)
                pick = (mask.to(positions.dtype) * positions).argmax(dim=1)
                out = t[torch.arange(t.shape[0], device=t.device), pick]
        elif pool == "mask_max":
            out = t.amax(dim=1) if mask is None else t.masked_fill(~mask.bool().unsqueeze(-1), -torch.inf).amax(dim=1)
        elif mask is None:
            out = t.mean(dim=1)
        else:  # where, not a product: a padding row's NaN (a fully masked attention row) must not leak in
            real = mask.bool().unsqueeze(-1)
            out = torch.where(real, t, 0).sum(dim=1) / real.sum(dim=1).clamp_min(1).to(t.dtype)
    elif pool in SEQUENCE_POOLS:
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

    @deprecated_arguments(positional=("pool", "detach"))
    def __init__(self, model: nn.Module, layers: Iterable[str], *, pool: Pool = "mean", detach: bool = True) -> None:
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
        self.mask: Tensor | None = None  # the batch's attention mask, for the sequence pools and "tokens"

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
    def forward(self, model: nn.Module, x, output: bool = False) -> dict[str, Tensor]:
        """One forward pass of ``model`` (the hooked model, or a wrapper that runs it) on ``x``; returns
        the hooked features ({layer: (n, d)}, in ``layers`` order).

        A dict ``x`` is passed by keyword, and its ``attention_mask`` (if any) reaches the sequence
        pools. ``output=True`` adds the model's output, pooled like the layers, as ``OUTPUT_LAYER``
        (a ``logits`` entry of a dict output, else its first tensor; float32).
        """
        self._captured.clear()
        self.mask = x.get("attention_mask") if isinstance(x, Mapping) else None
        out = model(**x) if isinstance(x, Mapping) else model(x)
        feats = self.pop()
        if output:
            if isinstance(out, Mapping) and "logits" in out:
                out = out["logits"]
            feats[OUTPUT_LAYER] = pool_features(first_tensor(out).detach(), self.pool, self.mask).float()
        return feats


OUTPUT_LAYER = "<output>"  # layer name of the model's own output among the features (functional measures)


def forward_features(model: nn.Module, hooks: FeatureHooks, x, output: bool = False) -> dict[str, Tensor]:
    """``hooks.forward(model, x, output)`` (see :meth:`FeatureHooks.forward`), kept for existing callers."""
    return hooks.forward(model, x, output)


HIDDEN_STATES = "hidden_states"  # layers="hidden_states": read the model's output_hidden_states


class _Tap(nn.Module):
    """An identity module that a forward hook can capture a tensor through."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class HiddenStates(nn.Module):
    """``model`` called with ``output_hidden_states=True``; its hidden states pass through hookable taps.

    The taps are named ``hidden_states.0 .. hidden_states.L`` (embedding output, then each block, as
    the model reports them: Hugging Face models apply the final norm to the last one), so
    :class:`FeatureHooks`, ``compare`` and the pools treat them as layers. ``num_hidden_states``
    defaults to ``model.config.num_hidden_layers + 1`` (the transformers convention).
    """

    def __init__(self, model: nn.Module, num_hidden_states: int | None = None) -> None:
        super().__init__()
        if num_hidden_states is None:
            layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
            if not isinstance(layers, int):
                raise ValueError(
                    f"layers='hidden_states' needs a model with config.num_hidden_layers (a transformers model); "
                    f"{type(model).__name__} has none: name its modules instead (see repsim.list_layers(model))"
                )
            num_hidden_states = layers + 1
        self.model = model
        self.hidden_states = nn.ModuleList(_Tap() for _ in range(num_hidden_states))

    @property
    def layer_names(self) -> list[str]:
        return [f"{HIDDEN_STATES}.{i}" for i in range(len(self.hidden_states))]

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs, output_hidden_states=True)
        states = out.get("hidden_states") if isinstance(out, Mapping) else getattr(out, "hidden_states", None)
        if states is None or len(states) != len(self.hidden_states):
            got = "none" if states is None else len(states)
            raise ValueError(
                f"{type(self.model).__name__} returned {got} hidden states, expected {len(self.hidden_states)}; "
                "layers='hidden_states' needs a model that honours output_hidden_states=True"
            )
        for tap, h in zip(self.hidden_states, states, strict=True):
            tap(h)
        return out


def with_hidden_states(model: nn.Module, layers) -> tuple[nn.Module, list[str] | None]:
    """``(HiddenStates(model), its tap names)`` when ``layers == "hidden_states"``, else ``(model, layers)``."""
    if isinstance(layers, str) and layers == HIDDEN_STATES:
        wrapped = HiddenStates(model)
        return wrapped, wrapped.layer_names
    return model, layers
