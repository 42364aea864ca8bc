"""Float64 numpy references for the RSM, statistics and functional families, from the papers' formulas."""

import itertools

import numpy as np


def dist(x):
    x = np.asarray(x, np.float64)
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def dcor(x, y):
    """Székely et al. 2007 with explicit double centring."""

    def dc(a):
        return a - a.mean(0) - a.mean(1)[:, None] + a.mean()

    a, b = dc(dist(x)), dc(dist(y))
    v = lambda p, q: (p * q).mean()  # noqa: E731
    return np.sqrt(v(a, b) / np.sqrt(v(a, a) * v(b, b)))


def dcor2_unbiased(x, y):
    """Székely & Rizzo 2014: U-centred matrices, sum over i != j / (n (n - 3))."""

    def uc(a):
        n = len(a)
        u = a - a.sum(0) / (n - 2) - a.sum(1)[:, None] / (n - 2) + a.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(u, 0)
        return u

    a, b = uc(dist(x)), uc(dist(y))
    n = len(a)
    v = lambda p, q: (p * q).sum() / (n * (n - 3))  # noqa: E731
    return v(a, b) / np.sqrt(v(a, a) * v(b, b))


def eos(x, y):
    u = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)[0]
    v = np.linalg.svd(np.asarray(y, np.float64), full_matrices=False)[0]
    return np.linalg.norm(u.T @ v) ** 2 / max(u.shape[1], v.shape[1])


def gulp(x, y, lam):
    def prep(a):
        a = np.asarray(a, np.float64)
        a = a - a.mean(0)
        return a * np.sqrt(len(a)) / np.linalg.norm(a)

    a, b = prep(x), prep(y)
    n = len(a)
    sa, sb, sab = a.T @ a / n, b.T @ b / n, a.T @ b / n
    ra = np.linalg.inv(sa + lam * np.eye(len(sa)))
    rb = np.linalg.inv(sb + lam * np.eye(len(sb)))
    d2 = np.trace(sa @ ra @ sa @ ra) + np.trace(sb @ rb @ sb @ rb) - 2 * np.trace(ra @ sab @ rb @ sab.T)
    return np.sqrt(max(d2, 0.0))


def rsm_norm_difference(x, y):
    return np.linalg.norm(dist(x) - dist(y)) / len(x)


def magnitude_difference(x, y):
    return abs(np.linalg.norm(np.mean(x, 0)) - np.linalg.norm(np.mean(y, 0)))


def concentricity(x):
    x = np.asarray(x, np.float64)
    m = x.mean(0)
    return np.mean([xi @ m / (np.linalg.norm(xi) * np.linalg.norm(m)) for xi in x])


def uniformity(x, t=2.0):
    z = np.asarray(x, np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    vals = [np.exp(-t * np.sum((z[i] - z[j]) ** 2)) for i, j in itertools.permutations(range(len(z)), 2)]
    return np.log(np.mean(vals))


def softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def jsd(x, y):
    p, q = softmax(np.asarray(x, np.float64)), softmax(np.asarray(y, np.float64))
    m = (p + q) / 2
    kl = lambda a, b: np.sum(a * np.log(a / b), 1)  # noqa: E731
    return np.mean((kl(p, m) + kl(q, m)) / 2)
