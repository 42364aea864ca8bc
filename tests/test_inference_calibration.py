"""The closed form behind the coverage study (benchmarks/inference.py calibration): for jointly Gaussian
x, y the population linear CKA is ||Sxy||_F^2 / (||Sxx||_F ||Syy||_F); a huge sample must reproduce it."""

import numpy as np
import pytest
import torch

import repsim


def _population_cka(sxx: np.ndarray, sxy: np.ndarray, syy: np.ndarray) -> float:
    return float(np.linalg.norm(sxy) ** 2 / (np.linalg.norm(sxx) * np.linalg.norm(syy)))


@pytest.mark.parametrize("measure", ["linear_cka", "debiased_cka"])
def test_population_cka_closed_form_at_huge_n(measure):
    rng = np.random.default_rng(0)
    p, q, noise, n = 6, 5, 0.8, 400_000
    b = rng.normal(size=(p, p)) / np.sqrt(p) + np.eye(p)  # x = z B: correlated features, Sxx = B^T B
    a = rng.normal(size=(p, q)) / np.sqrt(p)  # y = x A + noise e
    sxx = b.T @ b
    sxy = sxx @ a
    syy = a.T @ sxx @ a + noise**2 * np.eye(q)
    truth = _population_cka(sxx, sxy, syy)
    x = rng.normal(size=(n, p)) @ b
    y = x @ a + noise * rng.normal(size=(n, q))
    value = float(repsim.measure(torch.from_numpy(x), torch.from_numpy(y), measure))
    # sampling sd of CKA at this n is ~1e-3; the biased estimator's O(d/n) bias is ~1e-5
    assert abs(value - truth) < 4e-3, (value, truth)
    # and it is a real check: a different cross-covariance gives a clearly different value
    assert abs(truth - _population_cka(sxx, sxx @ (0.5 * a), 0.25 * a.T @ sxx @ a + noise**2 * np.eye(q))) > 0.02
