"""Float64 numpy references for the CCA and alignment families, written from the papers' formulas."""

import itertools

import numpy as np


def centred(a):
    a = np.asarray(a, np.float64)
    return a - a.mean(0)


def inv_sqrt(s):
    vals, vecs = np.linalg.eigh(s)
    return vecs @ np.diag(vals**-0.5) @ vecs.T


def canonical_correlations(x, y):
    """Hotelling: singular values of C_xx^{-1/2} C_xy C_yy^{-1/2} (full-rank inputs)."""
    xc, yc = centred(x), centred(y)
    return np.linalg.svd(inv_sqrt(xc.T @ xc) @ xc.T @ yc @ inv_sqrt(yc.T @ yc), compute_uv=False)


def pca_reduce(a, variance):
    ac = centred(a)
    u, s, _ = np.linalg.svd(ac, full_matrices=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.argmax(share >= variance)) + 1
    return u[:, :k] * s[:k]


def svcca(x, y, variance=0.99):
    return canonical_correlations(pca_reduce(x, variance), pca_reduce(y, variance)).mean()


def pwcca(x, y):
    """Morcos et al. 2018: canonical variates h_i of x (unit norm), alpha_i = sum_j |<h_i, x_j>|."""
    xc, yc = centred(x), centred(y)
    a = inv_sqrt(xc.T @ xc) @ xc.T @ yc @ inv_sqrt(yc.T @ yc)
    u, rho, _ = np.linalg.svd(a, full_matrices=False)
    h = xc @ inv_sqrt(xc.T @ xc) @ u  # canonical variates, orthonormal columns
    alpha = np.abs(h.T @ xc).sum(1)
    return (alpha * rho).sum() / alpha.sum()


def procrustes(x, y):
    xt, yt = centred(x), centred(y)
    xt, yt = xt / np.linalg.norm(xt), yt / np.linalg.norm(yt)
    u, _, vt = np.linalg.svd(yt.T @ xt, full_matrices=False)
    return np.linalg.norm(xt - yt @ u @ vt)  # the minimising rotation, applied


def size_shape(x, y):
    xc, yc = centred(x), centred(y)
    u, _, vt = np.linalg.svd(yc.T @ xc, full_matrices=False)
    return np.linalg.norm(xc - yc @ u @ vt) / np.sqrt(len(xc))


def permutation_procrustes_brute(x, y):
    xc, yc = centred(x), centred(y)
    best = min(np.linalg.norm(xc - yc[:, list(p)]) for p in itertools.permutations(range(yc.shape[1])))
    return best / np.sqrt(len(xc))


def angular_shape(x, y, alpha):
    def phi(a):
        ac = centred(a)
        vals, vecs = np.linalg.eigh(ac.T @ ac / len(ac))
        return ac @ vecs @ np.diag(alpha + (1 - alpha) * vals**-0.5) @ vecs.T

    px, py = phi(x), phi(y)
    nuc = np.linalg.svd(px.T @ py, compute_uv=False).sum()
    return np.arccos(np.clip(nuc / (np.linalg.norm(px) * np.linalg.norm(py)), -1, 1))


def r2(x, y):
    xc, yc = centred(x), centred(y)
    b, *_ = np.linalg.lstsq(xc, yc, rcond=None)
    return 1 - np.linalg.norm(yc - xc @ b) ** 2 / np.linalg.norm(yc) ** 2


def correlation_matrix(x, y):
    p = np.asarray(x).shape[1]
    return np.corrcoef(np.asarray(x, np.float64).T, np.asarray(y, np.float64).T)[:p, p:]


def hard_match_brute(x, y):
    c = correlation_matrix(x, y)
    return max(np.mean([c[i, j] for i, j in enumerate(p)]) for p in itertools.permutations(range(c.shape[1])))


def soft_match(x, y):
    return correlation_matrix(x, y).max(1).mean()


def aligned_cosine(x, y):
    xt, yt = centred(x), centred(y)
    xt, yt = xt / np.linalg.norm(xt), yt / np.linalg.norm(yt)
    u, _, vt = np.linalg.svd(yt.T @ xt, full_matrices=False)
    ya = yt @ u @ vt
    return np.mean(np.sum(xt * ya, 1) / (np.linalg.norm(xt, axis=1) * np.linalg.norm(ya, axis=1)))
