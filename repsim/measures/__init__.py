"""Pure similarity math on (n, d) tensors: no models, no loaders.

One module per family; each registers its measures in :mod:`repsim.measures.registry` when
imported, so importing this package fills the registry.
"""

from .cka import cka_grid, kernel_cka, linear_cka
from .gram import GramGap, cka_lower_bound, cosine_similarity_matrix, frobenius_gap, gram_gap, rbf_gram
from .hsic import hsic
from .moments import Moments, StreamingMoments, moments_of
from .registry import INVARIANCES, MeasureInfo, get_measure, list_measures, measure, measure_grid, register
from .rsa import average_ranks, kendall_tau_a, rdm, rsa, rsa_grid

__all__ = [
    "INVARIANCES",
    "GramGap",
    "MeasureInfo",
    "Moments",
    "StreamingMoments",
    "average_ranks",
    "cka_grid",
    "cka_lower_bound",
    "cosine_similarity_matrix",
    "frobenius_gap",
    "get_measure",
    "gram_gap",
    "hsic",
    "kendall_tau_a",
    "kernel_cka",
    "linear_cka",
    "list_measures",
    "measure",
    "measure_grid",
    "moments_of",
    "rbf_gram",
    "rdm",
    "register",
    "rsa",
    "rsa_grid",
]
