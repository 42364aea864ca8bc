"""Float64 numpy references written from the papers' definitions (not from repsim's code).

Deliberately naive: explicit distance matrices, explicit SVD bases, explicit inverses, double loops.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import rel_entr


def distance_matrix(x: np.ndarray) -> np.ndarray:
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def dcor(x: np.ndarray, y: np.ndarray, bias_corrected: bool = False) -> float:
    """Szekely, Rizzo & Bakirov (2007) dCor; Szekely & Rizzo (2013) bias-corrected R* (estimates dCor^2)."""
    a, b = distance_matrix(x), distance_matrix(y)
    n = len(x)

    def centre(m):
        if not bias_corrected:
            return m - m.mean(0, keepdims=True) - m.mean(1, keepdims=True) + m.mean()
        u = m - m.sum(0, keepdims=True) / (n - 2) - m.sum(1, keepdims=True) / (n - 2) + m.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(u, 0)
        return u

    ac, bc = centre(a), centre(b)
    if bias_corrected:
        scale = 1 / (n * (n - 3))
        cov, vx, vy = (ac * bc).sum() * scale, (ac * ac).sum() * scale, (bc * bc).sum() * scale
        return cov / math.sqrt(vx * vy)
    cov, vx, vy = (ac * bc).mean(), (ac * ac).mean(), (bc * bc).mean()
    return math.sqrt(cov / math.sqrt(vx * vy))


def eigenspace_overlap(x: np.ndarray, y: np.ndarray, normalizer: str = "rank") -> float:
    """May et al. (2019): |U^T V|_F^2 / max(., .), U, V left singular vectors spanning the column spaces."""
    rx, ry = np.linalg.matrix_rank(x), np.linalg.matrix_rank(y)
    u = np.linalg.svd(x, full_matrices=False)[0][:, :rx]
    v = np.linalg.svd(y, full_matrices=False)[0][:, :ry]
    norm = max(rx, ry) if normalizer == "rank" else max(x.shape[1], y.shape[1])
    return float(np.linalg.norm(u.T @ v) ** 2 / norm)


def gulp(x: np.ndarray, y: np.ndarray, lam: float = 0.0) -> float:
    """Boix-Adsera et al. (2022): centred representations scaled so that tr(Sigma) = 1, then
    d^2 = tr(R_x S_x R_x S_x) + tr(R_y S_y R_y S_y) - 2 tr(R_x S_xy R_y S_yx), R = (S + lam I)^{-1}."""
    n = len(x)
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc = xc * math.sqrt(n) / np.linalg.norm(xc)
    yc = yc * math.sqrt(n) / np.linalg.norm(yc)
    sx, sy, sxy = xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n

    def inv(s):
        if lam > 0:
            return np.linalg.inv(s + lam * np.eye(len(s)))
        return np.linalg.pinv(s, rcond=1e-10, hermitian=True)

    rx, ry = inv(sx), inv(sy)
    d2 = np.trace(rx @ sx @ rx @ sx) + np.trace(ry @ sy @ ry @ sy) - 2 * np.trace(rx @ sxy @ ry @ sxy.T)
    return math.sqrt(max(d2, 0.0))


def rsm_norm_difference(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(distance_matrix(x) - distance_matrix(y), "fro"))


def mean_row_norm(x: np.ndarray) -> float:
    return float(np.mean([np.linalg.norm(row) for row in x]))


def norm_of_mean(x: np.ndarray) -> float:
    return float(np.linalg.norm(x.mean(0)))


def concentricity(x: np.ndarray) -> float:
    mu = x.mean(0)
    return float(np.mean([row @ mu / (np.linalg.norm(row) * np.linalg.norm(mu)) for row in x]))


def uniformity(x: np.ndarray, t: float = 2.0, normalize: bool = True) -> float:
    """Wang & Isola (2020): log of the mean over pairs i < j of exp(-t |z_i - z_j|^2), by a double loop."""
    z = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x
    n = len(z)
    total, count = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            total += math.exp(-t * float(((z[i] - z[j]) ** 2).sum()))
            count += 1
    return math.log(total / count)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def jsd(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over samples of JSD(p, q) = KL(p || m)/2 + KL(q || m)/2, m = (p + q)/2, natural log."""
    p, q = softmax(x), softmax(y)
    m = (p + q) / 2
    return float(np.mean(0.5 * rel_entr(p, m).sum(1) + 0.5 * rel_entr(q, m).sum(1)))


def disagreement(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(x.argmax(1) != y.argmax(1)))


def abs_acc_diff(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> float:
    return float(abs(np.mean(x.argmax(1) == labels) - np.mean(y.argmax(1) == labels)))
