"""``compare_many``: an N x N similarity matrix over many models or checkpoints.

Features are extracted once per model (optionally cached on disk as safetensors) and every pair
is computed from them in one grid call, so N models cost N forward passes, not N^2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import load_model, save_state_dict
from .features import extract_features
from .hooks import Pool
from .measures.registry import get_measure, measure_grid, registered_names


def many_measures() -> list[str]:
    """The measures ``compare_many`` accepts: every registered measure of representations."""
    return [m for m in registered_names() if not get_measure(m).needs_outputs]


def _cache_key(path: Path, layer: str, pool, max_samples, loader) -> str:
    stat = path.stat()
    n = len(getattr(loader, "dataset", ())) if hasattr(loader, "dataset") else "?"
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{layer}|{pool}|{max_samples}|{n}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def compare_many(
    models_or_paths: Sequence[nn.Module | str | Path],
    loader: Iterable,
    layer: str,
    arch=None,
    measure: str = "linear_cka",
    names: Sequence[str] | None = None,
    pool: Pool = "mean",
    device=None,
    max_samples: int | None = 5000,
    cache_dir=None,
    progress: bool = True,
    measure_options: dict | None = None,
) -> pd.DataFrame:
    """N x N matrix of ``measure`` between the ``layer`` features of many models.

    ``models_or_paths``: nn.Modules, or checkpoint paths loaded with ``arch`` (see
    :func:`repsim.load_model`). The loader must yield the samples in the same order every pass
    (no shuffling). ``max_samples`` caps the samples (all features of all models are held in
    memory). ``measure`` is any registered measure of representations (:func:`repsim.list_measures`),
    with its options in ``measure_options``; the N x N matrix is one :func:`repsim.measure_grid`
    call, so per-model work is done once. ``cache_dir``: features of checkpoint files are cached
    there, keyed by file, size, mtime, layer, pooling and sample count.
    """
    if measure not in many_measures():
        raise ValueError(f"measure must be one of {many_measures()} (see repsim.list_measures()), got {measure!r}")
    if len(models_or_paths) < 2:
        raise ValueError("compare_many needs at least two models or checkpoints")
    if names is None:
        names = [Path(m).stem if isinstance(m, (str, Path)) else f"model_{i}" for i, m in enumerate(models_or_paths)]
    if len(names) != len(models_or_paths) or len(set(names)) != len(names):
        raise ValueError("names must be unique and as many as the models; pass names=[...] explicitly")
    features = []
    for item in tqdm(models_or_paths, desc="models", disable=not progress):
        cached = None
        if isinstance(item, (str, Path)):
            path = Path(item)
            if arch is None:
                raise ValueError("arch is needed to load checkpoint paths (e.g. arch='resnet18')")
            if cache_dir is not None:
                cached = (
                    Path(cache_dir) / f"{path.stem}-{_cache_key(path, layer, pool, max_samples, loader)}.safetensors"
                )
                if cached.exists():
                    from safetensors.torch import load_file

                    features.append(load_file(str(cached))["features"])
                    continue
            model = load_model(path, arch)
        else:
            model = item
        feats, _ = extract_features(
            model, loader, [layer], pool=pool, device=device, max_samples=max_samples, progress=False
        )
        features.append(feats[layer])
        if cached is not None:
            save_state_dict({"features": feats[layer]}, cached)
    grid = measure_grid(measure, features, **(measure_options or {})).cpu().numpy()
    return pd.DataFrame(grid, index=pd.Index(names, name="model_a"), columns=pd.Index(names, name="model_b"))
