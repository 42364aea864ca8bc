"""``compare_many``: an N x N similarity matrix over many models or checkpoints.

Features are extracted once per model (optionally cached on disk as safetensors) and every pair
is computed from them in one grid call, so N models cost N forward passes, not N^2.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core import distributed as D
from ..measures.registry import get_measure, measure_grid
from ..networks.batches import split_batch, to_device, walk
from ..networks.checkpoints import load_model, save_state_dict
from ..networks.features import eval_mode, extract_features, resolve_device
from ..networks.hooks import FeatureHooks, Pool, forward_features


def _check_measure(measure: str) -> None:
    info = get_measure(measure)  # a ValueError listing the registry for unknown names
    if info.needs_outputs or info.needs_labels:
        raise ValueError(f"{measure} compares model outputs or needs labels; compare_many compares layer features")


def _extract_sharded(
    load: Callable[[], nn.Module],
    folder: Path | None,
    loader: Iterable,
    layer: str,
    pool,
    device,
    max_samples: int | None,
    shard: D.Shard,
    chunk_batches: int,
) -> tuple[Tensor, Tensor]:
    """This rank's (features, global order keys) of ``layer``; padding repeats dropped.

    With ``folder``, features are written every ``chunk_batches`` batches as
    ``folder/rank{r}of{w}/chunk{i}.safetensors`` (atomic); finished chunks are read back
    memory-mapped and their batches are not run again, so a killed extraction resumes from
    its last finished chunk.
    """
    part = None if folder is None else folder / f"rank{shard.rank}of{shard.world}"
    cache = _ChunkCache(part, chunk_batches)
    model = hooks = None
    feats: list[Tensor] = []
    keys: list[Tensor] = []
    with contextlib.ExitStack() as stack:
        for batch in walk(loader, shard, _inputs_only, max_samples):
            saved = cache.enter(batch.index)
            if saved is not None:  # a finished chunk: read back (memory-mapped), its batches not run again
                feats.append(saved["features"])
                keys.append(saved["keys"])
            if cache.done:
                continue
            if model is None:
                model = load()
                model.to(resolve_device(device, model))
                stack.enter_context(eval_mode(model))
                hooks = stack.enter_context(FeatureHooks(model, [layer], pool))
            with torch.inference_mode():
                x = to_device(batch.inputs, resolve_device(device, model))
                f = forward_features(model, hooks, x)[layer].cpu()
            feats.append(f)
            keys.append(batch.keys)
            cache.add(f, batch.keys)
        cache.close()
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat([f for f in feats if f.numel()]), torch.cat(keys)


def _inputs_only(batch) -> tuple[Tensor, None, None]:
    """walk's adapter: the batch's inputs, labels left out (compare_many compares features only)."""
    return split_batch(batch)[0], None, None


class _ChunkCache:
    """One rank's features in ``chunk_batches``-batch safetensors files (``folder/chunk{i}.safetensors``).

    Files are written atomically when a chunk is finished; a chunk whose file exists is read back
    instead of run, so a killed extraction resumes from its last finished chunk. ``folder`` None: no cache.
    """

    def __init__(self, folder: Path | None, chunk_batches: int) -> None:
        self.folder, self.chunk_batches = folder, chunk_batches
        self.current, self.done = -1, False
        self.features: list[Tensor] = []
        self.keys: list[Tensor] = []

    def enter(self, local_batch: int) -> dict[str, Tensor] | None:
        """Move to the chunk of ``local_batch``; a finished chunk's saved features when it starts one."""
        if local_batch // self.chunk_batches == self.current:
            return None
        self.close()
        self.current, self.features, self.keys = local_batch // self.chunk_batches, [], []
        path = None if self.folder is None else self.folder / f"chunk{self.current:06d}.safetensors"
        self.done = path is not None and path.exists()
        if not self.done:
            return None
        from safetensors.torch import load_file

        return load_file(str(path))

    def add(self, features: Tensor, keys: Tensor) -> None:
        self.features.append(features)
        self.keys.append(keys)

    def close(self) -> None:
        """Write the chunk just finished (unless it was read back from disk)."""
        if self.folder is not None and self.current >= 0 and not self.done:
            f = torch.cat(self.features) if self.features else torch.zeros(0, 0)
            k = torch.cat(self.keys) if self.keys else torch.zeros(0, dtype=torch.int64)
            save_state_dict({"features": f, "keys": k}, self.folder / f"chunk{self.current:06d}.safetensors")


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
    chunk_batches: int = 16,
    distributed: bool | None = None,
    memory: int | str | None = None,
    sketch: int | None = None,
    sketch_seed: int = 0,
    calibrate: int = 0,
) -> pd.DataFrame:
    """N x N matrix of ``measure`` between the ``layer`` features of many models.

    ``models_or_paths``: nn.Modules, or checkpoint paths loaded with ``arch`` (see
    :func:`repsim.load_model`). The loader must yield the samples in the same order every pass
    (no shuffling). ``max_samples`` caps the samples (all features of all models are held in
    memory). ``cache_dir``: features of checkpoint files are cached there, keyed by file, size,
    mtime, layer, pooling and sample count; under a process group the cache is one folder per
    rank (``rank{r}of{w}``) of ``chunk_batches``-batch safetensors chunks, written atomically and
    read memory-mapped; an extraction killed midway resumes from its last finished chunk.

    ``measure``: any registered feature measure (:func:`repsim.list_measures`), computed by
    :func:`repsim.measure_grid` on the features (per-model work done once).

    Memory: the features of all N models are held (N n d values). Once the first model's are
    extracted, that total and the measure's workspace are checked against ``memory`` (bytes or
    "8GB"; default 60 % of the available RAM) and a :class:`repsim.core.budget.MemoryBudgetError` with
    the options is raised before the other models run. ``sketch=k`` (an estimator, see
    :mod:`repsim.measures.sketch`) projects each model's features wider than k to k dims right
    after extraction (seeded by ``sketch_seed``, independent per model); linear CKA then corrects
    its denominators for the projection.

    Under ``torchrun`` (see :mod:`repsim.core.distributed`) each rank extracts its shard of the
    loader; the features are gathered in the global sample order, so the matrix equals a
    single-process run's.

    ``calibrate=B`` returns the calibrated matrix instead (:func:`repsim.calibrate` of every pair
    against its own permutation null, B permutations shared by all models, alpha = 0.05, seed 0):
    0 where a pair is not above chance; the raw matrix and the thresholds are in its
    ``attrs["observed"]`` and ``attrs["threshold"]``.
    """
    _check_measure(measure)
    if len(models_or_paths) < 2:
        raise ValueError("compare_many needs at least two models or checkpoints")
    if names is None:
        names = [Path(m).stem if isinstance(m, (str, Path)) else f"model_{i}" for i, m in enumerate(models_or_paths)]
    if len(names) != len(models_or_paths) or len(set(names)) != len(names):
        raise ValueError("names must be unique and as many as the models; pass names=[...] explicitly")
    shard = D.shard_of(loader, distributed)
    collect = _Collector(measure, len(models_or_paths), memory, sketch, sketch_seed, calibrate)
    if shard.world > 1 or cache_dir is not None:  # a cache_dir always takes the sharded, resumable path
        if max_samples is not None and shard.world > 1:
            raise ValueError(
                "max_samples is not supported under a process group; subset the dataset before sharding it"
            )
        extract = (loader, layer, pool, device, max_samples, shard, chunk_batches)
        for item in tqdm(models_or_paths, desc="models", disable=not progress or shard.rank != 0):
            collect.add(_sharded_features(item, arch, cache_dir, extract))
        return collect.frame(names)
    for item in tqdm(models_or_paths, desc="models", disable=not progress):  # one process, no cache
        feats, _ = extract_features(
            _model_of(item, arch)(), loader, [layer], pool, device, max_samples, progress=False, memory=memory
        )
        collect.add(feats[layer])
    return collect.frame(names)


