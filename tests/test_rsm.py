"""RSM family: distance correlation, eigenspace overlap, GULP, RSM norm difference."""

import math

import numpy as np
import pytest
import torch

import repsim
from repsim.measures import rsm
from repsim.measures.moments import StreamingMoments

from . import reference_rsm_stats as ref
from .conftest import related


def _np(t):
    return t.numpy()


# ---------------------------------------------------------------- references
@pytest.mark.parametrize("bias_corrected", [False, True])
def test_distance_correlation_matches_reference(gen, bias_corrected):
    x, y = related(gen, n=60, p=7, q=5)
    got = repsim.distance_correlation(x, y, debiased=bias_corrected)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(ref.dcor(_np(x), _np(y), bias_corrected), abs=1e-12)


def test_distance_correlation_closed_forms(gen):
    x = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(400, 2, generator=gen, dtype=torch.float64)
    assert repsim.distance_correlation(x, y) < 0.2  # independent: V-statistic dCor = O(n^-1/2)
    assert abs(repsim.distance_correlation(x, y, debiased=True)) < 0.02  # unbiased: ~0, may be < 0
    assert repsim.distance_correlation(x, x) == pytest.approx(1.0, abs=1e-12)
    # dCor detects a non-linear (non-monotone) dependence that Pearson misses
    t = torch.randn(400, 1, generator=gen, dtype=torch.float64)
    assert repsim.distance_correlation(t, t**2) > 0.3


def test_distance_correlation_row_blocks_equal_one_block(gen, monkeypatch):
    xs = [related(gen, n=50)[0], related(gen, n=50)[1]]
    whole = repsim.measure_grid(xs, None, "distance_correlation")
    monkeypatch.setattr(rsm, "_BLOCK_ELEMENTS", 7 * 50)  # 3-4 rows per block across 2 layers
    blocked = repsim.measure_grid(xs, None, "distance_correlation")
    assert torch.allclose(whole, blocked, rtol=0, atol=1e-12)


@pytest.mark.parametrize("normalizer", ["rank", "width"])
def test_eigenspace_overlap_matches_svd_reference(gen, normalizer):
    x, y = related(gen, n=40, p=6, q=4)
    y = torch.cat([y, y[:, :1] + y[:, 1:2]], 1)  # rank-deficient y: rank 4, width 5
    got = repsim.eigenspace_overlap(x, y, normalizer=normalizer)
    assert got.item() == pytest.approx(ref.eigenspace_overlap(_np(x), _np(y), normalizer), abs=1e-12)


def test_eigenspace_overlap_closed_forms(gen):
    x, y = related(gen, n=50, p=5, q=8)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    assert repsim.eigenspace_overlap(x, x @ a).item() == pytest.approx(1.0, abs=1e-10)
    dup = torch.cat([x, x[:, :2] * 3.0], 1)  # same column space, larger width
    assert repsim.eigenspace_overlap(x, dup).item() == pytest.approx(1.0, abs=1e-10)
    assert repsim.eigenspace_overlap(x, dup, normalizer="width").item() == pytest.approx(5 / 7, abs=1e-10)
    # wide x (p > n): its column space is all of R^n, so it contains y's
    wide = torch.randn(10, 30, generator=gen, dtype=torch.float64)
    assert repsim.eigenspace_overlap(wide, y[:10]).item() == pytest.approx(8 / 10, abs=1e-10)
    assert 0 <= repsim.eigenspace_overlap(x, y) <= 1


@pytest.mark.parametrize("lam", [0.0, 0.1, 2.0])
def test_gulp_matches_paper_formula(gen, lam):
    x, y = related(gen, n=80, p=6, q=4)
    got = repsim.gulp(x, y, lam=lam)
    assert got.item() == pytest.approx(ref.gulp(_np(x), _np(y), lam), abs=1e-10)


def test_gulp_closed_forms(gen):
    x, y = related(gen, n=80, p=6, q=4)
    assert repsim.gulp(x, x).item() == 0.0
    assert repsim.gulp(x, x.clone(), lam=0.5).item() == 0.0
    # lam = 0: only the centred column space matters, so an affine map or a redundant column does not change it
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    assert repsim.gulp(x @ a + 3.0, y).item() == pytest.approx(repsim.gulp(x, y).item(), abs=1e-9)
    redundant = torch.cat([y, y[:, :1] - y[:, 1:2]], 1)
    assert repsim.gulp(x, redundant).item() == pytest.approx(repsim.gulp(x, y).item(), abs=1e-9)
    # d_0^2 = r_x + r_y - 2 sum rho^2: independent large samples approach sqrt(r_x + r_y)
    big = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    other = torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    assert repsim.gulp(big, other).item() == pytest.approx(math.sqrt(5), abs=0.01)


