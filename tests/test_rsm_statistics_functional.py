"""RSM, statistics and functional families against float64 references, closed forms and bad inputs."""

import math

import numpy as np
import pytest
import torch

import repsim

from . import reference_rsm_stats as ref


def _pair(seed, n=40, p=5, q=4):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, p)) + 2.0
    y = np.tanh(x @ g.normal(size=(p, q))) + 0.5 * g.normal(size=(n, q)) - 1.0
    return x, y


CASES = {
    "distance_correlation": (ref.dcor, {}),
    "eigenspace_overlap": (ref.eos, {}),
    "gulp": (lambda x, y: ref.gulp(x, y, 0.0), {}),
    "rsm_norm_difference": (ref.rsm_norm_difference, {}),
    "magnitude_difference": (ref.magnitude_difference, {}),
    "concentricity_difference": (lambda x, y: abs(ref.concentricity(x) - ref.concentricity(y)), {}),
    "uniformity_difference": (lambda x, y: abs(ref.uniformity(x) - ref.uniformity(y)), {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(name, seed):
    x, y = _pair(seed)
    want, opts = CASES[name]
    got = repsim.measure(name, torch.from_numpy(x), torch.from_numpy(y), **opts)
    assert got.dtype == torch.float64
    assert abs(float(got) - want(x, y)) < 1e-10


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_gulp_with_ridge(lam):
    x, y = _pair(2)
    assert abs(float(repsim.gulp(torch.from_numpy(x), torch.from_numpy(y), lam=lam)) - ref.gulp(x, y, lam)) < 1e-10


def test_unbiased_distance_correlation():
    x, y = _pair(3)
    got = repsim.distance_correlation(torch.from_numpy(x), torch.from_numpy(y), estimator="unbiased")
    assert abs(float(got) - ref.dcor2_unbiased(x, y)) < 1e-10
    # independent data with d >> n: the bias-corrected value is near 0, the biased one is not
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(30, 200, generator=g, dtype=torch.float64),
        torch.randn(30, 200, generator=g, dtype=torch.float64),
    )
    assert abs(float(repsim.distance_correlation(a, b, estimator="unbiased"))) < 0.1
    assert float(repsim.distance_correlation(a, b)) > 0.5


def test_closed_forms():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    assert abs(float(repsim.eigenspace_overlap(x, x @ a)) - 1) < 1e-12
    assert float(repsim.gulp(x, x @ a + 3)) == 0.0
    # a redundant column changes neither the rank nor GULP at lam = 0 (ReSi's untolerated clip does change)
    y = torch.tanh(x[:, :4]) + 0.3 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    redundant = torch.cat([y, y[:, :1] + y[:, 1:2]], dim=1)
    assert abs(float(repsim.gulp(x, redundant) - repsim.gulp(x, y))) < 1e-9
    assert abs(float(repsim.eigenspace_overlap(x, redundant) - repsim.eigenspace_overlap(x, y))) < 1e-9
    # uniformity of two antipodal clusters on the circle: distances 0 (same cluster) and 4 (other)
    pts = torch.tensor([[1.0, 0], [1, 0], [-1, 0], [-1, 0]], dtype=torch.float64)
    want = math.log((4 * 1 + 8 * math.exp(-8)) / 12)
    assert abs(float(repsim.measures.statistics.uniformity(pts)) - want) < 1e-12


def test_uniformity_never_underflows():
    g = torch.Generator().manual_seed(2)
    big = 1e4 * torch.randn(30, 5, generator=g, dtype=torch.float64)
    value = repsim.measures.statistics.uniformity(big, normalize=False)
    assert torch.isfinite(value)


def test_functional_measures():
    g = np.random.default_rng(4)
    x, y = 3 * g.normal(size=(60, 5)), 3 * g.normal(size=(60, 5))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    assert abs(float(repsim.jsd(tx, ty)) - ref.jsd(x, y)) < 1e-12
    assert abs(float(repsim.jsd(tx, tx))) < 1e-15
    assert 0 <= float(repsim.jsd(tx, ty)) <= math.log(2)
    assert float(repsim.disagreement(tx, ty)) == np.mean(x.argmax(1) != y.argmax(1))
    labels = torch.from_numpy(x.argmax(1))
    assert float(repsim.abs_acc_diff(tx, ty, labels=labels)) == pytest.approx(1 - np.mean(y.argmax(1) == x.argmax(1)))
    saturated = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], dtype=torch.float64)
    assert abs(float(repsim.jsd(saturated, saturated.flip(1))) - math.log(2)) < 1e-12


def test_bad_inputs():
    x, y = (torch.from_numpy(a) for a in _pair(5))
    with pytest.raises(ValueError, match="same classes"):
        repsim.jsd(x, y)
    with pytest.raises(ValueError, match="needs labels"):
        repsim.abs_acc_diff(x, x)
    with pytest.raises(ValueError, match="must lie in"):
        repsim.abs_acc_diff(x, x, labels=torch.full((40,), 9))
    with pytest.raises(ValueError, match="estimator must be one of"):
        repsim.distance_correlation(x, y, estimator="nope")
    with pytest.raises(ValueError, match="lam must be"):
        repsim.gulp(x, y, lam=-1.0)
    centred = x - x.mean(0)
    with pytest.raises(ValueError, match="mean representation is zero"):
        repsim.concentricity_difference(centred, y)
