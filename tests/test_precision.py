"""The precision policy's documented error bound (docs/guide/measures.md, "Precision").

Default ``dtype=None`` on float32 features: float32 products, float64 centring and reductions.
Its error against the exact float64 path stays below the documented bound on adversarial features.
"""

import pytest
import torch

import repsim

# documented bounds (docs/guide/measures.md): relative error of the default float32 path vs float64
BOUND_VALUE = 1e-4  # |CKA_32 - CKA_64| / |CKA_64| (and RSA), worst case measured ~1e-6
BOUND_NEAR_ONE = 1e-2  # |(1 - CKA_32) - (1 - CKA_64)| / (1 - CKA_64) for near-duplicate layers


def _features(gen, n, d, offset=0.0, relu=True):
    shared = torch.randn(n, 16, generator=gen, dtype=torch.float64)

    def layer():
        z = shared @ torch.randn(16, d, generator=gen, dtype=torch.float64) / 4 + torch.randn(
            n, d, generator=gen, dtype=torch.float64
        )
        return (torch.relu(z) if relu else z) + offset

    return layer(), layer()


CASES = {
    "realistic (post-ReLU + 3)": dict(n=600, d=64, offset=3.0),
    "large offset (post-ReLU + 1e3)": dict(n=600, d=64, offset=1e3),
    "d >> n": dict(n=40, d=800, offset=3.0),
}


def _float32_vs_64(fn, x, y):
    exact = fn(x, y, dtype=torch.float64)
    fast = fn(x.float(), y.float())  # the default on float32 features
    assert fast.dtype == torch.float64
    return exact, fast


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "fn",
    [
        lambda x, y, **k: repsim.linear_cka(x, y, **k),
        lambda x, y, **k: repsim.linear_cka(x, y, debiased=True, **k),
        lambda x, y, **k: repsim.rsa(x, y, **k),
        lambda x, y, **k: repsim.rsa(x, y, rdm="correlation", **k),
    ],
    ids=["linear_cka", "debiased_cka", "rsa_cosine", "rsa_correlation"],
)
def test_default_float32_within_documented_bound(gen, case, fn):
    x, y = _features(gen, **CASES[case])
    exact, fast = _float32_vs_64(fn, x.float().double(), y.float().double())
    assert abs(fast - exact) / abs(exact) < BOUND_VALUE


@pytest.mark.parametrize("offset", [3.0, 1e3])
@pytest.mark.parametrize("debiased", [False, True])
def test_near_duplicate_layers_one_minus_cka(gen, offset, debiased):
    x, _ = _features(gen, 600, 64, offset)
    x = x.float().double()
    y = (x + 1e-2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).float().double()
    exact = repsim.linear_cka(x, y, debiased=debiased, dtype=torch.float64)
    fast = repsim.linear_cka(x.float(), y.float(), debiased=debiased)
    assert 0 < 1 - exact < 1e-3
    assert abs((1 - fast) - (1 - exact)) / (1 - exact) < BOUND_NEAR_ONE


def test_float64_inputs_stay_exact(gen):
    x, y = _features(gen, 300, 32, 1e3)
    assert repsim.linear_cka(x, y) == repsim.linear_cka(x, y, dtype=torch.float64)


def test_half_inputs_use_float32_products(gen):
    x, y = _features(gen, 300, 32, 3.0)
    exact = repsim.linear_cka(x.half().double(), y.half().double(), dtype=torch.float64)
    assert abs(repsim.linear_cka(x.half(), y.half()) - exact) / exact < BOUND_VALUE
