"""Pure similarity math on (n, d) tensors: no models, no loaders.

One module per family; each registers its measures in :mod:`repsim.measures.registry` when
imported, so importing this package fills the registry.
"""

from .alignment import (
    aligned_cosine,
    angular_shape,
    hard_correlation_match,
    linear_regression,
    permutation_procrustes,
    procrustes,
    procrustes_size_shape,
    soft_correlation_match,
)
from .cca import mean_cca, pwcca, svcca
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
    "aligned_cosine",
    "angular_shape",
    "average_ranks",
    "cka_grid",
    "cka_lower_bound",
    "cosine_similarity_matrix",
    "frobenius_gap",
    "get_measure",
    "gram_gap",
    "hard_correlation_match",
    "hsic",
    "kendall_tau_a",
    "kernel_cka",
    "linear_cka",
    "linear_regression",
    "list_measures",
    "mean_cca",
    "measure",
    "measure_grid",
    "moments_of",
    "permutation_procrustes",
    "procrustes",
    "procrustes_size_shape",
    "pwcca",
    "rbf_gram",
    "rdm",
    "register",
    "rsa",
    "rsa_grid",
    "soft_correlation_match",
    "svcca",
]
