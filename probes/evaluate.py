"""Run every probe on one layer of a model and return one tidy table."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import torch
from torch import Tensor, nn

from repsim.core.deprecation import deprecated_arguments
from repsim.networks.features import extract_features
from repsim.networks.hooks import Pool

from .knn import knn
from .linear import DEFAULT_L2, linear_probe
from .nccc import nccc


@deprecated_arguments(positional=("pool", "device", "max_samples", "progress", "memory"))
def extract(
    model: nn.Module,
    loader: Iterable,
    layer: str,
    *,
    pool: Pool = "mean",
    device=None,
    max_samples: int | None = None,
    progress: bool = True,
    memory: int | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Frozen features of one layer and the labels, through repsim's hooks (refused before they
    would exceed ``memory``, see :func:`repsim.extract_features`)."""
    feats, labels = extract_features(
        model, loader, layers=[layer], pool=pool, device=device, max_samples=max_samples, progress=progress,
        memory=memory,
    )
    if labels is None:
        raise ValueError("the loader yields no labels; probes need (x, y) batches or dicts with a 'label' key")
    return feats[layer], labels


@deprecated_arguments(positional=("shots", "episodes", "seed", "device", "k", "temperature", "l2_grid"))
def evaluate_features(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    shots=(1, 5),
    episodes: int = 100,
    seed: int = 0,
    device=None,
    k: int = 20,
    temperature: float = 0.07,
    l2_grid=DEFAULT_L2,
) -> pd.DataFrame:
    """All three probes on given features; tidy rows: probe, metric, value, ci_low, ci_high, setting.

    ``l2_grid``: the L2 strengths the linear probe cross-validates (see :func:`probes.linear_probe`)."""
    rows = []
    lin = linear_probe(train_x, train_y, test_x, test_y, l2_grid=l2_grid, seed=seed, device=device)
    rows.append({"probe": "linear", "metric": "top1", "value": lin.top1, "setting": f"l2={lin.l2:g}"})
    if lin.top5 is not None:
        rows.append({"probe": "linear", "metric": "top5", "value": lin.top5, "setting": f"l2={lin.l2:g}"})
    nn_res = knn(train_x, train_y, test_x, test_y, k=k, temperature=temperature, device=device)
    setting = f"k={nn_res.k},T={nn_res.temperature:g}"
    rows.append({"probe": "knn", "metric": "top1", "value": nn_res.top1, "setting": setting})
    if nn_res.top5 is not None:
        rows.append({"probe": "knn", "metric": "top5", "value": nn_res.top5, "setting": setting})
    few = nccc(train_x, train_y, test_x, test_y, shots=shots, episodes=episodes, seed=seed, device=device)
    for r in few.itertuples():
        rows.append(
            {
                "probe": "nccc",
                "metric": f"{r.shots}-shot",
                "value": r.accuracy,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "setting": f"episodes={r.episodes}",
            }
        )
    return pd.DataFrame(rows, columns=["probe", "metric", "value", "ci_low", "ci_high", "setting"])


@deprecated_arguments(positional=("pool", "device", "shots", "episodes", "seed", "progress", "memory"))
def evaluate(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    layer: str,
    *,
    pool: Pool = "mean",
    device=None,
    shots=(1, 5),
    episodes: int = 100,
    seed: int = 0,
    progress: bool = True,
    memory: int | str | None = None,
) -> pd.DataFrame:
    """Linear probe, kNN and NCCC few-shot accuracy of ``layer``'s frozen features, as one DataFrame.

    Memory: the train features, the test features and the probes' working copies (about twice the
    train features) must fit ``memory`` (bytes or "8GB"; default 60 % of the available RAM); each
    extraction is refused with the options (``pool="mean"``, a budget, ...) before it would not fit.

    Under ``torchrun`` the feature extraction is sharded (loaders with a ``DistributedSampler`` or
    :func:`repsim.core.distributed.shard`) and every rank gets all features in the global order (see
    :func:`repsim.extract_features`); the probes, cheap next to the forward passes, then run
    identically on every rank."""
    from repsim.core.budget import MemoryBudgetError, format_bytes, parse_memory

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    budget = parse_memory(memory)
    train_x, train_y = extract(
        model, train_loader, layer, pool=pool, device=device, progress=progress, memory=budget // 3
    )
    left = budget - 3 * train_x.numel() * train_x.element_size()  # the features and the probes' two working copies
    if left <= 0:
        raise MemoryBudgetError(
            f"the train features of {layer} ({tuple(train_x.shape)}) and the probes' working copies need about "
            f"{format_bytes(budget - left)}, over the budget of {format_bytes(budget)}; "
            "use pool='mean', fewer training samples or memory='...'"
        )
    test_x, test_y = extract(model, test_loader, layer, pool=pool, device=device, progress=progress, memory=left)
    table = evaluate_features(
        train_x, train_y, test_x, test_y, shots=shots, episodes=episodes, seed=seed, device=device
    )
    table.insert(0, "layer", layer)
    return table
