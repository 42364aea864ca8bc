"""The blocked Gram-space grids make only the blocks on and above the diagonal (issue 32's speed-up): every
RDM kind, self and cross grids, float64 and float32 products, any block height, against float64 references
written from the definitions."""

import numpy as np
import pytest
import torch

import repsim
from repsim.measures.blocked import workspace_limit


def _rdm(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "euclidean":
        return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    if kind == "correlation":
        x = x - x.mean(1, keepdims=True)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return 1 - u @ u.T


def _rsa(x, y, kind):
    iu = np.triu_indices(x.shape[0], 1)
    return np.corrcoef(_rdm(x, kind)[iu], _rdm(y, kind)[iu])[0, 1]


def _cka(x, y):  # biased linear CKA, Kornblith et al. 2019
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("limit", [3 * 10**3, 10**5, 10**9])  # 1 row per block, a few, all rows at once
@pytest.mark.parametrize("kind", ["cosine", "correlation", "euclidean"])
def test_rsa_and_cka_grids_by_upper_blocks(limit, kind):
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(23, d, generator=g, dtype=torch.float64) + 2 for d in (30, 7)]
    ys = [torch.randn(23, d, generator=g, dtype=torch.float64).exp() for d in (12, 40, 5)]  # positive, as after a ReLU
    with workspace_limit(limit):
        cross = repsim.measure_grid(xs, ys, "rsa", rdm=kind)
        own = repsim.measure_grid(xs, measure="rsa", rdm=kind)
        cka = repsim.cka_grid(xs, ys, method="gram")
        cross32 = repsim.measure_grid([x.float() for x in xs], [y.float() for y in ys], "rsa", rdm=kind)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            expected = _rsa(x.numpy(), y.numpy(), kind)
            assert float(cross[i, j]) == pytest.approx(expected, abs=1e-12)
            assert float(cross32[i, j]) == pytest.approx(expected, abs=1e-5)
            assert float(cka[i, j]) == pytest.approx(_cka(x.numpy(), y.numpy()), abs=1e-12)
        for j, x2 in enumerate(xs):
            assert float(own[i, j]) == pytest.approx(_rsa(x.numpy(), x2.numpy(), kind), abs=1e-12)
