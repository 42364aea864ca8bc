import pytest
import torch

import repsim


def test_near_constant_rows_are_refused():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 6, generator=g) * 3 + 5
    x = (v + 2e-7 * torch.randn(40, 6, generator=g)).float()  # the same row up to float32 rounding
    y = torch.randn(40, 5, generator=g)
    assert not bool((x == x[0]).all())  # not exactly constant
    for name in ("rsa", "linear_cka", "procrustes"):
        with pytest.raises(ValueError, match="constant"):
            repsim.measure(name, x, y)
