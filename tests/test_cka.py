import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim
from tests import reference
from tests.conftest import related


def test_self_similarity_is_one(gen):
    x = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    assert repsim.linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert repsim.linear_cka(x, x, debiased=True).item() == pytest.approx(1.0, abs=1e-12)
    assert repsim.kernel_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("method", ["feature", "gram"])
def test_matches_textbook_formula(gen, debiased, method):
    x, y = related(gen)
    expected = reference.linear_cka(x.numpy(), y.numpy(), unbiased=debiased)
    got = repsim.linear_cka(x, y, debiased=debiased, method=method)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_kornblith_feature_space_formula(gen):
    x, y = related(gen)
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert repsim.linear_cka(x, y).item() == pytest.approx(expected, abs=1e-12)


def test_tiny_hand_computed_case():
    # x = (0, 1, 2), y = (0, 1, 4): centred xc = (-1, 0, 1), yc = (-5/3, -2/3, 7/3);
    # <xc, yc>^2 / (|xc|^2 |yc|^2) = 4^2 / (2 * 26/3) = 12/13.
    x = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0], [4.0]], dtype=torch.float64)
    assert repsim.linear_cka(x, y).item() == pytest.approx(12 / 13, abs=1e-14)


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(gen, debiased):
    x, y = related(gen)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=torch.float64))
    base = repsim.linear_cka(x, y, debiased=debiased)
    assert repsim.linear_cka(x, 3.7 * y @ q, debiased=debiased).item() == pytest.approx(base.item(), abs=1e-12)
    assert repsim.linear_cka(x + 5.0, y - 2.0, debiased=debiased).item() == pytest.approx(base.item(), abs=1e-12)


def test_not_invariant_to_general_linear_maps(gen):
    x, y = related(gen)
    a = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    a[:, 0] *= 30.0  # badly conditioned but invertible
    assert torch.linalg.matrix_rank(a).item() == 20
    assert abs(repsim.linear_cka(x, y @ a).item() - repsim.linear_cka(x, y).item()) > 0.05


def test_symmetric(gen):
    x, y = related(gen)
    for debiased in (False, True):
        assert repsim.linear_cka(x, y, debiased=debiased).item() == pytest.approx(
            repsim.linear_cka(y, x, debiased=debiased).item(), abs=1e-14
        )
    assert repsim.kernel_cka(x, y).item() == pytest.approx(repsim.kernel_cka(y, x).item(), abs=1e-14)


def test_debiased_near_zero_for_independent_wide_features(gen):
    x = torch.randn(64, 512, generator=gen, dtype=torch.float64)
    y = torch.randn(64, 512, generator=gen, dtype=torch.float64)
    biased = repsim.linear_cka(x, y).item()
    debiased = repsim.linear_cka(x, y, debiased=True).item()
    assert biased > 0.8  # the inflation Murphy et al. (2024) describe
    assert abs(debiased) < 0.05


def test_debiased_can_be_negative_and_is_not_clamped(gen):
    values = []
    for _ in range(20):
        x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
        y = torch.randn(10, 3, generator=gen, dtype=torch.float64)
        values.append(repsim.linear_cka(x, y, debiased=True).item())
    assert min(values) < 0


def test_float32_fast_path_is_close_and_survives_large_offsets(gen):
    x, y = related(gen, n=400, p=64, q=48)
    exact = repsim.linear_cka(x, y).item()
    # post-ReLU-like features with a huge mean: the peers' trap
    x32, y32 = (x + 1000.0).float(), (y + 1000.0).float()
    exact32 = repsim.linear_cka(x32.double(), y32.double()).item()
    assert repsim.linear_cka(x32, y32, dtype=torch.float32).item() == pytest.approx(exact32, abs=1e-5)
    assert repsim.linear_cka(x32, y32, dtype=None).item() == pytest.approx(exact32, abs=1e-5)
    assert exact32 == pytest.approx(exact, abs=1e-3)


def test_kernel_cka_matches_reference_rbf(gen):
    x, y = related(gen, n=60)
    for sigma in (0.5, 0.8, 2.0):
        kx, ky = reference.rbf(x.numpy(), sigma), reference.rbf(y.numpy(), sigma)
        assert repsim.kernel_cka(x, y, sigma=sigma).item() == pytest.approx(reference.cka(kx, ky), abs=1e-12)
        assert repsim.kernel_cka(x, y, sigma=sigma, debiased=True).item() == pytest.approx(
            reference.cka(kx, ky, unbiased=True), abs=1e-12
        )


def test_kernel_cka_linear_kernel_equals_linear_cka(gen):
    x, y = related(gen)
    assert repsim.kernel_cka(x, y, kernel="linear").item() == pytest.approx(repsim.linear_cka(x, y).item(), abs=1e-12)


def test_grid_matches_pairwise(gen):
    x, y = related(gen, n=80)
    z = torch.randn(80, 7, generator=gen, dtype=torch.float64)
    xs, ys = [x, y, z], [y, z, x[:, :3], x]
    for debiased in (False, True):
        for method in ("feature", "gram", "auto"):
            grid = repsim.cka_grid(xs, ys, debiased=debiased, method=method)
            assert grid.shape == (3, 4)
            for i, a in enumerate(xs):
                for j, b in enumerate(ys):
                    assert grid[i, j].item() == pytest.approx(
                        reference.linear_cka(a.numpy(), b.numpy(), unbiased=debiased), abs=1e-11
                    )


def test_grid_against_itself_has_unit_diagonal(gen):
    x, y = related(gen)
    grid = repsim.cka_grid({"a": x, "b": y})
    assert torch.allclose(grid.diagonal(), torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(grid, grid.T, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 40),
    p=st.integers(1, 12),
    q=st.integers(1, 12),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
    debiased=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_shapes_and_dtypes(n, p, q, dtype, debiased, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g).to(dtype)
    y = torch.randn(n, q, generator=g).to(dtype)
    try:
        value = repsim.linear_cka(x, y, debiased=debiased, dtype=torch.float64)
    except ValueError as err:  # only a refusal that says why, never a NaN
        assert "CKA is undefined" in str(err) or "constant" in str(err)
        return
    assert value.ndim == 0 and value.dtype == torch.float64 and torch.isfinite(value)
    expected = reference.linear_cka(x.double().numpy(), y.double().numpy(), unbiased=debiased)
    assert value.item() == pytest.approx(expected, abs=1e-9)
    if not debiased:
        assert -1e-12 <= value.item() <= 1 + 1e-12
    # the float32 fast path stays within float32 rounding of the exact value
    fast = repsim.linear_cka(x, y, debiased=debiased, dtype=torch.float32).item()
    assert fast == pytest.approx(expected, abs=1e-3 if debiased else 1e-4)


def test_numpy_input_and_integer_input_work():
    x = np.arange(20, dtype=np.int64).reshape(10, 2) ** 2
    y = np.random.default_rng(0).normal(size=(10, 3))
    assert repsim.linear_cka(x, y).item() == pytest.approx(reference.linear_cka(x, y), abs=1e-12)
