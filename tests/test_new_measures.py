"""NBS, Bures distance, ENSD, R^2_CCA, SVCCA with a fixed number of components and the soft-matching
distance against float64 references from the papers (tests/reference_new_measures.py), closed forms
and the relations to the measures repsim already has."""

import math

import numpy as np
import pytest
import torch

import repsim
from repsim.measures.moments import StreamingMoments

from . import reference_new_measures as ref


def _pair(seed, n=40, p=5, q=4, noise=0.6):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, p)) + 3.0
    y = np.tanh(x @ g.normal(size=(p, q))) + noise * g.normal(size=(n, q)) - 2.0
    return x, y


CASES = {
    "nbs": ref.nbs,
    "bures_distance": ref.bures,
    "ensd": ref.ensd,
    "mean_squared_cca": ref.r2_cca,
    "soft_matching": ref.soft_matching,
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
# soft matching's two exact solvers: (3, 6), (4, 4), (6, 9) by the replicated assignment, (5, 4) by HiGHS
@pytest.mark.parametrize("widths", [(5, 4), (3, 6), (4, 4), (6, 9)])
def test_matches_reference(name, seed, widths):
    x, y = _pair(seed, p=widths[0], q=widths[1])
    got = repsim.measure(torch.from_numpy(x), torch.from_numpy(y), name)
    assert got.dtype == torch.float64
    want = CASES[name](x, y)
    assert abs(float(got) - want) <= 1e-9 * max(1.0, abs(want)), (name, float(got), want)


def test_fidelity_is_the_nuclear_norm_of_the_cross_product():
    """tr((K_x^{1/2} K_y K_x^{1/2})^{1/2}) from n x n matrix square roots = |Xc^T Yc|_* (d x d)."""
    for seed in range(3):
        x, y = _pair(seed, p=6, q=3)
        nuclear = np.linalg.svd(ref.centred(x).T @ ref.centred(y), compute_uv=False).sum()
        assert abs(ref.fidelity(x, y) - nuclear) <= 1e-9 * nuclear


def test_bures_relations_to_procrustes():
    x, y = (torch.from_numpy(a) for a in _pair(3))
    n = x.shape[0]
    nbs = float(repsim.nbs(x, y))
    assert math.isclose(nbs, math.cos(float(repsim.angular_shape(x, y))), rel_tol=1e-12)
    assert math.isclose(nbs, 1 - float(repsim.procrustes(x, y)) ** 2 / 2, rel_tol=1e-12)
    assert math.isclose(float(repsim.bures_distance(x, y)), math.sqrt(n) * float(repsim.procrustes_size_shape(x, y)))
    # closed forms: a rotated, scaled, shifted copy has NBS 1; Bures sees the scale
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert float(repsim.nbs(x, 3 * x @ q + 1)) == pytest.approx(1.0, abs=1e-12)
    assert float(repsim.bures_distance(x, x @ q + 1)) == 0.0
    xc = x - x.mean(0)
    assert float(repsim.bures_distance(x, 3 * x)) == pytest.approx(2 * float(xc.norm()), rel=1e-12)


def test_ensd_of_a_representation_with_itself_is_its_participation_ratio():
    g = np.random.default_rng(4)
    x = g.normal(size=(200, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    tx = torch.from_numpy(x)
    assert float(repsim.ensd(tx, tx)) == pytest.approx(ref.participation_ratio(x), rel=1e-12)
    # an isotropic cloud in k dimensions has PR k exactly when its scatter is a multiple of I
    q, _ = np.linalg.qr(g.normal(size=(200, 3)))
    iso = torch.from_numpy((q - q.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov((q - q.mean(0)).T)).T))
    assert float(repsim.ensd(iso, iso)) == pytest.approx(3.0, rel=1e-12)
    # ENSD = linear CKA * sqrt(PR(x) PR(y))
    x, y = _pair(5)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    want = float(repsim.linear_cka(tx, ty)) * math.sqrt(ref.participation_ratio(x) * ref.participation_ratio(y))
    assert float(repsim.ensd(tx, ty)) == pytest.approx(want, rel=1e-10)


def test_mean_squared_cca_closed_forms():
    x, y = (torch.from_numpy(a) for a in _pair(6, n=120))
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(repsim.mean_squared_cca(x, x @ a + 4)) == pytest.approx(1.0, abs=1e-12)
    r2, rho = float(repsim.mean_squared_cca(x, y)), float(repsim.mean_cca(x, y))
    assert rho**2 <= r2 <= rho  # Jensen, and rho_i <= 1
    with pytest.raises(ValueError, match="more samples than the two ranks"):
        repsim.mean_squared_cca(x[:8], y[:8])


def test_svcca_with_a_fixed_number_of_components():
    x, y = _pair(7, n=120, p=6, q=5)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for k in (1, 2, 4):
        assert float(repsim.svcca(tx, ty, n_components=k)) == pytest.approx(ref.svcca_k(x, y, k), abs=1e-10)
    # every component: plain mean CCA; the defaults have not moved
    full = float(repsim.svcca(tx[:, :5], ty, n_components=5))
    assert full == pytest.approx(float(repsim.mean_cca(tx[:, :5], ty)), abs=1e-12)
    assert float(repsim.svcca(tx, ty)) == float(repsim.svcca(tx, ty, variance=0.99, n_components=None))
    grid = repsim.measure_grid([tx, ty], [ty], "svcca", n_components=2)
    assert float(grid[0, 0]) == pytest.approx(float(repsim.svcca(tx, ty, n_components=2)), abs=1e-12)
    with pytest.raises(ValueError, match="pass only one"):
        repsim.svcca(tx, ty, variance=0.9, n_components=2)
    with pytest.raises(ValueError, match="exceeds a layer's rank"):
        repsim.svcca(tx, ty, n_components=6)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="n_components must be a positive int"):
            repsim.svcca(tx, ty, n_components=bad)


def test_soft_matching_equal_widths_is_a_scaled_permutation_procrustes():
    x, y = _pair(8, p=4, q=4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    got = float(repsim.soft_matching(tx, ty))
    assert got == pytest.approx(ref.soft_matching_brute(x, y), rel=1e-12)
    assert got == pytest.approx(math.sqrt(40 / 4) * float(repsim.permutation_procrustes(tx, ty)), rel=1e-12)
    assert float(repsim.soft_matching(tx, ty, center=False)) == pytest.approx(
        ref.soft_matching_brute(x, y, center=False), rel=1e-12
    )


def test_soft_matching_across_widths_closed_forms():
    x, _ = _pair(9, p=3)
    tx = torch.from_numpy(x)
    # every neuron duplicated: the plan splits each x neuron over its two copies at no cost
    assert float(repsim.soft_matching(tx, torch.cat([tx, tx[:, [2, 0, 1]]], dim=1))) == 0.0
    # one neuron on one side: the only plan spreads it evenly, d^2 = mean_j |x_1 - y_j|^2
    c = ref.neuron_costs(x[:, :1], x)
    assert float(repsim.soft_matching(tx[:, :1], tx)) == pytest.approx(math.sqrt(c.mean()), rel=1e-12)
    # centring: a shifted neuron costs nothing with center=True and its shift otherwise
    shifted = tx + torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)
    assert float(repsim.soft_matching(tx, shifted)) == 0.0
    assert float(repsim.soft_matching(tx, shifted, center=False)) > 0.1
    info = repsim.get_measure("soft_matching")
    assert info.invariances_at(center=False) == frozenset({"permutation"})


def test_soft_matching_streams_exactly_across_widths():
    x, y = _pair(10, n=97, p=6, q=4)
    tx, ty = torch.from_numpy(x) + 300.0, torch.from_numpy(y) - 200.0
    acc = StreamingMoments()
    for i in range(0, 97, 23):
        acc.update(tx[i : i + 23], ty[i : i + 23])
    for center in (True, False):
        one_shot = float(repsim.soft_matching(tx, ty, center=center))
        assert float(acc.compute("soft_matching", center=center)) == pytest.approx(one_shot, rel=1e-10)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("widths", [(5, 4), (4, 4), (3, 6)])
def test_crossvalidated_shape_matches_a_direct_computation(alpha, widths):
    x, y = _pair(11, n=120, p=widths[0], q=widths[1])
    train = np.random.default_rng(0).random(120) < 0.6
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    got = repsim.crossvalidated_shape(tx, ty, train=torch.from_numpy(train), alpha=alpha)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(ref.crossvalidated_shape(x, y, train, alpha), abs=1e-10)


def test_crossvalidated_shape_closed_forms_and_errors():
    x, y = (torch.from_numpy(a) for a in _pair(12, n=100))
    # the test samples are (copies of) the training samples: the in-sample angular shape metric
    doubled_x, doubled_y = torch.cat([x, x]), torch.cat([y, y])
    mask = torch.arange(200) < 100
    for alpha in (1.0, 0.3):
        got = float(repsim.crossvalidated_shape(doubled_x, doubled_y, train=mask, alpha=alpha))
        assert got == pytest.approx(float(repsim.angular_shape(x, y, alpha=alpha)), abs=1e-9)
    # a rotated, scaled, shifted copy: the rotation fitted on the training half aligns the test half exactly
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    assert float(repsim.crossvalidated_shape(x, 2 * x @ q + 3, train=0.5)) == pytest.approx(0.0, abs=1e-7)
    # unrelated wide features: in-sample the rotation fits noise, held out it does not
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(40, 30, generator=g, dtype=torch.float64), torch.randn(40, 30, generator=g, dtype=torch.float64)
    assert float(repsim.crossvalidated_shape(a, b, train=0.5)) > float(repsim.angular_shape(a, b)) + 0.3
    with pytest.raises(ValueError, match="fraction must be in"):
        repsim.crossvalidated_shape(x, y, train=1.5)
    with pytest.raises(ValueError, match="boolean mask of the 100 samples"):
        repsim.crossvalidated_shape(x, y, train=torch.ones(99, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least 3 training and 2 test"):
        repsim.crossvalidated_shape(x, y, train=0.99)
    with pytest.raises(ValueError, match="alpha must be in"):
        repsim.crossvalidated_shape(x, y, alpha=2.0)
