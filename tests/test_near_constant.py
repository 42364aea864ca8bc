"""Near-constant inputs: constant up to rounding is refused like exactly constant (issue 12)."""

import pytest
import torch

import repsim
from repsim.streaming import StreamingLinearCKA


def _near_constant(gen, n=40, d=5, noise=1e-12, dtype=torch.float64, offset=1.0):
    row = offset + torch.rand(1, d, generator=gen, dtype=torch.float64)
    return (row + noise * torch.randn(n, d, generator=gen, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: repsim.linear_cka(x, y),
        lambda x, y: repsim.linear_cka(y, x, debiased=True),
        lambda x, y: repsim.rsa(x, y),
        lambda x, y: repsim.rsa(y, x, rdm="correlation", compare="spearman"),
        lambda x, y: repsim.cka_grid([y, x]),
    ],
)
def test_rows_equal_up_to_rounding_are_refused(gen, call):
    x = _near_constant(gen)
    y = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="constant"):
        call(x, y)


def test_float32_near_constant_is_refused(gen):
    x = _near_constant(gen, noise=1e-5, dtype=torch.float32, offset=1e3)
    y = torch.randn(40, 3, generator=gen)
    with pytest.raises(ValueError, match="x is constant"):
        repsim.linear_cka(x, y)


def test_small_variation_on_large_offset_is_accepted(gen):
    # post-ReLU-like: mean 1e3, spread 1e-2 (relative range ~1e-5, well above float32 rounding)
    x = 1e3 + 1e-2 * torch.randn(200, 8, generator=gen)
    value = repsim.linear_cka(x, x.flip(1))
    assert torch.isclose(value, torch.tensor(1.0, dtype=torch.float64), atol=1e-4)


def test_streaming_near_constant_layer_is_refused(gen):
    acc = StreamingLinearCKA()
    row = torch.rand(1, 4, generator=gen, dtype=torch.float64)
    for _ in range(3):
        x = row + 1e-13 * torch.randn(16, 4, generator=gen, dtype=torch.float64)
        acc.update(x, torch.randn(16, 3, generator=gen, dtype=torch.float64))
    with pytest.raises(ValueError, match="constant"):
        acc.compute()


def test_near_constant_rows_are_refused_by_every_family():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(1, 6, generator=g) * 3 + 5
    x = (v + 3e-8 * torch.randn(40, 6, generator=g)).float()  # the same row up to float32 rounding (1-2 ulps)
    y = torch.randn(40, 5, generator=g)
    assert not bool((x == x[0]).all())  # not exactly constant
    for name in ("rsa", "linear_cka", "procrustes"):
        with pytest.raises(ValueError, match="constant"):
            repsim.measure(x, y, name)
