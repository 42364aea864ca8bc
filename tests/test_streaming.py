import pytest
import torch

import repsim
from tests import reference
from tests.conftest import related


def _batches(n, size):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_equals_one_shot(gen, debiased):
    x, y = related(gen, n=301, p=24, q=17)
    x = torch.relu(x) + 50.0  # large positive mean, as after a ReLU
    acc = repsim.StreamingLinearCKA(debiased=debiased)
    for s in _batches(301, 37):
        acc.update(x[s], y[s])
    assert acc.n == 301
    one_shot = repsim.linear_cka(x, y, debiased=debiased).item()
    assert acc.compute().item() == pytest.approx(one_shot, abs=1e-10)
    # the textbook formula itself loses ~1e-7 on uncentred Grams with mean 50: feed it centred data
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    assert acc.compute().item() == pytest.approx(reference.linear_cka(xc, yc, debiased), abs=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_grid_equals_cka_grid(gen, debiased):
    x, y = related(gen, n=200)
    z = torch.randn(200, 5, generator=gen, dtype=torch.float64) * 3 + 7
    acc = repsim.StreamingLinearCKA(debiased=debiased)
    for s in _batches(200, 16):
        acc.update([x[s], y[s]], {"z": z[s], "x": x[s]})
    expected = repsim.cka_grid([x, y], [z, x], debiased=debiased)
    assert torch.allclose(acc.compute(), expected, atol=1e-10)
    # xs against itself
    acc = repsim.StreamingLinearCKA(debiased=debiased)
    for s in _batches(200, 50):
        acc.update([x[s], y[s], z[s]])
    assert torch.allclose(acc.compute(), repsim.cka_grid([x, y, z], debiased=debiased), atol=1e-10)


def test_streaming_memory_does_not_grow(gen):
    acc = repsim.StreamingLinearCKA()
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    acc.update(x, x)
    sizes = [t.numel() for t in (acc._cross.cross, acc._mx.total, *acc._mx.grams)]
    for _ in range(20):
        acc.update(torch.randn(10, 6, generator=gen, dtype=torch.float64), torch.randn(10, 6, generator=gen))
    assert [t.numel() for t in (acc._cross.cross, acc._mx.total, *acc._mx.grams)] == sizes


def test_minibatch_cka_matches_definition(gen):
    x, y = related(gen, n=120)
    acc = repsim.MinibatchCKA()
    kl = kk = ll = 0.0
    for s in _batches(120, 30):
        acc.update(x[s], y[s])
        k, l = (x[s] @ x[s].T).numpy(), (y[s] @ y[s].T).numpy()
        kl += reference.hsic_unbiased(k, l)
        kk += reference.hsic_unbiased(k, k)
        ll += reference.hsic_unbiased(l, l)
    assert acc.compute().item() == pytest.approx(kl / (kk * ll) ** 0.5, abs=1e-12)


def test_minibatch_cka_grid_and_small_batch_error(gen):
    x, y = related(gen, n=64)
    acc = repsim.MinibatchCKA()
    acc.update([x[:32], y[:32]], [y[:32]])
    assert acc.compute().shape == (2, 1)
    with pytest.raises(ValueError, match="at least 4 per batch"):
        acc.update([x[:3], y[:3]], [y[:3]])


def test_streaming_errors(gen):
    acc = repsim.StreamingLinearCKA()
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()
    acc.update(torch.ones(5, 3), torch.randn(5, 2, generator=gen))
    acc.update(torch.ones(5, 3), torch.randn(5, 2, generator=gen))
    with pytest.raises(ValueError, match="constant"):
        acc.compute()
    with pytest.raises(ValueError, match="different number of layers"):
        acc.update(torch.ones(5, 4), torch.randn(5, 2, generator=gen))
    with pytest.raises(ValueError, match="samples"):
        acc.update(torch.ones(5, 3), torch.randn(4, 2, generator=gen))
    acc = repsim.StreamingLinearCKA(debiased=True)
    acc.update(torch.randn(3, 3, generator=gen), torch.randn(3, 3, generator=gen))
    with pytest.raises(ValueError, match="needs at least 4"):
        acc.compute()


def _minibatch_reference(x, y, size):
    """sum_i HSIC_1(K_i, L_i) / sqrt(...) from the textbook unbiased estimator on float64 Grams of centred batches."""
    kl = kk = ll = 0.0
    for s in _batches(x.shape[0], size):
        xb, yb = x[s].double(), y[s].double()
        xb, yb = xb - xb.mean(0), yb - yb.mean(0)  # the estimator is shift-invariant; centring keeps float64 exact
        k, l = (xb @ xb.T).numpy(), (yb @ yb.T).numpy()
        kl += reference.hsic_unbiased(k, l)
        kk += reference.hsic_unbiased(k, k)
        ll += reference.hsic_unbiased(l, l)
    return kl / (kk * ll) ** 0.5


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_minibatch_float32_products_stay_honest_at_large_offsets(gen, offset):
    """The per-batch mean is removed in the product dtype before the product (issue 32's speed-up): float32
    features with an offset of 1e3 still give the float64 value to the float32 policy's 1e-6."""
    x, y = related(gen, n=200, p=300, q=40)
    x, y = (torch.relu(x) + offset).float(), (y + offset).float()
    expected = _minibatch_reference(x, y, 50)
    for dtype, tol in ((None, 1e-6), (torch.float64, 1e-12)):
        acc = repsim.MinibatchCKA(dtype=dtype)
        for s in _batches(200, 50):
            acc.update(x[s], y[s])
        assert acc.compute().item() == pytest.approx(expected, abs=tol), (dtype, offset)


def test_minibatch_refuses_nan_and_constant_layers_in_compute(gen):
    x, y = related(gen, n=64)
    bad = x.clone()
    bad[5, 2] = float("nan")
    acc = repsim.MinibatchCKA()
    acc.update([x[:32], bad[:32]], [y[:32]])  # no error in update: checked once, in compute
    acc.update([x[32:], bad[32:]], [y[32:]])
    with pytest.raises(ValueError, match="layer 1 of the stream contains NaN or Inf"):
        acc.compute()
    acc = repsim.MinibatchCKA()
    for s in _batches(64, 16):
        acc.update([x[s], torch.full((16, 3), 7.0)], [y[s]])
    with pytest.raises(ValueError, match="layer 1 of the stream is constant"):
        acc.compute()
    acc = repsim.MinibatchCKA()
    for s in _batches(64, 16):  # rounding-level spread on a large value: constant up to rounding
        acc.update([x[s]], [(1e4 + 1e-9 * torch.randn(16, 3, generator=gen, dtype=torch.float64)).float()])
    with pytest.raises(ValueError, match="layer 1 of the stream is constant"):
        acc.compute()
