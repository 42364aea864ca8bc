"""Pure similarity math on (n, d) tensors: no models, no loaders."""

from .cka import cka_grid, kernel_cka, linear_cka
from .gram import GramGap, cosine_similarity_matrix, gram_gap, rbf_gram
from .hsic import hsic
from .rsa import average_ranks, kendall_tau_a, rdm, rsa, rsa_grid

__all__ = [
    "GramGap",
    "average_ranks",
    "cka_grid",
    "cosine_similarity_matrix",
    "gram_gap",
    "hsic",
    "kendall_tau_a",
    "kernel_cka",
    "linear_cka",
    "rbf_gram",
    "rdm",
    "rsa",
    "rsa_grid",
]
