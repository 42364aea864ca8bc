"""``compare_many``: many models, all their layers, from stored features or extracted once.

A source is a :class:`repsim.FeatureSet`, a path to stored features (:func:`repsim.load_features`),
an ``nn.Module`` or a checkpoint path (run over ``loader``; with ``cache_dir`` its features are stored
as a FeatureSet keyed on content). The sources are joined on their sample ids, then every model pair
x every layer pair is computed by :mod:`repsim.pipeline.atlas`.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core import distributed as D
from ..core.budget import MemoryBudgetError, format_bytes, parse_memory
from ..core.deprecation import deprecated_arguments
from ..core.feature_files import load_features
from ..core.featureset import FeatureSet, common_rows, is_featureset, read_featureset, repsim_version
from ..core.validation import check_choice
from ..measures.knn import with_knn
from ..measures.registry import get_measure
from ..networks.batches import split_batch
from ..networks.checkpoints import load_model
from ..networks.features import extract_features, sample_ids_of
from ..networks.fingerprint import data_fingerprint, describe_data, file_hash, key_of, source_hash
from ..networks.hooks import Pool, default_layers
from .atlas import AtlasJob, ManyResult, check_manifest, manifest, plan_atlas, resident_layers, run_atlas

FEATURE_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".txt")
CACHE_MODES = ("verify", "strict")
INFERENCE_KEYS = ("calibrate", "aggregate", "alpha", "seed")
_LEGACY = ("layer", "arch", "measure", "names", "pool", "device", "max_samples", "cache_dir", "progress",
           "chunk_batches", "distributed", "memory", "sketch", "sketch_seed", "calibrate")  # fmt: skip


@deprecated_arguments(positional=_LEGACY)
def compare_many(
    sources: Sequence[FeatureSet | nn.Module | str | Path],
    loader: Iterable | None = None,
    *,
    layers: str | Sequence[str] | Mapping[str, Sequence[str]] = "all",
    measures: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    arch=None,
    pool: Pool = "mean",
    device=None,
    max_samples: int | None = None,
    dtype: torch.dtype | None = None,
    ids=None,
    cache_dir=None,
    cache: str = "verify",
    out=None,
    join: str = "exact",
    inference: Mapping | None = None,
    measure_options: Mapping[str, Mapping] | None = None,
    block_models: int | None = None,
    memory: int | str | None = None,
    sketch: int | None = None,
    sketch_seed: int = 0,
    distributed: bool | None = None,
    progress: bool = True,
    layer: str | None = None,
    measure: str | None = None,
    calibrate: int | None = None,
    chunk_batches: int | None = None,
    knn: str | None = None,
) -> ManyResult | pd.DataFrame:
    """Every model pair x every layer pair of many models: a :class:`repsim.pipeline.atlas.ManyResult`.

    Args:
        sources: FeatureSets, paths to stored features (repsim folders, .npy/.npz/.safetensors/HDF5/.pt
            files, thingsvision/Net2Brain/platonic-rep layouts; see :func:`repsim.load_features`),
            nn.Modules, or checkpoint paths (loaded with ``arch``, see :func:`repsim.load_model`).
        loader: the samples that modules and checkpoints run over (in the same order every pass).
        layers: ``"all"`` (every stored layer; for models :func:`repsim.default_layers`), a list of
            names every source has, or ``{name: [layers]}`` per source.
        measures: registered feature measures (default ``["linear_cka"]``), options in ``measure_options``;
            ``knn`` ("exact", "approx", "auto") sets the neighbour measures' kNN route (:func:`repsim.knn_lists`).
        names: the models' names (default: a FeatureSet's ``meta["model"]``, a path's stem, ``model_i``).
        ids: the loader's sample ids (a sequence or a function of the position; default 0 .. n-1).
            Sources are joined on ids: ``join="exact"`` (default) realigns rows stored in another order
            and refuses missing or duplicated ids with their counts; ``join="inner"`` keeps the common
            ids (warning how many were dropped).
        cache_dir: store the features of modules and checkpoints there (a FeatureSet folder each), keyed
            on the weights' content hash, arch, layers, pool, dtype, repsim's version and the data's
            description; reused only if the stored sample ids and data fingerprint (first and last batch,
            :mod:`repsim.networks.fingerprint`) match the loader's, else extracted again
            (``cache="verify"``) or refused (``cache="strict"``). A killed extraction resumes.
        out: a folder: each model pair's rows are written there as they finish (``blocks/``), the table
            at the end (``table.csv``); a killed run started again computes only the missing blocks.
        inference: ``{"calibrate": B, "aggregate": "max", "alpha": 0.05, "seed": 0}`` calibrates every
            cell and each model pair's aggregate against its own permutation null
            (:func:`repsim.calibrate_grid`, one permutation shared by all layers).
        block_models: models per group (default: the memory planner's, all when they fit); a group
            pair is one grid call per measure (:mod:`repsim.pipeline.atlas`).
        memory: the budget (bytes or "8GB"; default 60 % of the available RAM) for the resident features
            and the workspace; a MemoryBudgetError with the options otherwise.
        sketch: project layers wider than k to k dims (an estimator; linear CKA corrects for it).

    Under ``torchrun`` each rank extracts its shard of the loader and the model pairs are dealt to the
    ranks; every rank returns the table of one process.

    Deprecated (until 0.5): ``compare_many(models, loader, layer, measure=...)`` returns 0.3's N x N
    DataFrame (``calibrate=B``: the calibrated one, the raw one and the thresholds in ``attrs``).
    """
    _warn_old(layer=layer, measure=measure, calibrate=calibrate, chunk_batches=chunk_batches)
    legacy = layer is not None or measure is not None
    opts = dict(names=names, pool=pool, device=device, max_samples=max_samples, cache_dir=cache_dir,
                progress=progress, distributed=distributed, memory=memory, sketch=sketch, sketch_seed=sketch_seed)
    if legacy:
        return _legacy(sources, loader, layer, measure or "linear_cka", arch, calibrate, opts)
    if calibrate:
        inference = {**dict(inference or {}), "calibrate": calibrate}
    measures = measures or ["linear_cka"]
    return _atlas(sources, loader, layers, measures, arch, dtype, ids, cache, out, join, inference,
                  with_knn(measures, measure_options, knn), block_models, opts)[0]  # fmt: skip


def _warn_old(**given) -> None:
    """One DeprecationWarning when a 0.3 argument is used."""
    if any(v is not None for v in given.values()):
        warnings.warn("compare_many(layer=, measure=, calibrate=, chunk_batches=) are deprecated: use layers=[...], "
                      "measures=[...], inference={'calibrate': B}", DeprecationWarning, stacklevel=4)  # fmt: skip


def _atlas(sources, loader, layers, measures, arch, dtype, ids, cache, out, join, inference, measure_options,
           block_models, o) -> tuple[ManyResult, AtlasJob]:  # fmt: skip
    measures = _check_measures(measures)
    inference = _check_inference(inference)
    check_choice(cache, "cache", CACHE_MODES)
    if not isinstance(sources, Sequence) or isinstance(sources, (str, bytes)) or len(sources) < 2:
        raise ValueError("compare_many needs a list of at least two sources (feature sets, files, models)")
    budget = parse_memory(o["memory"])
    sets, names, contents = _resolve(sources, loader, layers, arch, dtype, ids, cache, {**o, "hash_files": bool(out)},
                                     budget)  # fmt: skip
    chosen = _chosen_layers(sets, names, layers)
    rows, common = common_rows(sets, join, names)
    job = AtlasJob(sets, rows, names, chosen, measures, dict(measure_options or {}), len(common), inference,
                   o["sketch"], o["sketch_seed"])  # fmt: skip
    workspace = int(min(2 * 2**30, max(64 * 2**20, budget // 4)))
    plan = plan_atlas(sets, chosen, len(common), measures, budget, workspace, block_models, D.rank_and_world()[1])
    folder = None if out is None else Path(out)
    if folder is not None:
        check_manifest(folder, manifest(job, contents))
    table = run_atlas(job, plan, folder, workspace, o["progress"])
    result = ManyResult(table, names, dict(zip(names, chosen, strict=True)), measures, folder,
                        inference.get("aggregate", "max") if inference.get("calibrate") else None,
                        {m: get_measure(m).symmetric for m in measures})  # fmt: skip
    if folder is not None and D.rank_and_world()[0] == 0:
        from ..core.io import atomic_write_text

        atomic_write_text(folder / "table.csv", table.to_csv(index=False))
    return result, job


def _check_measures(measures) -> list[str]:
    if isinstance(measures, str):
        measures = [measures]
    for m in measures:
        info = get_measure(m)  # a ValueError listing the registry for unknown names
        if info.needs_outputs or info.needs_labels:
            raise ValueError(f"{m} compares model outputs or needs labels; compare_many compares layer features")
    return list(measures)


def _check_inference(inference) -> dict:
    inference = dict(inference or {})
    unknown = sorted(set(inference) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(f"inference takes the keys {INFERENCE_KEYS}; got {unknown}")
    b = inference.get("calibrate", 0)
    if b and not (isinstance(b, int) and b >= 1):
        raise ValueError(f"inference['calibrate'] must be a positive number of permutations, got {b!r}")
    how = inference.get("aggregate", "max")
    if not callable(how):
        check_choice(how, "inference['aggregate']", ("max", "diagonal", "best_match", "mean"))
    return inference


def _chosen_layers(sets: list[FeatureSet], names: list[str], layers) -> list[list[str]]:
    out = []
    for s, nm in zip(sets, names, strict=True):
        if isinstance(layers, Mapping):
            want = list(layers.get(nm, s.layers))
        elif layers is None or (isinstance(layers, str) and layers == "all"):
            want = s.layers
        else:
            want = [layers] if isinstance(layers, str) else list(layers)
        missing = [k for k in want if k not in s]
        if missing:
            raise ValueError(f"source {nm!r} has no layer(s) {missing}; its layers are {s.layers}")
        out.append(want)
    return out


# -------------------------------------------------------------------------------- sources
def _is_feature_path(item, loader, arch) -> bool:
    p = Path(item)
    return p.is_dir() or p.suffix.lower() in FEATURE_SUFFIXES or loader is None or arch is None


def _resolve(sources, loader, layers, arch, dtype, ids, cache, o, budget):
    """Every source as a FeatureSet (models extracted), their names, and each one's content key."""
    given = o["names"]
    if given is not None and len(given) != len(sources):
        raise ValueError(f"names has {len(given)} entries for {len(sources)} sources; give one name each")
    sets, names, contents = [], [], []
    bar = tqdm(sources, desc="sources", disable=not o["progress"] or D.rank_and_world()[0] != 0)
    for i, item in enumerate(bar):
        name = given[i] if given is not None else None
        if isinstance(item, FeatureSet):
            fs, content = item, item.meta.get("fingerprint", f"in-memory:{i}")
        elif isinstance(item, (str, Path)) and _is_feature_path(item, loader, arch):
            fs = load_features(item)
            content = fs.meta.get("fingerprint") or str(item)
            if o["hash_files"] and Path(item).is_file():  # what an out= folder's blocks were computed from
                content = file_hash(item)
        else:
            fs = _model_features(item, name or _default_name(item, i), loader, layers, arch, dtype, ids, cache, o)
            content = fs.meta.get("fingerprint", f"model:{i}")
            if not sets and o["cache_dir"] is None:
                _check_resident(fs, len(sources), budget)
        sets.append(fs)
        names.append(name or (fs.meta.get("model") if isinstance(item, FeatureSet) else None) or _default_name(item, i))
        contents.append(content)
    if len(set(names)) != len(names):
        raise ValueError(f"the sources' names must be unique, got {names}; pass names=[...]")
    return sets, names, contents


def _default_name(item, i: int) -> str:
    return Path(item).stem if isinstance(item, (str, Path)) else f"model_{i}"


def _check_resident(first: FeatureSet, count: int, budget: int) -> None:
    """Models extracted without a cache are held in memory: refuse before the others run when all won't fit."""
    need = count * first.nbytes()
    if need > budget:
        raise MemoryBudgetError(
            f"the features of {count} models ({first.n} samples, {first.dims}) need {format_bytes(need)} but the "
            f"memory budget is {format_bytes(budget)}. Options: cache_dir=... (features stored on disk and read "
            "a group at a time), max_samples=..., pool='mean', sketch=k, memory='...', fewer layers or models"
        )


def _inputs_only(batch) -> tuple[Tensor, None, None]:
    return split_batch(batch)[0], None, None


def _model_features(item, name, loader, layers, arch, dtype, ids, cache, o) -> FeatureSet:
    """One model's features over ``loader``: extracted, or read back from a content-keyed cache."""
    if loader is None:
        raise ValueError("models and checkpoints need a loader: compare_many(sources, loader, ...)")
    load = _model_of(item, arch)
    model = load()
    chosen = _model_layers(model, name, layers)
    shard = D.shard_of(loader, o["distributed"])
    if shard.world > 1 and o["max_samples"] is not None:
        raise ValueError("max_samples is not supported under a process group; subset the dataset before sharding it")
    common = dict(layers=chosen, pool=o["pool"], device=o["device"], max_samples=o["max_samples"], dtype=dtype,
                  progress=False, distributed=o["distributed"], ids=ids, name=name)  # fmt: skip
    if o["cache_dir"] is None:
        plain = {k: v for k, v in common.items() if k not in ("ids", "name")}
        feats, labels = extract_features(model, loader, memory=o["memory"], **plain)
        sample_ids = sample_ids_of(loader, ids, shard, o["max_samples"])
        return FeatureSet(feats, ids=sample_ids, meta={"model": name}, labels=labels)
    pool = o["pool"] if isinstance(o["pool"], str) else getattr(o["pool"], "__qualname__", repr(o["pool"]))
    key = key_of(source_hash(item), _arch_name(arch, model), chosen, pool, str(dtype), repsim_version(),
                 describe_data(loader), o["max_samples"])  # fmt: skip
    folder = Path(o["cache_dir"]) / f"{name}-{key}"
    if is_featureset(folder):
        stored = read_featureset(folder)
        why = _stale(stored, loader, ids, shard, o["max_samples"])
        if why is None:
            return stored
        if cache == "strict":
            raise ValueError(f"the cached features in {folder} are for other data ({why}); delete them or use "
                             "cache='verify' to extract again")  # fmt: skip
        if shard.rank == 0:
            shutil.rmtree(folder)
        if shard.world > 1:
            D.gather(None)  # every rank waits for the stale folder to be gone
    feats, labels = extract_features(model, loader, out=folder, memory=o["memory"],
                                     meta={"arch": _arch_name(arch, model), "source_sha256": source_hash(item)},
                                     **common)  # fmt: skip
    if shard.world > 1:
        D.gather(None)  # rank 0 has written the folder
    if shard.world == 1:
        return read_featureset(folder)
    return FeatureSet(feats, ids=read_featureset(folder).ids, meta={"model": name}, labels=labels)


def _stale(stored: FeatureSet, loader, ids, shard, max_samples) -> str | None:
    """Why stored features do not belong to this loader's data (None: they do)."""
    current = sample_ids_of(loader, ids, shard, max_samples)
    if stored.ids != current:
        return f"{len(stored.ids)} stored sample ids, {len(current)} now, not the same"
    if stored.meta.get("data_fingerprint") != data_fingerprint(loader, current, _inputs_only, shard, max_samples):
        return "the data fingerprint (first and last batch, dataset and transform) differs"
    return None


def _arch_name(arch, model: nn.Module) -> str:
    if arch is None:
        return type(model).__qualname__
    return arch if isinstance(arch, str) else f"{getattr(arch, '__module__', '')}.{getattr(arch, '__qualname__', arch)}"


def _model_layers(model: nn.Module, name: str, layers) -> list[str]:
    if isinstance(layers, Mapping):
        layers = layers.get(name, "all")
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return default_layers(model)
    return [layers] if isinstance(layers, str) else list(layers)


def _model_of(item, arch) -> Callable[[], nn.Module]:
    """How to get one model: a module as it is, a checkpoint path loaded with ``arch`` when called."""
    if not isinstance(item, (str, Path)):
        if not isinstance(item, nn.Module):
            raise ValueError(f"a source must be a FeatureSet, a path or an nn.Module; got {type(item).__name__}")
        return lambda: item
    if arch is None:
        raise ValueError("arch is needed to load checkpoint paths (e.g. arch='resnet18')")
    return lambda: load_model(Path(item), arch)


# -------------------------------------------------------------------------------- the old call
def _legacy(sources, loader, layer, measure, arch, calibrate, o) -> pd.DataFrame:
    """The 0.3 call: one layer, one measure, the N x N DataFrame (calibrated with ``calibrate=B``)."""
    result, job = _atlas(sources, loader, [layer], [measure], arch, None, None, "verify", None, "exact", None, None,
                         None, o)  # fmt: skip
    frame = result.matrix(measure, "max")
    if not calibrate:
        return frame
    from ..inference.grid import calibrated_matrix

    feats = [resident_layers(job, i)[0] for i in range(len(job.sets))]
    cal, threshold = calibrated_matrix(measure, feats, calibrate)
    names = result.models

    def as_frame(values) -> pd.DataFrame:
        return pd.DataFrame(values, index=pd.Index(names, name="model_a"), columns=pd.Index(names, name="model_b"))

    out = as_frame(cal.numpy())
    out.attrs.update(observed=frame, threshold=as_frame(threshold.numpy()))
    return out


def sketched_grid(features: list[Tensor], k: int, projected: list[bool], corrected) -> Tensor:
    """A measure's projection-corrected form (``MeasureInfo.sketch_corrected``) between every pair of
    sketched layers (1 on the diagonal)."""
    from ..measures.moments import moments_of

    count = len(features)
    grid = torch.eye(count, dtype=torch.float64)
    for i in range(count):
        for j in range(i + 1, count):
            m = moments_of(features[i], features[j])
            grid[i, j] = grid[j, i] = corrected(m, k, projected[i], projected[j]).cpu()
    return grid
