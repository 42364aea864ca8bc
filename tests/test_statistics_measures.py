"""Statistics family: magnitude, concentricity and uniformity differences."""

import math

import pytest
import torch

import repsim
from repsim.measures import statistics
from repsim.measures.moments import StreamingMoments

from . import reference_rsm_stats as ref
from .conftest import related


@pytest.mark.parametrize("statistic", ["mean_row_norm", "norm_of_mean"])
def test_magnitude_difference_matches_reference(gen, statistic):
    x, y = related(gen, n=50)
    x = x + 2.0
    f = ref.mean_row_norm if statistic == "mean_row_norm" else ref.norm_of_mean
    got = repsim.magnitude_difference(x, y, statistic=statistic)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(abs(f(x.numpy()) - f(y.numpy())), abs=1e-12)


@pytest.mark.parametrize("statistic", ["mean_row_norm", "norm_of_mean"])
def test_magnitude_difference_streams_exactly_with_large_offsets(gen, statistic):
    x, y = related(gen, n=140)
    x, y = torch.relu(x) + 1000.0, y - 1000.0
    acc = StreamingMoments()
    for i in range(0, 140, 19):
        acc.update(x[i : i + 19], y[i : i + 19])
    one_shot = repsim.magnitude_difference(x, y, statistic=statistic)
    assert acc.compute("magnitude_difference", statistic=statistic).item() == pytest.approx(one_shot.item(), abs=1e-10)


def test_concentricity_difference_matches_reference(gen):
    x, y = related(gen, n=50)
    x, y = x + 1.0, y - 0.5
    want = abs(ref.concentricity(x.numpy()) - ref.concentricity(y.numpy()))
    assert repsim.concentricity_difference(x, y).item() == pytest.approx(want, abs=1e-12)
    # closed form: all rows along one direction -> concentricity 1
    line = torch.rand(30, 1, generator=gen, dtype=torch.float64) + 0.1
    assert statistics.concentricity(line * torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)).item() == (
        pytest.approx(1.0, abs=1e-12)
    )


@pytest.mark.parametrize(("t", "normalize"), [(2.0, True), (0.5, True), (2.0, False)])
def test_uniformity_matches_double_loop(gen, t, normalize):
    x, y = related(gen, n=30, p=5, q=4)
    if not normalize:
        x, y = x * 0.3, y * 0.3  # keep the naive double loop away from underflow
    want = abs(ref.uniformity(x.numpy(), t, normalize) - ref.uniformity(y.numpy(), t, normalize))
    got = repsim.uniformity_difference(x, y, t=t, normalize=normalize)
    assert got.item() == pytest.approx(want, abs=1e-11)


def test_uniformity_block_path_and_closed_forms(gen, monkeypatch):
    x = related(gen, n=41)[0]
    whole = statistics.uniformity(x)
    monkeypatch.setattr(statistics, "_BLOCK_ELEMENTS", 3 * 41)
    assert statistics.uniformity(x).item() == pytest.approx(whole.item(), abs=1e-12)
    # two antipodal unit vectors: |z1 - z2|^2 = 4, U = -4 t
    pair = torch.tensor([[1.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    assert statistics.uniformity(pair).item() == pytest.approx(-8.0, abs=1e-12)
    # raw features far apart: exp underflows to 0 in a naive mean, the log-sum-exp stays exact
    far = torch.tensor([[0.0], [100.0], [300.0]], dtype=torch.float64)
    # pairs at squared distances 1e4, 4e4, 9e4: log((e^-2e4 + e^-8e4 + e^-18e4) / 3) = -2e4 - log 3 (to 1e-20000)
    want = -2 * 100.0**2 - math.log(3)
    assert statistics.uniformity(far, normalize=False).item() == pytest.approx(want, rel=1e-12)
    assert uniform_sphere_less_than_clustered(gen)


def uniform_sphere_less_than_clustered(gen) -> bool:
    spread = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    clustered = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64) + 0.05 * spread
    return bool(statistics.uniformity(spread) < statistics.uniformity(clustered))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("magnitude_difference", {}),
        ("magnitude_difference", {"statistic": "norm_of_mean"}),
        ("concentricity_difference", {}),
        ("uniformity_difference", {}),
        ("uniformity_difference", {"t": 1.0, "normalize": False}),
    ],
)
def test_grid_equals_pair_loop(gen, name, options):
    x, y = related(gen, n=40, p=6, q=4)
    z = torch.randn(40, 3, generator=gen, dtype=torch.float64) + 2.0
    xs, ys = [x + 1.0, y, z], [z, x + 1.0]
    grid = repsim.measure_grid(xs, ys, name, **options)
    loop = torch.stack([torch.stack([repsim.measure(a, b, name, **options) for b in ys]) for a in xs])
    assert grid.shape == (3, 2) and grid.dtype == torch.float64
    assert torch.allclose(grid, loop, rtol=0, atol=1e-13)
    assert (repsim.measure_grid(xs, None, name, **options).diagonal() == 0).all()


