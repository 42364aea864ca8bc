"""A network against brain RDMs: each layer's RDM over the stimuli against subject RDMs, with the noise ceiling.

``compare_brain(model, loader, rdms, layers=...)`` extracts each layer's features over the stimuli
(:func:`repsim.extract_features`, in the loader's order, which must be the order of the RDMs'
conditions), builds one RDM per layer (:func:`repsim.rdm`, 1 - Pearson r by default) and evaluates
them as fixed models with :func:`repsim.evaluate_rdm_models`: one row per layer with the raw score,
its interval and the ceiling band.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..inference.rdm_models import evaluate_rdm_models
from ..measures.rsa import rdm as layer_rdm
from ..networks.features import extract_features

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def compare_brain(
    model,
    loader,
    rdms,
    *,
    layers=None,
    method: str = "spearman",
    rdm_method: str = "correlation",
    bootstrap: str | None = None,
    n_resamples: int = 1000,
    pool: str = "mean",
    device=None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Each layer of ``model`` against subject RDMs ``rdms`` (S, n, n) or (S, M) over the n stimuli of ``loader``.

    Returns the :func:`repsim.evaluate_rdm_models` table with a ``layer`` column (in ``layers``
    order) and ``depth`` (0, 1, ...): ``mean, sem, ci_low, ci_high, p_zero, p_ceiling,
    ceiling_lower, ceiling_upper, ...``; its ``attrs["rdms"]`` holds the layer RDMs (condensed).
    """
    feats, _ = extract_features(model, loader, layers=layers, pool=pool, device=device, progress=progress)
    names = list(feats)
    from ..measures.rdms import condensed_checked, n_conditions

    data = condensed_checked(rdms, "rdms")
    n = n_conditions(data.shape[-1])
    first = feats[names[0]]
    if first.shape[0] != n:
        got = first.shape[0]
        raise ValueError(f"the loader gave {got} stimuli but the RDMs have {n} conditions: use the same stimuli")
    iu = torch.triu_indices(n, n, 1)
    model_rdms = {nm: layer_rdm(feats[nm].to(torch.float64), method=rdm_method)[iu[0], iu[1]] for nm in names}
    table = evaluate_rdm_models(model_rdms, data, method=method, bootstrap=bootstrap, n_resamples=n_resamples,
                                seed=seed, progress=progress).table  # fmt: skip
    table = table.rename(columns={"model": "layer"})
    table.insert(1, "depth", np.arange(len(names)))
    table.attrs["rdms"] = model_rdms
    return table


def image_folder_loader(folder, *, image_size: int = 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                        batch_size: int = 32):  # fmt: skip
    """A loader of the images in ``folder`` in sorted file-name order (the order of the RDMs' conditions):
    resized to ``image_size``, RGB, normalised by ``mean``/``std``; yields (images, index)."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)

    def load(p):
        img = Image.open(p).convert("RGB").resize((image_size, image_size), Image.BICUBIC)
        return (torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255 - m) / s

    images = torch.stack([load(p) for p in paths])
    idx = torch.arange(len(paths))
    return [(images[i : i + batch_size], idx[i : i + batch_size]) for i in range(0, len(paths), batch_size)]


def load_rdm_file(path) -> np.ndarray:
    """Subject RDMs from ``.npy`` ((S, n, n) or (S, M)) or ``.npz`` (the array ``rdms``, else the first one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no RDM file at {path}")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z["rdms"] if "rdms" in z.files else z[z.files[0]]
    raise ValueError(f"{path}: RDMs must be a .npy or .npz file holding (subjects, n, n) or (subjects, M)")
