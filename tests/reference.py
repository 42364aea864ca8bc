"""Independent textbook formulas in float64 numpy, written from the papers, for the tests to compare against."""

import numpy as np


def hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def hsic_unbiased(k, l):
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ kt @ lt @ one
    ) / (n * (n - 3))


def cka(k, l, unbiased=False):
    f = hsic_unbiased if unbiased else hsic_biased
    return f(k, l) / np.sqrt(f(k, k) * f(l, l))


def linear_cka(x, y, unbiased=False):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return cka(x @ x.T, y @ y.T, unbiased)


def rbf(x, sigma):
    sq = np.sum(x**2, 1)
    d = -2 * x @ x.T + sq[:, None] + sq[None, :]
    return np.exp(-d / (2 * sigma**2 * np.median(d)))