def test_gulp_negative_square_clipped_only_within_tolerance():
    one = torch.tensor(1.0, dtype=torch.float64)
    assert rsm._gulp_distance(one, one, one + 1e-12, torch.float64).item() == 0.0
    with pytest.raises(ValueError, match="negative beyond rounding"):
        rsm._gulp_distance(one, one, one + 0.1, torch.float64)


def test_rsm_norm_difference_matches_reference(gen, monkeypatch):
    x, y = related(gen, n=45, p=5, q=3)
    want = ref.rsm_norm_difference(_np(x), _np(y))
    assert repsim.rsm_norm_difference(x, y).item() == pytest.approx(want, rel=1e-12)
    monkeypatch.setattr(rsm, "_BLOCK_ELEMENTS", 4 * 45)
    assert repsim.rsm_norm_difference(x, y).item() == pytest.approx(want, rel=1e-12)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    assert repsim.rsm_norm_difference(x, x @ q + 7.0).item() == pytest.approx(0.0, abs=1e-9)
    assert repsim.rsm_norm_difference(x, x).item() == 0.0


# ---------------------------------------------------------------- streaming and grids
@pytest.mark.parametrize(
    ("name", "options"),
    [("eigenspace_overlap", {}), ("eigenspace_overlap", {"normalizer": "width"}), ("gulp", {}), ("gulp", {"lam": 0.3})],
)
def test_streaming_equals_one_shot_with_large_offsets(gen, name, options):
    x, y = related(gen, n=130, p=6, q=5)
    x, y = torch.relu(x) + 1000.0, y - 1000.0
    acc = StreamingMoments()
    for i in range(0, 130, 17):
        acc.update(x[i : i + 17], y[i : i + 17])
    one_shot = repsim.measure(x, y, name, **options)
    assert acc.compute(name, **options).item() == pytest.approx(one_shot.item(), abs=1e-10)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("distance_correlation", {}),
        ("distance_correlation", {"debiased": True}),
        ("eigenspace_overlap", {}),
        ("gulp", {"lam": 0.1}),
        ("rsm_norm_difference", {}),
    ],
)
def test_grid_equals_pair_loop(gen, name, options):
    x, y = related(gen, n=40, p=6, q=4)
    z = torch.randn(40, 3, generator=gen, dtype=torch.float64) + 5.0
    xs, ys = [x, y, z], [z, x]
    grid = repsim.measure_grid(xs, ys, name, **options)
    loop = torch.stack([torch.stack([repsim.measure(a, b, name, **options) for b in ys]) for a in xs])
    assert grid.shape == (3, 2) and grid.dtype == torch.float64
    assert torch.allclose(grid, loop, rtol=1e-12, atol=1e-12)
    self_grid = repsim.measure_grid(xs, None, name, **options)
    assert torch.allclose(self_grid, self_grid.T, atol=1e-12)


