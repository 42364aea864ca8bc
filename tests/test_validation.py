import math

import pytest
import torch

import repsim

GOOD = torch.randn(10, 3)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: repsim.linear_cka(x, y),
        lambda x, y: repsim.linear_cka(x, y, debiased=True),
        lambda x, y: repsim.kernel_cka(x, y),
        lambda x, y: repsim.rsa(x, y),
        lambda x, y: repsim.gram_gap(x, y),
        lambda x, y: repsim.cka_grid([x], [y]),
        lambda x, y: repsim.rsa_grid([x], [y]),
    ],
)
class TestEveryMeasureRejectsBadInput:
    def test_mismatched_samples(self, call):
        with pytest.raises(ValueError, match="samples"):
            call(GOOD, torch.randn(9, 3))

    def test_nan_and_inf(self, call):
        for bad in (math.nan, math.inf):
            x = GOOD.clone()
            x[3, 1] = bad
            with pytest.raises(ValueError, match="NaN or Inf"):
                call(x, GOOD)

    def test_not_two_dimensional(self, call):
        with pytest.raises(ValueError, match="2-D"):
            call(torch.randn(10, 3, 2, 2), GOOD)
        with pytest.raises(ValueError, match="2-D"):
            call(torch.randn(10), GOOD)

    def test_too_few_samples(self, call):
        with pytest.raises(ValueError, match="samples"):
            call(GOOD[:1], GOOD[:1])

    def test_not_a_tensor(self, call):
        with pytest.raises(ValueError, match="must be"):
            call([[1.0, 2.0]], GOOD)


@pytest.mark.parametrize("call", [repsim.linear_cka, repsim.kernel_cka, lambda x, y: repsim.cka_grid([x], [y])])
def test_constant_features_are_refused(call):
    with pytest.raises(ValueError, match="constant"):
        call(torch.full((10, 3), 2.0), GOOD)


def test_debiased_needs_four_samples():
    with pytest.raises(ValueError, match="n >= 4"):
        repsim.linear_cka(GOOD[:3], GOOD[:3], debiased=True)


def test_error_names_argument_and_fix():
    with pytest.raises(ValueError, match=r"y has 9 samples.*x has 10|x has 10 samples .* but y has 9"):
        repsim.linear_cka(GOOD, torch.randn(9, 3))
    with pytest.raises(ValueError, match=r"x must be 2-D .* x\.flatten\(1\)"):
        repsim.linear_cka(torch.randn(10, 3, 4), GOOD)


def test_unknown_options():
    with pytest.raises(ValueError, match="method must be one of"):
        repsim.linear_cka(GOOD, GOOD, method="magic")
    with pytest.raises(ValueError, match="kernel must be one of"):
        repsim.kernel_cka(GOOD, GOOD, kernel="poly")
    with pytest.raises(ValueError, match="sigma must be positive"):
        repsim.kernel_cka(GOOD, GOOD, sigma=0)
    with pytest.raises(ValueError, match="compare must be one of"):
        repsim.rsa(GOOD, GOOD, compare="cosine")
    with pytest.raises(ValueError, match="floating dtype"):
        repsim.linear_cka(GOOD, GOOD, dtype=torch.int32)
