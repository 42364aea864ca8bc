"""Adapters that call each peer package on feature matrices, as its documentation shows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def peer_repsim():
    """The PyPI 'repsim' (C++/Eigen), loaded as 'peer_repsim' so it cannot shadow ours."""
    if "peer_repsim" in sys.modules:
        return sys.modules["peer_repsim"]
    folder = ROOT / ".benchvenv" / "peer_repsim" / "repsim"
    spec = importlib.util.spec_from_file_location(
        "peer_repsim", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["peer_repsim"] = module
    spec.loader.exec_module(module)
    return module


# Each returns an (L, M) numpy array for lists xs, ys (a single pair is L = M = 1).
def ckatorch_grid(xs, ys, debiased=False):
    from ckatorch.core import cka_base

    return np.array([[cka_base(x, y, unbiased=debiased).item() for y in ys] for x in xs])


def pytorch_cka_grid(xs, ys, debiased=True):
    from cka.cka import cka_from_features  # unbiased HSIC in all three places, clamped to [0, 1]

    return cka_from_features(list(xs), list(ys)).numpy()


def torch_cka_grid(xs, ys, debiased=True):
    from torch_cka.cka import CKA  # its _HSIC is Song's unbiased estimator with an O(n^3) trace(K @ L)

    hsic = CKA._HSIC.__get__(type("Self", (), {"device": "cpu"})())
    out = np.zeros((len(xs), len(ys)))
    for i, x in enumerate(xs):
        k = x @ x.T
        kk = hsic(k, k)
        for j, y in enumerate(ys):
            l = y @ y.T
            out[i, j] = hsic(k, l) / np.sqrt(kk * hsic(l, l))
    return out


def peer_repsim_grid(xs, ys, debiased=False):
    mod = peer_repsim()
    mats = [x.double().numpy() for x in xs] + [y.double().numpy() for y in ys]
    full = mod.cka(mats, "linear", "song" if debiased else "gretton")  # its API: all pairs of one list
    return full[: len(xs), len(xs) :]


def resi_cka_grid(xs, ys):
    """ReSi's centered_kernel_alignment per pair (feature space when n >= d, the inputs' dtype).

    ReSi's package is also named ``repsim``: the caller must have put ReSi's tree first on sys.path
    in a process where our repsim was never imported (benchmarks/measures.py runs it that way).
    """
    from repsim.measures.cka import centered_kernel_alignment

    return np.array([[centered_kernel_alignment(x, y, shape="nd") for y in ys] for x in xs])


def anatome_cka_grid(xs, ys, debiased=False):
    """anatome's linear_cka_distance per pair (1 - CKA, feature space, torch, the inputs' dtype)."""
    # importing repsim first makes torchvision (which anatome imports) loadable beside CPU torch
    import repsim  # noqa: F401

    # isort: split
    from anatome.distance import linear_cka_distance

    return np.array([[1.0 - linear_cka_distance(x, y, reduce_bias=debiased).item() for y in ys] for x in xs])


def netrep_cka_grid(xs, ys):
    """netrep's LinearCKA per pair: arccos(CKA) on n x n sample Gram matrices (numpy); cos() gives CKA back."""
    from netrep.metrics import LinearCKA

    metric = LinearCKA(center_columns=True)
    return np.array([[np.cos(metric.score(x.numpy(), y.numpy())) for y in ys] for x in xs])


def rsatoolbox_rsa(x, y):
    """Pearson correlation of (1 - Pearson r) RDMs, rsatoolbox's 'correlation' RDM and 'corr' comparison."""
    import rsatoolbox

    rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(t.double().numpy()), method="correlation") for t in (x, y)]
    return float(rsatoolbox.rdm.compare(rdms[0], rdms[1], method="corr")[0, 0])


def torch_float(t) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
