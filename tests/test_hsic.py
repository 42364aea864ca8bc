import pytest
import torch

import repsim
from tests import reference


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_matches_textbook(gen, estimator):
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    y = x[:, :2] @ torch.randn(2, 4, generator=gen, dtype=torch.float64)
    k, l = repsim.rbf_gram(x), y @ y.T
    f = reference.hsic_unbiased if estimator == "unbiased" else reference.hsic_biased
    assert repsim.hsic(k, l, estimator=estimator).item() == pytest.approx(f(k.numpy(), l.numpy()), rel=1e-12)


def test_biased_hsic_closed_form():
    # K = L = H (the centring matrix itself, n = 4): tr(HHHH)/(n-1)^2 = tr(H)/9 = 3/9.
    h = torch.eye(4, dtype=torch.float64) - 0.25
    assert repsim.hsic(h, h).item() == pytest.approx(1 / 3, abs=1e-15)


def test_unbiased_hsic_is_shift_invariant(gen):
    x = torch.randn(25, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(25, 3, generator=gen, dtype=torch.float64) + x[:, :3]
    xs = x + torch.tensor([10.0, -3.0, 0.5, 100.0], dtype=torch.float64)
    a = repsim.hsic(x @ x.T, y @ y.T, estimator="unbiased")
    b = repsim.hsic(xs @ xs.T, y @ y.T, estimator="unbiased")
    assert a.item() == pytest.approx(b.item(), rel=1e-9)


def test_unbiased_hsic_needs_four_samples():
    k = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="n >= 4"):
        repsim.hsic(k, k, estimator="unbiased")


def test_rejects_non_square_and_unknown_estimator():
    with pytest.raises(ValueError, match="square"):
        repsim.hsic(torch.ones(4, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match="estimator must be one of"):
        repsim.hsic(torch.eye(4), torch.eye(4), estimator="fancy")
