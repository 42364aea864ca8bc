"""Float64 numpy references for NBS / Bures, ENSD, R^2_CCA, SVCCA with k components and the
soft-matching distance, written from the papers' formulas (no repsim code)."""

import itertools

import numpy as np
import scipy.optimize


def centred(a):
    a = np.asarray(a, np.float64)
    return a - a.mean(0)


def _kept(vals):
    """Eigenvalues of a rank-deficient PSD matrix with the rounding of its null space set to 0
    (n x n Grams of rank d << n: the square root would turn 1e-14 noise into 1e-7)."""
    return np.where(vals > 1e-12 * vals.max(), vals, 0.0)


def psd_sqrt(k):
    vals, vecs = np.linalg.eigh(k)
    return (vecs * np.sqrt(_kept(vals))) @ vecs.T


def fidelity(x, y):
    """Tang et al. 2020: F(K_x, K_y) = tr((K_x^{1/2} K_y K_x^{1/2})^{1/2}) of the centred Grams (n x n)."""
    kx, ky = centred(x) @ centred(x).T, centred(y) @ centred(y).T
    root = psd_sqrt(kx)
    return np.sqrt(_kept(np.linalg.eigvalsh(root @ ky @ root))).sum()


def nbs(x, y):
    return fidelity(x, y) / np.sqrt(np.sum(centred(x) ** 2) * np.sum(centred(y) ** 2))


def bures(x, y):
    return np.sqrt(max(np.sum(centred(x) ** 2) + np.sum(centred(y) ** 2) - 2 * fidelity(x, y), 0.0))


def participation_ratio(x):
    c = np.cov(np.asarray(x, np.float64).T)
    return np.trace(c) ** 2 / np.trace(c @ c)


def ensd(x, y):
    """Giaffar et al. 2023: tr K_x tr K_y tr(K_x K_y) / (tr K_x^2 tr K_y^2), centred Grams."""
    kx, ky = centred(x) @ centred(x).T, centred(y) @ centred(y).T
    return np.trace(kx) * np.trace(ky) * np.trace(kx @ ky) / (np.trace(kx @ kx) * np.trace(ky @ ky))


def canonical_correlations(x, y):
    """Cosines of the principal angles between the centred column spaces (Bjorck & Golub), via QR."""
    qx, _ = np.linalg.qr(centred(x))
    qy, _ = np.linalg.qr(centred(y))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


def r2_cca(x, y):
    rho = canonical_correlations(x, y)
    return np.mean(rho[: min(np.linalg.matrix_rank(centred(x)), np.linalg.matrix_rank(centred(y)))] ** 2)


def svcca_k(x, y, k):
    def reduce(a):
        u, s, _ = np.linalg.svd(centred(a), full_matrices=False)
        return u[:, :k] * s[:k]

    return canonical_correlations(reduce(x), reduce(y)).mean()


def neuron_costs(x, y, center=True):
    xa, ya = (centred(x), centred(y)) if center else (np.asarray(x, np.float64), np.asarray(y, np.float64))
    return ((xa[:, :, None] - ya[:, None, :]) ** 2).sum(0)  # (p, q): |x_i - y_j|^2 over the n samples


def soft_matching(x, y, center=True):
    """Khosla & Williams 2023: sqrt(min_P sum_ij P_ij |x_i - y_j|^2), P 1 = 1/p, P^T 1 = 1/q, P >= 0."""
    c = neuron_costs(x, y, center)
    p, q = c.shape
    a_eq = np.zeros((p + q, p * q))
    for i in range(p):
        for j in range(q):
            a_eq[i, i * q + j] = 1.0
            a_eq[p + j, i * q + j] = 1.0
    b_eq = np.r_[np.full(p, 1 / p), np.full(q, 1 / q)]
    res = scipy.optimize.linprog(c.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs-ds")
    return np.sqrt(max(res.fun, 0.0))


def soft_matching_brute(x, y, center=True):
    """p == q: the optimum is a permutation / p (Birkhoff), found by trying every permutation."""
    c = neuron_costs(x, y, center)
    p = c.shape[0]
    return np.sqrt(min(sum(c[i, s[i]] for i in range(p)) for s in itertools.permutations(range(p))) / p)


def crossvalidated_shape(x, y, train, alpha):
    """Williams et al. 2021 / netrep fit-then-score: means, partial whitening and rotation from the
    training rows, the angle between the aligned test rows (zero-padding the narrower side)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    p, q = x.shape[1], y.shape[1]
    width = max(p, q)

    def fit(a):
        mu = a[train].mean(0)
        ac = a[train] - mu
        vals, vecs = np.linalg.eigh(ac.T @ ac / len(ac))
        z = vecs @ np.diag(alpha + (1 - alpha) * vals**-0.5) @ vecs.T if alpha < 1 else np.eye(a.shape[1])
        return lambda rows: np.pad((rows - mu) @ z, ((0, 0), (0, width - a.shape[1])))

    fx, fy = fit(x), fit(y)
    u, _, vt = np.linalg.svd(fy(y[train]).T @ fx(x[train]))
    rotation = u @ vt  # (width, width) orthogonal: argmin |phi_x - phi_y R|_F on the training rows
    tx, ty = fx(x[~train]), fy(y[~train]) @ rotation
    return np.arccos(np.clip(np.sum(tx * ty) / (np.linalg.norm(tx) * np.linalg.norm(ty)), -1, 1))
