"""``compare_many``: an N x N similarity matrix over many models or checkpoints.

Features are extracted once per model (optionally cached on disk as safetensors) and every pair
is computed from them in one grid call, so N models cost N forward passes, not N^2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoints import load_model, save_state_dict
from .features import extract_features
from .hooks import Pool
from .measures.cka import cka_grid
from .measures.rsa import rsa_grid

MANY_MEASURES: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "linear_cka": lambda xs: cka_grid(xs),
    "debiased_cka": lambda xs: cka_grid(xs, debiased=True),
    "rsa": lambda xs: rsa_grid(xs),
}


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
) -> pd.DataFrame:
    """N x N matrix of ``measure`` between the ``layer`` features of many models.

    ``models_or_paths``: nn.Modules, or checkpoint paths loaded with ``arch`` (see
    :func:`repsim.load_model`). The loader must yield the samples in the same order every pass
    (no shuffling). ``max_samples`` caps the samples (all features of all models are held in
    memory). ``cache_dir``: features of checkpoint files are cached there, keyed by file, size,
    mtime, layer, pooling and sample count.
    """
    if measure not in MANY_MEASURES:
        raise ValueError(f"measure must be one of {list(MANY_MEASURES)}, got {measure!r}")
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
    grid = MANY_MEASURES[measure](features).cpu().numpy()
    return pd.DataFrame(grid, index=pd.Index(names, name="model_a"), columns=pd.Index(names, name="model_b"))
