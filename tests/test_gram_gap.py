import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import repsim


def _normalised(x):
    return x / x.norm(dim=1, keepdim=True)


def test_gap_definition(gen):
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    y = x + 0.3 * torch.randn(30, 6, generator=gen, dtype=torch.float64)
    res = repsim.gram_gap(x, y)
    sa, sb = _normalised(x) @ _normalised(x).T, _normalised(y) @ _normalised(y).T
    assert res.frobenius_gap.item() == pytest.approx(torch.linalg.norm(sa - sb).item(), abs=1e-12)
    h = torch.eye(30, dtype=torch.float64) - 1 / 30
    rho = torch.linalg.norm(h @ sa @ h - h @ sb @ h) / torch.linalg.norm(h @ sa @ h)
    assert res.relative_centered_gap.item() == pytest.approx(rho.item(), abs=1e-12)
    assert rho < 1
    assert res.cka_lower_bound.item() == pytest.approx(((1 - rho) / (1 + rho)).item(), abs=1e-12)


def test_vacuous_bounds_are_the_trivial_values(gen):
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    res = repsim.gram_gap(x, -x[torch.randperm(12, generator=gen)] + 0.1)
    assert res.relative_centered_gap > 1 and res.rdm_distance_ratio > 1
    assert res.cka_lower_bound.item() == 0.0 and res.rsa_lower_bound.item() == -1.0


def test_identical_inputs_have_zero_gap_and_unit_bounds(gen):
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    res = repsim.gram_gap(x, 2 * x)  # row normalisation removes the scale
    assert res.frobenius_gap.item() == pytest.approx(0, abs=1e-12)
    assert res.cka_lower_bound.item() == pytest.approx(1, abs=1e-12)
    assert res.rsa_lower_bound.item() == pytest.approx(1, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 30), d=st.integers(2, 10), noise=st.floats(0.0, 2.0), seed=st.integers(0, 10_000))
def test_bounds_hold(n, d, noise, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    res = repsim.gram_gap(x, y)
    zx, zy = _normalised(x), _normalised(y)
    assert repsim.linear_cka(zx, zy).item() >= res.cka_lower_bound.item() - 1e-9
    assert repsim.rsa(x, y, rdm="cosine").item() >= res.rsa_lower_bound.item() - 1e-9


def test_named_result_fields():
    res = repsim.gram_gap(torch.randn(8, 3), torch.randn(8, 3))
    assert set(res._fields) == {
        "frobenius_gap",
        "relative_centered_gap",
        "cka_lower_bound",
        "rdm_distance_ratio",
        "rsa_lower_bound",
    }
