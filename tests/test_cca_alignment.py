"""CCA and alignment families against float64 references from the papers, closed forms and bad inputs."""

import numpy as np
import pytest
import torch

import repsim

from . import reference_cca_align as ref


def _pair(seed, n=80, p=5, q=4, noise=0.6):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, p)) + 3.0
    y = np.tanh(x @ g.normal(size=(p, q))) + noise * g.normal(size=(n, q)) - 2.0
    return x, y


CASES = {
    "mean_cca": lambda x, y: ref.canonical_correlations(x, y).mean(),
    "svcca": lambda x, y: ref.svcca(x, y),
    "pwcca": ref.pwcca,
    "procrustes": ref.procrustes,
    "procrustes_size_shape": ref.size_shape,
    "linear_regression": ref.r2,
    "soft_correlation_match": ref.soft_match,
    "aligned_cosine": ref.aligned_cosine,
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(name, seed):
    x, y = _pair(seed)
    got = repsim.measure(torch.from_numpy(x), torch.from_numpy(y), name)
    assert got.dtype == torch.float64
    assert abs(float(got) - CASES[name](x, y)) < 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_pwcca_either_side_wider(seed):
    x, y = _pair(seed, p=3, q=6)
    assert abs(float(repsim.pwcca(torch.from_numpy(x), torch.from_numpy(y))) - ref.pwcca(x, y)) < 1e-10
    assert abs(float(repsim.pwcca(torch.from_numpy(y), torch.from_numpy(x))) - ref.pwcca(y, x)) < 1e-10


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_angular_shape_reference_and_cca_closed_form(alpha):
    x, y = _pair(3, q=5)
    got = float(repsim.angular_shape(torch.from_numpy(x), torch.from_numpy(y), alpha=alpha))
    assert abs(got - ref.angular_shape(x, y, alpha)) < 1e-9
    if alpha == 0.0:  # whitened sides: cos = sum(rho) / sqrt(p q)
        rho = ref.canonical_correlations(x, y)
        assert abs(got - np.arccos(rho.sum() / np.sqrt(5 * 5))) < 1e-9


def test_brute_force_permutation_measures():
    x, y = _pair(4, p=4, q=4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    assert abs(float(repsim.permutation_procrustes(tx, ty)) - ref.permutation_procrustes_brute(x, y)) < 1e-10
    assert abs(float(repsim.hard_correlation_match(tx, ty)) - ref.hard_match_brute(x, y)) < 1e-10


def test_closed_forms():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    assert float(repsim.procrustes(x, 2 * x @ q + 1)) == 0.0
    assert float(repsim.angular_shape(x, x @ a, alpha=0.0)) == 0.0
    assert abs(float(repsim.mean_cca(x, x @ a + 5)) - 1) < 1e-12
    assert abs(float(repsim.linear_regression(x, x @ a)) - 1) < 1e-12
    assert float(repsim.permutation_procrustes(x, x[:, torch.randperm(6, generator=g)])) == 0.0
    # the predictor may be any affine map of the target's source: R^2 of y from x A is that of y from x
    y = torch.tanh(x[:, :3]) + 0.3 * torch.randn(100, 3, generator=g, dtype=torch.float64)
    assert abs(float(repsim.linear_regression(x @ a + 2, y) - repsim.linear_regression(x, y))) < 1e-10


def test_svcca_keeps_components_by_variance_share():
    g = torch.Generator().manual_seed(1)
    # three strong directions and three with 1e-4 of the variance: 99 % keeps exactly the strong ones
    base = torch.randn(300, 6, generator=g, dtype=torch.float64) * torch.tensor([10, 9, 8, 0.01, 0.01, 0.01])
    signal = base[:, :3] @ torch.randn(3, 3, generator=g, dtype=torch.float64)
    y = torch.cat([signal, 0.01 * torch.randn(300, 3, generator=g, dtype=torch.float64)], dim=1)
    assert abs(float(repsim.svcca(base, y)) - 1) < 1e-6  # the kept 3-d spaces coincide
    assert float(repsim.mean_cca(base, y)) < 0.9  # plain CCA averages in the independent weak directions


def test_cca_refuses_too_few_samples_with_the_fix():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    for name in ("mean_cca", "pwcca"):
        with pytest.raises(ValueError, match="more samples than the two ranks"):
            repsim.measure(x, y, name)
    with pytest.raises(ValueError, match="rank deficient"):
        repsim.angular_shape(torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), alpha=0.5)
    with pytest.raises(ValueError, match="predictor's rank"):
        repsim.linear_regression(torch.randn(6, 8, generator=g), torch.randn(6, 2, generator=g))


@pytest.mark.parametrize(("n", "p", "q", "forced"), [(100, 50, 50, 1), (60, 40, 30, 11), (40, 45, 5, 5)])
def test_cca_refusal_says_how_many_correlations_are_forced(n, p, q, forced):
    # r_x + r_y - (n - 1) canonical correlations (at most min(r_x, r_y)) are 1 for any data: the centred
    # column spaces share that many directions in the (n - 1)-dimensional space orthogonal to 1
    g = np.random.default_rng(0)
    x, y = g.normal(size=(n, p)), g.normal(size=(n, q))
    rank_x, rank_y = min(p, n - 1), min(q, n - 1)
    with pytest.raises(ValueError, match=f"so {forced} of the {min(rank_x, rank_y)} canonical correlations are 1"):
        repsim.mean_cca(torch.from_numpy(x), torch.from_numpy(y))
    # the count is the fact: the float64 correlations from orthonormal bases of the centred columns
    qx = np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :rank_x]
    qy = np.linalg.svd(y - y.mean(0), full_matrices=False)[0][:, :rank_y]
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    assert int((rho > 1 - 1e-8).sum()) == forced


