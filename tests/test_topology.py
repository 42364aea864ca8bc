"""RTD and IMD: identities, monotonicity in the perturbation, IMD against a numpy reference from the paper."""

import numpy as np
import pytest
import torch

import repsim

pytest.importorskip("ripser")


def _cloud(seed, n=50, d=5):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_rtd_zero_on_identical_and_grows_with_noise():
    x = _cloud(0)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
    assert float(repsim.rtd(x, x)) == 0.0
    values = [float(repsim.rtd(x, x + s * noise)) for s in (0.05, 0.3, 1.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_rtd_circle_against_a_filled_disc():
    # a circle has one long H1 cycle; a copy whose distances only shrink inside keeps it: x's loop is
    # killed in min(D_x, D_y) earlier when y collapses the circle, so RTD(x, collapsed) > 0.
    t = torch.linspace(0, 2 * np.pi, 41, dtype=torch.float64)[:-1]
    circle = torch.stack([t.cos(), t.sin()], 1)
    line = torch.stack([t, torch.zeros_like(t)], 1)
    assert float(repsim.rtd(circle, line)) > float(repsim.rtd(circle, 1.01 * circle + 0.001))


def test_rtd_subsets_are_seeded():
    x = _cloud(2, n=40)
    y = x + 0.3 * _cloud(3, n=40)
    a = repsim.rtd(x, y, subset_size=20, n_repeats=3, seed=5)
    assert float(a) == float(repsim.rtd(x, y, subset_size=20, n_repeats=3, seed=5))
    assert float(a) != float(repsim.rtd(x, y, subset_size=20, n_repeats=3, seed=6))


def _imd_reference(x, k=5):
    ts = np.logspace(-1, 1, 256)
    x = np.asarray(x, np.float64)
    n = len(x)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    a = np.zeros((n, n))
    for i in range(n):
        a[i, np.argsort(d[i])[:k]] = 1
    a = np.maximum(a, a.T)
    deg = a.sum(1)
    lap = np.eye(n) - a / np.sqrt(np.outer(deg, deg))
    lam = np.linalg.eigvalsh(lap)
    return np.array([np.exp(-t * lam).sum() / n for t in ts])


def test_imd_matches_reference_and_identity():
    x, y = _cloud(4), _cloud(5, d=3)
    ts = np.logspace(-1, 1, 256)
    want = np.max(np.exp(-2 * (ts + 1 / ts)) * np.abs(_imd_reference(x) - _imd_reference(y)))
    assert abs(float(repsim.imd(x, y)) - want) < 1e-12
    assert float(repsim.imd(x, 3 * x + 1)) == 0.0


def test_bad_options():
    x = _cloud(6, n=10)
    with pytest.raises(ValueError, match="k must be an integer"):
        repsim.imd(x, x, k=10)
    with pytest.raises(ValueError, match="exceeds max_exact_samples"):
        repsim.imd(x, x, max_exact_samples=5)
    with pytest.raises(ValueError, match="n_repeats must be"):
        repsim.rtd(x, x, n_repeats=0)
