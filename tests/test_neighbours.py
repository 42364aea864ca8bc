"""Neighbourhood measures against brute-force references; duplicates, block sizes, closed forms, bad inputs."""

import numpy as np
import pytest
import torch

import repsim
from repsim.measures.neighbours import knn_indices

from . import reference_neighbours as ref

CASES = {
    "jaccard_knn": ref.jaccard,
    "mutual_knn": ref.mutual,
    "rank_similarity": ref.rank_similarity,
    "cycle_knn": ref.cycle,
    "second_order_cosine": ref.second_order,
    "cknna": ref.cknna,
}


def _pair(seed, n=50, p=6, q=5):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, p))
    y = np.tanh(x @ g.normal(size=(p, q))) + 0.4 * g.normal(size=(n, q))
    return x, y


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("seed", "k"), [(0, 10), (1, 3), (2, 7)])
def test_matches_brute_force(name, seed, k):
    x, y = _pair(seed)
    got = repsim.measure(torch.from_numpy(x), torch.from_numpy(y), name, k=k)
    assert abs(float(got) - CASES[name](x, y, k)) < 1e-10


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_size_does_not_change_the_value(name):
    x, y = (torch.from_numpy(a) for a in _pair(3))
    whole = repsim.measure(x, y, name, block_size=4096)
    assert float(repsim.measure(x, y, name, block_size=7)) == pytest.approx(float(whole), abs=1e-12)


def test_duplicated_samples_are_not_their_own_neighbours():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    dup = torch.cat([x, x[:5]])  # samples 20..24 duplicate 0..4
    z = dup / dup.norm(dim=1, keepdim=True)
    nn = knn_indices(z, 3)
    assert not bool((nn == torch.arange(25)[:, None]).any())  # never itself
    assert all(int(nn[i, 0]) == i + 20 for i in range(5))  # its copy is its nearest neighbour
    assert float(repsim.mutual_knn(dup, dup.clone(), k=3)) == 1.0


def test_closed_forms_and_shuffles():
    x = torch.from_numpy(_pair(4, n=200)[0])
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert float(repsim.jaccard_knn(x, 5 * x @ q)) == 1.0
    # shuffling the samples of one side breaks the neighbourhoods: overlap near chance k/(n-1)
    shuffled = x[torch.randperm(200, generator=g)]
    assert float(repsim.mutual_knn(x, shuffled)) < 0.15


def test_bad_inputs():
    x, y = (torch.from_numpy(a) for a in _pair(5, n=8))
    with pytest.raises(ValueError, match="at least k \\+ 1"):
        repsim.mutual_knn(x, y, k=8)
    with pytest.raises(ValueError, match="k must be an integer"):
        repsim.jaccard_knn(x, y, k=0)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        repsim.cknna(x, y, k=1)
    zero = x.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match="all-zero rows"):
        repsim.rank_similarity(zero, y, k=3)
