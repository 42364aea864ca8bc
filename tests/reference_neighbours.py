"""Brute-force references for the neighbourhood measures: full sorts and Python sets, from the definitions."""

import numpy as np


def knn(x, k):
    z = np.asarray(x, np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sims = z @ z.T
    out = []
    for i in range(len(z)):
        order = [j for j in np.argsort(-sims[i], kind="stable") if j != i]
        out.append(order[:k])
    return out, sims


def jaccard(x, y, k):
    a, _ = knn(x, k)
    b, _ = knn(y, k)
    return np.mean([len(set(p) & set(q)) / len(set(p) | set(q)) for p, q in zip(a, b, strict=True)])


def mutual(x, y, k):
    a, _ = knn(x, k)
    b, _ = knn(y, k)
    return np.mean([len(set(p) & set(q)) / k for p, q in zip(a, b, strict=True)])


def rank_similarity(x, y, k):
    a, _ = knn(x, k)
    b, _ = knn(y, k)
    scores = []
    for p, q in zip(a, b, strict=True):
        common = set(p) & set(q)
        if not common:
            scores.append(0.0)
            continue
        s = sum(2 / ((1 + abs(p.index(j) - q.index(j))) * (p.index(j) + 1 + q.index(j) + 1)) for j in common)
        scores.append(s / sum(1 / m for m in range(1, len(common) + 1)))
    return np.mean(scores)


def cycle(x, y, k):
    a, _ = knn(x, k)
    b, _ = knn(y, k)
    return np.mean([any(i in a[j] for j in b[i]) for i in range(len(a))])


def second_order(x, y, k):
    a, sx = knn(x, k)
    b, sy = knn(y, k)
    vals = []
    for i in range(len(a)):
        union = sorted(set(a[i]) | set(b[i]))
        u, v = sx[i, union], sy[i, union]
        vals.append(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
    return np.mean(vals)


def cknna(x, y, k):
    a, sx = knn(x, k)
    b, sy = knn(y, k)
    n = len(a)
    ma, mb = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        ma[i, a[i]] = 1
        mb[i, b[i]] = 1

    def hsic(kk, ll):  # Song et al. 2012 with tr(K L), zero diagonals
        one = np.ones(n)
        return (
            np.trace(kk @ ll)
            + (one @ kk @ one) * (one @ ll @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ kk @ ll @ one
        ) / (n * (n - 3))

    m = ma * mb
    return hsic(m * sx, m * sy) / np.sqrt(hsic(ma * sx, ma * sx) * hsic(mb * sy, mb * sy))