def _model_of(item, arch) -> Callable[[], nn.Module]:
    """How to get one model: a module as it is, a checkpoint path loaded with ``arch`` when called."""
    if not isinstance(item, (str, Path)):
        return lambda: item
    if arch is None:
        raise ValueError("arch is needed to load checkpoint paths (e.g. arch='resnet18')")
    return lambda: load_model(Path(item), arch)


def _sharded_features(item, arch, cache_dir, extract: tuple) -> Tensor:
    """One model's features on every sample in the global order: each rank extracts its shard (cached
    in ``cache_dir`` for checkpoint files; modules are not cached: nothing identifies their weights on
    disk) and the shards are gathered."""
    loader, layer, pool, _, max_samples, shard, _ = extract
    folder = None
    if cache_dir is not None and isinstance(item, (str, Path)):
        path = Path(item)
        folder = Path(cache_dir) / f"{path.stem}-{_cache_key(path, layer, pool, max_samples, loader)}"
    f, k = _extract_sharded(_model_of(item, arch), folder, *extract)
    if shard.world == 1:
        return f
    keys, (f,) = D.in_global_order(k if k.numel() else None, [f])
    if keys is None:
        raise ValueError("the loader yielded no samples")
    return f


class _Collector:
    """The models' features as they come: sketched if asked, the memory plan checked after the first."""

    def __init__(self, measure: str, count: int, memory, sketch: int | None, sketch_seed: int, calibrate: int) -> None:
        from ..core.budget import parse_memory

        self.measure, self.count, self.calibrate = measure, count, calibrate
        self.budget = parse_memory(memory)
        if sketch is not None:
            from ..measures.sketch import projection

            projection(2, sketch)  # validates k
        self.sketch, self.seed = sketch, sketch_seed
        self.features: list[Tensor] = []
        self.projected: list[bool] = []

    def add(self, f: Tensor) -> None:
        if self.sketch is not None:
            from ..measures.sketch import LayerSketch

            sketcher = LayerSketch(self.sketch, self.seed, side=len(self.features))
            f = sketcher([f])[0]
            self.projected.append(sketcher.projected(0))
        if not self.features:
            self._check(f)
        self.features.append(f)

    def _check(self, f: Tensor) -> None:
        from ..core.budget import MemoryBudgetError, format_bytes
        from ..measures.blocked import workspace_limit
        from .plans import workspace_estimate

        n, d = f.shape
        held = self.count * n * d * f.element_size()
        self.workspace = int(min(2 * 2**30, max(64 * 2**20, self.budget // 4)))
        with workspace_limit(self.workspace):
            work = workspace_estimate(self.measure, n, [d] * self.count, None, self.workspace)
        if held + work > self.budget:
            raise MemoryBudgetError(
                f"the features of {self.count} models ({n} samples, d = {d}) need {format_bytes(held)} and "
                f"{self.measure} about {format_bytes(work)} more, but the memory budget is "
                f"{format_bytes(self.budget)}. Options: max_samples=..., pool='mean', sketch=k (a seeded random "
                "projection, an estimator), memory='...' (a larger budget), fewer models per call"
            )

    def frame(self, names) -> pd.DataFrame:
        from ..measures.blocked import workspace_limit

        def frame(values) -> pd.DataFrame:
            return pd.DataFrame(values, index=pd.Index(names, name="model_a"), columns=pd.Index(names, name="model_b"))

        with workspace_limit(getattr(self, "workspace", 512 * 2**20)):
            if self.sketch is not None and self.measure == "linear_cka":
                grid = _sketched_grid(self.features, self.sketch, self.projected).numpy()
            else:
                grid = measure_grid(self.measure, self.features).cpu().numpy()
            if not self.calibrate:
                return frame(grid)
            from ..inference.grid import calibrated_matrix

            calibrated, threshold = calibrated_matrix(self.measure, self.features, self.calibrate)
        out = frame(calibrated.numpy())
        out.attrs.update(observed=frame(grid), threshold=frame(threshold.numpy()))
        return out


def _sketched_grid(features: list[Tensor], k: int, projected: list[bool]) -> Tensor:
    """Projection-corrected linear CKA between every pair of sketched models (1 on the diagonal)."""
    from ..measures.moments import moments_of
    from ..measures.sketch import sketched_linear_cka

    count = len(features)
    grid = torch.eye(count, dtype=torch.float64)
    for i in range(count):
        for j in range(i + 1, count):
            m = moments_of(features[i], features[j])
            grid[i, j] = grid[j, i] = sketched_linear_cka(m, k, projected[i], projected[j]).cpu()
    return grid
