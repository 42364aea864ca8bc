"""Geometry Score: RLTs on hand-made diagrams, the whole pipeline against a numpy reference, loops
on one circle against two circles, seeding, grids, and every refusal."""

import sys

import numpy as np
import pytest
import torch

import repsim
from repsim.measures.topology import _landmark_sets, _mean_rlt, _relative_living_times

from . import reference_geometry_score as ref

pytest.importorskip("gudhi")

INF = float("inf")


def _circles(seed, n, centres, noise=0.02):
    """n noisy points spread over unit circles at ``centres`` (every len(centres)-th point on each)."""
    g = torch.Generator().manual_seed(seed)
    t = 2 * np.pi * torch.rand(n, generator=g, dtype=torch.float64)
    c = torch.tensor(centres, dtype=torch.float64)[torch.arange(n) % len(centres)]
    return torch.stack([t.cos(), t.sin()], 1) + c + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _cloud(seed, n=80, d=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- relative living times
def test_rlt_of_a_hand_made_diagram():
    # beta_1 on [0, 8): 1 on [0, 1), 2 on [1, 2), 1 on [2, 3), 0 on [3, 5), 1 on [5, 8) (the infinite bar)
    intervals = np.array([[0.0, 2.0], [1.0, 3.0], [5.0, INF]])
    want = np.array([2, 5, 1, 0]) / 8
    assert np.array_equal(_relative_living_times(intervals, 8.0, 4), want)
    assert np.allclose(ref.rlt(intervals, 8.0, 4), want, rtol=0, atol=1e-15)
    # counts >= i_max are not recorded: the 1/8 spent at two holes disappears
    assert np.array_equal(_relative_living_times(intervals, 8.0, 2), want[:2])
    # a bar that outlives alpha_max is cut there: [6, 10) with alpha_max = 8 lives 2/8
    assert np.array_equal(_relative_living_times(np.array([[6.0, 10.0]]), 8.0, 3), np.array([6, 2, 0]) / 8)


def test_rlt_without_holes_is_all_zero_holes():
    for empty in (np.zeros((0, 2)), np.array([])):
        assert np.array_equal(_relative_living_times(empty, 0.5, 3), [1.0, 0.0, 0.0])
    assert np.array_equal(ref.rlt([], 0.5, 3), [1.0, 0.0, 0.0])


def test_rlt_matches_the_reference_on_random_diagrams():
    rng = np.random.default_rng(0)
    for trial in range(30):
        m = rng.integers(1, 25)
        births = rng.uniform(0, 1, m)
        deaths = births + rng.exponential(0.3, m)
        deaths[rng.random(m) < 0.2] = INF
        if trial % 3 == 0:  # shared ends (ties) and bars that start at 0
            births[: m // 2] = np.round(births[: m // 2], 1)
            deaths[: m // 3] = births[: m // 3] + 0.2
            births[0] = 0.0
        intervals = np.stack([births, deaths], 1)
        alpha_max, i_max = rng.uniform(0.5, 1.5), int(rng.integers(2, 30))
        got = _relative_living_times(intervals, alpha_max, i_max)
        assert np.allclose(got, ref.rlt(intervals, alpha_max, i_max), rtol=0, atol=1e-12), trial
        assert got.sum() <= 1 + 1e-12


# ----------------------------------------------------------------------------- the whole measure
def test_geometry_score_matches_the_reference_pipeline():
    x = _circles(0, 120, [[0, 0]], noise=0.05)
    y = torch.cat([x[:, :1], _cloud(1, n=120, d=1)], 1)  # a different shape of the same samples
    opts = {"n_landmarks": 16, "gamma": 1 / 16, "i_max": 10, "n_repeats": 6, "seed": 3}
    want, mrlt_x, _ = ref.geometry_score(x.numpy(), y.numpy(), **opts)
    assert mrlt_x[0] < 0.9 and mrlt_x[1:].sum() > 0.1  # holes were found, so the comparison says something
    got = repsim.geometry_score(x, y, **opts)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert abs(float(got) - want) <= 1e-10 * max(1.0, want) and want > 0.05
    # the same through the registry, and the MRLT itself
    assert float(repsim.measure(x, y, "geometry_score", **opts)) == float(got)
    landmarks = _landmark_sets(120, 16, 6, 3)
    assert np.allclose(_mean_rlt(x, landmarks, 1 / 16, 10), mrlt_x, rtol=0, atol=1e-12)


def test_one_circle_against_two_circles():
    """One loop vs two loops: the MRLTs peak at 1 and 2 holes; two samples of one circle agree."""
    n, opts = 400, {"n_landmarks": 32, "gamma": 1 / 32, "n_repeats": 20}
    one, one_again = _circles(0, n, [[0, 0]]), _circles(1, n, [[0, 0]])
    two = _circles(2, n, [[0, 0], [3, 0]])
    landmarks = _landmark_sets(n, 32, 20, 0)
    mrlt_one, mrlt_two = (_mean_rlt(c, landmarks, 1 / 32, 100) for c in (one, two))
    assert np.argmax(mrlt_one) == 1 and mrlt_one[1] > 0.6
    assert np.argmax(mrlt_two) == 2 and mrlt_two[2] > 0.6
    apart = float(repsim.geometry_score(one, two, **opts))
    same = float(repsim.geometry_score(one, one_again, **opts))
    assert apart > 0.5 and same < 0.05 and same < apart / 20


def test_seeded_deterministic_symmetric_and_zero_on_itself():
    x = _cloud(4)
    y = torch.tanh(x @ _cloud(5, n=3, d=4)) + 0.3 * _cloud(6, d=4)
    opts = {"n_landmarks": 12, "n_repeats": 8}
    a = repsim.geometry_score(x, y, seed=5, **opts)
    assert float(a) == float(repsim.geometry_score(x, y, seed=5, **opts))  # bit for bit
    assert float(a) == float(repsim.geometry_score(y, x, seed=5, **opts))
    assert float(a) != float(repsim.geometry_score(x, y, seed=6, **opts))
    assert float(repsim.geometry_score(x, x, seed=5, **opts)) == 0.0


def test_grid_computes_each_layer_once_and_equals_pairs():
    xs = [_cloud(7), _cloud(8, d=5)]
    ys = [_cloud(9, d=2), xs[0]]
    opts = {"n_landmarks": 12, "n_repeats": 5, "gamma": 1 / 16}
    grid = repsim.measure_grid(xs, ys, "geometry_score", **opts)
    assert grid.shape == (2, 2) and grid.dtype == torch.float64
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            assert abs(float(grid[i, j]) - float(repsim.geometry_score(a, b, **opts))) < 1e-14
    assert float(grid[0, 1]) == 0.0
    square = repsim.measure_grid(xs, None, "geometry_score", **opts)
    assert torch.equal(square, square.T) and float(square.diagonal().abs().max()) == 0.0


def test_the_default_runs_below_64_samples():
    # n_landmarks=None: min(64, n) landmarks, so n = 30 samples are all landmarks (every draw the same set)
    x, y = _circles(20, 30, ((0.0, 0.0),)), _cloud(21, n=30, d=2)
    opts = {"n_repeats": 3, "i_max": 10}
    got = repsim.geometry_score(x, y, **opts)
    assert got.dtype == torch.float64 and np.isfinite(got.item()) and got.item() >= 0
    assert got.item() == repsim.geometry_score(x, y, n_landmarks=30, **opts).item()
    assert repsim.geometry_score(x, y, n_repeats=1, i_max=10).item() == got.item()  # the repeats agree
    assert repsim.geometry_score(x, x, **opts).item() == 0.0
    assert repsim.measure_grid([x, y], None, "geometry_score", **opts)[0, 1].item() == got.item()


# ----------------------------------------------------------------------------- refusals
def test_bad_inputs_and_options_are_refused():
    x = _cloud(10, n=20)
    bad = x.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        repsim.geometry_score(bad, x, n_landmarks=8)
    with pytest.raises(ValueError, match="samples"):
        repsim.geometry_score(x, x[:-1], n_landmarks=8)
    with pytest.raises(ValueError, match="constant"):
        repsim.geometry_score(torch.ones(20, 3, dtype=torch.float64), x, n_landmarks=8)
    with pytest.raises(ValueError, match=r"n_landmarks = 64 landmarks .* only 20 samples"):
        repsim.geometry_score(x, x, n_landmarks=64)
    with pytest.raises(ValueError, match=r"n_landmarks = 21 landmarks .* only 20 samples"):
        repsim.measure_grid([x], [x], "geometry_score", n_landmarks=21)
    for option, value in (("n_landmarks", 2), ("n_landmarks", 8.0), ("i_max", 0), ("n_repeats", 0)):
        with pytest.raises(ValueError, match=f"{option} must be an integer"):
            repsim.geometry_score(x, x, **{"n_landmarks": 8, option: value})
    for gamma in (0.0, -1.0, INF, "big"):
        with pytest.raises(ValueError, match="gamma must be a positive finite number"):
            repsim.geometry_score(x, x, n_landmarks=8, gamma=gamma)


def test_missing_gudhi_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gudhi", None)  # `import gudhi` now raises ImportError
    x = _cloud(11, n=20)
    with pytest.raises(ImportError, match=r"geometry_score needs the gudhi package: pip install"):
        repsim.geometry_score(x, 2 * x, n_landmarks=8)