def test_option_and_width_errors():
    x, y = (torch.from_numpy(a) for a in _pair(5))
    with pytest.raises(ValueError, match="variance must be in"):
        repsim.svcca(x, y, variance=1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        repsim.angular_shape(x, y, alpha=2.0)
    with pytest.raises(ValueError, match="same width"):
        repsim.permutation_procrustes(x, y)
    with pytest.raises(ValueError, match="predict must be one of"):
        repsim.linear_regression(x, y, predict="z")
    dead = y.clone()
    dead[:, 1] = 3.0
    with pytest.raises(ValueError, match="constant"):
        repsim.hard_correlation_match(x, dead)


def test_float32_inputs_follow_the_precision_policy():
    x, y = _pair(6)
    for name in ("mean_cca", "procrustes", "linear_regression"):
        exact = repsim.measure(torch.from_numpy(x), torch.from_numpy(y), name)
        fast = repsim.measure(torch.from_numpy(x).float(), torch.from_numpy(y).float(), name)
        assert fast.dtype == torch.float64
        assert abs(float(fast - exact)) < 1e-5


def test_predict_x_swaps_roles_and_grid_agrees():
    x, y = (torch.from_numpy(a) for a in _pair(7))
    assert float(repsim.linear_regression(x, y, predict="x")) == pytest.approx(float(repsim.linear_regression(y, x)))
    grid = repsim.measure_grid([x, y], [y], "linear_regression", predict="x")
    assert float(grid[0, 0]) == pytest.approx(float(repsim.linear_regression(x, y, predict="x")), abs=1e-12)


def test_angular_shape_scale_invariance_only_at_the_ends():
    """alpha in {0, 1} is invariant to isotropic scaling; 0 < alpha < 1 is not (documented)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 6, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(6, 6, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(200, 6, generator=gen).double()
    for alpha in (0.0, 1.0):
        a, b = repsim.angular_shape(x, y, alpha=alpha), repsim.angular_shape(7.0 * x, y, alpha=alpha)
        assert abs(float(a - b)) < 1e-12
    a, b = repsim.angular_shape(x, y, alpha=0.5), repsim.angular_shape(7.0 * x, y, alpha=0.5)
    assert abs(float(a - b)) > 1e-3