def test_float32_inputs_run_in_float32_and_agree(gen):
    x, y = related(gen, n=60, p=6, q=4)
    for name in ("distance_correlation", "eigenspace_overlap", "gulp", "rsm_norm_difference"):
        want = repsim.measure(x, y, name)
        got = repsim.measure(x.float(), y.float(), name)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-4)


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_are_clear_errors(gen):
    x, y = related(gen, n=30, p=4, q=3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        repsim.distance_correlation(x.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="samples"):
        repsim.gulp(x, y[:20])
    with pytest.raises(ValueError, match="n >= 4"):
        repsim.distance_correlation(x[:3], y[:3], debiased=True)
    with pytest.raises(ValueError, match="constant across samples"):
        repsim.distance_correlation(torch.ones(10, 2), y[:10])
    with pytest.raises(ValueError, match="constant across samples"):
        repsim.gulp(torch.ones(10, 2), y[:10])
    with pytest.raises(ValueError, match="normalizer must be one of"):
        repsim.eigenspace_overlap(x, y, normalizer="max")
    with pytest.raises(ValueError, match="rtol must be"):
        repsim.eigenspace_overlap(x, y, rtol=2.0)
    with pytest.raises(ValueError, match="lam must be"):
        repsim.gulp(x, y, lam=-1.0)
    with pytest.raises(ValueError, match="constant across samples"):  # all zeros: constant, refused first
        repsim.eigenspace_overlap(torch.zeros(30, 2, dtype=torch.float64), y)
    with pytest.raises(ValueError, match="two samples"):
        repsim.rsm_norm_difference(x[:1], y[:1])
    with pytest.raises(ValueError, match="2-D"):
        repsim.rsm_norm_difference(x[:, :, None], y)


def test_grid_errors_name_the_layer(gen):
    x, _ = related(gen, n=4, p=2, q=2)
    # four samples, two distinct: the U-centred distance variance is 0 (too few distinct samples)
    few = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"distance variance of xs\[1\] is not positive"):
        repsim.distance_correlation.grid([x, few], debiased=True)
    with pytest.raises(ValueError, match=r"distance variance of ys\[0\] is not positive"):
        repsim.distance_correlation.grid([x], [few], debiased=True)
    with pytest.raises(ValueError, match=r"distance variance of y is not positive"):
        repsim.distance_correlation(x, few, debiased=True)
    # an all-zero layer only reaches the column-space check through streamed moments
    acc = StreamingMoments()
    acc.update(x, torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^a representation is all zeros"):
        acc.compute("eigenspace_overlap")
    with pytest.raises(ValueError, match=r"ys\[0\] is constant"):  # the one-shot and grid routes refuse it first
        repsim.eigenspace_overlap.grid([x], [torch.zeros(4, 2, dtype=torch.float64)])


def test_registry_declarations():
    table = repsim.list_measures().set_index("name")
    for name in ("distance_correlation", "eigenspace_overlap", "gulp", "rsm_norm_difference"):
        assert table.loc[name, "family"] == "rsm" and table.loc[name, "batched"]
    assert table.loc["eigenspace_overlap", "streaming"] and table.loc["gulp", "streaming"]
    assert not table.loc["distance_correlation", "streaming"]
    assert table.loc["gulp", "metric"] and table.loc["rsm_norm_difference", "metric"]
    assert not table.loc["eigenspace_overlap", "inv_translation"]
    assert np.isclose(table.loc["distance_correlation", "identity_value"], 1.0)


def test_eigenspace_overlap_keeps_precision_under_a_large_mean(gen):
    # The uncentred Gram of x + 1000 has condition ~1e8; the moment route never forms it.
    x, y = related(gen, n=40, p=6, q=4)
    x, y = x + 1000.0, y - 300.0
    want = ref.eigenspace_overlap(x.numpy(), y.numpy())
    assert repsim.eigenspace_overlap(x, y).item() == pytest.approx(want, abs=1e-9)


def _feature_maps(x, gen):
    p = x.shape[1]
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    a = torch.randn(p, p, generator=gen, dtype=torch.float64)
    b = 3 * torch.randn(p, generator=gen, dtype=torch.float64)
    return {
        "orthogonal": x @ q,
        "isotropic_scaling": 2.7 * x,
        "translation": x + b,
        "permutation": x[:, torch.randperm(p, generator=gen)],
        "invertible_linear": x @ a,
        "affine": x @ a + b,
    }


@pytest.mark.parametrize(
    "name",
    [
        "distance_correlation",
        "eigenspace_overlap",
        "gulp",
        "rsm_norm_difference",
        "magnitude_difference",
        "concentricity_difference",
        "uniformity_difference",
    ],
)
def test_declared_invariances_hold_and_the_others_fail(gen, name):
    info = repsim.get_measure(name)
    x, y = related(gen, n=40, p=5, q=4)
    x, y = x + 1.0, y + 0.5
    base = repsim.measure(x, y, name)
    for inv, xt in _feature_maps(x, gen).items():
        same = abs(repsim.measure(xt, y, name).item() - base.item()) < 1e-8 * max(1.0, abs(base.item()))
        assert same == (inv in info.invariances), (name, inv)
    assert repsim.measure(y, x, name).item() == pytest.approx(base.item(), abs=1e-12)
    assert repsim.measure(x, x.clone(), name).item() == pytest.approx(info.identity_value, abs=1e-12)


@pytest.mark.parametrize(("name", "options"), [("gulp", {}), ("gulp", {"lam": 0.5}), ("rsm_norm_difference", {})])
def test_metrics_satisfy_the_triangle_inequality(gen, name, options):
    for _ in range(15):
        a, b, c = (
            torch.randn(15, int(w), generator=gen, dtype=torch.float64)
            for w in torch.randint(1, 5, (3,), generator=gen)
        )
        d = lambda u, v: repsim.measure(u, v, name, **options).item()  # noqa: E731
        assert d(a, c) <= d(a, b) + d(b, c) + 1e-12
