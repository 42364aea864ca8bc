"""The CL-NSCL alignment bound of arXiv 2510.08852, with the paper's constants as stated there.

With probability >= 1 - delta, under shared randomness, after T steps with learning rates eta_t,
batch size B, C balanced classes and temperature tau:

    |Sigma_CL - Sigma_NSCL|_F <= exp(sum eta_t / (2 tau^2 B)) * (sum eta_t) / (tau sqrt(B)) * Delta
    Delta = 2 e^{2/tau} (1/C + eps) / (1 - 1/C - eps),   eps = sqrt(log(T B / delta) / (2B)).

Sigma is the cosine-similarity matrix of the (normalised) embeddings the losses act on. When
1 - 1/C - eps <= 0 the bound is vacuous and reported as infinity. The bound on the gap turns into
lower bounds on CKA and RSA through the relative gaps of :func:`repsim.gram_gap`, using that the
centring H is a projection (|H M H|_F <= |M|_F) and that the RDM difference is the off-diagonal
half of Sigma_A - Sigma_B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def epsilon(B: int, T: int, delta: float) -> float:
    """eps = sqrt(log(T B / delta) / (2 B))."""
    if B < 1 or T < 1:
        raise ValueError(f"B and T must be >= 1, got B={B}, T={T}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return math.sqrt(math.log(T * B / delta) / (2 * B))


def delta_ratio(C: int, B: int, tau: float, T: int, delta: float) -> float:
    """Delta = 2 e^{2/tau} (1/C + eps) / (1 - 1/C - eps); infinity when the denominator is <= 0."""
    if C < 2:
        raise ValueError(f"C must be >= 2 classes, got {C}")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    eps = epsilon(B, T, delta)
    denominator = 1 - 1 / C - eps
    if denominator <= 0:
        return math.inf
    return 2 * math.exp(2 / tau) * (1 / C + eps) / denominator


def gap_bound(lrs: Sequence[float], B: int, C: int, tau: float, delta: float = 0.05) -> float:
    """Upper bound on |Sigma_CL - Sigma_NSCL|_F after the steps with learning rates ``lrs`` (T = len(lrs))."""
    return gap_bound_from_total(float(sum(lrs)), len(lrs), B, C, tau, delta)


def gap_bound_from_total(total: float, T: int, B: int, C: int, tau: float, delta: float = 0.05) -> float:
    """:func:`gap_bound` from the sum of the learning rates and the number of steps T."""
    if T == 0:
        return 0.0  # shared initialisation: identical models
    if total < 0:
        raise ValueError("learning rates must be non-negative")
    d = delta_ratio(C, B, tau, T, delta)
    if math.isinf(d):
        return math.inf
    exponent = total / (2 * tau**2 * B)
    if exponent > 700:  # beyond float range: the bound says nothing
        return math.inf
    return math.exp(exponent) * total / (tau * math.sqrt(B)) * d


def _centred_norm(sigma: Tensor) -> float:
    centred = sigma - sigma.mean(0, keepdim=True)
    centred = centred - centred.mean(1, keepdim=True)
    return float(centred.norm())


def cka_lower_bound(bound: float, sigma_cl: Tensor) -> float:
    """CKA(Sigma_CL, Sigma_NSCL) >= (1 - rho)/(1 + rho) with rho <= bound / |H Sigma_CL H|_F (0 once vacuous)."""
    rho = bound / _centred_norm(sigma_cl.double())
    return max((1 - rho) / (1 + rho), 0.0) if math.isfinite(rho) else 0.0


def rsa_lower_bound(bound: float, sigma_cl: Tensor) -> float:
    """Pearson RSA of the (1 - cos) RDMs >= (1 - r)/(1 + r), r <= bound / (sqrt 2 sqrt M sigma_a); -1 once vacuous."""
    n = sigma_cl.shape[0]
    iu = torch.triu_indices(n, n, 1)
    a = 1 - sigma_cl.double()[iu[0], iu[1]]
    r = bound / (math.sqrt(2) * math.sqrt(a.numel()) * float(a.std(correction=0)))
    return (1 - r) / (1 + r) if r < 1 else -1.0
