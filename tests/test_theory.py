import math

import pytest
import torch

import repsim
from zoo import theory


def test_formulas_by_hand():
    eps = math.sqrt(math.log(100 * 64 / 0.1) / 128)
    assert theory.epsilon(64, 100, 0.1) == pytest.approx(eps, rel=1e-15)
    d = 2 * math.exp(2 / 0.5) * (1 / 10 + eps) / (1 - 1 / 10 - eps)
    assert theory.delta_ratio(10, 64, 0.5, 100, 0.1) == pytest.approx(d, rel=1e-15)
    lrs = [0.1] * 100
    expected = math.exp(10 / (2 * 0.25 * 64)) * 10 / (0.5 * 8) * d
    assert theory.gap_bound(lrs, 64, 10, 0.5, 0.1) == pytest.approx(expected, rel=1e-12)


def test_predicted_trends():
    lrs = [0.05] * 200
    # alignment rises (bound falls) with C and with tau
    assert theory.gap_bound(lrs, 256, 100, 0.5) < theory.gap_bound(lrs, 256, 10, 0.5)
    assert theory.gap_bound(lrs, 256, 10, 1.0) < theory.gap_bound(lrs, 256, 10, 0.5)
    # no steps, no gap; vacuous cases are infinite rather than negative
    assert theory.gap_bound([], 256, 10, 0.5) == 0.0
    assert math.isinf(theory.delta_ratio(2, 4, 0.5, 1000, 0.01))


def test_lower_bounds_hold_and_agree_with_gram_gap():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    y = x + 0.2 * torch.randn(40, 8, generator=g, dtype=torch.float64)
    zx, zy = (torch.nn.functional.normalize(t, dim=1) for t in (x, y))
    sx = zx @ zx.T
    gap = float((sx - zy @ zy.T).norm())
    measured = repsim.gram_gap(x, y)
    assert theory.cka_lower_bound(gap, sx) <= measured.cka_lower_bound.item() + 1e-12
    assert theory.cka_lower_bound(gap, sx) <= repsim.linear_cka(zx, zy).item()
    assert theory.rsa_lower_bound(gap, sx) == pytest.approx(measured.rsa_lower_bound.item(), rel=1e-9)
    assert theory.cka_lower_bound(math.inf, sx) == 0.0 and theory.rsa_lower_bound(1e9, sx) == -1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="delta"):
        theory.epsilon(10, 10, 1.5)
    with pytest.raises(ValueError, match="classes"):
        theory.delta_ratio(1, 10, 0.5, 10, 0.1)