def test_bad_inputs_are_clear_errors(gen):
    x, y = related(gen, n=20)
    with pytest.raises(ValueError, match="statistic must be one of"):
        repsim.magnitude_difference(x, y, statistic="median")
    with pytest.raises(ValueError, match="all-zero rows"):
        repsim.concentricity_difference(torch.cat([x[:-1], torch.zeros(1, x.shape[1], dtype=x.dtype)]), y)
    centred = x - x.mean(0)
    with pytest.raises(ValueError, match="mean representation of x is the zero vector"):
        repsim.concentricity_difference(centred, y)
    with pytest.raises(ValueError, match="t must be a positive number"):
        repsim.uniformity_difference(x, y, t=0.0)
    with pytest.raises(ValueError, match="pairs of samples"):
        repsim.uniformity_difference(x[:1], y[:1])
    with pytest.raises(ValueError, match="samples"):
        repsim.magnitude_difference(x, y[:10])
    with pytest.raises(ValueError, match="NaN or Inf"):
        repsim.uniformity_difference(x.clone().fill_(float("inf")), y)


def test_errors_name_the_argument_that_is_wrong(gen):
    x, y = related(gen, n=20)
    zero_row = torch.cat([y[:-1], torch.zeros(1, y.shape[1], dtype=y.dtype)])
    centred = y - y.mean(0)
    with pytest.raises(ValueError, match=r"^y has 1 all-zero rows"):
        repsim.concentricity_difference(x + 1, zero_row)
    with pytest.raises(ValueError, match="mean representation of y is the zero vector"):
        repsim.concentricity_difference(x + 1, centred)
    with pytest.raises(ValueError, match=r"^y has 1 all-zero rows"):
        repsim.uniformity_difference(x, zero_row)
    with pytest.raises(ValueError, match=r"^y contains 20 NaN or Inf"):
        repsim.magnitude_difference(x, y.clone().fill_(float("inf"))[:, :1])
    # grids name the layer: xs[k] / ys[k]
    with pytest.raises(ValueError, match=r"mean representation of xs\[1\] is the zero vector"):
        repsim.concentricity_difference.grid([x + 1, centred])
    with pytest.raises(ValueError, match=r"^ys\[1\] has 1 all-zero rows"):
        repsim.concentricity_difference.grid([x + 1], [y + 1, zero_row])
    with pytest.raises(ValueError, match=r"^ys\[0\] has 1 all-zero rows"):
        repsim.uniformity_difference.grid([x], [zero_row])


def test_registry_declarations():
    table = repsim.list_measures().set_index("name")
    for name in ("magnitude_difference", "concentricity_difference", "uniformity_difference"):
        row = table.loc[name]
        assert row["family"] == "statistics" and not row["larger_is_more_similar"] and not row["metric"]
        assert row["identity_value"] == 0.0 and row["batched"]
    assert table.loc["magnitude_difference", "streaming"]
    assert not table.loc["magnitude_difference", "inv_isotropic_scaling"]
    assert table.loc["uniformity_difference", "inv_isotropic_scaling"]


def test_concentricity_streams_exactly_with_its_accumulator(gen):
    x, y = related(gen, n=140)
    x, y = torch.relu(x) + 1000.0, y - 3.0
    acc = repsim.get_measure("concentricity_difference").accumulator()
    for i in range(0, 140, 19):
        acc.update(x[i : i + 19], y[i : i + 19])
    assert acc.compute().item() == pytest.approx(repsim.concentricity_difference(x, y).item(), abs=1e-10)
    grid_acc = statistics.StreamingConcentricity()
    for i in range(0, 140, 33):
        grid_acc.update([x[i : i + 33], y[i : i + 33]])
    assert torch.allclose(grid_acc.compute(), repsim.measure_grid([x, y], None, "concentricity_difference"), atol=1e-10)
    with pytest.raises(ValueError, match="no samples"):
        statistics.StreamingConcentricity().compute()
    with pytest.raises(ValueError, match="different number of layers"):
        grid_acc.update([x[:5]])


def test_uniformity_float32_products_agree(gen):
    x, y = related(gen, n=60)
    want = repsim.uniformity_difference(x, y)
    assert repsim.uniformity_difference(x.float(), y.float()).item() == pytest.approx(want.item(), abs=1e-5)
    assert repsim.uniformity_difference(x.float(), y.float(), dtype=torch.float64).item() == pytest.approx(
        want.item(), abs=1e-6
    )
