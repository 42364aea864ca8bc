"""Calibration of the inference procedures by simulation (small, seeded versions of the acceptance tests;
the full-size runs are in benchmarks/inference.py), plus exactness, seeds and bad inputs."""

import numpy as np
import pytest
import scipy.stats
import torch

import repsim
from repsim.inference.permutation import _shift_statistics


def _independent(seed, n=200, p=50, q=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, p, generator=g, dtype=torch.float64), torch.randn(n, q, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("measure", ["linear_cka", "debiased_cka", "rsa"])
def test_null_p_values_are_uniform(measure):
    """Acceptance test 1: 500 simulations, n = 200, p = q = 50, independent Gaussians."""
    ps = np.array(
        [repsim.permutation_test(*_independent(s), measure, n_permutations=199, seed=s).p_value for s in range(500)]
    )
    assert scipy.stats.kstest(ps, "uniform").pvalue > 0.01
    assert 0.03 <= np.mean(ps <= 0.05) <= 0.07


def _joint(seed, n, p=8, q=6, noise=1.5):
    g = torch.Generator().manual_seed(1000 + seed)
    a = torch.linspace(0.2, 1.0, p * q, dtype=torch.float64).reshape(p, q)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x @ a + noise * torch.randn(n, q, generator=g, dtype=torch.float64)
    # population moments: Sxx = I, Sxy = A, Syy = A^T A + noise^2 I
    syy = a.T @ a + noise**2 * torch.eye(q, dtype=torch.float64)
    truth = float(a.pow(2).sum() / (torch.eye(p, dtype=torch.float64).norm() * syy.norm()))
    return x, y, truth


def test_debiased_cka_interval_covers_the_population_value():
    """Acceptance test 2 (reduced: 120 simulations at n = 300; the full 500 x n = 500 run is in benchmarks)."""
    hits = {"debiased_cka": 0, "linear_cka": 0}
    for s in range(120):
        x, y, truth = _joint(s, 300)
        for m in hits:
            res = repsim.bootstrap(x, y, m, n_resamples=100, seed=s)
            hits[m] += res.ci_low <= truth <= res.ci_high
    assert 0.88 <= hits["debiased_cka"] / 120 <= 1.0
    # the biased estimator's coverage is reported by benchmarks/inference.py (it falls as d/n grows)


@pytest.mark.parametrize("measure", ["linear_cka", "debiased_cka", "rsa"])
@pytest.mark.parametrize("n", [40, 41])
def test_batched_subsamples_equal_the_measure_on_each_subsample(measure, n):
    """Half-samples come in complementary pairs (for odd n one sample sits out); the batched
    quadratic forms give each one's exact value."""
    x, y = _independent(10, n=n, p=6, q=5)
    res = repsim.bootstrap(x, y, measure, n_resamples=13, seed=3)
    gen = torch.Generator().manual_seed(3)
    halves = []
    for _ in range(7):
        perm = torch.randperm(n, generator=gen)
        halves += [perm[:20], perm[20:40]]
    assert len(res.resamples) == 13
    for value, idx in zip(res.resamples, halves, strict=False):
        assert abs(float(value) - float(repsim.measure(x[idx], y[idx], measure))) < 1e-12


@pytest.mark.parametrize("measure", ["linear_cka", "debiased_cka", "rsa"])
def test_power_for_a_weak_shared_signal(measure):
    """Acceptance test 3: a weak shared signal (one shared direction among 20) is detected at n = 200."""
    detected = 0
    for s in range(40):
        g = torch.Generator().manual_seed(500 + s)
        shared = torch.randn(200, 1, generator=g, dtype=torch.float64)
        x = torch.randn(200, 20, generator=g, dtype=torch.float64) + 0.8 * shared
        y = torch.randn(200, 20, generator=g, dtype=torch.float64) + 0.8 * shared
        detected += repsim.permutation_test(x, y, measure, n_permutations=199, seed=s).p_value < 0.05
    assert detected / 40 >= 0.8


def test_seeds_give_bit_identical_results():
    x, y = _independent(3, n=60, p=5, q=5)
    a = repsim.permutation_test(x, y, "debiased_cka", n_permutations=100, seed=7)
    b = repsim.permutation_test(x, y, "debiased_cka", n_permutations=100, seed=7)
    assert torch.equal(a.null, b.null) and a.p_value == b.p_value
    c = repsim.bootstrap(x, y, "rsa", n_resamples=50, seed=7)
    d = repsim.bootstrap(x, y, "rsa", n_resamples=50, seed=7)
    assert torch.equal(c.resamples, d.resamples) and (c.ci_low, c.ci_high) == (d.ci_low, d.ci_high)
    assert not torch.equal(a.null, repsim.permutation_test(x, y, "debiased_cka", n_permutations=100, seed=8).null)


@pytest.mark.parametrize("measure", ["linear_cka", "debiased_cka", "rsa", "rsa_spearman"])
def test_shift_statistics_are_the_measure_of_shifted_data(measure):
    x, y = _independent(4, n=30, p=6, q=4)
    shifts = _shift_statistics(measure, dict(repsim.get_measure(measure).defaults))(x, y)
    for s in (0, 1, 17):
        moved = y[(torch.arange(30) + s) % 30]
        assert abs(float(shifts[s]) - float(repsim.measure(x, moved, measure))) < 1e-12


def test_random_scheme_for_any_measure_and_distance_tail():
    x, y = _independent(5, n=40, p=4, q=4)
    res = repsim.permutation_test(x, x + 0.1 * y, "procrustes", n_permutations=99, seed=0)
    assert res.scheme == "random" and res.alternative == "less"
    assert res.p_value == pytest.approx(1 / 100)  # a near-copy: no permutation is as close
    sim = repsim.permutation_test(x, x + 0.1 * y, "linear_cka", n_permutations=99, seed=0, scheme="random")
    assert sim.scheme == "random" and sim.p_value == pytest.approx(1 / 100)


def test_paired_difference_detects_the_closer_representation():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(150, 10, generator=g, dtype=torch.float64)
    near = x + 0.5 * torch.randn(150, 10, generator=g, dtype=torch.float64)
    far = x + 2.0 * torch.randn(150, 10, generator=g, dtype=torch.float64)
    res = repsim.compare_paired(x, near, far, "debiased_cka", n_resamples=200)
    assert res.difference > 0 and res.ci_low > 0 and res.p_value < 0.05
    same = repsim.compare_paired(x, near, near.clone(), "debiased_cka", n_resamples=100)
    assert same.difference == 0 and same.p_value == 1.0


def test_adjustments_match_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.2]
    # Holm: sorted 0.01*4, 0.03*3, 0.04*2, 0.2*1 -> 0.04, 0.09, 0.08 -> monotone 0.09, 0.2
    assert np.allclose(repsim.adjust_p_values(p, method="holm"), [0.04, 0.09, 0.09, 0.2])
    # BH: sorted 0.01*4/1, 0.03*4/2, 0.04*4/3, 0.2*4/4 -> 0.04, 0.06, 0.0533, 0.2 -> step-up min
    assert np.allclose(repsim.adjust_p_values(p, method="bh"), [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert repsim.adjust_p_values(np.array([[0.5, 0.9]]), method="holm").shape == (1, 2)


def test_bad_inputs():
    x, y = _independent(6, n=20, p=3, q=3)
    with pytest.raises(ValueError, match="n_permutations must be"):
        repsim.permutation_test(x, y, n_permutations=0)
    with pytest.raises(ValueError, match="no shift form"):
        repsim.permutation_test(x, y, "procrustes", scheme="shifts")
    with pytest.raises(ValueError, match="duplicated samples"):
        repsim.bootstrap(x, y, "rsa", scheme="replacement")
    with pytest.raises(ValueError, match="bca"):
        repsim.bootstrap(x, y, "linear_cka", method="bca")
    with pytest.raises(ValueError, match="ci must be"):
        repsim.bootstrap(x, y, ci=95)
    with pytest.raises(ValueError, match="model outputs"):
        repsim.permutation_test(x, y, "jsd")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        repsim.adjust_p_values([0.5, 1.5])


@pytest.mark.parametrize("n", [7, 8, 13])
def test_shifted_quadratic_equals_the_brute_force_sum(n):
    """All cyclic shifts from half the wrapped diagonals (symmetric inputs) equal the direct double sum."""
    from repsim.inference._shifts import shifted_quadratic

    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    b = torch.randn(n, n, generator=g, dtype=torch.float64)
    a, b = a + a.T, b + b.T
    idx = torch.arange(n)
    expected = torch.stack([(a * b[(idx[:, None] + s) % n, (idx[None, :] + s) % n]).sum() for s in range(n)])
    assert torch.allclose(shifted_quadratic(a, b), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("scheme", "method"), [("subsample", "percentile"), ("replacement", "bca")])
def test_blocks_resample_whole_blocks(scheme, method):
    # k exact copies of every sample, one block per sample: linear CKA of the copied data equals that
    # of the originals for any multiset of whole blocks (copying every row scales the covariances), so
    # resampling blocks of the copies must give exactly the sample bootstrap of the originals
    x, y = _independent(11, n=60, p=5, q=4)
    y = y + x[:, :4]
    k = 3
    ids = torch.arange(60).repeat_interleave(k)
    blocked = repsim.bootstrap(
        x.repeat_interleave(k, 0),
        y.repeat_interleave(k, 0),
        "linear_cka",
        n_resamples=100,
        scheme=scheme,
        method=method,
        blocks=ids,
    )
    plain = repsim.bootstrap(x, y, "linear_cka", n_resamples=100, scheme=scheme, method=method)
    assert torch.allclose(blocked.resamples, plain.resamples, atol=1e-12, rtol=0)
    assert blocked.ci_low == pytest.approx(plain.ci_low, abs=1e-12)
    assert blocked.ci_high == pytest.approx(plain.ci_high, abs=1e-12)
    if scheme == "subsample":  # the copies resampled one by one, as if 180 independent rows: ~1/sqrt(3) as wide
        naive = repsim.bootstrap(x.repeat_interleave(k, 0), y.repeat_interleave(k, 0), "linear_cka", n_resamples=100)
        assert naive.ci_high - naive.ci_low < 0.7 * (blocked.ci_high - blocked.ci_low)


def test_paired_blocks_and_bad_blocks():
    x, y = _independent(12, n=40, p=4, q=4)
    near, far = x + 0.3 * y, x + 2.0 * y
    ids = torch.arange(40).repeat_interleave(2)
    twice = [t.repeat_interleave(2, 0) for t in (x, near, far)]
    blocked = repsim.compare_paired(*twice, "linear_cka", n_resamples=60, blocks=ids)
    plain = repsim.compare_paired(x, near, far, "linear_cka", n_resamples=60)
    assert torch.allclose(blocked.resamples, plain.resamples, atol=1e-12, rtol=0)
    assert blocked.p_value == plain.p_value and blocked.ci_low == pytest.approx(plain.ci_low, abs=1e-12)
    with pytest.raises(ValueError, match="blocks has 39 labels but there are 40 samples"):
        repsim.bootstrap(x, y, blocks=torch.arange(39))
    with pytest.raises(ValueError, match="blocks: 2 distinct blocks"):
        repsim.bootstrap(x, y, blocks=torch.arange(40) % 2)


def test_more_permutations_than_shifts_draws_random_ones(gen):
    """Issue 32: n_permutations=1000 at n = 200 silently ran the 199 cyclic shifts. Now B is what was asked:
    past n - 1, scheme='auto' draws random permutations; an explicit scheme='shifts' is refused."""
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = x[:, :4] + torch.randn(40, 4, generator=gen, dtype=torch.float64)
    few = repsim.permutation_test(x, y, "linear_cka", 39, seed=0)
    assert few.scheme == "shifts" and few.n_permutations == 39
    many = repsim.permutation_test(x, y, "linear_cka", 120, seed=0)
    assert many.scheme == "random" and many.n_permutations == 120 and many.null.unique().numel() > 39
    assert many.p_value == pytest.approx(1 / 121)  # strongly related: no permutation reaches the statistic
    with pytest.raises(ValueError, match=r"n_permutations=120 exceeds the n - 1 = 39 cyclic shifts"):
        repsim.permutation_test(x, y, "linear_cka", 120, scheme="shifts")


def test_inference_progress_counts_resamples_for_an_estimate(gen, capsys):
    """Issue 32: the inference bar counted cells, so it gave no estimate in real units; it counts resamples."""
    from repsim.inference.grid import inference_table

    xs = [torch.randn(30, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    table = inference_table(xs, xs[:1], ["a1", "a2"], ["b1"], ["linear_cka"], permutations=9, bootstrap_resamples=11,
                            progress=True)  # fmt: skip
    assert len(table) == 2
    err = capsys.readouterr().err
    assert "40/40" in err and "resample" in err  # 2 cells x (9 + 11)
