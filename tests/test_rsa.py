import numpy as np
import pytest
import scipy.spatial.distance as ssd
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim
from tests.conftest import related

_SCIPY_METRIC = {"cosine": "cosine", "correlation": "correlation", "euclidean": "euclidean"}


@pytest.mark.parametrize("method", ["cosine", "correlation", "euclidean"])
def test_rdm_matches_scipy(gen, method):
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    expected = ssd.squareform(ssd.pdist(x.numpy(), _SCIPY_METRIC[method]))
    assert np.allclose(repsim.rdm(x, method=method).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("method", ["cosine", "correlation", "euclidean"])
def test_rsa_against_scipy_stats(gen, method):
    x, y = related(gen, n=50)
    a = ssd.pdist(x.numpy(), _SCIPY_METRIC[method])  # pdist order == upper triangle, row-major
    b = ssd.pdist(y.numpy(), _SCIPY_METRIC[method])
    assert repsim.rsa(x, y, rdm=method).item() == pytest.approx(scipy.stats.pearsonr(a, b).statistic, abs=1e-12)
    assert repsim.rsa(x, y, rdm=method, compare="spearman").item() == pytest.approx(
        scipy.stats.spearmanr(a, b).statistic, abs=1e-12
    )
    # without ties tau_a == tau_b
    assert repsim.rsa(x, y, rdm=method, compare="kendall").item() == pytest.approx(
        scipy.stats.kendalltau(a, b).statistic, abs=1e-12
    )


def _tau_a_bruteforce(a, b):
    m = len(a)
    s = 0.0
    for i in range(m):
        for j in range(i + 1, m):
            s += np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return s / (m * (m - 1) / 2)


def test_kendall_tau_a_with_ties_against_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 60).astype(float)
    b = a + rng.integers(0, 3, 60)
    got = repsim.measures.kendall_tau_a(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert got == pytest.approx(_tau_a_bruteforce(a, b), abs=1e-12)
    # tau_a differs from tau_b when there are ties
    assert abs(got - scipy.stats.kendalltau(a, b).statistic) > 1e-3


def _tau_b_bruteforce(a, b):
    # Kendall (1945): sum_{i<j} sgn(a_i - a_j) sgn(b_i - b_j) / sqrt((n0 - n1)(n0 - n2)), float64, O(M^2)
    m = len(a)
    s = untied_a = untied_b = 0.0
    for i in range(m):
        for j in range(i + 1, m):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            s += da * db
            untied_a += da != 0
            untied_b += db != 0
    return s / np.sqrt(untied_a * untied_b)


def test_kendall_tau_b_with_ties_in_both_against_the_formula_and_scipy():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 70).astype(float)
    b = np.where(rng.random(70) < 0.7, a, rng.integers(0, 5, 70)).astype(float)  # ties in both, related
    got = repsim.measures.kendall_tau_b(torch.from_numpy(a), torch.from_numpy(b))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_tau_b_bruteforce(a, b), abs=1e-12)
    assert got.item() == pytest.approx(scipy.stats.kendalltau(a, b, variant="b").statistic, abs=1e-12)
    assert repsim.measures.kendall_tau_b(torch.from_numpy(a), torch.from_numpy(a)).item() == pytest.approx(1.0)


def test_rsa_kendall_tau_b_is_one_for_a_tied_rdm_against_itself(gen):
    # integer points on a small grid: many equal Euclidean distances
    x = torch.randint(0, 3, (30, 2), generator=gen).double() + 0.1 * torch.arange(30).double()[:, None].remainder(2)
    a = ssd.pdist(x.numpy())
    assert len(np.unique(a)) < len(a) / 10  # heavily tied
    assert repsim.rsa(x, x, rdm="euclidean", compare="kendall_tau_b").item() == pytest.approx(1.0, abs=1e-12)
    tau_a = repsim.rsa(x, x, rdm="euclidean", compare="kendall").item()
    assert tau_a < 0.99  # tau_a counts the tied pairs as neither concordant nor discordant
    y = x + 0.3 * torch.randn(30, 2, generator=gen, dtype=torch.float64).round()
    # against scipy on repsim's own RDM entries (the Gram identity splits some exact ties by ~1e-16)
    iu = np.triu_indices(30, 1)
    ra, rb = (repsim.rdm(t, method="euclidean").numpy()[iu] for t in (x, y))
    got = repsim.rsa(x, y, rdm="euclidean", compare="kendall_tau_b").item()
    assert got == pytest.approx(scipy.stats.kendalltau(ra, rb, variant="b").statistic, abs=1e-12)
    grid = repsim.rsa_grid([x, y], rdm="euclidean", compare="kendall_tau_b")
    assert grid[0, 1].item() == pytest.approx(got, abs=1e-12) and grid[1, 1].item() == pytest.approx(1.0, abs=1e-12)


def test_spearman_ties_use_average_ranks():
    v = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0])
    assert torch.equal(repsim.measures.average_ranks(v), torch.from_numpy(scipy.stats.rankdata(v.numpy())))


def test_rsa_self_is_one_and_symmetric(gen):
    x, y = related(gen)
    assert repsim.rsa(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert repsim.rsa(x, y).item() == pytest.approx(repsim.rsa(y, x).item(), abs=1e-14)


def test_rsa_grid_matches_pairwise(gen):
    x, y = related(gen, n=40)
    z = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    for compare in ("pearson", "spearman", "kendall", "kendall_tau_b"):
        grid = repsim.rsa_grid([x, y], [z, x, y], compare=compare)
        assert grid.shape == (2, 3)
        for i, a in enumerate([x, y]):
            for j, b in enumerate([z, x, y]):
                assert grid[i, j].item() == pytest.approx(repsim.rsa(a, b, compare=compare).item(), abs=1e-12)


def test_rsa_rejects_zero_rows_and_constant_rdm():
    x = torch.randn(10, 3)
    x[2] = 0
    with pytest.raises(ValueError, match="all-zero rows"):
        repsim.rsa(x, torch.randn(10, 3))
    with pytest.raises(ValueError, match="constant"):
        repsim.rsa(torch.randn(10, 3), torch.ones(10, 3), rdm="euclidean")
    with pytest.raises(ValueError, match="rdm must be one of"):
        repsim.rsa(torch.randn(10, 3), torch.randn(10, 3), rdm="manhattan")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 25),
    p=st.integers(2, 8),
    seed=st.integers(0, 1000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_property_rsa_in_range_and_matches_scipy(n, p, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, p, generator=g).to(dtype), torch.randn(n, p, generator=g).to(dtype)
    value = repsim.rsa(x, y, dtype=torch.float64)
    a, b = ssd.pdist(x.double().numpy(), "cosine"), ssd.pdist(y.double().numpy(), "cosine")
    assert -1 - 1e-12 <= value.item() <= 1 + 1e-12
    expected = scipy.stats.pearsonr(a, b).statistic
    assert value.item() == pytest.approx(expected, abs=1e-9)
    # the default runs the RDM in the inputs' precision (float32 here or float64)
    assert repsim.rsa(x, y).item() == pytest.approx(expected, abs=1e-4 if dtype == torch.float32 else 1e-9)
